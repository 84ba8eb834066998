"""Coarse rasters (``coarse``: aeromagnetic, radiometric, gravity grids): one band each, kept on a coarse grid
aligned with the reference grid (its cell a whole number of fine pixels) for fusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject

from . import GridRead, GridSource, register
from ..area import CoarseLayer, Grid, overlaps
from ..errors import StudyAreaError
from .common import bounds_in, check_fill_value, coarse_factor, declared_nodata, describe_source, open_raster, source_band

__all__ = ["read_coarse", "coarse_layer", "read_grid"]


def read_coarse(path: Path, entry: dict, grid: Grid, warns: list | None = None) -> tuple[CoarseLayer, dict]:
    """One band of a coarse raster on its coarse grid (see :func:`coarse_layer`)."""
    with open_raster(path) as src:
        return coarse_layer(src, path, entry, grid, warns)


def coarse_layer(src, path: Path, entry: dict, grid: Grid, warns: list | None = None) -> tuple[CoarseLayer, dict]:
    """Band ``entry["band"]`` of an open raster ``src`` (named ``path`` in messages) warped bilinearly onto a grid
    ``factor`` times coarser than the reference ``grid`` (the source cell rounded to whole fine pixels, unless the
    entry gives ``factor``), with its row of the layer table. Every entry key not read here (``inclination``,
    ``declination``) is kept in the layer's ``meta`` for fusion."""
    warns = [] if warns is None else warns
    band = int(entry.get("band", 1))
    if not 1 <= band <= src.count:
        raise StudyAreaError(path, f"has {src.count} band(s); the manifest asks for band {band}")
    if not overlaps(bounds_in(src, grid.crs), grid.bounds):
        raise StudyAreaError(path, f"does not overlap the reference grid (reference bounds "
                                   f"{tuple(round(b) for b in grid.bounds)} in {grid.crs})")
    if src.crs == grid.crs:
        native = abs(src.res[0])
    else:
        t, _, _ = calculate_default_transform(src.crs, grid.crs, src.width, src.height, *src.bounds)
        native = abs(t.a)
    factor = int(entry.get("factor", coarse_factor(native, grid.res)))
    cgrid = grid.coarsen(factor)
    nodata = declared_nodata(entry, src)
    name = entry.get("name") or path.stem
    check_fill_value(path, src, band, nodata, name, warns)
    values = np.full(cgrid.shape, np.nan, dtype=np.float32)
    reproject(destination=values, src_nodata=nodata, dst_transform=cgrid.transform, dst_crs=cgrid.crs,
              dst_nodata=np.nan, resampling=Resampling.bilinear, **source_band(src, band, entry))
    info = describe_source(path, src) | dict(nodata=nodata)
    if not np.isfinite(values).any():
        raise StudyAreaError(path, "has no valid data inside the reference grid (all nodata)")
    meta = {k: v for k, v in entry.items() if k not in ("path", "name", "units", "nodata", "band", "factor")
            and v is not None}
    return CoarseLayer(name, values, cgrid, factor, str(entry.get("units", "")), str(path), meta=meta), info


def read_grid(path: Path, entry: dict, grid: Grid, warns: list) -> GridRead:
    """A ``coarse`` entry as a grid source: one layer."""
    layer, info = read_coarse(path, entry, grid, warns)
    return GridRead([layer], dict(layer=layer.name, kind="coarse", **info))


register(GridSource("coarse", read_grid))
