"""Writing rasters: GeoTIFFs on a study area's grid and cloud-optimised GeoTIFFs (COGs), each written under a
temporary name and renamed when complete (:func:`lithocore.runfolder.atomic_path`)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from .area import Grid, gdal_cache, trim_heap
from .data import preview_factor
from .runfolder import atomic_path
from .sources.common import open_raster

__all__ = ["GeoTiffWriter", "write_geotiff", "write_cog", "COG_CACHE_MB", "read_stack", "write_stack_file"]


class GeoTiffWriter:
    """A GeoTIFF on ``grid`` written piece by piece (:meth:`write`), made the file at ``path`` when the ``with``
    block ends: a cloud-optimised GeoTIFF with overviews (``cog``: their resampling, :func:`write_cog`) or a
    deflated tiled GeoTIFF (``cog`` None), under a temporary name renamed into place; nothing at ``path`` when
    the block fails. A map of a province is written strip by strip, never held whole (notebook 07); written in
    one piece, it is :func:`write_geotiff`.

    ``work``: the working file's path, for a writing that can be continued: it is kept when the block fails,
    written to disk by :meth:`flush`, and with ``resume`` opened again as it was (the caller knows which pieces it
    holds); it is removed once ``path`` is made.
    """

    def __init__(self, path: str | os.PathLike, grid: Grid, count: int, dtype: str, *,
                 nodata: float | None = float("nan"), band_names: list[str] | None = None, tags: dict | None = None,
                 colormap: dict | None = None, scales: tuple[float, ...] | None = None, cog: str | None = None,
                 work: str | os.PathLike | None = None, resume: bool = False):
        self.path, self.grid, self.cog = Path(path), grid, cog
        self._profile = grid.profile(count, str(np.dtype(dtype)), nodata, compress=None if cog else "deflate")
        self._finish = dict(band_names=band_names or [], tags=tags or {}, colormap=colormap, scales=scales)
        self._work, self.resume = (Path(work) if work else None), resume

    def __enter__(self) -> "GeoTiffWriter":
        import contextlib

        self._stack = contextlib.ExitStack()
        if self._work is None:
            self._tmp = self._stack.enter_context(atomic_path(self.path))
        else:
            self._tmp = self._work
            self._tmp.parent.mkdir(parents=True, exist_ok=True)
            if self.resume and self.continuable():
                self._dst = rasterio.open(self._tmp, "r+")
                return self
        self._dst = rasterio.open(self._tmp, "w", **self._profile)
        if self._finish["colormap"]:  # before any pixel: a palette set once blocks are written fails (libtiff)
            self._dst.write_colormap(1, self._finish["colormap"])
        return self

    def continuable(self) -> bool:
        """The working file is there, readable, and of this writer's grid, bands and type."""
        p = self._profile
        if self._work is None or not self._work.is_file():
            return False
        try:
            with rasterio.open(self._work) as src:
                return (src.width, src.height, src.count, src.dtypes[0], src.transform) == \
                    (p["width"], p["height"], p["count"], p["dtype"], p["transform"])
        except rasterio.errors.RasterioError:
            return False

    def flush(self) -> None:
        """Put every piece written so far into the working file on disk (closed and opened again)."""
        self._dst.close()
        self._dst = rasterio.open(self._tmp, "r+")

    def write(self, array: np.ndarray, r0: int = 0, c0: int = 0) -> None:
        """Write ``array`` ((bands, h, w), or (h, w) for one band) with its first pixel at row ``r0``, column ``c0``."""
        arr = np.asarray(array)
        arr = arr[None] if arr.ndim == 2 else arr
        self._dst.write(arr.astype(self._profile["dtype"], copy=False), window=Window(c0, r0, arr.shape[2], arr.shape[1]))

    def __exit__(self, kind, exc, tb) -> bool:
        try:
            self._close(complete=kind is None)
        except BaseException as err:  # the temporary file removed, the error raised
            self._stack.__exit__(type(err), err, err.__traceback__)
            raise
        if self._work is not None and kind is None:  # a continued working file: made the file, then removed
            if not self.cog:
                with atomic_path(self.path) as tmp:
                    os.replace(self._tmp, tmp)
            self._tmp.unlink(missing_ok=True)
        return self._stack.__exit__(kind, exc, tb)

    def _close(self, complete: bool) -> None:
        dst, fin = self._dst, self._finish
        try:
            if complete:
                for i, n in enumerate(fin["band_names"]):
                    dst.set_band_description(i + 1, n)
                if fin["tags"]:
                    dst.update_tags(**{k: str(v) for k, v in fin["tags"].items()})
                if fin["scales"]:  # stored values x scale = the quantity (offsets 0)
                    dst.scales, dst.offsets = tuple(fin["scales"]), (0.0,) * len(fin["scales"])
        finally:
            dst.close()
        if complete and self.cog:
            write_cog(self._tmp, self.path if self._work is not None else self._tmp, resampling=self.cog)


