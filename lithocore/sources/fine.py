"""Fine rasters (``guide`` bands and ``extra`` layers): every band read onto the reference grid (bilinear),
with the band names the manifest gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasterio.enums import Resampling
from rasterio.warp import reproject

from ..area import Grid, WARP_THREADS, overlaps
from ..errors import StudyAreaError
from ..sensors import band_wavelengths
from .common import (bounds_in, check_fill_value, declared_nodata, describe_source, grid_offset, open_raster,
                     read_on_grid, resolve_path, source_band, warp_scales)

__all__ = ["read_fine", "fine_bands", "band_names", "read_fine_section", "fine_section_names"]


def read_fine(path: Path, grid: Grid, expected_bands: int | None, resampling: Resampling, entry: dict | None = None,
               warns: list | None = None, names: list[str] | None = None) -> tuple[np.ndarray, dict]:
    """Reproject every band of a raster onto the fine grid; NaN where the source has no data. Coordinates are
    transformed exactly for every pixel (``tolerance=0``; GDAL's default approximates them to 1/8 pixel, which
    differs with the extent warped) and the kernel's scale is the whole grid's (:func:`warp_scales`), so a block
    of the grid warped alone (:mod:`lithocore.blockwise`) gets the same values."""
    entry = entry or {}
    warns = [] if warns is None else warns
    with open_raster(path) as src:
        if expected_bands is not None and src.count != expected_bands:
            raise StudyAreaError(path, f"expected {expected_bands} band(s) as the manifest names, found {src.count}")
        if not overlaps(bounds_in(src, grid.crs), grid.bounds):
            raise StudyAreaError(path, f"does not overlap the reference grid (its bounds {tuple(round(b) for b in src.bounds)} "
                                       f"in {src.crs}, reference {tuple(round(b) for b in grid.bounds)} in {grid.crs})")
        nodata = declared_nodata(entry, src)
        for b in range(src.count):
            check_fill_value(path, src, b + 1, nodata, (names or [])[b] if names and b < len(names) else f"band {b + 1}",
                             warns)
        info = describe_source(path, src) | dict(nodata=nodata)
        offset = grid_offset(src, grid, resampling)
        if offset is not None:  # the grid's own pixels: read, not warped
            return read_on_grid(src, entry, offset, 0, grid.height, grid.width), info
        out = np.full((src.count, *grid.shape), np.nan, dtype=np.float32)
        for b in range(src.count):
            reproject(destination=out[b], src_nodata=nodata, dst_transform=grid.transform, dst_crs=grid.crs,
                      dst_nodata=np.nan, resampling=resampling, tolerance=0.0, num_threads=WARP_THREADS,
                      **warp_scales(src, grid),
                      **source_band(src, b + 1, entry))
    return out, info


def fine_bands(entry: dict, path: Path, kind: str) -> tuple[list | None, int | None]:
    """A fine layer's manifest ``bands``: the names given (an extra layer without any is named by its ``name``
    or file), and the band count they promise (None: any)."""
    bands = entry.get("bands")
    if kind == "extra" and bands is None:
        bands = [entry.get("name", path.stem)]
    expected = len(bands) if isinstance(bands, list) else (int(bands) if bands else None)
    return (bands if isinstance(bands, list) else None), expected


def band_names(path: Path, bands: list | None, count: int) -> list[str]:
    """The names of a fine layer's bands: the manifest's, else ``<file stem>_<band number>``."""
    return [str(b) for b in bands] if bands is not None else [f"{path.stem}_{i + 1}" for i in range(count)]


def read_fine_section(man: dict, base: Path, grid: Grid, key: str, warns: list, units: dict, table: list,
                      wavelengths: dict) -> tuple[np.ndarray, list[str]]:
    """Every raster of the manifest's ``key`` section (``guide`` or ``extra``) on ``grid``: the bands stacked and
    their names; each band's units, each file's row of the layer table and the bands' wavelengths (from the
    entry's ``sensor`` or ``wavelengths``) are added to ``units``, ``table`` and ``wavelengths``."""
    arrays, names = [], []
    for e in man[key]:
        p = resolve_path(base, e["path"])
        bands, expected = fine_bands(e, p, key)
        arr, info = read_fine(p, grid, expected, Resampling.bilinear, e, warns, bands)
        bnames = _described(p, e, band_names(p, bands, arr.shape[0]), units, wavelengths)
        for b, n in enumerate(bnames):
            if not np.isfinite(arr[b]).any():
                raise StudyAreaError(p, f"band {b + 1} ({n}) has no valid data inside the reference grid")
        arrays.append(arr)
        names += bnames
        table.append(dict(layer=", ".join(bnames), kind=key, **info))
    if not arrays:
        return np.zeros((0, *grid.shape), np.float32), []
    return np.concatenate(arrays, axis=0), names


def _described(path: Path, entry: dict, names: list[str], units: dict, wavelengths: dict) -> list[str]:
    """Add a fine layer's bands' units and wavelengths (its ``sensor`` or ``wavelengths``) to ``units`` and
    ``wavelengths``; returns ``names``."""
    try:
        wavelengths.update(band_wavelengths(names, sensor=entry.get("sensor"), wavelengths=entry.get("wavelengths")))
    except ValueError as exc:
        raise StudyAreaError(path, str(exc)) from None
    units.update({n: str(entry.get("units", "")) for n in names})
    return names


def fine_section_names(man: dict, base: Path, key: str, units: dict, wavelengths: dict) -> list[str]:
    """The band names of the manifest's ``key`` section (``guide`` or ``extra``), their units and wavelengths added
    to ``units`` and ``wavelengths``, as :func:`read_fine_section` names them, from the files' headers: no pixel
    is read (a study area whose stack is made already, :func:`lithocore.data.load_study_area`'s ``valid``)."""
    names = []
    for e in man[key]:
        p = resolve_path(base, e["path"])
        bands, _ = fine_bands(e, p, key)
        with open_raster(p) as src:
            names += _described(p, e, band_names(p, bands, src.count), units, wavelengths)
    return names
