"""Out-of-core fusion: the fused stack of a study area written block by block, straight from its manifest.

:func:`lithocore.data.load_study_area` and :func:`lithocore.fusion.fuse_study_area` hold every fine layer of a
scene in memory (about 1.4 GB for the 2.66 M-pixel default area; some 50 GB for a 10^8-pixel province).
:func:`write_stack` makes the same stack with memory set by the block size, not the scene size:

* the fine layers (guide bands, DEM) are read and brought onto the reference grid a block of rows at a time
  (:func:`read_fine_rows`: only the source window under the block is read, then warped as the whole-scene
  loader warps it);
* the coarse layers, the gridded points and the labels stay small (one byte a pixel for the labels) and are
  loaded as :func:`~lithocore.data.load_study_area` loads them;
* fusion (Eq. 1-2) needs the guide bands' means over each coarse cell: one pass over the blocks adds them up,
  the coefficients are fitted on those small grids exactly as :func:`~lithocore.fusion.fuse` fits them, and a
  second pass writes each block's fused channels. The Gaussian smoothing of the detail reads a halo of rows
  around each block (the filter's full support), so a block's pixels are those of the whole-scene computation.
* the normalisation statistics over the labelled valid pixels are merged block by block (Chan et al.'s
  pairwise update), and the file is written to a temporary name, made a cloud-optimised GeoTIFF with
  overviews, and renamed into place.

With ``cluster`` every pass's strips are tasks of a Dask cluster, each worker reading the rasters itself
(:class:`_ClusterReader`); the strips are written and their statistics merged here, in order: the same file as in
one process from the files (a test).

The result equals the in-memory path's (a test compares them, float32 rounding apart). One difference: with
``guide_transform`` "clr" or "log", the floor that keeps the logarithms finite (1e-4 of the median absolute
value) comes from a systematic sample of the valid pixels rather than from all of them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window, from_bounds

from .area import Grid, NO_LABEL, WARP_THREADS, block_row_mb, gdal_cache, overlaps, trim_heap
from .data import load_small_layers
from .errors import StudyAreaError
from .manifest import read_manifest
from .sources.common import (bounds_in, check_fill_value, declared_nodata, grid_offset, open_raster, read_on_grid,
                             resolve_path, warp_scales)
from .sources.fine import band_names, fine_bands
from .stackfile import Moments
from .sources.labels import area_geometries, predict_ground
from .sources.reference import reference_grid

__all__ = ["FineLayer", "fine_layers", "read_fine_rows", "write_stack", "block_rows_for"]


@dataclass
class FineLayer:
    """A fine raster of the manifest (guide bands or an extra layer such as the DEM), not read yet."""

    path: Path
    entry: dict
    names: list[str]
    kind: str  # "guide" or "extra"


def fine_layers(man: dict, base: Path, grid: Grid, warns: list | None = None) -> list[FineLayer]:
    """The manifest's fine rasters with their band names, checked as the whole-scene loader checks them (file,
    CRS, band count, overlap, suspicious fill values) before any block is read."""
    warns = [] if warns is None else warns
    out = []
    for kind in ("guide", "extra"):
        for e in man[kind]:
            p = resolve_path(base, e["path"])
            bands, expected = fine_bands(e, p, kind)
            with open_raster(p) as src:
                if expected is not None and src.count != expected:
                    raise StudyAreaError(p, f"expected {expected} band(s) as the manifest names, found {src.count}")
                if not overlaps(bounds_in(src, grid.crs), grid.bounds):
                    raise StudyAreaError(p, "does not overlap the reference grid")
                names = band_names(p, bands, src.count)
                nodata = declared_nodata(e, src)
                for b in range(src.count):
                    check_fill_value(p, src, b + 1, nodata, names[b], warns)
            out.append(FineLayer(p, e, names, kind))
    return out


def _rows_grid(grid: Grid, r0: int, n: int) -> Grid:
    return Grid(grid.crs, grid.transform * Affine.translation(0, r0), grid.width, n)


def read_fine_rows(src, entry: dict, grid: Grid, r0: int, n: int,
                   resampling: Resampling = Resampling.bilinear) -> np.ndarray:
    """Rows ``r0 .. r0 + n`` of every band of an open raster, brought onto the reference grid (float32, NaN
    where the source has no data). Only the source window under the rows (with a margin for the resampling
    kernel) is read."""
    if (offset := grid_offset(src, grid, resampling)) is not None:
        return read_on_grid(src, entry, offset, r0, n, grid.width)  # the grid's own pixels: read, not warped
    sub = _rows_grid(grid, r0, n)
    out = np.full((src.count, n, grid.width), np.nan, dtype=np.float32)
    left, bottom, right, top = sub.bounds
    if src.crs != grid.crs:
        left, bottom, right, top = transform_bounds(grid.crs, src.crs, left, bottom, right, top, densify_pts=21)
    win = from_bounds(left, bottom, right, top, transform=src.transform)
    pad = 4  # source pixels around the window: the support of the bilinear and cubic kernels
    c0 = max(0, math.floor(win.col_off) - pad)
    r0s = max(0, math.floor(win.row_off) - pad)
    c1 = min(src.width, math.ceil(win.col_off + win.width) + pad)
    r1s = min(src.height, math.ceil(win.row_off + win.height) + pad)
    if c1 <= c0 or r1s <= r0s:
        return out  # the rows lie outside the source
    window = Window(c0, r0s, c1 - c0, r1s - r0s)
    data = src.read(window=window)
    nodata = declared_nodata(entry, src)
    scales = warp_scales(src, grid)  # the whole grid's kernel scale, not this block's
    for b in range(src.count):
        reproject(source=data[b], destination=out[b], src_transform=src.window_transform(window), src_crs=src.crs,
                  src_nodata=nodata, dst_transform=sub.transform, dst_crs=grid.crs, dst_nodata=np.nan,
                  resampling=resampling, tolerance=0.0, num_threads=WARP_THREADS, **scales)  # as the whole-scene loader
    return out


def block_rows_for(grid: Grid, n_fine: int, n_out: int, memory_mb: float, halo: int) -> int:
    """Rows per block so that one block's arrays (fine bands, their low-pass parts, the detail, the output
    channels, in float32 and float64) stay within ``memory_mb``."""
    per_row = grid.width * (4 * (3 * n_fine + n_out + 4) + 8 * 4)
    rows = int(memory_mb * 2**20 // max(per_row, 1)) - 2 * halo
    return int(max(32, min(grid.height, rows)))


def cache_mb(srcs: list, memory_mb: float) -> float:
    """MB of GDAL's block cache for reading the fine rasters strip by strip: a quarter of the budget, or two rows
    of every source's blocks and a margin where that is more (at most 1 GB). A strip is usually lower than a
    source's block (a 20000-px-wide scene of nine bands gets strips of some 50 rows, its file blocks 512) and a
    strip with its halo can cross a row of blocks: with two rows held, each block is decompressed once a pass, not
    once for every strip that crosses it (ten times there). GDAL's default (5 % of the machine's memory) would
    grow with the scene instead."""
    return max(16.0, memory_mb / 4, min(1024.0, 2.5 * block_row_mb(srcs)))


def _guide_transform(bands: np.ndarray, transform: str, floor: float) -> np.ndarray:
    from .fusion import clr

    if transform == "none":
        return bands
    bands = np.maximum(bands, floor)
    if transform == "log" or bands.shape[0] < 2:
        return np.log(bands).astype(np.float32)
    return clr(bands)


class _RowReader:
    """The fine bands and the valid-data mask of a strip of rows: from the files (or from an area already loaded on
    the same grid), the mask made once per row and reused by every later pass."""

    def __init__(self, grid: Grid, fine: list, srcs: list, coarse: list, outline, loaded):
        self.grid, self.fine, self.srcs = grid, fine, srcs
        self.coarse, self.outline, self.loaded = coarse, outline, loaded
        self.n_guide = sum(len(f.names) for f in fine if f.kind == "guide")
        self.valid = np.zeros(grid.shape, dtype=bool)
        self.masked = np.zeros(grid.height, dtype=bool)

    def __call__(self, r0: int, n: int):
        """(guide bands, extra bands, valid mask) of rows r0 .. r0 + n, NaN outside the mask. Every pass reads its
        strips here, where GDAL's cache turns over: the C heap's freed pages go back to the system first."""
        trim_heap()
        grid = self.grid
        if self.loaded is not None:  # the area's layers, already on this grid
            allb = np.concatenate([a[:, r0:r0 + n] for a in self.loaded])  # a new array: NaN is written below
        else:
            arrays = [read_fine_rows(s, f.entry, grid, r0, n) for s, f in zip(self.srcs, self.fine)]
            allb = np.concatenate(arrays) if arrays else np.zeros((0, n, grid.width), np.float32)
        if self.masked[r0:r0 + n].all():
            mask = self.valid[r0:r0 + n]
        else:
            mask = np.isfinite(allb).all(axis=0)
            sub = _rows_grid(grid, r0, n)
            for c in self.coarse:
                mask &= np.isfinite(c.to_fine(sub))
            if self.outline is not None:
                from rasterio.features import geometry_mask

                mask &= geometry_mask(self.outline, out_shape=sub.shape, transform=sub.transform, invert=True)
            self.valid[r0:r0 + n] = mask
            self.masked[r0:r0 + n] = True
        allb[:, ~mask] = np.nan
        return allb[:self.n_guide], allb[self.n_guide:], mask

    def each(self, plan, fn, strips, *args):
        """Yield ``((r0, n), fn(plan, self, r0, n, *args))`` for each strip, in order, here."""
        for r0, n in strips:
            yield (r0, n), fn(plan, self, r0, n, *args)


class _ClusterReader:
    """The strips' work of :func:`write_stack` as tasks of a Dask cluster (``client``), yielded in order
    (:func:`lithocore.mapping.in_order`): each worker reads the fine rasters itself and keeps a
    :class:`_RowReader` of its own (its own valid-mask rows); the plan and each pass's arguments reach the workers
    once, as pickles whose large arrays are ``.npy`` files in ``where`` (:func:`lithocore.crossval.spill`), and each
    strip's result comes back the same way (a strip of the stack as a file, not through the cluster's messages).
    ``valid``, the valid-data mask, is filled by :func:`write_stack` from the strips of its last pass."""

    def __init__(self, client, plan: _Plan, where: Path, memory_mb: float):
        from dataclasses import replace

        from .crossval import spill_to

        self.client, self.where, self.calls = client, where, 0
        self.valid = np.zeros(plan.grid.shape, dtype=bool)
        self.plan = spill_to(dict(plan=replace(plan, labels=np.zeros((0, 0), np.uint8), area=None),
                                  memory_mb=memory_mb), where / "plan")

    def each(self, plan, fn, strips, *args):
        import shutil

        from .crossval import spill_to, unspill
        from .mapping import in_order

        self.calls += 1
        sent = spill_to(args, self.where / f"args{self.calls}")
        submit = lambda rn: self.client.submit(_remote_part, self.plan, fn, rn[0], rn[1], sent,  # noqa: E731
                                               pure=False)
        for rn, (folder, packed) in in_order(self.client, submit, strips):
            yield rn, unspill(packed)
            shutil.rmtree(folder, ignore_errors=True)  # its arrays mapped still where used: the pages stay


def _remote_part(plan_path: str, fn, r0: int, n: int, args_path: str):
    """``fn(plan, read, r0, n, *args)`` on a worker, the plan, its :class:`_RowReader` (whose valid-mask rows last
    across tasks) and the arguments read or made once a worker (:func:`lithocore.crossval.worker_local`), the rasters
    opened by the task (GDAL's handles belong to the thread that opened them); returns the result's folder and its
    spilled pickle."""
    from .crossval import spill, unspilled, worker_local

    shared, args = unspilled(plan_path), unspilled(args_path)
    plan = shared["plan"]
    read = worker_local(plan_path + ":reader",
                        lambda: _RowReader(plan.grid, plan.fine, [], plan.layers, plan.outline, None))
    with contextlib.ExitStack() as opened:
        read.srcs = [opened.enter_context(open_raster(f.path)) for f in plan.fine]
        opened.enter_context(gdal_cache(cache_mb(read.srcs, shared["memory_mb"])))
        result = fn(plan, read, r0, n, *args)
        read.srcs = []
    folder = Path(plan_path).parents[1] / "parts" / f"{fn.__name__}_{r0}"  # beside the plan's folder
    folder.mkdir(parents=True)
    return str(folder), spill(result, folder)


@dataclass
class _Plan:
    """What write_stack works from: the grid, the layers, the channels and the strips of rows."""

    mpath: Path
    grid: Grid
    fine: list
    layers: list  # the coarse layers, preprocessed
    labels: np.ndarray
    outline: list | None
    units: dict
    guide_names: list
    extra_names: list
    channels: list
    rows: int
    halo: int
    warns: list
    area: object

    @property
    def starts(self) -> list[int]:
        return list(range(0, self.grid.height, self.rows))

    def strips(self):
        """(first row, rows) of every strip."""
        return [(r0, min(self.rows, self.grid.height - r0)) for r0 in self.starts]


def _plan(manifest, settings, kw: dict, memory_mb: float, area) -> _Plan:
    """Read what stays small (coarse layers, points, labels, outline), check the fine rasters and choose the
    channels and the strip height."""
    from . import fusion

    mpath = Path(manifest).resolve()
    man = read_manifest(mpath)
    base = mpath.parent
    grid = reference_grid(man, base)
    warns: list[str] = []
    fine = fine_layers(man, base, grid, warns)
    if area is not None and (area.grid != grid or not area.layers_loaded):
        area = None  # a preview (a coarser grid), another grid or an area without its layers: the files
    if area is not None:
        coarse, labels = area.coarse, area.labels
    else:
        coarse, _, labels, _, _ = load_small_layers(man, base, grid, warns, {}, [], mpath)
        ground = predict_ground(man, base, grid)  # the ground to predict's labels are withheld here too
        if ground is not None:
            labels = np.where(ground, NO_LABEL, labels).astype(np.uint8)
    units = {n: str(f.entry.get("units", "")) for f in fine for n in f.names}
    outline = area_geometries(resolve_path(base, man["area"]), grid, man.get("crs")) if man.get("area") else None
    layers = fusion.preprocess(coarse, use_clr=kw["use_clr"], use_rtp=kw["use_rtp"])
    units |= {c.name: c.units for c in layers}  # after preprocessing ("clr" for log-ratios)
    guide_names = [n for f in fine if f.kind == "guide" for n in f.names]
    extra_names = [n for f in fine if f.kind == "extra" for n in f.names]
    fused_names = [c.name for c in layers]
    channels = list(settings.channels) or fusion.default_channels_for(fused_names, extra_names, guide_names)
    for ch in channels:
        if ch not in fused_names + extra_names + guide_names:
            raise KeyError(f"unknown channel {ch!r}; fused: {fused_names}, extra: {extra_names}, guide: {guide_names}")
    smoothing = float(kw["detail_smoothing"])
    halo = int(4.0 * smoothing + 0.5) if smoothing > 0 else 0  # scipy's Gaussian support (truncate 4)
    rows = block_rows_for(grid, len(guide_names) + len(extra_names), len(channels), memory_mb, halo)
    return _Plan(mpath, grid, fine, layers, labels, outline, units, guide_names, extra_names, channels, rows, halo,
                 warns, area)


def _log_floor(plan: _Plan, read, transform: str) -> float:
    """Pass 0 (a log or clr guide only): the floor that keeps the logarithms finite, 1e-4 of the median absolute
    guide value in a systematic sample of the valid pixels."""
    if not plan.guide_names or transform == "none":
        return 0.0
    sample = [part for _, part in read.each(plan, _floor_sample, plan.strips())]
    return 1e-4 * float(np.nanmedian(np.concatenate(sample))) or 1e-6


def _floor_sample(plan: _Plan, read, r0: int, n: int) -> np.ndarray:
    """Pass 0, one strip: the absolute guide values of every 97th valid pixel."""
    g, _, m = read(r0, n)
    return np.abs(g[:, m][:, ::97]).ravel()


def _coarse_means(plan: _Plan, read, transform: str, floor: float, bar) -> dict:
    """Pass 1: the guide bands' means over the coarse cells of every factor, and the checks that every band and
    the study area hold valid data."""
    grid, n_g = plan.grid, len(plan.guide_names)
    factors = sorted({c.factor for c in plan.layers})
    sums = {f: np.zeros((n_g, *grid.coarsen(f).shape)) for f in factors}
    counts = {f: np.zeros(grid.coarsen(f).shape) for f in factors}
    valid = 0
    finite_bands = np.zeros(n_g + len(plan.extra_names), dtype=np.int64)
    for _, part in read.each(plan, _strip_sums, plan.strips(), transform, floor):
        valid += part["valid"]
        finite_bands += part["finite"]
        for f, (c0, cnt, sm) in part["cells"].items():  # the coarse rows the strip touches: the same additions
            counts[f][c0:c0 + len(cnt)] += cnt
            sums[f][:, c0:c0 + len(cnt)] += sm
        bar.update(1)
    if not valid:
        raise StudyAreaError(plan.mpath, "the study area is empty: no pixel has valid data in every layer "
                                         "(check nodata values, the area outline and the layers' extents)")
    for name, k in zip(plan.guide_names + plan.extra_names, finite_bands):
        if not k:
            raise StudyAreaError(plan.mpath, f"band {name} has no valid data inside the reference grid")
    return {f: np.where(counts[f] > 0, sums[f] / np.maximum(counts[f], 1), np.nan) for f in factors}


def _strip_sums(plan: _Plan, read, r0: int, n: int, transform: str, floor: float) -> dict:
    """Pass 1, one strip: its valid pixels, each band's finite values and, for every coarse factor, the guide's
    counts and sums over the coarse cells of the rows it touches (first coarse row, counts, sums)."""
    grid, n_g = plan.grid, len(plan.guide_names)
    g, e, m = read(r0, n)
    part = dict(valid=int(m.sum()), finite=np.isfinite(np.concatenate([g, e])).sum(axis=(1, 2)), cells={})
    if n_g:
        gt = _guide_transform(g, transform, floor)
        rr, cc = np.nonzero(m)
        for f in sorted({c.factor for c in plan.layers}):
            c0, c1, cw = r0 // f, (r0 + n - 1) // f + 1, grid.coarsen(f).width
            ids = ((rr + r0) // f - c0) * cw + cc // f
            cnt = np.bincount(ids, minlength=(c1 - c0) * cw).reshape(c1 - c0, cw)
            sm = np.stack([np.bincount(ids, weights=gt[i][m].astype(np.float64), minlength=(c1 - c0) * cw)
                           .reshape(c1 - c0, cw) for i in range(n_g)])
            part["cells"][f] = (c0, cnt, sm)
    return part


def _fit_layers(plan: _Plan, means: dict, method: str) -> tuple[list, list]:
    """The fit of every coarse layer (Eq. 1) on the small grids: (fits, their records)."""
    from . import fusion

    fits, infos = [], []
    for c in plan.layers:
        if not plan.guide_names:
            fit, info = None, dict(f={}, detail_added=False, note="no guide bands: bilinear resampling only")
        else:
            try:
                fit, info = fusion.fit_layer(means[c.factor], c.values, c.grid, method, guide_names=plan.guide_names)
            except ValueError as exc:
                raise StudyAreaError(c.source, f"layer '{c.name}': {exc}") from None
        fits.append(fit)
        infos.append(info | {"preprocessing": c.meta.get("preprocessing", "none")})
    return fits, infos


def _fused_strip(plan: _Plan, read, r0: int, n: int, fits: list, means: dict, kw: dict,
                 floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2, one strip: every channel of rows r0 .. r0 + n (the fused layers read with a halo of rows for the
    detail's smoothing, so a strip's pixels are the whole-scene computation's), NaN outside the valid mask, and
    the strip's valid mask."""
    from . import fusion

    grid, n_g, halo = plan.grid, len(plan.guide_names), plan.halo
    smoothing, gain = float(kw["detail_smoothing"]), float(kw["detail_gain"])
    h0, h1 = max(0, r0 - halo), min(grid.height, r0 + n + halo)
    g, e, m = read(h0, h1 - h0)
    sub = _rows_grid(grid, h0, h1 - h0)
    gt = _guide_transform(g, kw["guide_transform"], floor) if n_g else g
    keep = slice(r0 - h0, r0 - h0 + n)
    lows = {f: [fusion._to_fine(means[f][i], grid.coarsen(f), sub) for i in range(n_g)] for f in means} if n_g else {}
    w = fusion.smoothing_weights(m, smoothing) if smoothing > 0 else None  # the NaN-aware Gaussian's, shared
    values = {}
    for c, fit in zip(plan.layers, fits):
        fused = fusion._to_fine(c.values, c.grid, sub).astype(np.float64)
        if fit is not None:
            detail = fusion.layer_detail(fit, gt, lows[c.factor], c.grid, sub)
            if smoothing > 0:
                detail = fusion.smooth_detail(detail, m, smoothing, w)
            fused = fused + gain * detail
        fused = fused.astype(np.float32)
        fused[~m] = np.nan
        values[c.name] = fused[keep]
    values |= {name: e[i][keep] for i, name in enumerate(plan.extra_names)}
    values |= {name: g[i][keep] for i, name in enumerate(plan.guide_names)}
    return np.stack([values[ch] for ch in plan.channels]).astype(np.float32), m[keep]


def write_stack(manifest: str | os.PathLike, path: str | os.PathLike, settings=None, *, memory_mb: float = 256.0,
                tags=None, progress: bool = True, area=None, cluster=None) -> dict:
    """Fuse a study area and write its stack (channels by ``settings``, a
    :class:`~lithocore.fusion.FusionSettings`) to ``path`` block by block: pass 0 the logarithms' floor (a log or
    clr guide), pass 1 the guide's means over the coarse cells, the fits on those small grids, pass 2 each strip's
    channels and the normalisation statistics, then a COG with overviews. Returns the channel names, units,
    normalisation statistics, fusion coefficients, block size, timing and ``valid``, the valid-data mask (H, W)
    made on the way.

    Peak memory is about ``memory_mb`` plus the small layers (coarse grids, points; one byte a pixel for the labels
    and one for the valid-data mask). ``tags``: a dict, or a function of the channel names that returns one.
    ``area``: the same study area already loaded on the same grid: its layers are used instead of reading and
    warping the files again (the same values; a preview on a coarser grid, ``load_study_area(..., max_pixels=...)``,
    or an area loaded without its fine bands, is not used). ``cluster``: the strips of every pass made as tasks of
    a Dask cluster (``"local:K"``, a scheduler address or a ``distributed.Client``,
    :func:`lithocore.mapping.connect`; the workers read the fine rasters themselves, and their results reach this
    process as files in a folder beside ``path``, on a file system they share), written here in order: the same
    file.
    """
    from tqdm.auto import tqdm

    from . import fusion
    from .outputs import write_cog
    from .runfolder import atomic_path

    t0 = time.perf_counter()
    settings = settings or fusion.FusionSettings()
    kw = settings.fuse_kwargs()
    plan = _plan(manifest, settings, kw, memory_mb, area)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        read = _reader(stack, plan, area, memory_mb, cluster, out)
        floor = _log_floor(plan, read, kw["guide_transform"])
        bar = tqdm(total=2 * len(plan.starts), desc="fusing block by block", unit="block", disable=not progress)
        means = _coarse_means(plan, read, kw["guide_transform"], floor, bar)
        fits, infos = _fit_layers(plan, means, kw["method"])
        moments, labelled_valid = Moments(len(plan.channels)), 0
        valid = read.valid  # made as the strips are read here; filled from pass 2's strips on a cluster
        with atomic_path(out) as tmp:
            with rasterio.open(tmp, "w", **plan.grid.profile(len(plan.channels), "float32", compress=None)) as dst:
                for (r0, n), (block, m) in read.each(plan, _fused_strip, plan.strips(), fits, means, kw, floor):
                    valid[r0:r0 + n] = m  # pass 2
                    sel = m & (plan.labels[r0:r0 + n] != NO_LABEL)
                    labelled_valid += int(sel.sum())
                    for i in range(len(plan.channels)):
                        moments.add(i, block[i][sel])
                    dst.write(block, window=Window(0, r0, plan.grid.width, n))
                    bar.update(1)
                bar.close()
                stats = moments.stats(labelled_valid) | {"fitted_on": "all labelled valid pixels"}
                ch_units = [plan.units.get(ch, "") for ch in plan.channels]
                _describe_bands(dst, plan.channels, ch_units, stats, tags(plan.channels) if callable(tags) else tags)
            stack.close()
            write_cog(tmp, tmp, resampling="average", cache_mb=max(64, memory_mb))  # the overviews need more
    return dict(path=str(out), channels=plan.channels, units=ch_units, normalisation=stats, coefficients=infos,
                fused_names=[c.name for c in plan.layers], block_rows=plan.rows, blocks=len(plan.starts),
                halo=plan.halo, warnings=plan.warns, seconds=time.perf_counter() - t0, valid=valid)


def _reader(stack: contextlib.ExitStack, plan: _Plan, area, memory_mb: float, cluster, out: Path):
    """What reads the strips for :func:`write_stack`, opened in ``stack``: a :class:`_RowReader` of the fine rasters
    (or of ``area``'s layers, on the same grid) here, or with ``cluster`` a :class:`_ClusterReader`."""
    if cluster:
        from .crossval import forget_on
        from .mapping import connect
        from .runfolder import scratch

        where = stack.enter_context(scratch(out.parent, "spill"))
        client = stack.enter_context(connect(cluster))
        stack.callback(forget_on, client, where)
        return _ClusterReader(client, plan, where, memory_mb)
    srcs = [stack.enter_context(open_raster(f.path)) for f in plan.fine]
    stack.enter_context(gdal_cache(cache_mb(srcs, memory_mb)))
    loaded = None
    names = plan.guide_names + plan.extra_names
    if plan.area is not None and names and list(plan.area.guide_names) + list(plan.area.extra_names) == names:
        loaded = [a for a in (plan.area.guide, plan.area.extra) if a.shape[0]]
    return _RowReader(plan.grid, plan.fine, srcs, plan.layers, plan.outline, loaded)


def _describe_bands(dst, channels: list, units: list, stats: dict, tags: dict | None) -> None:
    """Band names and units, and the stack's channels, units, normalisation and provenance tags."""
    for i, (name, unit) in enumerate(zip(channels, units)):
        dst.set_band_description(i + 1, name)
        dst.update_tags(i + 1, units=unit)
    dst.update_tags(channels=json.dumps(channels), units=json.dumps(units), normalisation=json.dumps(stats),
                    **{k: str(v) for k, v in (tags or {}).items()})
