"""Spatial k-fold cross-validation: disjoint folds that cover every labelled pixel once, a buffer that no
training window or pixel crosses, the union leakage measure, and a verdict that follows the numbers."""

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from lithocore import folds as lfolds
from lithocore import crossval, forest
from lithocore.area import NO_LABEL
from lithocore.tiles import candidate_windows, make_tiles
from lithocore.tiles import window_pixels


@pytest.fixture(scope="module")
def folds(small_area):
    return crossval.make_folds(small_area.labels, small_area.mask, k=3, block=64, buffer=32, seed=0)


def test_folds_are_disjoint_and_cover_every_labelled_pixel_once(small_area, folds):
    labelled = small_area.mask & (small_area.labels != NO_LABEL)
    tests = [crossval.fold_regions(folds, i, small_area.mask)[0] for i in range(folds.k)]
    counts = np.sum(tests, axis=0)
    assert (counts[labelled] == 1).all() and counts.max() == 1
    assert sum(folds.info["blocks_per_fold"]) == folds.info["blocks_with_labels"]
    # classes are spread: every class of the map appears in at least two folds' test regions
    for c in np.unique(small_area.labels[labelled]):
        assert sum(((small_area.labels == c) & t).any() for t in tests) >= 2


def test_no_training_window_or_pixel_within_the_buffer(small_area, folds):
    seen = []

    def spy(i, train, test):
        windows = candidate_windows(small_area.labels, small_area.mask, 32, 8, allowed=train)
        pixels = forest.sample_pixels(small_area.labels, train, 0.2, seed=i)
        dist = ndimage.distance_transform_edt(~test)
        covered = window_pixels(small_area.shape, windows, 32)
        assert len(windows) and dist[covered].min() > folds.buffer
        assert dist.ravel()[pixels].min() > folds.buffer
        seen.append(i)
        return np.where(test, small_area.labels, NO_LABEL)  # a perfect model on its test region

    res = crossval.cross_validate(small_area.labels, small_area.mask, small_area.classes.names, folds,
                                  {"spy": spy}, progress=False)
    assert seen == [0, 1, 2]
    assert res["pooled"]["spy"]["overall_accuracy"] == 1.0
    labelled = small_area.mask & (small_area.labels != NO_LABEL)
    assert np.array_equal(res["oof"]["spy"][labelled], small_area.labels[labelled])


def test_cross_validate_resumes_from_cached_folds(small_area, folds, tmp_path):
    calls = []

    def model(i, train, test):
        calls.append(i)
        return np.zeros(small_area.shape, np.uint8)

    kw = dict(cache_dir=tmp_path, cache_key="k", progress=False)
    a = crossval.cross_validate(small_area.labels, small_area.mask, small_area.classes.names, folds, {"m": model}, **kw)
    b = crossval.cross_validate(small_area.labels, small_area.mask, small_area.classes.names, folds, {"m": model}, **kw)
    assert calls == [0, 1, 2] and a["pooled"] == b["pooled"]
    crossval.cross_validate(small_area.labels, small_area.mask, small_area.classes.names, folds, {"m": model},
                            cache_dir=tmp_path, cache_key="other", progress=False)
    assert calls == [0, 1, 2, 0, 1, 2]  # another key: nothing reused


def test_fold_scores_made_strip_by_strip_are_the_whole_scene_ones(small_area, folds, tmp_path, monkeypatch):
    """Scored, cached and written into the out-of-fold map strip by strip (strips of a few rows: seams everywhere),
    a fold's confusion matrix, cached prediction and out-of-fold pixels are the whole scene's."""
    from lithocore import tiles
    from lithocore.metrics import confusion_matrix

    monkeypatch.setattr(tiles, "STRIP_MB", 0.0005)
    n = len(small_area.classes.names)
    preds = {i: np.random.default_rng(i).integers(0, n, small_area.shape).astype(np.uint8) for i in range(folds.k)}
    res = crossval.cross_validate(small_area.labels, small_area.mask, small_area.classes.names, folds,
                                  {"m": lambda i, train, test: preds[i].copy()}, cache_dir=tmp_path, cache_key="k",
                                  progress=False)
    oof = np.full(small_area.shape, NO_LABEL, np.uint8)
    for i in range(folds.k):
        test = (folds.fold == i) & small_area.mask
        oof[test] = preds[i][test]
        cm = confusion_matrix(small_area.labels, preds[i], n, test)
        assert cm.sum() > 0 and res["folds"][i]["scores"]["m"]["confusion_matrix"] == cm.tolist()
        with np.load(tmp_path / f"fold{i}_m.npz") as z:
            assert np.array_equal(z["pred"], np.where(folds.fold == i, preds[i], NO_LABEL))
    assert np.array_equal(res["oof"]["m"], oof)


