"""The fused stack as the later stages read it: whole when it fits the memory budget, else window by window from
its cloud-optimised GeoTIFF (:class:`StackFile`), the same values either way.

Every stage after notebook 02 reads the stack through the few operations defined here, so that a province-sized
stack is never held whole:

* ``stack[:, r0:r1, c0:c1]``: a window (a training tile, a mapping window, a strip of rows);
* :func:`pixel_values`: the values at scattered pixels (a forest's training pixels), read strip by strip;
* :func:`at_pixels`: several stacks' values at the same scattered pixels in one pass over the file (each strip's
  rows read once for all of them), kept as :class:`AtPixels` for the fits and predictions that read them;
* :func:`region_stats`: per-channel mean and sd over a region (a model's normalisation), merged strip by strip;
* :class:`Neighbourhood`: a stack plus every channel's local mean and sd, computed strip by strip with a halo.

Each works alike on an in-memory array (C, H, W) and on a :class:`StackFile`, over the same strips of
:data:`STRIP_ROWS` rows, so a result does not depend on whether the stack was held whole or read in windows.
A :class:`StackFile` pickles as its path: a Dask task given one reads its own windows on the worker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .area import block_row_mb, gdal_cache

__all__ = ["StackFile", "open_stack", "pixel_values", "at_pixels", "AtPixels", "region_stats", "Moments",
           "Neighbourhood", "Channels", "STRIP_ROWS", "STACK_IN_MEMORY_MB", "strips", "held_whole", "hold_if_fits"]

#: Rows per strip when a stack is read, or its statistics computed, strip by strip.
STRIP_ROWS = 64

#: Scattered pixels whose windows :meth:`Neighbourhood.pixel_values` computes at a time (a 15-px window of 9 channels:
#: 8 kB a pixel in float32, the sums' float64 copies more).
_PIXELS_AT_ONCE = 4096

#: MB of whole rows a :class:`StackFile` keeps from its last read of whole rows (a strip and its halo: 50 MB at
#: 20000 px, 8 channels); a larger band is read as it is.
BAND_MB = 256

#: A stack up to this size (MB of float32) is read whole; a larger one is read window by window.
STACK_IN_MEMORY_MB = 2048

#: MB of GDAL's block cache for windowed reads, at least: tiles overlap, so a cache saves decompressing blocks
#: twice, and GDAL's default (5 % of the memory) would grow with the scene. A wide scene gets a row of its file
#: blocks and a margin (at most 1 GB; :class:`StackFile`), so that its strips do not decompress a block each.
GDAL_CACHE_MB = 256


class StackFile:
    """A stack GeoTIFF (C, H, W) read window by window: ``stack[:, r0:r1, c0:c1]`` reads that window (float32;
    steps of 1 only), ``stack[c]`` one channel, ``stack[:, r0:r1]`` a strip. Pickles as its path.

    Examples
    --------
    >>> import tempfile
    >>> from rasterio.crs import CRS
    >>> from rasterio.transform import from_origin
    >>> from lithocore.area import Grid
    >>> from lithocore.outputs import write_stack_file
    >>> g = Grid(CRS.from_epsg(32646), from_origin(0, 300, 15, 15), 20, 10)
    >>> a = np.arange(2 * 10 * 20, dtype=np.float32).reshape(2, 10, 20)
    >>> s = StackFile(write_stack_file(Path(tempfile.mkdtemp()) / "s.tif", a, ["a", "b"], ["", ""], g))
    >>> s.shape, np.array_equal(s[:, 2:5, 3:9], a[:, 2:5, 3:9]), np.array_equal(s[1], a[1])
    ((2, 10, 20), True, True)
    """

    ndim = 3
    dtype = np.dtype("float32")

    def __init__(self, path: str | Path):
        from .sources.common import open_raster

        self.path = str(Path(path).resolve())
        with open_raster(self.path) as src:
            self.shape = (src.count, src.height, src.width)
            # a strip (STRIP_ROWS rows, lower than a file block) is read with its row of blocks held: at 20000 px
            # (8 bands, 512-px blocks: 312 MB a row) 256 MB decompressed each block for each of its 8 strips
            # (16.0 s a row of strips; 2.3 s with the row held)
            self.cache_mb = max(GDAL_CACHE_MB, min(1024.0, 1.25 * block_row_mb([src])))
        self._src = None
        self._band: tuple[int, int, np.ndarray] | None = None  # the last band of whole rows read (:meth:`rows`)

    def __getstate__(self):
        return {"path": self.path, "shape": self.shape, "cache_mb": self.cache_mb, "_src": None, "_band": None}

    def __repr__(self) -> str:
        return f"StackFile({self.path!r}, shape={self.shape})"

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def _dataset(self):
        if self._src is None:
            import rasterio

            self._src = rasterio.open(self.path)
        return self._src

    def read(self, rows: tuple[int, int], cols: tuple[int, int], channels: list[int] | None = None) -> np.ndarray:
        """Channels (all by default) of rows ``r0:r1`` and columns ``c0:c1`` (clipped to the scene), float32: a
        new array (whole rows by way of the last band, :meth:`rows`)."""
        (r0, r1), (c0, c1) = rows, cols
        idx = [c + 1 for c in (range(self.shape[0]) if channels is None else channels)]
        if r1 <= r0 or c1 <= c0 or not idx:
            return np.zeros((len(idx), max(r1 - r0, 0), max(c1 - c0, 0)), np.float32)
        band = self._band
        if band is not None and band[0] <= r0 and r1 <= band[1] and 0 <= c0 and c1 <= self.shape[2]:
            return band[2][[i - 1 for i in idx], r0 - band[0]:r1 - band[0], c0:c1]  # a copy (fancy indexing)
        if c0 == 0 and c1 == self.shape[2] and self._band_fits(r1 - r0):
            return self.rows(r0, r1)[[i - 1 for i in idx]]
        return self._file(r0, r1, c0, c1, idx)

    def _file(self, r0: int, r1: int, c0: int, c1: int, idx: list[int]) -> np.ndarray:
        from rasterio.windows import Window

        with gdal_cache(self.cache_mb):
            return self._dataset().read(idx, window=Window(c0, r0, c1 - c0, r1 - r0)).astype(np.float32, copy=False)

    def _band_fits(self, rows: int) -> bool:
        return 4 * self.shape[0] * rows * self.shape[2] <= BAND_MB * 2**20

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Every channel of whole rows ``r0:r1`` (read-only), kept as the last band: a read inside it comes from
        memory, and a band that overlaps its end reads only the rows past it. Strips read with a halo (a
        :class:`Neighbourhood`'s, :func:`at_pixels`) so decompress each file block once: read whole, a band
        that spans two rows of blocks had each decompressed again (at 20000 px, 512-px blocks, 64 strips with 7-row
        halos: 26.4 s read whole, 14.1 s so, 9.9-12.0 s without halos)."""
        band = self._band
        if band is not None and band[0] <= r0 and r1 <= band[1]:
            out = band[2][:, r0 - band[0]:r1 - band[0]]
        else:
            W, every = self.shape[2], list(range(1, self.shape[0] + 1))
            if band is not None and band[0] <= r0 < band[1] < r1:  # the rows it holds, and the next ones from the file
                out = np.concatenate([band[2][:, r0 - band[0]:], self._file(band[1], r1, 0, W, every)], axis=1)
            else:
                out = self._file(r0, r1, 0, W, every)
            out.flags.writeable = False
            if self._band_fits(r1 - r0):
                self._band = (r0, r1, out)
        return out

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > 3 or any(k is Ellipsis for k in key):
            raise IndexError(f"a StackFile takes [channels, rows, columns] indices, got {key!r}")
        key = key + (slice(None),) * (3 - len(key))
        spans, squeeze = [], []
        for axis, k in enumerate(key):
            n = self.shape[axis]
            if isinstance(k, (int, np.integer)):
                k = int(k) + n if k < 0 else int(k)
                if not 0 <= k < n:
                    raise IndexError(f"index {k} is out of range for axis {axis} of size {n}")
                spans.append((k, k + 1))
                squeeze.append(axis)
            elif isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step != 1:
                    raise IndexError("a StackFile reads windows: steps other than 1 are not supported")
                spans.append((start, max(start, stop)))
            else:
                raise IndexError(f"a StackFile takes integers and slices, got {type(k).__name__}")
        out = self.read(spans[1], spans[2], list(range(*spans[0])))
        return out.squeeze(tuple(squeeze)) if squeeze else out

    def __array__(self, dtype=None, copy=None):
        raise TypeError(f"{self.path}: a stack of {self.nbytes / 2**20:,.0f} MB is read window by window, never whole "
                        f"(more than the {STACK_IN_MEMORY_MB} MB budget of lithocore.stackfile.STACK_IN_MEMORY_MB); "
                        f"this step needs it whole")


