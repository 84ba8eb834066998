"""Multi-source fusion (the paper's section 2.1, Eq. 1-2): coarse layers sharpened with the fine guide bands.

For each coarse layer ``geo`` (2 km geochemistry, aeromagnetics) and guide bands ``MS_i`` (15 m):

1. **Decomposition.** Each guide band is split into a low-frequency part and a high-frequency part. The
   low-pass is *matched to the coarse cell*: the band is averaged over each coarse cell (a box filter, the
   footprint a coarse cell value stands for) and interpolated back to the fine grid exactly as the coarse
   layer is (bilinearly). So the low-frequency part of a band holds what a coarse survey of that band would
   hold, and the high-frequency part, ``MS_Hi = MS_i - MS_Li``, the detail below the coarse cell.
   (``lowpass="gaussian"`` offers a Gaussian of standard deviation half a coarse cell instead.)
2. **Eq. 1.** The coefficients ``f_i`` relating ``geo`` to the guide's low frequencies are estimated at the
   coarse scale, by least squares of the coarse values on the cell means of the (standardised) guide bands,
   with an intercept. ``method="global"``: one set for the scene, a ridge regression whose penalty is chosen
   by leave-one-out cross-validation (the bands are collinear and the coarse cells few: ordinary least
   squares overfits and its coefficients explode on the fine detail). ``method="local"``: a set per coarse
   cell, fitted in a moving window of ``window x window`` cells with a fixed ridge penalty, then interpolated.
   A regression whose cross-validated R2 is below ``min_cv_r2`` injects no detail: an unrelated layer does not
   gain fake texture.
3. **Eq. 2.** ``geo_f = geo_c + sum_i f_i * MS_Hi``, with ``geo_c`` the coarse layer resampled bilinearly to
   the fine grid.

Preprocessing, each a parameter: the centred log-ratio (CLR) of each group of compositional point samples
(the closure problem), and the reduction to the pole (harmonica) of magnetic grids whose manifest entry gives
``inclination`` and ``declination``.

Quality measures: :func:`score_against_truth` (fused and bilinear against known fine fields),
:func:`wald_protocol` (degrade, fuse back, compare: correlation, RMSE, ERGAS, SAM) and
:func:`consistency` (the fused layer averaged back over the coarse cells matches the coarse input).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from .area import CoarseLayer, Grid, StudyArea
from .errors import StudyAreaError

__all__ = ["FusionSettings", "FusionResult", "clr", "reduce_to_pole", "preprocess", "decompose", "fuse",
           "fuse_study_area", "guide_bands", "CALIBRATED_DETAIL", "build_stack", "default_channels",
           "normalisation_stats", "fit_layer", "layer_detail", "smoothing_weights", "smooth_detail",
           "default_channels_for"]


#: Detail gain and smoothing chosen with :func:`calibrate_detail` on synthetic seed 1 (best mean relative RMSE,
#: 0.891, worst layer 0.946; re-derived for the test bed whose truth is at its real resolution).
CALIBRATED_DETAIL = dict(detail_gain=0.5, detail_smoothing=5.0)


@dataclass(frozen=True)
class FusionSettings:
    """Every setting that changes the fused stack: the one object notebook 02 and every fallback use, stored
    with the stack (its tags) so that a later stage knows what the stack was made with.

    ``channels`` empty: the default rule of :func:`default_channels`.

    Examples
    --------
    >>> FusionSettings().detail_gain, FusionSettings(detail_gain=1.0).key() != FusionSettings().key()
    (0.5, True)
    >>> FusionSettings.from_dict(FusionSettings(channels=("dem",)).to_dict()) == FusionSettings(channels=("dem",))
    True
    """

    use_clr: bool = True  # centred log-ratio of each group of point samples
    use_rtp: bool = True  # reduction to the pole of magnetic grids with inclination/declination
    method: str = "global"  # Eq. 1 fit: "global" or "local"
    guide_transform: str = "none"  # guide bands as they are, or "clr" / "log"
    detail_gain: float = CALIBRATED_DETAIL["detail_gain"]  # Eq. 2 gain; 1.0 is the paper's
    detail_smoothing: float = CALIBRATED_DETAIL["detail_smoothing"]  # fine pixels; 0.0 is the paper's
    channels: tuple[str, ...] = ()  # the stack's channels; empty: the default rule

    def __post_init__(self):
        if self.method not in ("global", "local"):
            raise ValueError(f"unknown fusion method {self.method!r}: 'global' or 'local'")
        if self.guide_transform not in ("none", "clr", "log"):
            raise ValueError(f"unknown guide transform {self.guide_transform!r}: 'none', 'clr' or 'log'")
        object.__setattr__(self, "channels", tuple(self.channels or ()))

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self) | {"channels": list(self.channels)}

    @classmethod
    def from_dict(cls, d: dict) -> "FusionSettings":
        return cls(**{k: (tuple(v) if k == "channels" else v) for k, v in d.items() if k in cls.__dataclass_fields__})

    def fuse_kwargs(self) -> dict:
        return dict(use_clr=self.use_clr, use_rtp=self.use_rtp, method=self.method,
                    guide_transform=self.guide_transform, detail_gain=self.detail_gain,
                    detail_smoothing=self.detail_smoothing)

    def key(self) -> str:
        from .runfolder import key

        return key(self.to_dict())


# ------------------------------------------------------------------------------------ preprocessing
def clr(parts: np.ndarray) -> np.ndarray:
    """Centred log-ratio over the first axis: ``ln(x_i / g(x))``, g the geometric mean of the parts.

    Examples
    --------
    >>> [round(float(v), 3) for v in clr(np.array([[1.0], [4.0]])).ravel()]
    [-0.693, 0.693]
    """
    parts = np.asarray(parts, dtype=np.float64)
    if np.any(parts[np.isfinite(parts)] <= 0):
        raise ValueError("the centred log-ratio needs strictly positive parts")
    logs = np.log(parts)
    return (logs - logs.mean(axis=0, keepdims=True)).astype(np.float32)


def reduce_to_pole(values: np.ndarray, res: float, inclination: float, declination: float) -> np.ndarray:
    """Reduction to the pole of a gridded magnetic anomaly (harmonica), with edge padding against FFT wrap.

    NaN cells are filled with the mean before filtering and put back afterwards.
    """
    import harmonica as hm
    import xarray as xr

    v = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(v)
    filled = np.where(bad, np.nanmean(v), v)
    pad = (max(2, v.shape[0] // 2), max(2, v.shape[1] // 2))
    padded = np.pad(filled, ((pad[0],) * 2, (pad[1],) * 2), mode="reflect")
    north = np.arange(padded.shape[0])[::-1] * res  # rows run south
    east = np.arange(padded.shape[1]) * res
    da = xr.DataArray(padded[::-1], coords={"northing": north[::-1], "easting": east}, dims=("northing", "easting"))
    with warnings.catch_warnings():
        # harmonica 0.7 and xrft 1.0 call xarray's deprecated ``drop`` and xrft's ifft without ``lag`` inside
        # ``reduction_to_pole``: FutureWarnings about their own code, which a user cannot act on (the result
        # does not depend on them: the coordinates are dropped and rebuilt by harmonica). Only those are muted.
        warnings.filterwarnings("ignore", message="dropping variables using `drop` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Default ifft's behaviour", category=FutureWarning)
        rtp = hm.reduction_to_pole(da, inclination=inclination, declination=declination).values[::-1]
    out = rtp[pad[0]:pad[0] + v.shape[0], pad[1]:pad[1] + v.shape[1]].astype(np.float32)
    out[bad] = np.nan
    return out


def preprocess(area: StudyArea | list[CoarseLayer], *, use_clr: bool = True, use_rtp: bool = True) -> list[CoarseLayer]:
    """The coarse layers (of a study area, or given as a list) after preprocessing: CLR within each group of point
    samples (one manifest entry), reduction to the pole of grids with ``inclination``/``declination`` in their
    manifest entry."""
    coarse = area if isinstance(area, list) else area.coarse
    out = []
    groups: dict[str, list[CoarseLayer]] = {}
    for c in coarse:
        if c.kind == "points" and use_clr:
            groups.setdefault(c.meta.get("group", c.source), []).append(c)
    done = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        for m in members:
            bad = np.isfinite(m.values) & (m.values <= 0)
            if bad.any():
                n = f"{int(bad.sum())} of {int(np.isfinite(m.values).sum())} gridded cells"
                if m.meta.get("samples_positive", False):  # the samples are fine: the gridding overshot
                    why = (f"the samples are all positive, but gridding them without logarithms ('log: false') "
                           f"overshoots below zero in {n}; grid them with 'log: true' (or leave 'log' out)")
                else:
                    why = (f"{n} are zero or negative because some samples are; the centred log-ratio needs "
                           f"positive parts: check those samples (below detection: 'below_detection: half')")
                raise StudyAreaError(m.source, f"layer '{m.name}': {why}, or fuse with use_clr=False")
        t = clr(np.stack([m.values for m in members]))
        for m, v in zip(members, t):
            done[m.name] = replace(m, values=v, units="clr", meta={**m.meta, "preprocessing": "clr"})
    for c in coarse:
        if c.name in done:
            out.append(done[c.name])
        elif use_rtp and c.kind == "coarse" and "inclination" in c.meta:
            v = reduce_to_pole(c.values, c.grid.res, float(c.meta["inclination"]), float(c.meta.get("declination", 0)))
            out.append(replace(c, values=v, meta={**c.meta, "preprocessing": "rtp"}))
        else:
            out.append(c)
    return out


# ------------------------------------------------------------------------------------- scale change
def _block_nanmean(a: np.ndarray, f: int, shape: tuple[int, int]) -> np.ndarray:
    """Mean of each f x f block (NaN ignored) on a grid of ``shape`` (partial edge blocks included)."""
    h, w = shape
    padded = np.full((h * f, w * f), np.nan, dtype=np.float64)
    padded[: a.shape[0], : a.shape[1]] = a
    blocks = padded.reshape(h, f, w, f)
    count = np.isfinite(blocks).sum(axis=(1, 3))
    total = np.nansum(blocks, axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _to_fine(values: np.ndarray, coarse: Grid, fine: Grid) -> np.ndarray:
    return CoarseLayer("", np.asarray(values, np.float32), coarse, 1).to_fine(fine)


def decompose(band: np.ndarray, fine: Grid, factor: int, lowpass: str = "box") -> tuple[np.ndarray, np.ndarray]:
    """Split a fine band into (cell means on the coarse grid, low-frequency part on the fine grid).

    The high-frequency part is ``band - low``.

    Examples
    --------
    >>> from rasterio.crs import CRS
    >>> from rasterio.transform import from_origin
    >>> g = Grid(CRS.from_epsg(32646), from_origin(0, 80, 10, 10), 8, 8)
    >>> means, low = decompose(np.ones((8, 8)), g, 4)
    >>> means.shape, bool(np.allclose(low, 1))
    ((2, 2), True)
    """
    cgrid = fine.coarsen(factor)
    if lowpass == "box":
        means = _block_nanmean(band, factor, cgrid.shape)
        return means, _to_fine(means, cgrid, fine)
    if lowpass == "gaussian":
        filled = np.where(np.isfinite(band), band, np.nanmean(band))
        low = ndimage.gaussian_filter(filled, factor / 2.0, mode="nearest").astype(np.float32)
        return _block_nanmean(low, factor, cgrid.shape), np.where(np.isfinite(band), low, np.nan)
    raise ValueError(f"unknown lowpass {lowpass!r}: 'box' or 'gaussian'")


# -------------------------------------------------------------------------------------- regression
def _design(guide_means: np.ndarray, ok: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    z = (guide_means[:, ok].T - mu) / sd
    return np.column_stack([np.ones(z.shape[0]), z])


def _fit_global(target: np.ndarray, guide_means: np.ndarray, ok: np.ndarray, mu, sd, min_cv_r2: float):
    """Ridge regression of the coarse layer on the standardised cell means, the penalty chosen by
    leave-one-out cross-validation; detail is added only when the cross-validated R2 exceeds ``min_cv_r2``."""
    from sklearn.linear_model import RidgeCV

    X = _design(guide_means, ok, mu, sd)[:, 1:]
    y = target[ok].astype(np.float64)
    model = RidgeCV(alphas=np.logspace(-3, 3, 25), store_cv_results=True).fit(X, y)
    loo_mse = float(model.cv_results_[:, list(model.alphas).index(model.alpha_)].mean())
    var = float(y.var())
    cv_r2 = 1 - loo_mse / var if var > 0 else 0.0
    r2 = float(model.score(X, y)) if var > 0 else 0.0
    beta = np.concatenate([[model.intercept_], model.coef_])
    return beta, dict(r2=r2, cv_r2=cv_r2, alpha=float(model.alpha_), cells=int(y.size),
                      detail_added=bool(cv_r2 > min_cv_r2))


def _fit_local(target, guide_means, ok, mu, sd, window: int, ridge: float):
    """Per-cell ridge regressions in a moving window; returns (p+1, h, w) coefficients."""
    n_b, h, w = guide_means.shape
    coefs = np.full((n_b + 1, h, w), np.nan)
    z = (guide_means - mu[:, None, None]) / sd[:, None, None]
    half = window // 2
    pen = ridge * np.eye(n_b + 1)
    pen[0, 0] = 0.0
    for r in range(h):
        for c in range(w):
            sl = (slice(max(0, r - half), r + half + 1), slice(max(0, c - half), c + half + 1))
            m = ok[sl]
            if m.sum() < 3:
                continue
            X = np.column_stack([np.ones(m.sum()), z[(slice(None), *sl)][:, m].T])
            y = target[sl][m]
            coefs[:, r, c] = np.linalg.solve(X.T @ X + pen * m.sum(), X.T @ y)
    for k in range(n_b + 1):  # cells without a fit take their nearest neighbour's coefficients
        bad = ~np.isfinite(coefs[k])
        if bad.all():
            coefs[k] = 0.0
        elif bad.any():
            idx = ndimage.distance_transform_edt(bad, return_distances=False, return_indices=True)
            coefs[k] = coefs[k][tuple(idx)]
    return coefs


@dataclass
class FusionResult:
    """Fused layers on the fine grid, their plain bilinear counterparts, and how each was made."""

    names: list[str]
    units: list[str]
    fused: np.ndarray  # (n, H, W) float32
    upsampled: np.ndarray  # (n, H, W) float32, bilinear resampling of the (preprocessed) coarse layers
    coefficients: list[dict]  # per layer: intercept, f per guide band (per standard deviation), fit statistics
    guide_names: list[str]
    method: str
    preprocessing: dict = field(default_factory=dict)

    def coefficient_table(self):
        """Coefficients f_i (per standard deviation of band i) as a pandas DataFrame, a row per layer."""
        import pandas as pd

        rows = []
        for name, c in zip(self.names, self.coefficients):
            row = {"layer": name, **{g: c["f"].get(g) for g in self.guide_names}}
            row.update({k: c.get(k) for k in ("r2", "cv_r2", "alpha", "detail_added")})
            rows.append(row)
        cols = ["layer", *self.guide_names, "r2", "cv_r2", "alpha", "detail_added"]
        return pd.DataFrame(rows, columns=cols).set_index("layer")


def fit_layer(means: np.ndarray, coarse_values: np.ndarray, cgrid: Grid, method: str = "global", *,
              guide_names: list[str] | None = None, window: int = 5, ridge: float = 0.1,
              min_cv_r2: float = 0.05) -> tuple[dict, dict]:
    """Eq. 1 for one coarse layer: the coefficients relating it to the guide bands' cell means (``means``,
    (n, h, w) on ``cgrid``). Returns the fit (what :func:`layer_detail` needs) and its statistics. Shared by
    :func:`fuse` and the block-wise path (:mod:`lithocore.blockwise`)."""
    n_b = means.shape[0]
    guide_names = guide_names or [f"band{i + 1}" for i in range(n_b)]
    if not np.isfinite(coarse_values).any():
        raise ValueError("the coarse layer has no valid cell (all nodata)")
    ok = np.isfinite(coarse_values) & np.isfinite(means).all(axis=0)
    mu = np.array([means[i][ok].mean() for i in range(n_b)]) if ok.any() else np.zeros(n_b)
    sd = np.array([means[i][ok].std() for i in range(n_b)]) if ok.any() else np.ones(n_b)
    constant = sd <= 1e-9 * np.maximum(1.0, np.abs(mu))
    if constant.all():
        raise ValueError("every guide band is constant at the coarse scale: nothing to regress on")
    sd = np.where(constant, 1.0, sd)
    if method == "global":
        keep = ~constant
        beta, info = _fit_global(coarse_values, means[keep], ok, mu[keep], sd[keep], min_cv_r2)
        f = np.zeros(n_b)
        f[keep] = beta[1:]
        info.update(intercept=float(beta[0]), f={g: float(v) for g, v in zip(guide_names, f)})
        bands = np.flatnonzero(keep) if info["detail_added"] else np.array([], int)
        return dict(method="global", f=f, sd=sd, bands=bands), info
    if method == "local":
        coefs = _fit_local(coarse_values, means, ok, mu, sd, window, ridge)
        coefs[1:, :, :][constant] = 0.0
        info = dict(intercept=float(np.nanmean(coefs[0])), f={g: float(np.nanmean(coefs[i + 1]))
                                                               for i, g in enumerate(guide_names)},
                    window=window, ridge=ridge, detail_added=True, cells=int(ok.sum()))
        return dict(method="local", coefs=coefs, sd=sd, bands=np.arange(n_b)), info
    raise ValueError(f"unknown method {method!r}: 'global' or 'local'")


def layer_detail(fit: dict, guide: np.ndarray, lows, cgrid: Grid, fine: Grid) -> np.ndarray:
    """Eq. 2's detail on the fine grid ``fine`` (the whole scene or a block of it): the sum over guide bands of
    their coefficient times their high-frequency part (``guide - low``)."""
    detail = np.zeros(fine.shape, dtype=np.float64)
    for i in fit["bands"]:
        if fit["method"] == "global":
            detail += fit["f"][i] / fit["sd"][i] * (guide[i] - lows[i])
        else:
            fi = _to_fine(fit["coefs"][i + 1], cgrid, fine)
            detail += fi / fit["sd"][i] * (guide[i] - lows[i])
    return detail


def smoothing_weights(mask: np.ndarray, sigma: float) -> np.ndarray:
    """The normalising weights of :func:`smooth_detail` (the smoothed mask, at least 1e-6)."""
    return np.maximum(ndimage.gaussian_filter(mask.astype(np.float64), sigma), 1e-6)


def smooth_detail(detail: np.ndarray, mask: np.ndarray, sigma: float, weights: np.ndarray | None = None) -> np.ndarray:
    """A Gaussian of ``sigma`` pixels over the valid pixels only (NaN-aware: the invalid ones neither count nor
    pull the result towards zero). ``weights``: :func:`smoothing_weights` of the mask, when already made."""
    weights = smoothing_weights(mask, sigma) if weights is None else weights
    return ndimage.gaussian_filter(np.where(mask, detail, 0.0), sigma) / weights


def fuse(guide: np.ndarray, coarse_values: np.ndarray, fine: Grid, factor: int, *, mask: np.ndarray | None = None,
         method: str = "global", window: int = 5, ridge: float = 0.1, min_cv_r2: float = 0.05,
         lowpass: str = "box", detail_gain: float = 1.0, detail_smoothing: float = 0.0,
         guide_names: list[str] | None = None, _parts=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Sharpen one coarse layer with the guide bands (Eq. 1-2; the defaults are the paper's equations taken literally,
    the workbook's calibrated ones are :class:`FusionSettings`'s).

    Parameters
    ----------
    guide
        (n, H, W) fine guide bands; NaN outside the valid area.
    coarse_values
        (h, w) coarse layer on ``fine.coarsen(factor)``.
    fine, factor
        The fine grid and the coarse cell size in fine pixels.
    mask
        Valid fine pixels (default: where every guide band is finite). Output is NaN elsewhere.
    method
        ``"global"`` or ``"local"`` least squares (see the module docstring).
    detail_gain, detail_smoothing
        Eq. 2 adds ``detail_gain`` times the detail, smoothed by a Gaussian of ``detail_smoothing`` fine pixels.
        ``1, 0`` is the paper's Eq. 2. Coefficients fitted between 2 km cell means transfer to 15 m detail only
        in part (that detail also holds sensor noise, shading and texture the coarse fit never saw), so a gain
        below 1 is usually better; :func:`calibrate_detail` chooses both on an area with known truth.

    Returns
    -------
    fused, upsampled, info
        The fused layer, the plain bilinear resampling of the coarse layer, and the coefficients and fit
        statistics.

    Examples
    --------
    A coarse layer that is a linear function of the guide's cell means gets the guide's detail back:

    >>> from rasterio.crs import CRS
    >>> from rasterio.transform import from_origin
    >>> rng = np.random.default_rng(0)
    >>> g = Grid(CRS.from_epsg(32646), from_origin(0, 640, 10, 10), 64, 64)
    >>> guide = ndimage.gaussian_filter(rng.standard_normal((2, 64, 64)), (0, 2, 2))
    >>> truth = 3 + 2 * guide[0] - guide[1]
    >>> coarse = truth.reshape(16, 4, 16, 4).mean((1, 3))
    >>> fused, up, info = fuse(guide, coarse, g, 4)
    >>> bool(np.corrcoef(fused.ravel(), truth.ravel())[0, 1] > 0.99 > np.corrcoef(up.ravel(), truth.ravel())[0, 1])
    True
    """
    guide_names = guide_names or [f"band{i + 1}" for i in range(guide.shape[0])]
    mask = np.isfinite(guide).all(axis=0) if mask is None else mask
    cgrid = fine.coarsen(factor)
    if coarse_values.shape != cgrid.shape:
        raise ValueError(f"the coarse layer is {coarse_values.shape} cells but the fine grid at factor {factor} "
                         f"needs {cgrid.shape}: mismatched grids")
    if _parts is None:
        _parts = [decompose(np.where(mask, b, np.nan), fine, factor, lowpass) for b in guide]
    means = np.stack([p[0] for p in _parts])
    fit, info = fit_layer(means, coarse_values, cgrid, method, guide_names=guide_names, window=window, ridge=ridge,
                          min_cv_r2=min_cv_r2)
    upsampled = _to_fine(coarse_values, cgrid, fine)
    detail = layer_detail(fit, guide, [p[1] for p in _parts], cgrid, fine)
    if detail_smoothing > 0:  # suppress sensor noise and sub-pixel texture in the detail
        detail = smooth_detail(detail, mask, detail_smoothing)
    fused = (upsampled + detail_gain * detail).astype(np.float32)
    fused[~mask] = np.nan
    upsampled[~mask] = np.nan
    return fused, upsampled, info


