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
    netcdf:                                # gridded surveys in NetCDF files, kept on a coarse grid like 'coarse'
      - {path: gravity.nc, variable: bouguer, name: gravity, units: mGal}   # crs: when the file declares none
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

import math
import os
import re
from pathlib import Path

import numpy as np

from .area import ClassTable, CoarseLayer, Grid, NO_LABEL, StudyArea
from .errors import StudyAreaError, warn_data
from .manifest import read_manifest
from .sources import grid_sources
from .sources.common import open_raster, resolve_path
from .sources.fine import fine_section_names, read_fine_section
from .sources.labels import area_mask, labels_from_raster, labels_from_vector, predict_ground, withhold
from .sources.reference import reference_grid
from .tiles import any_where, labelled_map

__all__ = ["load_study_area", "preview_factor", "memory_available", "check_memory", "check_full_stack_memory",
           "load_small_layers"]


# --------------------------------------------------------------------------------------------- grids


# ------------------------------------------------------------------------------------- class table


# ------------------------------------------------------------------------------------- study area


# ------------------------------------------------------------------------------------------ manifest


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


def check_memory(grid: Grid, n_fine: int, n_coarse: int, source, *, labels_only: bool = False) -> int:
    """Refuse a grid whose layers would not fit in memory, before allocating anything (``labels_only``: the
    one-byte-a-pixel maps of a study area loaded without its fine bands)."""
    px = grid.width * grid.height
    # loading: the fine bands, the coarse layers brought to the fine grid for the mask, labels and mask;
    # fusion and the stack then hold about as much again. Without the fine bands: the labels, the valid mask, the
    # ground to predict and the labels withheld there, and as much again while they are made.
    need = px * 4 * 2 if labels_only else px * (4 * (n_fine + 2 * max(n_coarse, 1) + 2) + 2) * 2
    have = memory_available()
    if need > have:
        raise StudyAreaError(source, f"the reference grid is {grid.height:,} x {grid.width:,} pixels of {grid.res:g} m "
                                     f"({px / 1e6:,.1f} Mpx): loading and fusing its {n_fine} fine band(s) and "
                                     f"{n_coarse} coarse layer(s) needs about {_size(need)}, but {_size(have)} is "
                                     f"available. Choose a coarser resolution (reference: {{crs, bounds, resolution}}), "
                                     f"a smaller area, or fewer bands")
    return need


def check_full_stack_memory(full: Grid, n_channels: int, n_classes: int, source) -> None:
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


def load_small_layers(man: dict, base: Path, grid: Grid, warns: list, units: dict, table: list, mpath: Path):
    """What stays small at any scene size: every grid source's layers (coarse rasters, gridded points, ...: on
    their coarse grids, :func:`lithocore.sources.grid_sources`) and the labels (one byte a pixel) with their class
    table. Returns (coarse layers, point samples by file stem, labels, classes, label path)."""
    coarse, points = _grid_layers(man, base, grid, warns, units, table)
    return (coarse, points, *_labels(man, base, grid, warns, table, mpath))


def _grid_layers(man: dict, base: Path, grid: Grid, warns: list, units: dict, table: list):
    """Every grid source's layers on their coarse grids, and the point samples by file stem."""
    coarse: list[CoarseLayer] = []
    points = {}
    for section, source in grid_sources().items():
        for e in man[section]:
            p = resolve_path(base, e["path"])
            got = source.read(p, e, grid, warns)
            coarse += got.layers
            units.update({layer.name: layer.units for layer in got.layers})
            table.append(got.row)
            if got.samples is not None:
                points[p.stem] = got.samples
    return coarse, points


def _labels(man: dict, base: Path, grid: Grid, warns: list, table: list, mpath: Path):
    """The label raster on ``grid`` (class indices) with its class table; returns (labels, classes, label path)."""
    lab = man["labels"]
    if isinstance(lab, str) or "path" not in lab:
        raise StudyAreaError(mpath, "'labels' needs a 'path' and a 'classes' table")
    classes = ClassTable.from_list(lab.get("classes") or [], source=str(mpath), field=lab.get("field"))
    lpath = resolve_path(base, lab["path"])
    if lpath.suffix.lower() in (".tif", ".tiff", ".vrt", ".img"):
        labels, info = labels_from_raster(lpath, lab, classes, grid, warns)
    else:
        labels, info = labels_from_vector(lpath, lab, classes, grid, warns)
    table.append(dict(layer="labels", kind="labels", **info))
    return labels, classes, lpath


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


def _check_scene_memory(man: dict, base: Path, grid: Grid, full: Grid | None, mpath: Path) -> None:
    """Before anything is read: the layers on ``grid`` must fit in memory, and, for a preview of the ``full``
    grid, so must the full stack notebooks 03-07 will hold (notebook 02's default channels: the coarse and extra
    layers, else the guide)."""
    n_fine = 0
    for e in man["guide"] + man["extra"]:
        with open_raster(resolve_path(base, e["path"])) as src:
            n_fine += src.count
    n_coarse = sum(src.n_layers(e) for section, src in grid_sources().items() for e in man[section])
    check_memory(grid, n_fine, n_coarse, mpath)
    if full is not None:
        channels = n_coarse + len(man["extra"]) if n_coarse else n_fine
        check_full_stack_memory(full, channels, len(man["labels"].get("classes") or []), mpath)


