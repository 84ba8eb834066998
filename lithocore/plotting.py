"""Maps of a study area's layers, in map coordinates (km), ready for a notebook or a report.

Every function takes a :class:`~lithocore.area.StudyArea` (and an optional matplotlib ``Axes``) and returns the
``Axes`` it drew on; :func:`plot_layers` puts them all on one figure.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import BoundaryNorm, LightSource, ListedColormap
from matplotlib.patches import Patch

from .area import NO_LABEL, Grid, StudyArea

__all__ = ["fold_colours", "extent_km", "plot_composite", "plot_hillshade", "plot_points", "plot_coarse", "plot_labels",
           "plot_layers", "class_colormap", "plot_tiles", "plot_folds", "plot_history", "plot_confusion", "plot_zoom",
           "class_legend_handles", "save_class_legend", "figure_check", "save_figure", "compare_maps", "plot_ground",
           "plot_matched_folds", "plot_distances", "plot_reliability", "plot_trust_map", "plot_value", "plot_accuracy_by_di",
           "FIGURE_PIXELS", "figure_step"]

#: Font size of class legends (readable at the notebook's width).
LEGEND_FONTSIZE = 9

#: Pixels a figure's map shows at most: a larger scene is drawn from every k-th row and column (:func:`figure_step`;
#: as notebook 01's previews). The files hold every pixel; notebook 07 keeps only the pixels its figures show.
FIGURE_PIXELS = 16_000_000


def extent_km(grid: Grid) -> list[float]:
    """imshow extent (left, right, bottom, top) in kilometres."""
    left, bottom, right, top = grid.bounds
    return [left / 1e3, right / 1e3, bottom / 1e3, top / 1e3]


def figure_step(shape: tuple[int, int]) -> int:
    """k: a map of ``shape`` is shown by every k-th row and column (1 up to :data:`FIGURE_PIXELS`; classes stay
    classes, nothing is averaged).

    >>> figure_step((1611, 1650)), figure_step((20000, 20000))
    (1, 5)
    """
    from .data import preview_factor

    return preview_factor(int(shape[0]), int(shape[1]), FIGURE_PIXELS)


def _shown(area: StudyArea, values: np.ndarray) -> np.ndarray:
    """``values`` as a figure draws them: a map on the area's grid by every :func:`figure_step`-th row and column
    (a view: a province's figure never copies, masks or resamples the whole scene); a map already so taken
    (notebook 07's) as it is.

    >>> from types import SimpleNamespace
    >>> _shown(SimpleNamespace(mask=np.ones((5, 7), bool), shape=(5, 7)), np.zeros((5, 7))).shape
    (5, 7)
    """
    if tuple(values.shape) != tuple(area.shape):
        _valid_shown(area, values)  # every k-th pixel of the area's grid, or refused
        return values
    k = figure_step(area.shape)
    return values[::k, ::k] if k > 1 else values


def _valid_shown(area: StudyArea, values: np.ndarray) -> np.ndarray:
    """The area's valid mask on the grid of ``values``: the area's own, or every k-th row and column of it for a
    map shown by every k-th pixel (notebook 07's figures of a large scene).

    >>> from types import SimpleNamespace
    >>> a = SimpleNamespace(mask=np.ones((5, 7), bool), shape=(5, 7))
    >>> _valid_shown(a, np.zeros((5, 7))).shape, _valid_shown(a, np.zeros((3, 4))).shape
    ((5, 7), (3, 4))
    """
    if values.shape == tuple(area.shape):
        return area.mask
    k = -(-area.shape[0] // values.shape[0])
    shown = area.mask[::k, ::k]
    if shown.shape != values.shape:
        raise ValueError(f"a map of {values.shape} is not the area's {area.shape} nor every k-th pixel of it")
    return shown


def _axes(ax):
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5.5))
    return ax


def _finish(ax, title: str, width: int = 60):
    import textwrap

    ax.set_title(textwrap.fill(title, width), fontsize=10)  # long titles wrapped, never cut off
    ax.set_xlabel("easting (km)")
    ax.set_ylabel("northing (km)")
    ax.ticklabel_format(useOffset=False, style="plain")
    return ax


def _stretch(a: np.ndarray, mask: np.ndarray, pct: tuple[float, float] = (2, 98)) -> np.ndarray:
    vals = a[mask & np.isfinite(a)]
    lo, hi = np.percentile(vals, pct) if vals.size else (0.0, 1.0)
    return np.clip((a - lo) / (hi - lo + 1e-12), 0, 1)


def plot_composite(area: StudyArea, bands: tuple[str, str, str] | None = None, ax=None):
    """A colour composite (2-98 % stretch) of ``bands``, or of the bands the declared wavelengths pick
    (:func:`lithocore.sensors.composite`: false colour, else true colour, else the first three bands), titled
    with what it is."""
    from .sensors import composite

    area.require_layers("a colour composite")
    ax = _axes(ax)
    names = area.guide_names or area.extra_names
    stack = area.guide if area.guide_names else area.extra
    if bands is None:
        bands, title = composite(names, area.wavelengths)
    else:
        title = f"Composite (R, G, B = {', '.join(bands)})"
    idx = [names.index(b) for b in bands]
    rgb = np.dstack([_stretch(stack[i], area.mask) for i in idx])
    rgb[~area.mask] = 1.0
    ax.imshow(rgb, extent=extent_km(area.grid))
    return _finish(ax, title)


def plot_hillshade(area: StudyArea, layer: str = "dem", ax=None, cmap: str = "terrain"):
    """A fine layer (by default the DEM) as colour over its hillshade."""
    area.require_layers("a hillshade")
    ax = _axes(ax)
    names = area.extra_names + area.guide_names
    if layer not in names:
        raise KeyError(f"no fine layer named {layer!r}; have {names}")
    a = (area.extra if layer in area.extra_names else area.guide)[names.index(layer) if layer in area.extra_names
                                                                  else area.guide_names.index(layer)]
    filled = np.where(np.isfinite(a), a, np.nanmean(a))
    ls = LightSource(azdeg=315, altdeg=45)
    lo, hi = np.nanpercentile(a, [1, 99])
    shaded = ls.shade(filled, cmap=plt.get_cmap(cmap), vert_exag=1.0, dx=area.grid.res, dy=area.grid.res,
                      blend_mode="overlay", vmin=lo, vmax=hi)
    shaded[~area.mask] = 1.0
    ax.imshow(shaded, extent=extent_km(area.grid))
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
    plt.colorbar(sm, ax=ax, shrink=0.7, label=f"{layer} ({area.units.get(layer, '')})")
    return _finish(ax, f"{layer} with hillshade")


def plot_points(area: StudyArea, column: str, ax=None, cmap: str = "viridis"):
    """Point samples coloured by ``column``, over the gridded coarse layer of the same name when there is one."""
    area.require_layers("a plot of point samples")
    ax = _axes(ax)
    gdf = next((g for g in area.points.values() if column in g.columns), None)
    if gdf is None:
        raise KeyError(f"no point samples with a column {column!r}")
    vals = gdf[column].to_numpy(dtype=float)
    lo, hi = np.nanpercentile(vals, [2, 98])
    layer = next((c for c in area.coarse if c.name == column), None)
    if layer is not None:
        ax.imshow(layer.values, extent=extent_km(layer.grid), cmap=cmap, vmin=lo, vmax=hi, alpha=0.45)
    sc = ax.scatter(gdf.geometry.x / 1e3, gdf.geometry.y / 1e3, c=vals, s=14, cmap=cmap, vmin=lo, vmax=hi,
                    edgecolors="k", linewidths=0.3)
    plt.colorbar(sc, ax=ax, shrink=0.7, label=f"{column} ({area.units.get(column, '')})")
    ext = extent_km(area.grid)
    ax.set_xlim(ext[0], ext[1])
    ax.set_ylim(ext[2], ext[3])
    return _finish(ax, f"{column}: {len(gdf)} samples (gridded beneath)")


def plot_coarse(area: StudyArea, name: str, ax=None, cmap: str = "RdBu_r"):
    """A coarse layer on its own coarse grid (cells visible), e.g. the aeromagnetic grid."""
    ax = _axes(ax)
    layer = area.coarse_layer(name)
    v = layer.values
    lim = np.nanpercentile(np.abs(v - np.nanmedian(v)), 98)
    mid = np.nanmedian(v)
    im = ax.imshow(v, extent=extent_km(layer.grid), cmap=cmap, vmin=mid - lim, vmax=mid + lim,
                   interpolation="nearest")
    plt.colorbar(im, ax=ax, shrink=0.7, label=f"{name} ({layer.units})")
    ext = extent_km(area.grid)
    ax.set_xlim(ext[0], ext[1])
    ax.set_ylim(ext[2], ext[3])
    return _finish(ax, f"{name}: {layer.grid.res:g} m cells")


def class_colormap(area: StudyArea) -> tuple[ListedColormap, BoundaryNorm]:
    """Colormap and norm that draw class index i in the class table's colour i."""
    n = len(area.classes)
    cmap = ListedColormap(list(area.classes.colours))
    return cmap, BoundaryNorm(np.arange(-0.5, n + 0.5), n)


def plot_labels(area: StudyArea, labels: np.ndarray | None = None, ax=None, title: str | None = None,
                legend: bool = True):
    """A class map (default: the study area's labels) with the class table's colours and a legend;
    unlabelled pixels are white. The default title says what the labels are (:attr:`StudyArea.labels_name`:
    a geological map or training polygons)."""
    if title is None:
        title = area.labels_name.capitalize() if labels is None else "Class map"
    ax = _axes(ax)
    lab = _shown(area, area.labels if labels is None else labels)
    shown = np.ma.masked_where((lab == NO_LABEL) | ~_valid_shown(area, lab), lab)
    cmap, norm = class_colormap(area)
    ax.imshow(shown, extent=extent_km(area.grid), cmap=cmap, norm=norm, interpolation="nearest")
    if legend:
        ax.legend(handles=class_legend_handles(area.classes), loc="upper left", bbox_to_anchor=(1.02, 1),
                  fontsize=LEGEND_FONTSIZE, frameon=False, title="unit id: name", title_fontsize=LEGEND_FONTSIZE)
    return _finish(ax, title)


def class_legend_handles(table) -> list:
    """Legend patches of a class table: its colours, 'unit id: name'."""
    return [Patch(facecolor=c, edgecolor="k", linewidth=0.3, label=f"{i}: {n}")
            for i, n, c in zip(table.ids, table.names, table.colours)]


def save_class_legend(path, table, title: str = "Lithological units") -> str:
    """A legend PNG of a class table (unit id, name, colour), to go beside a class map GeoTIFF."""
    from .runfolder import atomic_path

    fig = plt.figure(figsize=(3.6, 0.5 + 0.28 * len(table.names)))
    fig.legend(handles=class_legend_handles(table), loc="center", frameon=False, fontsize=LEGEND_FONTSIZE + 1,
               title=title, title_fontsize=LEGEND_FONTSIZE + 2)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)
    return str(path)


def plot_layers(area: StudyArea, points_column: str | None = None, coarse_name: str | None = None):
    """Every kind of layer on one figure: composite, DEM (if any), points, a coarse grid, the labels."""
    panels = [("composite", None)] if (area.guide_names or area.extra_names) else []
    if "dem" in area.extra_names:
        panels.append(("dem", None))
    if area.points:
        col = points_column or next(c.name for c in area.coarse if c.kind == "points")
        panels.append(("points", col))
    grids = [c.name for c in area.coarse if c.kind == "coarse"]
    if coarse_name or grids:
        panels.append(("coarse", coarse_name or grids[0]))
    panels.append(("labels", None))
    ncol = 3
    nrow = int(np.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.8 * ncol, 5.0 * nrow), layout="constrained")
    axes = np.atleast_1d(axes).ravel()
    for ax, (kind, arg) in zip(axes, panels):
        if kind == "composite":
            plot_composite(area, ax=ax)
        elif kind == "dem":
            plot_hillshade(area, "dem", ax=ax)
        elif kind == "points":
            plot_points(area, arg, ax=ax)
        elif kind == "coarse":
            plot_coarse(area, arg, ax=ax)
        else:
            plot_labels(area, ax=ax)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    fig.suptitle(area.name)
    return fig


def plot_tiles(area: StudyArea, tiles, ax=None, title: str | None = None, max_tiles: int = 400):
    """The geological map (faded) with training tiles (black) and validation tiles (red) outlined and, for a
    spatial split, the validation region hatched and the buffer greyed."""
    from matplotlib.patches import Rectangle

    ax = _axes(ax)
    plot_labels(area, ax=ax, legend=False, title="")
    for im in ax.get_images():
        im.set_alpha(0.45)
    ext = extent_km(area.grid)
    res = area.grid.res / 1e3
    if tiles.region is not None:
        buf = np.ma.masked_where(tiles.region != -1, np.ones(area.shape))
        ax.imshow(buf, extent=ext, cmap=ListedColormap(["0.5"]), alpha=0.5, interpolation="nearest")
        ax.contourf(np.linspace(ext[0], ext[1], area.shape[1]), np.linspace(ext[3], ext[2], area.shape[0]),
                    (tiles.region == 1).astype(float), levels=[0.5, 1.5], colors="none", hatches=["//"])
    rng = np.random.default_rng(0)
    for windows, colour in ((tiles.train, "k"), (tiles.val, "r")):
        shown = windows if len(windows) <= max_tiles else windows[rng.choice(len(windows), max_tiles, replace=False)]
        for r, c in shown:
            x0, y0 = ext[0] + c * res, ext[3] - (r + tiles.size) * res
            ax.add_patch(Rectangle((x0, y0), tiles.size * res, tiles.size * res, fill=False, lw=0.4, ec=colour,
                                   alpha=0.6))
    handles = [Patch(facecolor="none", edgecolor="k", label=f"training tile ({len(tiles.train)})"),
               Patch(facecolor="none", edgecolor="r", label=f"validation tile ({len(tiles.val)})")]
    if tiles.region is not None:
        handles += [Patch(facecolor="none", edgecolor="0.3", hatch="//", label="validation region (held out)"),
                    Patch(facecolor="0.5", alpha=0.5, label="buffer: in no tile, keeps the sides apart")]
    handles += class_legend_handles(area.classes)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=LEGEND_FONTSIZE - 1,
              frameon=False)
    return _finish(ax, title or f"{tiles.split} split: {len(tiles.train)} training, {len(tiles.val)} validation tiles")