def open_stack(path: str | Path, *, memory_mb: float | None = None):
    """The stack of ``path``: an in-memory array (C, H, W) float32 when it is at most ``memory_mb`` (default: the
    environment's ``LITHOCORE_STACK_IN_MEMORY_MB``, else :data:`STACK_IN_MEMORY_MB`), else a :class:`StackFile`
    read window by window."""
    from .outputs import read_stack

    s = StackFile(path)
    if held_whole(s.nbytes, memory_mb):
        return read_stack(path)[0]
    return s


def held_whole(nbytes: float, memory_mb: float | None = None) -> bool:
    """Whether ``nbytes`` of channels are held whole rather than read strip by strip: at most ``memory_mb``, else
    the environment's ``LITHOCORE_STACK_IN_MEMORY_MB``, else :data:`STACK_IN_MEMORY_MB` (megabytes).

    >>> held_whole(2**20, 1.0), held_whole(2**20 + 1, 1.0)
    (True, False)
    """
    import os

    if memory_mb is None:
        memory_mb = float(os.environ.get("LITHOCORE_STACK_IN_MEMORY_MB", STACK_IN_MEMORY_MB))
    return nbytes <= float(memory_mb) * 2**20


def hold_if_fits(stack, memory_mb: float | None = None):
    """``stack`` (C, H, W), read strip by strip (a :class:`Neighbourhood`, a :class:`StackFile`), held whole as a
    float32 array when it fits the budget (:func:`held_whole`), else returned as it is. Held, it is filled over the same
    :data:`STRIP_ROWS` strips it is read in, so every value is the one a strip-by-strip reader gets.

    >>> base = np.arange(2 * 130 * 3, dtype=np.float32).reshape(2, 130, 3)
    >>> n = Neighbourhood(base, (3,))
    >>> held = hold_if_fits(n)
    >>> type(held).__name__, np.array_equal(held[:, 60:70], n[:, 60:70]), type(hold_if_fits(n, 0.0)).__name__
    ('ndarray', True, 'Neighbourhood')
    """
    C, H, W = stack.shape
    if not held_whole(4 * C * H * W, memory_mb):
        return stack
    out = np.empty((C, H, W), np.float32)
    for r0 in range(0, H, STRIP_ROWS):
        out[:, r0:r0 + STRIP_ROWS] = stack[:, r0:min(H, r0 + STRIP_ROWS)]
    return out


