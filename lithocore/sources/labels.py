"""Labels and outlines: the label raster or polygons (class ids checked against the class table, nothing
guessed), the study-area outline (``area``) and the ground to predict (``predict``), whose labels are withheld."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.warp import reproject

from ..area import ClassTable, Grid, NO_LABEL, norm_value, overlaps
from ..errors import StudyAreaError, warn_data
from .common import bounds_in, describe_source, open_raster, read_vector, resolve_path

__all__ = ["declared_values", "labels_from_raster", "labels_from_vector", "area_geometries", "area_mask",
           "predict_ground", "withhold"]


def declared_values(lab: dict, table: "ClassTable | None" = None, source: Any = "manifest") -> tuple[set, set]:
    """The label values declared as 'no label' and as nodata; the schema allows a single value or a list. A
    declared value that is also a class's value is refused (it would silently drop that unit from training and
    scoring)."""
    def values(k):
        v = lab.get(k)
        return [] if v is None else (v if isinstance(v, list) else [v])

    unlabelled, nodata = {norm_value(v) for v in values("unlabelled")}, {norm_value(v) for v in values("nodata")}
    if table is not None:
        lookup = table.value_lookup()
        both = [(k, v) for k in ("unlabelled", "nodata") for v in values(k) if norm_value(v) in lookup]
        if both:
            k, v = both[0]
            name = table.names[lookup[norm_value(v)]]
            raise StudyAreaError(source, f"labels: {k}: [{v}] is also the value of the class '{name}' in the class "
                                         f"table: a value cannot mean both a unit and 'no label'; remove it from "
                                         f"'{k}' or give the class another value")
    return unlabelled, nodata


def labels_from_raster(path: Path, lab: dict, table: ClassTable, grid: Grid, warns: list) -> tuple[np.ndarray, dict]:
    with open_raster(path) as src:
        if src.count != 1:
            raise StudyAreaError(path, f"a label raster must have 1 band, found {src.count}")
        if not overlaps(bounds_in(src, grid.crs), grid.bounds):
            raise StudyAreaError(path, "does not overlap the reference grid")
        info = describe_source(path, src)
        file_nodata = src.nodata
        unlabelled, nodata = declared_values(lab, table, path)
        lookup = table.value_lookup()
        labels = np.full(grid.shape, NO_LABEL, dtype=np.uint8)
        present: set = set()
        rows = max(1, (64 * 2**20) // (8 * grid.width))  # a block of rows at a time: memory set by the block
        for r0 in range(0, grid.height, rows):
            n = min(rows, grid.height - r0)
            raw = np.full((n, grid.width), np.nan, dtype=np.float64)
            reproject(rasterio.band(src, 1), raw, src_nodata=src.nodata, dst_transform=grid.transform *
                      Affine.translation(0, r0), dst_crs=grid.crs, dst_nodata=np.nan, resampling=Resampling.nearest,
                      tolerance=0.0)
            values = np.unique(raw[np.isfinite(raw)])
            present.update(values.tolist())
            block = labels[r0:r0 + n]
            for v in values:
                if norm_value(v) in lookup and norm_value(v) not in unlabelled | nodata:
                    block[raw == v] = lookup[norm_value(v)]
    present = sorted(present)
    no_label = [v for v in present if norm_value(v) in unlabelled | nodata]
    missing = [v for v in present if norm_value(v) not in lookup and norm_value(v) not in unlabelled | nodata]
    if missing:
        shown = [int(v) if float(v).is_integer() else v for v in missing[:10]]
        raise StudyAreaError(path, f"label value(s) {shown} are missing from the class table (values "
                                   f"{list(table.values)}; the file's nodata is {file_nodata}); if a value means "
                                   f"'no label', declare it under labels: unlabelled: [{shown[0]}] (or nodata:)")
    info["no_label_values"] = [float(v) for v in no_label]
    return labels, info


def labels_from_vector(path: Path, entry: dict, table: ClassTable, grid: Grid, warns: list) -> tuple[np.ndarray, dict]:
    from rasterio.features import rasterize

    gdf = read_vector(path, entry.get("crs"))
    fld = entry.get("field")
    if not fld:
        raise StudyAreaError(path, "vector labels need 'field' (the attribute that holds the class) in the manifest")
    if fld not in gdf.columns:
        raise StudyAreaError(path, f"class field '{fld}' does not exist; fields: {[c for c in gdf.columns if c != 'geometry']}")
    info = dict(file=path.name, crs=gdf.crs.to_string(), resolution="vector", size=f"{len(gdf)} features",
                bands="", nodata="", dtype=str(gdf[fld].dtype))
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    invalid = ~gdf.geometry.is_valid
    if invalid.any():
        gdf = gdf.copy()
        gdf.loc[invalid, "geometry"] = gdf.geometry[invalid].make_valid().map(_polygonal)
        gdf = gdf[gdf.geometry.notna()]
        warn_data(warns, path, f"{int(invalid.sum())} invalid polygon(s) (self-intersecting or otherwise broken) were "
                           f"repaired with shapely's make_valid; check them in a GIS")
    gdf = gdf.to_crs(grid.crs)
    gdf = gdf.cx[grid.bounds[0]:grid.bounds[2], grid.bounds[1]:grid.bounds[3]]
    if gdf.empty:
        raise StudyAreaError(path, f"no polygon overlaps the reference grid {tuple(round(b) for b in grid.bounds)}")
    unlabelled, nodata = declared_values(entry, table, path)
    lookup = table.value_lookup()
    vals = gdf[fld]
    keep = vals.notna() & ~vals.map(lambda v: norm_value(v) in unlabelled | nodata)
    missing = sorted({str(v) for v in vals[keep] if norm_value(v) not in lookup})
    if missing:
        raise StudyAreaError(path, f"label value(s) {missing[:10]} of field '{fld}' are missing from the class table "
                                   f"(values {list(table.values)}); give each class its 'value' as written in the field, "
                                   f"or declare values that mean 'no label' under labels: unlabelled: [...]")
    classes = np.array([lookup[norm_value(v)] for v in vals[keep]], dtype=np.int64)
    geoms = list(gdf.geometry[keep])
    labels = rasterize(zip(geoms, classes.tolist()), out_shape=grid.shape, transform=grid.transform, fill=NO_LABEL,
                       dtype="uint8")
    overlaps = _overlap_report(geoms, classes, table, grid)
    if overlaps:
        text = "; ".join(f"{o['classes'][0]} and {o['classes'][1]}: {o['km2']:.3g} km2 ({o['share_of_map']:.1%} of the "
                         f"labelled map)" for o in overlaps[:5])
        msg = (f"polygons of different classes overlap ({text}); where they do, the polygon later in the file wins. "
               f"Fix the map, or set labels: overlaps: error to refuse such a map")
        if entry.get("overlaps", "warn") == "error":
            raise StudyAreaError(path, msg)
        warn_data(warns, path, msg)
    info["overlaps"] = overlaps
    return labels, info


def _polygonal(geom):
    """The polygonal part of a (repaired) geometry, or None."""
    from shapely import get_parts
    from shapely.geometry import MultiPolygon, Polygon

    if geom is None or geom.is_empty:
        return None
    if isinstance(geom, (Polygon, MultiPolygon)):
        return geom
    polys = [g for g in get_parts(geom) if isinstance(g, (Polygon, MultiPolygon))]
    return MultiPolygon([q for g in polys for q in (g.geoms if isinstance(g, MultiPolygon) else [g])]) if polys else None


def _overlap_report(geoms: list, classes: np.ndarray, table: ClassTable, grid: Grid) -> list[dict]:
    """Area where polygons of two different classes overlap, for every such pair (on the reference grid)."""
    from rasterio.features import rasterize

    present = np.unique(classes)
    if len(present) < 2:
        return []
    cover = np.zeros(grid.shape, np.uint16)
    layers = {}
    for k in present:
        m = rasterize([g for g, c in zip(geoms, classes) if c == k], out_shape=grid.shape, transform=grid.transform,
                      fill=0, default_value=1, dtype="uint8").astype(bool)
        layers[int(k)] = m
        cover += m
    multi = cover > 1
    if not multi.any():
        return []
    labelled = max(int((cover > 0).sum()), 1)
    out = []
    ks = sorted(layers)
    for i, a in enumerate(ks):
        la = layers[a][multi]
        for b in ks[i + 1:]:
            n = int((la & layers[b][multi]).sum())
            if n:
                out.append(dict(classes=[table.names[a], table.names[b]], pixels=n, km2=n * grid.res ** 2 / 1e6,
                                share_of_map=n / labelled))
    return sorted(out, key=lambda o: -o["pixels"])


def area_geometries(path: Path, grid: Grid, crs_hint: Any = None) -> list:
    """The polygons of the area outline, in the grid's CRS."""
    gdf = read_vector(path, crs_hint).to_crs(grid.crs)
    if gdf.empty:
        raise StudyAreaError(path, "the area outline has no polygon")
    return list(gdf.geometry)


