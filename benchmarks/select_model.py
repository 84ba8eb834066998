"""Choose the quick profile's deep model by nested spatial cross-validation, never by the test folds.

    python benchmarks/select_model.py [--recipes base aug aug_gn unet] [--epochs 8] [--out runs/bench/select.json]

The folds are notebook 06's (4 folds of 512-px blocks on the default area, a 128-px buffer). In fold i, the
test blocks of fold i+1 that lie on fold i's training side are the *inner validation* area, cut from the
training side with a buffer; every recipe trains on what is left, is scored on the inner validation area (the
only score used to choose) and on fold i's test blocks (reported, never used to choose). The paper's forest
and the neighbourhood forest train on the same pixels and are scored the same way. Prints one JSON line per
fold and recipe, then the recipe the inner validation chooses in each fold and its test scores.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

RECIPES = {
    "base": dict(),  # the first version's quick model: slim FCN-8s, bilinear decoder, no normalisation, no augmentation
    "aug": dict(augment=True),
    "aug_gn": dict(augment=True, norm="group"),
    "unet": dict(architecture="unet", augment=True, norm="none"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="*", default=["base", "aug", "unet"])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--forests", type=int, default=1, help="also run the two forests (0: no)")
    ap.add_argument("--run-dir", default="runs/select")
    ap.add_argument("--out", default="runs/bench/select.json")
    a = ap.parse_args()

    from scipy import ndimage

    from lithocore import crossval, metrics
    from lithocore.candidates import forest_candidates
    from lithocore.folds import cv_folds, cv_settings, deep_fold_model
    from lithocore.plan import run_config
    from lithocore.settings import ForestSettings
    from lithocore.stages import fused_stack
    from lithocore.workbook import study_area_manifest

    manifest = study_area_manifest("", progress=False)
    area, stack, channels, _ = fused_stack(a.run_dir, manifest)
    base = run_config("quick", area)
    cv = cv_settings("quick", base, shape=area.shape)
    folds = cv_folds(a.run_dir, area, base, cv)
    names = list(area.classes.names)
    models = {r: (lambda cfg: (lambda i, tr, te, cfg=cfg: deep_fold_model(stack, area, cfg, Path(a.run_dir) / "select" / r)(i, tr, te)))(
        replace(base, epochs=a.epochs, **RECIPES[r])) for r in a.recipes}
    if a.forests:
        models.update({m: c.fold_model(stack, area, fraction=ForestSettings.pixel_fraction, cap=cv["forest_cap"],
                                       seed=base.seed) for m, c in forest_candidates().items()})
    rows = []
    for i in range(folds.k):
        test, train = crossval.fold_regions(folds, i, area.mask)
        inner = (folds.fold == (i + 1) % folds.k) & train
        near = ndimage.distance_transform_edt(~inner) <= folds.buffer
        inner_train = train & ~near
        for name, run in models.items():
            t0 = time.perf_counter()
            pred = run(i, inner_train, test)
            row = dict(fold=i, model=name, seconds=round(time.perf_counter() - t0, 1))
            for region, where in (("inner_validation", inner), ("test", test)):
                cm = metrics.confusion_matrix(area.labels, pred, len(names), where & area.mask)
                s = metrics.scores(cm, names)
                row[region] = dict(mean_iou=s["mean_iou"], overall_accuracy=s["overall_accuracy"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    deep = [r for r in a.recipes]
    chosen = []
    for i in range(folds.k):
        cand = [r for r in rows if r["fold"] == i and r["model"] in deep]
        best = max(cand, key=lambda r: r["inner_validation"]["mean_iou"])
        chosen.append(dict(fold=i, chosen=best["model"], test=best["test"],
                           forest=next((r["test"] for r in rows if r["fold"] == i and r["model"] == "forest"), None),
                           forest_context=next((r["test"] for r in rows if r["fold"] == i and r["model"] == "forest_context"), None)))
        print(json.dumps(chosen[-1]), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(dict(rows=rows, chosen=chosen, epochs=a.epochs, cv=cv), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
