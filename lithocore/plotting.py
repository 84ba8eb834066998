"""Maps of a study area's layers, in map coordinates (km), ready for a notebook or a report.

Every function takes a :class:`~lithocore.data.StudyArea` (and an optional matplotlib ``Axes``) and returns the
``Axes`` it drew on; :func:`plot_layers` puts them all on one figure.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import BoundaryNorm, LightSource, ListedColormap
from matplotlib.patches import Patch

from .data import NO_LABEL, Grid, StudyArea

__all__ = ["extent_km", "plot_composite", "plot_hillshade", "plot_points", "plot_coarse", "plot_labels",
           "plot_layers", "class_colormap", "plot_tiles", "plot_history", "plot_confusion", "plot_zoom"]


def extent_km(grid: Grid) -> list[float]:
    """imshow extent (left, right, bottom, top) in kilometres."""
    left, bottom, right, top = grid.bounds
    return [left / 1e3, right / 1e3, bottom / 1e3, top / 1e3]


def _axes(ax):
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5.5))
    return ax


def _finish(ax, title: str):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("easting (km)")
    ax.set_ylabel("northing (km)")
    ax.ticklabel_format(useOffset=False, style="plain")
    return ax


def _stretch(a: np.ndarray, mask: np.ndarray, pct: tuple[float, float] = (2, 98)) -> np.ndarray:
    vals = a[mask & np.isfinite(a)]
    lo, hi = np.percentile(vals, pct) if vals.size else (0.0, 1.0)
    return np.clip((a - lo) / (hi - lo + 1e-12), 0, 1)


def plot_composite(area: StudyArea, bands: tuple[str, str, str] | None = None, ax=None):
    """False-colour composite (2-98 % stretch). Default: ASTER 3N-2-1 where present, else the first 3 guide bands."""
    ax = _axes(ax)
    names = area.guide_names or area.extra_names
    stack = area.guide if area.guide_names else area.extra
    if bands is None:
        bands = ("B3N", "B2", "B1") if {"B3N", "B2", "B1"} <= set(names) else tuple(names[:3])
    idx = [names.index(b) for b in bands]
    while len(idx) < 3:
        idx.append(idx[-1])
    rgb = np.dstack([_stretch(stack[i], area.mask) for i in idx])
    rgb[~area.mask] = 1.0
    ax.imshow(rgb, extent=extent_km(area.grid))
    return _finish(ax, f"False-colour composite (R,G,B = {', '.join(bands)})")


def plot_hillshade(area: StudyArea, layer: str = "dem", ax=None, cmap: str = "terrain"):
    """A fine layer (by default the DEM) as colour over its hillshade."""
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


def plot_labels(area: StudyArea, labels: np.ndarray | None = None, ax=None, title: str = "Geological map",
                legend: bool = True):
    """A class map (default: the study area's labels) with the class table's colours and a legend;
    unlabelled pixels are white."""
    ax = _axes(ax)
    lab = area.labels if labels is None else labels
    shown = np.ma.masked_where((lab == NO_LABEL) | ~area.mask, lab)
    cmap, norm = class_colormap(area)
    ax.imshow(shown, extent=extent_km(area.grid), cmap=cmap, norm=norm, interpolation="nearest")
    if legend:
        handles = [Patch(facecolor=c, edgecolor="k", linewidth=0.3, label=f"{i}: {n}")
                   for i, n, c in zip(area.classes.ids, area.classes.names, area.classes.colours)]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=7, frameon=False)
    return _finish(ax, title)


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
    return _finish(ax, title or f"{tiles.split} split: {len(tiles.train)} training (black), "
                                f"{len(tiles.val)} validation (red) tiles")


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


def plot_confusion(cm, names, ax=None, normalise: bool = True, title: str = ""):
    """A confusion matrix (rows: reference, columns: mapped) as in the paper's Figures 8 and 11."""
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
    labels = [f"{i + 1}" for i in range(n)]
    ax.set_xticks(range(n), labels)
    ax.set_yticks(range(n), [f"{i + 1}: {nm[:28]}" for i, nm in enumerate(names)], fontsize=7)
    ax.set_xlabel("mapped class")
    ax.set_ylabel("reference class")
    ax.set_title(title or ("row-normalised" if normalise else "pixel counts"), fontsize=10)
    return ax


def plot_zoom(area: StudyArea, maps: dict, centre: tuple[int, int] | None = None, size: int = 200, axes=None):
    """The same window of several class maps (the geological map first), magnified (the paper's Figure 10).

    Default centre: the labelled pixel with the most class boundaries around it."""
    from scipy import ndimage

    if centre is None:
        lab = area.labels.astype(np.int32)
        edges = (np.abs(np.diff(lab, axis=0, prepend=lab[:1])) > 0) | (np.abs(np.diff(lab, axis=1, prepend=lab[:, :1])) > 0)
        density = ndimage.uniform_filter(edges.astype(np.float32), size)
        half = size // 2
        density[:half], density[-half:], density[:, :half], density[:, -half:] = 0, 0, 0, 0
        centre = np.unravel_index(np.argmax(density), density.shape)
    r0 = int(np.clip(centre[0] - size // 2, 0, max(0, area.shape[0] - size)))
    c0 = int(np.clip(centre[1] - size // 2, 0, max(0, area.shape[1] - size)))
    panels = {"geological map": area.labels, **maps}
    if axes is None:
        _, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), layout="constrained")
    cmap, norm = class_colormap(area)
    for ax, (name, m) in zip(np.atleast_1d(axes), panels.items()):
        win = m[r0:r0 + size, c0:c0 + size]
        ax.imshow(np.ma.masked_equal(win, NO_LABEL), cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    return axes
