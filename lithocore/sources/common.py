"""What every reader of a source shares: resolving a manifest path, opening a raster or vector file with a
message naming the file, a source's bounds in another CRS, the declared nodata value and the check for a
suspicious fill value, the warper's kernel scale."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.windows
from rasterio.crs import CRS
from rasterio.enums import Resampling

from ..area import Grid
from ..errors import StudyAreaError, warn_data

__all__ = ["resolve_path", "open_raster", "read_vector", "bounds_in", "declared_nodata", "check_fill_value",
           "fill_sample",
           "source_band", "grid_offset", "read_on_grid", "warp_scales", "describe_source", "coarse_factor"]


def resolve_path(base: Path, p: str) -> Path:
    q = Path(os.path.expandvars(os.path.expanduser(str(p))))
    return q if q.is_absolute() else (base / q)




@contextlib.contextmanager
def open_raster(path: str | os.PathLike):
    """A raster opened for reading, with its faults named: missing, not a raster, no CRS, or *damaged* (its header
    reads but its pixels do not: a file cut off by an interrupted download, copy or write), each a
    :class:`StudyAreaError` naming the file, never GDAL's chained traceback."""
    path = Path(path)
    if not path.exists():
        raise StudyAreaError(path, "file not found")
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise StudyAreaError(path, f"cannot be read as a raster ({exc})") from None
    if src.crs is None:
        src.close()
        raise StudyAreaError(path, "has no CRS (coordinate reference system); assign one, e.g. with "
                                   "'gdal_edit.py -a_srs EPSG:xxxx'")
    try:
        with src:
            yield src
    except rasterio.errors.RasterioIOError as exc:
        cause = exc.__cause__ or exc.__context__ or exc
        if path.name not in f"{exc} {cause}":  # another file's fault (several open at once): its own context names it
            raise
        raise StudyAreaError(path, f"this file is damaged: its header reads but its pixels do not ({cause}); it may "
                                   f"be cut off (an interrupted download, copy or write): copy or export it "
                                   f"again") from None


def read_vector(path: Path, crs_hint: Any = None):
    import geopandas as gpd

    if not path.exists():
        raise StudyAreaError(path, "file not found")
    try:
        gdf = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises several types
        raise StudyAreaError(path, f"cannot be read as a vector file ({exc})") from None
    if gdf.crs is None:
        if crs_hint is None:
            raise StudyAreaError(path, "has no CRS (coordinate reference system); give 'crs' in the manifest entry")
        gdf = gdf.set_crs(crs_hint)
    return gdf


def bounds_in(src, crs: CRS) -> tuple:
    if src.crs == crs:
        return tuple(src.bounds)
    from rasterio.warp import transform_bounds

    return transform_bounds(src.crs, crs, *src.bounds)


#: Values that data producers use to fill cells without data (checked when a layer declares no nodata).
_FILL_VALUES = (-9999.0, -99999.0, -999.0, -32768.0, -32767.0, 32767.0, 65535.0, 9999.0, -3.4028234663852886e38,
                3.4028234663852886e38, -1e30, 1e30)


def declared_nodata(entry: dict, src) -> float | None:
    """The nodata value of a layer: the manifest entry's ``nodata`` when given (``none``/null: no nodata),
    else the file's tag."""
    if "nodata" not in entry:
        return src.nodata
    v = entry["nodata"]
    if v is None or (isinstance(v, str) and v.strip().lower() in ("none", "null", "")):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise StudyAreaError(src.name, f"nodata {v!r} in the manifest is not a number (or 'none', 'nan')") from None


#: A band of more pixels than this, without overviews, is checked for fill values on a sample of its file blocks
#: rather than a decimated read of the whole extent (which decompresses every block: 34 s a band of a deflated
#: 20000 x 20000 GeoTIFF).
FILL_CHECK_WHOLE_PX = 16 * 2**20


