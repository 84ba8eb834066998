"""A forest's class probabilities: scikit-learn's ``predict_proba`` against :meth:`lithocore.forest.Forest.predict_proba`
(the trees' summed in their order for parts of the pixels at a time, the parts on the threads), on the default
area's two workbook forests: the paper's (the 9 channels, ``--trees`` trees, mtry 3) and notebook 06's neighbourhood
forest (45 predictors, 50 trees, mtry sqrt), each fitted on 10 % of the labelled pixels.

    python benchmarks/bench_forest_predict.py [--rows 640] [--repeats 3]

One JSON line per forest and thread count: seconds of each way (the median of ``--repeats``, interleaved), pixels
per second, and whether the probabilities are identical.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=640, help="rows of the scene predicted")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trees", type=int, default=200, help="the paper forest's trees")
    a = ap.parse_args()

    from sklearn.ensemble import RandomForestClassifier

    from lithocore import forest
    from lithocore.candidates import NEIGHBOURHOOD
    from lithocore.data import load_study_area
    from lithocore.fusion import FusionSettings, build_stack, fuse_study_area
    from lithocore.workbook import study_area_manifest

    area = load_study_area(study_area_manifest("", progress=False))
    stack = build_stack(fuse_study_area(area, progress=False, **FusionSettings().fuse_kwargs()), area)[0]
    pixels = forest.sample_pixels(area.labels, area.mask, 0.1, 0)
    for name, F, trees, mtry in (("paper forest", stack, a.trees, 3),
                                 ("neighbourhood forest", forest.neighbourhood_features(stack, NEIGHBOURHOOD)[0], 50,
                                  "sqrt")):
        rf = forest.train_forest(F, area.labels, pixels, n_trees=trees, max_features=mtry, n_jobs=1)[0]
        X = np.ascontiguousarray(forest._features(F, slice(0, a.rows)))
        for threads in (1, 2):
            ours = forest.Forest(n_estimators=trees, n_jobs=threads)
            theirs = RandomForestClassifier(n_estimators=trees, n_jobs=threads)
            for m in (ours, theirs):  # the same fitted trees
                m.__dict__.update({k: v for k, v in rf.__dict__.items() if k.endswith("_")}, n_jobs=threads)
            times = {"scikit-learn": [], "lithocore": []}
            for _ in range(a.repeats):
                for label, m in (("scikit-learn", theirs), ("lithocore", ours)):
                    t0 = time.perf_counter()
                    p = m.predict_proba(X)
                    times[label].append(time.perf_counter() - t0)
                    if label == "scikit-learn":
                        want = p
            s = {k: float(np.median(v)) for k, v in times.items()}
            print(json.dumps(dict(forest=name, trees=trees, predictors=X.shape[1], pixels=len(X), threads=threads,
                                  seconds_scikit_learn=round(s["scikit-learn"], 3),
                                  seconds_lithocore=round(s["lithocore"], 3),
                                  speed_up=round(s["scikit-learn"] / s["lithocore"], 2),
                                  pixels_per_second_lithocore=round(len(X) / s["lithocore"]),
                                  identical=bool(np.array_equal(p, want)))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
