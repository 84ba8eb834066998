"""Classification measures, the same code for every model: confusion matrix, OA, IoU, mIoU, kappa.

Definitions follow the paper and ``REFERENCE.md``: IoU = TP / (TP + FP + FN), mean IoU the macro average over
the classes present in the reference, producer's accuracy = recall, user's accuracy = precision.
Pixels without a label (:data:`lithocore.area.NO_LABEL`) never count.
"""

from __future__ import annotations

import numpy as np

from .area import NO_LABEL
from .tiles import row_strips

__all__ = ["confusion_matrix", "scores", "boundary_zone", "salt_and_pepper", "fragments", "evaluate_map", "stripe_ratio"]


def confusion_matrix(reference: np.ndarray, predicted: np.ndarray, n_classes: int,
                     mask: np.ndarray | None = None) -> np.ndarray:
    """Counts: rows are the reference classes, columns the predicted ones.

    Examples
    --------
    >>> confusion_matrix(np.array([0, 0, 1, 255]), np.array([0, 1, 1, 0]), 2).tolist()
    [[1, 1], [0, 1]]
    """
    ref = np.asarray(reference).ravel()
    pred = np.asarray(predicted).ravel()
    sel = None if mask is None else np.asarray(mask).ravel()
    cm = np.zeros(n_classes * n_classes, np.int64)
    for a in range(0, ref.size, _COUNT_CHUNK):  # a chunk at a time: the pairs are widened to 8 bytes to count them
        b = a + _COUNT_CHUNK
        r, p = ref[a:b], pred[a:b]
        keep = (r != NO_LABEL) & (r < n_classes) & (p < n_classes)
        if sel is not None:
            keep &= sel[a:b]
        cm += np.bincount(r[keep].astype(np.int64) * n_classes + p[keep].astype(np.int64),
                          minlength=n_classes * n_classes)
    return cm.reshape(n_classes, n_classes)


#: Pixels counted at a time by :func:`confusion_matrix` (a scene's pairs widened to int64 were 4.8 GB at 20000 px).
_COUNT_CHUNK = 1 << 22


def scores(cm: np.ndarray, names: list[str] | tuple[str, ...] | None = None) -> dict:
    """Overall accuracy, per-class IoU / producer's / user's accuracy / F1, mean IoU and kappa.

    Classes absent from the reference (row sum 0) are left out of the means and reported as None.

    Examples
    --------
    >>> s = scores(np.array([[8, 2], [0, 10]]))
    >>> round(s["overall_accuracy"], 2), round(s["mean_iou"], 3), round(s["kappa"], 2)
    (0.9, 0.817, 0.8)
    """
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.shape[0]
    names = list(names) if names is not None else [str(i) for i in range(n)]
    tp = np.diag(cm)
    ref_tot, map_tot, total = cm.sum(1), cm.sum(0), cm.sum()
    present = ref_tot > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (ref_tot + map_tot - tp)
        producer = tp / ref_tot
        user = np.where(map_tot > 0, tp / map_tot, 0.0)
        f1 = np.where(producer + user > 0, 2 * producer * user / (producer + user), 0.0)
    oa = float(tp.sum() / total) if total else float("nan")
    pe = float((ref_tot * map_tot).sum() / total**2) if total else float("nan")
    kappa = (oa - pe) / (1 - pe) if total and pe < 1 else float("nan")

    def per(a):
        return {nm: (float(v) if p else None) for nm, v, p in zip(names, a, present)}

    return dict(
        overall_accuracy=oa,
        mean_iou=float(np.mean(iou[present])) if present.any() else float("nan"),
        kappa=float(kappa),
        mean_f1=float(np.mean(f1[present])) if present.any() else float("nan"),
        iou=per(iou), producer_accuracy=per(producer), user_accuracy=per(user), f1=per(f1),
        pixels=int(total), classes=names,
    )


