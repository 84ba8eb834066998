"""Calibrated class probabilities: the expected calibration error and temperature scaling.

A model's largest class probability is its *confidence*; it is calibrated when, among the pixels given
confidence 0.8, about 80 % are right. The **expected calibration error** (ECE) is the pixel-weighted mean gap
between confidence and accuracy over confidence bins. **Temperature scaling** (Guo et al. 2017) fits one number
``T`` to out-of-fold predictions, by the likelihood of the true classes: ``p' ~ p ** (1 / T)``, renormalised
(for a network, dividing the logits by ``T``). ``T > 1`` softens an over-confident model, ``T < 1`` sharpens an
under-confident one (a forest averaging its trees often is). Fitted on spatially held-out folds, it
calibrates for the shift between training ground and new ground that the folds reproduce.
"""

from __future__ import annotations

import numpy as np

__all__ = ["expected_calibration_error", "reliability", "apply_temperature", "fit_temperature", "entropy",
           "crossfit_temperature"]

#: Probabilities are clipped here before their logarithm (a forest gives exact zeros).
EPS = 1e-4


def reliability(proba: np.ndarray, truth: np.ndarray, bins: int = 10) -> list[dict]:
    """Per confidence bin: pixels, mean confidence and accuracy (the reliability diagram's points)."""
    conf = proba.max(1)
    right = proba.argmax(1) == truth
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        out.append(dict(lower=float(edges[b]), upper=float(edges[b + 1]), pixels=n,
                        confidence=float(conf[sel].mean()) if n else None,
                        accuracy=float(right[sel].mean()) if n else None))
    return out


def expected_calibration_error(proba: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """ECE of class probabilities ``proba`` (n, K) against true class indices ``truth`` (n,).

    Examples
    --------
    Always 90 % sure and right half of the time: ECE 0.4.

    >>> p = np.tile([0.9, 0.1], (4, 1)); t = np.array([0, 0, 1, 1])
    >>> round(expected_calibration_error(p, t), 3)
    0.4
    """
    n = len(truth)
    if n == 0:
        return float("nan")
    return float(sum(b["pixels"] / n * abs(b["confidence"] - b["accuracy"]) for b in reliability(proba, truth, bins)
                     if b["pixels"]))


def apply_temperature(proba: np.ndarray, T: float) -> np.ndarray:
    """Probabilities softened (``T > 1``) or sharpened (``T < 1``): ``p ** (1 / T)``, renormalised over the last
    axis.

    >>> p = np.array([[0.8, 0.2]])
    >>> apply_temperature(p, 1.0).astype(float).round(2).tolist(), apply_temperature(p, 1e6).astype(float).round(2).tolist()
    ([[0.8, 0.2]], [[0.5, 0.5]])
    """
    logp = np.log(np.clip(proba, EPS, 1.0)) / float(T)
    logp -= logp.max(-1, keepdims=True)
    e = np.exp(logp)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def fit_temperature(proba: np.ndarray, truth: np.ndarray) -> float:
    """The temperature that maximises the likelihood of the true classes (bounded search over 0.05-20)."""
    from scipy.optimize import minimize_scalar

    logp = np.log(np.clip(proba, EPS, 1.0))
    idx = np.arange(len(truth))

    def nll(log_t):
        z = logp / np.exp(log_t)
        z = z - z.max(1, keepdims=True)
        return float(-(z[idx, truth] - np.log(np.exp(z).sum(1))).mean())

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def crossfit_temperature(proba: np.ndarray, truth: np.ndarray, fold: np.ndarray, bins: int = 10) -> dict:
    """Temperature scaling judged honestly: each fold's probabilities scaled by a temperature fitted on the other
    folds, then the ECE of the whole; and the temperature fitted on every fold (the one to apply to the map).

    Returns ``{"temperature", "ece_before", "ece_after", "per_fold_temperature", "scaled"}`` (``scaled``: the
    cross-fitted probabilities the error after is measured on).
    """
    scaled = np.empty_like(proba, dtype=np.float32)
    temps = []
    for i in np.unique(fold):
        out = fold == i
        t = fit_temperature(proba[~out], truth[~out]) if (~out).any() else 1.0
        temps.append(t)
        scaled[out] = apply_temperature(proba[out], t)
    T = fit_temperature(proba, truth)
    return dict(temperature=T, ece_before=expected_calibration_error(proba, truth, bins),
                ece_after=expected_calibration_error(scaled, truth, bins), per_fold_temperature=temps,
                reliability_before=reliability(proba, truth, bins), reliability_after=reliability(scaled, truth, bins),
                scaled=scaled)


def entropy(proba: np.ndarray, axis: int = 0) -> np.ndarray:
    """Shannon entropy of class probabilities over ``axis``, divided by log(K): 0 certain, 1 no idea.

    >>> entropy(np.array([[1.0, 0.5], [0.0, 0.5]])).round(3).tolist()
    [0.0, 1.0]
    """
    p = np.clip(proba, 1e-12, 1.0)
    k = proba.shape[axis]
    return (-(p * np.log(p)).sum(axis) / np.log(k)).astype(np.float32)
