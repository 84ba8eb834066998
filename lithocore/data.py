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
        sensor: ASTER                      # or wavelengths: [0.556, 0.661, 0.807] (micrometres, one per band);
                                           # composites follow them (lithocore.sensors), nothing is guessed
        nodata: 0                          # optional: overrides the file's nodata tag ("none": no nodata)
    extra:                                 # other fine layers (DEM), resampled bilinearly
      - {path: dem.tif, name: dem, units: m, nodata: -9999}
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
        log: auto                          # grid log10 of the values; default: yes for a composition (>= 2
                                           # columns, every sample positive), so the grid stays positive
        below_detection: half              # "<0.01": error (default), half (DL / 2, the usual rule) or limit
        missing: ["n.d.", "-"]             # tokens that mean "not measured" (empty cells always do)
    predict: unmapped.gpkg                 # optional polygons: the ground to predict (see below)
    labels:
      path: geology.gpkg                   # vector polygons with a class field, or a label raster
      field: unit_id                       # vector only
      unlabelled: [0]                      # values that mean "no label" (the usual 0 of training rasters)
      nodata: [-1]                         # values that mean "outside the map" (also no label)
      overlaps: warn                       # polygons of different classes overlapping: warn (default) or error
      classes:
        - {id: 1, name: Sandstone, colour: "#d9c27a"}          # value defaults to id
        - {id: 2, name: Marble, colour: "#7fb2e5", value: "Carbonate rock"}

Any mix of sources loads: imagery only, geophysics only (a reference grid given as ``crs``, ``bounds`` and
``resolution``), point samples only, imagery and a DEM, or all four. The manifest's keys and types are checked
(:mod:`lithocore.manifest`) before any file is read: an unknown key is an error naming the nearest valid one.

Class ids are integers: the pixel values of the label raster and of every class map the workbook writes. A
class whose code in the source is text (``J1``) gives it as ``value``. Label values outside the class table
are an error unless declared under ``unlabelled`` or ``nodata``: nothing is guessed.

Problems that do not stop loading (a suspicious constant fill value, a nodata value inside the data's range,
repaired polygons, overlapping polygons of different classes) are warnings, kept in ``StudyArea.warnings``
so that the notebooks can show them and write them into their JSON.

Coarse layers and gridded points keep a coarse grid whose origin is the reference grid's and whose cell is a
whole number of fine pixels (the source cell rounded to it), so that fusion can move between the two scales
exactly. Pixels without a label are "no label" (:data:`NO_LABEL`), never a class.

**The ground to predict** (``predict``): polygons of the ground the user wants mapped. Labels inside them are
*withheld*: removed from ``StudyArea.labels`` (so no stage trains, tiles or cross-validates on them) and kept in
``StudyArea.held_out`` to check the workbook's promised accuracy against. Without ``predict``, the ground to
predict is every valid pixel without a label (``StudyArea.predict``).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import warnings
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

from .runfolder import atomic_path
from .sensors import band_wavelengths

__all__ = [
    "NO_LABEL",
    "open_raster",
    "StudyAreaError",
    "Grid",
    "ClassTable",
    "CoarseLayer",
    "StudyArea",
    "load_study_area",
    "preview_factor",
    "read_manifest",
    "manifest_files",
    "write_geotiff",
    "DataWarning",
    "memory_available",
    "predict_ground",
    "withhold",
    "projected_grid",
]

#: Value of the label raster where a pixel has no label (outside the map, or a unit not mapped).
NO_LABEL = 255


#: Threads of GDAL's warper (the same values with any number: it splits the output by rows).
WARP_THREADS = min(4, os.cpu_count() or 1)


class StudyAreaError(ValueError):
    """Bad input for a study area: the message names the file and the fault."""

    def __init__(self, source: str | os.PathLike, fault: str):
        self.source = str(source)
        self.fault = fault
        super().__init__(f"{source}: {fault}")


class DataWarning(UserWarning):
    """Something in the input that does not stop loading but that the user should look at."""


def _warn(warns: list, source, message: str) -> None:
    text = f"{Path(str(source)).name}: {message}"
    warns.append(text)
    warnings.warn(text, DataWarning, stacklevel=3)


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

    def profile(self, count: int, dtype: str = "float32", nodata: float | None = float("nan"), *,
                compress: str | None = "deflate") -> dict:
        """A rasterio profile for a tiled GeoTIFF on this grid, compressed with ``compress``. A working file that
        :func:`write_cog` copies is best left uncompressed (None): GDAL then makes the COG 4 x faster (measured on
        the default stack: 1.7 s against 6.9 s, and its writing 0.14 s against 1.7 s)."""
        prof = dict(driver="GTiff", crs=self.crs, transform=self.transform, width=self.width,
                    height=self.height, count=count, dtype=dtype, nodata=nodata,
                    BIGTIFF="IF_SAFER")  # past 4 GB a classic TIFF cannot be written (a province's stack is)
        if compress:
            prof["compress"] = compress
        if self.width >= 256 and self.height >= 256:
            prof.update(tiled=True, blockxsize=256, blockysize=256)
        return prof


