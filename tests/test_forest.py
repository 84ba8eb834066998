"""The random-forest baseline and the map measures used to compare it with the FCN."""

import numpy as np
import pytest

from lithocore import forest, metrics
from lithocore.area import NO_LABEL


def test_sample_pixels_per_class_and_region():
    labels = np.zeros((20, 20), np.uint8)
    labels[:, 10:] = 1
    labels[0, 0] = NO_LABEL
    allowed = np.zeros_like(labels, bool)
    allowed[:10] = True
    px = forest.sample_pixels(labels, allowed, 0.1, seed=0)
    rows, cols = np.unravel_index(px, labels.shape)
    assert (rows < 10).all()  # only from the allowed region
    assert (labels.ravel()[px] != NO_LABEL).all()
    assert np.bincount(labels.ravel()[px]).tolist() == [10, 10]  # 10 % of each class's 99 / 100 pixels
    assert np.array_equal(px, forest.sample_pixels(labels, allowed, 0.1, seed=0))  # deterministic


def test_forest_maps_in_chunks():
    rng = np.random.default_rng(0)
    labels = (np.arange(60)[:, None] // 20 + np.zeros((60, 50), int)).astype(np.uint8)
    stack = np.stack([labels + 0.1 * rng.standard_normal(labels.shape), rng.standard_normal(labels.shape)]).astype(np.float32)
    mask = np.ones_like(labels, bool)
    mask[5, 5] = False
    px = forest.sample_pixels(labels, mask, 0.1)
    rf, fit_s = forest.train_forest(stack, labels, px, n_trees=20, max_features=3, n_jobs=1)
    assert rf.max_features == 2  # mtry capped at the number of channels
    classes, conf, _ = forest.predict_forest(rf, stack, mask, chunk_rows=7, progress=False)
    assert classes[5, 5] == NO_LABEL and np.isnan(conf[5, 5])
    assert (classes[mask] == labels[mask]).mean() > 0.98


def test_noise_measures_tell_speckle_from_patches():
    clean = np.zeros((100, 100), np.uint8)
    clean[:, 50:] = 1
    speckled = clean.copy()
    rng = np.random.default_rng(0)
    flip = rng.random(clean.shape) < 0.1
    speckled[flip] = 1 - speckled[flip]
    mask = np.ones_like(clean, bool)
    assert metrics.salt_and_pepper(clean, mask, 2) == 0.0
    assert metrics.salt_and_pepper(speckled, mask, 2) > 0.05
    assert metrics.fragments(clean, mask, 2)["small_patches"] == 0
    assert metrics.fragments(speckled, mask, 2)["small_patches"] > 100


def test_evaluate_map_keeps_regions_apart():
    labels = np.zeros((40, 40), np.uint8)
    labels[:, 20:] = 1
    pred = labels.copy()
    pred[:20, :] = 0  # wrong in the top half's right side
    mask = np.ones_like(labels, bool)
    top = np.zeros_like(mask)
    top[:20] = True
    out = metrics.evaluate_map(pred, labels, mask, ["a", "b"], regions={"top": top, "bottom": ~top}, boundary_width=2)
    assert out["bottom"]["overall_accuracy"] == 1.0 and out["top"]["overall_accuracy"] == 0.5
    assert out["top"]["pixels"] + out["bottom"]["pixels"] == 1600
    assert out["bottom"]["boundary"]["pixels"] == 20 * 4  # 2 px either side of the contact, 20 rows
    assert "salt_and_pepper" in out["noise"]


def test_forest_grown_under_a_progress_bar_is_the_same_forest():
    """The progress bar grows the trees in rounds (warm start): the forest must equal a single fit's."""
    rng = np.random.default_rng(0)
    stack = rng.standard_normal((4, 50, 60)).astype(np.float32)
    labels = ((stack[0] > 0).astype(np.uint8) + (stack[1] > 0)).astype(np.uint8)
    px = np.arange(0, 3000, 3)
    one, _ = forest.train_forest(stack, labels, px, n_trees=25, seed=1)
    rounds, _ = forest.train_forest(stack, labels, px, n_trees=25, seed=1, progress=True)
    X = stack.reshape(4, -1).T
    assert len(rounds.estimators_) == 25
    assert np.array_equal(one.predict_proba(X), rounds.predict_proba(X))


def test_forest_leaves_the_warning_filters_as_they_were(monkeypatch):
    """scikit-learn's threaded workers can leave the process without warning filters when two of them interleave
    (then every later parallel call warns); the workbook's forest puts them back after fitting and predicting."""
    import warnings

    from sklearn.ensemble import RandomForestClassifier

    from lithocore.forest import Forest

    rng = np.random.default_rng(0)
    X, y = rng.random((200, 3)), rng.integers(0, 3, 200)
    before = warnings.filters[:]
    assert before  # pytest and Python install some

    def racy(self, X):
        warnings.resetwarnings()  # what the interleaved workers leave behind
        warnings.filters = []
        return np.zeros((len(X), 3))

    rf = Forest(n_estimators=5, random_state=0, n_jobs=2).fit(X, y)
    monkeypatch.setattr(RandomForestClassifier, "predict_proba", racy)
    assert rf.predict(X).shape == (200,)
    assert warnings.filters == before


def test_training_pixels_drawn_strip_by_strip_are_the_whole_scene_draw(monkeypatch):
    """The forest's training pixels, counted and found strip by strip (strips of a few rows; ``allowed`` an array
    or a RowMap), are exactly the draw from each class's flat indices of the whole scene, for the same seed."""
    from lithocore import tiles
    from lithocore.area import NO_LABEL

    def whole_scene(labels, allowed, fraction, seed, cap):
        rng = np.random.default_rng(seed)
        flat = labels.ravel()
        ok = allowed.ravel() & (flat != NO_LABEL)
        picks = []
        for k in np.unique(flat[ok]):
            idx = np.flatnonzero(ok & (flat == k))
            n = max(1, int(round(fraction * idx.size)))
            picks.append(rng.choice(idx, min(n, cap) if cap else n, replace=False))
        return np.sort(np.concatenate(picks))

    monkeypatch.setattr(tiles, "STRIP_MB", 0.0005)
    rng = np.random.default_rng(0)
    for H, W, frac, cap in [(200, 150, 0.1, None), (333, 97, 0.5, 40), (500, 300, 0.02, 100)]:
        lab = rng.integers(0, 6, (H, W)).astype(np.uint8)
        lab[rng.random((H, W)) < 0.3] = NO_LABEL
        allowed = rng.random((H, W)) < 0.7
        want = whole_scene(lab, allowed, frac, 3, cap)
        assert len(want) > 50
        assert np.array_equal(forest.sample_pixels(lab, allowed, frac, seed=3, max_per_class=cap), want)
        as_rows = tiles.RowMap(lambda a, b: allowed[a:b], allowed.shape)
        assert np.array_equal(forest.sample_pixels(lab, as_rows, frac, seed=3, max_per_class=cap), want)


def test_a_forest_too_big_for_memory_is_refused_before_its_fit(monkeypatch):
    """The training table is counted as ``sample_pixels`` draws it (without drawing: every fraction and cap, an
    array or a row map), and a fit whose table and trees would not fit in memory stops before any work, in the
    forest itself and in a cross-validation forest's check before its folds, saying what to change."""
    from lithocore.folds import ForestFold
    from lithocore.tiles import RowMap

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, (90, 70)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.4] = NO_LABEL
    allowed = rng.random(labels.shape) < 0.7
    for fraction, cap in ((0.1, None), (0.5, 30), (0.01, None), (1.0, 7)):
        n = len(forest.sample_pixels(labels, allowed, fraction, max_per_class=cap))
        assert forest.training_pixels(labels, allowed, fraction, cap) == n
        assert forest.training_pixels(labels, RowMap(lambda a, b: allowed[a:b], allowed.shape), fraction, cap) == n
    stack = rng.standard_normal((3, *labels.shape)).astype(np.float32)
    px = forest.sample_pixels(labels, allowed, 0.5)
    need = forest.training_memory(len(px), 3, 5, 50)
    monkeypatch.setenv("LITHOCORE_MEMORY_LIMIT", str(need - 1))
    with np.testing.assert_raises_regex(MemoryError, r"training pixels of 3 predictors and 50 trees need .* cap the "
                                                     r"training pixels of each class \(cv_forest_cap"):
        forest.train_forest(stack, labels, px, n_trees=50, n_jobs=1)
    fold = ForestFold(stack, labels, allowed, n_trees=50, fraction=0.5, neighbourhood=(5,))
    with np.testing.assert_raises_regex(MemoryError, r"the cross-validation's forest_context: .* of 9 predictors"):
        fold.check_memory(5, "the cross-validation's forest_context")
    monkeypatch.setenv("LITHOCORE_MEMORY_LIMIT", str(need))
    forest.train_forest(stack, labels, px, n_trees=50, n_jobs=1)