def area_mask(path: Path, grid: Grid, crs_hint: Any = None) -> np.ndarray:
    from rasterio.features import geometry_mask

    return geometry_mask(area_geometries(path, grid, crs_hint), out_shape=grid.shape, transform=grid.transform,
                         invert=True)


def predict_ground(man: dict, base: Path, grid: Grid, mask: np.ndarray | None = None) -> np.ndarray | None:
    """The manifest's ``predict`` polygons rasterised on ``grid`` (None when the manifest has none).

    Raises
    ------
    StudyAreaError
        Naming the file: not found, not readable, no CRS (and no manifest ``crs``), no polygon, or no pixel of the
        study area (``mask``) inside the polygons.
    """
    from rasterio.features import geometry_mask

    if not man.get("predict"):
        return None
    path = resolve_path(base, man["predict"])
    gdf = read_vector(path, man.get("crs"))
    polys = [g for g in (_polygonal(g) for g in gdf.geometry if g is not None and not g.is_empty) if g is not None]
    if not polys:
        raise StudyAreaError(path, "the ground to predict ('predict') holds no polygon: give polygons of the ground "
                                   "to map")
    src_crs = gdf.crs
    geoms = _reproject_geoms(polys, src_crs, grid.crs)
    ground = geometry_mask(geoms, out_shape=grid.shape, transform=grid.transform, invert=True)
    inside = ground if mask is None else ground & mask
    if not inside.any():
        l, b, r, t = grid.bounds
        raise StudyAreaError(path, f"the ground to predict does not overlap the study area (its polygons, in "
                                   f"{src_crs.to_string()}, fall outside the valid pixels of the reference grid "
                                   f"[{l:.0f}, {b:.0f}, {r:.0f}, {t:.0f}] in {grid.crs.to_string()})")
    return ground


