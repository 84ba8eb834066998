"""Variants of a generated study area made the way real areas arrive: labels as sparse training polygons (a field
campaign), rasters in a geographic CRS with a fill value (a download). Tests and benchmarks try the workbook on them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import yaml
from rasterio.crs import CRS

__all__ = ["sparse_training_polygons", "geographic_copy"]


def _copy_area(manifest: Path, out: Path) -> dict:
    """Copy a generated area's files (not its truth) into ``out``; returns its manifest as a dict."""
    out.mkdir(parents=True, exist_ok=True)
    for f in manifest.parent.iterdir():
        if f.is_file() and f.name != "manifest.yaml":
            shutil.copy2(f, out / f.name)
    man = yaml.safe_load(manifest.read_text())
    man.pop("truth", None)
    return man


def sparse_training_polygons(manifest: str | os.PathLike, out_dir: str | os.PathLike, *, share: float = 0.06,
                             radius: int = 6, seed: int = 0) -> Path:
    """A copy of a generated area whose labels are training polygons (discs of ``radius`` px) on about ``share``
    of the pixels, everything else a polygon of unit 0, declared ``unlabelled: [0]``: the sparse labels of a
    field campaign. Returns the copy's manifest."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import shapes
    from shapely.geometry import shape

    manifest, out = Path(manifest), Path(out_dir)
    man = _copy_area(manifest, out)
    with rasterio.open(manifest.parent / "geology_15m.tif") as src:
        lab = src.read(1).astype(np.int32)
        transform, crs = src.transform, src.crs
    rng = np.random.default_rng(seed)
    keep = np.zeros(lab.shape, bool)
    rr, cc = np.mgrid[: lab.shape[0], : lab.shape[1]]
    while keep.mean() < share:
        r, c = rng.integers(0, lab.shape[0]), rng.integers(0, lab.shape[1])
        keep |= (rr - r) ** 2 + (cc - c) ** 2 <= radius ** 2
    sparse = np.where(keep, lab, 0).astype(np.int32)
    feats = [(shape(g), int(v)) for g, v in shapes(sparse, transform=transform)]
    gdf = gpd.GeoDataFrame({"unit_id": [v for _, v in feats]}, geometry=[g for g, _ in feats], crs=crs)
    gdf.to_file(out / "training_polygons.gpkg", driver="GPKG")
    man["labels"] = dict(man["labels"], path="training_polygons.gpkg", unlabelled=[0])
    (out / "manifest.yaml").write_text(yaml.safe_dump(man, sort_keys=False, allow_unicode=True))
    return out / "manifest.yaml"


def geographic_copy(manifest: str | os.PathLike, out_dir: str | os.PathLike, *, epsg: int = 4326,
                    nodata: float = -9999.0) -> Path:
    """A copy of a generated area with every raster reprojected to a geographic CRS (degrees, nodata
    ``nodata``), the vectors and samples left in theirs: how many areas arrive. Returns the copy's manifest."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    manifest, out = Path(manifest), Path(out_dir)
    man = _copy_area(manifest, out)
    dst_crs = CRS.from_epsg(epsg)
    for tif in sorted(out.glob("*.tif")):
        with rasterio.open(tif) as src:
            transform, w, h = calculate_default_transform(src.crs, dst_crs, src.width, src.height, *src.bounds)
            profile = src.profile | dict(crs=dst_crs, transform=transform, width=w, height=h)
            categorical = src.dtypes[0] == "uint8"
            if not categorical:
                profile |= dict(dtype="float32", nodata=nodata)
            data = np.full((src.count, h, w), profile["nodata"] or 0, dtype=profile["dtype"])
            for b in range(src.count):
                reproject(rasterio.band(src, b + 1), data[b], dst_transform=transform, dst_crs=dst_crs,
                          dst_nodata=profile["nodata"],
                          resampling=Resampling.nearest if categorical else Resampling.bilinear)
            tags, descriptions = src.tags(), src.descriptions
        tmp = tif.with_suffix(".tmp.tif")
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            dst.update_tags(**tags)
            dst.descriptions = descriptions
        os.replace(tmp, tif)
    (out / "manifest.yaml").write_text(yaml.safe_dump(man, sort_keys=False, allow_unicode=True))
    return out / "manifest.yaml"
