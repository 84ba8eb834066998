"""Classification measures, the same code for every model: confusion matrix, OA, IoU, mIoU, kappa.

Definitions follow the paper and ``REFERENCE.md``: IoU = TP / (TP + FP + FN), mean IoU the macro average over
the classes present in the reference, producer's accuracy = recall, user's accuracy = precision.
Pixels without a label (:data:`lithocore.data.NO_LABEL`) never count.
"""

from __future__ import annotations

import numpy as np

from .data import NO_LABEL

__all__ = ["confusion_matrix", "scores"]


def confusion_matrix(reference: np.ndarray, predicted: np.ndarray, n_classes: int,
                     mask: np.ndarray | None = None) -> np.ndarray:
    """Counts: rows are the reference classes, columns the predicted ones.

    Examples
    --------
    >>> confusion_matrix(np.array([0, 0, 1, 255]), np.array([0, 1, 1, 0]), 2).tolist()
    [[1, 1], [0, 1]]
    """
    ref = np.asarray(reference).ravel()
    pred = np.asarray(predicted).ravel()
    keep = (ref != NO_LABEL) & (ref < n_classes) & (pred < n_classes)
    if mask is not None:
        keep &= np.asarray(mask).ravel()
    idx = ref[keep].astype(np.int64) * n_classes + pred[keep].astype(np.int64)
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def scores(cm: np.ndarray, names: list[str] | tuple[str, ...] | None = None) -> dict:
    """Overall accuracy, per-class IoU / producer's / user's accuracy / F1, mean IoU and kappa.

    Classes absent from the reference (row sum 0) are left out of the means and reported as None.

    Examples
    --------
    >>> s = scores(np.array([[8, 2], [0, 10]]))
    >>> round(s["overall_accuracy"], 2), round(s["mean_iou"], 3), round(s["kappa"], 2)
    (0.9, 0.817, 0.8)
    """
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.shape[0]
    names = list(names) if names is not None else [str(i) for i in range(n)]
    tp = np.diag(cm)
    ref_tot, map_tot, total = cm.sum(1), cm.sum(0), cm.sum()
    present = ref_tot > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (ref_tot + map_tot - tp)
        producer = tp / ref_tot
        user = np.where(map_tot > 0, tp / map_tot, 0.0)
        f1 = np.where(producer + user > 0, 2 * producer * user / (producer + user), 0.0)
    oa = float(tp.sum() / total) if total else float("nan")
    pe = float((ref_tot * map_tot).sum() / total**2) if total else float("nan")
    kappa = (oa - pe) / (1 - pe) if total and pe < 1 else float("nan")

    def per(a):
        return {nm: (float(v) if p else None) for nm, v, p in zip(names, a, present)}

    return dict(
        overall_accuracy=oa,
        mean_iou=float(np.mean(iou[present])) if present.any() else float("nan"),
        kappa=float(kappa),
        mean_f1=float(np.mean(f1[present])) if present.any() else float("nan"),
        iou=per(iou), producer_accuracy=per(producer), user_accuracy=per(user), f1=per(f1),
        pixels=int(total), classes=names,
    )