def _overlaps(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


# ------------------------------------------------------------------------------------- class table
@dataclass(frozen=True)
class ClassTable:
    """The map's classes: id, name, colour and the value that stands for the class in the source.

    Class *indices* (0..n-1, the order of the table) are what label arrays and models use inside the
    workbook; class *ids* (integers) are what every class-map file stores, as the label raster does.

    Examples
    --------
    >>> t = ClassTable.from_list([{"id": 1, "name": "Marble", "colour": "#7fb2e5"},
    ...                           {"id": 4, "name": "Gneiss", "colour": "#e58a7f"}])
    >>> len(t), t.names, t.index_of_value(4)
    (2, ('Marble', 'Gneiss'), 1)
    >>> t.to_ids(np.array([0, 1, NO_LABEL], np.uint8)).tolist(), t.id_dtype()
    ([1, 4, 255], ('uint8', 255))
    >>> t.to_indices(np.array([4, 1, 255])).tolist()
    [1, 0, 255]
    """

    ids: tuple[int, ...]
    names: tuple[str, ...]
    colours: tuple[str, ...]
    values: tuple[Any, ...]

    @classmethod
    def from_list(cls, entries: list[dict], source: str = "manifest", field: str | None = None) -> "ClassTable":
        if not entries:
            raise StudyAreaError(source, "the class table under labels.classes is empty")
        ids, names, colours, values = [], [], [], []
        for i, e in enumerate(entries):
            if "id" not in e or "name" not in e:
                raise StudyAreaError(source, f"class entry {i} needs an 'id' and a 'name', got {e}")
            ids.append(_class_id(e, source, field))
            names.append(str(e["name"]))
            colours.append(str(e.get("colour", e.get("color", _DEFAULT_COLOURS[i % len(_DEFAULT_COLOURS)]))))
            values.append(e.get("value", e["id"]))
        if len(set(ids)) != len(ids):
            raise StudyAreaError(source, f"class ids repeat in the class table: {ids}")
        if len(ids) >= NO_LABEL:
            raise StudyAreaError(source, f"at most {NO_LABEL - 1} classes are supported")
        return cls(tuple(ids), tuple(names), tuple(colours), tuple(values))

    def similar_colours(self, tolerance: float = 40.0) -> list[tuple[str, str, str, str]]:
        """Pairs of classes whose colours are hard to tell apart on a map: (name, colour, name, colour) where the
        "redmean" colour distance (a cheap perceptual one, 0-765) is under ``tolerance``.

        >>> ClassTable((1, 2, 3), ("a", "b", "c"), ("#d9c27a", "#dac47c", "#1f78b4"), (1, 2, 3)).similar_colours()
        [('a', '#d9c27a', 'b', '#dac47c')]
        """
        from matplotlib.colors import to_rgb

        rgb = [np.array(to_rgb(c)) * 255 for c in self.colours]
        out = []
        for i in range(len(rgb)):
            for j in range(i + 1, len(rgb)):
                r = (rgb[i][0] + rgb[j][0]) / 2
                d = rgb[i] - rgb[j]
                dist = np.sqrt((2 + r / 256) * d[0] ** 2 + 4 * d[1] ** 2 + (2 + (255 - r) / 256) * d[2] ** 2)
                if dist < tolerance:
                    out.append((self.names[i], self.colours[i], self.names[j], self.colours[j]))
        return out

    def __len__(self) -> int:
        return len(self.ids)

    def index_of_value(self, value: Any) -> int:
        return {_norm(v): i for i, v in enumerate(self.values)}[_norm(value)]

    def value_lookup(self) -> dict:
        return {_norm(v): i for i, v in enumerate(self.values)}

    def to_list(self) -> list[dict]:
        return [dict(id=i, name=n, colour=c, value=v) for i, n, c, v in
                zip(self.ids, self.names, self.colours, self.values)]

    def id_dtype(self) -> tuple[str, int]:
        """(dtype, nodata) of a class-map file holding these ids: uint8/255 when every id fits below 255,
        else uint16/65535, else int32 with its most negative value."""
        lo, hi = min(self.ids), max(self.ids)
        if lo >= 0 and hi < 255:
            return "uint8", 255
        if lo >= 0 and hi < 65535:
            return "uint16", 65535
        return "int32", int(np.iinfo(np.int32).min)

    def to_ids(self, indices: np.ndarray) -> np.ndarray:
        """Class indices (:data:`NO_LABEL` for none) -> class ids (the file's nodata for none)."""
        dtype, nodata = self.id_dtype()
        lut = np.full(256, nodata, dtype=np.int64)
        lut[: len(self.ids)] = self.ids
        return lut[np.asarray(indices).astype(np.int64) % 256].astype(dtype)

    def to_indices(self, ids: np.ndarray) -> np.ndarray:
        """Class ids read from a class-map file -> class indices (:data:`NO_LABEL` for anything else)."""
        ids = np.asarray(ids)
        out = np.full(ids.shape, NO_LABEL, np.uint8)
        for i, cid in enumerate(self.ids):
            out[ids == cid] = i
        return out


def _class_id(entry: dict, source: str, field: str | None = None) -> int:
    raw = entry["id"]
    try:
        f = float(raw)
        if isinstance(raw, bool) or not f.is_integer():
            raise ValueError
        return int(f)
    except (TypeError, ValueError):
        where = f"; the field '{field}' may hold codes like {raw!r}" if field else ""
        raise StudyAreaError(source, f"class '{entry['name']}' has id {raw!r}: an id is the integer pixel value of the "
                                     f"label raster and of every class map{where}: keep {raw!r} as the class's value "
                                     f"(value: {raw}) and give it an integer id (id: 1, 2, ...)") from None


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
                  resampling=Resampling.bilinear, num_threads=WARP_THREADS)
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
    warnings: list = field(default_factory=list)  # what the user should look at (also warned when loading)
    #: 1: on the manifest's reference grid; k > 1: a preview on a grid k times coarser (``max_pixels``)
    preview_factor: int = 1
    #: (H, W) bool: the ground to predict (the manifest's ``predict`` polygons, else every valid unlabelled pixel)
    predict: np.ndarray | None = None
    #: (H, W) uint8: the labels withheld inside declared ``predict`` polygons (class indices, else NO_LABEL)
    held_out: np.ndarray | None = None
    #: whether ``predict`` came from the manifest (True) or is the default, every valid unlabelled pixel
    predict_declared: bool = False
    #: guide band name -> centre wavelength (micrometres), from the manifest's ``sensor`` or ``wavelengths``
    wavelengths: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    def coarse_layer(self, name: str) -> CoarseLayer:
        for c in self.coarse:
            if c.name == name:
                return c
        raise KeyError(f"no coarse layer named {name!r}; have {[c.name for c in self.coarse]}")

    @property
    def labels_name(self) -> str:
        """What the labels are, in words: "geological map" when they cover at least half of the valid ground
        outside the ground to predict, else "training polygons" (sparse labels of a field campaign)."""
        labelled = int(((self.labels != NO_LABEL) & self.mask).sum())
        ground = int((self.predict & self.mask).sum()) if self.predict is not None and self.predict_declared else 0
        return "geological map" if labelled >= 0.5 * max(int(self.mask.sum()) - ground, 1) else "training polygons"

    def label_fractions(self) -> dict[str, float]:
        """Share of each class among the labelled, valid pixels."""
        lab = self.labels[self.mask & (self.labels != NO_LABEL)]
        counts = np.bincount(lab, minlength=len(self.classes))
        total = max(int(counts.sum()), 1)
        return {n: float(c) / total for n, c in zip(self.classes.names, counts)}