def guide_bands(area: StudyArea, guide: list[str] | None = None, transform: str = "clr") -> tuple[np.ndarray, list[str]]:
    """The guide bands prepared for fusion.

    ``transform="clr"``: centred log-ratios across the bands, ``ln(b_i) - mean_j ln(b_j)``. Topographic
    shading multiplies every band by the same factor, so it cancels exactly, and so does any overall
    brightness; what is left is the *shape* of the spectrum, which is what mineralogy controls.
    ``"log"``: ``ln(b_i)``. ``"none"``: the bands as they are (shading enters the detail). For the logs,
    values below 1e-4 of the median are raised to it.
    """
    area.require_layers("fusion in memory")
    names = list(guide or area.guide_names)
    missing = [g for g in names if g not in area.guide_names]
    if missing:
        raise KeyError(f"no guide band(s) {missing}; have {area.guide_names}")
    bands = area.guide[[area.guide_names.index(g) for g in names]]
    if transform == "none":
        return bands, names
    if transform not in ("clr", "log"):
        raise ValueError(f"unknown guide transform {transform!r}: 'clr', 'log' or 'none'")
    floor = 1e-4 * float(np.nanmedian(np.abs(bands))) or 1e-6
    bands = np.maximum(bands, floor)  # a few dark pixels (water, over-corrected haze) must not break the logs
    if transform == "log" or len(names) < 2:
        return np.log(bands).astype(np.float32), [f"log {n}" for n in names]
    return clr(bands), [f"clr {n}" for n in names]