def strips(rows: np.ndarray | None, height: int, strip: int = STRIP_ROWS):
    """Start rows of the ``strip``-row strips (aligned on multiples of ``strip``) that hold any of ``rows`` (all
    strips when None)."""
    if rows is None:
        return range(0, height, strip)
    return (np.unique(np.asarray(rows) // strip) * strip).tolist()


def pixel_values(stack, pixels: np.ndarray) -> np.ndarray:
    """The values (n, C) float32 of the pixels ``pixels`` (flat indices, in any order), read strip by strip (by
    the stack's own ``pixel_values`` where it has one: :class:`Neighbourhood`, :class:`Channels`).

    >>> pixel_values(np.arange(8, dtype=np.float32).reshape(2, 2, 2), np.array([3, 1])).tolist()
    [[3.0, 7.0], [1.0, 5.0]]
    """
    if hasattr(stack, "pixel_values"):
        return stack.pixel_values(pixels)
    C, H, W = stack.shape
    out = np.empty((len(pixels), C), np.float32)
    for r0, sel, rows, cols in pixels_by_strip(pixels, H, W):
        out[sel] = stack[:, r0:min(H, r0 + STRIP_ROWS)][:, rows - r0, cols].T
    return out


def pixels_by_strip(pixels: np.ndarray, height: int, width: int):
    """For each :data:`STRIP_ROWS` strip holding any of ``pixels`` (flat indices): its first row, the positions in
    ``pixels`` of those it holds, and their rows and columns.

    >>> [(r0, sel.tolist()) for r0, sel, _, _ in pixels_by_strip(np.array([200 * 3, 1, 65 * 3]), 300, 3)]
    [(0, [1]), (64, [2]), (192, [0])]
    """
    pixels = np.asarray(pixels, np.int64)
    rows, cols = pixels // width, pixels % width
    for r0 in strips(rows, height):
        sel = np.flatnonzero((rows >= r0) & (rows < r0 + STRIP_ROWS))
        yield r0, sel, rows[sel], cols[sel]


class Moments:
    """Per-channel count, mean and sum of squared deviations, merged block by block (Chan et al. 1979), in
    float64: the same statistics whatever the blocks."""

    def __init__(self, k: int):
        self.n = np.zeros(k)
        self.mean = np.zeros(k)
        self.m2 = np.zeros(k)

    def add(self, i: int, values: np.ndarray) -> None:
        values = values[np.isfinite(values)].astype(np.float64)
        nb = values.size
        if not nb:
            return
        mb = values.mean()
        m2b = ((values - mb) ** 2).sum()
        n = self.n[i] + nb
        delta = mb - self.mean[i]
        self.mean[i] += delta * nb / n
        self.m2[i] += m2b + delta ** 2 * self.n[i] * nb / n
        self.n[i] = n

    def stats(self, pixels: int) -> dict:
        std = np.sqrt(self.m2 / np.maximum(self.n, 1))
        return dict(mean=self.mean.astype(float).tolist(), std=np.where(std > 0, std, 1.0).astype(float).tolist(),
                    pixels=int(pixels))


def region_stats(stack, region: np.ndarray | None = None) -> dict:
    """Per-channel mean and standard deviation over the finite values of the pixels of ``region`` (H, W) bool, an
    array or a :class:`~lithocore.tiles.RowMap` (None: every pixel), merged strip by strip (:class:`Moments`):
    ``{"mean", "std", "pixels"}`` (a zero sd is given as 1)."""
    C, H, W = stack.shape
    m = Moments(C)
    pixels = 0
    for r0 in range(0, H, STRIP_ROWS):
        sel = slice(None) if region is None else np.asarray(region[r0:r0 + STRIP_ROWS], bool)
        if region is not None and not sel.any():  # a strip without any of the region is not read
            continue
        part = stack[:, r0:r0 + STRIP_ROWS]
        for c in range(C):
            m.add(c, part[c][sel])
        pixels += part.shape[1] * W if region is None else int(sel.sum())
    return m.stats(pixels)


class Channels:
    """Stacks side by side (the channels of each in turn, all of one grid): read like one stack, each part by its
    own rows, never copied whole. A forest's predictors from the stack (or its :class:`Neighbourhood`) and an
    embedding (:mod:`lithocore.embedding`).

    >>> a, b = np.zeros((2, 3, 4), np.float32), np.ones((1, 3, 4), np.float32)
    >>> Channels(a, b).shape, Channels(a, b)[:, 1:2, :2][:, 0].tolist()
    ((3, 3, 4), [[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    """

    ndim = 3
    dtype = np.dtype("float32")

    def __init__(self, *parts):
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"channels of different grids cannot be read as one stack: {sorted(shapes)}")
        self.parts = parts
        self.shape = (sum(p.shape[0] for p in parts), *shapes.pop())

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        ch, rest = (key[0] if key else slice(None)), key[1:]
        out = np.concatenate([np.asarray(p[(slice(None), *rest)], np.float32) for p in self.parts])
        return out[ch]

    def pixel_values(self, pixels: np.ndarray) -> np.ndarray:
        """The values (n, C) of the pixels ``pixels``, each part's by its own :func:`pixel_values`."""
        return np.concatenate([pixel_values(p, pixels) for p in self.parts], axis=1)


class Neighbourhood:
    """A stack plus, for every channel, its local mean and standard deviation over ``size`` x ``size`` windows
    (:func:`lithocore.forest.neighbourhood_features`), computed strip by strip with a halo of rows as they are
    read, or at scattered pixels from their windows alone (:meth:`pixel_values`): indexable and readable like the
    stack, never held whole. Not-finite pixels count as the channel's mean over the scene (``fill``; default:
    computed in one pass over the stack).

    A pixel's values are computed from its own windows in a fixed order, so they do not depend on how it is read
    (a forest trained in one process, on a cluster, or on scattered pixels sees the same values).
    """

    ndim = 3
    dtype = np.dtype("float32")

    def __init__(self, base, sizes: tuple[int, ...], fill: np.ndarray | None = None):
        self.base, self.sizes = base, tuple(int(s) for s in sizes)
        C, H, W = base.shape
        from .forest import neighbourhood_channels

        self.shape = (neighbourhood_channels(C, self.sizes), H, W)
        self.halo = max(self.sizes) // 2
        self.fill = np.asarray(fill if fill is not None else region_stats(base)["mean"], np.float32)
        self._strip: tuple[int, np.ndarray] | None = None

    def __getstate__(self):
        return self.__dict__ | {"_strip": None}

    def names(self) -> list[str]:
        from .forest import neighbourhood_names

        return neighbourhood_names(self.base.shape[0], self.sizes)

    def _rows(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``r0:r1`` of the stack as they are (NaN kept) and what their window features are computed from
        (:func:`lithocore.forest.padded_rows`), read once."""
        from .forest import padded_rows

        H, h = self.shape[1], self.halo
        a, b = max(0, r0 - h), min(H, r1 + h)
        raw = np.asarray(self.base[:, a:b], np.float32)
        return raw[:, r0 - a:r1 - a], padded_rows(raw, a, r0, r1, H, h, self.fill)

    def _compute(self, r0: int) -> np.ndarray:
        if self._strip is not None and self._strip[0] == r0:
            return self._strip[1]
        from .forest import window_features

        C, H = self.base.shape[0], self.shape[1]
        raw, padded = self._rows(r0, min(H, r0 + STRIP_ROWS))
        feats = np.empty((self.shape[0], *raw.shape[1:]), np.float32)
        feats[:C] = raw  # the channels themselves as they are (NaN kept)
        feats[C:] = window_features(padded, self.sizes, self.halo)
        self._strip = (r0, feats)
        return feats

    def pixel_values(self, pixels: np.ndarray) -> np.ndarray:
        """The values (n, F) of the pixels ``pixels`` (flat indices, in any order), :func:`pixel_values`: where a
        strip holds few of them, from the windows around them alone (a forest's scattered training pixels cost
        their windows, not the whole scene's filters); else from the strip's features. The same values either way.
        """
        from .forest import window_features

        C, H, W = self.base.shape
        h = self.halo
        out = np.empty((len(pixels), self.shape[0]), np.float32)
        for r0, sel, rows, cols in pixels_by_strip(pixels, H, W):
            if len(sel) * (2 * h + 1) ** 2 > STRIP_ROWS * W:  # dense: the strip's filters cost less
                out[sel] = self._compute(r0)[:, rows - r0, cols].T
                continue
            lo, hi = int(rows.min()), int(rows.max()) + 1
            raw, padded = self._rows(lo, hi)
            windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * h + 1, 2 * h + 1), axis=(1, 2))
            for c0 in range(0, len(sel), _PIXELS_AT_ONCE):
                i, j = rows[c0:c0 + _PIXELS_AT_ONCE] - lo, cols[c0:c0 + _PIXELS_AT_ONCE]
                part = sel[c0:c0 + _PIXELS_AT_ONCE]
                out[part, :C] = raw[:, i, j].T
                out[part, C:] = window_features(windows[:, i, j], self.sizes, h)[..., 0, 0].T
        return out

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        ch = key[0] if key else slice(None)
        rows = key[1] if len(key) > 1 else slice(None)
        cols = key[2] if len(key) > 2 else slice(None)
        if not isinstance(rows, slice):
            raise IndexError("a Neighbourhood stack is read by slices of rows")
        start, stop, step = rows.indices(self.shape[1])
        if step != 1:
            raise IndexError("a Neighbourhood stack is read by slices of rows with a step of 1")
        parts = []
        for s0 in range(start // STRIP_ROWS * STRIP_ROWS, max(stop, start), STRIP_ROWS):
            f = self._compute(s0)
            parts.append(f[:, max(start, s0) - s0:min(stop, s0 + STRIP_ROWS) - s0])
        if len(parts) == 1:  # within one strip: a read-only view of it, not a copy (205 MB a strip at 20000 px)
            out = parts[0].view()
            out.flags.writeable = False
        else:
            out = np.concatenate(parts, axis=1) if parts else np.zeros((self.shape[0], 0, self.shape[2]), np.float32)
        return out[ch][..., cols] if not isinstance(ch, (int, np.integer)) else out[ch][:, cols]


class AtPixels:
    """A stack's values at chosen pixels, read once (:func:`at_pixels`): :func:`pixel_values` of those pixels comes
    from memory, of any other pixel from the stack; windows are read from the stack.

    >>> s = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    >>> a = AtPixels(s, np.array([5, 1]), pixel_values(s, np.array([5, 1])))
    >>> pixel_values(a, np.array([1, 5, 11])).tolist(), a[:, 0, 0].tolist()
    ([[1.0, 13.0], [5.0, 17.0], [11.0, 23.0]], [0.0, 12.0])
    """

    ndim = 3
    dtype = np.dtype("float32")

    def __init__(self, stack, pixels: np.ndarray, values: np.ndarray):
        order = np.argsort(pixels, kind="stable")
        self.stack, self.shape = stack, tuple(stack.shape)
        self.pixels, self.values = np.asarray(pixels, np.int64)[order], np.asarray(values, np.float32)[order]

    def pixel_values(self, pixels: np.ndarray) -> np.ndarray:
        """The values (n, C) of ``pixels``: those read once from memory, any other from the stack."""
        pixels = np.asarray(pixels, np.int64)
        pos = np.minimum(np.searchsorted(self.pixels, pixels), max(len(self.pixels) - 1, 0))
        held = (self.pixels[pos] == pixels) if len(self.pixels) else np.zeros(len(pixels), bool)
        out = np.empty((len(pixels), self.shape[0]), np.float32)
        out[held] = self.values[pos[held]]
        if not held.all():
            out[~held] = pixel_values(self.stack, pixels[~held])
        return out

    def __getitem__(self, key):
        return self.stack[key]


def _files(stack) -> list[StackFile]:
    """The :class:`StackFile` objects a stack reads (itself, or those under a Neighbourhood, Channels, AtPixels)."""
    if isinstance(stack, StackFile):
        return [stack]
    under = [stack.base] if isinstance(stack, Neighbourhood) else list(stack.parts) if isinstance(stack, Channels) \
        else [stack.stack] if isinstance(stack, AtPixels) else []
    return [f for s in under for f in _files(s)]


def _halo(stack) -> int:
    """Rows above and below its own that a stack reads to make a pixel's values."""
    if isinstance(stack, Neighbourhood):
        return stack.halo + _halo(stack.base)
    if isinstance(stack, Channels):
        return max(_halo(p) for p in stack.parts)
    return _halo(stack.stack) if isinstance(stack, AtPixels) else 0


def at_pixels(stacks: dict, pixels: np.ndarray) -> dict:
    """Each of ``stacks``' values at ``pixels`` (flat indices; one grid), made in one pass over the scene for all of
    them: each :data:`STRIP_ROWS` strip holding any of the pixels has its rows (with the largest halo) read once
    from every file under the stacks (:class:`StackFile`), and every stack's values made from those rows
    (:func:`pixel_values`: the same values as each read alone). ``{name: AtPixels}``.

    A fold's training and test pixels for every forest candidate are read so: one decompression of a province's file
    where each candidate's fit and prediction had read all of it in turn.
    """
    pixels = np.unique(np.asarray(pixels, np.int64))
    shapes = {tuple(s.shape[1:]) for s in stacks.values()}
    if len(shapes) > 1:
        raise ValueError(f"stacks of different grids cannot be read at the same pixels: {sorted(shapes)}")
    if not stacks:
        return {}
    (H, W), h = shapes.pop(), max(_halo(s) for s in stacks.values())
    files = list({id(f): f for s in stacks.values() for f in _files(s)}.values())
    values = {m: np.empty((len(pixels), s.shape[0]), np.float32) for m, s in stacks.items()}
    for r0, sel, _, _ in pixels_by_strip(pixels, H, W):
        a, b = max(0, r0 - h), min(H, r0 + STRIP_ROWS + h)
        for f in files:
            f.rows(a, b)  # read once; every stack's reads of these rows come from it
        for m, s in stacks.items():
            values[m][sel] = pixel_values(s, pixels[sel])
    return {m: AtPixels(s, pixels, values[m]) for m, s in stacks.items()}
