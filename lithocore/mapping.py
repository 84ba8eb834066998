"""Mapping a whole scene with a trained FCN: large windows on the network's grid, bounded memory, cloud-optimised
GeoTIFFs, on one process or on a Dask cluster.

A fully convolutional network takes any input whose sides are multiples of 32. The scene is cut into *windows*
of one size (sides multiples of 32, as large as the memory budget allows: the whole default scene fits in one at
1 GB) spread evenly over it, and each window gives the map of its *core*: the window less a ``margin`` of context
on every side where the scene goes on (a window at the scene's edge needs none there, so its core is larger).
Only the core of each window is kept, so

- there is no window edge inside the map: every kept pixel has ``margin`` pixels of context or more, or the
  scene's edge (the window-step stripes of 128-px windows blended at 50 % overlap came from the windows'
  zero-padded edges);
- windows start on the network's 32-pixel grid (cores and margins are multiples of 32), so neighbouring
  windows pool the same pixels together and agree where their contexts overlap;
- no pixel is predicted twice, and no context is made up: at the scene's edges the window is moved inward (all
  windows have one size, so the network is traced once) rather than padded with ``margin`` reflected pixels; a
  scene that is one core is one forward pass over the scene padded to the 32-px grid, as a bare pass is. Only
  the shifted passes (:func:`window_predictor`) need ``edge`` = 32 reflected pixels around the scene.

Each window is an independent task: :func:`map_geotiff` runs them in this process or, given ``cluster``, as
tasks of a ``dask.distributed`` cluster whose workers load the model once each (a Keras network, or a
scikit-learn forest, which maps pixel by pixel: give it ``margin=0``); both paths run the same
function on the same windows and give the same map, pixel for pixel. Outputs are written window by window to a
tiled GeoTIFF (peak memory: one window, not the scene) and then copied into a cloud-optimised GeoTIFF (COG) with
overviews, by GDAL: the class map (class ids of the class table, its colours and names, a QGIS style ``.qml``
beside it) and the confidence (the largest class probability, as Byte: value / 250, 255 = nodata).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import rasterio

from .area import NO_LABEL, ClassTable, Grid, gdal_cache
from .framework import start_keras
from .outputs import GeoTiffWriter, write_cog
from .settings import MappingSettings
from .runfolder import atomic_path, scratch

__all__ = ["WindowPlan", "plan_windows", "bytes_per_pixel", "live_floats", "predict_window", "read_window", "scene_outputs",
           "window_predictor", "map_array", "connect", "in_order",
           "map_geotiff", "write_class_map", "class_map_writer", "read_class_map", "read_confidence", "class_map_colours", "write_qml", "write_cog", "CONFIDENCE_SCALE"]

#: Context kept around every window's core, in pixels (a multiple of 32).
DEFAULT_MARGIN = MappingSettings.margin  # 64
#: Memory for one window (input and every layer's output), in MB, when none is given: a quarter of the memory
#: available when mapping starts, at most this. More only saves a few margins, and a larger default made mapping
#: the workbook's largest memory (``benchmarks/README.md``); give ``memory_mb`` (notebook 05's ``map_memory_mb``)
#: for more.
DEFAULT_MEMORY_MB = 512
#: Shifted passes averaged per window for a network whose upsampling leaves an imprint (:func:`leaves_imprint`,
#: :func:`window_predictor`): the FCN-8s's transposed convolutions leave a 4-pixel imprint; four passes shifted
#: across the 32-px grid and every 4-px phase (0, 9, 18 and 27 px) bring its stripe ratio to the per-pixel
#: forest's (``benchmarks/README.md``). Other networks map in one pass.
DEFAULT_SHIFTS = 4
#: Confidence (and notebook 07's probabilities) is stored as Byte: probability = value * CONFIDENCE_SCALE, the value
#: the probability x CONFIDENCE_STEPS rounded; 255 is nodata.
CONFIDENCE_STEPS = 250
CONFIDENCE_SCALE = 1 / CONFIDENCE_STEPS
CONFIDENCE_NODATA = 255


def memory_budget_mb(memory_mb: float | None = None) -> float:
    """``memory_mb``, or a quarter of the memory available now, at most :data:`DEFAULT_MEMORY_MB`."""
    if memory_mb is not None and memory_mb > 0:
        return float(memory_mb)
    import psutil

    return float(min(DEFAULT_MEMORY_MB, psutil.virtual_memory().available / 4 / 2 ** 20))


def _ceil32(n: float) -> int:
    return max(32, int(math.ceil(n / 32)) * 32)


def _blocks(n_px: int, margin: int, edge: int) -> tuple[int, int]:
    """An axis of ``n_px`` pixels in 32-px blocks: (its extent with ``edge`` pixels beyond both ends, the margin)."""
    return math.ceil(n_px / 32) + 2 * (edge // 32), margin // 32


def _window_blocks(extent: int, margin: int, n: int) -> int:
    """The least window (in 32-px blocks) with which ``n`` windows cover ``extent`` blocks, neighbours overlapping
    by two margins (every core border inside the scene ``margin`` from both windows' edges): ``n`` windows of ``B``
    cover ``n B - 2 (n - 1) margin``."""
    return extent if n <= 1 else 2 * margin + math.ceil((extent - 2 * margin) / n)


def _windows_needed(extent: int, margin: int, window: int) -> int:
    """How few windows of ``window`` blocks cover ``extent`` blocks with two margins' overlap (0: none do)."""
    if window >= extent:
        return 1
    return math.ceil((extent - 2 * margin) / (window - 2 * margin)) if window > 2 * margin else 0


@dataclass(frozen=True)
class WindowPlan:
    """How a scene of ``shape`` is cut into windows of ``window`` (rows, cols) pixels, with ``margin`` pixels of
    context kept around each window's *core* (the part of the map it gives) where the scene goes on, and ``edge``
    pixels reflected beyond the scene's edges (0, or 32 for shifted passes).

    All windows have one size (the network is traced once) and start on the network's 32-px grid; along each axis
    they are spread evenly over the scene (from ``-edge`` to its extent on the grid plus ``edge``), and each border
    between two cores lies halfway through the two windows' overlap, at least ``margin`` from both windows' edges.
    A window at the scene's edge needs no margin on that side, so its core is larger: ``n`` windows cover
    ``n window - 2 (n - 1) margin`` (equal cores, each with two margins, cover ``2 margin`` less each).

    Examples
    --------
    >>> p = plan_windows((1611, 1650), max_core=2048)
    >>> p.core, p.window, len(p.origins()), round(p.cost(), 2)
    ((1611, 1650), (1632, 1664), 1, 1.0)
    >>> p = plan_windows((1611, 1650), max_core=1024, edge=32)  # 32 px reflected beyond the scene's edges
    >>> p.window, p.origins(), round(p.cost(), 2)
    ((928, 928), [(0, 0), (0, 832), (800, 0), (800, 832)], 1.27)
    >>> p.start(800, 832), p.core_at(800, 832)  # 64 px of context above and left of the core, 32 beyond the scene
    ((736, 768), (811, 818))
    """

    shape: tuple[int, int]
    window: tuple[int, int]
    margin: int
    edge: int = 0

    def __post_init__(self):
        for i in (0, 1):
            extent, m = _blocks(self.shape[i], self.margin, self.edge)
            if self.window[i] % 32 or not 0 < self.window[i] <= 32 * extent or not _windows_needed(
                    extent, m, self.window[i] // 32):
                raise ValueError(f"a window of {self.window[i]} px along axis {i} does not tile {self.shape[i]} px "
                                 f"with a {self.margin}-px margin on the 32-px grid")

    def _axis(self, i: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Along axis ``i``: the windows' first pixels and the cores' bounds (one more), in scene pixels."""
        return _layout(self.shape[i], self.window[i], self.margin, self.edge)

    @property
    def core(self) -> tuple[int, int]:
        """The largest core (rows, cols), within the scene."""
        return tuple(int(np.diff(self._axis(i)[1]).max()) for i in (0, 1))

    def start(self, r0: int, c0: int) -> tuple[int, int]:
        """Top-left scene pixel of the window of the core at ``(r0, c0)`` (negative: reflected beyond the edge)."""
        return tuple(self._axis(i)[0][self._axis(i)[1].index(o)] for i, o in enumerate((r0, c0)))

    def core_at(self, r0: int, c0: int) -> tuple[int, int]:
        """(rows, cols) of the core at ``(r0, c0)``, within the scene."""
        return tuple(b[b.index(o) + 1] - o for b, o in ((self._axis(0)[1], r0), (self._axis(1)[1], c0)))

    def core_slices(self, r0: int, c0: int) -> tuple[slice, slice]:
        """The scene's rows and columns of the core at ``(r0, c0)``."""
        h, w = self.core_at(r0, c0)
        return slice(r0, r0 + h), slice(c0, c0 + w)

    def borders(self) -> dict[str, list[int]]:
        """The rows and columns where two cores meet (where a seam would show): ``{"rows": [...], "cols": [...]}``."""
        return {k: list(self._axis(i)[1][1:-1]) for i, k in enumerate(("rows", "cols"))}

    def origins(self) -> list[tuple[int, int]]:
        """Top-left scene pixel of every core, row by row."""
        return [(r, c) for r in self._axis(0)[1][:-1] for c in self._axis(1)[1][:-1]]

    @property
    def count(self) -> int:
        """How many windows (``len(origins())``, without listing them)."""
        return len(self._axis(0)[0]) * len(self._axis(1)[0])

    def cost(self, shifts: int = 1) -> float:
        """Pixels the network computes, relative to one forward pass over the scene padded to the 32-px grid;
        with ``shifts`` > 1, that many passes over the window less 32 px (:func:`window_predictor`)."""
        bare = _ceil32(self.shape[0]) * _ceil32(self.shape[1])
        trim = 0 if shifts == 1 else 32
        return self.count * shifts * (self.window[0] - trim) * (self.window[1] - trim) / bare


@functools.lru_cache(maxsize=64)
def _layout(n_px: int, window: int, margin: int, edge: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """:meth:`WindowPlan._axis` for an axis of ``n_px`` pixels: windows spread evenly from ``-edge`` to the extent,
    each core border halfway through two windows' overlap (in 32-px blocks: the overlap is at least two margins)."""
    extent, m = _blocks(n_px, margin, edge)
    b, e = window // 32, edge // 32
    n = _windows_needed(extent, m, b)
    if n == 1:
        return (-edge,), (0, n_px)
    starts = [k * (extent - b) // (n - 1) for k in range(n)]
    borders = [(starts[k - 1] + b + starts[k]) // 2 for k in range(1, n)]  # halfway through the overlap
    return tuple(32 * (s - e) for s in starts), (0,) + tuple(32 * (c - e) for c in borders) + (n_px,)


def plan_windows(shape: tuple[int, int], *, max_core: int | None = None, margin: int = DEFAULT_MARGIN,
                 edge: int = 0, bytes_per_px: float = 400.0, memory_mb: float = 1024.0) -> WindowPlan:
    """Windows on the 32-pixel grid (:class:`WindowPlan`). With ``max_core``: windows of at most ``max_core`` plus
    two margins a side, as few as possible. Without (the workbook's default): the windows, square or not, of
    ``bytes_per_px`` bytes a pixel that fit in ``memory_mb`` and compute the fewest pixels
    (:meth:`WindowPlan.cost`), fewest windows on a tie. An axis in one window needs no margin: a scene that fits
    whole is one window, one that fits in strips is strips. ``edge``: pixels reflected beyond the scene's edges
    (32 for shifted passes; at most the margin).

    >>> p = plan_windows((1611, 1650), bytes_per_px=384, memory_mb=512)  # the default area's U-Net: three strips
    >>> p.window, p.count, p.origins(), round(p.cost(), 2)
    ((1632, 640), 3, [(0, 0), (0, 576), (0, 1088)], 1.15)
    >>> plan_windows((1611, 1650), bytes_per_px=384, memory_mb=1024).window  # one window, no margin
    (1632, 1664)
    """
    for name, v in (("margin", margin), ("edge", edge)):
        if v % 32 or v < 0:
            raise ValueError(f"the {name} must be a non-negative multiple of 32 (the network's grid), got {v}")
    if edge > margin:
        raise ValueError(f"windows with {edge} px reflected beyond the scene's edges need a margin of at least "
                         f"{edge} px, got {margin}")
    shape = (int(shape[0]), int(shape[1]))
    (er, m), (ec, _) = [_blocks(n, margin, edge) for n in shape]
    if max_core is not None:
        if max_core % 32 or max_core < 32:
            raise ValueError(f"the core size must be a positive multiple of 32, got {max_core}")
        k = max_core // 32
        window = [_window_blocks(e, m, 1 if e <= k + 2 * m else math.ceil((e - 2 * m) / k)) for e in (er, ec)]
        return WindowPlan(shape, (32 * window[0], 32 * window[1]), int(margin), int(edge))
    fits = memory_mb * 2 ** 20 / max(bytes_per_px, 1.0) / 32 ** 2  # window blocks (32 x 32 px) the memory holds
    best = None
    for nr in range(1, max(1, er - 2 * m) + 1):  # each count of row windows, and the fewest columns beside it
        br = _window_blocks(er, m, nr)
        nc = _windows_needed(ec, m, int(fits // br))
        if nc:
            plan = WindowPlan(shape, (32 * br, 32 * _window_blocks(ec, m, nc)), int(margin), int(edge))
            if best is None or (plan.cost(), plan.count) < (best.cost(), best.count):
                best = plan
    if best is None:  # no window fits the memory: the smallest, cores of one block
        best = WindowPlan(shape, tuple(32 * _window_blocks(e, m, max(1, e - 2 * m)) for e in (er, ec)),
                          int(margin), int(edge))
    return best


#: What a mapping window held, measured, over the largest set of layer outputs alive at once (:func:`live_floats`):
#: 1.3-1.5 times for the quick profile's U-Net and the slim FCN-8s on 800-1632 px windows (TensorFlow, CPU;
#: ``benchmarks/bench_window_memory.py``). Twice is the margin the window plan keeps.
LIVE_MEMORY_FACTOR = 2.0


def live_floats(model) -> int:
    """The most float values a functional Keras model's forward pass holds at once: layer by layer in the graph's
    order, each output kept until its last consumer has run (the skip connections of a U-Net or FCN-8s stay
    alive across the network). Summing every layer's output instead overstates it three-fold."""
    def tensors(x):
        return list(x) if isinstance(x, (list, tuple)) else [x]

    layers = [l for l in model.layers if getattr(l, "output", None) is not None]
    inputs = {l.name: ([] if l.__class__.__name__ == "InputLayer" else tensors(l.input)) for l in layers}
    last = {id(t): i for i, l in enumerate(layers) for t in inputs[l.name]}
    alive, now, peak = {}, 0, 0
    for i, l in enumerate(layers):
        for o in tensors(l.output):
            alive[id(o)] = int(np.prod(o.shape[1:]))
            now += alive[id(o)]
        peak = max(peak, now)
        for t in inputs[l.name]:
            if last.get(id(t)) == i and id(t) in alive:
                now -= alive.pop(id(t))
    return peak


def bytes_per_pixel(model) -> float:
    """Memory of one forward pass per input pixel: the layer outputs alive at once (float32, :func:`live_floats`)
    times :data:`LIVE_MEMORY_FACTOR`. 400 bytes for a model that is not a Keras model."""
    if _is_forest(model):  # the features, and the class probabilities summed over trees (float64, a few copies)
        return 4.0 * int(getattr(model, "n_features_in_", 9)) + 32.0 * len(model.classes_) + 16.0
    if not _is_keras(model):  # a plain callable (tests)
        return 400.0
    if _BYTES_PER_PX.get(id(model), (None,))[0] is model:  # rebuilding the network to count costs 0.07 s
        return _BYTES_PER_PX[id(model)][1]
    try:
        from .model import with_input_size

        probe = 64
        value = LIVE_MEMORY_FACTOR * 4.0 * live_floats(with_input_size(model, probe)) / probe ** 2
    except Exception:  # a subclassed model, whose configuration cannot be rebuilt
        value = 400.0
    _BYTES_PER_PX.clear()
    _BYTES_PER_PX[id(model)] = (model, value)
    return value


_BYTES_PER_PX: dict = {}


def predict_window(predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                   read: Callable[[int, int, int, int], np.ndarray], plan: WindowPlan, r0: int,
                   c0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One core: (class index, confidence, valid) arrays of the core's part of the scene.

    ``read(r_lo, r_hi, c_lo, c_hi)`` returns raw stack pixels (C, rows, cols); the window is that block with the
    scene's edges reflected (edge pixels not repeated). A pixel is valid where every channel is finite; the
    others are given ``predict.fill`` (the mean, 0 once normalised, as in training). ``predict`` maps a raw
    (1, C, h, w) window to (h, w) class indices and largest probabilities (:func:`window_predictor`).
    """
    raw, ok, (i, j, h, w) = read_window(read, plan, r0, c0, getattr(predict, "fill", 0.0))
    cls, conf = predict(raw[None])
    t = getattr(predict, "trim", 0)  # a predictor that averages shifts returns the window less 32 px a side
    sl = (slice(i - t, i - t + h), slice(j - t, j - t + w))
    return np.asarray(cls)[sl].astype(np.uint8, copy=False), np.asarray(conf, np.float32)[sl], ok[i:i + h, j:j + w]


def read_window(read: Callable[[int, int, int, int], np.ndarray], plan: WindowPlan, r0: int, c0: int, fill=0.0):
    """The window of the core at ``(r0, c0)``: ``(raw (C, rows, cols) float32, valid, (i, j, h, w))``, the core
    being ``raw[:, i:i + h, j:j + w]``. The scene's edges are reflected (edge pixels not repeated); a pixel is
    valid where every channel is finite, the others are given ``fill`` (the mean, 0 once normalised)."""
    H, W = plan.shape
    (ch, cw), (wh, ww) = plan.core_at(r0, c0), plan.window
    sr, sc = plan.start(r0, c0)
    a, b, c, d = max(0, sr), min(H, sr + wh), max(0, sc), min(W, sc + ww)
    raw = np.asarray(read(a, b, c, d), np.float32)
    pads = ((0, 0), (a - sr, sr + wh - b), (c - sc, sc + ww - d))
    if any(p for pair in pads for p in pair):
        raw = np.pad(raw, pads, mode="reflect") if min(H, W) > 1 else np.pad(raw, pads, mode="edge")
    ok = np.isfinite(raw.sum(axis=0))  # NaN or an infinity in any channel (or a sum past 3e38) makes it not finite
    if not ok.all():  # fed as the predictor's fill (0 once normalised, as in training), never written back
        bad = ~ok
        raw = raw.copy() if raw.base is not None else raw  # a view of the caller's stack
        raw[:, bad] = np.asarray(fill, np.float32).reshape(-1, 1)
    return raw, ok, (r0 - sr, c0 - sc, ch, cw)


def scene_outputs(net, stack, mean, std, *, region: np.ndarray | None = None, margin: int = DEFAULT_MARGIN,
                  memory_mb: float | None = None) -> np.ndarray:
    """(K, H, W) float32: a network's outputs (class probabilities, an embedding) over the scene, in the windows a
    map is made in (:func:`plan_windows`, :func:`read_window`: the same margins and reflected edges, so its argmax
    is the map's class), one pass. With ``region``, only the windows whose core holds some of it (0 elsewhere).
    Not-finite inputs count as the mean."""
    from .model import any_size

    net = any_size(net)
    C, H, W = stack.shape
    mean, std = np.asarray(mean, np.float32).ravel(), np.asarray(std, np.float32).ravel()
    plan = plan_windows((H, W), margin=margin, bytes_per_px=bytes_per_pixel(net),
                        memory_mb=memory_budget_mb(memory_mb))
    out = None
    for r0, c0 in plan.origins():
        if region is not None and not region[plan.core_slices(r0, c0)].any():
            continue
        raw, _, (i, j, h, w) = read_window(lambda a, b, c, d: stack[:, a:b, c:d], plan, r0, c0, mean)
        x = ((np.moveaxis(raw, 0, -1) - mean) / std).astype(np.float32)
        p = np.asarray(net.predict_on_batch(x[None]), np.float32)[0]
        if out is None:
            out = np.zeros((p.shape[-1], H, W), np.float32)
        out[:, r0:r0 + h, c0:c0 + w] = np.moveaxis(p[i:i + h, j:j + w], -1, 0)
    return out


_HEADS: dict = {}


def window_predictor(model, mean, std, *, plan: WindowPlan | None = None,
                     shifts: int = 1) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``raw (1, C, h, w) -> (class index, largest probability)`` for one window, normalised with ``mean`` and
    ``std`` (:func:`predict_window` gives the pixels where a channel is not finite the mean, ``predict.fill``).

    ``shifts`` > 1 averages the class probabilities of the network run on the window shifted diagonally by
    ``32 k / shifts + k % 4`` pixels (k = 0 ... shifts - 1: spread over the 32-px grid and, for four shifts,
    every 4-px phase), so that the imprint of the network's pooling grid and upsampling falls at different places
    and averages out; each pass covers the window less 32 px, and the maps returned are the window less 32 px on
    every side (``predict.trim``; the ``plan``'s margin and edge must be at least 32 px). Costs ``shifts`` passes.

    A Keras model gets all of it in its own graph (multi-threaded; no (h, w, classes) array comes back: the class
    is the first class at the largest probability, as ``argmax``'s, found class by class: :func:`_first_largest`;
    in one pass of a network that ends in a softmax, from its scores: :func:`_largest_probability`);
    anything else with ``predict_on_batch`` (h, w, C) -> (h, w, classes) is wrapped in numpy."""
    mean = np.asarray(mean, np.float32).ravel()
    std = np.asarray(std, np.float32).ravel()
    shifts = max(1, int(shifts))
    if shifts > 1 and (plan is None or plan.margin < 32 or plan.edge < 32):
        raise ValueError("averaging over shifted windows needs a window plan with a margin of at least 32 px "
                         "(and 32 px at the scene's edges: plan_windows(..., edge=32))")
    k = (id(model), mean.tobytes(), std.tobytes(), shifts)
    if k in _HEADS and _HEADS[k][0] is model:
        return _HEADS[k][1]
    if _is_forest(model):  # a per-pixel classifier on the raw channels (the forest of notebook 06)
        if shifts > 1:
            raise ValueError("shifted passes are for a convolutional network, not a per-pixel forest")

        def predict(raw):
            C, h, w = raw.shape[1:]
            proba = model.predict_proba(raw[0].reshape(C, -1).T)  # NaN already filled by predict_window
            return (np.asarray(model.classes_)[np.argmax(proba, axis=1)].reshape(h, w),
                    proba.max(axis=1).astype(np.float32).reshape(h, w))
        predict.trim, predict.fill = 0, mean
        return predict
    try:
        keras = start_keras()
        ops = start_keras().ops

        model.outputs  # a functional Keras model, else AttributeError
        inp = keras.Input((len(mean), None, None), name="raw_window")
        x = ops.transpose(inp, (0, 2, 3, 1)) * (1 / std) - mean / std
        logits = _before_softmax(keras, model) if shifts == 1 else None
        if logits is not None:  # the class and its probability from the scores: no softmax over every class
            outputs = _largest_probability(ops, logits(x))
        elif shifts == 1:
            outputs = _first_largest(ops, model(x))
        else:  # the window less 32 px a side, predicted from windows shifted along the diagonal, averaged
            parts = []
            for j in range(shifts):
                o = min(31, 32 * j // shifts + j % 4)  # spread over the 32-px grid, every 4-px phase
                po = model(x[:, o:o - 32, o:o - 32, :])  # 32 px smaller: still on the network's grid
                parts.append(po[:, 32 - o:(-o or None), 32 - o:(-o or None), :])
            p = parts[0]
            for q in parts[1:]:
                p = p + q
            outputs = _first_largest(ops, p / float(shifts))
        head = keras.Model(inp, list(outputs))

        traced = {}

        def predict(raw):
            if traced.get("shape") != raw.shape:  # traced again for each window size: a trace for any size (what
                head.predict_function = None  # Keras falls back to at the second size) fails in bilinear upsampling
                traced["shape"] = raw.shape
            cls, conf = head.predict_on_batch(raw)
            return np.asarray(cls)[0], np.asarray(conf)[0]
    except AttributeError:  # not a functional Keras model
        if shifts > 1:
            raise ValueError("averaging over shifted windows needs a Keras model")

        def predict(raw):
            x = ((raw[0].transpose(1, 2, 0) - mean) / std).astype(np.float32)
            p = np.asarray(model.predict_on_batch(x[None]), np.float32)[0]
            return np.argmax(p, axis=-1), p.max(axis=-1)
    predict.trim = 32 if shifts > 1 else 0
    predict.fill = mean
    while len(_HEADS) >= 4:  # a few heads kept (one pass and shifted passes of one model alternate in benchmarks)
        _HEADS.pop(next(iter(_HEADS)))
    _HEADS[k] = (model, predict)
    return predict


def _first_largest(ops, p):
    """(first class at the largest value, the largest value) over the last axis of ``p``, as ``argmax`` and
    ``max`` give them, class by class: a strict comparison keeps the first class on a tie. Three quarters of the
    time of a reduction over the short last axis (``ops.max`` and a masked ``ops.min``: 0.165 vs 0.213 s over
    2.7 M px x 8 classes, TensorFlow on 2 CPU cores), about half that of ``ops.argmax`` (0.307 s)."""
    top = p[..., 0]
    first = ops.zeros_like(top, dtype="uint8")
    for k in range(1, int(p.shape[-1])):
        q = p[..., k]
        first = ops.where(ops.greater(q, top), ops.cast(k, "uint8"), first)
        top = ops.maximum(top, q)
    return first, top


def _before_softmax(keras, model):
    """The network up to its last layer when that is a softmax over the classes (the registry's networks), else
    None."""
    last = model.layers[-1]
    if type(last).__name__ != "Softmax" or len(model.outputs) != 1 or np.ravel(last.axis).tolist() not in ([-1], [3]):
        return None
    try:
        return keras.Model(model.inputs, last.input) if model.outputs[0] is last.output else None
    except (AttributeError, ValueError):  # a softmax layer called more than once: its input is not one tensor
        return None


def _largest_probability(ops, z):
    """(first class at the largest score, its softmax probability) of the scores ``z`` (logits, the last axis
    the classes): the class of the softmax's largest probability and that probability, 1 / sum(exp(z - max)),
    without the softmax's division of every class (6 % of a 1632 x 640 window of the quick U-Net: 256 against
    272 ms; the probabilities within 2e-7 of the softmax's)."""
    first, top = _first_largest(ops, z)
    return first, 1.0 / ops.sum(ops.exp(z - top[..., None]), axis=-1)


def _is_forest(model) -> bool:
    """A scikit-learn classifier (``predict_proba`` and ``classes_``: class indices of the class table)."""
    return hasattr(model, "predict_proba") and hasattr(model, "classes_")


def _is_keras(model) -> bool:
    """A functional Keras model (not a plain object with ``predict_on_batch``)."""
    return hasattr(model, "get_config") and hasattr(model, "inputs")


def _prepare(model):
    """The network at any input size (Keras models built for a fixed tile are rebuilt, same weights)."""
    if _is_keras(model):
        from .model import any_size

        return any_size(model)
    return model


def leaves_imprint(model) -> bool:
    """Whether a network's upsampling leaves a grid imprint on its maps: a strided transposed convolution (the
    FCN-8s's) does, class changes on every 4th row and column 1.5-2 x as often as elsewhere; bilinear
    upsampling followed by a convolution (the U-Net's) does not (``benchmarks/README.md``)."""
    if not _is_keras(model):
        return False
    for layer in model._flatten_layers(include_self=False) if hasattr(model, "_flatten_layers") else model.layers:
        if "Transpose" in type(layer).__name__ and any(s > 1 for s in np.ravel(getattr(layer, "strides", 1))):
            return True
    return False


def _shifts(model, shifts: int | None) -> int:
    """``shifts`` when given (None or a negative: the model's); else :data:`DEFAULT_SHIFTS` for a network whose
    upsampling leaves an imprint (:func:`leaves_imprint`) and one pass for anything else."""
    if shifts is not None and shifts >= 1:
        return int(shifts)
    return DEFAULT_SHIFTS if leaves_imprint(model) else 1


def _edge(shifts: int) -> int:
    """Pixels reflected beyond the scene's edges: 32 for shifted passes, which need them, else none."""
    return 32 if shifts > 1 else 0


def map_array(model, stack: np.ndarray, mask: np.ndarray, mean, std, *, max_core: int | None = None,
              margin: int = DEFAULT_MARGIN, memory_mb: float | None = None, shifts: int | None = None,
              progress: bool = True, confidence: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Map a stack (in memory, or a :class:`~lithocore.stackfile.StackFile` read window by window): (class index
    map, confidence), each exactly the scene's shape. Windows whose core holds no pixel of ``mask`` are skipped
    (a fold model maps only its test region); the others are the same whatever the mask. ``confidence`` False:
    None for it (a fold's classes only: four bytes a pixel fewer).

    Class index :data:`~lithocore.area.NO_LABEL` and confidence NaN outside ``mask`` or where a channel is NaN.
    ``shifts``: see :func:`window_predictor`.

    Parameters
    ----------
    model
        A Keras model or anything with ``predict_proba``.
    stack, mask
        The stack (C, H, W) and the valid pixels.
    mean, std
        The channels' normalisation.
    max_core, margin, memory_mb, shifts, progress
        As :func:`map_geotiff`.

    Returns
    -------
    (np.ndarray, np.ndarray)
        Class indices (uint8) and confidence (float32), each (H, W).
    """
    from tqdm.auto import tqdm

    model = _prepare(model)
    H, W = mask.shape
    shifts = _shifts(model, shifts)
    plan = plan_windows((H, W), max_core=max_core, margin=margin, edge=_edge(shifts),
                        bytes_per_px=bytes_per_pixel(model), memory_mb=memory_budget_mb(memory_mb))
    classes = np.full((H, W), NO_LABEL, np.uint8)
    conf = np.full((H, W), np.nan, np.float32) if confidence else None
    predict = window_predictor(model, mean, std, plan=plan, shifts=shifts)
    origins = [o for o in plan.origins() if mask[plan.core_slices(*o)].any()]  # nothing to map: skipped
    for r0, c0 in tqdm(origins, desc="mapping", unit="window", disable=not progress):
        cls, p, ok = predict_window(predict, lambda a, b, c, d: stack[:, a:b, c:d], plan, r0, c0)
        h, w = cls.shape
        ok &= mask[r0:r0 + h, c0:c0 + w]
        classes[r0:r0 + h, c0:c0 + w] = np.where(ok, cls, NO_LABEL)
        if conf is not None:
            conf[r0:r0 + h, c0:c0 + w] = np.where(ok, p, np.nan)
    return classes, conf


def class_map_colours(table: ClassTable) -> dict:
    """GeoTIFF colour table: class id (the pixel value) -> RGBA (the class table's colours); nodata clear."""
    out = {}
    for cid, c in zip(table.ids, table.colours):
        c = c.lstrip("#")
        out[int(cid)] = (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), 255)
    out[table.id_dtype()[1]] = (0, 0, 0, 0)
    return out


def _class_tags(table: ClassTable) -> dict:
    meta = {f"class_{cid}": n for n, cid in zip(table.names, table.ids)}
    meta["classes"] = json.dumps(table.to_list(), default=str)
    meta["pixel_values"] = "class ids of the class table (as in the label raster)"
    return meta


def write_class_map(path, classes: np.ndarray, grid: Grid, table: ClassTable, *, tags: dict | None = None) -> Path:
    """A class map GeoTIFF for QGIS from class *indices*: the file stores the class *ids* of the class table
    (as the label raster does), with the table's colours and names; nodata where no class. A cloud-optimised
    GeoTIFF with overviews, and a QGIS style (``.qml``) beside it.

    Parameters
    ----------
    path
        The GeoTIFF to write (the ``.qml`` goes beside it).
    classes
        Class indices (:data:`~lithocore.area.NO_LABEL` where none).
    grid, table
        The map's grid and the class table.
    tags
        Provenance written into the file.

    Returns
    -------
    pathlib.Path
    """
    with class_map_writer(path, grid, table, tags=tags) as w:
        w.write(table.to_ids(classes))
    return Path(path)


def class_map_writer(path, grid: Grid, table: ClassTable, *, tags: dict | None = None, **writer) -> GeoTiffWriter:
    """A class map written piece by piece (:class:`~lithocore.outputs.GeoTiffWriter`, given ``writer``'s other
    options; write class *ids*, ``table.to_ids``): the file :func:`write_class_map` makes, its QGIS style and legend
    written beside it now."""
    dtype, nodata = table.id_dtype()
    colormap = class_map_colours(table) if dtype in ("uint8", "uint16") else None
    write_qml(Path(path).with_suffix(".qml"), table)
    _legend_png(path, table)
    return GeoTiffWriter(path, grid, 1, dtype, nodata=nodata, band_names=["class id"], colormap=colormap,
                         tags=_class_tags(table) | (tags or {}), cog="nearest", **writer)


def read_class_map(path, table: ClassTable) -> tuple[np.ndarray, dict]:
    """A class map written by the workbook, as class indices (:data:`NO_LABEL` for none), and its tags.

    Refuses a map written with another class table (other ids, names or order).

    Parameters
    ----------
    path
        A class map the workbook wrote.
    table
        The class table it must have been written with.

    Returns
    -------
    (np.ndarray, dict)
        Class indices and the file's tags.

    Raises
    ------
    ValueError
        When the map was written with another class table.
    """
    with rasterio.open(path) as src:
        ids = src.read(1)
        tags = src.tags()
    stored = json.loads(tags.get("classes", "[]"))
    if [(c["id"], c["name"]) for c in stored] != list(zip(table.ids, table.names)):
        raise ValueError(f"{path}: written with the class table {[(c['id'], c['name']) for c in stored]}, not the "
                         f"study area's {list(zip(table.ids, table.names))}")
    return table.to_indices(ids), tags


def write_qml(path, table: ClassTable) -> Path:
    """A QGIS layer style (paletted renderer: each class id with its name and colour) at ``path``; saved as
    ``<map>.qml`` beside ``<map>.tif``, QGIS applies it when the map is opened."""
    from xml.sax.saxutils import quoteattr

    entries = "\n".join(f"        <paletteEntry value=\"{int(cid)}\" color=\"{col.lower()}\" alpha=\"255\" "
                        f"label={quoteattr(str(name))}/>"
                        for cid, name, col in zip(table.ids, table.names, table.colours))
    text = f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.28" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0"/>
    <rasterresampler maxOversample="2"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _legend_png(map_path, table: ClassTable) -> str:
    """``<map>_legend.png`` beside a class map: the class table's ids, names and colours."""
    from .plotting import save_class_legend

    p = Path(map_path)
    return save_class_legend(p.with_name(p.stem + "_legend.png"), table)


#: Pixels of one strip when a confidence map is read strip by strip (:func:`read_confidence`).
READ_STRIP_PIXELS = 2**24


def read_confidence(path, step: int = 1) -> np.ndarray:
    """A confidence map written by the workbook as float probabilities (NaN = nodata); ``step`` > 1: every
    ``step``-th row and column only (what a figure shows of a large scene, :func:`lithocore.plotting.figure_step`),
    read strip by strip so that the whole map (four bytes a pixel) is never held."""
    with gdal_cache(GDAL_CACHE_MB), rasterio.open(path) as src:
        H, W, scale = src.height, src.width, src.scales[0] or 1.0
        out = np.empty((-(-H // step), -(-W // step)), np.float32)
        rows = max(1, READ_STRIP_PIXELS // max(W, 1) // step) * step  # whole steps high
        for a in range(0, H, rows):
            raw = src.read(1, window=rasterio.windows.Window(0, a, W, min(rows, H - a)), masked=True)[::step, ::step]
            out[a // step:a // step + raw.shape[0]] = np.where(raw.mask, np.nan, raw.data.astype(np.float32) * scale)
    return out


def connect(cluster):
    """A ``distributed.Client`` for ``cluster``: a Client (used as it is), ``"local"`` or ``"local:K"`` (a
    LocalCluster of K one-thread worker processes on this machine, 2 by default) or a scheduler address
    (``tcp://host:8786``, e.g. of a cluster started by dask-jobqueue on SLURM or by dask-kubernetes)."""
    from distributed import Client

    if isinstance(cluster, Client):
        return contextlib.nullcontext(cluster)
    text = str(cluster)
    if text == "local" or text.startswith("local:"):
        return _local_cluster(int(text.split(":", 1)[1]) if ":" in text else 2)
    return Client(text)


def in_order(client, submit, items, per_worker: int = 2):
    """Yield ``(item, result)`` for each of ``items`` in their order, ``submit(item)`` (a ``client.submit``'s future)
    run as a task of ``client``'s cluster, ``per_worker`` tasks a worker queued ahead of the one yielded: the
    workers kept busy, and no more results held here than that (a strip of a map or of the stack each)."""
    import collections

    ahead = per_worker * max(1, len(client.scheduler_info()["workers"]))
    queued, todo = collections.deque(), iter(items)
    for item in todo:
        queued.append((item, submit(item)))
        if len(queued) >= ahead:
            break
    while queued:
        item, fut = queued.popleft()
        result = fut.result()
        fut.release()
        nxt = next(todo, None)
        if nxt is not None:
            queued.append((nxt, submit(nxt)))
        yield item, result


@contextlib.contextmanager
def _local_cluster(n: int):
    """A client of a LocalCluster of ``n`` one-thread worker processes, both closed at the end."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
            Client(lc) as client:
        yield client


_WORKER_MODELS: dict = {}


def _worker_model(model_path: str):
    """The model of ``model_path``, loaded once per worker process."""
    if model_path not in _WORKER_MODELS:
        _WORKER_MODELS.clear()
        if model_path.endswith(".joblib"):  # a scikit-learn forest
            import joblib

            _WORKER_MODELS[model_path] = joblib.load(model_path)
        else:
            keras = start_keras()

            _WORKER_MODELS[model_path] = keras.saving.load_model(model_path, compile=False)
    return _WORKER_MODELS[model_path]


#: MB of GDAL's block cache while the maps are written, a confidence map is read, or a cluster task reads its window
#: (each task opens the file: a small cache loses little there, and GDAL's default, 5 % of the memory, would grow
#: with the scene: ``benchmarks/README.md``). In one
#: process the windows are read through one :class:`~lithocore.stackfile.StackFile`, whose cache holds a row of
#: the file's blocks: at 20000 px a forest's 32-row strips read each block once (a block row: 1.3-1.8 s against
#: 17.6-18.4 s opening the file for each strip), a network's windows their shared blocks once (4.8 s a row of
#: 1376 x 992 windows against 8.9 s), for 200-330 MB more memory.
GDAL_CACHE_MB = 64


def _read_stack(stack_path: str):
    def read(a, b, c, d):
        with gdal_cache(GDAL_CACHE_MB), rasterio.open(stack_path) as src:
            return src.read(window=rasterio.windows.Window(c, a, d - c, b - a)).astype(np.float32)
    return read


def _remote_window(model_path: str, stack_path: str, plan: WindowPlan, r0: int, c0: int, mean, std, shifts: int = 1):
    """A window as a cluster task: the worker's model, the stack read from the shared file system."""
    predict = window_predictor(_worker_model(model_path), mean, std, plan=plan, shifts=shifts)
    return (r0, c0) + predict_window(predict, _read_stack(stack_path), plan, r0, c0)


def map_geotiff(model, stack_path, out_dir, table: ClassTable, mean, std, *, mask: np.ndarray | None = None,
                max_core: int | None = None, margin: int = DEFAULT_MARGIN, memory_mb: float | None = None,
                cluster=None, shifts: int | None = None, progress: bool = True, prefix: str = "model",
                tags: dict | None = None) -> dict:
    """Map a stack GeoTIFF into ``<prefix>_classes.tif`` (+ ``.qml``) and ``<prefix>_confidence.tif``, window by
    window (peak memory: one window), as cloud-optimised GeoTIFFs with overviews. Each mapping is tagged with a
    new ``map_id`` (and its ``shifts`` and ``margin``): results computed from the map record it, so a result
    from an earlier map is never read as this one's.

    Pixels where any channel is NaN (or outside ``mask``) are nodata. The class map stores class ids (as the
    label raster does); ``tags`` (provenance) are written into both files. ``cluster``: None (this process),
    ``"local"``/``"local:K"``, a scheduler address or a ``distributed.Client`` (see :func:`connect`): the
    windows become cluster tasks, and the map is the same.

    Parameters
    ----------
    model
        A Keras model, or anything with ``predict_proba`` (a forest); on a cluster it is saved once and loaded by
        each worker.
    stack_path
        The stack GeoTIFF (:func:`lithocore.outputs.read_stack`'s format).
    out_dir
        Where ``<prefix>_classes.tif``, its ``.qml`` and legend, and ``<prefix>_confidence.tif`` go.
    table
        The class table: the map stores its unit ids.
    mean, std
        The channels' normalisation (the model's training statistics).
    mask
        Valid pixels (default: where every channel is finite).
    max_core, margin, memory_mb
        Largest window core (px), the context kept around it (px) and the memory for one window (MB); the window's
        size follows from them.
    cluster
        None (this process), ``"local"``/``"local:K"``, a scheduler address or a ``distributed.Client``.
    shifts
        Passes shifted across the network's grid, averaged (None or -1: :data:`DEFAULT_SHIFTS` for a network that
        leaves an imprint, :func:`leaves_imprint`; 1 otherwise).
    progress
        Show a progress bar.
    prefix
        The files' name (a model's registry key, ``rf_paper``).
    tags
        Provenance written into both files.

    Returns
    -------
    dict
        ``classes`` and ``confidence`` (paths), ``map_id``, the window plan (``windows``, ``window``, ``core`` (the
        largest), ``borders`` (:meth:`WindowPlan.borders`), ``margin``, ``shifts``, ``cost_vs_one_pass``) and
        timings (``seconds``, ``pixels_per_second``).
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _prepare(model)
    t0 = time.perf_counter()
    paths = {k: out_dir / f"{prefix}_{k}.tif" for k in ("classes", "confidence")}
    with rasterio.open(stack_path) as src:
        H, W = src.height, src.width
        grid = Grid(src.crs, src.transform, W, H)
    shifts = _shifts(model, shifts)
    plan = plan_windows((H, W), max_core=max_core, margin=margin, edge=_edge(shifts),
                        bytes_per_px=bytes_per_pixel(model), memory_mb=memory_budget_mb(memory_mb))
    map_id = uuid.uuid4().hex  # this mapping's identity: results computed from the map record it
    extra = {k: str(v) for k, v in (tags or {}).items()} | dict(map_id=map_id, shifts=str(shifts), margin=str(margin))
    with scratch(out_dir, "map") as work:
        windows = _run_windows(model, stack_path, plan, mean, std, cluster, work, shifts)
        bar = tqdm(total=plan.count, desc=f"mapping ({prefix})", unit="window", disable=not progress)
        mapped = _write_windows(paths, grid, table, windows, mask=mask, tags=extra, done=bar.update) - t0
        bar.close()
    seconds = time.perf_counter() - t0
    return dict(classes=str(paths["classes"]), confidence=str(paths["confidence"]),
                style=str(paths["classes"].with_suffix(".qml")), seconds=seconds, mapping_seconds=mapped,
                pixels_per_second=H * W / seconds, windows=plan.count, window=list(plan.window),
                core=list(plan.core), borders=plan.borders(), margin=plan.margin, shifts=shifts,
                cost_vs_one_pass=plan.cost(shifts),
                cluster=None if cluster is None else str(cluster), map_id=map_id, tags=extra)


def _write_windows(paths: dict, grid: Grid, table: ClassTable, windows, *, mask: np.ndarray | None, tags: dict,
                   done: Callable[[int], object]) -> float:
    """The class map (``paths["classes"]``: :func:`class_map_writer`'s file, style and legend) and its confidence
    (``paths["confidence"]``: Byte, :data:`CONFIDENCE_SCALE`), written window by window as ``windows`` yields them
    (:func:`_run_windows`) and made COGs when done (:class:`~lithocore.outputs.GeoTiffWriter`); outside ``mask``
    and where the window is not valid, nodata. ``tags`` in both; ``done(1)`` after each window. Returns the
    ``time.perf_counter()`` at which the last window was written (before the COGs are made)."""
    conf = GeoTiffWriter(paths["confidence"], grid, 1, "uint8", nodata=CONFIDENCE_NODATA,
                         band_names=["confidence (largest class probability)"], scales=(CONFIDENCE_SCALE,),
                         tags=tags | dict(units="probability = value x scale (1/250); 255 = nodata"), cog="average")
    with gdal_cache(GDAL_CACHE_MB), class_map_writer(paths["classes"], grid, table, tags=tags) as dc, conf as dp:
        for r0, c0, cls, p, ok in windows:
            h, w = cls.shape
            if mask is not None:
                ok &= mask[r0:r0 + h, c0:c0 + w]
            dc.write(table.to_ids(np.where(ok, cls, NO_LABEL).astype(np.uint8)), r0, c0)
            dp.write(np.where(ok, np.round(p / CONFIDENCE_SCALE), CONFIDENCE_NODATA).astype(np.uint8), r0, c0)
            done(1)
        written = time.perf_counter()
    return written


def _run_windows(model, stack_path, plan: WindowPlan, mean, std, cluster, work: Path, shifts: int = 1):
    """Yield ``(r0, c0, classes, confidence, valid)`` for every core, from this process or from the cluster."""
    mean, std = [float(v) for v in np.ravel(mean)], [float(v) for v in np.ravel(std)]
    if cluster is None:  # one open file for every window, its cache a row of the file's blocks (StackFile)
        from .stackfile import StackFile

        predict, stack = window_predictor(model, mean, std, plan=plan, shifts=shifts), StackFile(stack_path)
        for r0, c0 in plan.origins():
            yield (r0, c0) + predict_window(predict, lambda a, b, c, d: stack.read((a, b), (c, d)), plan, r0, c0)
        return
    from distributed import as_completed

    if _is_forest(model):
        import joblib

        model_path = str(work / "model.joblib")
        joblib.dump(model, model_path)
    else:
        model_path = str(work / "model.keras")
        model.save(model_path)
    with connect(cluster) as client:
        futures = [client.submit(_remote_window, model_path, str(Path(stack_path).resolve()), plan, r0, c0, mean,
                                 std, shifts, pure=False) for r0, c0 in plan.origins()]
        for fut in as_completed(futures):
            yield fut.result()
            fut.release()