def _zone_rows(labels: np.ndarray, width: int, a: int, b: int) -> np.ndarray:
    """:func:`boundary_zone` of rows ``a:b``, from the rows ``width`` beyond them (all a pixel's zone depends on)."""
    from scipy import ndimage

    H = labels.shape[0]
    lo, hi = max(0, a - width), min(H, b + width)
    lab = labels[lo:hi]
    edge = np.zeros(lab.shape, bool)
    for axis in (0, 1):
        x = np.take(lab, range(lab.shape[axis] - 1), axis=axis)
        y = np.take(lab, range(1, lab.shape[axis]), axis=axis)
        diff = (x != y) & (x != NO_LABEL) & (y != NO_LABEL)
        pad_lo = [(0, 0), (0, 0)]
        pad_lo[axis] = (0, 1)
        pad_hi = [(0, 0), (0, 0)]
        pad_hi[axis] = (1, 0)
        edge |= np.pad(diff, pad_lo) | np.pad(diff, pad_hi)
    if width > 1:
        edge = ndimage.binary_dilation(edge, iterations=width - 1)
    return edge[a - lo:b - lo] & (labels[a:b] != NO_LABEL)


def boundary_zone(labels: np.ndarray, width: int = 3) -> np.ndarray:
    """Labelled pixels within ``width`` pixels of a boundary between two mapped classes (made strip by strip).

    Examples
    --------
    >>> lab = np.zeros((1, 8), np.uint8); lab[0, 4:] = 1
    >>> boundary_zone(lab, 1).astype(int).tolist()
    [[0, 0, 0, 1, 1, 0, 0, 0]]
    """
    out = np.zeros(labels.shape, bool)
    for a, b in row_strips(*labels.shape, 32, width):
        out[a:b] = _zone_rows(labels, width, a, b)
    return out


def salt_and_pepper(classes: np.ndarray, mask: np.ndarray, n_classes: int, size: int = 5) -> float:
    """Share of valid pixels whose class differs from the majority class of their ``size`` x ``size``
    neighbourhood: 0 for a map of clean patches, higher for speckled maps. Strip by strip with a halo (the
    neighbourhood counts are sums of 0 and 1, exact wherever a strip starts)."""
    from scipy import ndimage

    H = classes.shape[0]
    halo = size // 2 + 1
    differ = valid_n = 0
    for a, b in row_strips(*classes.shape, 4 * n_classes + 16, halo):  # the counts are float32, a class each
        lo, hi = max(0, a - halo), min(H, b + halo)
        cl = classes[lo:hi]
        valid = mask[lo:hi] & (cl != NO_LABEL)
        counts = np.stack([ndimage.uniform_filter(((cl == k) & valid).astype(np.float32), size)
                           for k in range(n_classes)])
        majority = np.argmax(counts, axis=0)[a - lo:b - lo]
        v, c = valid[a - lo:b - lo], cl[a - lo:b - lo]
        differ += int((majority[v] != c[v]).sum())
        valid_n += int(v.sum())
    return differ / valid_n if valid_n else float("nan")


def fragments(classes: np.ndarray, mask: np.ndarray, n_classes: int, min_pixels: int = 10) -> dict:
    """Connected patches (8-connectivity) per class: how many, and how many smaller than ``min_pixels``
    (per million valid pixels as well). Labelled strip by strip; the patches that touch across a strip's edge
    joined as one (scipy's connected components of the strips' patches): the whole scene's count."""
    from scipy import ndimage
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    H, W = classes.shape
    total = small = valid_n = 0
    strips = row_strips(H, W, 32)
    for k in range(n_classes):
        sizes, edges, offset, last = [], [], 0, None
        for a, b in strips:
            valid = mask[a:b] & (classes[a:b] != NO_LABEL)
            if k == 0:
                valid_n += int(valid.sum())
            lab, n = ndimage.label((classes[a:b] == k) & valid, structure=np.ones((3, 3)))
            sizes.append(np.bincount(lab.ravel(), minlength=n + 1)[1:])
            lab = np.where(lab > 0, lab + offset, 0)  # numbered across the scene
            if last is not None:  # 8-connected across the seam: the same column and its two neighbours
                for d in (-1, 0, 1):
                    x = last[max(0, -d):W - max(0, d)]
                    y = lab[0, max(0, d):W - max(0, -d)]
                    both = (x > 0) & (y > 0)
                    edges.append(np.stack([x[both], y[both]]))
            last, offset = lab[-1].copy(), offset + n
        if not offset:
            continue
        pairs = np.concatenate(edges, axis=1) - 1 if edges else np.zeros((2, 0), np.int64)
        graph = coo_matrix((np.ones(pairs.shape[1], np.int8), (pairs[0], pairs[1])), shape=(offset, offset))
        n, which = connected_components(graph, directed=False)
        patch = np.bincount(which, weights=np.concatenate(sizes), minlength=n)
        total += n
        small += int((patch < min_pixels).sum())
    mp = max(valid_n, 1) / 1e6
    return dict(patches=int(total), small_patches=int(small), small_per_million_pixels=small / mp,
                min_pixels=min_pixels)