def fold_colours(k: int) -> list[tuple]:
    """Greys for the folds, never a class colour: a class map beside a fold map cannot be misread.

    >>> len(fold_colours(4)), all(r == g == b for r, g, b, _ in fold_colours(4))
    (4, True)
    """
    levels = np.linspace(0.25, 0.8, max(k, 1))
    return [(float(v), float(v), float(v), 1.0) for v in levels]


def plot_folds(area: StudyArea, folds, ax=None, outside: bool = False):
    """The test blocks of the cross-validation folds in greys (:func:`fold_colours`, so they are never read as
    classes), each block numbered with its fold, with a legend (beside the map when ``outside``, else in its
    lower left corner)."""
    from matplotlib.colors import ListedColormap

    ax = _axes(ax)
    colours = fold_colours(folds.k)
    fold = _shown(area, folds.fold)
    ax.imshow(np.ma.masked_where(fold < 0, fold), cmap=ListedColormap(colours), vmin=-0.5,
              vmax=folds.k - 0.5, interpolation="nearest", extent=extent_km(area.grid))
    if folds.block:
        res, (left, _, _, top) = area.grid.res, area.grid.bounds
        H, W = folds.fold.shape
        for r in range(0, H, folds.block):
            for c in range(0, W, folds.block):
                f = int(folds.fold[r, c])
                if f >= 0:
                    rc, cc = min(r + folds.block / 2, (r + H) / 2), min(c + folds.block / 2, (c + W) / 2)
                    ax.text((left + cc * res) / 1e3, (top - rc * res) / 1e3, str(f), ha="center", va="center",
                            fontsize=8, color="white" if colours[f][0] < 0.5 else "black")
    handles = [Patch(color=colours[i], label=f"fold {i} test blocks") for i in range(folds.k)]
    handles.append(Patch(facecolor="white", edgecolor="0.6", label="no test block (training side of every fold)"))
    if outside:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=LEGEND_FONTSIZE, frameon=False)
    else:
        ax.legend(handles=handles, loc="lower left", fontsize=LEGEND_FONTSIZE - 1, framealpha=0.8)
    return _finish(ax, f"test blocks of the {folds.k} folds ({folds.block} px blocks, {folds.buffer}-px buffer)")


