"""The reference grid every layer is aligned to: a raster's grid, or ``crs``, ``bounds`` and ``resolution``; a
geographic grid is warped onto the UTM zone of its centre (with a notice)."""

from __future__ import annotations

import math
from pathlib import Path

from rasterio.crs import CRS
from rasterio.transform import from_origin

from ..area import Grid
from ..errors import StudyAreaError, warn_data
from .common import open_raster, resolve_path

__all__ = ["reference_grid", "projected_grid"]


def reference_grid(man: dict, base: Path, warns: list | None = None) -> Grid:
    """The manifest's reference grid; a geographic one is replaced by the projected grid of
    :func:`projected_grid` (metres), with a notice in ``warns``."""
    ref = man["reference"]
    if isinstance(ref, str):
        ref = {"path": ref}
    if "path" in ref:
        p = resolve_path(base, ref["path"])
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
            warn_data(warns, ref.get("path", base),
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