# ------------------------------------------------------------------------------------------ manifest
def read_manifest(path: str | os.PathLike) -> dict:
    """Read a study-area manifest (YAML) and check its keys and types (:mod:`lithocore.manifest`)."""
    from .manifest import validate_manifest

    path = Path(path)
    if not path.is_file():
        raise StudyAreaError(path, "manifest file not found")
    raw = path.read_bytes()
    if raw[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        raise StudyAreaError(path, "is a GeoTIFF, not a manifest: pass the study area's YAML manifest, which names "
                                   "this raster under 'guide', 'extra', 'coarse' or 'labels'")
    try:
        text = raw.decode("utf-8")
        if "\x00" in text:
            raise UnicodeDecodeError("utf-8", raw, 0, 1, "NUL byte")
    except UnicodeDecodeError:
        raise StudyAreaError(path, "is not a text file (binary content): a manifest is a YAML text file naming "
                                   "the study area's layers") from None
    try:
        man = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StudyAreaError(path, f"is not valid YAML: {exc}") from None
    if not isinstance(man, dict):
        raise StudyAreaError(path, "a manifest must be a mapping with at least 'reference' and 'labels'")
    try:
        validate_manifest(man)
    except ValueError as exc:
        raise StudyAreaError(path, f"invalid manifest: {exc}") from None
    for key in ("guide", "extra", "coarse", "points"):
        man.setdefault(key, [])
    if not (man["guide"] or man["extra"] or man["coarse"] or man["points"]):
        raise StudyAreaError(path, "the manifest names no layer: give at least one of 'guide', 'extra', "
                                   "'coarse' or 'points'")
    man.setdefault("name", path.stem)
    return man


def manifest_files(manifest: str | os.PathLike) -> list[Path]:
    """Every file a manifest names (resolved), in the manifest's order."""
    mpath = Path(manifest).resolve()
    man = read_manifest(mpath)
    base = mpath.parent
    out = []
    ref = man["reference"]
    if isinstance(ref, str) or (isinstance(ref, dict) and ref.get("path")):
        out.append(_resolve(base, ref if isinstance(ref, str) else ref["path"]))
    if man.get("area"):
        out.append(_resolve(base, man["area"]))
    for k in ("guide", "extra", "coarse", "points"):
        out += [_resolve(base, e["path"]) for e in man[k]]
    out.append(_resolve(base, man["labels"]["path"]))
    if man.get("predict"):
        out.append(_resolve(base, man["predict"]))
    out += [_resolve(base, v) for v in (man.get("truth") or {}).values()]
    return list(dict.fromkeys(out))


def memory_available() -> int:
    """Bytes of memory this process may use: ``LITHOCORE_MEMORY_LIMIT`` (bytes, or with a K/M/G suffix) when
    set, else the memory the system reports available."""
    env = os.environ.get("LITHOCORE_MEMORY_LIMIT", "").strip().upper()
    if env:
        m = re.fullmatch(r"([0-9.]+)\s*([KMG]?)I?B?", env)
        if not m:
            raise ValueError(f"LITHOCORE_MEMORY_LIMIT={env!r}: give bytes, or a number with K, M or G")
        return int(float(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)])
    import psutil

    return int(psutil.virtual_memory().available)


def _size(n: float) -> str:
    """Bytes as MiB or GiB.

    >>> _size(3 * 2**30), _size(5 * 2**20)
    ('3.0 GiB', '5.0 MiB')
    """
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _check_memory(grid: Grid, n_fine: int, n_coarse: int, source) -> int:
    """Refuse a grid whose layers would not fit in memory, before allocating anything."""
    px = grid.width * grid.height
    # loading: the fine bands, the coarse layers brought to the fine grid for the mask, labels and mask;
    # fusion and the stack then hold about as much again.
    need = px * (4 * (n_fine + 2 * max(n_coarse, 1) + 2) + 2) * 2
    have = memory_available()
    if need > have:
        raise StudyAreaError(source, f"the reference grid is {grid.height:,} x {grid.width:,} pixels of {grid.res:g} m "
                                     f"({px / 1e6:,.1f} Mpx): loading and fusing its {n_fine} fine band(s) and "
                                     f"{n_coarse} coarse layer(s) needs about {_size(need)}, but {_size(have)} is "
                                     f"available. Choose a coarser resolution (reference: {{crs, bounds, resolution}}), "
                                     f"a smaller area, or fewer bands")
    return need


