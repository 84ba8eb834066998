"""Mapping a whole scene with a trained FCN: sliding windows, smooth blending, bounded memory, GeoTIFF outputs.

Windows of ``tile`` pixels step by ``tile * (1 - overlap)``; each window's class probabilities are weighted by
a sin^2 taper that falls to zero at the window's edges, and the weighted probabilities are summed and divided
by the summed weights. With 50 % overlap the tapers add up to a constant, so there are no seams. The scene is
padded by reflection (half a tile on every side), so edge pixels are predicted from the centre of a window,
and the output has exactly the input's shape.

Only one row of windows is held at a time (``tile`` rows of the input and of the probability sums): the input
is read, and the output written, a strip of rows at a time (:func:`map_geotiff` works from a GeoTIFF to
GeoTIFFs), so a scene larger than memory can be mapped.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import rasterio

from .data import NO_LABEL, ClassTable, Grid, write_geotiff
from .runfolder import atomic_path

__all__ = ["taper", "predict_strips", "map_array", "map_geotiff", "write_class_map", "read_class_map",
           "class_map_colours"]


def taper(tile: int, floor: float = 1e-3) -> np.ndarray:
    """(tile, tile) blending weights: sin^2 in each direction, never quite zero.

    Examples
    --------
    >>> w = taper(8)
    >>> w.shape, bool(w[3:5, 3:5].min() > 0.8 > w[0, 0])
    ((8, 8), True)
    """
    s = np.sin(np.pi * (np.arange(tile) + 0.5) / tile) ** 2
    return np.maximum(np.outer(s, s), floor).astype(np.float32)


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """Reflect indices into [0, n) (edge not repeated), for any overshoot."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m < n, m, period - m)


def predict_strips(predict: Callable[[np.ndarray], np.ndarray], read_rows: Callable[[int, int], np.ndarray],
                   shape: tuple[int, int], n_classes: int, *, tile: int = 256, overlap: float = 0.5,
                   batch_size: int = 8, progress: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_row, probabilities)`` for consecutive strips of the scene, top to bottom.

    ``read_rows(r0, r1)`` returns the input rows ``r0:r1`` as (C, r1 - r0, W), normalised; ``predict`` maps a
    (B, tile, tile, C) batch to (B, tile, tile, n_classes) probabilities. The strips cover the scene exactly.
    """
    from tqdm.auto import tqdm

    H, W = shape
    if tile % 32:
        raise ValueError(f"the tile must be a multiple of 32, got {tile}")
    step = max(1, int(round(tile * (1 - overlap))))
    pad = tile // 2
    ph, pw = H + 2 * pad, W + 2 * pad  # padded scene
    n_rows = max(1, math.ceil((ph - tile) / step) + 1)
    n_cols = max(1, math.ceil((pw - tile) / step) + 1)
    cols = [min(j * step, max(0, pw - tile)) for j in range(n_cols)]
    rows = [min(i * step, max(0, ph - tile)) for i in range(n_rows)]
    rows = sorted(set(rows))
    weight = taper(tile)
    col_idx = _reflect(np.arange(pw) - pad, W)
    acc = np.zeros((n_classes, tile, pw), np.float32)  # probability sums for padded rows [base, base + tile)
    wsum = np.zeros((tile, pw), np.float32)
    base = 0

    def flush(upto: int):
        """The scene rows among padded rows [base, upto), which no later window touches."""
        first, last = max(base, pad), min(upto, pad + H)
        if last > first:
            sl = slice(first - base, last - base)
            return first - pad, acc[:, sl, pad:pad + W] / wsum[sl, pad:pad + W]
        return None

    bar = tqdm(total=len(rows) * len(cols), desc="mapping", unit="window", disable=not progress)
    for r in rows:
        if r > base:
            done = flush(r)
            if done is not None:
                yield done
            d = r - base
            acc = np.roll(acc, -d, axis=1)
            wsum = np.roll(wsum, -d, axis=0)
            acc[:, tile - d:] = 0
            wsum[tile - d:] = 0
            base = r
        row_idx = _reflect(np.arange(r, r + tile) - pad, H)
        lo, hi = int(row_idx.min()), int(row_idx.max()) + 1
        block = read_rows(lo, hi)  # (C, hi - lo, W)
        strip = block[:, row_idx - lo][:, :, col_idx]  # (C, tile, pw)
        windows = np.stack([strip[:, :, c:c + tile] for c in cols]).transpose(0, 2, 3, 1)
        for b0 in range(0, len(cols), batch_size):
            probs = np.asarray(predict(windows[b0:b0 + batch_size]), dtype=np.float32)
            for k, c in enumerate(cols[b0:b0 + batch_size]):
                acc[:, :, c:c + tile] += probs[k].transpose(2, 0, 1) * weight
                wsum[:, c:c + tile] += weight
            bar.update(len(probs))
    bar.close()
    done = flush(base + tile)
    if done is not None:
        yield done


def _normalised(raw: np.ndarray, valid: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(raw - mean) / std, with 0 where a pixel is not valid or not finite (as in training)."""
    x = (raw - mean) / std
    return np.where(valid[None] & np.isfinite(x), x, 0.0).astype(np.float32)