def fuse_study_area(area: StudyArea, *, use_clr: bool = FusionSettings.use_clr, use_rtp: bool = FusionSettings.use_rtp,
                    method: str = FusionSettings.method, guide: list[str] | None = None,
                    guide_transform: str = FusionSettings.guide_transform,
                    detail_gain: float = FusionSettings.detail_gain,
                    detail_smoothing: float = FusionSettings.detail_smoothing, progress: bool = True,
                    **kwargs) -> FusionResult:
    """Fuse every coarse layer of a study area with its guide bands (all of them, or those named), prepared
    by :func:`guide_bands`. An area without coarse layers passes through (a result with no layers).

    Every default is :class:`FusionSettings`'s (the workbook's calibrated fusion; ``detail_gain=1.0,
    detail_smoothing=0.0`` is the paper's Eq. 2 taken literally, as :func:`fuse` does by default); ``kwargs`` go
    to :func:`fuse` (``window``, ``ridge``, ``min_cv_r2`` of the local fit, ``lowpass``).
    """
    kwargs |= dict(detail_gain=detail_gain, detail_smoothing=detail_smoothing)
    from tqdm.auto import tqdm

    layers = preprocess(area, use_clr=use_clr, use_rtp=use_rtp)
    H, W = area.shape
    if not area.guide_names:  # no guide bands: every coarse layer is brought to the fine grid bilinearly
        up = [np.where(area.mask, c.to_fine(area.grid), np.nan).astype(np.float32) for c in layers]
        coefs = [dict(f={}, detail_added=False, note="no guide bands: bilinear resampling only",
                      preprocessing=c.meta.get("preprocessing", "none")) for c in layers]
        arr = np.stack(up) if up else np.zeros((0, H, W), np.float32)
        return FusionResult([c.name for c in layers], [c.units for c in layers], arr, arr.copy(), coefs, [], method,
                            dict(clr=use_clr, rtp=use_rtp, guide_transform=guide_transform))
    bands, names = guide_bands(area, guide, guide_transform)
    cache: dict[int, list] = {}
    fused, up, coefs = [], [], []
    for c in tqdm(layers, desc="fusing", disable=not progress):
        if c.factor not in cache:
            cache[c.factor] = [decompose(np.where(area.mask, b, np.nan), area.grid, c.factor,
                                         kwargs.get("lowpass", "box")) for b in bands]
        try:
            f, u, info = fuse(bands, c.values, area.grid, c.factor, mask=area.mask, method=method,
                              guide_names=names, _parts=cache[c.factor], **kwargs)
        except ValueError as exc:
            raise StudyAreaError(c.source, f"layer '{c.name}': {exc}") from None
        fused.append(f)
        up.append(u)
        coefs.append(info | {"preprocessing": c.meta.get("preprocessing", "none")})
    stack = lambda a: np.stack(a) if a else np.zeros((0, H, W), np.float32)
    return FusionResult([c.name for c in layers], [c.units for c in layers], stack(fused), stack(up), coefs,
                        list(names), method, dict(clr=use_clr, rtp=use_rtp, guide_transform=guide_transform))