def stripe_ratio(classes: np.ndarray, valid: np.ndarray | None = None, *, period: int | tuple[int, int] = 64,
                 offset: int = 0, lines: dict | None = None) -> float | None:
    """How much more often the class changes across the lines of a regular grid (or given lines) than elsewhere.

    The lines are the columns (and rows) ``c`` with ``c % period == offset`` (``period`` may be (rows, cols)), or,
    given ``lines`` (``{"rows": [...], "cols": [...]}``: a map's window borders), those rows and columns moved by
    ``offset``: a change "on a line" is a pair of neighbours ``(c - 1, c)`` that differ. The ratio is the share of
    such pairs that differ on the lines over the share elsewhere, columns and rows together; 1 means the grid
    leaves no trace. A map made in windows that step by ``period`` shows its seams as a ratio above that of a map
    made without windows (a per-pixel forest's) on the same scene, which gives the floor the geology itself sets.
    None when there are no lines or no changes elsewhere.

    Examples
    --------
    >>> m = np.zeros((64, 64), np.uint8); m[:, 16::16] = 1   # a stripe on every 16th column
    >>> round(stripe_ratio(m, period=16), 2), stripe_ratio(np.tile([0, 1], (8, 4)).astype(np.uint8), period=4)
    (20.0, 1.0)
    """
    H, W = np.shape(classes)
    on = [0, 0]
    off = [0, 0]
    p_rows, p_cols = (period, period) if np.isscalar(period) else tuple(period)

    def on_lines(idx: np.ndarray, axis: str, p: int) -> np.ndarray:
        if lines is None:
            return (idx % p) == (offset % p)
        return np.isin(idx, np.asarray(lines[axis], int) + offset)

    line_cols = on_lines(np.arange(1, W), "cols", p_cols)
    for a, b in row_strips(H, W, 8, 1):  # strip by strip, each with the row above it (the pairs across its top)
        lo = max(0, a - 1)
        cl = np.asarray(classes[lo:b])
        ok = (cl != NO_LABEL) if valid is None else np.asarray(valid[lo:b], bool) & (cl != NO_LABEL)
        line_rows = on_lines(np.arange(lo + 1, b), "rows", p_rows)
        for diff, both, line in ((cl[a - lo:, 1:] != cl[a - lo:, :-1], ok[a - lo:, 1:] & ok[a - lo:, :-1],
                                  (slice(None), line_cols)),  # neighbours along the rows: lines are columns
                                 (cl[1:] != cl[:-1], ok[1:] & ok[:-1], line_rows)):  # along the columns: rows
            hit = diff & both
            not_line = (slice(None), ~line_cols) if isinstance(line, tuple) else ~line
            on[0] += int(hit[line].sum())
            on[1] += int(both[line].sum())
            off[0] += int(hit[not_line].sum())
            off[1] += int(both[not_line].sum())
    if on[1] == 0 or off[1] == 0 or off[0] == 0:
        return None
    return (on[0] / on[1]) / (off[0] / off[1])