def _valid_mask(grid: Grid, fine: tuple, coarse: list, man: dict, base: Path) -> np.ndarray:
    """Pixels with valid data in every fine band and coarse layer, inside the study area's outline."""
    mask = np.ones(grid.shape, dtype=bool)
    for arr in fine:
        if arr.shape[0]:
            mask &= np.isfinite(arr).all(axis=0)
    for c in coarse:
        mask &= np.isfinite(c.to_fine(grid))
    if man.get("area"):
        mask &= area_mask(resolve_path(base, man["area"]), grid, man.get("crs"))
    return mask


def _fine_layers(man, base, grid, full, mpath, valid, warns, units, table, wavelengths):
    """The guide and extra sections as ``(channels, names)`` each, read onto ``grid`` after the scene's memory is
    checked; with the valid-data mask known (``valid``), not read: no channels, names from the files' headers."""
    if valid is None:
        _check_scene_memory(man, base, grid, full, mpath)
        return tuple(read_fine_section(man, base, grid, sec, warns, units, table, wavelengths)
                     for sec in ("guide", "extra"))
    if full is not None or valid.shape != grid.shape:
        raise ValueError(f"a valid-data mask of {valid.shape} for a {grid.shape} reference grid"
                         + (" (a preview cannot take one)" if full is not None else ""))
    check_memory(grid, 0, 0, mpath, labels_only=True)
    return tuple((np.zeros((0, *grid.shape), np.float32), fine_section_names(man, base, sec, units, wavelengths))
                 for sec in ("guide", "extra"))


def load_study_area(manifest: str | os.PathLike, *, max_pixels: int | None = None,
                    valid: np.ndarray | None = None) -> StudyArea:
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
    valid
        The valid-data mask on the reference grid, known already (the one :func:`lithocore.blockwise.write_stack`
        made with the stack): the layers the stack was made from are then not read (``layers_loaded`` False:
        ``guide`` and ``extra`` without channels, their names and units from the files' headers; no coarse layer
        and no point sample gridded); the labels and the ground to predict are loaded as always. What notebooks
        03-07 need of an area whose stack is made (gridding Central Lapland's samples again took 12 s a notebook).

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
    grid = reference_grid(man, base, warns)
    table: list[dict] = []
    units: dict[str, str] = {}
    preview, full = preview_factor(grid.height, grid.width, max_pixels), None
    if preview > 1:
        full = grid
        grid = grid.coarsen(preview)
        warns.append(f"a preview: the {full.height:,} x {full.width:,} px reference grid has more than {max_pixels:,} "
                     f"pixels, so every layer is shown on a grid {preview} x coarser ({grid.height:,} x {grid.width:,} "
                     f"px of {grid.res:g} m); the stack and the maps are made at {full.res:g} m, block by block")
    wavelengths: dict[str, float] = {}
    (guide, guide_names), (extra, extra_names) = _fine_layers(man, base, grid, full, mpath, valid, warns, units,
                                                              table, wavelengths)
    coarse, points = _grid_layers(man, base, grid, warns, units, table) if valid is None else ([], {})
    labels, classes, lpath = _labels(man, base, grid, warns, table, mpath)
    for a, ca, b, cb in classes.similar_colours():
        warn_data(warns, mpath, f"classes '{a}' ({ca}) and '{b}' ({cb}) have near-identical colours: they are hard to "
                            f"tell apart on the maps; give one of them another 'colour' in the class table")

    mask = _valid_mask(grid, (guide, extra), coarse, man, base) if valid is None else np.asarray(valid, bool)
    if not mask.any():
        raise StudyAreaError(mpath, "the study area is empty: no pixel has valid data in every layer "
                                    "(check nodata values, the area outline and the layers' extents)")
    ground = predict_ground(man, base, grid, mask)
    labels, held_out, ground = withhold(labels, mask, ground)
    if not any_where(labelled_map(labels, mask), mask):  # strip by strip: no scene-sized temporaries
        raise StudyAreaError(lpath, "no valid pixel has a label" + (" outside the ground to predict ('predict' "
                                                                    "withholds every label)" if man.get("predict") else ""))
    for arr in (guide, extra):
        if len(arr):  # an area loaded without its fine bands has none to blank
            arr[:, ~mask] = np.nan
    return StudyArea(name=str(man["name"]), grid=grid, guide=guide, guide_names=guide_names, extra=extra,
                     extra_names=extra_names, coarse=coarse, labels=labels, classes=classes, mask=mask,
                     layer_table=table, points=points, units=units, manifest_path=str(mpath), warnings=warns,
                     preview_factor=preview, declared_ground=ground, held_out=held_out,
                     wavelengths=wavelengths, layers_loaded=valid is None)