def _check_full_stack_memory(full: Grid, n_channels: int, n_classes: int, source) -> None:
    """For a preview: refuse, before any stack is written, a full grid whose stack notebooks 03-07 cannot hold
    (they read the whole stack: its channels, the neighbourhood forest's five times as many, class probabilities
    and a few maps; :func:`lithocore.recommend.memory_needed` counts notebook 07's exactly)."""
    px = full.width * full.height
    need = px * 4 * (7 * max(n_channels, 1) + 2 * n_classes + 3)
    have = memory_available()
    if need > have:
        raise StudyAreaError(source, f"the reference grid is {full.height:,} x {full.width:,} pixels of {full.res:g} m "
                                     f"({px / 1e6:,.1f} Mpx): notebook 01 shows a preview, and notebook 02 would write "
                                     f"the stack block by block, but notebooks 03-07 read the whole stack of about "
                                     f"{n_channels} channels and need about {_size(need)}, where {_size(have)} is "
                                     f"available. Choose a coarser resolution (reference: {{crs, bounds, resolution}}), "
                                     f"a smaller area, or a machine with more memory")


def _resolve(base: Path, p: str) -> Path:
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


def _reference_grid(man: dict, base: Path, warns: list | None = None) -> Grid:
    """The manifest's reference grid; a geographic one is replaced by the projected grid of
    :func:`projected_grid` (metres), with a notice in ``warns``."""
    ref = man["reference"]
    if isinstance(ref, str):
        ref = {"path": ref}
    if "path" in ref:
        p = _resolve(base, ref["path"])
        with open_raster(p) as src:
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
    if g.crs.is_geographic:
        projected, spec = projected_grid(g)
        if warns is not None:
            _warn(warns, ref.get("path", base),
                  f"the reference grid is in a geographic CRS ({g.crs.to_string()}, pixels of {g.res:g} degrees), "
                  f"and distances, pixel sizes and areas need metres: every layer is warped onto the UTM zone of its "
                  f"centre, reference: {spec} ({projected.height} x {projected.width} px); give another projected "
                  f"reference in the manifest to choose the grid yourself")
        return projected
    return g


