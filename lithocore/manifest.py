"""The study-area manifest's schema (pydantic): every key, its type and its default, checked before any work.

An unknown key is an error that names it and the nearest valid key (``guid`` -> ``guide``), so a typo never
silently drops a section or falls back to a default. :func:`validate_manifest` returns the manifest as plain
dicts and lists, with the keys the user wrote (defaults are applied where the loader reads them).
"""

from __future__ import annotations

import difflib
import os
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import StudyAreaError
from .sources import layer_sections
from .sources.common import resolve_path

__all__ = ["Manifest", "validate_manifest", "format_errors", "Number", "NodataValue", "ReferenceGrid",
           "FineEntry", "CoarseEntry", "PointsEntry", "NetCDFEntry", "ClassEntry", "Labels", "read_manifest",
           "manifest_files"]

Number = Union[float, int]
NodataValue = Union[float, int, str, None]  # a number, "nan", or "none"/null: the file has no nodata


class _Entry(BaseModel):
    # coerce_numbers_to_str: a crs written as a number (crs: 32646) or numeric units are text
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class ReferenceGrid(_Entry):
    path: str | None = None
    crs: str | None = None
    bounds: list[float] | None = Field(default=None, min_length=4, max_length=4)
    resolution: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _complete(self):
        if self.path is None and None in (self.crs, self.bounds, self.resolution):
            raise ValueError("the reference grid needs 'path', or 'crs', 'bounds' and 'resolution'")
        return self


class FineEntry(_Entry):
    """A fine layer (``guide`` or ``extra``): bands resampled bilinearly onto the reference grid."""

    path: str
    bands: list[str] | int | None = None
    name: str | None = None
    units: str = ""
    nodata: NodataValue = None
    #: the sensor whose bands these are (:data:`lithocore.sensors.SENSORS`), or each band's centre wavelength in
    #: micrometres: composites follow them; neither: a plain composite of the first three bands
    sensor: str | None = None
    wavelengths: list[float] | None = None


class CoarseEntry(_Entry):
    path: str
    name: str | None = None
    units: str = ""
    band: int = Field(default=1, ge=1)
    factor: int | None = Field(default=None, ge=1)
    inclination: float | None = None
    declination: float | None = None
    nodata: NodataValue = None


class PointsEntry(_Entry):
    path: str
    crs: str | None = None
    x: str = "x"
    y: str = "y"
    columns: list[str] | dict[str, str]
    units: str = ""
    spacing: float = Field(default=2000.0, gt=0)
    method: Literal["spline", "linear", "cubic", "nearest"] = "spline"
    #: grid log10 of the values: true, false, or None (the default: true for a composition, two or more columns
    #: whose samples are all positive, so the gridded parts stay positive for the log-ratio)
    log: bool | None = None
    maxdist: float | None = Field(default=None, gt=0)
    below_detection: Literal["error", "half", "limit"] = "error"
    missing: list[str] = []


class NetCDFEntry(_Entry):
    """A variable of a NetCDF file, kept on a coarse grid (:mod:`lithocore.sources.netcdf`)."""

    path: str
    variable: str
    name: str | None = None
    units: str = ""
    crs: str | None = None
    factor: int | None = Field(default=None, ge=1)
    nodata: NodataValue = None


class ClassEntry(_Entry):
    id: Any
    name: str
    colour: str | None = None
    color: str | None = None
    value: Any = None


class Labels(_Entry):
    path: str
    field: str | None = None
    crs: str | None = None
    classes: list[ClassEntry] = Field(min_length=1)
    unlabelled: list[Union[float, int, str]] = []
    nodata: list[Union[float, int, str]] = []
    overlaps: Literal["warn", "error"] = "warn"

    @field_validator("unlabelled", "nodata", mode="before")
    @classmethod
    def _listify(cls, v):
        return [] if v is None else (v if isinstance(v, list) else [v])


class Manifest(_Entry):
    name: str | None = None
    reference: Union[str, ReferenceGrid]
    area: str | None = None
    crs: str | None = None
    guide: list[FineEntry] = []
    extra: list[FineEntry] = []
    coarse: list[CoarseEntry] = []
    points: list[PointsEntry] = []
    netcdf: list[NetCDFEntry] = []
    labels: Labels
    #: polygons of the ground to predict (any vector file): labels inside are withheld from training, tiles and
    #: cross-validation and used only to check the workbook's promise; default every valid pixel without a label
    predict: str | None = None
    truth: dict[str, str] = {}


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that holds the key at the end of ``loc`` (for 'did you mean')."""
    model: Any = Manifest
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = _unwrap(model.model_fields[part].annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(tp):
    for _ in range(4):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if models:
            return models[0]
        if typing.get_origin(tp) in (list,) and args:
            tp = args[0]
            continue
        return tp
    return tp


def format_errors(exc: ValidationError) -> str:
    """One line per fault: where in the manifest, what is wrong, and for an unknown key the nearest valid one."""
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "list[str]"))))
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            model = _model_at(loc)
            valid = sorted(model.model_fields) if model else []
            near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            lines.append(f"unknown key '{where}'{hint}; valid keys here: {', '.join(valid)}")
        elif err["type"] == "missing":
            lines.append(f"'{where}' is required but missing")
        else:
            lines.append(f"'{where}': {err['msg']} (got {err.get('input')!r})")
    # A union reports one error per alternative: keep each line once.
    return "; ".join(dict.fromkeys(lines))


def validate_manifest(raw: dict) -> dict:
    """Check a manifest's structure and types; return it unchanged (plain dicts) when valid.

    Raises
    ------
    ValueError
        With every fault on one line each (see :func:`format_errors`).

    Examples
    --------
    >>> validate_manifest({"reference": "a.tif", "guid": [], "labels": {"path": "g.tif", "classes": [{"id": 1, "name": "A"}]}})
    Traceback (most recent call last):
    ...
    ValueError: unknown key 'guid' (did you mean 'guide'?); valid keys here: area, coarse, crs, extra, guide, labels, name, netcdf, points, predict, reference, truth
    """
    try:
        Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(format_errors(exc)) from None
    return raw


def read_manifest(path: str | os.PathLike) -> dict:
    """Read a study-area manifest (YAML) and check its keys and types (:mod:`lithocore.manifest`)."""

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
    sections = layer_sections()
    for key in sections:
        man.setdefault(key, [])
    if not any(man[key] for key in sections):
        raise StudyAreaError(path, "the manifest names no layer: give at least one of "
                                   + ", ".join(f"'{key}'" for key in sections[:-1]) + f" or '{sections[-1]}'")
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
        out.append(resolve_path(base, ref if isinstance(ref, str) else ref["path"]))
    if man.get("area"):
        out.append(resolve_path(base, man["area"]))
    for k in layer_sections():
        out += [resolve_path(base, e["path"]) for e in man[k]]
    out.append(resolve_path(base, man["labels"]["path"]))
    if man.get("predict"):
        out.append(resolve_path(base, man["predict"]))
    out += [resolve_path(base, v) for v in (man.get("truth") or {}).values()]
    return list(dict.fromkeys(out))
