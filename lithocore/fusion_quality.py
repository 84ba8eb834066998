"""How good a fusion is: the fused layers against the synthetic area's truth, Wald's protocol at the coarse scale
(degrade, fuse back, compare), consistency with the measured coarse data, and the calibration of the detail's gain
and smoothing on the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from .area import StudyArea
from .fusion import FusionResult, FusionSettings, _block_nanmean, clr, decompose, fuse, fuse_study_area, guide_bands, preprocess, reduce_to_pole
from .words import count

__all__ = ["read_truth", "score_against_truth", "wald_protocol", "consistency", "calibrate_detail"]


def _corr_rmse(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok].astype(np.float64), b[ok].astype(np.float64)
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return float("nan"), float(np.sqrt(np.mean((a - b) ** 2))) if a.size else float("nan")
    return float(np.corrcoef(a, b)[0, 1]), float(np.sqrt(np.mean((a - b) ** 2)))


def read_truth(area: StudyArea, result: FusionResult) -> dict[str, np.ndarray]:
    """The true fine fields named in the manifest's ``truth`` section, preprocessed as the fusion was
    (CLR over the oxides, reduction to the pole of the magnetic field). Empty when there is no truth."""
    import yaml

    man = yaml.safe_load(Path(area.manifest_path).read_text())
    truth = man.get("truth") or {}
    base = Path(area.manifest_path).parent
    out: dict[str, np.ndarray] = {}
    for key, rel in truth.items():
        with rasterio.open(base / rel) as src:
            arr = src.read().astype(np.float32)
            names = [d or f"{key}_{i + 1}" for i, d in enumerate(src.descriptions)]
        if key == "geochemistry" and result.preprocessing.get("clr"):
            arr = clr(arr)
        if key == "magnetic":
            layer = next((c for c in area.coarse if c.kind == "coarse" and "inclination" in c.meta), None)
            if layer is not None and result.preprocessing.get("rtp"):
                arr = reduce_to_pole(arr[0], area.grid.res, float(layer.meta["inclination"]),
                                     float(layer.meta.get("declination", 0)))[None]
            names = [layer.name if layer is not None else "magnetic"]
        for n, a in zip(names, arr):
            out[n] = np.where(area.mask, a, np.nan)
    return out


def score_against_truth(result: FusionResult, truth: dict[str, np.ndarray]) -> list[dict]:
    """Correlation and RMSE of fused and of bilinear layers against the true fine fields, per layer."""
    rows = []
    for i, name in enumerate(result.names):
        if name not in truth:
            continue
        cf, rf = _corr_rmse(result.fused[i], truth[name])
        cb, rb = _corr_rmse(result.upsampled[i], truth[name])
        rows.append(dict(layer=name, corr_fused=cf, corr_bilinear=cb, rmse_fused=rf, rmse_bilinear=rb,
                         fusion_better=bool(rf < rb)))
    return rows


def wald_protocol(area: StudyArea, ratio: int = 2, *, method: str = FusionSettings.method,
                  guide: list[str] | None = None, guide_transform: str = FusionSettings.guide_transform,
                  **kwargs) -> dict:
    """Wald's protocol at the coarse scale: each coarse layer is degraded ``ratio`` times, fused back with the
    guide averaged to the coarse grid, and compared with the original (raw values, no preprocessing).

    Returns per-layer correlation and RMSE (fused and bilinear), and ERGAS and SAM across the layers whose
    values are all positive (both measures assume positive quantities). A grid too small to degrade and fit
    again is left out with its reason (``skipped`` and ``note``). The ratio here is that of the
    coarse grid to a grid ``ratio`` times coarser (the 2 km / 15 m ratio itself cannot be degraded further);
    ``detail_smoothing``, in fine pixels, does not carry over to this scale and is not applied.
    """
    kwargs.pop("detail_smoothing", None)
    if not area.guide_names:
        return dict(ratio=ratio, layers=[], note="no guide bands: nothing was fused")
    bands, names = guide_bands(area, guide, guide_transform)
    rows, fused_all, ref_all, up_all, skipped = [], [], [], [], []
    by_factor: dict[int, np.ndarray] = {}
    for c in area.coarse:
        if c.factor not in by_factor:
            by_factor[c.factor] = np.stack([decompose(np.where(area.mask, b, np.nan), area.grid, c.factor)[0]
                                            for b in bands])
        g_coarse = by_factor[c.factor]
        ref = c.values.astype(np.float64)
        ok = np.isfinite(g_coarse).all(axis=0) & np.isfinite(ref)
        reduced_grid = c.grid.coarsen(ratio)
        degraded = _block_nanmean(np.where(ok, ref, np.nan), ratio, reduced_grid.shape)
        if np.isfinite(degraded).sum() < bands.shape[0] + 3:
            skipped.append(f"{c.name}: {count(int(np.isfinite(degraded).sum()), 'cell')} once degraded {ratio} times, "
                           f"where the fit of {count(bands.shape[0], 'band')} needs at least {bands.shape[0] + 3}")
            continue
        f, u, _ = fuse(np.where(ok, g_coarse, np.nan), degraded, c.grid, ratio, mask=ok, method=method,
                       guide_names=names, **kwargs)
        cf, rf = _corr_rmse(f, np.where(ok, ref, np.nan))
        cb, rb = _corr_rmse(u, np.where(ok, ref, np.nan))
        rows.append(dict(layer=c.name, corr_fused=cf, corr_bilinear=cb, rmse_fused=rf, rmse_bilinear=rb))
        if np.nanmin(ref[ok]) > 0:
            fused_all.append(np.where(ok, f, np.nan))
            up_all.append(np.where(ok, u, np.nan))
            ref_all.append(np.where(ok, ref, np.nan))
    out = dict(ratio=ratio, layers=rows)
    if skipped:
        out["skipped"] = skipped
        out["note"] = "some coarse grids are too small to degrade and fuse again: " + "; ".join(skipped)
    if ref_all:
        out["positive_layers"] = len(ref_all)
        out["ergas_fused"], out["sam_fused_deg"] = _ergas_sam(np.stack(fused_all), np.stack(ref_all), ratio)
        out["ergas_bilinear"], out["sam_bilinear_deg"] = _ergas_sam(np.stack(up_all), np.stack(ref_all), ratio)
    return out


def _ergas_sam(est: np.ndarray, ref: np.ndarray, ratio: int) -> tuple[float, float]:
    """ERGAS = 100 (h/l) sqrt(mean_k (RMSE_k / mean_k)^2), h/l = 1/ratio; SAM: mean spectral angle (degrees)."""
    ok = np.isfinite(est).all(0) & np.isfinite(ref).all(0)
    e, r = est[:, ok].astype(np.float64), ref[:, ok].astype(np.float64)
    rmse = np.sqrt(((e - r) ** 2).mean(axis=1))
    ergas = 100.0 / ratio * np.sqrt(np.mean((rmse / r.mean(axis=1)) ** 2))
    cos = (e * r).sum(0) / (np.linalg.norm(e, axis=0) * np.linalg.norm(r, axis=0))
    sam = np.degrees(np.arccos(np.clip(cos, -1, 1))).mean()
    return float(ergas), float(sam)


def consistency(result: FusionResult, area: StudyArea) -> list[dict]:
    """Each fused layer averaged back over the coarse cells, against the coarse input (after preprocessing):
    correlation and RMSE relative to the coarse layer's standard deviation."""
    layers = {c.name: c for c in preprocess(area, use_clr=result.preprocessing.get("clr", True),
                                            use_rtp=result.preprocessing.get("rtp", True))}
    rows = []
    for i, name in enumerate(result.names):
        c = layers[name]
        back = _block_nanmean(result.fused[i], c.factor, c.grid.shape)
        # whole cells only: partial edge cells hold a biased part of the cell
        full = _block_nanmean(area.mask.astype(np.float64), c.factor, c.grid.shape) > 0.999
        ok = full & np.isfinite(back) & np.isfinite(c.values)
        r, e = _corr_rmse(np.where(ok, back, np.nan), np.where(ok, c.values, np.nan))
        rows.append(dict(layer=name, corr=r, relative_rmse=e / float(np.nanstd(c.values[ok]) or 1.0)))
    return rows


