"""Do shifted passes buy accuracy? Each fold model of a run's cross-validation (notebook 06's checkpoints) maps its
fold's test region in one pass and averaged over four shifted passes; both maps scored on the same pixels.

    python benchmarks/passes_cv.py --run-dir runs/default [--shifts 1 4]

Prints one JSON line: per fold and in mean, mIoU, OA and seconds of each number of passes, and the paired
difference's verdict (:func:`lithocore.crossval.verdict`).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default="runs/default")
    ap.add_argument("--shifts", type=int, nargs=2, default=[1, 4])
    a = ap.parse_args()
    from lithocore import crossval, mapping, metrics
    from lithocore.fusion import normalisation_stats
    from lithocore.run import Run
    from lithocore.tiles import candidate_windows, sample_windows, window_pixels
    from lithocore.training import load_bundle  # noqa: F401  (starts Keras)

    import keras

    run = Run.open(a.run_dir)
    area, stack, _, _ = run.stack()
    cfg = replace(run.training(), epochs=run.cv()["epochs"])
    folds = run.folds()
    names = area.classes.names
    rows = []
    for i in range(folds.k):
        test, train = crossval.fold_regions(folds, i, area.mask)
        cand = candidate_windows(area.labels, area.mask, cfg.tile, cfg.stride, allowed=train)
        windows = sample_windows(cand, cfg.n_samples, np.random.default_rng((cfg.seed, i)))
        stats = normalisation_stats(stack, window_pixels(area.shape, windows, cfg.tile) & area.mask)
        model = keras.models.load_model(run.folder.cv_dir / f"{cfg.architecture}_fold{i}" / "model.keras",
                                        compile=False)
        row = dict(fold=i)
        for s in a.shifts:
            t0 = time.perf_counter()
            pred, _ = mapping.map_array(model, stack, area.mask & test, stats["mean"], stats["std"], shifts=s,
                                        progress=False)
            sc = metrics.scores(metrics.confusion_matrix(area.labels, pred, len(names), test & area.mask), names)
            row[f"{s}_passes"] = dict(mIoU=round(sc["mean_iou"], 4), OA=round(sc["overall_accuracy"], 4),
                                      seconds=round(time.perf_counter() - t0, 1))
        rows.append(row)
    lo, hi = a.shifts
    diffs = [r[f"{hi}_passes"]["mIoU"] - r[f"{lo}_passes"]["mIoU"] for r in rows]
    print(json.dumps(dict(run_dir=a.run_dir, folds=rows, mean_miou={s: round(float(np.mean(
        [r[f"{s}_passes"]["mIoU"] for r in rows])), 4) for s in a.shifts},
        verdict=crossval.verdict(diffs, f"{hi} shifted passes", f"{lo} pass", "mIoU"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
