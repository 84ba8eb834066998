"""Mapping throughput and peak memory (slim and full FCN-8s) and random-forest fit / predict times, on the
default-size synthetic area (1611 x 1650 pixels, 9 channels).

    python benchmarks/bench_mapping.py [--crop 512] [--models slim full] [--out runs/bench/mapping.json]

Models are untrained (speed does not depend on the weights). ``--crop N`` maps an N x N crop for the FCNs
(pixels/s extrapolates; 0 maps the whole scene). The random forest uses the paper's settings (200 trees,
mtry 3, 10 % of each class).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _stack():
    from lithocore import fusion
    from lithocore.data import load_study_area
    from lithocore.workbook import study_area_manifest

    area = load_study_area(study_area_manifest("", progress=False))
    res = fusion.fuse_study_area(area, progress=False, **fusion.FusionSettings().fuse_kwargs())
    stack, names, _ = fusion.build_stack(res, area)
    return area, stack


def fcn(name: str, crop: int, tile: int) -> dict:
    import keras
    import numpy as np

    from lithocore.mapping import map_array
    from lithocore.model import build_fcn8s

    area, stack = _stack()
    if crop:
        stack, mask = stack[:, :crop, :crop], area.mask[:crop, :crop]
    else:
        mask = area.mask
    keras.utils.set_random_seed(0)
    kw = dict(width=0.125, fc=256) if name == "slim" else dict(width=1.0, fc=4096)
    model = build_fcn8s(stack.shape[0], len(area.classes), tile=tile, **kw)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    t0 = time.perf_counter()
    map_array(model, stack, mask, np.nanmean(stack, (1, 2)), np.nanstd(stack, (1, 2)), tile=tile, progress=False)
    s = time.perf_counter() - t0
    px = mask.size
    return dict(model=name, pixels=px, seconds=s, pixels_per_second=px / s,
                full_scene_minutes=area.mask.size / (px / s) / 60, peak_memory_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                peak_before_mapping_gb=before)


def rf() -> dict:
    from lithocore import forest

    area, stack = _stack()
    px = forest.sample_pixels(area.labels, area.mask, 0.1, 0)
    model, fit_s = forest.train_forest(stack, area.labels, px, n_trees=200, max_features=3)
    _, _, pred_s = forest.predict_forest(model, stack, area.mask, progress=False)
    return dict(model="random forest", training_pixels=int(len(px)), fit_seconds=fit_s, predict_seconds=pred_s,
                pixels_per_second=area.mask.sum() / pred_s,
                peak_memory_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["slim", "full", "rf"])
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--out", default="runs/bench/mapping.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(rf() if a.one == "rf" else fcn(a.one, a.crop, a.tile)))
        return 0
    results = []
    for name in a.models:
        cmd = [sys.executable, __file__, "--one", name, "--crop", str(a.crop), "--tile", str(a.tile)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        results.append(res)
        print(json.dumps(res))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
