"""The study area's core types: the reference :class:`Grid`, the :class:`ClassTable` (unit ids, names, colours),
a :class:`CoarseLayer` on its coarse grid and the loaded :class:`StudyArea`; :data:`NO_LABEL`.

Loading them from a manifest is :func:`lithocore.data.load_study_area`; each kind of source is read by a module of
:mod:`lithocore.sources`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine, from_origin
from rasterio.warp import reproject

from .errors import StudyAreaError

__all__ = ["WARP_THREADS", "gdal_cache", "trim_heap", "NO_LABEL", "Grid", "overlaps", "ClassTable", "norm_value", "CoarseLayer", "StudyArea"]

#: Threads of GDAL's warper (the same values with any number: it splits the output by rows).
WARP_THREADS = min(4, os.cpu_count() or 1)


def gdal_cache(mb: float):
    """A ``rasterio.Env`` whose GDAL block cache holds ``mb`` megabytes. rasterio hands an integer
    ``GDAL_CACHEMAX`` to GDAL as bytes (GDAL's own "MB below 100000" rule applies only to the environment
    variable), so ``Env(GDAL_CACHEMAX=256)`` is a 256-byte cache that holds no block at all."""
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=int(mb * 2**20))


def block_row_mb(srcs) -> float:
    """MB of one row of file blocks of the open rasters ``srcs`` (their width x block height x bands x bytes): what
    GDAL's cache must hold for a strip lower than a block to be read without decompressing its blocks again."""
    import numpy as np

    return sum(s.width * s.block_shapes[0][0] * s.count * np.dtype(s.dtypes[0]).itemsize for s in srcs) / 2**20


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing elsewhere). GDAL's block
    cache frees and allocates blocks as it turns over, and glibc keeps the freed pages: a process that streamed a
    20000-px scene through a 0.9 GB cache grew by 2.2 GB and kept growing with the rows read (at 4000 px with a
    400 MB cache: +300 MB over the last pass; flat when trimmed after each strip)."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim  # glibc only
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


#: Value of the label raster where a pixel has no label (outside the map, or a unit not mapped).
NO_LABEL = 255


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
        :func:`~lithocore.outputs.write_cog` copies is best left uncompressed (None): GDAL then makes the COG 4 x
        faster (``benchmarks/README.md``)."""
        prof = dict(driver="GTiff", crs=self.crs, transform=self.transform, width=self.width,
                    height=self.height, count=count, dtype=dtype, nodata=nodata,
                    BIGTIFF="IF_SAFER")  # past 4 GB a classic TIFF cannot be written (a province's stack is)
        if compress:
            prof["compress"] = compress
        if self.width >= 256 and self.height >= 256:
            prof.update(tiled=True, blockxsize=256, blockysize=256)
        return prof


def overlaps(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


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
        return {norm_value(v): i for i, v in enumerate(self.values)}[norm_value(value)]

    def value_lookup(self) -> dict:
        return {norm_value(v): i for i, v in enumerate(self.values)}

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


def norm_value(v: Any) -> Any:
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
    #: (H, W) bool: the manifest's ``predict`` polygons on the valid pixels; None when the manifest declares none
    #: (the ground to predict is then every valid unlabelled pixel: :attr:`predict`)
    declared_ground: np.ndarray | None = None
    #: (H, W) uint8: the labels withheld inside declared ``predict`` polygons (class indices, else NO_LABEL; a read-only
    #: view of NO_LABEL when nothing is withheld)
    held_out: np.ndarray | None = None
    #: guide band name -> centre wavelength (micrometres), from the manifest's ``sensor`` or ``wavelengths``
    wavelengths: dict = field(default_factory=dict)
    #: False: loaded without the layers its stack is made from (``guide`` and ``extra`` hold no channel, their
    #: names kept; ``coarse`` and ``points`` empty), for the stages that work from the fused stack
    #: (:func:`lithocore.data.load_study_area`'s ``valid``)
    layers_loaded: bool = True

    def require_layers(self, what: str) -> None:
        """Stop with a clear message where ``what`` needs the layers of an area loaded without them."""
        if not self.layers_loaded:
            raise ValueError(f"{what} needs the layers of {self.name}, which were not loaded (the run's stack is "
                             f"made already): load the area with lithocore.data.load_study_area(manifest)")

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    @cached_property
    def predict(self) -> np.ndarray:
        """(H, W) bool: the ground to predict, the manifest's ``predict`` polygons, else every valid unlabelled
        pixel; the default made when first read (the stages after the stack never read it: 400 MB at 20000 px)."""
        if self.declared_ground is not None:
            return self.declared_ground
        return self.mask & (self.labels == NO_LABEL)

    @property
    def predict_declared(self) -> bool:
        """Whether the ground to predict came from the manifest (True) or is the default, every valid unlabelled
        pixel."""
        return self.declared_ground is not None

    def coarse_layer(self, name: str) -> CoarseLayer:
        self.require_layers(f"the coarse layer {name!r}")
        for c in self.coarse:
            if c.name == name:
                return c
        raise KeyError(f"no coarse layer named {name!r}; have {[c.name for c in self.coarse]}")

    @property
    def labels_name(self) -> str:
        """What the labels are, in words: "geological map" when they cover at least half of the valid ground
        outside the ground to predict, else "training polygons" (sparse labels of a field campaign)."""
        labelled = int(((self.labels != NO_LABEL) & self.mask).sum())
        ground = int((self.declared_ground & self.mask).sum()) if self.declared_ground is not None else 0
        return "geological map" if labelled >= 0.5 * max(int(self.mask.sum()) - ground, 1) else "training polygons"

    def label_fractions(self) -> dict[str, float]:
        """Share of each class among the labelled, valid pixels."""
        lab = self.labels[self.mask & (self.labels != NO_LABEL)]
        counts = np.bincount(lab, minlength=len(self.classes))
        total = max(int(counts.sum()), 1)
        return {n: float(c) / total for n, c in zip(self.classes.names, counts)}