def calibrate_detail(area: StudyArea, *, gains=(0.1, 0.2, 0.3, 0.5, 0.75, 1.0), smoothings=(0.0, 1.5, 3.0, 5.0),
                     guide_transforms=("none", "clr"), **kwargs) -> list[dict]:
    """Choose the detail gain, smoothing and guide transform on an area with known fine truth.

    For every combination: the RMSE of the fused layers against the truth, relative to the RMSE of bilinear
    upsampling, averaged over the layers (below 1: fusion helps). Use it on one synthetic area and apply the
    best setting to another, never to the area it was chosen on.
    """
    rows = []
    for gt in guide_transforms:
        for sm in smoothings:
            res = fuse_study_area(area, guide_transform=gt, detail_smoothing=sm, detail_gain=1.0, progress=False,
                                  **kwargs)
            truth = read_truth(area, res)
            for k in gains:
                rel = []
                for i, name in enumerate(res.names):
                    if name not in truth:
                        continue
                    ok = area.mask & np.isfinite(truth[name])
                    d = (truth[name] - res.upsampled[i])[ok].astype(np.float64)
                    det = (res.fused[i] - res.upsampled[i])[ok].astype(np.float64)
                    rel.append(float(np.sqrt(np.mean((d - k * det) ** 2)) / np.sqrt(np.mean(d**2))))
                rows.append(dict(guide_transform=gt, detail_smoothing=sm, detail_gain=k,
                                 relative_rmse=float(np.mean(rel)) if rel else float("nan"),
                                 worst_layer=float(np.max(rel)) if rel else float("nan")))
    return sorted(rows, key=lambda r: r["relative_rmse"])