# ------------------------------------------------------------------------------------------ quality


# --------------------------------------------------------------------------------------------- stack
def default_channels(result: FusionResult, area: StudyArea) -> list[str]:
    """The stack's default channels, for any mix of sources:

    * every fused coarse layer (geochemistry, geophysics; bilinear where there is no guide to fuse with),
    * every extra fine layer (the DEM),
    * and the guide bands themselves when there is no coarse layer (an imagery-only area maps from its imagery).

    On the paper's four sources this is the paper's nine: 7 oxides, the magnetics and the DEM.
    """
    return default_channels_for(result.names, area.extra_names, area.guide_names)


def default_channels_for(fused: list[str], extra: list[str], guide: list[str]) -> list[str]:
    """:func:`default_channels` from the names alone (the block-wise path has no area in memory)."""
    return list(fused) + list(extra) + ([] if fused else list(guide))


def build_stack(result: FusionResult, area: StudyArea, channels: list[str] | None = None
                ) -> tuple[np.ndarray, list[str], list[str]]:
    """The model's input channels: ``channels`` by name (fused layers, extra layers or guide bands), or the
    default rule of :func:`default_channels`."""
    area.require_layers("a stack built in memory")
    if not channels:
        channels = default_channels(result, area)
    if not channels:
        raise StudyAreaError(area.manifest_path, "the study area has no layer to build a stack from")
    arrays, units = [], []
    for ch in channels:
        if ch in result.names:
            i = result.names.index(ch)
            arrays.append(result.fused[i])
            units.append(result.units[i])
        elif ch in area.extra_names:
            arrays.append(area.extra[area.extra_names.index(ch)])
            units.append(area.units.get(ch, ""))
        elif ch in area.guide_names:
            arrays.append(area.guide[area.guide_names.index(ch)])
            units.append(area.units.get(ch, ""))
        else:
            raise KeyError(f"unknown channel {ch!r}; fused: {result.names}, extra: {area.extra_names}, "
                           f"guide: {area.guide_names}")
    return np.stack(arrays).astype(np.float32), list(channels), units


def normalisation_stats(stack: np.ndarray, pixels: np.ndarray) -> dict:
    """Per-channel mean and standard deviation over the given pixels (the training pixels only; ``pixels`` a
    boolean map or a :class:`~lithocore.tiles.RowMap`), in float64 strip by strip, the stack in memory or on disk (:func:`lithocore.stackfile.region_stats`)."""
    from .stackfile import region_stats

    return region_stats(stack, pixels)