def _keras_predict(model):
    def predict(x):
        return np.asarray(model.predict_on_batch(x))
    return predict


def map_array(model, stack: np.ndarray, mask: np.ndarray, mean, std, *, tile: int = 256, overlap: float = 0.5,
              batch_size: int = 8, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Map an in-memory stack: (class index map, confidence), each exactly the scene's shape.

    Class index :data:`~lithocore.data.NO_LABEL` and confidence NaN outside ``mask``.
    """
    mean = np.asarray(mean, np.float32)[:, None, None]
    std = np.asarray(std, np.float32)[:, None, None]
    H, W = mask.shape

    def read_rows(r0, r1):
        return _normalised(stack[:, r0:r1], mask[r0:r1], mean, std)

    n_classes = int(model.output_shape[-1])
    classes = np.full((H, W), NO_LABEL, np.uint8)
    conf = np.full((H, W), np.nan, np.float32)
    for r0, probs in predict_strips(_keras_predict(model), read_rows, (H, W), n_classes, tile=tile, overlap=overlap,
                                    batch_size=batch_size, progress=progress):
        r1 = r0 + probs.shape[1]
        classes[r0:r1] = np.argmax(probs, axis=0)
        conf[r0:r1] = probs.max(axis=0)
    classes[~mask] = NO_LABEL
    conf[~mask] = np.nan
    return classes, conf


def class_map_colours(table: ClassTable) -> dict:
    """GeoTIFF colour table: class id (the pixel value) -> RGBA (the class table's colours); nodata clear."""
    out = {}
    for cid, c in zip(table.ids, table.colours):
        c = c.lstrip("#")
        out[int(cid)] = (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), 255)
    out[table.id_dtype()[1]] = (0, 0, 0, 0)
    return out


def _class_tags(table: ClassTable) -> dict:
    meta = {f"class_{cid}": n for n, cid in zip(table.names, table.ids)}
    meta["classes"] = json.dumps(table.to_list(), default=str)
    meta["pixel_values"] = "class ids of the class table (as in the label raster)"
    return meta


def write_class_map(path, classes: np.ndarray, grid: Grid, table: ClassTable, *, tags: dict | None = None) -> Path:
    """A class map GeoTIFF for QGIS from class *indices*: the file stores the class *ids* of the class table
    (as the label raster does), with the table's colours and names; nodata where no class."""
    dtype, nodata = table.id_dtype()
    colormap = class_map_colours(table) if dtype in ("uint8", "uint16") else None
    return write_geotiff(path, table.to_ids(classes), grid, nodata=nodata, band_names=["class id"],
                         colormap=colormap, tags=_class_tags(table) | (tags or {}))


def read_class_map(path, table: ClassTable) -> tuple[np.ndarray, dict]:
    """A class map written by the workbook, as class indices (:data:`NO_LABEL` for none), and its tags.

    Refuses a map written with another class table (other ids, names or order)."""
    with rasterio.open(path) as src:
        ids = src.read(1)
        tags = src.tags()
    stored = json.loads(tags.get("classes", "[]"))
    if [(c["id"], c["name"]) for c in stored] != list(zip(table.ids, table.names)):
        raise ValueError(f"{path}: written with the class table {[(c['id'], c['name']) for c in stored]}, not the "
                         f"study area's {list(zip(table.ids, table.names))}")
    return table.to_indices(ids), tags


def map_geotiff(model, stack_path, out_dir, table: ClassTable, mean, std, *, mask: np.ndarray | None = None,
                tile: int = 256, overlap: float = 0.5, batch_size: int = 8, strip_rows: int | None = None,
                progress: bool = True, prefix: str = "fcn", tags: dict | None = None) -> dict:
    """Map a stack GeoTIFF into ``<prefix>_classes.tif`` and ``<prefix>_confidence.tif``, reading and writing by
    strips of rows (memory bounded by the tile and the scene's width, not its height).

    Pixels where any channel is NaN (or outside ``mask``) are nodata. The class map stores class ids (as the
    label raster does); ``tags`` (provenance) are written into both files. Returns paths and timings.
    """
    import contextlib

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mean = np.asarray(mean, np.float32)[:, None, None]
    std = np.asarray(std, np.float32)[:, None, None]
    t0 = time.perf_counter()
    paths = {k: out_dir / f"{prefix}_{k}.tif" for k in ("classes", "confidence")}
    dtype, nodata = table.id_dtype()
    with contextlib.ExitStack() as stack_ctx:
        tmp = {k: stack_ctx.enter_context(atomic_path(p)) for k, p in paths.items()}
        with rasterio.open(stack_path) as src:
            H, W = src.height, src.width
            grid = Grid(src.crs, src.transform, W, H)

            def valid_rows(r0, r1, raw):
                ok = np.isfinite(raw).all(axis=0)
                return ok & mask[r0:r1] if mask is not None else ok

            def read_rows(r0, r1):
                raw = src.read(window=rasterio.windows.Window(0, r0, W, r1 - r0)).astype(np.float32)
                return _normalised(raw, valid_rows(r0, r1, raw), mean, std)

            prof_c = grid.profile(1, dtype, nodata)
            prof_p = grid.profile(1, "float32")
            n_classes = int(model.output_shape[-1])
            with rasterio.open(tmp["classes"], "w", **prof_c) as dc, rasterio.open(tmp["confidence"], "w", **prof_p) as dp:
                for r0, probs in predict_strips(_keras_predict(model), read_rows, (H, W), n_classes, tile=tile,
                                                overlap=overlap, batch_size=batch_size, progress=progress):
                    n = probs.shape[1]
                    raw = src.read(window=rasterio.windows.Window(0, r0, W, n))
                    ok = valid_rows(r0, r0 + n, raw)
                    cls = table.to_ids(np.where(ok, np.argmax(probs, axis=0), NO_LABEL).astype(np.uint8))
                    conf = np.where(ok, probs.max(axis=0), np.nan).astype(np.float32)
                    win = rasterio.windows.Window(0, r0, W, n)
                    dc.write(cls[None], window=win)
                    dp.write(conf[None], window=win)
                if dtype in ("uint8", "uint16"):
                    dc.write_colormap(1, class_map_colours(table))
                dc.set_band_description(1, "class id")
                extra = {k: str(v) for k, v in (tags or {}).items()}
                dc.update_tags(**_class_tags(table), **extra)
                dp.set_band_description(1, "confidence (largest class probability)")
                dp.update_tags(**extra)
    seconds = time.perf_counter() - t0
    return dict(classes=str(paths["classes"]), confidence=str(paths["confidence"]), seconds=seconds,
                pixels_per_second=H * W / seconds)
