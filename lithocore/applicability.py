"""The area of applicability (AOA): where a model's predictors resemble what it was trained on.

After Meyer & Pebesma (2021, Methods Ecol. Evol. 12:1620), as CAST's ``trainDI`` and ``aoa`` compute it:

1. the predictors are standardised (training mean and sd) and multiplied by the model's importance of each;
2. ``dbar`` is the mean distance between two training pixels in that space;
3. the **dissimilarity index** of a pixel is the distance to its nearest training pixel divided by ``dbar``;
4. the training pixels' own DI is measured from the nearest training pixel *outside their cross-validation
   fold* (what the cross-validation asked the model to bridge);
5. threshold = 75th percentile + 1.5 IQR of the training DI, capped at its largest value; the AOA is
   ``DI <= threshold``.

Inside, the cross-validated accuracy applies; outside, the model extrapolates and nothing vouches for it.
Distances are to a sample of the training pixels (the AOA's training set: every class and fold represented), by an
exact search in blocks that stay in the CPU's cache (:func:`nearest_distance`): a province's 400 M pixels are its
longest computation after the forests' predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AOA", "fit_aoa", "dissimilarity", "threshold_of", "accuracy_by_di", "nearest_distance"]

#: Float32 distances held per block of query pixels (8 MB: the block's distances to every training pixel stay
#: in the cache; measured fastest on 2 cores at 256-1024 rows of 3000 training pixels, 3.7 x scikit-learn's search).
NEAREST_BLOCK_VALUES = 2**21


@dataclass
class AOA:
    """A fitted area of applicability: the scaled, weighted training pixels, ``dbar`` and the threshold."""

    mean: np.ndarray
    sd: np.ndarray
    weights: np.ndarray
    train: np.ndarray  # (n, p) scaled and weighted
    fold: np.ndarray  # (n,) the training pixels' CV folds
    dbar: float
    train_di: np.ndarray
    threshold: float

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Raw predictors (n, p) to the weighted, standardised space."""
        return ((np.asarray(X, np.float64) - self.mean) / self.sd * self.weights).astype(np.float32)


def threshold_of(train_di: np.ndarray) -> float:
    """Q75 + 1.5 IQR of the training DI, capped at its largest (finite) value.

    >>> threshold_of(np.array([0.1, 0.2, 0.3, 0.4, 5.0]))  # Q25 0.2, Q75 0.4: 0.4 + 1.5 * 0.2
    0.7
    >>> threshold_of(np.array([0.1, 0.2, 0.3, 0.4]))  # capped at the largest
    0.4
    """
    d = np.asarray(train_di, np.float64)
    d = d[np.isfinite(d)]
    q25, q75 = np.quantile(d, [0.25, 0.75])
    return float(round(min(q75 + 1.5 * (q75 - q25), d.max()), 12))


