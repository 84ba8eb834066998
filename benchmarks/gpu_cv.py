"""The spatial cross-validation of deep models trained longer than a 2-core CPU allows: on a GPU, on the folds,
pixels and metrics code of a finished workbook run, so the scores sit beside that run's forests like for like.

    python benchmarks/gpu_cv.py export --run-dir runs/default --out .gpu/cv.npz      # here: the run's data
    KERAS_BACKEND=jax python benchmarks/gpu_cv.py run --data .gpu/cv.npz --recipe unet:60 --out cv_gpu.json

``export`` writes the run's fused stack (float16, to travel), labels, valid mask, folds and class names into one
compressed file. ``run`` trains each recipe (``name:epochs``; names in ``RECIPES``) in every fold with
:func:`lithocore.folds.deep_fold_model` (the notebooks' fold model) and scores it with
:func:`lithocore.crossval.cross_validate`; prints one JSON line per fold and recipe. ``compare`` sets the result
beside the run's ``comparison.json`` (the forests' per-fold scores) with the workbook's verdict code.

The GPU machine has no rasterio: ``--stub-rasterio`` stands in a placeholder module so that lithocore's modules
import (the experiment reads no GeoTIFF; any use of the placeholder fails loudly).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from dataclasses import replace
from pathlib import Path

import numpy as np

RECIPES = {
    "unet": dict(profile="quick"),  # the quick profile's slim U-Net with flips and quarter turns
    "unet_wide": dict(profile="quick", width=0.5),  # four times the filters
    "fcn8s_paper": dict(profile="paper"),  # Table 1 and the paper's optimiser; epochs of 70 steps
}


def _stub_rasterio() -> None:
    class _Missing:
        def __init__(self, name):
            self._name = name

        def __getattr__(self, attr):
            return _Missing(f"{self._name}.{attr}")

        def __call__(self, *a, **k):
            raise RuntimeError(f"{self._name}: rasterio is not installed here (a placeholder stands in)")

    for name in ("rasterio", "rasterio.crs", "rasterio.enums", "rasterio.transform", "rasterio.warp",
                 "rasterio.windows", "rasterio.features", "rasterio.shutil", "rasterio.errors", "rasterio.vrt"):
        mod = types.ModuleType(name)
        mod.__getattr__ = lambda attr, _n=name: _Missing(f"{_n}.{attr}")
        sys.modules[name] = mod


def export(run_dir: Path, out: Path) -> None:
    from lithocore import outputs
    from lithocore.data import load_study_area
    from lithocore.runfolder import RunFolder

    rf = RunFolder(run_dir)
    stack, names, _, _, tags = outputs.read_stack(rf.stack_path)
    area = load_study_area(tags["manifest"])
    with np.load(rf.folds_path) as z:
        folds = {k: z[k] for k in ("k", "block", "buffer", "fold", "info")}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, stack=stack.astype(np.float16), labels=area.labels, mask=area.mask,
                        classes=json.dumps(area.classes.names), channels=json.dumps(names), **folds)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MB")


def run(data: Path, recipes: list[str], out: Path, work: Path) -> None:
    from lithocore import crossval
    from lithocore.model import backend_info
    from lithocore.folds import deep_fold_model
    from lithocore.settings import resolve as resolve_config

    z = np.load(data)
    stack = z["stack"].astype(np.float32)
    labels, mask = z["labels"], z["mask"]
    names = json.loads(str(z["classes"]))
    folds = crossval.Folds(int(z["k"]), int(z["block"]), int(z["buffer"]), z["fold"], json.loads(str(z["info"])))
    area = types.SimpleNamespace(labels=labels, mask=mask, shape=labels.shape, classes=names)
    rows = []
    for spec in recipes:
        name, _, epochs = spec.partition(":")
        kw = dict(RECIPES[name])
        cfg = resolve_config(kw.pop("profile"), **kw)
        cfg = replace(cfg, epochs=int(epochs or cfg.epochs), steps_per_execution=10)
        model = {spec: deep_fold_model(stack, area, cfg, work / spec.replace(":", "_"))}
        t0 = time.perf_counter()
        res = crossval.cross_validate(labels, mask, names, folds, model, progress=False)
        for f in res["folds"]:
            row = dict(recipe=spec, fold=f["fold"], seconds=round(f["seconds"][spec], 1),
                       **{k: f["scores"][spec][k] for k in ("mean_iou", "overall_accuracy", "kappa", "pixels")})
            rows.append(row)
            print(json.dumps(row), flush=True)
        print(json.dumps(dict(recipe=spec, seconds=round(time.perf_counter() - t0, 1), config=cfg.__dict__)), flush=True)
    out.write_text(json.dumps(dict(rows=rows, backend=backend_info()), indent=1))


def compare(result: Path, comparison: Path) -> None:
    from lithocore import crossval

    rows = json.loads(result.read_text())["rows"]
    cv = json.loads(comparison.read_text())["cross_validation"]
    forests = {m: [f["scores"][m] for f in cv["folds"]] for m in ("forest", "forest_context")}
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = sorted((r for r in rows if r["recipe"] == recipe), key=lambda r: r["fold"])
        assert [r["pixels"] for r in mine] == [s["pixels"] for s in forests["forest"]], "not the same pixels"
        per_fold = [dict(fold=r["fold"], scores={recipe: r, **{m: forests[m][r["fold"]] for m in forests}})
                    for r in mine]
        means = crossval.summarise(per_fold)
        line = {m: f"{means[m]['mean_iou']['mean']:.3f} +/- {means[m]['mean_iou']['sd']:.3f}" for m in means}
        print(json.dumps(dict(recipe=recipe, mean_iou=line, per_fold=[round(r["mean_iou"], 3) for r in mine])))
        for m in forests:
            print("  ", crossval.verdict(crossval.paired_differences(per_fold, recipe, m), recipe, m, "mIoU"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--run-dir", default="runs/default")
    e.add_argument("--out", default=".gpu/cv.npz")
    r = sub.add_parser("run")
    r.add_argument("--data", default=".gpu/cv.npz")
    r.add_argument("--recipe", nargs="+", default=["unet:8", "unet:60"])
    r.add_argument("--out", default="cv_gpu.json")
    r.add_argument("--work", default="/tmp/gpu_cv")
    r.add_argument("--stub-rasterio", action="store_true")
    c = sub.add_parser("compare")
    c.add_argument("--result", required=True)
    c.add_argument("--comparison", default="runs/default/06_compare_random_forest/comparison.json")
    a = ap.parse_args()
    if a.cmd == "export":
        export(Path(a.run_dir), Path(a.out))
    elif a.cmd == "run":
        if a.stub_rasterio:
            _stub_rasterio()
        run(Path(a.data), a.recipe, Path(a.out), Path(a.work))
    else:
        compare(Path(a.result), Path(a.comparison))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