def test_leakage_is_the_union_computed_by_hand(small_area):
    ts = make_tiles(small_area.labels, small_area.mask, size=32, stride=16, n_samples=60, split="paper", seed=1)
    tested = window_pixels(small_area.shape, ts.val, 32)
    scored = tested & small_area.mask & (small_area.labels != NO_LABEL)
    inside_any = np.zeros(small_area.shape, bool)
    for r, c in ts.train:  # brute force, tile by tile
        inside_any[r:r + 32, c:c + 32] = True
    expected = (inside_any & scored).sum() / scored.sum()
    assert crossval.leakage(small_area.labels, small_area.mask, ts.train, 32, tested) == pytest.approx(expected)
    assert expected > 0.5  # the paper's split leaks most of its validation pixels
    spatial = make_tiles(small_area.labels, small_area.mask, size=32, stride=16, n_samples=60, split="spatial", seed=1)
    assert crossval.leakage(small_area.labels, small_area.mask, spatial.train, 32,
                            window_pixels(small_area.shape, spatial.val, 32)) == 0.0


def _fabricated(fcn, rf):
    return [dict(fold=i, scores={"fcn8s": dict(mean_iou=a, overall_accuracy=a, kappa=a),
                                 "forest": dict(mean_iou=b, overall_accuracy=b, kappa=b)})
            for i, (a, b) in enumerate(zip(fcn, rf))]


@pytest.mark.parametrize("fcn, rf, word, count", [
    ([0.60, 0.62, 0.58, 0.61, 0.63], [0.52, 0.55, 0.53, 0.54, 0.55], "ahead of", "in 5 of 5 folds"),
    ([0.60, 0.50, 0.58], [0.55, 0.56, 0.57], "level within noise", "ahead in 2 of 3 folds"),
    ([0.40, 0.42, 0.41, 0.39], [0.55, 0.57, 0.52, 0.56], "behind", "in 4 of 4 folds"),
])
def test_verdict_follows_the_numbers(fcn, rf, word, count):
    per_fold = _fabricated(fcn, rf)
    summary = crossval.summarise(per_fold)
    assert summary["fcn8s"]["mean_iou"]["mean"] == pytest.approx(np.mean(fcn))
    assert summary["forest"]["mean_iou"]["sd"] == pytest.approx(np.std(rf, ddof=1))
    diffs = crossval.paired_differences(per_fold, "fcn8s", "forest")
    text = crossval.verdict(diffs, "FCN-8s", "the forest")
    assert word in text and count in text and f"{abs(np.mean(diffs)):.3f}" in text
    assert crossval.verdict(diffs[:1]).startswith("one split cannot tell")


def test_single_split_and_saved_folds(small_area, tmp_path):
    """k = 1 is notebook 03's spatial split (a quick look, never called a result); k >= 2 folds are saved with
    their key and made again when the settings change."""
    from lithocore import stages
    from lithocore.settings import resolve as resolve_config

    cfg = resolve_config("quick", tile=32, stride=16, n_samples=40)
    one = lfolds.cv_folds(tmp_path, small_area, cfg, lfolds.cv_settings("quick", cfg, k=1))
    ts = stages.training_tiles(tmp_path, small_area, cfg, "spatial")
    assert one.k == 1 and np.array_equal(one.fold == 0, ts.region == 1)
    s3 = lfolds.cv_settings("quick", cfg, shape=small_area.shape, k=3)
    assert s3["block"] == 128 and s3["buffer"] == 32  # four tiles: 2 x 2 blocks on 192 px, enough for 3 folds
    assert lfolds.cv_settings("quick", cfg, shape=small_area.shape, k=5)["block"] == 64  # 5 folds need 5 blocks
    s3 = s3 | dict(block=64)
    three = lfolds.cv_folds(tmp_path, small_area, cfg, s3)
    assert three.k == 3 and lfolds.cv_folds(tmp_path, small_area, cfg, s3).info == three.info
    four = lfolds.cv_folds(tmp_path, small_area, cfg, s3 | dict(k=4))
    assert four.k == 4


def test_spilled_models_travel_as_files_each_array_once(small_area, folds, tmp_path, monkeypatch):
    """What a cluster's tasks get: the scene-sized arrays as .npy files (an array shared by several models saved
    once), opened memory-mapped and equal to the originals, small ones inside the pickle."""
    monkeypatch.setattr(crossval, "SPILL_BYTES", 1000)
    models = {"a": lfolds.ForestFold(None, small_area.labels, small_area.mask),
              "b": lfolds.ForestFold(None, small_area.labels, small_area.mask, seed=3)}
    small = np.arange(5)
    payload = crossval.spill(dict(models=models, folds=folds, mask=small_area.mask, small=small), tmp_path)
    assert len(payload) < 10_000 and sorted(p.name for p in tmp_path.iterdir()) == ["0.npy", "1.npy", "2.npy"]
    back = crossval.unspill(payload)
    for got, want in ((back["models"]["b"].labels, small_area.labels), (back["mask"], small_area.mask),
                      (back["folds"].fold, folds.fold)):
        assert isinstance(got, np.memmap) and not got.flags.writeable and np.array_equal(got, want)
    assert back["models"]["a"].mask is back["models"]["b"].mask is back["mask"]  # one file, one mapping
    assert np.array_equal(back["small"], small) and not isinstance(back["small"], np.memmap)


