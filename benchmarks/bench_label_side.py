"""The label side of the workbook at province scale: folds, fold regions, class coverage, the spatial split and the
fold windows of an N x N scene, and notebook 07's matched (kNNDM) folds, each in a fresh process, with their seconds and peak memory.

    python benchmarks/bench_label_side.py --size 20000 [--k 4 --block 384 --buffer 128 --tile 128 --stride 64]

The labels are a synthetic map (four units in irregular bodies of ~2 km, one byte a pixel, a tenth of the scene
unlabelled, an irregular outline) made in strips, so the scene itself costs two bytes a pixel (labels and valid
mask). Each step is run on the workbook's own functions (:mod:`lithocore.crossval`, :mod:`lithocore.tiles`), in a
fresh Python process that makes the scene, runs the step and reports ``ru_maxrss``; ``scene_mb`` is the peak of
making the scene alone, so ``peak_rss_mb - scene_mb`` is what the step adds. One JSON line per step.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

STEPS = ("scene", "folds", "fold_regions", "fold_coverage", "spatial_split", "fold_windows", "matched_folds")


def scene(size: int, seed: int = 0):
    """(labels uint8, valid mask) of an N x N scene, made strip by strip from a coarse random field."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    cell = 128  # 1.9 km cells at 15 m
    n = size // cell + 2
    field = ndimage.gaussian_filter(rng.normal(size=(n, n)), 1.0)
    units = np.digitize(field, np.quantile(field, [0.25, 0.5, 0.75])).astype(np.uint8)
    gone = ndimage.gaussian_filter(rng.normal(size=(n, n)), 1.5) > 0.35  # unlabelled patches
    outline = np.hypot(*np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n))) < 1.25
    labels = np.empty((size, size), np.uint8)
    mask = np.empty((size, size), bool)
    cols = np.arange(size) // cell
    for r0 in range(0, size, 1024):
        rows = np.arange(r0, min(size, r0 + 1024)) // cell
        lab = units[rows][:, cols]
        lab[gone[rows][:, cols]] = 255
        labels[r0:r0 + len(rows)] = lab
        mask[r0:r0 + len(rows)] = outline[rows][:, cols]
    return labels, mask


def step(name: str, a) -> dict:
    from lithocore import crossval
    from lithocore import tiles as T

    labels, mask = scene(a.size)
    t0 = time.perf_counter()
    out: dict = {}
    if name not in ("scene", "matched_folds"):
        folds = crossval.make_folds(labels, mask, a.k, block=a.block, buffer=a.buffer, seed=0)
    if name == "folds":
        out["blocks_with_labels"] = folds.info["blocks_with_labels"]
    elif name == "fold_regions":
        out["train_pixels"] = [int(crossval.fold_regions(folds, i, mask)[1].sum()) for i in range(a.k)]
    elif name == "fold_coverage":
        cov = crossval.fold_coverage(folds, labels, mask, ["a", "b", "c", "d"])
        out["test_pixels"] = [c["test_pixels"] for c in cov]
    elif name == "spatial_split":
        ts = T.make_tiles(labels, mask, size=a.tile, stride=a.stride, n_samples=a.n_samples, seed=0, n_classes=4)
        out["windows"] = [len(ts.train), len(ts.val)]
    elif name == "fold_windows":
        out["windows"] = [len(T.fold_windows(labels, mask, a.tile, a.stride, a.n_samples,
                                             allowed=crossval.fold_regions(folds, i, mask)[1])) for i in range(a.k)]
    elif name == "matched_folds":  # notebook 07's kNNDM folds, matched to the valid unlabelled ground
        from lithocore import knndm

        ground = mask & (labels == 255)  # as notebook 07 holds it (StudyArea.predict)
        f = knndm.knndm_folds(labels, mask, ground, 15.0, a.k, seed=0)
        out |= dict(method=f.method, W=round(f.W, 3), W_random=round(f.info["W_random"], 3))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(step=name, size=a.size, seconds=round(time.perf_counter() - t0, 1), peak_rss_mb=round(peak), **out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4000)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--block", type=int, default=384)
    ap.add_argument("--buffer", type=int, default=128)
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--stride", type=int, default=64)
    ap.add_argument("--n-samples", type=int, default=400)
    ap.add_argument("--steps", nargs="*", default=list(STEPS))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(step(a.one, a)))
        return 0
    base = None
    for name in a.steps:
        cmd = [sys.executable, __file__, "--one", name] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
                                                          if k not in ("one", "steps")]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(json.dumps(dict(step=name, size=a.size, failed=done.stderr.strip().splitlines()[-1:])))
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        base = row["peak_rss_mb"] if name == "scene" else base
        print(json.dumps(row | (dict(scene_mb=base) if base and name != "scene" else {})), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
