"""Writing rasters: GeoTIFFs on a study area's grid and cloud-optimised GeoTIFFs (COGs), each written under a
temporary name and renamed when complete (:func:`lithocore.runfolder.atomic_path`)."""

from __future__ import annotations

import os
from pathlib import Path
import numpy as np
import rasterio
from .runfolder import atomic_path
from .area import Grid


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
    path = Path(path)
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **grid.profile(arr.shape[0], str(arr.dtype), nodata,
                                                    compress=None if cog else "deflate")) as dst:
            dst.write(arr)
            for i, n in enumerate(band_names or []):
                dst.set_band_description(i + 1, n)
            if tags:
                dst.update_tags(**{k: str(v) for k, v in tags.items()})
            if colormap:
                dst.write_colormap(1, colormap)
        if cog:
            write_cog(tmp, tmp, resampling=cog)
    return path


def write_cog(src_path: str | os.PathLike, path: str | os.PathLike, *, resampling: str = "nearest") -> Path:
    """Copy a GeoTIFF into a cloud-optimised GeoTIFF at ``path`` (atomically; ``path`` may be the source): 512-px
    tiles, deflate, internal overviews made with ``resampling`` ("nearest" for classes, "average" for values),
    the colour table, band descriptions, scales and tags kept. A QGIS user opening a large map needs the
    overviews."""
    import rasterio.shutil

    with atomic_path(path) as tmp:
        rasterio.shutil.copy(str(src_path), str(tmp), driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=512,
                             OVERVIEW_RESAMPLING=resampling.upper(), NUM_THREADS="ALL_CPUS", BIGTIFF="IF_SAFER")
    return Path(path)
