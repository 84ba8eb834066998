"""The random-forest baseline (the paper's section 4.2): same inputs, same evaluation, same outputs.

Paper settings: 200 trees, ``mtry = 3`` (``max_features=3``), training pixels 10 % of each class, drawn here
from the training region only (for the spatial protocol) or from the whole map (the paper's protocol).
Prediction runs over the scene in chunks of rows, with bounded memory and a progress bar.
"""

from __future__ import annotations

import contextlib
import time
import warnings

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from .area import NO_LABEL

__all__ = ["sample_pixels", "training_pixels", "training_memory", "check_training_memory", "train_forest",
           "predict_forest", "neighbourhood_channels", "neighbourhood_features", "pixel_features", "Forest"]


@contextlib.contextmanager
def warning_filters_kept():
    """Leave Python's warning filters as they were. scikit-learn's threaded workers each enter
    ``warnings.catch_warnings`` and reset the filters, which is not thread-safe: when two of them interleave (seen on
    a busy 2-core machine) the process is left with no filter at all, and every later scikit-learn parallel call
    warns that its ``delayed`` lacks a ``Parallel``, hundreds of times in a notebook."""
    filters = warnings.filters
    kept = filters[:]
    try:
        yield
    finally:
        if warnings.filters is not filters or filters != kept:
            filters[:] = kept
            warnings.filters = filters
            getattr(warnings, "_filters_mutated", lambda: None)()  # Python's own cache of them, where it has one


