"""Does the workbook keep its promise? Notebook 07's expected accuracy against the real accuracy on ground whose
truth is known, for three grounds to predict on the synthetic area (truth everywhere):

* ``gap``: an interior square (a third of each side), labels all around it;
* ``east``: the east quarter, a strip beside the labels;
* ``far``: a block at the east edge (rows 35-65 %, columns 80-100 %), labels only in the west 55 % of the scene:
  ground far from any label.

For each: the matched (kNNDM), block and random estimates of the recommended map's overall accuracy, the real
overall accuracy of that map on the withheld labels, the error of each estimate, the real accuracy inside and
outside the area of applicability, the calibration error, and whether the recommended candidate is the best on the
withheld ground. One JSON line per ground (``benchmarks/results/bench_trust.jsonl``).

    python benchmarks/bench_trust.py --size 800            # three grounds, about 10 minutes on 2 cores
    python benchmarks/bench_trust.py --size 1611x1650 --grounds east
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml


def _far_labels(area_dir: Path, out: Path) -> tuple[Path, Path]:
    """A label file with the west 55 % and the far block only, and the far block as the ground to predict."""
    import geopandas as gpd
    import rasterio
    from shapely.geometry import box

    from lithocore.area import Grid
    from lithocore.synthetic import ground_polygon, write_ground

    with rasterio.open(area_dir / "aster_vnir_15m.tif") as src:
        grid = Grid(src.crs, src.transform, src.width, src.height)
    far = ground_polygon(grid, (0.35, 0.80, 0.65, 1.0))
    west = ground_polygon(grid, (0.0, 0.0, 1.0, 0.55))
    geo = gpd.read_file(area_dir / "geology.gpkg")
    keep = gpd.GeoSeries([west.union(far)], crs=geo.crs)
    clipped = gpd.clip(geo, keep.iloc[0])
    labels = out / "geology_far.gpkg"
    clipped.to_file(labels, driver="GPKG")
    return labels, write_ground(out / "predict_far.gpkg", far, grid.crs)


def manifest_for(ground: str, height: int, width: int, spacing: float, seed: int, work: Path) -> Path:
    from lithocore.synthetic import SyntheticSpec, generate_study_area

    if ground in ("east", "gap"):
        return generate_study_area(SyntheticSpec(height=height, width=width, coarse_spacing=spacing, seed=seed,
                                                 predict=ground), work / ground, progress=False)
    base = generate_study_area(SyntheticSpec(height=height, width=width, coarse_spacing=spacing, seed=seed,
                                             predict=""), work / "none", progress=False)
    labels, predict = _far_labels(base.parent, work)
    man = yaml.safe_load(base.read_text())
    for key in ("guide", "extra", "coarse", "points"):
        for e in man.get(key, []):
            e["path"] = str(base.parent / e["path"])
    man["reference"] = str(base.parent / man["reference"])
    man["labels"]["path"] = str(labels)
    man["predict"] = str(predict)
    man.pop("truth", None)
    path = work / "far.yaml"
    path.write_text(yaml.safe_dump(man, sort_keys=False))
    return path


def run(ground: str, height: int, width: int, spacing: float, seed: int, work: Path) -> dict:
    from lithocore.recommend import map_to_trust
    from lithocore.folds import cv_folds, cv_settings, trust_settings
    from lithocore.stages import fused_stack
    from lithocore.plan import run_config

    manifest = manifest_for(ground, height, width, spacing, seed, work)
    run_dir = work / f"run-{ground}"
    t0 = time.perf_counter()
    area, stack, _, _ = fused_stack(run_dir, manifest)
    cfg = run_config("quick", area)
    folds = cv_folds(run_dir, area, cfg, cv_settings("quick", cfg, shape=area.shape, labels=area.labels, mask=area.mask))
    ts = trust_settings("quick")
    r = map_to_trust(area, stack, run_dir, block_folds=folds, k=ts["k"], cap=ts["cap"], seed=seed, progress=False)
    t = r["trust"]
    real = t["held_out_check"]
    est = {k: (v or {}).get("overall_accuracy") for k, v in t["estimates"].items()}
    best_real = max(c["overall_accuracy"] for c in t["held_out_check_all"].values())
    promise = t["expected"]
    return dict(ground=ground, pixels=height * width, recommended=t["recommended_model"],
                promise=promise["overall_accuracy"], promise_band=promise["oa_half_width"],
                promise_error=promise["overall_accuracy"] - real["overall_accuracy"],
                real_inside_promised_band=abs(promise["overall_accuracy"] - real["overall_accuracy"])
                <= promise["oa_half_width"],
                matched_method=t["matched_method"], estimates=est, interval=t["expected"]["oa_interval"],
                real_oa=real["overall_accuracy"], real_miou=real["mean_iou"], promised_miou=promise["mean_iou"],
                error={k: (v - real["overall_accuracy"]) if v is not None else None for k, v in est.items()},
                real_oa_inside_aoa=real.get("overall_accuracy_inside_aoa"),
                real_oa_outside_aoa=real.get("overall_accuracy_outside_aoa"),
                held_out_inside_aoa_pixels=real.get("inside_aoa_pixels"),
                held_out_outside_aoa_pixels=real.get("outside_aoa_pixels"),
                oof_oa_inside_aoa=t["oof_accuracy_inside_aoa"], oof_oa_outside_aoa=t["oof_accuracy_outside_aoa"],
                aoa_share=t["aoa_share"], ece_before=t["calibration"]["ece_before"],
                ece_after=t["calibration"]["ece_after"], calibration_applied=t["calibration"]["applied"],
                real_oa_per_candidate={m: c["overall_accuracy"] for m, c in t["held_out_check_all"].items()},
                recommended_minus_best_real=real["overall_accuracy"] - best_real, ground_estimates=t["ground_estimates"],
                distances=t["distances"], seconds=round(time.perf_counter() - t0, 1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="800", help="N or HxW pixels of the synthetic area")
    p.add_argument("--spacing", type=float, default=2000.0, help="metres, survey spacing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grounds", default="gap,east,far")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_trust.jsonl"))
    a = p.parse_args(argv)
    h, w = (int(v) for v in (a.size.split("x") if "x" in a.size else (a.size, a.size)))
    with tempfile.TemporaryDirectory() as tmp:
        for g in a.grounds.split(","):
            line = json.dumps(run(g, h, w, a.spacing, a.seed, Path(tmp)))
            print(line, flush=True)
            with open(a.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