def test_a_fold_process_stops_when_its_parent_is_gone(tmp_path):
    """A network's fold runs in a process of its own; when the worker that started it is stopped, the fold's
    process stops too (it had gone on training for minutes, an orphan holding 3.4 GB), even where the worker was
    gone before the fold's process had started watching (here: at once)."""
    import os
    import subprocess
    import sys
    import time

    child = ("from lithocore.crossval import exit_with_parent; exit_with_parent(0.1); import time; time.sleep(60)")
    parent = (f"import os, subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {child!r}], "
              "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, "
              "env=os.environ | {'LITHOCORE_PARENT_PID': str(os.getpid())}); print(p.pid, flush=True)")
    started = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=60)
    pid = int(started.stdout.split()[0])
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        try:  # reap it where this test's process adopted it
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    else:
        os.kill(pid, 9)
        raise AssertionError("the fold's process outlived its parent")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the process's memory from /proc (Linux)")
def test_released_spilled_arrays_leave_the_process_memory_and_read_the_same(tmp_path):
    """A fold's process drops the pages it has read of the memory-mapped labels and mask once trained
    (``release``): its resident file pages fall back, the values read again are the same, and an array in memory
    is left untouched."""
    from lithocore.crossval import release, spill, unspill

    def file_mb() -> float:
        text = Path("/proc/self/status").read_text()
        return int(next(l for l in text.splitlines() if l.startswith("RssFile")).split()[1]) / 1024

    big = np.arange(64 * 2**20, dtype=np.int64).astype(np.uint8).reshape(8192, 8192)
    shared = unspill(spill({"labels": big}, tmp_path))
    before = file_mb()
    total = int(shared["labels"].sum(dtype=np.int64))
    assert file_mb() - before > 48  # the 64 MB read are resident
    release(shared["labels"])
    assert file_mb() - before < 16
    assert int(shared["labels"].sum(dtype=np.int64)) == total == int(big.sum(dtype=np.int64))
    own = big.copy()
    release(own)
    assert np.array_equal(own, big)


def test_stored_fold_predictions_are_read_one_fold_at_a_time(tmp_path):
    """Notebook 07's block estimate from notebook 06's kept fold predictions: found only when every fold is there
    under the key, read a fold at a time where used (at 20000 px each is 400 MB, and every candidate's k of them
    had been loaded), and the same pooled sample as from the predictions in memory."""
    import weakref

    from lithocore.recommend import _from_predictions, fold_sets

    H = W = 600
    rows, cols = np.indices((H, W))
    folds = crossval.Folds(4, 150, 0, ((rows // 150 + cols // 150) % 4).astype(np.int8))
    labels = ((rows // 50 + 2 * (cols // 70)) % 5).astype(np.uint8)
    mask = np.ones((H, W), bool)
    preds = {i: np.random.default_rng(i).integers(0, 5, (H, W)).astype(np.uint8) for i in range(folds.k)}
    crossval.cross_validate(labels, mask, list("abcde"), folds, {"m": lambda i, train, test: preds[i].copy()},
                            cache_dir=tmp_path, cache_key="k", progress=False)
    assert crossval.StoredPredictions.find(tmp_path, "m", "other key", folds.k) is None
    assert crossval.StoredPredictions.find(tmp_path, "forest", "k", folds.k) is None
    regions = fold_sets("block", folds.fold, folds.k, mask, labels)
    in_memory = [np.where(folds.fold == i, preds[i], NO_LABEL).astype(np.uint8) for i in range(folds.k)]
    expected = _from_predictions(in_memory, regions, labels, "m", 5, 5000, 0)
    read, held = [], []

    class Watched(crossval.StoredPredictions):  # how many folds read before are still held at each read
        def __getitem__(self, i):
            pred = super().__getitem__(i)
            held.append(sum(r() is not None for r in read))
            read.append(weakref.ref(pred))
            return pred

    stored = Watched.find(tmp_path, "m", "k", folds.k)
    assert not read  # found by the keys alone
    got = _from_predictions(stored, regions, labels, "m", 5, 5000, 0)
    assert held == [0, 0, 0, 0]
    assert np.array_equal(got["idx"], expected["idx"]) and np.array_equal(got["proba"]["m"], expected["proba"]["m"])
    assert np.array_equal(got["fold"], expected["fold"]) and len(stored) == folds.k
    crossval.fold_file(tmp_path, 2, "m").unlink()  # gone after it was found: said, not read as nothing
    with pytest.raises(FileNotFoundError, match="fold2_m.npz"):
        stored[2]
    assert crossval.StoredPredictions.find(tmp_path, "m", "k", folds.k) is None
