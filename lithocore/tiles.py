"""Training tiles: sliding windows over the stack and the labels, and honest train/validation splits.

Tiles are *windows into the scene* (their top-left corners), never copies: memory stays the size of the scene
whatever the number of tiles, and :class:`TileBatches` cuts each batch on the fly. The scene-wide computations on
the labels (which windows hold labels, which pixels lie near a region) go strip by strip of rows
(:func:`window_sums`, :func:`within`): their working memory is :data:`STRIP_MB`, not a multiple of the scene, so a
province's one-byte-a-pixel maps are all that grows with it.

Two splits are offered:

* ``"paper"``: the paper's 80/20 random split of the sampled windows. With a stride of 20 pixels and 256-pixel
  tiles, a validation tile overlaps training tiles by up to 92 %, so its scores say little about unseen ground;
  :func:`overlap_report` measures it.
* ``"spatial"`` (the default): the scene is cut into blocks; some blocks are the validation region, the rest the
  training region, separated by a buffer at least one tile wide that no tile of either side enters. The blocks
  are chosen so that every class present in the scene is present on both sides where the map allows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .area import NO_LABEL

__all__ = ["TileSet", "candidate_windows", "fold_windows", "sample_windows", "split_paper", "split_spatial",
           "make_tiles", "overlap_report", "class_weights", "IGNORE", "save_tiles", "load_tiles", "window_pixels", "window_map",
           "MIN_TRAINING_TILES", "tiles_made_from", "tile_warnings", "window_sums", "within", "within_blocks", "block_map",
           "blocks_any", "value_counts", "RowMap", "both_map", "labelled_map", "any_where", "STRIP_MB", "strip_rows", "row_strips",
           "draw_pixels", "pixels_at_ranks"]

#: Label value of pixels the loss and the metrics ignore (unlabelled or nodata), in training targets.
IGNORE = -1

#: Working memory (MB) of one strip of rows in the scene-wide computations on the labels.
STRIP_MB = 128.0


def strip_rows(width: int, bytes_per_pixel: int, halo: int = 0) -> int:
    """Rows a strip of ``width`` px may hold within :data:`STRIP_MB` (at ``bytes_per_pixel``), its halo of
    ``halo`` rows above and below apart; never fewer than twice the halo (nor 16)."""
    rows = int(STRIP_MB * 2**20 // max(width * bytes_per_pixel, 1)) - 2 * halo
    return max(rows, 2 * halo, 16)


def row_strips(height: int, width: int, bytes_per_pixel: int, halo: int = 0) -> list[tuple[int, int]]:
    """The strips (a, b) of rows that cover a ``height`` x ``width`` scene, each :func:`strip_rows` high: the one
    loop of every computation here made strip by strip (the last strip may be lower).

    >>> row_strips(40, 10, 1)
    [(0, 40)]
    """
    rows = strip_rows(width, bytes_per_pixel, halo)
    return [(a, min(height, a + rows)) for a in range(0, height, rows)]


class RowMap:
    """A boolean map of ``shape`` made a strip of rows at a time: ``m[a:b]`` is ``rows(a, b)``, and the
    scene-sized map is never built (:func:`window_sums` and :func:`any_where` read such maps strip by strip).

    >>> lab = np.array([[1, 255], [255, 2]], np.uint8)
    >>> RowMap(lambda a, b: lab[a:b] != 255, lab.shape)[1:2].tolist()
    [[False, True]]
    """

    def __init__(self, rows, shape: tuple[int, int]):
        self.rows, self.shape = rows, tuple(shape)

    def __getitem__(self, s: slice) -> np.ndarray:
        a, b, _ = s.indices(self.shape[0])
        return self.rows(a, b)

    def any(self) -> bool:
        """Whether any pixel is True (read strip by strip, as an array's ``any``)."""
        return any(bool(self[a:b].any()) for a, b in row_strips(*self.shape, 2))

    def sum(self) -> int:
        """The True pixels (counted strip by strip, as an array's ``sum``)."""
        return sum(int(np.count_nonzero(self[a:b])) for a, b in row_strips(*self.shape, 2))


def both_map(first, second) -> RowMap:
    """The pixels True in both ``first`` and ``second`` (each an array or a :class:`RowMap`), strip by strip.

    >>> both_map(np.array([[True, True]]), np.array([[False, True]]))[0:1].tolist()
    [[False, True]]
    """
    return RowMap(lambda a, b: first[a:b] & second[a:b], first.shape)


def labelled_map(labels: np.ndarray, mask: np.ndarray) -> RowMap:
    """The labelled valid pixels, strip by strip."""
    return RowMap(lambda a, b: (labels[a:b] != NO_LABEL) & mask[a:b], labels.shape)


def any_where(flags, region: np.ndarray) -> bool:
    """Whether any pixel of ``region`` is True in ``flags`` (each an array or a :class:`RowMap`), strip by strip."""
    return any(bool((flags[a:b] & region[a:b]).any()) for a, b in row_strips(*region.shape, 2))


def window_sums(flags, size: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(len(rows), len(cols)) int64: the True pixels of ``flags`` (an array or a :class:`RowMap`) in the ``size`` x
    ``size`` window at each (row, column) of the grid ``rows`` x ``cols`` (ascending, evenly spaced); from an
    integral image of one strip of rows at a time, never of the whole scene.

    >>> window_sums(np.eye(6, dtype=bool), 2, np.arange(0, 5, 2), np.arange(0, 5, 2)).tolist()
    [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    """
    W = flags.shape[1]
    out = np.empty((len(rows), len(cols)), np.int64)
    if not len(rows) or not len(cols):
        return out
    stride = max(1, int(rows[1] - rows[0])) if len(rows) > 1 else 1
    span = max(size, strip_rows(W, 8))  # the strip's integral image: int32, and the slice it sums
    per_strip = max(1, (span - size) // stride + 1)  # window rows a strip serves
    cols = np.asarray(cols)[None, :]
    for j in range(0, len(rows), per_strip):
        rr = np.asarray(rows[j:j + per_strip])
        a, b = int(rr[0]), int(rr[-1]) + size
        ii = np.zeros((b - a + 1, W + 1), np.int32)
        np.cumsum(flags[a:b], axis=0, dtype=np.int32, out=ii[1:, 1:])
        np.cumsum(ii[1:, 1:], axis=1, out=ii[1:, 1:])
        r = (rr - a)[:, None]
        out[j:j + per_strip] = ii[r + size, cols + size] - ii[r, cols + size] - ii[r + size, cols] + ii[r, cols]
    return out


def within(region: np.ndarray, distance: float) -> np.ndarray:
    """(H, W) bool: the pixels within ``distance`` px (Euclidean) of a True pixel of ``region``, those included.
    Exactly ``scipy.ndimage.distance_transform_edt(~region) <= distance``, computed strip by strip with a halo of
    ``distance`` rows (a pixel's nearest region pixel, when that near, lies within it).

    >>> r = np.zeros((5, 5), bool); r[2, 2] = True
    >>> int(within(r, 1).sum()), int(within(r, 1.5).sum())
    (5, 9)
    """
    H, W = region.shape
    out = np.zeros((H, W), dtype=bool)
    halo = int(math.ceil(max(distance, 0))) + 1
    # strips sized for the transform's distances (float64) and feature indices (2 x int32)
    for r0, r1 in row_strips(H, W, 18, halo):
        a, b = max(0, r0 - halo), min(H, r1 + halo)
        sub = region[a:b]
        if sub.any():
            out[r0:r1] = ndimage.distance_transform_edt(~sub)[r0 - a:r1 - a] <= distance
    return out


def within_blocks(chosen: np.ndarray, block: tuple[int, int], shape: tuple[int, int], distance: float,
                  step: int = 1) -> np.ndarray:
    """:func:`within` of a map made of whole blocks: ``within(block_map(chosen, block, shape, step), distance)``,
    the same pixels, without a distance transform of the scene. A pixel's distance to a block is its row distance
    and its column distance to the block's rectangle put together, so the nearest chosen block of each row of
    blocks is found along the columns once (a distance transform of one row of pixels) and each strip of rows
    combines it with its rows' distances to the few rows of blocks within reach.

    >>> chosen = np.array([[True, False], [False, False]])
    >>> np.array_equal(within_blocks(chosen, (3, 3), (6, 5), 1.5), within(block_map(chosen, (3, 3), (6, 5)), 1.5))
    True
    """
    b_rows, b_cols = (np.arange(0, n, step) // bk for n, bk in zip(shape, block))
    first = np.searchsorted(b_rows, np.arange(chosen.shape[0]))  # each row of blocks: its first and last map row
    last = np.searchsorted(b_rows, np.arange(chosen.shape[0]), side="right") - 1
    out = np.zeros((len(b_rows), len(b_cols)), bool)
    if distance < 0:
        return out
    # the largest squared distance (an integer) within ``distance``, as the transform compares it: sqrt(x) <= d
    reach = int(math.floor(distance * distance))
    reach += int(math.sqrt(reach + 1) <= distance)
    reach -= int(math.sqrt(reach) > distance)
    along = {}  # row of blocks -> squared column distance of every map column to its nearest chosen block
    for i in np.flatnonzero(chosen.any(axis=1)):
        on = chosen[i][b_cols]
        if first[i] <= last[i] and on.any():
            gap = np.rint(ndimage.distance_transform_edt(~on)).astype(np.int64) if not on.all() else 0 * b_cols
            along[i] = gap * gap
    for a, b in row_strips(len(b_rows), len(b_cols), 17):
        rows = np.arange(a, b)
        for i, d_cols in along.items():
            d_rows = np.maximum(np.maximum(first[i] - rows, 0), rows - last[i])
            if d_rows.min() <= distance:
                out[a:b] |= (d_rows[:, None] * d_rows[:, None] + d_cols[None, :]) <= reach
    return out


def value_counts(values: np.ndarray, where: np.ndarray, n: int, offset: int = 0) -> np.ndarray:
    """(n,) int64: the pixels of ``where`` whose ``values`` + ``offset`` is 0, 1, ... n - 1 (others not counted),
    strip by strip (``np.bincount`` of a whole scene's selection would widen it to eight bytes a pixel).

    >>> value_counts(np.array([[0, 1, 1], [2, 9, 1]], np.uint8), np.ones((2, 3), bool), 3).tolist()
    [1, 3, 1]
    """
    out = np.zeros(n, np.int64)
    for a, b in row_strips(*values.shape, 10):
        v = values[a:b][where[a:b]].astype(np.int64) + offset
        out += np.bincount(v[(v >= 0) & (v < n)], minlength=n)
    return out


def pixels_at_ranks(strip, strips: list[tuple[int, int]], counts: np.ndarray, drawn: dict[int, np.ndarray],
                    width: int) -> np.ndarray:
    """Flat indices (int64, ascending) of drawn pixels, found strip by strip: for each value ``v`` of ``drawn``,
    the pixels whose rank among the pixels of value ``v`` (in row-major order) is in ``drawn[v]`` (sorted).
    ``strip(a, b)`` gives rows ``a:b``'s values, flat; ``counts[j, v]`` is the pixels of value ``v`` in strip ``j``
    of ``strips``. The same pixels as ``np.flatnonzero(values == v)[drawn[v]]``, with no scene-sized index (eight
    bytes a pixel); a strip is read only where it holds a drawn pixel.

    >>> v = np.array([[1, 0, 1], [1, 1, 0]])
    >>> st = [(0, 1), (1, 2)]
    >>> pixels_at_ranks(lambda a, b: v[a:b].ravel(), st, np.array([[1, 2], [1, 2]]), {1: np.array([1, 3])}, 3)
    array([2, 4])
    """
    before = np.cumsum(counts, axis=0) - counts  # each value's pixels in the strips above
    picks = []
    for j, (a, b) in enumerate(strips):
        values = None
        for v, ranks in drawn.items():
            lo, hi = np.searchsorted(ranks, [before[j, v], before[j, v] + counts[j, v]])
            if hi > lo:
                values = strip(a, b) if values is None else values
                picks.append(np.flatnonzero(values == v)[ranks[lo:hi] - before[j, v]] + a * width)
    return np.sort(np.concatenate(picks)).astype(np.int64) if picks else np.zeros(0, np.int64)


def draw_pixels(region, n: int, rng: np.random.Generator) -> np.ndarray:
    """Flat indices (ascending) of at most ``n`` pixels of ``region`` (an array or a :class:`RowMap`) drawn at
    random without replacement: the same pixels, and the same draw of ``rng``, as
    ``np.sort(rng.choice(np.flatnonzero(region), n, replace=False))``, counted and found strip by strip (no draw
    when the region is empty).

    >>> region = np.array([[True, False, True], [False, True, True]])
    >>> draw_pixels(region, 2, np.random.default_rng(1)).tolist()
    [2, 4]
    >>> np.sort(np.random.default_rng(1).choice(np.flatnonzero(region), 2, replace=False)).tolist()
    [2, 4]
    """
    strips = row_strips(*region.shape, 16)  # a strip's flat indices: eight bytes a pixel
    counts = np.zeros((len(strips), 2), np.int64)
    counts[:, 1] = [np.count_nonzero(region[a:b]) for a, b in strips]
    total = int(counts[:, 1].sum())
    if not total:
        return np.zeros(0, np.int64)
    ranks = np.sort(rng.choice(total, min(n, total), replace=False))
    return pixels_at_ranks(lambda a, b: np.asarray(region[a:b], bool).ravel(), strips, counts, {1: ranks},
                           region.shape[1])


def blocks_any(mask, size: int) -> np.ndarray:
    """``mask`` (an array or a :class:`RowMap`) on a grid ``size`` times coarser: a block is set when any of its
    pixels is (the last row and column of blocks may be partial); read a strip of whole blocks at a time.

    >>> blocks_any(np.eye(5, dtype=bool), 2).astype(int).tolist()
    [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    """
    H, W = mask.shape
    out = np.zeros((-(-H // size), -(-W // size)), bool)
    rows = max(1, strip_rows(W, 2) // size) * size
    for a in range(0, H, rows):
        m = np.asarray(mask[a:min(H, a + rows)], bool)
        m = np.pad(m, ((0, -m.shape[0] % size), (0, -W % size)))
        out[a // size:a // size + m.shape[0] // size] = m.reshape(m.shape[0] // size, size, -1, size).any((1, 3))
    return out


def block_map(values: np.ndarray, block: tuple[int, int], shape: tuple[int, int], step: int = 1) -> np.ndarray:
    """(H, W) map of per-block ``values`` (nby, nbx): each pixel takes its ``block`` = (rows, columns) block's
    value, in ``values``'s dtype (no scene-sized index array); ``step`` > 1: every ``step``-th row and column only
    (the map subsampled as ``[::step, ::step]``).

    >>> block_map(np.array([[1, 2]], np.int8), (2, 2), (2, 3)).tolist()
    [[1, 1, 2], [1, 1, 2]]
    """
    H, W = shape
    return values[np.arange(0, H, step) // block[0]][:, np.arange(0, W, step) // block[1]]


@dataclass
class TileSet:
    """Windows (top-left row, col) of ``size`` pixels and the side each belongs to."""

    size: int
    train: np.ndarray  # (n, 2) int
    val: np.ndarray  # (m, 2) int
    split: str
    region: np.ndarray | None = None  # (H, W) int8 for the spatial split: 0 train, 1 validation, -1 buffer
    info: dict = field(default_factory=dict)


def candidate_windows(labels: np.ndarray, mask: np.ndarray, size: int, stride: int,
                      allowed: np.ndarray | None = None) -> np.ndarray:
    """Top-left corners of every ``size`` window on a ``stride`` grid that holds at least one labelled valid
    pixel (and, with ``allowed``, lies wholly inside it).

    Examples
    --------
    >>> lab = np.full((8, 8), NO_LABEL, np.uint8); lab[0, 0] = 1
    >>> candidate_windows(lab, np.ones((8, 8), bool), 4, 2).tolist()
    [[0, 0]]
    """
    H, W = labels.shape
    if size > H or size > W:
        raise ValueError(f"tile size {size} is larger than the scene ({H} x {W}); choose a smaller tile_size")
    rows = np.arange(0, H - size + 1, stride)
    cols = np.arange(0, W - size + 1, stride)
    keep = window_sums(labelled_map(labels, mask), size, rows, cols) > 0
    if allowed is not None:
        keep &= window_sums(RowMap(lambda a, b: ~allowed[a:b], allowed.shape), size, rows, cols) == 0
    r, c = np.nonzero(keep)
    return np.stack([rows[r], cols[c]], axis=1)


def fold_windows(labels: np.ndarray, mask: np.ndarray, size: int, stride: int, n: int,
                 allowed: np.ndarray | None = None) -> np.ndarray:
    """Candidate windows (:func:`candidate_windows`) on the ``stride`` grid, or, where that grid gives fewer than
    ``n`` (a small or sparsely labelled scene, a fold's training side cut into small blocks), on a finer one
    (the stride halved, down to 4 px): more distinct tiles rather than a network trained on a handful.

    >>> lab, ok = np.zeros((40, 40), np.uint8), np.ones((40, 40), bool)
    >>> len(candidate_windows(lab, ok, 32, 20)), len(fold_windows(lab, ok, 32, 20, 50))
    (1, 9)
    """
    cand = candidate_windows(labels, mask, size, stride, allowed)
    while len(cand) < n and stride > 4:
        stride = max(4, stride // 2)
        cand = candidate_windows(labels, mask, size, stride, allowed)
    return cand


def _window_classes(labels: np.ndarray, windows: np.ndarray, size: int, n_classes: int) -> np.ndarray:
    """(n, n_classes) bool: which classes each window holds."""
    out = np.zeros((len(windows), n_classes), dtype=bool)
    for i, (r, c) in enumerate(windows):
        v = labels[r:r + size, c:c + size]
        out[i, np.unique(v[v != NO_LABEL]).astype(int)] = True
    return out


def sample_windows(windows: np.ndarray, n: int, rng: np.random.Generator, *, labels: np.ndarray | None = None,
                   size: int | None = None, n_classes: int | None = None, stratified: bool = False) -> np.ndarray:
    """``n`` windows drawn without replacement; ``stratified`` favours windows that hold rare classes
    (probability proportional to the sum over held classes of 1 / class frequency among windows)."""
    if len(windows) == 0:
        raise ValueError("no window holds a labelled pixel: the tile size may be too large for the area")
    n = min(n, len(windows))
    if not stratified:
        return windows[np.sort(rng.choice(len(windows), n, replace=False))]
    held = _window_classes(labels, windows, size, n_classes)
    freq = held.sum(0)
    score = (held / np.maximum(freq, 1)).sum(1)
    p = score / score.sum()
    return windows[np.sort(rng.choice(len(windows), n, replace=False, p=p))]


def split_paper(windows: np.ndarray, rng: np.random.Generator, val_fraction: float = 0.2):
    """The paper's split: a random ``val_fraction`` of the windows for validation."""
    order = rng.permutation(len(windows))
    n_val = int(round(val_fraction * len(windows)))
    return windows[np.sort(order[n_val:])], windows[np.sort(order[:n_val])]


def _regions(val_blocks: np.ndarray, blocks: int, block: tuple[int, int], shape: tuple[int, int],
             buffer: float, step: int = 1) -> np.ndarray:
    """Region map: 1 the validation blocks (numbered row by row on a ``blocks`` x ``blocks`` grid of ``block``
    = (rows, columns) px), -1 within ``buffer`` pixels of them, 0 the rest (training); ``step``: the map
    subsampled (:func:`block_map`), ``buffer`` in its pixels."""
    chosen = np.zeros(blocks * blocks, np.int8)
    chosen[val_blocks] = 1
    region = block_map(chosen.reshape(blocks, blocks), block, shape, step)
    if buffer > 0:  # the buffer from the blocks' rectangles (no distance transform), marked in place strip by strip
        near = within_blocks(chosen.reshape(blocks, blocks) == 1, block, shape, buffer, step)
        for a, b in row_strips(*region.shape, 3):
            r = region[a:b]
            r[near[a:b] & (r == 0)] = -1
    return region


def _fits(inside: np.ndarray, size: int, stride: int = 1) -> bool:
    """Whether a ``size`` x ``size`` window on the ``stride`` grid fits wholly inside the True area."""
    if size > min(inside.shape):
        return False
    ii = np.pad(inside.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    total = ii[size:, size:] - ii[:-size, size:] - ii[size:, :-size] + ii[:-size, :-size]
    return bool((total[::stride, ::stride] == size * size).any())


def split_spatial(labels: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator, *,
                  blocks: int = 4, val_fraction: float = 0.2, buffer: int | None = None, min_share: float = 0.05,
                  stride: int = 1):
    """A validation region made of a rectangle of whole blocks of a ``blocks x blocks`` grid, a training region
    made of the rest less a buffer (default: one tile) around the validation region.

    Among every rectangle of blocks, keeps one where a whole tile fits on each side, then the one
    with the most classes present on *both* sides
    after the buffer (a class counts on a side when that side holds at least ``min_share`` of its pixels),
    then the one whose validation share of labelled pixels is closest to ``val_fraction``. The choice is
    scored on a downsampled map, so it stays cheap for large scenes. Returns the region map (0 train,
    1 validation, -1 buffer) and a dict describing it.
    """
    H, W = labels.shape
    buffer = size if buffer is None else buffer
    labelled = labelled_map(labels, mask)  # strip by strip: no scene-sized map or selection
    classes = np.flatnonzero(value_counts(labels, labelled, 256))
    bh, bw = math.ceil(H / blocks), math.ceil(W / blocks)
    step = max(1, min(H, W) // 256)  # scoring resolution
    lab_s = labels[::step, ::step]
    ok_s = (lab_s != NO_LABEL) & mask[::step, ::step]
    totals = np.array([(ok_s & (lab_s == c)).sum() for c in classes], dtype=np.float64)
    best, best_key = None, None
    rects = [(i0, i1, j0, j1) for i0 in range(blocks) for i1 in range(i0 + 1, blocks + 1)
             for j0 in range(blocks) for j1 in range(j0 + 1, blocks + 1)
             if (i1 - i0, j1 - j0) != (blocks, blocks)]
    rng.shuffle(rects)  # ties are broken by the seed
    for i0, i1, j0, j1 in rects:
        chosen = np.array([i * blocks + j for i in range(i0, i1) for j in range(j0, j1)])
        region = _regions(chosen, blocks, (bh, bw), (H, W), buffer / step, step)
        on_val = np.array([(ok_s & (lab_s == c) & (region == 1)).sum() for c in classes]) / np.maximum(totals, 1)
        on_train = np.array([(ok_s & (lab_s == c) & (region == 0)).sum() for c in classes]) / np.maximum(totals, 1)
        both = int(((on_val >= min_share) & (on_train >= min_share)).sum())
        share = (ok_s & (region == 1)).sum() / max(ok_s.sum(), 1)
        tile_s = max(1, size // step)
        stride_s = max(1, stride // step) if stride % step == 0 else 1
        feasible = _fits(region == 0, tile_s, stride_s) and _fits(region == 1, tile_s, stride_s)
        key = (feasible, both, -abs(share - val_fraction))
        if best_key is None or key > best_key:
            best, best_key = chosen, key
    if not best_key[0]:
        raise ValueError(f"no rectangle of the {blocks} x {blocks} blocks leaves room for a {size}-pixel tile on both "
                         f"sides of a {buffer}-pixel buffer in this {H} x {W} scene: use a smaller tile_size")
    region = _regions(best, blocks, (bh, bw), (H, W), buffer)
    train_cls = np.flatnonzero(value_counts(labels, RowMap(lambda a, b: labelled[a:b] & (region[a:b] == 0),
                                                           region.shape), 256))
    val_cls = np.flatnonzero(value_counts(labels, RowMap(lambda a, b: labelled[a:b] & (region[a:b] == 1),
                                                         region.shape), 256))
    sides = value_counts(region, labelled, 3, offset=1)  # labelled pixels in the buffer, training and validation
    info = dict(blocks=blocks, val_blocks=sorted(int(b) for b in best), buffer=int(buffer),
                val_share_of_labelled=float(sides[2] / max(sides.sum(), 1)),
                classes_in_scene=len(classes), classes_train=len(train_cls), classes_val=len(val_cls),
                classes_on_both_sides=best_key[1],
                classes_missing_from_val=[int(c) for c in np.setdiff1d(classes, val_cls)],
                classes_missing_from_train=[int(c) for c in np.setdiff1d(classes, train_cls)])
    return region, info


def make_tiles(labels: np.ndarray, mask: np.ndarray, *, size: int = 256, stride: int = 20, n_samples: int = 1000,
               split: str = "spatial", val_fraction: float = 0.2, seed: int = 0, stratified: bool = False,
               blocks: int = 4, n_classes: int | None = None) -> TileSet:
    """Sample tiles and split them (paper: 256 x 256, stride 20, 1000 samples, 80/20).

    For the spatial split, training windows are drawn from the training region and validation windows from
    the validation region, in the proportions ``1 - val_fraction`` and ``val_fraction`` of ``n_samples``.

    Parameters
    ----------
    labels, mask
        Class indices (:data:`~lithocore.area.NO_LABEL` where none) and the valid mask.
    size, stride
        Tile size and the step between candidate windows (px).
    n_samples
        Windows sampled.
    split
        ``"spatial"`` (disjoint regions, buffered) or ``"paper"`` (random 80/20 of the windows).
    val_fraction, seed
        Share of validation windows, and the seed.
    stratified
        Draw windows so that every class is represented on each side.
    blocks
        Blocks a side of the spatial split's checkerboard.
    n_classes
        Classes of the table (for the classes missing from a side).

    Returns
    -------
    TileSet
    """
    rng = np.random.default_rng(seed)
    n_classes = n_classes or int(labels[labels != NO_LABEL].max()) + 1
    kw = dict(labels=labels, size=size, n_classes=n_classes, stratified=stratified)
    if split == "paper":
        cand = candidate_windows(labels, mask, size, stride)
        chosen = sample_windows(cand, n_samples, rng, **kw)
        train, val = split_paper(chosen, rng, val_fraction)
        return TileSet(size, train, val, "paper", None, dict(candidates=int(len(cand))))
    if split != "spatial":
        raise ValueError(f"unknown split {split!r}: 'spatial' or 'paper'")
    region, info = split_spatial(labels, mask, size, rng, blocks=blocks, val_fraction=val_fraction, stride=stride)
    cand_t = candidate_windows(labels, mask, size, stride, allowed=region == 0)
    cand_v = candidate_windows(labels, mask, size, stride, allowed=region == 1)
    if len(cand_t) == 0 or len(cand_v) == 0:
        raise ValueError(f"the spatial split leaves no {'training' if len(cand_t) == 0 else 'validation'} window "
                         f"of {size} pixels: use a smaller tile_size or fewer blocks")
    n_val = max(1, int(round(val_fraction * n_samples)))
    train = sample_windows(cand_t, n_samples - n_val, rng, **kw)
    val = sample_windows(cand_v, n_val, rng, **kw)
    info.update(candidates_train=int(len(cand_t)), candidates_val=int(len(cand_v)))
    return TileSet(size, train, val, "spatial", region, info)


def overlap_report(tiles: TileSet) -> dict:
    """How much validation tiles overlap training tiles: for each validation tile, the largest share of its
    area covered by a single training tile; reported as mean, max and the share of tiles with any overlap."""
    if len(tiles.val) == 0 or len(tiles.train) == 0:
        return dict(mean_max_overlap=0.0, max_overlap=0.0, share_overlapping=0.0)
    s = tiles.size
    best = np.zeros(len(tiles.val))
    tr = tiles.train.astype(np.int64)
    for i, (r, c) in enumerate(tiles.val.astype(np.int64)):
        dr = np.clip(s - np.abs(tr[:, 0] - r), 0, None)
        dc = np.clip(s - np.abs(tr[:, 1] - c), 0, None)
        best[i] = (dr * dc).max() / (s * s)
    return dict(mean_max_overlap=float(best.mean()), max_overlap=float(best.max()),
                share_overlapping=float((best > 0).mean()))


def class_weights(labels: np.ndarray, windows: np.ndarray, size: int, n_classes: int, power: float = 0.5) -> np.ndarray:
    """Per-class loss weights from the pixel frequencies inside the training windows: ``(1/f)^power``,
    normalised to a pixel-weighted mean of 1 (``power=0.5``: the square root of the inverse frequency)."""
    counts = np.zeros(n_classes, dtype=np.float64)
    for r, c in windows:
        v = labels[r:r + size, c:c + size]
        counts += np.bincount(v[v != NO_LABEL].astype(int), minlength=n_classes)[:n_classes]
    freq = counts / max(counts.sum(), 1)
    w = np.where(freq > 0, (1.0 / np.maximum(freq, 1e-12)) ** power, 0.0)
    return (w / max((w * freq).sum(), 1e-12)).astype(np.float32)


def save_tiles(path, tiles: TileSet) -> None:
    """Write a tile set (windows, split, region map, description) to one ``.npz`` file, atomically."""
    import json

    from .runfolder import write_npz

    region = tiles.region if tiles.region is not None else np.zeros((0, 0), np.int8)
    write_npz(path, train=tiles.train, val=tiles.val, region=region,
              meta=json.dumps(dict(size=tiles.size, split=tiles.split, info=tiles.info)))


def load_tiles(path) -> TileSet:
    """Read a tile set written by :func:`save_tiles`."""
    import json

    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        region = z["region"] if z["region"].size else None
        return TileSet(meta["size"], z["train"], z["val"], meta["split"], region, meta["info"])


def window_map(shape: tuple[int, int], windows: np.ndarray, size: int) -> RowMap:
    """The pixels covered by the ``size``-px windows (origins (row, column)), strip by strip.

    >>> window_map((4, 4), np.array([[0, 0], [2, 1]]), 2)[1:3].astype(int).tolist()
    [[1, 1, 0, 0], [0, 1, 1, 0]]
    """
    w = np.asarray(windows, np.int64).reshape(-1, 2)

    def rows(a: int, b: int) -> np.ndarray:
        out = np.zeros((b - a, shape[1]), dtype=bool)
        for r, c in w[(w[:, 0] < b) & (w[:, 0] + size > a)]:
            out[max(r - a, 0):min(r + size, b) - a, c:c + size] = True
        return out

    return RowMap(rows, shape)


def window_pixels(shape: tuple[int, int], windows: np.ndarray, size: int) -> np.ndarray:
    """Boolean map of the pixels covered by the windows (:func:`window_map` whole)."""
    return window_map(shape, windows, size)[0:shape[0]]


#: Fewer training tiles than this and the model's scores are flagged as untrustworthy.
MIN_TRAINING_TILES = 20


def tiles_made_from(fingerprint: str, cfg, split: str) -> dict:
    """What a tile set is made from: the study area's content and the settings every notebook shares."""
    return dict(manifest=fingerprint, size=cfg.tile, stride=cfg.stride, n_samples=cfg.n_samples, seed=cfg.seed,
                split=split)


def tile_warnings(ts, area, n_samples: int) -> list[str]:
    """What makes a tile set unfit to train or judge a model: too few training tiles, far fewer windows than
    asked for, classes absent from the training or the validation side."""
    out = []
    if len(ts.train) < MIN_TRAINING_TILES:
        out.append(f"only {len(ts.train)} training tiles of {ts.size} px (at least {MIN_TRAINING_TILES} are needed "
                   f"for scores that mean anything): use a smaller tile_size or a larger area")
    got = len(ts.train) + len(ts.val)
    if got < 0.5 * n_samples:
        out.append(f"only {got} windows could be drawn where n_samples asks for {n_samples}: the labelled area is "
                   f"small for {ts.size}-px tiles")
    labelled = labelled_map(area.labels, area.mask)  # strip by strip: no scene-sized map or selection
    present = set(np.flatnonzero(value_counts(area.labels, labelled, 256)).tolist())
    for side, windows in (("training", ts.train), ("validation", ts.val)):
        seen = window_map(area.shape, windows, ts.size)
        px = both_map(seen, labelled)
        have = set(np.flatnonzero(value_counts(area.labels, px, 256)).tolist())
        missing = [area.classes.names[c] for c in sorted(present - have)]
        if missing:
            out.append(f"{len(missing)} of {len(present)} classes are absent from the {side} tiles: {', '.join(missing)}"
                       + (" (the model cannot learn them)" if side == "training" else " (they are not scored)"))
    return out
