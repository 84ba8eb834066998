"""Loading a study area from a manifest: every layer aligned on one reference grid.

A study area is described by a small YAML manifest that a user writes for their own data. Paths in it are
relative to the manifest file. The sections are::

    name: My study area
    reference: aster_vnir_15m.tif          # the grid everything is aligned to (a raster path), or
                                           # {crs: EPSG:32646, bounds: [l, b, r, t], resolution: 15}
    area: outline.shp                      # optional polygon: pixels outside are not valid
    guide:                                 # fine guide bands (multispectral), resampled bilinearly
      - path: aster_vnir_15m.tif
        bands: [B1, B2, B3N]               # one name per band; the file must have that many bands
        units: reflectance
    extra:                                 # other fine layers (DEM), resampled bilinearly
      - {path: dem.tif, name: dem, units: m}
    coarse:                                # coarse grids (geophysics), kept on a coarse grid for fusion
      - {path: mag_2km.tif, name: magnetic, units: nT}
    points:                                # point samples, gridded onto a coarse grid with verde
      - path: samples.csv                  # CSV (needs crs, x, y) or any vector file (GeoPackage, ...)
        crs: EPSG:32646
        x: x
        y: y
        columns: [SiO2, Al2O3]             # or {column_in_file: layer_name}
        units: wt%
        spacing: 2000                      # metres, the coarse cell
        method: spline                     # spline | linear | cubic | nearest
        log: false                         # grid log10 of the values (for ppm-type data)
    labels:
      path: geology.gpkg                   # vector polygons with a class field, or a label raster
      field: unit_id                       # vector only
      classes:
        - {id: 1, name: Sandstone, colour: "#d9c27a"}          # value defaults to id
        - {id: 2, name: Marble, colour: "#7fb2e5", value: "Carbonate rock"}

Coarse layers and gridded points keep a coarse grid whose origin is the reference grid's and whose cell is a
whole number of fine pixels (the source cell rounded to it), so that fusion can move between the two scales
exactly. Pixels without a label are "no label" (:data:`NO_LABEL`), never a class.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine, from_origin
from rasterio.warp import calculate_default_transform, reproject

__all__ = [
    "NO_LABEL",
    "StudyAreaError",
    "Grid",
    "ClassTable",
    "CoarseLayer",
    "StudyArea",
    "load_study_area",
    "read_manifest",
    "write_geotiff",
]

#: Value of the label raster where a pixel has no label (outside the map, or a unit not mapped).
NO_LABEL = 255


class StudyAreaError(ValueError):
    """Bad input for a study area: the message names the file and the fault."""

    def __init__(self, source: str | os.PathLike, fault: str):
        self.source = str(source)
        self.fault = fault
        super().__init__(f"{source}: {fault}")


# --------------------------------------------------------------------------------------------- grids
@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: CRS, affine transform and size.

    Examples
    --------
    >>> g = Grid(crs=CRS.from_epsg(32646), transform=from_origin(500000, 3100000, 15, 15), width=4, height=3)
    >>> g.shape, g.res, g.bounds
    ((3, 4), 15.0, (500000.0, 3099955.0, 500060.0, 3100000.0))
    """

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def res(self) -> float:
        return float(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform.c, self.transform.f
        return (left, top + self.transform.e * self.height, left + self.transform.a * self.width, top)

    def coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """Easting (1-D, columns) and northing (1-D, rows) of the cell centres."""
        left, _, _, top = self.bounds
        east = left + (np.arange(self.width) + 0.5) * self.res
        north = top - (np.arange(self.height) + 0.5) * self.res
        return east, north

    def coarsen(self, factor: int) -> "Grid":
        """The grid with cells ``factor`` times larger, same origin, covering at least the same area."""
        left, _, _, top = self.bounds
        return Grid(
            crs=self.crs,
            transform=from_origin(left, top, self.res * factor, self.res * factor),
            width=math.ceil(self.width / factor),
            height=math.ceil(self.height / factor),
        )

    def profile(self, count: int, dtype: str = "float32", nodata: float | None = float("nan")) -> dict:
        """A rasterio profile for a tiled, compressed GeoTIFF on this grid."""
        prof = dict(driver="GTiff", crs=self.crs, transform=self.transform, width=self.width,
                    height=self.height, count=count, dtype=dtype, nodata=nodata, compress="deflate")
        if self.width >= 256 and self.height >= 256:
            prof.update(tiled=True, blockxsize=256, blockysize=256)
        return prof


def _overlaps(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


# ------------------------------------------------------------------------------------- class table
@dataclass(frozen=True)
class ClassTable:
    """The map's classes: id, name, colour and the value that stands for the class in the source.

    Class *indices* (0..n-1, the order of the table) are what label arrays and models use.

    Examples
    --------
    >>> t = ClassTable.from_list([{"id": 1, "name": "Marble", "colour": "#7fb2e5"},
    ...                           {"id": 4, "name": "Gneiss", "colour": "#e58a7f"}])
    >>> len(t), t.names, t.index_of_value(4)
    (2, ('Marble', 'Gneiss'), 1)
    """

    ids: tuple[int, ...]
    names: tuple[str, ...]
    colours: tuple[str, ...]
    values: tuple[Any, ...]

    @classmethod
    def from_list(cls, entries: list[dict], source: str = "manifest") -> "ClassTable":
        if not entries:
            raise StudyAreaError(source, "the class table under labels.classes is empty")
        ids, names, colours, values = [], [], [], []
        for i, e in enumerate(entries):
            if "id" not in e or "name" not in e:
                raise StudyAreaError(source, f"class entry {i} needs an 'id' and a 'name', got {e}")
            ids.append(int(e["id"]))
            names.append(str(e["name"]))
            colours.append(str(e.get("colour", e.get("color", _DEFAULT_COLOURS[i % len(_DEFAULT_COLOURS)]))))
            values.append(e.get("value", e["id"]))
        if len(set(ids)) != len(ids):
            raise StudyAreaError(source, f"class ids repeat in the class table: {ids}")
        if len(ids) >= NO_LABEL:
            raise StudyAreaError(source, f"at most {NO_LABEL - 1} classes are supported")
        return cls(tuple(ids), tuple(names), tuple(colours), tuple(values))

    def __len__(self) -> int:
        return len(self.ids)

    def index_of_value(self, value: Any) -> int:
        return {_norm(v): i for i, v in enumerate(self.values)}[_norm(value)]

    def value_lookup(self) -> dict:
        return {_norm(v): i for i, v in enumerate(self.values)}

    def to_list(self) -> list[dict]:
        return [dict(id=i, name=n, colour=c, value=v) for i, n, c, v in
                zip(self.ids, self.names, self.colours, self.values)]


def _norm(v: Any) -> Any:
    """Class values compare as numbers where they are numbers (1 == 1.0 == '1'), else as stripped text."""
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    s = str(v).strip()
    try:
        return float(s)
    except ValueError:
        return s


_DEFAULT_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                    "#7f7f7f", "#bcbd22", "#17becf"]


# ------------------------------------------------------------------------------------- study area
@dataclass
class CoarseLayer:
    """A coarse layer on its own grid (aligned with the reference grid, cell = ``factor`` fine pixels)."""

    name: str
    values: np.ndarray  # (h, w) float32, NaN = nodata
    grid: Grid
    factor: int
    units: str = ""
    source: str = ""
    kind: str = "coarse"  # "coarse" (a raster grid) or "points" (gridded samples)
    meta: dict = field(default_factory=dict)  # the manifest entry's other keys (inclination, group, ...)

    def to_fine(self, fine: Grid) -> np.ndarray:
        """Bilinear resampling onto the fine grid (the plain upsampling that fusion is compared with)."""
        out = np.full(fine.shape, np.nan, dtype=np.float32)
        reproject(self.values.astype(np.float32), out, src_transform=self.grid.transform, src_crs=self.grid.crs,
                  dst_transform=fine.transform, dst_crs=fine.crs, src_nodata=np.nan, dst_nodata=np.nan,
                  resampling=Resampling.bilinear)
        return out


@dataclass
class StudyArea:
    """Every layer of a study area on one reference grid, with one valid-data mask."""

    name: str
    grid: Grid
    guide: np.ndarray  # (n_guide, H, W) float32
    guide_names: list[str]
    extra: np.ndarray  # (n_extra, H, W) float32
    extra_names: list[str]
    coarse: list[CoarseLayer]
    labels: np.ndarray  # (H, W) uint8 class index, NO_LABEL where unlabelled
    classes: ClassTable
    mask: np.ndarray  # (H, W) bool: every layer has data here
    layer_table: list[dict] = field(default_factory=list)
    points: dict = field(default_factory=dict)  # name -> GeoDataFrame of the samples (reference CRS)
    units: dict = field(default_factory=dict)  # layer name -> units
    manifest_path: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    def coarse_layer(self, name: str) -> CoarseLayer:
        for c in self.coarse:
            if c.name == name:
                return c
        raise KeyError(f"no coarse layer named {name!r}; have {[c.name for c in self.coarse]}")

    def label_fractions(self) -> dict[str, float]:
        """Share of each class among the labelled, valid pixels."""
        lab = self.labels[self.mask & (self.labels != NO_LABEL)]
        counts = np.bincount(lab, minlength=len(self.classes))
        total = max(int(counts.sum()), 1)
        return {n: float(c) / total for n, c in zip(self.classes.names, counts)}


# ------------------------------------------------------------------------------------------ manifest
def read_manifest(path: str | os.PathLike) -> dict:
    """Read and check the structure of a study-area manifest (YAML)."""
    path = Path(path)
    if not path.is_file():
        raise StudyAreaError(path, "manifest file not found")
    try:
        man = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise StudyAreaError(path, f"is not valid YAML: {exc}") from None
    if not isinstance(man, dict):
        raise StudyAreaError(path, "a manifest must be a mapping with at least 'reference' and 'labels'")
    for key in ("reference", "labels"):
        if key not in man:
            raise StudyAreaError(path, f"the manifest has no '{key}' section")
    for key in ("guide", "extra", "coarse", "points"):
        man.setdefault(key, [])
        if not isinstance(man[key], list):
            raise StudyAreaError(path, f"'{key}' must be a list of entries")
        for e in man[key]:
            if not isinstance(e, dict) or "path" not in e:
                raise StudyAreaError(path, f"every '{key}' entry needs a 'path', got {e!r}")
    if not man["guide"] and not man["extra"]:
        raise StudyAreaError(path, "the manifest needs at least one fine layer under 'guide' or 'extra'")
    man.setdefault("name", path.stem)
    return man


def _resolve(base: Path, p: str) -> Path:
    q = Path(os.path.expandvars(os.path.expanduser(str(p))))
    return q if q.is_absolute() else (base / q)


def _open_raster(path: Path):
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
    return src


def _reference_grid(man: dict, base: Path) -> Grid:
    ref = man["reference"]
    if isinstance(ref, str):
        ref = {"path": ref}
    if "path" in ref:
        p = _resolve(base, ref["path"])
        with _open_raster(p) as src:
            if not math.isclose(abs(src.transform.a), abs(src.transform.e)) or src.transform.b or src.transform.d:
                raise StudyAreaError(p, "the reference grid must be north-up with square cells")
            g = Grid(CRS.from_user_input(src.crs), src.transform, src.width, src.height)
    else:
        try:
            crs = CRS.from_user_input(ref["crs"])
            left, bottom, right, top = map(float, ref["bounds"])
            res = float(ref["resolution"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StudyAreaError(base, f"reference needs 'path', or 'crs', 'bounds' and 'resolution' ({exc})") from None
        g = Grid(crs, from_origin(left, top, res, res), round((right - left) / res), round((top - bottom) / res))
    if g.width < 1 or g.height < 1:
        raise StudyAreaError(ref.get("path", "reference"), "the reference grid is empty (zero pixels)")
    return g


def _src_bounds_in(src, crs: CRS) -> tuple:
    if src.crs == crs:
        return tuple(src.bounds)
    from rasterio.warp import transform_bounds

    return transform_bounds(src.crs, crs, *src.bounds)


def _read_fine(path: Path, grid: Grid, expected_bands: int | None, resampling: Resampling) -> tuple[np.ndarray, dict]:
    """Reproject every band of a raster onto the fine grid; NaN where the source has no data."""
    with _open_raster(path) as src:
        if expected_bands is not None and src.count != expected_bands:
            raise StudyAreaError(path, f"expected {expected_bands} band(s) as the manifest names, found {src.count}")
        if not _overlaps(_src_bounds_in(src, grid.crs), grid.bounds):
            raise StudyAreaError(path, f"does not overlap the reference grid (its bounds {tuple(round(b) for b in src.bounds)} "
                                       f"in {src.crs}, reference {tuple(round(b) for b in grid.bounds)} in {grid.crs})")
        out = np.full((src.count, *grid.shape), np.nan, dtype=np.float32)
        for b in range(src.count):
            reproject(rasterio.band(src, b + 1), out[b], src_nodata=src.nodata, dst_transform=grid.transform,
                      dst_crs=grid.crs, dst_nodata=np.nan, resampling=resampling)
        info = _describe(path, src)
    return out, info


def _describe(path: Path, src) -> dict:
    return dict(file=path.name, crs=str(src.crs.to_string()), resolution=f"{abs(src.res[0]):g} x {abs(src.res[1]):g}",
                size=f"{src.width} x {src.height}", bands=src.count, nodata=src.nodata, dtype=src.dtypes[0])


def _coarse_factor(native_res: float, fine_res: float) -> int:
    return max(1, int(round(native_res / fine_res)))


def _read_coarse(path: Path, entry: dict, grid: Grid) -> tuple[CoarseLayer, dict]:
    with _open_raster(path) as src:
        band = int(entry.get("band", 1))
        if not 1 <= band <= src.count:
            raise StudyAreaError(path, f"has {src.count} band(s); the manifest asks for band {band}")
        if not _overlaps(_src_bounds_in(src, grid.crs), grid.bounds):
            raise StudyAreaError(path, f"does not overlap the reference grid (reference bounds "
                                       f"{tuple(round(b) for b in grid.bounds)} in {grid.crs})")
        if src.crs == grid.crs:
            native = abs(src.res[0])
        else:
            t, _, _ = calculate_default_transform(src.crs, grid.crs, src.width, src.height, *src.bounds)
            native = abs(t.a)
        factor = int(entry.get("factor", _coarse_factor(native, grid.res)))
        cgrid = grid.coarsen(factor)
        values = np.full(cgrid.shape, np.nan, dtype=np.float32)
        reproject(rasterio.band(src, band), values, src_nodata=src.nodata, dst_transform=cgrid.transform,
                  dst_crs=cgrid.crs, dst_nodata=np.nan, resampling=Resampling.bilinear)
        info = _describe(path, src)
    name = entry.get("name", path.stem)
    if not np.isfinite(values).any():
        raise StudyAreaError(path, "has no valid data inside the reference grid (all nodata)")
    meta = {k: v for k, v in entry.items() if k not in ("path", "name", "units")}
    return CoarseLayer(name, values, cgrid, factor, str(entry.get("units", "")), str(path), meta=meta), info


def _read_vector(path: Path, crs_hint: Any = None):
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


def _read_points(path: Path, entry: dict, grid: Grid):
    import geopandas as gpd
    import pandas as pd

    if not path.exists():
        raise StudyAreaError(path, "file not found")
    if path.suffix.lower() in (".csv", ".txt"):
        df = pd.read_csv(path)
        xcol, ycol = entry.get("x", "x"), entry.get("y", "y")
        for col in (xcol, ycol):
            if col not in df.columns:
                raise StudyAreaError(path, f"coordinate column '{col}' does not exist; columns: {list(df.columns)}")
        if entry.get("crs") is None:
            raise StudyAreaError(path, "has no CRS (coordinate reference system): a CSV needs 'crs' in its manifest entry")
        gdf = gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(df[xcol], df[ycol]), crs=entry["crs"])
    else:
        gdf = _read_vector(path, entry.get("crs"))
    gdf = gdf.to_crs(grid.crs)
    columns = entry.get("columns")
    if not columns:
        raise StudyAreaError(path, "the manifest entry names no 'columns' to grid")
    if isinstance(columns, list):
        columns = {c: c for c in columns}
    missing = [c for c in columns if c not in gdf.columns]
    if missing:
        raise StudyAreaError(path, f"column(s) {missing} do not exist; columns: {list(gdf.columns)}")
    left, bottom, right, top = grid.bounds
    x, y = gdf.geometry.x.to_numpy(), gdf.geometry.y.to_numpy()
    inside = (x >= left) & (x <= right) & (y >= bottom) & (y <= top)
    if not inside.any():
        raise StudyAreaError(path, f"no sample lies inside the reference grid {tuple(round(b) for b in grid.bounds)}")
    return gdf, columns


def grid_points(x: np.ndarray, y: np.ndarray, values: np.ndarray, cgrid: Grid, method: str = "spline",
                log: bool = False, maxdist: float | None = None) -> np.ndarray:
    """Grid scattered samples onto the cell centres of a coarse grid with verde.

    Samples are first reduced to one median per cell (``verde.BlockReduce``), then interpolated
    (``spline``: ``verde.Spline`` with light damping; ``linear``/``cubic``/``nearest``: ``verde.Linear``,
    ``verde.Cubic``, ``verde.KNeighbors``). Cells farther than ``maxdist`` (default 2 cells) from any sample
    are NaN.

    Examples
    --------
    >>> g = Grid(CRS.from_epsg(32646), from_origin(0, 10000, 2000, 2000), 5, 5)
    >>> xs, ys = np.meshgrid(np.arange(1000, 10000, 2000.0), np.arange(1000, 10000, 2000.0))
    >>> z = grid_points(xs.ravel(), ys.ravel(), (xs + ys).ravel(), g)
    >>> bool(np.allclose(z, (xs + ys)[::-1], rtol=1e-3))
    True
    """
    import verde as vd

    ok = np.isfinite(values) & np.isfinite(x) & np.isfinite(y)
    if log:
        ok &= values > 0
    x, y, v = x[ok], y[ok], values[ok]
    if v.size < 3:
        raise ValueError("fewer than 3 valid samples to grid")
    if log:
        v = np.log10(v)
    spacing = cgrid.res
    # Fit in coordinates relative to the grid's centre: keeps the spline's linear system well conditioned.
    east, north = cgrid.coordinates()
    x0, y0 = east.mean(), north.mean()
    left, bottom, right, top = cgrid.bounds
    # One median per coarse cell: the blocks are the grid's own cells, not blocks laid from the data's extent.
    reducer = vd.BlockReduce(np.median, spacing=spacing, region=(left - x0, right - x0, bottom - y0, top - y0))
    (bx, by), bv = reducer.filter((x - x0, y - y0), v)
    gridders = {
        "spline": lambda: vd.Spline(damping=1e-6),
        "linear": vd.Linear,
        "cubic": vd.Cubic,
        "nearest": lambda: vd.KNeighbors(k=1),
    }
    if method not in gridders:
        raise ValueError(f"unknown gridding method {method!r}; choose one of {sorted(gridders)}")
    gridder = gridders[method]()
    gridder.fit((bx, by), bv)
    ee, nn = np.meshgrid(east - x0, north - y0)
    z = np.asarray(gridder.predict((ee, nn)), dtype=np.float64)
    dist = vd.distance_mask((bx, by), maxdist=maxdist or 2 * spacing, coordinates=(ee, nn))
    z = np.where(dist, z, np.nan)
    if log:
        z = 10.0 ** z
    return z.astype(np.float32)


def _labels_from_raster(path: Path, table: ClassTable, grid: Grid) -> tuple[np.ndarray, dict]:
    with _open_raster(path) as src:
        if src.count != 1:
            raise StudyAreaError(path, f"a label raster must have 1 band, found {src.count}")
        if not _overlaps(_src_bounds_in(src, grid.crs), grid.bounds):
            raise StudyAreaError(path, "does not overlap the reference grid")
        nodata = src.nodata if src.nodata is not None else 0
        raw = np.full(grid.shape, nodata, dtype=np.float64)
        reproject(rasterio.band(src, 1), raw, src_nodata=nodata, dst_transform=grid.transform, dst_crs=grid.crs,
                  dst_nodata=nodata, resampling=Resampling.nearest)
        info = _describe(path, src)
    lookup = table.value_lookup()
    labels = np.full(grid.shape, NO_LABEL, dtype=np.uint8)
    present = np.unique(raw[raw != nodata])
    missing = [v for v in present.tolist() if _norm(v) not in lookup]
    if missing:
        raise StudyAreaError(path, f"label value(s) {missing[:10]} are missing from the class table "
                                   f"(values {[v for v in table.values]}); nodata is {nodata}")
    for v in present:
        labels[raw == v] = lookup[_norm(v)]
    return labels, info


def _labels_from_vector(path: Path, entry: dict, table: ClassTable, grid: Grid) -> tuple[np.ndarray, dict]:
    from rasterio.features import rasterize

    gdf = _read_vector(path, entry.get("crs"))
    fld = entry.get("field")
    if not fld:
        raise StudyAreaError(path, "vector labels need 'field' (the attribute that holds the class) in the manifest")
    if fld not in gdf.columns:
        raise StudyAreaError(path, f"class field '{fld}' does not exist; fields: {[c for c in gdf.columns if c != 'geometry']}")
    info = dict(file=path.name, crs=gdf.crs.to_string(), resolution="vector", size=f"{len(gdf)} features",
                bands="", nodata="", dtype=str(gdf[fld].dtype))
    gdf = gdf.to_crs(grid.crs)
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    gdf = gdf.cx[grid.bounds[0]:grid.bounds[2], grid.bounds[1]:grid.bounds[3]]
    if gdf.empty:
        raise StudyAreaError(path, f"no polygon overlaps the reference grid {tuple(round(b) for b in grid.bounds)}")
    lookup = table.value_lookup()
    vals = gdf[fld]
    unlabelled = vals.isna()
    missing = sorted({str(v) for v in vals[~unlabelled] if _norm(v) not in lookup})
    if missing:
        raise StudyAreaError(path, f"label value(s) {missing[:10]} of field '{fld}' are missing from the class table")
    shapes = [(geom, lookup[_norm(v)]) for geom, v in zip(gdf.geometry[~unlabelled], vals[~unlabelled])]
    labels = rasterize(shapes, out_shape=grid.shape, transform=grid.transform, fill=NO_LABEL, dtype="uint8")
    return labels, info


def _area_mask(path: Path, grid: Grid, crs_hint: Any = None) -> np.ndarray:
    from rasterio.features import geometry_mask

    gdf = _read_vector(path, crs_hint).to_crs(grid.crs)
    if gdf.empty:
        raise StudyAreaError(path, "the area outline has no polygon")
    return geometry_mask(list(gdf.geometry), out_shape=grid.shape, transform=grid.transform, invert=True)


def load_study_area(manifest: str | os.PathLike) -> StudyArea:
    """Load every layer of a study area onto its reference grid.

    Parameters
    ----------
    manifest
        Path of the YAML manifest (see the module's docstring for its sections).

    Returns
    -------
    StudyArea
        Fine layers (guide bands, extra layers) on the reference grid, coarse layers and gridded points on
        their coarse grids, the label raster (class indices, :data:`NO_LABEL` where unlabelled), the class
        table and one valid-data mask. Nothing is written to disk.

    Raises
    ------
    StudyAreaError
        With the file and the fault: missing file, no CRS, no overlap with the reference grid, wrong band
        count, label values missing from the class table, a class field that does not exist, an empty area.
    """
    mpath = Path(manifest).resolve()
    man = read_manifest(mpath)
    base = mpath.parent
    grid = _reference_grid(man, base)
    table: list[dict] = []
    units: dict[str, str] = {}

    def fine_stack(key: str) -> tuple[np.ndarray, list[str]]:
        arrays, names = [], []
        for e in man[key]:
            p = _resolve(base, e["path"])
            bands = e.get("bands")
            if key == "extra" and bands is None:
                bands = [e.get("name", p.stem)]
            expected = len(bands) if isinstance(bands, list) else (int(bands) if bands else None)
            arr, info = _read_fine(p, grid, expected, Resampling.bilinear)
            if isinstance(bands, list):
                bnames = [str(b) for b in bands]
            else:
                bnames = [f"{p.stem}_{i + 1}" for i in range(arr.shape[0])]
            for b, n in enumerate(bnames):
                if not np.isfinite(arr[b]).any():
                    raise StudyAreaError(p, f"band {b + 1} ({n}) has no valid data inside the reference grid")
                units[n] = str(e.get("units", ""))
            arrays.append(arr)
            names += bnames
            table.append(dict(layer=", ".join(bnames), kind=key, **info))
        if not arrays:
            return np.zeros((0, *grid.shape), np.float32), []
        return np.concatenate(arrays, axis=0), names

    guide, guide_names = fine_stack("guide")
    extra, extra_names = fine_stack("extra")

    coarse: list[CoarseLayer] = []
    for e in man["coarse"]:
        layer, info = _read_coarse(_resolve(base, e["path"]), e, grid)
        coarse.append(layer)
        units[layer.name] = layer.units
        table.append(dict(layer=layer.name, kind="coarse", **info))

    points = {}
    for e in man["points"]:
        p = _resolve(base, e["path"])
        gdf, columns = _read_points(p, e, grid)
        spacing = float(e.get("spacing", 2000))
        factor = _coarse_factor(spacing, grid.res)
        cgrid = grid.coarsen(factor)
        x, y = gdf.geometry.x.to_numpy(), gdf.geometry.y.to_numpy()
        for col, name in columns.items():
            vals = np.asarray(gdf[col], dtype=np.float64)
            try:
                z = grid_points(x, y, vals, cgrid, method=e.get("method", "spline"), log=bool(e.get("log", False)),
                                maxdist=e.get("maxdist"))
            except ValueError as exc:
                raise StudyAreaError(p, f"column '{col}': {exc}") from None
            coarse.append(CoarseLayer(str(name), z, cgrid, factor, str(e.get("units", "")), str(p), kind="points",
                                      meta={"group": str(p), "log": bool(e.get("log", False))}))
            units[str(name)] = str(e.get("units", ""))
        points[p.stem] = gdf.rename(columns={c: n for c, n in columns.items()})
        table.append(dict(layer=", ".join(map(str, columns.values())), kind="points", file=p.name,
                          crs=gdf.crs.to_string(), resolution=f"gridded at {cgrid.res:g}", size=f"{len(gdf)} samples",
                          bands=len(columns), nodata="", dtype="float"))

    lab = man["labels"]
    if isinstance(lab, str) or "path" not in lab:
        raise StudyAreaError(mpath, "'labels' needs a 'path' and a 'classes' table")
    classes = ClassTable.from_list(lab.get("classes") or [], source=str(mpath))
    lpath = _resolve(base, lab["path"])
    if lpath.suffix.lower() in (".tif", ".tiff", ".vrt", ".img"):
        labels, info = _labels_from_raster(lpath, classes, grid)
    else:
        labels, info = _labels_from_vector(lpath, lab, classes, grid)
    table.append(dict(layer="labels", kind="labels", **info))

    mask = np.ones(grid.shape, dtype=bool)
    for arr in (guide, extra):
        if arr.shape[0]:
            mask &= np.isfinite(arr).all(axis=0)
    for c in coarse:
        mask &= np.isfinite(c.to_fine(grid))
    if man.get("area"):
        mask &= _area_mask(_resolve(base, man["area"]), grid, man.get("crs"))
    if not mask.any():
        raise StudyAreaError(mpath, "the study area is empty: no pixel has valid data in every layer "
                                    "(check nodata values, the area outline and the layers' extents)")
    if not ((labels != NO_LABEL) & mask).any():
        raise StudyAreaError(lpath, "no valid pixel has a label")
    for arr in (guide, extra):
        arr[:, ~mask] = np.nan
    return StudyArea(name=str(man["name"]), grid=grid, guide=guide, guide_names=guide_names, extra=extra,
                     extra_names=extra_names, coarse=coarse, labels=labels, classes=classes, mask=mask,
                     layer_table=table, points=points, units=units, manifest_path=str(mpath))


# ------------------------------------------------------------------------------------------- writing
def write_geotiff(path: str | os.PathLike, array: np.ndarray, grid: Grid, *, band_names: list[str] | None = None,
                  nodata: float | None = float("nan"), tags: dict | None = None,
                  colormap: dict | None = None) -> Path:
    """Write a (bands, H, W) or (H, W) array as a GeoTIFF, atomically (a temporary file renamed into place).

    Examples
    --------
    >>> import tempfile
    >>> g = Grid(CRS.from_epsg(32646), from_origin(0, 30, 15, 15), 2, 2)
    >>> p = write_geotiff(Path(tempfile.mkdtemp()) / "a.tif", np.ones((2, 2)), g, band_names=["one"])
    >>> with rasterio.open(p) as s: print(s.count, s.descriptions)
    1 ('one',)
    """
    path = Path(path)
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".tif", dir=path.parent, prefix=f".{path.stem}.")
    os.close(fd)
    try:
        with rasterio.open(tmp, "w", **grid.profile(arr.shape[0], str(arr.dtype), nodata)) as dst:
            dst.write(arr)
            for i, n in enumerate(band_names or []):
                dst.set_band_description(i + 1, n)
            if tags:
                dst.update_tags(**{k: str(v) for k, v in tags.items()})
            if colormap:
                dst.write_colormap(1, colormap)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