def fill_sample(src, band: int) -> np.ndarray:
    """The values :func:`check_fill_value` looks at: the band decimated to at most 1024 x 1024 (from its overviews
    when it has them), or, for a large band without overviews, 8 x 8 of its file blocks spread evenly over the
    extent, corners and edges included (64 strips of a striped file), read at full resolution."""
    h, w = src.height, src.width
    if src.overviews(band) or h * w <= FILL_CHECK_WHOLE_PX:
        return src.read(band, out_shape=(min(h, 1024), min(w, 1024)), resampling=Resampling.nearest).ravel()
    bh, bw = src.block_shapes[band - 1]
    nby, nbx = -(-h // bh), -(-w // bw)
    rows = np.unique(np.linspace(0, nby - 1, min(nby, 8 if nbx > 1 else 64)).round().astype(int))
    cols = np.unique(np.linspace(0, nbx - 1, min(nbx, 8)).round().astype(int))
    return np.concatenate([src.read(band, window=src.block_window(band, int(i), int(j))).ravel()
                           for i in rows for j in cols])


def check_fill_value(path: Path, src, band: int, nodata: float | None, name: str, warns: list) -> None:
    """Warn about a constant fill value nobody declared, and about a nodata value inside the data's range
    (on :func:`fill_sample`'s values)."""
    a = fill_sample(src, band).astype(np.float64)
    finite = np.isfinite(a)
    if nodata is not None and np.isfinite(nodata):
        is_nd = a == nodata
        vals = a[finite & ~is_nd]
        share = float(is_nd.mean())
        if vals.size and share > 0.01 and vals.min() < nodata < vals.max():
            warn_data(warns, path, f"band {band} ({name}): the nodata value {nodata:g} lies inside the data's range "
                               f"({vals.min():g} to {vals.max():g}) and removes {share:.1%} of its cells; if {nodata:g} "
                               f"is a real value, set 'nodata: none' (or the true fill value) in its manifest entry")
        return
    vals = a[finite]
    if vals.size == 0:
        return
    candidates = [f for f in _FILL_VALUES if np.any(vals == np.float32(f))]
    lo, hi = vals.min(), vals.max()
    for v in candidates + [lo, hi]:
        same = int(np.sum(vals == v))
        share = same / vals.size
        known = v in candidates
        # an unknown extreme value is suspicious when it repeats (a grid of 2 x 2 cells holds each value in 25 %)
        if (known and share > 0.001) or (not known and share > 0.05 and same >= 3 and lo < hi):
            warn_data(warns, path, f"band {band} ({name}) holds the constant {v:g} in {share:.1%} of its cells and "
                               f"declares no nodata: if {v:g} fills cells without data, set 'nodata: {v:g}' in its "
                               f"manifest entry (it is used as data now)")
            return


def source_band(src, band: int, entry: dict):
    """What to reproject from: the band itself (its own nodata tag applies) or, when the manifest overrides the
    nodata, its values as an array (so that GDAL does not fall back to the file's tag)."""
    if "nodata" not in entry:
        return dict(source=rasterio.band(src, band))
    return dict(source=src.read(band), src_transform=src.transform, src_crs=src.crs)


def grid_offset(src, grid: Grid, resampling: Resampling = Resampling.bilinear) -> tuple[int, int] | None:
    """(row, column) of the grid's first pixel in ``src`` when the source's pixels are the grid's own (same CRS,
    pixel size and alignment, north up) and ``resampling`` (bilinear or nearest) returns a pixel unchanged on its own
    centre, else None. Such a source (the reference raster itself, a band set delivered on the same grid) is read,
    not warped, at a fraction of the cost (:func:`read_on_grid`)."""
    s, g = src.transform, grid.transform
    if resampling not in (Resampling.bilinear, Resampling.nearest):
        return None
    if src.crs != grid.crs or (s.b, s.d, g.b, g.d) != (0, 0, 0, 0):
        return None
    if abs(s.a - g.a) > 1e-9 * abs(g.a) or abs(s.e - g.e) > 1e-9 * abs(g.e):
        return None
    col, row = (g.c - s.c) / s.a, (g.f - s.f) / s.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return int(round(row)), int(round(col))


def read_on_grid(src, entry: dict, offset: tuple[int, int], r0: int, n: int, width: int,
                 bands: list[int] | None = None) -> np.ndarray:
    """Rows ``r0 .. r0 + n`` of a grid of ``width`` columns from a source on that grid (``offset``:
    :func:`grid_offset`), float32 with NaN where the source has no data (its mask, or the manifest's ``nodata``
    when the entry overrides it, as the warp honours them) or does not reach."""
    bands = bands or list(range(1, src.count + 1))
    out = np.full((len(bands), n, width), np.nan, dtype=np.float32)
    row0, col0 = offset[0] + r0, offset[1]
    rs0, rs1 = max(row0, 0), min(row0 + n, src.height)
    cs0, cs1 = max(col0, 0), min(col0 + width, src.width)
    if rs1 <= rs0 or cs1 <= cs0:
        return out
    window = rasterio.windows.Window(cs0, rs0, cs1 - cs0, rs1 - rs0)
    if "nodata" in entry:  # the manifest's value, not the file's tag
        data = src.read(bands, window=window)
        vals = data.astype(np.float32)
        nodata = declared_nodata(entry, src)
        if nodata is not None and not np.isnan(nodata):
            vals[data == nodata] = np.nan
    else:
        data = src.read(bands, window=window, masked=True)
        vals = data.data.astype(np.float32)
        vals[np.ma.getmaskarray(data)] = np.nan
    out[:, rs0 - row0:rs1 - row0, cs0 - col0:cs1 - col0] = vals
    return out


def warp_scales(src, grid: Grid) -> dict:
    """GDAL's resampling scale (destination pixels per source pixel) for warping ``src`` onto the whole ``grid``.
    GDAL otherwise derives it from each chunk's source and destination windows, so that a block warped on its
    own (with a margin of source pixels) gets a wider or narrower kernel than the whole grid."""
    from rasterio.warp import transform_bounds
    from rasterio.windows import from_bounds

    left, bottom, right, top = grid.bounds
    if src.crs != grid.crs:
        left, bottom, right, top = transform_bounds(grid.crs, src.crs, left, bottom, right, top, densify_pts=21)
    win = from_bounds(left, bottom, right, top, transform=src.transform)
    return dict(XSCALE=grid.width / max(win.width, 1e-9), YSCALE=grid.height / max(win.height, 1e-9))


def describe_source(path: Path, src) -> dict:
    return dict(file=path.name, crs=str(src.crs.to_string()), resolution=f"{abs(src.res[0]):g} x {abs(src.res[1]):g}",
                size=f"{src.width} x {src.height}", bands=src.count, nodata=src.nodata, dtype=src.dtypes[0])


def coarse_factor(native_res: float, fine_res: float) -> int:
    return max(1, int(round(native_res / fine_res)))