def _reproject_geoms(geoms: list, src, dst) -> list:
    import geopandas as gpd

    return list(gpd.GeoSeries(geoms, crs=src).to_crs(dst))


def withhold(labels: np.ndarray, mask: np.ndarray, ground: np.ndarray | None):
    """Labels with the declared ground to predict withheld. Returns (training labels, withheld labels, ground):
    with declared ``ground`` the labels inside it move to the withheld raster and the ground is cut to ``mask``;
    without (None), nothing is withheld and the ground stays None (:attr:`lithocore.area.StudyArea.predict` is
    then every valid unlabelled pixel, made when read).

    Examples
    --------
    >>> lab = np.array([[0, 1, NO_LABEL, 2]], np.uint8); ok = np.ones_like(lab, bool)
    >>> tr, held, g = withhold(lab, ok, np.array([[False, False, True, True]]))
    >>> tr.tolist(), held.tolist(), g.tolist()
    ([[0, 1, 255, 255]], [[255, 255, 255, 2]], [[False, False, True, True]])
    >>> withhold(lab, ok, None)[1:]
    (array([[255, 255, 255, 255]], dtype=uint8), None)
    """
    if ground is None:  # nothing withheld: a read-only view of one value, not a scene-sized map (400 MB at 20000 px)
        return labels, np.broadcast_to(np.uint8(NO_LABEL), labels.shape), None
    held = np.full(labels.shape, NO_LABEL, np.uint8)
    ground = ground & mask
    held[ground] = labels[ground]
    labels = labels.copy()
    labels[ground] = NO_LABEL
    return labels, held, ground