def write_geotiff(path: str | os.PathLike, array: np.ndarray, grid: Grid, *, band_names: list[str] | None = None,
                  nodata: float | None = float("nan"), tags: dict | None = None,
                  colormap: dict | None = None, cog: str | None = None) -> Path:
    """Write a (bands, H, W) or (H, W) array as a GeoTIFF, atomically (a temporary file renamed into place).

    ``cog``: None for a plain tiled GeoTIFF, or the overview resampling (``"nearest"`` for classes,
    ``"average"`` for values) of a cloud-optimised GeoTIFF with overviews (:func:`write_cog`).

    Examples
    --------
    >>> import tempfile
    >>> from rasterio.crs import CRS
    >>> from rasterio.transform import from_origin
    >>> g = Grid(CRS.from_epsg(32646), from_origin(0, 30, 15, 15), 2, 2)
    >>> p = write_geotiff(Path(tempfile.mkdtemp()) / "a.tif", np.ones((2, 2)), g, band_names=["one"])
    >>> with rasterio.open(p) as s: print(s.count, s.descriptions)
    1 ('one',)
    """
    arr = np.asarray(array)
    arr = arr[None] if arr.ndim == 2 else arr
    with GeoTiffWriter(path, grid, arr.shape[0], str(arr.dtype), nodata=nodata, band_names=band_names, tags=tags,
                       colormap=colormap, cog=cog) as w:
        w.write(arr)
    return Path(path)


#: GDAL's block cache (MB) while a COG is copied (:func:`write_cog`): GDAL's default, 5 % of the machine's memory,
#: took the copy of an 8000-px stack of 8 float32 channels to 1,538 MB (256 MB: 595 MB, and no slower).
COG_CACHE_MB = 256


def write_cog(src_path: str | os.PathLike, path: str | os.PathLike, *, resampling: str = "nearest",
              cache_mb: float = COG_CACHE_MB) -> Path:
    """Copy a GeoTIFF into a cloud-optimised GeoTIFF at ``path`` (atomically; ``path`` may be the source): 512-px
    tiles, deflate, internal overviews made with ``resampling`` ("nearest" for classes, "average" for values),
    the colour table, band descriptions, scales and tags kept. A QGIS user opening a large map needs the
    overviews. GDAL's block cache holds ``cache_mb`` meanwhile, whatever the caller's."""
    import rasterio.shutil

    with atomic_path(path) as tmp, gdal_cache(cache_mb):
        rasterio.shutil.copy(str(src_path), str(tmp), driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=512,
                             OVERVIEW_RESAMPLING=resampling.upper(), NUM_THREADS="ALL_CPUS", BIGTIFF="IF_SAFER")
    return Path(path)


def read_stack(path: str | os.PathLike, *, max_pixels: int | None = None) -> tuple[np.ndarray, list[str], list[str], dict, dict]:
    """Read a stack written by :func:`write_stack_file`: (stack, names, units, normalisation stats, tags).

    ``max_pixels``: a larger stack is read ``k`` times coarser (the smallest ``k`` under it; averaged, from the
    file's overviews), a preview for figures. A damaged file is named as such (:func:`~lithocore.sources.common.open_raster`)."""
    # Read straight into float32 through a small block cache: a whole-file read decompresses each block once, and
    # GDAL's default cache (5 % of the machine's memory) kept the blocks beside the array (a 488 MB stack: peak
    # 1,581 MB before, 641 MB now).
    with gdal_cache(64), open_raster(path) as src:
        tags = src.tags()
        k = preview_factor(src.height, src.width, max_pixels)
        if k == 1:
            stack = src.read(out_dtype=np.float32)
        else:
            from rasterio.enums import Resampling

            stack = src.read(out_shape=(src.count, math.ceil(src.height / k), math.ceil(src.width / k)),
                             resampling=Resampling.average, out_dtype=np.float32)
    trim_heap()
    return (stack, json.loads(tags["channels"]), json.loads(tags["units"]), json.loads(tags.get("normalisation", "{}")),
            tags)


def write_stack_file(path: str | os.PathLike, stack: np.ndarray, names: list[str], units: list[str], grid: Grid, *,
                stats: dict | None = None, chunk_rows: int = 256, tags: dict | None = None) -> Path:
    """Write the stack as a cloud-optimised GeoTIFF with overviews (band names, units and normalisation
    statistics in its tags), a block of ``chunk_rows`` rows at a time, into a temporary file renamed into place
    when complete."""
    from .outputs import write_cog
    from .runfolder import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **grid.profile(stack.shape[0], "float32", compress=None)) as dst:
            for r0 in range(0, grid.height, chunk_rows):
                n = min(chunk_rows, grid.height - r0)
                dst.write(np.asarray(stack[:, r0:r0 + n], dtype=np.float32), window=Window(0, r0, grid.width, n))
            for i, (n, u) in enumerate(zip(names, units)):
                dst.set_band_description(i + 1, n)
                dst.update_tags(i + 1, units=u)
            dst.update_tags(channels=json.dumps(names), units=json.dumps(units),
                            normalisation=json.dumps(stats or {}), **{k: str(v) for k, v in (tags or {}).items()})
        write_cog(tmp, tmp, resampling="average")
    return path