def projected_grid(grid: Grid) -> tuple[Grid, str]:
    """The projected grid for a geographic one: the UTM zone of its centre, its bounds there (rounded outwards to
    whole metres) and about its pixel size in metres (two significant digits, the square of the same area); with the manifest text that gives
    it (``{crs: ..., bounds: [...], resolution: ...}``).

    >>> from rasterio.transform import from_origin
    >>> g = Grid(CRS.from_epsg(4326), from_origin(-45.0, -10.0, 0.0027, 0.0027), 185, 92)
    >>> p, spec = projected_grid(g)
    >>> print(spec, p.shape)
    {crs: EPSG:32723, bounds: [500000, 8867080, 554744, 8894588], resolution: 300} (92, 182)
    """
    from rasterio.warp import transform, transform_bounds

    l, b, r, t = grid.bounds
    (lon,), (lat,) = transform(grid.crs, "EPSG:4326", [(l + r) / 2], [(b + t) / 2])
    zone = int((lon + 180) // 6) + 1
    epsg = (32600 if lat >= 0 else 32700) + zone
    pl, pb, pr, pt = transform_bounds(grid.crs, f"EPSG:{epsg}", l, b, r, t)
    # a square pixel of the same area: the geometric mean of a degree's length along the parallel and the meridian
    res_m = float(f"{grid.res * math.sqrt(111_320 * math.cos(math.radians(lat)) * 110_574):.2g}")
    left, bottom, right, top = math.floor(pl), math.floor(pb), math.ceil(pr), math.ceil(pt)
    out = Grid(CRS.from_epsg(epsg), from_origin(left, top, res_m, res_m), max(1, round((right - left) / res_m)),
               max(1, round((top - bottom) / res_m)))
    return out, f"{{crs: EPSG:{epsg}, bounds: [{left}, {bottom}, {right}, {top}], resolution: {res_m:g}}}"


def _src_bounds_in(src, crs: CRS) -> tuple:
    if src.crs == crs:
        return tuple(src.bounds)
    from rasterio.warp import transform_bounds

    return transform_bounds(src.crs, crs, *src.bounds)


#: Values that data producers use to fill cells without data (checked when a layer declares no nodata).
_FILL_VALUES = (-9999.0, -99999.0, -999.0, -32768.0, -32767.0, 32767.0, 65535.0, 9999.0, -3.4028234663852886e38,
                3.4028234663852886e38, -1e30, 1e30)


def _nodata(entry: dict, src) -> float | None:
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


def _check_fill(path: Path, src, band: int, nodata: float | None, name: str, warns: list) -> None:
    """Warn about a constant fill value nobody declared, and about a nodata value inside the data's range."""
    h, w = min(src.height, 1024), min(src.width, 1024)
    a = src.read(band, out_shape=(h, w), resampling=Resampling.nearest).astype(np.float64)
    finite = np.isfinite(a)
    if nodata is not None and np.isfinite(nodata):
        is_nd = a == nodata
        vals = a[finite & ~is_nd]
        share = float(is_nd.mean())
        if vals.size and share > 0.01 and vals.min() < nodata < vals.max():
            _warn(warns, path, f"band {band} ({name}): the nodata value {nodata:g} lies inside the data's range "
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
            _warn(warns, path, f"band {band} ({name}) holds the constant {v:g} in {share:.1%} of its cells and "
                               f"declares no nodata: if {v:g} fills cells without data, set 'nodata: {v:g}' in its "
                               f"manifest entry (it is used as data now)")
            return


def _source_band(src, band: int, entry: dict):
    """What to reproject from: the band itself (its own nodata tag applies) or, when the manifest overrides the
    nodata, its values as an array (so that GDAL does not fall back to the file's tag)."""
    if "nodata" not in entry:
        return dict(source=rasterio.band(src, band))
    return dict(source=src.read(band), src_transform=src.transform, src_crs=src.crs)


def _read_fine(path: Path, grid: Grid, expected_bands: int | None, resampling: Resampling, entry: dict | None = None,
               warns: list | None = None, names: list[str] | None = None) -> tuple[np.ndarray, dict]:
    """Reproject every band of a raster onto the fine grid; NaN where the source has no data. Coordinates are
    transformed exactly for every pixel (``tolerance=0``; GDAL's default approximates them to 1/8 pixel, which
    differs with the extent warped) and the kernel's scale is the whole grid's (:func:`_warp_scales`), so a block
    of the grid warped alone (:mod:`lithocore.blockwise`) gets the same values."""
    entry = entry or {}
    warns = [] if warns is None else warns
    with open_raster(path) as src:
        if expected_bands is not None and src.count != expected_bands:
            raise StudyAreaError(path, f"expected {expected_bands} band(s) as the manifest names, found {src.count}")
        if not _overlaps(_src_bounds_in(src, grid.crs), grid.bounds):
            raise StudyAreaError(path, f"does not overlap the reference grid (its bounds {tuple(round(b) for b in src.bounds)} "
                                       f"in {src.crs}, reference {tuple(round(b) for b in grid.bounds)} in {grid.crs})")
        nodata = _nodata(entry, src)
        out = np.full((src.count, *grid.shape), np.nan, dtype=np.float32)
        for b in range(src.count):
            _check_fill(path, src, b + 1, nodata, (names or [])[b] if names and b < len(names) else f"band {b + 1}",
                        warns)
            reproject(destination=out[b], src_nodata=nodata, dst_transform=grid.transform, dst_crs=grid.crs,
                      dst_nodata=np.nan, resampling=resampling, tolerance=0.0, num_threads=WARP_THREADS,
                      **_warp_scales(src, grid),
                      **_source_band(src, b + 1, entry))
        info = _describe(path, src) | dict(nodata=nodata)
    return out, info


def _warp_scales(src, grid: Grid) -> dict:
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


def _fine_bands(entry: dict, path: Path, kind: str) -> tuple[list | None, int | None]:
    """A fine layer's manifest ``bands``: the names given (an extra layer without any is named by its ``name``
    or file), and the band count they promise (None: any)."""
    bands = entry.get("bands")
    if kind == "extra" and bands is None:
        bands = [entry.get("name", path.stem)]
    expected = len(bands) if isinstance(bands, list) else (int(bands) if bands else None)
    return (bands if isinstance(bands, list) else None), expected


def _band_names(path: Path, bands: list | None, count: int) -> list[str]:
    """The names of a fine layer's bands: the manifest's, else ``<file stem>_<band number>``."""
    return [str(b) for b in bands] if bands is not None else [f"{path.stem}_{i + 1}" for i in range(count)]


def _describe(path: Path, src) -> dict:
    return dict(file=path.name, crs=str(src.crs.to_string()), resolution=f"{abs(src.res[0]):g} x {abs(src.res[1]):g}",
                size=f"{src.width} x {src.height}", bands=src.count, nodata=src.nodata, dtype=src.dtypes[0])


def _coarse_factor(native_res: float, fine_res: float) -> int:
    return max(1, int(round(native_res / fine_res)))


def _read_coarse(path: Path, entry: dict, grid: Grid, warns: list | None = None) -> tuple[CoarseLayer, dict]:
    warns = [] if warns is None else warns
    with open_raster(path) as src:
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
        nodata = _nodata(entry, src)
        name = entry.get("name") or path.stem
        _check_fill(path, src, band, nodata, name, warns)
        values = np.full(cgrid.shape, np.nan, dtype=np.float32)
        reproject(destination=values, src_nodata=nodata, dst_transform=cgrid.transform, dst_crs=cgrid.crs,
                  dst_nodata=np.nan, resampling=Resampling.bilinear, **_source_band(src, band, entry))
        info = _describe(path, src) | dict(nodata=nodata)
    if not np.isfinite(values).any():
        raise StudyAreaError(path, "has no valid data inside the reference grid (all nodata)")
    meta = {k: v for k, v in entry.items() if k not in ("path", "name", "units", "nodata", "band", "factor")
            and v is not None}
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


_BDL = re.compile(r"^<\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


def numeric_column(values, path, column: str, *, below_detection: str = "error", missing=(), row_name: str = "row",
                   first_row: int = 2, coordinate: bool = False) -> np.ndarray:
    """A column of a sample table as float64: numbers as they are, empty cells and the ``missing`` tokens as
    NaN, ``<DL`` (below the detection limit) by the rule asked for (``half``: DL / 2, ``limit``: DL), anything
    else an error naming the file, the column and the first bad row.

    Examples
    --------
    >>> numeric_column(["1.5", "", "<0.2", "n.d."], "s.csv", "MgO", below_detection="half", missing=["n.d."]).tolist()
    [1.5, nan, 0.1, nan]
    >>> numeric_column(["1.5", "<0.2"], "s.csv", "MgO")
    Traceback (most recent call last):
    ...
    lithocore.data.StudyAreaError: s.csv: column 'MgO', row 3: '<0.2' is a value below the detection limit; choose how to use such values with 'below_detection: half' (half the limit, the usual rule) or 'below_detection: limit' in the points entry
    """
    import pandas as pd

    ser = pd.Series(values, dtype=object).reset_index(drop=True)
    text = ser.map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip())
    out = np.array(pd.to_numeric(text.where(text != "", None), errors="coerce"), dtype=np.float64)
    tokens = {str(m).strip().lower() for m in missing}
    for i, t in enumerate(text):
        if t == "" or np.isfinite(out[i]):
            continue
        if t.lower() in tokens:
            out[i] = np.nan
            continue
        m = _BDL.match(t)
        row = f"{row_name} {i + first_row}"
        if m:
            if below_detection == "half":
                out[i] = float(m.group(1)) / 2
                continue
            if below_detection == "limit":
                out[i] = float(m.group(1))
                continue
            raise StudyAreaError(path, f"column '{column}', {row}: {t!r} is a value below the detection limit; choose "
                                       "how to use such values with 'below_detection: half' (half the limit, the usual "
                                       "rule) or 'below_detection: limit' in the points entry")
        if coordinate:
            raise StudyAreaError(path, f"column '{column}', {row}: {t!r} is not a number; coordinates must be numbers "
                                       f"in the units of the entry's crs")
        raise StudyAreaError(path, f"column '{column}', {row}: {t!r} is not a number; if it means 'not measured', list "
                                   f"it in the points entry as missing: [{t!r}]")
    return out


def _read_points(path: Path, entry: dict, grid: Grid):
    import geopandas as gpd
    import pandas as pd

    if not path.exists():
        raise StudyAreaError(path, "file not found")
    columns = entry.get("columns")
    if not columns:
        raise StudyAreaError(path, "the manifest entry names no 'columns' to grid")
    if isinstance(columns, list):
        columns = {c: c for c in columns}
    opts = dict(below_detection=entry.get("below_detection", "error"), missing=entry.get("missing", []))
    if path.suffix.lower() in (".csv", ".txt"):
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise StudyAreaError(path, f"cannot be read as a CSV table ({exc})") from None
        xcol, ycol = entry.get("x", "x"), entry.get("y", "y")
        for col in (xcol, ycol):
            if col not in df.columns:
                raise StudyAreaError(path, f"coordinate column '{col}' does not exist; columns: {list(df.columns)}")
        if entry.get("crs") is None:
            raise StudyAreaError(path, "has no CRS (coordinate reference system): a CSV needs 'crs' in its manifest entry")
        x = numeric_column(df[xcol], path, xcol, coordinate=True)
        y = numeric_column(df[ycol], path, ycol, coordinate=True)
        bad = ~(np.isfinite(x) & np.isfinite(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise StudyAreaError(path, f"row {i + 2}: the coordinates ({df[xcol][i]!r}, {df[ycol][i]!r}) are missing")
        missing_cols = [c for c in columns if c not in df.columns]
        if missing_cols:
            raise StudyAreaError(path, f"column(s) {missing_cols} do not exist; columns: {list(df.columns)}")
        for c in columns:
            df[c] = numeric_column(df[c], path, c, **opts)
        gdf = gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(x, y), crs=entry["crs"])
    else:
        gdf = _read_vector(path, entry.get("crs"))
        missing_cols = [c for c in columns if c not in gdf.columns]
        if missing_cols:
            raise StudyAreaError(path, f"column(s) {missing_cols} do not exist; columns: {list(gdf.columns)}")
        for c in columns:
            if gdf[c].dtype == object:
                gdf[c] = numeric_column(gdf[c], path, c, row_name="feature", first_row=1, **opts)
    gdf = gdf.to_crs(grid.crs)
    left, bottom, right, top = grid.bounds
    x, y = gdf.geometry.x.to_numpy(), gdf.geometry.y.to_numpy()
    inside = (x >= left) & (x <= right) & (y >= bottom) & (y <= top)
    if not inside.any():
        raise StudyAreaError(path, f"no sample lies inside the reference grid {tuple(round(b) for b in grid.bounds)}")
    return gdf, columns


def grid_in_logs(declared: bool | None, columns: dict[str, np.ndarray]) -> bool:
    """Whether a group of point samples is gridded in logarithms: as ``declared`` (the manifest's ``log``), else
    when it is a composition (two or more columns, the parts of a log-ratio) whose samples are all positive.
    A spline through positive samples overshoots below zero near steep gradients and the survey's edge; in
    logarithms the grid stays positive (and concentrations, log-normal, are gridded as usual in geochemistry).

    >>> grid_in_logs(None, {"SiO2": np.array([60.0, 70.0]), "CaO": np.array([0.5, np.nan])})
    True
    >>> grid_in_logs(None, {"Cu": np.array([3.0, 8.0])}), grid_in_logs(False, {"a": np.ones(2), "b": np.ones(2)})
    (False, False)
    """
    if declared is not None:
        return bool(declared)
    finite = [v[np.isfinite(v)] for v in columns.values()]
    return len(columns) >= 2 and all(v.size and np.all(v > 0) for v in finite)


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


def _declared(lab: dict, table: "ClassTable | None" = None, source: Any = "manifest") -> tuple[set, set]:
    """The label values declared as 'no label' and as nodata; the schema allows a single value or a list. A
    declared value that is also a class's value is refused (it would silently drop that unit from training and
    scoring)."""
    def values(k):
        v = lab.get(k)
        return [] if v is None else (v if isinstance(v, list) else [v])

    unlabelled, nodata = {_norm(v) for v in values("unlabelled")}, {_norm(v) for v in values("nodata")}
    if table is not None:
        lookup = table.value_lookup()
        both = [(k, v) for k in ("unlabelled", "nodata") for v in values(k) if _norm(v) in lookup]
        if both:
            k, v = both[0]
            name = table.names[lookup[_norm(v)]]
            raise StudyAreaError(source, f"labels: {k}: [{v}] is also the value of the class '{name}' in the class "
                                         f"table: a value cannot mean both a unit and 'no label'; remove it from "
                                         f"'{k}' or give the class another value")
    return unlabelled, nodata


def _labels_from_raster(path: Path, lab: dict, table: ClassTable, grid: Grid, warns: list) -> tuple[np.ndarray, dict]:
    with open_raster(path) as src:
        if src.count != 1:
            raise StudyAreaError(path, f"a label raster must have 1 band, found {src.count}")
        if not _overlaps(_src_bounds_in(src, grid.crs), grid.bounds):
            raise StudyAreaError(path, "does not overlap the reference grid")
        info = _describe(path, src)
        file_nodata = src.nodata
        unlabelled, nodata = _declared(lab, table, path)
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
                if _norm(v) in lookup and _norm(v) not in unlabelled | nodata:
                    block[raw == v] = lookup[_norm(v)]
    present = sorted(present)
    no_label = [v for v in present if _norm(v) in unlabelled | nodata]
    missing = [v for v in present if _norm(v) not in lookup and _norm(v) not in unlabelled | nodata]
    if missing:
        shown = [int(v) if float(v).is_integer() else v for v in missing[:10]]
        raise StudyAreaError(path, f"label value(s) {shown} are missing from the class table (values "
                                   f"{list(table.values)}; the file's nodata is {file_nodata}); if a value means "
                                   f"'no label', declare it under labels: unlabelled: [{shown[0]}] (or nodata:)")
    info["no_label_values"] = [float(v) for v in no_label]
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


def _labels_from_vector(path: Path, entry: dict, table: ClassTable, grid: Grid, warns: list) -> tuple[np.ndarray, dict]:
    from rasterio.features import rasterize

    gdf = _read_vector(path, entry.get("crs"))
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
        _warn(warns, path, f"{int(invalid.sum())} invalid polygon(s) (self-intersecting or otherwise broken) were "
                           f"repaired with shapely's make_valid; check them in a GIS")
    gdf = gdf.to_crs(grid.crs)
    gdf = gdf.cx[grid.bounds[0]:grid.bounds[2], grid.bounds[1]:grid.bounds[3]]
    if gdf.empty:
        raise StudyAreaError(path, f"no polygon overlaps the reference grid {tuple(round(b) for b in grid.bounds)}")
    unlabelled, nodata = _declared(entry, table, path)
    lookup = table.value_lookup()
    vals = gdf[fld]
    keep = vals.notna() & ~vals.map(lambda v: _norm(v) in unlabelled | nodata)
    missing = sorted({str(v) for v in vals[keep] if _norm(v) not in lookup})
    if missing:
        raise StudyAreaError(path, f"label value(s) {missing[:10]} of field '{fld}' are missing from the class table "
                                   f"(values {list(table.values)}); give each class its 'value' as written in the field, "
                                   f"or declare values that mean 'no label' under labels: unlabelled: [...]")
    classes = np.array([lookup[_norm(v)] for v in vals[keep]], dtype=np.int64)
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
        _warn(warns, path, msg)
    info["overlaps"] = overlaps
    return labels, info


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


def _area_geometries(path: Path, grid: Grid, crs_hint: Any = None) -> list:
    """The polygons of the area outline, in the grid's CRS."""
    gdf = _read_vector(path, crs_hint).to_crs(grid.crs)
    if gdf.empty:
        raise StudyAreaError(path, "the area outline has no polygon")
    return list(gdf.geometry)


def _area_mask(path: Path, grid: Grid, crs_hint: Any = None) -> np.ndarray:
    from rasterio.features import geometry_mask

    return geometry_mask(_area_geometries(path, grid, crs_hint), out_shape=grid.shape, transform=grid.transform,
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
    path = _resolve(base, man["predict"])
    gdf = _read_vector(path, man.get("crs"))
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


def _load_small_layers(man: dict, base: Path, grid: Grid, warns: list, units: dict, table: list, mpath: Path):
    """What stays small at any scene size: the coarse layers and gridded points (on their coarse grids) and the
    labels (one byte a pixel) with their class table. Returns (coarse, points, labels, classes, label path)."""
    coarse: list[CoarseLayer] = []
    for e in man["coarse"]:
        layer, info = _read_coarse(_resolve(base, e["path"]), e, grid, warns)
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
        log = grid_in_logs(e.get("log"), {c: np.asarray(gdf[c], dtype=np.float64) for c in columns})
        for col, name in columns.items():
            vals = np.asarray(gdf[col], dtype=np.float64)
            try:
                z = grid_points(x, y, vals, cgrid, method=e.get("method", "spline"), log=log,
                                maxdist=e.get("maxdist"))
            except ValueError as exc:
                raise StudyAreaError(p, f"column '{col}': {exc}") from None
            coarse.append(CoarseLayer(str(name), z, cgrid, factor, str(e.get("units", "")), str(p), kind="points",
                                      meta={"group": str(p), "log": log,
                                            "samples_positive": bool(np.all(vals[np.isfinite(vals)] > 0))}))
            units[str(name)] = str(e.get("units", ""))
        points[p.stem] = gdf.rename(columns={c: n for c, n in columns.items()})
        table.append(dict(layer=", ".join(map(str, columns.values())), kind="points", file=p.name,
                          crs=gdf.crs.to_string(), resolution=f"gridded at {cgrid.res:g}", size=f"{len(gdf)} samples",
                          bands=len(columns), nodata="", dtype="float"))

    lab = man["labels"]
    if isinstance(lab, str) or "path" not in lab:
        raise StudyAreaError(mpath, "'labels' needs a 'path' and a 'classes' table")
    classes = ClassTable.from_list(lab.get("classes") or [], source=str(mpath), field=lab.get("field"))
    lpath = _resolve(base, lab["path"])
    if lpath.suffix.lower() in (".tif", ".tiff", ".vrt", ".img"):
        labels, info = _labels_from_raster(lpath, lab, classes, grid, warns)
    else:
        labels, info = _labels_from_vector(lpath, lab, classes, grid, warns)
    table.append(dict(layer="labels", kind="labels", **info))

    return coarse, points, labels, classes, lpath


def preview_factor(height: int, width: int, max_pixels: int | None) -> int:
    """The smallest ``k`` for which a ``height`` x ``width`` grid taken ``k`` times coarser has at most
    ``max_pixels`` pixels (1 when None).

    >>> preview_factor(1611, 1650, None), preview_factor(1611, 1650, 16_000_000), preview_factor(20000, 20000, 16_000_000)
    (1, 1, 5)
    """
    if max_pixels is None or height * width <= max_pixels:
        return 1
    k = math.ceil(math.sqrt(height * width / max(int(max_pixels), 1)))  # no smaller k can do
    while math.ceil(height / k) * math.ceil(width / k) > max_pixels:
        k += 1
    return k


def load_study_area(manifest: str | os.PathLike, *, max_pixels: int | None = None) -> StudyArea:
    """Load every layer of a study area onto its reference grid.

    Parameters
    ----------
    manifest
        Path of the YAML manifest (see the module's docstring for its sections).
    max_pixels
        When the reference grid has more pixels, load a *preview* instead: every layer on a grid ``k`` times
        coarser (the smallest ``k`` under ``max_pixels``; same origin and extent, the warper's kernel widened to
        the new cells), ``preview_factor = k`` and a warning saying so. For figures and summaries of an area too
        large to hold: the stack and the maps are made from the files at full resolution, block by block
        (:mod:`lithocore.blockwise`, :mod:`lithocore.mapping`). None: always the full grid.

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
    warns: list[str] = []
    grid = _reference_grid(man, base, warns)
    table: list[dict] = []
    units: dict[str, str] = {}
    preview = preview_factor(grid.height, grid.width, max_pixels)
    if preview > 1:
        full = grid
        grid = grid.coarsen(preview)
        warns.append(f"a preview: the {full.height:,} x {full.width:,} px reference grid has more than {max_pixels:,} "
                     f"pixels, so every layer is shown on a grid {preview} x coarser ({grid.height:,} x {grid.width:,} "
                     f"px of {grid.res:g} m); the stack and the maps are made at {full.res:g} m, block by block")
    n_fine = 0
    for e in man["guide"] + man["extra"]:
        with open_raster(_resolve(base, e["path"])) as src:
            n_fine += src.count
    n_coarse = len(man["coarse"]) + sum(len(e.get("columns") or []) for e in man["points"])
    _check_memory(grid, n_fine, n_coarse, mpath)
    if preview > 1:  # the stack's default channels (notebook 02's rule): coarse and extra layers, else the guide
        n_extra = sum(1 for _ in man["extra"])
        channels = n_coarse + n_extra if n_coarse else n_fine
        _check_full_stack_memory(full, channels, len(man["labels"].get("classes") or []), mpath)

    wavelengths: dict[str, float] = {}

    def fine_stack(key: str) -> tuple[np.ndarray, list[str]]:
        arrays, names = [], []
        for e in man[key]:
            p = _resolve(base, e["path"])
            bands, expected = _fine_bands(e, p, key)
            arr, info = _read_fine(p, grid, expected, Resampling.bilinear, e, warns, bands)
            bnames = _band_names(p, bands, arr.shape[0])
            try:
                wavelengths.update(band_wavelengths(bnames, sensor=e.get("sensor"), wavelengths=e.get("wavelengths")))
            except ValueError as exc:
                raise StudyAreaError(p, str(exc)) from None
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

    coarse, points, labels, classes, lpath = _load_small_layers(man, base, grid, warns, units, table, mpath)
    for a, ca, b, cb in classes.similar_colours():
        _warn(warns, mpath, f"classes '{a}' ({ca}) and '{b}' ({cb}) have near-identical colours: they are hard to "
                            f"tell apart on the maps; give one of them another 'colour' in the class table")

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
    ground = predict_ground(man, base, grid, mask)
    labels, held_out, ground = withhold(labels, mask, ground)
    if not ((labels != NO_LABEL) & mask).any():
        raise StudyAreaError(lpath, "no valid pixel has a label" + (" outside the ground to predict ('predict' "
                                                                    "withholds every label)" if man.get("predict") else ""))
    for arr in (guide, extra):
        arr[:, ~mask] = np.nan
    return StudyArea(name=str(man["name"]), grid=grid, guide=guide, guide_names=guide_names, extra=extra,
                     extra_names=extra_names, coarse=coarse, labels=labels, classes=classes, mask=mask,
                     layer_table=table, points=points, units=units, manifest_path=str(mpath), warnings=warns,
                     preview_factor=preview, predict=ground, held_out=held_out,
                     predict_declared=bool(man.get("predict")), wavelengths=wavelengths)


def withhold(labels: np.ndarray, mask: np.ndarray, ground: np.ndarray | None):
    """Labels with the ground to predict withheld. Returns (training labels, withheld labels, ground):
    with declared ``ground`` the labels inside it move to the withheld raster; without, the ground is every
    valid pixel without a label and nothing is withheld.

    Examples
    --------
    >>> lab = np.array([[0, 1, NO_LABEL, 2]], np.uint8); ok = np.ones_like(lab, bool)
    >>> tr, held, g = withhold(lab, ok, np.array([[False, False, True, True]]))
    >>> tr.tolist(), held.tolist(), g.tolist()
    ([[0, 1, 255, 255]], [[255, 255, 255, 2]], [[False, False, True, True]])
    >>> withhold(lab, ok, None)[2].tolist()
    [[False, False, True, False]]
    """
    held = np.full(labels.shape, NO_LABEL, np.uint8)
    if ground is None:
        return labels, held, mask & (labels == NO_LABEL)
    ground = ground & mask
    held[ground] = labels[ground]
    labels = labels.copy()
    labels[ground] = NO_LABEL
    return labels, held, ground


# ------------------------------------------------------------------------------------------- writing
def write_geotiff(path: str | os.PathLike, array: np.ndarray, grid: Grid, *, band_names: list[str] | None = None,
                  nodata: float | None = float("nan"), tags: dict | None = None,
                  colormap: dict | None = None, cog: str | None = None) -> Path:
    """Write a (bands, H, W) or (H, W) array as a GeoTIFF, atomically (a temporary file renamed into place).

    ``cog``: None for a plain tiled GeoTIFF, or the overview resampling (``"nearest"`` for classes,
    ``"average"`` for values) of a cloud-optimised GeoTIFF with overviews (:func:`write_cog`).

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