def plot_history(history: dict, ax=None):
    """Loss and pixel accuracy of training and validation per epoch (the paper's Figure 6)."""
    if ax is None:
        _, ax = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    epochs = np.asarray(history.get("epoch", range(len(history["loss"])))) + 1
    for key, style in (("loss", "-"), ("val_loss", "--")):
        if key in history:
            ax[0].plot(epochs, history[key], style, label=key.replace("_", " "))
    for key, style in (("masked_accuracy", "-"), ("val_masked_accuracy", "--")):
        if key in history:
            ax[1].plot(epochs, history[key], style, label=key.replace("masked_", "").replace("_", " "))
    ax[0].set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    ax[1].set(xlabel="epoch", ylabel="pixel accuracy (labelled pixels)", title="Accuracy")
    for a in ax:
        a.legend()
        a.grid(alpha=0.3)
    return ax


def plot_confusion(cm, classes, ax=None, normalise: bool = True, title: str = ""):
    """A confusion matrix (rows: reference, columns: mapped) as in the paper's Figures 8 and 11, its rows and
    columns labelled by the class table's unit ids (and names), as the maps and legends are. ``classes``: the
    :class:`~lithocore.area.ClassTable` (or bare names, then numbered from 1)."""
    ids = list(getattr(classes, "ids", range(1, len(classes) + 1)))
    names = list(getattr(classes, "names", classes))
    cm = np.asarray(cm, dtype=float)
    ax = ax if ax is not None else plt.subplots(figsize=(6, 5.5))[1]
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalise else cm
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalise else None)
    n = len(names)
    for i in range(n):
        for j in range(n):
            v = shown[i, j]
            if v > 0:
                ax.text(j, i, f"{v:.2f}" if normalise else f"{int(v)}", ha="center", va="center", fontsize=7,
                        color="white" if (v > 0.5 if normalise else v > shown.max() / 2) else "black")
    import textwrap

    ax.set_xticks(range(n), [str(u) for u in ids])
    ax.set_yticks(range(n), [textwrap.fill(f"{u}: {nm}", 24) for u, nm in zip(ids, names)], fontsize=8)
    ax.set_xlabel("mapped class (unit id)")
    ax.set_ylabel("reference class (unit id: name)")
    ax.set_title(title or ("row-normalised" if normalise else "pixel counts"), fontsize=10)
    return ax


