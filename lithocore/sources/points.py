"""Point samples (``points``: geochemistry in a CSV or any vector file), each column gridded onto a coarse grid
with verde (in logarithms for a composition), so fusion treats it as a coarse layer."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from . import GridRead, GridSource, register
from ..area import Grid
from ..errors import StudyAreaError
from .common import read_vector

__all__ = ["numeric_column", "read_points", "grid_in_logs", "grid_points", "read_samples"]


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
    lithocore.errors.StudyAreaError: s.csv: column 'MgO', row 3: '<0.2' is a value below the detection limit; choose how to use such values with 'below_detection: half' (half the limit, the usual rule) or 'below_detection: limit' in the points entry
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


def read_points(path: Path, entry: dict, grid: Grid):
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
        gdf = read_vector(path, entry.get("crs"))
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
    >>> from rasterio.crs import CRS
    >>> from rasterio.transform import from_origin
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


def read_samples(path: Path, entry: dict, grid: Grid, warns: list) -> GridRead:
    """A ``points`` entry as a grid source: one gridded layer per column, the samples kept for the figures."""
    from ..area import CoarseLayer
    from .common import coarse_factor

    gdf, columns = read_points(path, entry, grid)
    factor = coarse_factor(float(entry.get("spacing", 2000)), grid.res)
    cgrid = grid.coarsen(factor)
    x, y = gdf.geometry.x.to_numpy(), gdf.geometry.y.to_numpy()
    log = grid_in_logs(entry.get("log"), {c: np.asarray(gdf[c], dtype=np.float64) for c in columns})
    layers = []
    for col, name in columns.items():
        vals = np.asarray(gdf[col], dtype=np.float64)
        try:
            z = grid_points(x, y, vals, cgrid, method=entry.get("method", "spline"), log=log,
                            maxdist=entry.get("maxdist"))
        except ValueError as exc:
            raise StudyAreaError(path, f"column '{col}': {exc}") from None
        layers.append(CoarseLayer(str(name), z, cgrid, factor, str(entry.get("units", "")), str(path), kind="points",
                                  meta={"group": str(path), "log": log,
                                        "samples_positive": bool(np.all(vals[np.isfinite(vals)] > 0))}))
    row = dict(layer=", ".join(map(str, columns.values())), kind="points", file=path.name, crs=gdf.crs.to_string(),
               resolution=f"gridded at {cgrid.res:g}", size=f"{len(gdf)} samples", bands=len(columns), nodata="",
               dtype="float")
    return GridRead(layers, row, samples=gdf.rename(columns={c: n for c, n in columns.items()}))


register(GridSource("points", read_samples, n_layers=lambda entry: len(entry.get("columns") or [])))