def _forest_on_this_process():
    """Fit and apply a forest of ``n_jobs=-1``; the ``n_jobs`` scikit-learn's fit was given, the forest's own
    ``n_jobs`` after, its probabilities and the threads it predicts with."""
    import sklearn.ensemble._forest as sk

    seen, parallel = [], sk.Parallel

    class Spy(parallel):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs.get("n_jobs"))
            super().__init__(*args, **kwargs)

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 4)), rng.integers(0, 3, 300)
    sk.Parallel = Spy
    try:
        rf = forest.Forest(n_estimators=8, n_jobs=-1, random_state=0).fit(X, y)
        proba = rf.predict_proba(X)
    finally:
        sk.Parallel = parallel
    return seen, rf.n_jobs, proba, rf.threads()


def test_a_forest_on_a_cluster_worker_uses_that_workers_threads():
    """On a one-thread worker a forest of ``n_jobs=-1`` fits and predicts with one thread, not every core of the
    machine (two workers on two cores ran four forest threads); the forest keeps ``n_jobs=-1`` (a forest sent on
    uses the cores where it lands) and is the same forest, probability for probability. Here, every core."""
    import distributed
    import joblib

    seen_here, jobs_here, proba_here, threads_here = _forest_on_this_process()
    assert seen_here == [-1] and jobs_here == -1 and threads_here == joblib.cpu_count()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
            distributed.Client(lc) as client:
        seen, jobs, proba, threads = client.submit(_forest_on_this_process, pure=False).result()
    assert seen == [1] and jobs == -1 and threads == 1
    np.testing.assert_allclose(proba, proba_here, rtol=0, atol=1e-12)


