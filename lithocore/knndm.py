"""Cross-validation folds matched to the prediction task (kNNDM), and a CV block size from the labels' spatial
autocorrelation.

A geologist's question is usually "how good is the map on the ground I have not mapped", not "on new terrane a
block away" (block cross-validation) nor "on a pixel next to a training pixel" (random cross-validation). kNNDM
(Linnenbrink et al. 2024, Geosci. Model Dev. 17:5897, after NNDM, Mila et al. 2022) answers it: it builds folds
whose test-to-training nearest-neighbour distances (``Gj*``) follow the distances from the ground to predict to
the nearest label (``Gij``). Here, on a raster:

* ``Gij``: for a sample of the ground to predict, the distance to the nearest labelled pixel (an exact Euclidean
  distance transform of the label raster, in metres);
* candidate folds: k-means clusters of a sample of the labelled pixels (``q`` clusters, ``q`` from ``k`` upwards
  on a log grid), every labelled pixel given to its nearest cluster centre; clusters ordered along the first
  principal axis of their centres; clusters holding at least ``1/k`` of the labels form a fold of their own, the
  rest are dealt into the remaining folds in that order (as CAST's ``knndm``); a candidate with a fold over
  ``maxp`` of the labels is dropped. Beside them, pixel-wise random folds (CAST's "random CV" answer);
* ``Gj*``: for a sample of labelled pixels, the distance to the nearest labelled pixel of another fold;
* the folds kept minimise the Wasserstein distance ``W`` between ``Gj*`` and ``Gij``.

Matched folds are unequal: score the pooled out-of-fold predictions ("global validation"), not the fold mean.

:func:`autocorrelation_range` is the range of the labels' indicator variogram (the lag at which two pixels'
classes stop being more alike than two pixels far apart), the block size blockCV's ``cv_spatial_autocor``
suggests for block cross-validation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .area import NO_LABEL
from .tiles import RowMap, blocks_any, both_map, draw_pixels, labelled_map, row_strips, value_counts

__all__ = ["MatchedFolds", "nearest_label_distance", "distances_at", "prediction_distances", "fold_distances", "knndm_folds",
           "autocorrelation_range", "wasserstein", "random_folds"]


@dataclass
class MatchedFolds:
    """``fold`` (H, W) int8: each labelled pixel's fold (-1: no label). ``info``: how they were chosen."""

    k: int
    fold: np.ndarray
    method: str  # "kNNDM (q clusters)" or "random"
    W: float
    Gij: np.ndarray  # metres, sample of the prediction ground's distances to the nearest label
    Gjstar: np.ndarray  # metres, sample of the labelled pixels' distances to the nearest label of another fold
    info: dict = field(default_factory=dict)


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """The first Wasserstein distance between two samples (the mean absolute difference of their quantiles).

    >>> wasserstein(np.array([0.0, 1.0]), np.array([1.0, 2.0]))
    1.0
    """
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(a, b))


def nearest_label_distance(labelled: np.ndarray, res: float) -> np.ndarray:
    """Distance (map units) from every pixel to the nearest ``True`` pixel of ``labelled`` (0 on it).

    >>> d = nearest_label_distance(np.array([[True, False, False]]), 30.0)
    >>> d.tolist()
    [[0.0, 30.0, 60.0]]
    """
    if not labelled.any():
        return np.full(labelled.shape, np.inf)
    return ndimage.distance_transform_edt(~labelled) * float(res)


#: Pixels up to which the distances to the nearest labelled pixel are measured on the scene's own grid; a larger
#: scene measures them on a grid k times coarser (as kNNDM's search does), so that no scene-sized distance
#: transform is made (scipy's had taken notebook 07 to 4.7 GB at 8000 x 8000, 2.8 GB of it beside the stack).
DISTANCE_PIXELS = 16_000_000