def nearest_distance(train: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row of ``X`` (n, p) to its nearest row of ``train`` (m, p), exactly.

    A block of query rows is ranked against every training row by ``|t|^2 - 2 x.t`` in float32 (one matrix product,
    which orders the training rows as ``|x - t|^2`` does); float32 rounding is bounded (``(p + 2) u (|x| + |t|)^2``
    a value, ``u`` = 2^-24), so every training row within twice that bound (and a little: the comparison's own
    rounding) of its best is a candidate, and the candidates' distances are computed in float64 from the
    coordinates. The nearest row is always among them: the result is the float64 distance to the true nearest row,
    however close the points or far from the origin.

    >>> nearest_distance(np.array([[0.0, 0.0], [3.0, 4.0]]), np.array([[3.0, 0.0], [3.0, 3.0]])).tolist()
    [3.0, 1.0]
    """
    T = np.asarray(train, np.float32)
    X = np.asarray(X, np.float32)
    out = np.empty(len(X), np.float64)
    if not len(X):
        return out
    T64 = T.astype(np.float64)
    tn = (T64 ** 2).sum(1)
    ranker = np.ascontiguousarray(np.vstack([-2 * T.T, tn[None].astype(np.float32)]))  # (x, 1) . (-2t, |t|^2)
    t_max = float(np.sqrt(tn.max()))
    bound = 2 * (T.shape[1] + 4) * 2.0 ** -24  # twice a value's rounding and the comparison's, per (|x| + |t|)^2
    rows = int(np.clip(NEAREST_BLOCK_VALUES // max(len(T), 1), 16, 1024))
    x1 = np.ones((rows, T.shape[1] + 1), np.float32)
    for s in range(0, len(X), rows):
        x = X[s:s + rows]
        x1[:len(x), :-1] = x
        rank = x1[:len(x)] @ ranker
        best, at, x64 = rank.argmin(1), np.arange(len(x)), x.astype(np.float64)
        within = (rank[at, best] + bound * (np.sqrt((x64 ** 2).sum(1)) + t_max) ** 2).astype(np.float32)
        d2 = ((x64 - T64[best]) ** 2).sum(1)
        rank[at, best] = np.inf  # the runners-up: a few rows in a hundred have one within the bound
        for i in np.flatnonzero(rank.min(1) <= within):
            d2[i] = min(d2[i], ((x64[i] - T64[rank[i] <= within[i]]) ** 2).sum(1).min())
        out[s:s + rows] = np.sqrt(d2)
    return out


def fit_aoa(X: np.ndarray, fold: np.ndarray, importance: np.ndarray | None = None) -> AOA:
    """Fit the AOA on training predictors ``X`` (n, p) with their cross-validation folds and the model's
    variable importance (None: equal weights).

    Examples
    --------
    Two folds on a line, 0-1 and 3-4: the mean distance between two points is 14 / 6 = 2.333; each point's
    nearest point of the other fold is 3 or 2 away, so DI = 3 / 2.333 = 1.286 or 2 / 2.333 = 0.857 (standardising
    divides every distance by the same sd, so the ratios stay).

    >>> a = fit_aoa(np.array([[0.0], [1.0], [3.0], [4.0]]), np.array([0, 0, 1, 1]))
    >>> a.train_di.round(3).tolist(), round(a.threshold, 3)
    ([1.286, 0.857, 0.857, 1.286], 1.286)
    """
    X = np.asarray(X, np.float64)
    mean, sd = X.mean(0), X.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    w = np.ones(X.shape[1]) if importance is None else np.asarray(importance, np.float64)
    w = w / w.max() if w.max() > 0 else np.ones_like(w)
    Z = ((X - mean) / sd * w).astype(np.float32)
    # mean distance between two training pixels (every pair once)
    from sklearn.metrics import pairwise_distances_chunked

    total, pairs = 0.0, 0
    for start, block in enumerate(pairwise_distances_chunked(Z, working_memory=64)):
        total += float(block.sum())
        pairs += block.size
    n = len(Z)
    dbar = total / max(pairs - n, 1)  # the diagonal's zeros are in the sum, not in the count
    di = np.full(n, np.inf)
    for f in np.unique(fold):
        at, other = fold == f, fold != f
        if other.any():
            di[at] = nearest_distance(Z[other], Z[at]) / dbar
    return AOA(mean, sd, w, Z, np.asarray(fold), dbar, di, threshold_of(di))


def dissimilarity(aoa: AOA, X: np.ndarray, *, exclude_fold: np.ndarray | None = None,
                  chunk: int = 65536) -> np.ndarray:
    """DI of new pixels ``X`` (n, p): distance to the nearest AOA training pixel / ``dbar``. With
    ``exclude_fold`` (each pixel's CV fold), only training pixels of other folds count (a labelled pixel judged
    as its fold model saw it). Without it, ``chunk`` pixels at a time: a strip of a province's predictors is
    not widened to float64 whole (the same values)."""
    if exclude_fold is None:
        out = np.empty(len(X), np.float64)
        for s in range(0, len(X), chunk):
            out[s:s + chunk] = nearest_distance(aoa.train, aoa.transform(X[s:s + chunk])) / aoa.dbar
        return out
    Z = aoa.transform(X)
    out = np.full(len(Z), np.inf)
    for f in np.unique(exclude_fold):
        at, other = exclude_fold == f, aoa.fold != f
        if other.any():
            out[at] = nearest_distance(aoa.train[other], Z[at]) / aoa.dbar
    return out


def accuracy_by_di(di: np.ndarray, right: np.ndarray, bins: int = 8) -> list[dict]:
    """Accuracy against DI (CAST's ``DItoErrormetric``): pixels in DI quantile bins, each bin's DI range,
    median DI and accuracy."""
    di, right = np.asarray(di), np.asarray(right, bool)
    ok = np.isfinite(di)
    di, right = di[ok], right[ok]
    if not len(di):
        return []
    edges = np.unique(np.quantile(di, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, di, side="right") - 1, 0, max(len(edges) - 2, 0))
    out = []
    for b in range(max(len(edges) - 1, 1)):
        sel = which == b
        if sel.any():
            out.append(dict(di_low=float(edges[b]), di_high=float(edges[min(b + 1, len(edges) - 1)]),
                            di_median=float(np.median(di[sel])), pixels=int(sel.sum()),
                            accuracy=float(right[sel].mean())))
    return out