#: A score from fewer labelled pixels than this, or from fewer than half the map's classes, is flagged.
MIN_SCORED_PIXELS = 2000


def thin_score(cm, in_map: int) -> str | None:
    """Why a score means little (too few pixels, or fewer than half of the ``in_map`` classes of the map, scored),
    or None.

    >>> thin_score(np.diag([300, 200, 54, 0, 0, 0, 0]), 7)
    'scored on 554 pixels and 3 of 7 classes: too few to stand for the map'
    """
    cm = np.asarray(cm)
    px, present = int(cm.sum()), int((cm.sum(1) > 0).sum())
    if px < MIN_SCORED_PIXELS or present < in_map / 2:
        return f"scored on {px:,} pixels and {present} of {in_map} classes: too few to stand for the map"
    return None


def one_class(cm, dominant: float = 0.95) -> str | None:
    """Why a map (or fold model) has collapsed, or None: one class predicted for at least ``dominant`` of the
    scored pixels where the reference holds several classes (its largest under ``dominant``).

    >>> one_class([[50, 0], [49, 1]]), one_class([[45, 5], [10, 40]])
    ('predicts one class for 99 % of the scored pixels, which hold 2 classes', None)
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.size == 0 or cm.sum() == 0:
        return None
    pred, ref = cm.sum(0) / cm.sum(), cm.sum(1) / cm.sum()
    if pred.max() >= dominant and ref.max() < dominant:
        return (f"predicts one class for {100 * pred.max():.0f} % of the scored pixels, which hold "
                f"{int((ref > 0).sum())} classes")
    return None


def evaluate_map(classes: np.ndarray, labels: np.ndarray, mask: np.ndarray, names, *,
                 regions: dict[str, np.ndarray] | None = None, boundary_width: int = 3) -> dict:
    """Every measure of a class map against the labels, per evaluation region, never mixed.

    ``regions`` maps a name (e.g. ``"held_out"``, ``"whole_map"``) to a boolean map of the pixels it scores;
    default: the whole valid map. Each region gets :func:`scores` over all its labelled pixels and over its
    boundary zone (and a ``caution`` when too few pixels or classes were scored, :func:`thin_score`); the map
    gets its salt-and-pepper share and fragment counts.

    Parameters
    ----------
    classes
        The map (class indices).
    labels, mask
        The labels (:data:`~lithocore.area.NO_LABEL` where none) and the valid mask.
    names
        Class names, in index order.
    regions
        Name -> boolean map of the pixels each score covers.
    boundary_width
        Pixels either side of a geological boundary for the boundary scores.

    Returns
    -------
    dict
        Per region its scores (OA, mIoU, kappa, per-class IoU, confusion matrix, ``boundary``); ``noise``.
    """
    from .tiles import value_counts

    n = len(names)
    regions = regions or {"whole_map": mask}
    in_map = int((value_counts(labels, mask, n) > 0).sum())
    cms = {name: np.zeros((n, n), np.int64) for name in regions}
    cmbs = {name: np.zeros((n, n), np.int64) for name in regions}
    for a, b in row_strips(*labels.shape, 32, boundary_width):  # strip by strip: no scene-sized selection or zone
        zone = _zone_rows(labels, boundary_width, a, b)
        for name, region in regions.items():
            sel = np.asarray(region[a:b], bool) & mask[a:b]
            cms[name] += confusion_matrix(labels[a:b], classes[a:b], n, sel)
            cmbs[name] += confusion_matrix(labels[a:b], classes[a:b], n, sel & zone)
    out = {}
    for name in regions:
        cm, cmb = cms[name], cmbs[name]
        out[name] = scores(cm, names) | {"confusion_matrix": cm.tolist(),
                                         "boundary": scores(cmb, names) | {"width_pixels": boundary_width}}
        out[name]["caution"] = thin_score(cm, in_map)
    out["noise"] = dict(salt_and_pepper=salt_and_pepper(classes, mask, n), **fragments(classes, mask, n))
    return out