def distances_at(labelled, res: float, points: np.ndarray) -> np.ndarray:
    """Distance (map units) from the pixels ``points`` (flat indices) to the nearest ``True`` pixel of
    ``labelled`` (an array or a :class:`~lithocore.tiles.RowMap`): :func:`nearest_label_distance` on the scene's
    grid up to :data:`DISTANCE_PIXELS` pixels, else on a grid k times coarser (a cell set when any of its pixels
    is, read strip by strip; cell centre to cell centre, within k pixels of the exact distance).

    >>> lab = np.zeros((4, 6), bool); lab[0, 0] = True
    >>> distances_at(lab, 30.0, np.array([0, 5, 23])).round(1).tolist()  # pixel 23: 3 rows, 5 columns away
    [0.0, 150.0, 174.9]
    """
    from .data import preview_factor

    H, W = labelled.shape
    k = preview_factor(H, W, DISTANCE_PIXELS)
    points = np.asarray(points, np.int64)
    if k == 1:
        return _distance_at(np.asarray(labelled[0:H], bool), res, points // W, points % W)
    return _distance_at(blocks_any(labelled, k), res * k, points // W // k, points % W // k)


def _distance_at(labelled: np.ndarray, res: float, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """:func:`nearest_label_distance` at the pixels (``rows``, ``cols``) only: from the feature transform (each
    pixel's nearest labelled pixel, two int32 a pixel) rather than scipy's distance map (some 40 bytes a pixel at
    its peak); the same arithmetic, so the same values."""
    if not labelled.any():
        return np.full(len(rows), np.inf)
    ft = ndimage.distance_transform_edt(~labelled, return_distances=False, return_indices=True)
    d = (ft[:, rows, cols] - np.stack([rows, cols])).astype(np.float64)
    return np.sqrt(np.add.reduce(d * d, axis=0)) * float(res)


def prediction_distances(labelled, ground, res: float, *, n: int = 5000,
                         seed: int = 0) -> np.ndarray:
    """``Gij``: for ``n`` pixels drawn from the ground to predict (an array or a :class:`~lithocore.tiles.RowMap`),
    the distance to the nearest labelled pixel (metres; 0 where the ground itself holds labels)."""
    return distances_at(labelled, res, draw_pixels(ground, n, np.random.default_rng(seed)))


def fold_distances(fold: np.ndarray, k: int, res: float, points: np.ndarray) -> np.ndarray:
    """``Gj*``: for the labelled pixels ``points`` (flat indices), the distance to the nearest labelled pixel of
    another fold (metres)."""
    out = np.empty(points.size)
    at_fold = fold.ravel()[points]
    for i in range(k):
        at = at_fold == i
        if at.any():  # the other folds' labels, strip by strip (no scene-sized map)
            other = RowMap(lambda a, b, i=i: (fold[a:b] >= 0) & (fold[a:b] != i), fold.shape)
            out[at] = distances_at(other, res, points[at])
    return out


def random_folds(labelled, k: int, rng: np.random.Generator) -> np.ndarray:
    """Each labelled pixel (``labelled``: an array or a :class:`~lithocore.tiles.RowMap`) dealt to one of ``k``
    folds at random (int8; -1 elsewhere): random cross-validation. One draw of one byte a labelled pixel, given
    out strip by strip in row-major order.

    >>> f = random_folds(np.array([[True, False, True]]), 2, np.random.default_rng(0))
    >>> int(f[0, 1]), set(f[0, [0, 2]].tolist()) <= {0, 1}
    (-1, True)
    """
    out = np.full(labelled.shape, -1, np.int8)
    draws, at = rng.integers(0, k, labelled.sum(), dtype=np.int8), 0
    for a, b in row_strips(*labelled.shape, 2):
        lab = np.asarray(labelled[a:b], bool)
        n = int(np.count_nonzero(lab))
        out[a:b][lab] = draws[at:at + n]
        at += n
    return out


def _deal(centres: np.ndarray, sizes: np.ndarray, k: int) -> np.ndarray:
    """Fold of every cluster: big clusters (>= 1/k of the labels) one fold each, the rest dealt in turn along
    the first principal axis of the centres (CAST's ``knndm``)."""
    c = centres - centres.mean(0)
    axis = np.linalg.svd(c, full_matrices=False)[2][0] if len(c) > 1 else np.array([1.0, 0.0])
    order = np.argsort(c @ axis, kind="stable")
    fold_of = np.full(len(centres), -1, np.int64)
    nxt = 0
    for j in order:
        if sizes[j] >= sizes.sum() / k and nxt < k:
            fold_of[j] = nxt
            nxt += 1
    rest = list(range(nxt, k)) or list(range(k))
    free = [j for j in order if fold_of[j] < 0]
    for n, j in enumerate(free):
        fold_of[j] = rest[n % len(rest)]
    return fold_of


def _search_clusters(xy: np.ndarray, lab_w: np.ndarray, f: int, k: int, res: float, pts_w: np.ndarray,
                     gij: np.ndarray, *, maxp: float, n_candidates: int, n_points: int, seed: int):
    """kNNDM's search: k-means of the sampled labelled pixels ``xy`` into ``q`` clusters for ``q`` on a log grid,
    the clusters dealt into ``k`` folds (:func:`_deal`), the folds measured on the working grid ``lab_w`` (cells
    of ``f`` pixels) at the sampled cells ``pts_w``. Returns the best ``(W, q, kmeans, fold of each cluster)``
    (None when no candidate respects ``maxp``) and every candidate tried."""
    from sklearn.cluster import KMeans

    rows, cols = np.nonzero(lab_w)
    xy_w = np.column_stack([(cols + 0.5) * f, (rows + 0.5) * f])  # pixel units
    hi = max(k + 1, min(n_points // 4, len(xy) - 2))
    grid_q = sorted(set(int(round(q)) for q in np.exp(np.linspace(math.log(k), math.log(hi), n_candidates))))
    tried, best = [], None
    for q in grid_q:
        km = KMeans(n_clusters=q, n_init=1, random_state=seed).fit(xy)
        cw = km.predict(xy_w)
        fold_of = _deal(km.cluster_centers_, np.bincount(cw, minlength=q).astype(np.float64), k)
        fw = np.full(lab_w.shape, -1, np.int8)
        fw[rows, cols] = fold_of[cw]
        share = np.bincount(fw[fw >= 0], minlength=k) / max(len(cw), 1)
        if share.max() > maxp or (share == 0).any():
            tried.append(dict(q=q, W=None, max_share=float(share.max())))
            continue
        w = wasserstein(fold_distances(fw, k, res * f, pts_w), gij)
        tried.append(dict(q=q, W=w, max_share=float(share.max())))
        if best is None or w < best[0]:
            best = (w, q, km, fold_of)
    return best, tried


def knndm_folds(labels: np.ndarray, mask: np.ndarray, ground: np.ndarray, res: float, k: int = 4, *,
                maxp: float = 0.5, n_points: int = 2000, n_candidates: int = 25, max_work_pixels: int = 300_000,
                seed: int = 0) -> MatchedFolds:
    """Folds of the labelled pixels matched to the ground to predict (kNNDM; see the module's docstring).

    Parameters
    ----------
    labels, mask
        Class indices (:data:`~lithocore.area.NO_LABEL` for none) and the valid-data mask.
    ground
        (H, W) bool (an array or a :class:`~lithocore.tiles.RowMap`), the ground to predict (its labels already
        withheld from ``labels``).
    res
        Pixel size in metres.
    k
        Number of folds.
    maxp
        Largest share of the labelled pixels one fold may hold.
    n_points
        Labelled pixels sampled to fit the clusters and to measure ``Gj*``; as many ground pixels for ``Gij``.
    n_candidates
        Cluster counts tried (log-spaced from ``k`` to ``n_points / 4``).
    max_work_pixels
        The search measures distances on a grid coarsened to at most this many pixels; the folds kept are
        measured again at full resolution.
    seed
        Seed of the samples, the clusters and the random folds.

    Returns
    -------
    MatchedFolds

    Examples
    --------
    Labels on the left half, the ground to predict a strip at the far right: the matched folds are spatial
    (clustered), and their distances match the ground's far better than random folds'.

    >>> lab = np.full((60, 120), NO_LABEL, np.uint8); lab[:, :60] = (np.arange(60) // 15)[None, :]
    >>> ground = np.zeros((60, 120), bool); ground[:, 100:] = True
    >>> f = knndm_folds(lab, np.ones_like(ground), ground, 1.0, k=3, n_points=400)
    >>> f.method.startswith("kNNDM"), f.W < f.info["W_random"]
    (True, True)
    """
    rng = np.random.default_rng(seed)
    labelled = labelled_map(labels, mask)  # strip by strip, as every use below reads it
    n_lab = labelled.sum()
    if n_lab < 2 * k:
        raise ValueError(f"only {n_lab} labelled pixels: too few for {k} matched folds")
    H, W = labels.shape
    on_ground = both_map(ground, mask)  # strip by strip: no scene-sized copy
    ground_pixels = on_ground.sum()
    if not ground_pixels:
        raise ValueError("the ground to predict is empty: there is nothing to match the folds to")
    f = max(1, math.ceil(math.sqrt(H * W / max_work_pixels)))
    gij = prediction_distances(labelled, on_ground, res, n=n_points, seed=seed)

    lab_w = blocks_any(labelled, f)  # the labels on the working grid
    pts = draw_pixels(labelled, n_points, rng)
    xy = np.column_stack([pts % W + 0.5, pts // W + 0.5])
    pts_w = np.flatnonzero(lab_w.ravel())[rng.choice(lab_w.sum(), min(n_points, int(lab_w.sum())), replace=False)]
    best, tried = _search_clusters(xy, lab_w, f, k, res, pts_w, gij, maxp=maxp, n_candidates=n_candidates,
                                   n_points=n_points, seed=seed)

    # pixel-wise random folds, measured at full resolution
    rand = random_folds(labelled, k, rng)
    gj_rand = fold_distances(rand, k, res, pts)
    w_rand = wasserstein(gj_rand, gij)

    info = dict(k=k, maxp=maxp, n_points=int(len(pts)), work_factor=f, candidates=tried, W_random=w_rand,
                labelled_pixels=n_lab, ground_pixels=int(ground_pixels),
                Gij_median_m=float(np.median(gij)), Gij_q90_m=float(np.quantile(gij, 0.9)))
    fold = rand
    method, w_final, gjstar = "random", w_rand, gj_rand
    if best is not None:
        q = best[1]
        cand, gj = _full_resolution(best, labelled, k, res, pts)
        w = wasserstein(gj, gij)
        info["W_clusters_full_resolution"] = w
        if w < w_rand:
            fold, method, w_final, gjstar = cand, f"kNNDM ({q} clusters)", w, gj
            info["q"] = q
    info |= dict(method=method, W=w_final, Gjstar_median_m=float(np.median(gjstar)),
                 labelled_share_per_fold=(value_counts(fold, labelled, k) / n_lab).tolist())
    return MatchedFolds(k, fold, method, w_final, gij, gjstar, info)


def _full_resolution(best, labelled, k: int, res: float, pts: np.ndarray):
    """The search's best clustering (:func:`_search_clusters`) given to every labelled pixel: (fold map, -1 where
    not labelled; its nearest-neighbour distances ``Gj*`` from the sampled pixels ``pts``)."""
    _, _, km, fold_of = best
    fold = np.full(labelled.shape, -1, np.int8)
    for a, b in row_strips(*labelled.shape, 40):  # each pixel's cluster alone: no scene of coordinates
        r, c = np.nonzero(labelled[a:b])
        if len(r):
            fold[a:b][r, c] = fold_of[km.predict(np.column_stack([c + 0.5, r + a + 0.5]))]
    return fold, fold_distances(fold, k, res, pts)


def autocorrelation_range(labels: np.ndarray, mask: np.ndarray, *, max_lag: int | None = None,
                          n_lags: int = 24, share: float = 0.95) -> dict:
    """The range of the labels' spatial autocorrelation, from their indicator variogram.

    ``gamma(h)`` is the share of labelled pixel pairs ``h`` pixels apart (along rows and columns) whose classes
    differ; it rises from 0 with the lag towards the sill ``1 - sum(p_c ** 2)`` (two pixels drawn at random,
    classes in their map proportions ``p_c``). The range is the first lag at which ``gamma`` reaches ``share``
    of the sill (95 %: a variogram's practical range); where units repeat (a hole effect: ``gamma`` falls again before it gets there), the lag of its
    first maximum above half the sill; else the largest lag (``reached`` False).
    Returns ``{"range_px", "reached", "lags", "gamma", "sill"}``.

    Examples
    --------
    Stripes 20 px wide: classes stop being alike beyond about the stripe width.

    >>> lab = np.repeat((np.arange(200) // 20 % 4).astype(np.uint8)[None], 200, 0)
    >>> 10 <= autocorrelation_range(lab, np.ones_like(lab, bool))["range_px"] <= 40
    True
    """
    H, W = labels.shape
    ok = labelled_map(labels, mask)  # strip by strip: at 20000 px a scene-sized map is 400 MB, its bincount 3.2 GB
    max_lag = max(2, max_lag or min(H, W) // 2)
    lags = sorted(set(int(round(v)) for v in np.exp(np.linspace(0, math.log(max_lag), n_lags))))
    gamma = []
    for h in lags:
        diff = pairs = 0
        for r0, r1 in row_strips(H, W, 8):
            lab, o = labels[r0:r1], ok[r0:r1]
            pairs_of = [(lab[:, h:], lab[:, :-h], o[:, h:], o[:, :-h])]  # along the rows
            if r0 + h < H:  # along the columns: each row of the strip with the row h below it
                e = min(r1, H - h)
                pairs_of.append((labels[r0 + h:e + h], lab[:e - r0], ok[r0 + h:e + h], o[:e - r0]))
            for a, b, oa, ob in pairs_of:
                both = oa & ob
                pairs += int(both.sum())
                diff += int((both & (a != b)).sum())
        gamma.append(diff / pairs if pairs else np.nan)
    g = np.nan_to_num(np.array(gamma, dtype=np.float64))
    counts = value_counts(labels, ok, 256)
    p = counts[:int(np.flatnonzero(counts)[-1]) + 1 if counts.any() else 0] / max(int(counts.sum()), 1)
    sill = float(1 - (p ** 2).sum())
    if sill <= 0:
        return dict(range_px=None, reached=False, lags=lags, gamma=g.tolist(), sill=sill)
    reach = np.flatnonzero(g >= share * sill)
    peaks = [i for i in range(len(g) - 1) if g[i] > 0.5 * sill and g[i] >= g[i + 1]]
    cands = [int(reach[0])] if len(reach) else []
    cands += peaks[:1]
    i = min(cands) if cands else len(g) - 1
    return dict(range_px=int(lags[i]), reached=bool(cands), lags=lags, gamma=g.tolist(), sill=sill)