def task_threads() -> int | None:
    """The threads a task may use where it runs on a Dask cluster's worker: the worker's threads shared among the
    tasks it is running now (at least one); None elsewhere (a process of its own: every core).

    ``n_jobs=-1`` on a worker would take every core of its machine for each task however many workers share it
    (two one-thread workers on two cores ran four forest threads; sixteen on a 64-core node, 1,024).

    >>> task_threads() is None
    True
    """
    try:
        from distributed import get_worker

        state = get_worker().state
    except (ImportError, ValueError, AttributeError):  # not on a worker
        return None
    return max(1, state.nthreads // max(1, state.executing_count))


#: Pixels whose class probabilities one thread sums over the trees at a time (:meth:`Forest.predict_proba`): the
#: float64 sums of a part (4 MB at 8 classes) stay in the processor's cache; 16,384 and 4,096 were slower.
PREDICT_CHUNK = 65536


class Forest(RandomForestClassifier):
    """scikit-learn's random forest, fitted with the warning filters kept (:func:`warning_filters_kept`) and, on a
    cluster's worker, with that worker's threads in place of ``n_jobs=-1`` (:func:`task_threads`); otherwise the
    same estimator, tree for tree. Its class probabilities are scikit-learn's, summed over the trees in their order
    for parts of the pixels at a time, the parts on ``n_jobs`` threads (:meth:`predict_proba`)."""

    def fit(self, X, y, sample_weight=None):
        given, self.n_jobs = self.n_jobs, self._n_jobs_here()
        try:
            with warning_filters_kept():
                return super().fit(X, y, sample_weight=sample_weight)
        finally:
            self.n_jobs = given

    def _n_jobs_here(self) -> int:
        """``n_jobs``, or for -1 on a cluster's worker that worker's share of its threads (:func:`task_threads`)."""
        here = task_threads()
        return here if here is not None and self.n_jobs == -1 else self.n_jobs

    def threads(self) -> int:
        """The threads this forest fits and predicts with here (:meth:`_n_jobs_here`; every core for -1)."""
        from joblib import effective_n_jobs

        return effective_n_jobs(self._n_jobs_here())

    def predict_proba(self, X):
        """Class probabilities (n, classes), the mean of the trees' as scikit-learn's: here the trees' are summed
        in their order for :data:`PREDICT_CHUNK` pixels at a time, the parts on the forest's threads (a worker's
        on a cluster: :func:`task_threads`), so that the sums stay in cache and no thread waits on another. The same
        values on any number of threads (scikit-learn adds each tree's as its thread finishes, in no fixed order);
        1.23-1.48 x faster than scikit-learn's on the default area's two forests (``benchmarks/README.md``)."""
        from concurrent.futures import ThreadPoolExecutor

        X = self._validate_X_predict(X)  # scikit-learn's checks and messages (fitted, the predictors' count)
        if self.n_outputs_ != 1 or not isinstance(X, np.ndarray):  # several outputs, a sparse matrix: its own way
            with warning_filters_kept():
                return super().predict_proba(X)
        threads = self.threads()
        out = np.empty((X.shape[0], self.n_classes_), np.float64)
        step = max(4096, min(PREDICT_CHUNK, -(-X.shape[0] // max(1, threads))))

        def part(s: int) -> None:
            x = X[s:s + step]
            total = np.zeros((x.shape[0], self.n_classes_), np.float64)
            for tree in self.estimators_:
                total += tree.predict_proba(x, check_input=False)
            total /= len(self.estimators_)
            out[s:s + step] = total

        starts = range(0, X.shape[0], step)
        if threads <= 1 or len(starts) <= 1:
            for s in starts:
                part(s)
        else:
            with ThreadPoolExecutor(min(threads, len(starts)), thread_name_prefix="lithocore-forest") as pool:
                list(pool.map(part, starts))
        return out


def sample_pixels(labels: np.ndarray, allowed: np.ndarray, fraction: float = 0.1, seed: int = 0,
                  max_per_class: int | None = None) -> np.ndarray:
    """Flat indices of ``fraction`` of the labelled pixels of each class inside ``allowed`` (at least one
    pixel per present class; at most ``max_per_class``).

    Examples
    --------
    >>> lab = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]], np.uint8)
    >>> len(sample_pixels(lab, np.ones_like(lab, bool), 0.5))
    5
    """
    from .tiles import pixels_at_ranks, row_strips

    rng = np.random.default_rng(seed)
    strips = row_strips(*labels.shape, 16)

    def strip(a: int, b: int) -> np.ndarray:  # the rows' classes, -1 where not allowed or not labelled
        lab = labels[a:b].ravel().astype(np.int16)
        lab[~(np.asarray(allowed[a:b], bool).ravel() & (lab != NO_LABEL))] = -1
        return lab

    # Strip by strip (``allowed`` an array or a RowMap): each class's pixels counted, then the positions drawn
    # among them (the same draw as from the class's flat indices: the rank of a pixel in row-major order), then
    # the drawn ranks found in their strips. No scene-sized index (eight bytes a pixel) is ever made.
    counts = np.zeros((len(strips), 256), np.int64)
    for j, (a, b) in enumerate(strips):
        lab = strip(a, b)
        counts[j] = np.bincount(lab[lab >= 0], minlength=256)[:256]
    drawn = {}
    for k in np.flatnonzero(counts.sum(0)):
        size = int(counts[:, k].sum())
        drawn[k] = np.sort(rng.choice(size, _drawn(size, fraction, max_per_class), replace=False))
    return pixels_at_ranks(strip, strips, counts, drawn, labels.shape[1])


def neighbourhood_channels(channels: int, sizes: tuple[int, ...]) -> int:
    """Predictors of :func:`neighbourhood_features` for a stack of ``channels``: each channel, and its local mean and
    sd for every window size (counted, not computed).

    >>> neighbourhood_channels(9, (5, 15))
    45
    """
    return channels * (1 + 2 * len(sizes))


def neighbourhood_features(stack: np.ndarray, sizes: tuple[int, ...], fill: np.ndarray | None = None
                           ) -> tuple[np.ndarray, list[str]]:
    """The stack plus, for every channel, its local mean and standard deviation over ``size`` x ``size`` windows:
    a per-pixel forest given the neighbourhood (texture, nearby units) that a convolutional network sees, the
    baseline a sceptical reviewer asks a deep model to beat. Windows are mirrored at the scene's edges;
    not-finite pixels count as ``fill`` (per channel; default: the channel's mean). Returns (features
    (C * (1 + 2 * len(sizes)), H, W) float32, their names).

    A pixel's values are computed from its own windows only (:func:`window_features`), so they are the same bit for
    bit whether the scene is computed whole, strip by strip or at scattered pixels
    (:class:`lithocore.stackfile.Neighbourhood`).

    Examples
    --------
    >>> f, names = neighbourhood_features(np.ones((2, 8, 8), np.float32), sizes=(3,))
    >>> f.shape, names[2:4], float(f[2].min()), float(f[3].max())
    ((6, 8, 8), ['mean3(0)', 'sd3(0)'], 1.0, 0.0)
    """
    C, H, W = stack.shape
    h = max(sizes) // 2
    if fill is None:
        fill = np.array([np.mean(band, where=np.isfinite(band)) if np.isfinite(band).any() else 0.0 for band in stack],
                        np.float32)
    out = np.empty((neighbourhood_channels(C, sizes), H, W), np.float32)  # filled in place: no copies held
    out[:C] = stack
    for r0 in range(0, H, _WINDOW_ROWS):  # rows at a time: float64 sums of a bounded part
        r1 = min(H, r0 + _WINDOW_ROWS)
        a, b = max(0, r0 - h), min(H, r1 + h)
        out[C:, r0:r1] = window_features(padded_rows(np.asarray(stack[:, a:b], np.float32), a, r0, r1, H, h, fill),
                                         sizes, h)
    return out, neighbourhood_names(C, sizes)


def neighbourhood_names(channels: int, sizes: tuple[int, ...]) -> list[str]:
    """The names of :func:`neighbourhood_features`'s predictors, in their order.

    >>> neighbourhood_names(2, (5,))
    ['0', '1', 'mean5(0)', 'sd5(0)', 'mean5(1)', 'sd5(1)']
    """
    return [str(i) for i in range(channels)] + [f"{k}{s}({i})" for i in range(channels) for s in sizes
                                                 for k in ("mean", "sd")]


#: Rows :func:`neighbourhood_features` computes at a time (its float64 sums: about 40 bytes a pixel of a part).
_WINDOW_ROWS = 256


def padded_rows(raw: np.ndarray, a: int, r0: int, r1: int, H: int, h: int, fill: np.ndarray) -> np.ndarray:
    """What :func:`window_features` reads for rows ``r0:r1`` of a (C, H, W) scene: ``raw``, its rows
    ``a:a + len`` (at least ``r0 - h:r1 + h`` within the scene), not-finite values as ``fill`` (C,), with ``h`` more
    rows and columns on every side, mirrored at the scene's edges (half-sample symmetric)."""
    raw = raw[:, max(0, r0 - h - a):r1 + h - a]
    top, bottom = max(0, h - r0), max(0, r1 + h - H)
    raw = np.where(np.isfinite(raw), raw, np.asarray(fill, np.float32)[:, None, None])
    return np.pad(raw, ((0, 0), (top, bottom), (h, h)), mode="symmetric")


def _window_sums(a: np.ndarray, s: int, axis: int, base: int) -> np.ndarray:
    """Sums of ``s`` consecutive values of ``a`` along ``axis`` (-2 or -1) at every start, added in one fixed
    order: ``base`` values at a time, then ``s // base`` of those sums (``base`` divides ``s``)."""
    def part(x, k, n):
        return x[..., k:k + n, :] if axis == -2 else x[..., k:k + n]

    nb = a.shape[axis] - base + 1
    acc = part(a, 0, nb).copy()
    for k in range(1, base):
        acc += part(a, k, nb)
    if base == s:
        return acc
    n = a.shape[axis] - s + 1
    out = part(acc, 0, n).copy()
    for j in range(1, s // base):
        out += part(acc, j * base, n)
    return out


#: Output rows and columns :func:`window_features` computes at a time: the float64 sums of a block stay in a core's
#: cache: a 64-row strip 20000 px wide of 9 channels in 0.51 s against 1.14 s at once (as fast at the default area's
#: 1664 px), the same values.
_FEATURE_BLOCK = (64, 512)


def window_features(padded: np.ndarray, sizes: tuple[int, ...], h: int) -> np.ndarray:
    """Each channel's local mean and sd over every size's window: ``padded`` (C, ..., R + 2h, W + 2h) float32
    (:func:`padded_rows`; a stack of patches around scattered pixels: R = W = 1) gives (C * 2 * len(sizes), ...,
    R, W) float32, per channel the mean and sd of each size in turn. Sums in float64, each of its window's values in
    one fixed order (a smaller size of ``sizes`` dividing the window's is summed first), so a pixel's values do not
    depend on what else ``padded`` holds; computed in blocks of :data:`_FEATURE_BLOCK` output pixels.

    >>> x = np.arange(25, dtype=np.float32).reshape(1, 5, 5)
    >>> window_features(np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="symmetric"), (3,), 1)[:, 2, 2].tolist()
    [12.0, 4.163331985473633]
    """
    R, W = padded.shape[-2] - 2 * h, padded.shape[-1] - 2 * h
    (br, bc) = _FEATURE_BLOCK
    if R <= br and W <= bc:
        return _block_features(padded, sizes, h)
    out = np.empty((padded.shape[0] * 2 * len(sizes), *padded.shape[1:-2], R, W), np.float32)
    for r0 in range(0, R, br):
        for c0 in range(0, W, bc):
            r1, c1 = min(R, r0 + br), min(W, c0 + bc)
            out[..., r0:r1, c0:c1] = _block_features(padded[..., r0:r1 + 2 * h, c0:c1 + 2 * h], sizes, h)
    return out


def _block_features(padded: np.ndarray, sizes: tuple[int, ...], h: int) -> np.ndarray:
    """:func:`window_features` of one block."""
    out = []
    for band in padded:
        x = band.astype(np.float64)
        sq = x * x
        for s in sizes:
            off = h - s // 2
            base = max([b for b in sizes if b < s and s % b == 0], default=s)
            sums = []
            for q in (x, sq):
                v = _window_sums(q[..., off:q.shape[-2] - off, :], s, -2, base)
                sums.append(_window_sums(v[..., off:v.shape[-1] - off], s, -1, base))
            m = sums[0] / (s * s)
            out += [m.astype(np.float32), np.sqrt(np.maximum(sums[1] / (s * s) - m * m, 0)).astype(np.float32)]
    return np.stack(out)


def pixel_features(stack: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """The predictors of the pixels ``pixels`` (flat indices) as a (n, C) float32 table, NaN as 0; the stack in
    memory or read strip by strip from disk (:mod:`lithocore.stackfile`).

    >>> pixel_features(np.arange(8, dtype=np.float32).reshape(2, 2, 2), np.array([1, 3])).tolist()
    [[1.0, 5.0], [3.0, 7.0]]
    """
    from .stackfile import pixel_values

    return np.nan_to_num(pixel_values(stack, pixels))


def _features(stack: np.ndarray, rows: slice | None = None, keep: np.ndarray | None = None) -> np.ndarray:
    """(n, C) float32 predictors of the pixels of ``rows`` (``keep``: of those only), NaN as 0: selected first,
    then cleaned in place (one copy, not three)."""
    part = np.asarray(stack[:, slice(None) if rows is None else rows], np.float32)
    table = part.reshape(part.shape[0], -1).T
    return np.nan_to_num(table[keep] if keep is not None else np.array(table), copy=False)


def _drawn(size: int, fraction: float, max_per_class: int | None) -> int:
    """Training pixels drawn from a class of ``size`` pixels: ``fraction`` of them, at least 1, at most the cap."""
    n = max(1, int(round(fraction * size)))
    return min(n, max_per_class) if max_per_class else n


def training_pixels(labels: np.ndarray, allowed, fraction: float = 0.1, max_per_class: int | None = None, *,
                    counts: np.ndarray | None = None) -> int:
    """How many pixels :func:`sample_pixels` draws (counted strip by strip, none drawn): a forest's training table
    sized before any work.

    >>> lab = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]], np.uint8)
    >>> training_pixels(lab, np.ones_like(lab, bool), 0.5), training_pixels(lab, np.ones_like(lab, bool), 0.5, 2)
    (5, 4)
    """
    from .tiles import labelled_map, value_counts

    if counts is None:  # each class's labelled pixels where allowed, unless the caller has counted them
        counts = value_counts(labels, labelled_map(labels, allowed), 256)  # ``allowed`` an array or a RowMap
    return int(sum(_drawn(int(c), fraction, max_per_class) for c in counts if c))


#: Nodes a fitted tree holds per training pixel, at most: 0.10-0.15 measured (the default area's stack, 35-99 k
#: pixels, 10 trees), 0.25 kept as the margin. A node is 64 bytes and 8 a class (scikit-learn's arrays).
TREE_NODES_PER_PIXEL = 0.25


def training_memory(n_pixels: int, n_features: int, n_classes: int, n_trees: int) -> int:
    """Bytes a forest's fit holds, at most: its table of predictors (and scikit-learn's copy) and its trees.

    >>> round(training_memory(1_000_000, 9, 8, 200) / 2**30, 1)  # GiB; a province's 10 % is tens of millions
    6.0
    """
    return int(2 * 4 * n_pixels * n_features + n_trees * TREE_NODES_PER_PIXEL * n_pixels * (64 + 8 * n_classes))


def check_training_memory(n_pixels: int, n_features: int, n_classes: int, n_trees: int,
                          what: str = "the random forest") -> None:
    """Refuse, before any work, a forest whose fit would not fit in memory (:func:`lithocore.data.memory_available`,
    ``LITHOCORE_MEMORY_LIMIT``), naming the sizes and what to change."""
    from .data import memory_available

    need, have = training_memory(n_pixels, n_features, n_classes, n_trees), memory_available()
    if need > have:
        raise MemoryError(f"{what}: {n_pixels:,} training pixels of {n_features} predictors and {n_trees} trees need "
                          f"about {need / 2**30:.1f} GiB, but {have / 2**30:.1f} GiB is available: cap the training "
                          f"pixels of each class (cv_forest_cap, e.g. 10000) or lower pixel_fraction")


def train_forest(stack: np.ndarray, labels: np.ndarray, pixels: np.ndarray, *, n_trees: int = 200,
                 max_features: int | str = 3, seed: int = 0, n_jobs: int = -1, progress: bool = False,
                 desc: str = "random forest (trees)"):
    """Fit scikit-learn's random forest on the given pixels (flat indices). Returns (forest, seconds).

    With ``progress``, the trees are grown in ten rounds (``warm_start``) under a progress bar; scikit-learn
    draws each tree's seed as a single fit would, so the forest is the same tree for tree.

    Parameters
    ----------
    stack, labels
        The channels (C, H, W) and class indices.
    pixels
        Flat indices of the training pixels (:func:`sample_pixels`).
    n_trees, max_features
        Trees and variables tried at each split (the paper's ntree and mtry).
    seed, n_jobs
        The forest's seed and its processes (-1: every core).
    progress, desc
        A progress bar and its label.

    Returns
    -------
    (Forest, float)
        The forest (scikit-learn's, :class:`Forest`) and the seconds its fit took.
    """
    from tqdm.auto import tqdm

    y = labels.ravel()[pixels]
    check_training_memory(len(pixels), stack.shape[0], len(np.unique(y)), n_trees)
    X = pixel_features(stack, pixels)
    mtry = min(max_features, X.shape[1]) if isinstance(max_features, int) else max_features
    rf = Forest(n_estimators=n_trees, max_features=mtry, n_jobs=n_jobs, random_state=seed, warm_start=progress)
    t0 = time.perf_counter()
    if not progress:
        rf.fit(X, y)
        return rf, time.perf_counter() - t0
    step = max(1, -(-n_trees // 10))
    with tqdm(total=n_trees, desc=desc, unit="tree") as bar:
        for n in range(step, n_trees + step, step):
            rf.set_params(n_estimators=min(n, n_trees))
            rf.fit(X, y)
            bar.update(len(rf.estimators_) - bar.n)
    rf.set_params(warm_start=False)
    return rf, time.perf_counter() - t0


def predict_forest(rf, stack: np.ndarray, mask: np.ndarray, *, chunk_rows: int = 64, progress: bool = True,
                   confidence: bool = True):
    """Class index map and confidence (largest class probability) over the scene, ``chunk_rows`` at a time.

    Returns (classes, confidence, seconds); nodata (:data:`NO_LABEL`, NaN) outside ``mask``; ``confidence``
    False: None for it (a fold's classes only: four bytes a pixel fewer, 1.6 GB at 20000 px).

    Parameters
    ----------
    rf
        A fitted forest.
    stack, mask
        The channels (C, H, W) and the pixels to predict.
    chunk_rows, progress
        Rows predicted at a time, and a progress bar.

    Returns
    -------
    (np.ndarray, np.ndarray, float)
        Class indices, confidence and seconds.
    """
    from tqdm.auto import tqdm

    H, W = mask.shape
    classes = np.full((H, W), NO_LABEL, np.uint8)
    conf = np.full((H, W), np.nan, np.float32) if confidence else None
    t0 = time.perf_counter()
    for r0 in tqdm(range(0, H, chunk_rows), desc="random forest", disable=not progress):
        r1 = min(H, r0 + chunk_rows)
        m = mask[r0:r1].ravel()
        if not m.any():
            continue
        X = _features(stack, slice(r0, r1), m)
        proba = rf.predict_proba(X)
        c = np.full(m.size, NO_LABEL, np.uint8)
        p = np.full(m.size, np.nan, np.float32)
        c[m] = rf.classes_[np.argmax(proba, axis=1)]
        p[m] = proba.max(axis=1)
        classes[r0:r1] = c.reshape(r1 - r0, W)
        if conf is not None:
            conf[r0:r1] = p.reshape(r1 - r0, W)
    return classes, conf, time.perf_counter() - t0
