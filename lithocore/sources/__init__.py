"""The kinds of data source a manifest names, one module each.

* :mod:`~lithocore.sources.reference`: the reference grid every layer is aligned to;
* :mod:`~lithocore.sources.fine`: fine rasters (``guide`` bands and ``extra`` layers such as a DEM), read onto
  the reference grid (whole, or a strip of rows at a time by :mod:`lithocore.blockwise`);
* *grid sources*, small at any scene size and kept on a coarse grid for fusion: :mod:`~lithocore.sources.grids`
  (``coarse``: geophysical rasters), :mod:`~lithocore.sources.points` (``points``: samples gridded with verde),
  :mod:`~lithocore.sources.netcdf` (``netcdf``: a variable of a NetCDF file);
* :mod:`~lithocore.sources.labels`: the label raster or polygons, the study-area outline and the ground to predict;
* :mod:`~lithocore.sources.common`: what every raster or vector reader shares (opening, nodata, fill values).

A new kind of grid source is one new module here that calls :func:`register` (this package imports every module
in it), plus its entry in the manifest's schema (:class:`lithocore.manifest.Manifest`): the loader, the
block-wise stack writer, the manifest's file list and the memory check all go through :func:`grid_sources`.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = ["FINE_SECTIONS", "GridRead", "GridSource", "register", "grid_sources", "layer_sections"]

#: Manifest sections of fine rasters (read onto the reference grid itself).
FINE_SECTIONS = ("guide", "extra")


@dataclass
class GridRead:
    """What a grid source's reader returns for one manifest entry."""

    layers: list  # of lithocore.area.CoarseLayer, each on its own coarse grid
    row: dict  # its row of the study area's layer table (layer, file, crs, resolution, size, bands, nodata, dtype)
    samples: Any = None  # point samples to draw (a GeoDataFrame), if the source has any


@dataclass(frozen=True)
class GridSource:
    """A kind of source that is kept on a coarse grid.

    Parameters
    ----------
    section
        The manifest key that lists entries of this kind (``coarse``, ``points``).
    read
        ``read(path, entry, grid, warns) -> GridRead``: the entry's layers on coarse grids aligned with the
        reference ``grid``; faults raise :class:`lithocore.errors.StudyAreaError` naming the file, notices go to
        ``warns``.
    n_layers
        How many layers an entry gives (for the memory check before anything is read).
    """

    section: str
    read: Callable[..., GridRead]
    n_layers: Callable[[dict], int] = field(default=lambda entry: 1)


_REGISTRY: dict[str, GridSource] = {}


def register(source: GridSource) -> GridSource:
    """Make a kind of grid source known to the loader (each module of this package calls it once)."""
    _REGISTRY[source.section] = source
    return source


_SCANNED: list[str] = []  # the package's modules, imported once


def grid_sources() -> dict[str, GridSource]:
    """Every kind of grid source, by manifest section, in the order of the package's modules (whatever was
    imported first: the stack's channels follow this order)."""
    if not _SCANNED:
        for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
            importlib.import_module(f"{__name__}.{info.name}")
            _SCANNED.append(f"{__name__}.{info.name}")
    order = {name: i for i, name in enumerate(_SCANNED)}
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (order.get(kv[1].read.__module__, len(order)), kv[0])))


def layer_sections() -> tuple[str, ...]:
    """The manifest sections that name layers: the fine ones, then every grid source's."""
    return FINE_SECTIONS + tuple(grid_sources())