def test_window_features_in_blocks_are_the_whole_computation(monkeypatch):
    """The neighbourhood predictors computed in cache-sized blocks (rows and columns, blocks cut at the scene's
    edges) are the values of one block over the whole part, bit for bit, for both window sizes."""
    rng = np.random.default_rng(7)
    h, sizes = 7, (5, 15)
    padded = (rng.standard_normal((2, 45 + 2 * h, 70 + 2 * h)) * 30 + 500).astype(np.float32)
    monkeypatch.setattr(forest, "_FEATURE_BLOCK", (10 ** 6, 10 ** 6))
    whole = forest.window_features(padded, sizes, h)
    monkeypatch.setattr(forest, "_FEATURE_BLOCK", (8, 16))  # 6 x 5 blocks, the last of each axis short
    blocked = forest.window_features(padded, sizes, h)
    assert blocked.shape == whole.shape == (8, 45, 70)
    np.testing.assert_array_equal(blocked, whole)


def test_forest_probabilities_are_scikit_learns_in_parts_on_threads(monkeypatch):
    """The forest's class probabilities, summed over the trees for parts of the pixels on one or two threads, are
    scikit-learn's own (one thread: the trees' in their order) bit for bit, and so are its classes."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(3)
    X = rng.standard_normal((3000, 6)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int) + 2 * (X[:, 2] > 0.8)
    kw = dict(n_estimators=12, max_features=2, random_state=5)
    ref = RandomForestClassifier(n_jobs=1, **kw).fit(X, y)
    Xp = rng.standard_normal((10001, 6)).astype(np.float32)
    want = ref.predict_proba(Xp)
    monkeypatch.setattr(forest, "PREDICT_CHUNK", 4096)  # three parts (the last short), on one thread and on two
    for n_jobs in (1, 2):
        rf = forest.Forest(n_jobs=n_jobs, **kw).fit(X, y)
        got = rf.predict_proba(Xp)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(rf.predict(Xp), ref.predict(Xp))
    with pytest.raises(ValueError, match="features"):
        rf.predict_proba(Xp[:, :5])
