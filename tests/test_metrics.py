import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix as sk_cm, jaccard_score

from lithocore.area import NO_LABEL
from lithocore.metrics import confusion_matrix, scores


def test_against_scikit_learn():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 4, 5000)
    pred = np.where(rng.random(5000) < 0.7, ref, rng.integers(0, 4, 5000))
    cm = confusion_matrix(ref, pred, 4)
    assert np.array_equal(cm, sk_cm(ref, pred, labels=range(4)))
    s = scores(cm)
    assert np.isclose(s["overall_accuracy"], (ref == pred).mean())
    assert np.isclose(s["mean_iou"], jaccard_score(ref, pred, average="macro"))
    assert np.isclose(s["kappa"], cohen_kappa_score(ref, pred))


def test_unlabelled_and_absent_classes():
    ref = np.array([0, 0, 1, NO_LABEL, NO_LABEL])
    pred = np.array([0, 2, 1, 2, 0])
    cm = confusion_matrix(ref, pred, 3)
    assert cm.sum() == 3
    s = scores(cm, ["a", "b", "c"])
    assert s["iou"]["c"] is None  # absent from the reference: not in the mean
    assert np.isclose(s["mean_iou"], (0.5 + 1.0) / 2)


def test_confusion_matrix_counted_in_chunks_is_the_whole_count(monkeypatch):
    """Counted a few hundred pixels at a time (a province's memory), the matrix is the one-pass count."""
    from lithocore import metrics as M

    rng = np.random.default_rng(0)
    n = 5
    ref = rng.integers(0, n + 1, (333, 517)).astype(np.uint8)
    ref[rng.random(ref.shape) < 0.2] = NO_LABEL
    pred = rng.integers(0, n + 1, ref.shape).astype(np.uint8)
    mask = rng.random(ref.shape) < 0.8
    keep = (ref != NO_LABEL) & (ref < n) & (pred < n) & mask
    whole = np.bincount(ref[keep].astype(np.int64) * n + pred[keep], minlength=n * n).reshape(n, n)
    monkeypatch.setattr(M, "_COUNT_CHUNK", 777)
    assert np.array_equal(M.confusion_matrix(ref, pred, n, mask), whole) and whole.sum() > 50000
