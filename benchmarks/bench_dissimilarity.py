"""The dissimilarity index's nearest-training-pixel search, the longest step of notebook 07's final pass after the
forests' predictions: :func:`lithocore.applicability.nearest_distance` against scikit-learn's search (what the
AOA used before: ``NearestNeighbors(n_neighbors=1)``, brute force at these dimensions, 65,536 pixels a call).

Predictors shaped like notebook 07's neighbourhood forest's (``--channels`` channels, each with its local mean and
sd over 5 and 15 px: 45 for 9 channels; smooth fields, so neighbouring pixels resemble each other), standardised,
``--train`` AOA training pixels (the notebook's ``aoa_pixels``) and ``--pixels`` pixels to judge.

    python benchmarks/bench_dissimilarity.py [--pixels 1000000] [--train 3000] [--channels 9] [--repeats 3]

One JSON line: seconds per million pixels of each (best of the repeats), their ratio, the largest difference
between the two and from float64 distances (scipy) on the first 20,000 pixels.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def predictors(n: int, channels: int, rng) -> np.ndarray:
    """(n, channels * 5) standardised predictors: random smooth fields and their local means and sds."""
    from scipy.ndimage import gaussian_filter, uniform_filter

    side = int(np.ceil(np.sqrt(n)))
    cols = []
    for _ in range(channels):
        v = gaussian_filter(rng.standard_normal((side, side)), 6)
        cols.append(v)
        for size in (5, 15):
            m = uniform_filter(v, size)
            cols += [m, np.sqrt(np.maximum(uniform_filter(v * v, size) - m * m, 0))]
    X = np.stack([c.ravel()[:n] for c in cols], 1)
    return ((X - X.mean(0)) / X.std(0)).astype(np.float32)


def sklearn_search(train: np.ndarray, X: np.ndarray, chunk: int = 65536) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    out = np.empty(len(X))
    for s in range(0, len(X), chunk):
        out[s:s + chunk] = NearestNeighbors(n_neighbors=1).fit(train).kneighbors(X[s:s + chunk])[0][:, 0]
    return out


def main() -> None:
    from scipy.spatial.distance import cdist

    from lithocore.applicability import nearest_distance

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pixels", type=int, default=1_000_000)
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--channels", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    X = predictors(a.pixels + a.train, a.channels, rng)
    pick = rng.permutation(len(X))
    train, X = X[pick[:a.train]], X[pick[a.train:]]
    times, found = {}, {}
    for name, f in (("sklearn", sklearn_search), ("nearest_distance", nearest_distance)):
        best = np.inf
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            found[name] = f(train, X)
            best = min(best, time.perf_counter() - t0)
        times[name] = best / a.pixels * 1e6
    exact = np.sqrt(cdist(X[:20000].astype(np.float64), train.astype(np.float64), "sqeuclidean").min(1))
    print(json.dumps(dict(
        pixels=a.pixels, train=a.train, predictors=X.shape[1],
        seconds_per_million=dict((k, round(v, 3)) for k, v in times.items()),
        speedup=round(times["sklearn"] / times["nearest_distance"], 2),
        max_abs_difference=float(np.abs(found["sklearn"] - found["nearest_distance"]).max()),
        max_abs_from_float64=dict((k, float(np.abs(v[:20000] - exact).max())) for k, v in found.items()))))


if __name__ == "__main__":
    main()