def plot_zoom(area: StudyArea, maps: dict, centre: tuple[int, int] | None = None, size: int = 200, axes=None):
    """The same window of several class maps (the geological map first), magnified (the paper's Figure 10).

    Default centre: the labelled pixel with the most class boundaries around it (found on what the figures show of
    the labels, :func:`figure_step`: a province's labels are not widened and filtered whole)."""
    from scipy import ndimage

    if centre is None:
        lab, k = _shown(area, area.labels).astype(np.int32), figure_step(area.shape)
        edges = (np.abs(np.diff(lab, axis=0, prepend=lab[:1])) > 0) | (np.abs(np.diff(lab, axis=1, prepend=lab[:, :1])) > 0)
        density = ndimage.uniform_filter(edges.astype(np.float32), max(1, size // k))
        half = max(1, size // k) // 2
        if half:
            density[:half], density[-half:], density[:, :half], density[:, -half:] = 0, 0, 0, 0
        centre = tuple(int(v) * k for v in np.unravel_index(np.argmax(density), density.shape))
    r0 = int(np.clip(centre[0] - size // 2, 0, max(0, area.shape[0] - size)))
    c0 = int(np.clip(centre[1] - size // 2, 0, max(0, area.shape[1] - size)))
    panels = {area.labels_name: area.labels, **maps}
    if axes is None:
        _, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.9), layout="constrained")
    cmap, norm = class_colormap(area)
    res = abs(area.grid.transform.a)
    x0, y0 = area.grid.transform * (c0 + size / 2, r0 + size / 2)
    bar_m = _nice_length(size * res / 4)
    for ax, (name, m) in zip(np.atleast_1d(axes), panels.items()):
        win = m[r0:r0 + size, c0:c0 + size]
        ax.imshow(np.ma.masked_equal(win, NO_LABEL), cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
        n = bar_m / res  # scale bar, lower left
        ax.plot([size * 0.05, size * 0.05 + n], [size * 0.93] * 2, color="k", lw=3, solid_capstyle="butt")
        ax.text(size * 0.05 + n / 2, size * 0.90, f"{bar_m:g} m" if bar_m < 1000 else f"{bar_m / 1000:g} km",
                ha="center", va="bottom", fontsize=9, bbox=dict(facecolor="white", alpha=0.7, lw=0, pad=1))
    fig = np.atleast_1d(axes)[0].figure
    fig.suptitle(f"{size} x {size} px ({size * res / 1000:g} km) centred at E {x0 / 1000:.1f} km, N {y0 / 1000:.1f} km",
                 fontsize=10)
    fig.legend(handles=class_legend_handles(area.classes), loc="outside lower center", ncols=min(4, len(area.classes)),
               fontsize=LEGEND_FONTSIZE, frameon=False)
    return axes


def _nice_length(m: float) -> float:
    """1, 2 or 5 times a power of ten, not above ``m``."""
    p = 10 ** np.floor(np.log10(max(m, 1e-9)))
    return float(max(v for v in (p, 2 * p, 5 * p) if v <= m))


def figure_check(fig) -> dict:
    """Whether every panel of ``fig`` that shows classes or values can be read: each image or coloured
    scatter has a colour bar, or a legend on its axes or the figure's; an RGB composite needs a title that
    names its bands. Returns ``{"ok": bool, "panels": [...]}`` (one entry per panel with data)."""
    from matplotlib.collections import PathCollection
    from matplotlib.image import AxesImage

    figure_legend = bool(fig.legends) or any(a.get_legend() is not None for a in fig.axes)  # a shared legend
    panels = []
    barred = {(m.get_cmap().name, tuple(np.round(m.get_clim(), 9))) for a in fig.axes
              for m in list(a.get_images()) + list(a.collections) if getattr(m, "colorbar", None) is not None}
    for ax in fig.axes:
        if getattr(ax, "_colorbar", None) is not None or ax.get_label() == "<colorbar>":
            continue
        shown = [a for a in ax.get_images()] + [c for c in ax.collections
                                                if isinstance(c, PathCollection) and c.get_array() is not None]
        for art in shown:
            arr = art.get_array()
            rgb = isinstance(art, AxesImage) and arr is not None and np.ndim(arr) == 3
            if rgb:
                ok, how = bool(ax.get_title()), "RGB, bands in the title"
            elif art.colorbar is not None:
                ok, how = True, "colour bar"
            elif (art.get_cmap().name, tuple(np.round(art.get_clim(), 9))) in barred:
                ok, how = True, "colour bar shared with a panel of the same scale"
            elif ax.get_legend() is not None or figure_legend:
                ok, how = True, "legend"
            elif ax.texts and isinstance(art, AxesImage) and "Blues" in str(art.get_cmap().name):
                ok, how = True, "values written in the cells"  # a confusion matrix
            else:
                ok, how = False, "no colour bar or legend"
            panels.append(dict(title=ax.get_title(), ok=ok, how=how))
    return dict(ok=all(p["ok"] for p in panels), panels=panels)


def save_figure(fig, path, dpi: int = 100) -> None:
    """Save a figure as PNG (atomically), with :func:`figure_check`'s result in its metadata
    (``lithocore:figure-check``); a figure whose data panel has no colour bar or legend is warned about.
    Returns nothing, so that a notebook cell ending with it shows the figure and no bare path."""
    import json
    import warnings

    from .runfolder import atomic_path

    check = figure_check(fig)
    if not check["ok"]:
        bad = [p["title"] or "(untitled)" for p in check["panels"] if not p["ok"]]
        warnings.warn(f"{path}: panels without a colour bar or legend: {bad}", stacklevel=2)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", metadata={"lithocore:figure-check": json.dumps(check)})


def compare_maps(area: StudyArea, layers: dict, *, base: str | None = None, interactive: bool = True,
                 overlay: str | None = None, opacity: float = 0.6):
    """Class maps and value maps of one area as layers to switch and fade over a base layer: in JupyterLab, a
    layer menu and an opacity slider (ipywidgets) redraw one map with its legend or colour bar; under papermill
    or in a static render (``interactive=False``), one figure of the default view, the same drawing.

    ``layers``: name -> class-index map (uint8, drawn in the class table's colours) or float map (drawn with
    a colour bar, e.g. a confidence map), each on the area's grid or every :func:`figure_step`-th pixel of it.
    ``base`` must be one of them or the labels (the default, named by :attr:`StudyArea.labels_name`). Returns the
    widget (interactive) or the figure."""
    base = base or area.labels_name
    maps = {name: _shown(area, m) for name, m in {area.labels_name: area.labels, **layers}.items()}
    names = list(maps)
    overlay = overlay or next((n for n in names if n != base), base)
    cmap, norm = class_colormap(area)
    ext = extent_km(area.grid)

    def draw(top: str, alpha: float):
        fig, ax = plt.subplots(figsize=(9, 7), layout="constrained")
        for name, a in ((base, 1.0), (top, alpha)):
            m = maps[name]
            if np.issubdtype(np.asarray(m).dtype, np.floating):
                im = ax.imshow(np.ma.masked_invalid(np.where(_valid_shown(area, m), m, np.nan)), extent=ext, cmap="magma",
                               vmin=0, vmax=1, alpha=a, interpolation="nearest")
                if name == top:
                    fig.colorbar(im, ax=ax, shrink=0.7, label=f"{name}")
            else:
                shown = np.ma.masked_where((m == NO_LABEL) | ~_valid_shown(area, m), m)
                ax.imshow(shown, extent=ext, cmap=cmap, norm=norm, alpha=a, interpolation="nearest")
        ax.legend(handles=class_legend_handles(area.classes), loc="upper left", bbox_to_anchor=(1.02, 1),
                  fontsize=LEGEND_FONTSIZE, frameon=False, title="unit id: name", title_fontsize=LEGEND_FONTSIZE)
        _finish(ax, f"{top} over {base} (opacity {alpha:.1f})")
        return fig

    if not interactive:
        return draw(overlay, opacity)
    import ipywidgets as widgets
    from IPython.display import display

    top = widgets.Dropdown(options=names, value=overlay, description="layer")
    alpha = widgets.FloatSlider(value=opacity, min=0.0, max=1.0, step=0.05, description="opacity")
    out = widgets.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            fig = draw(top.value, alpha.value)
            display(fig)
            plt.close(fig)

    top.observe(redraw, names="value")
    alpha.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([top, alpha]), out])


# ----------------------------------------------------------------------------------- the map to trust
def plot_ground(area: StudyArea, ax=None):
    """The labels used for training and, hatched in grey, the ground to predict (its withheld labels drawn
    faded when the manifest declared it)."""
    ax = _axes(ax)
    cmap, norm = class_colormap(area)
    ext = extent_km(area.grid)
    held, labels = _shown(area, area.held_out) if area.held_out is not None else None, _shown(area, area.labels)
    if held is not None and (held != NO_LABEL).any():
        ax.imshow(np.ma.masked_where(held == NO_LABEL, held), extent=ext, cmap=cmap, norm=norm,
                  alpha=0.35, interpolation="nearest")
    ax.imshow(np.ma.masked_where((labels == NO_LABEL) | ~_valid_shown(area, labels), labels), extent=ext, cmap=cmap,
              norm=norm, interpolation="nearest")
    ax.contourf(np.flipud(_shown(area, area.predict).astype(float)), levels=[0.5, 1.5], colors="none",
                hatches=["//"], extent=ext)
    handles = class_legend_handles(area.classes) + [
        Patch(facecolor="white", edgecolor="0.3", hatch="//", label="ground to predict"
              + (" (its labels withheld, faded)" if area.predict_declared else ""))]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=LEGEND_FONTSIZE, frameon=False,
              title="unit id: name", title_fontsize=LEGEND_FONTSIZE)
    return _finish(ax, "Training labels and the ground to predict")


def plot_matched_folds(area: StudyArea, fold: np.ndarray, k: int, ax=None, title: str = "matched folds"):
    """Each labelled pixel's fold (greys, :func:`fold_colours`: never the class palette), with a legend."""
    ax = _axes(ax)
    cmap = ListedColormap(fold_colours(k))
    fold = _shown(area, fold)
    ax.imshow(np.ma.masked_where(fold < 0, fold), cmap=cmap, vmin=-0.5, vmax=k - 0.5, interpolation="nearest",
              extent=extent_km(area.grid))
    ax.legend(handles=[Patch(color=cmap(i), label=f"fold {i}") for i in range(k)], loc="lower left",
              fontsize=LEGEND_FONTSIZE - 1, framealpha=0.8)
    return _finish(ax, title)


def plot_distances(ground: np.ndarray, cv: dict, ax=None):
    """Empirical distribution functions of the nearest-label distances: from the ground to predict to the
    labels (``ground``) and from each cross-validation's test pixels to its training side (``cv``)."""
    ax = _axes(ax)
    for name, d, style in [("ground to predict -> labels", ground, dict(color="k", lw=2.5))] + \
            [(n, v, {}) for n, v in cv.items()]:
        d = np.sort(np.asarray(d, float))
        ax.step(d / 1e3, np.arange(1, len(d) + 1) / max(len(d), 1), where="post", label=name, **style)
    ax.set_xlabel("distance to the nearest training label (km)")
    ax.set_ylabel("share of pixels at or below")
    ax.legend(fontsize=LEGEND_FONTSIZE, frameon=False)
    ax.set_title("Nearest-neighbour distances: the prediction task and each cross-validation", fontsize=10)
    return ax


def plot_reliability(before: list[dict], after: list[dict], ax=None):
    """Reliability diagram: accuracy against confidence per bin, before and after calibration."""
    ax = _axes(ax)
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", label="perfectly calibrated")
    for name, bins, m in (("out of fold, as the model says", before, "o"), ("after temperature scaling", after, "s")):
        pts = [(b["confidence"], b["accuracy"]) for b in bins if b["pixels"]]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, marker=m, label=name)
    ax.set_xlabel("confidence (largest class probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=LEGEND_FONTSIZE, frameon=False)
    ax.set_title("Calibration (matched cross-validation, out of fold)", fontsize=10)
    return ax


def plot_trust_map(area: StudyArea, classes: np.ndarray, inside: np.ndarray, ax=None, title: str = "The map to use"):
    """A class map with everything outside the area of applicability greyed out."""
    ax = plot_labels(area, classes, ax=ax, title=title)
    inside = _shown(area, inside)
    grey = np.ma.masked_where(inside | ~_valid_shown(area, inside), np.ones(inside.shape))
    ax.imshow(grey, extent=extent_km(area.grid), cmap=ListedColormap(["#808080"]), alpha=0.75,
              interpolation="nearest")
    handles = class_legend_handles(area.classes) + [Patch(color="#808080", label="outside the area of applicability")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=LEGEND_FONTSIZE, frameon=False,
              title="unit id: name", title_fontsize=LEGEND_FONTSIZE)
    return ax


def plot_value(area: StudyArea, values: np.ndarray, ax=None, *, title: str = "", label: str = "",
               cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None):
    """A value map (NaN and invalid pixels blank) with a colour bar."""
    ax = _axes(ax)
    values = _shown(area, values)
    im = ax.imshow(np.ma.masked_where(~_valid_shown(area, values) | ~np.isfinite(values), values),
                   extent=extent_km(area.grid), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, shrink=0.8, label=label)
    return _finish(ax, title)


def plot_accuracy_by_di(curve: list[dict], threshold: float, ax=None):
    """Out-of-fold accuracy against the dissimilarity index (bins of equal pixel count), with the AOA threshold."""
    ax = _axes(ax)
    if curve:
        ax.plot([c["di_median"] for c in curve], [c["accuracy"] for c in curve], marker="o",
                label="out-of-fold accuracy (DI bins)")
    ax.axvline(threshold, color="firebrick", ls="--", label=f"AOA threshold {threshold:.2f}")
    ax.set_xlabel("dissimilarity index (median of the bin)")
    ax.set_ylabel("overall accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=LEGEND_FONTSIZE, frameon=False)
    ax.set_title("Accuracy against dissimilarity", fontsize=10)
    return ax
