"""NetCDF grids (``netcdf``: one variable of a NetCDF file, as gridded geophysical surveys and models are often
delivered), read through GDAL's netCDF driver and kept on a coarse grid like a ``coarse`` raster::

    netcdf:
      - {path: gravity.nc, variable: bouguer, name: gravity, units: mGal, crs: "EPSG:32646"}

``crs`` is needed only when the file declares none (no CF ``grid_mapping``); a file that does keeps its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.io import MemoryFile

from . import GridRead, GridSource, register
from ..area import Grid
from ..errors import StudyAreaError
from .grids import coarse_layer

__all__ = ["read_netcdf", "netcdf_variables"]


def netcdf_variables(path: Path) -> list[str]:
    """The gridded variables of a NetCDF file (GDAL's subdatasets; a file of one variable: that one)."""
    with rasterio.open(path) as src:
        subs = list(src.subdatasets)
        if not subs:
            return [str(src.tags().get("NETCDF_VARNAME") or src.tags(1).get("NETCDF_VARNAME") or "")]
    return [s.rsplit(":", 1)[-1] for s in subs]


def read_netcdf(path: Path, entry: dict, grid: Grid, warns: list) -> GridRead:
    """A ``netcdf`` entry as a grid source: its ``variable`` as one coarse layer."""
    if not path.is_file():
        raise StudyAreaError(path, "file not found")
    try:
        variables = netcdf_variables(path)
    except rasterio.errors.RasterioIOError as exc:
        raise StudyAreaError(path, f"cannot be read as a NetCDF grid ({exc})") from None
    variable = entry["variable"]
    if variable not in variables:
        raise StudyAreaError(path, f"has no variable '{variable}'; its gridded variables: {', '.join(variables)}")
    with rasterio.open(f'NETCDF:"{path}":{variable}') as src:
        crs = src.crs or (rasterio.crs.CRS.from_user_input(entry["crs"]) if entry.get("crs") else None)
        if crs is None:
            raise StudyAreaError(path, f"variable '{variable}' has no CRS (no grid_mapping); give 'crs' in its entry")
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype=src.dtypes[0], crs=crs,
                       transform=src.transform, nodata=src.nodata)
        values = src.read(1)
    rest = {k: v for k, v in entry.items() if k not in ("variable", "crs")}
    with MemoryFile() as mem, mem.open(**profile) as copy:
        copy.write(np.asarray(values), 1)
        layer, info = coarse_layer(copy, path, rest, grid, warns)
    return GridRead([layer], dict(layer=layer.name, kind="netcdf", **info))


register(GridSource("netcdf", read_netcdf))
