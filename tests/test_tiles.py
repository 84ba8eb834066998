"""Tiles: windows not copies, no unlabelled-only tiles, honest splits, overlap measured, batches on the fly."""

import numpy as np
import pytest

from lithocore import tiles as T
from lithocore.area import NO_LABEL
from lithocore.loaders import TileBatches


def _scene(h=200, w=240, seed=0):
    rng = np.random.default_rng(seed)
    labels = (np.add.outer(np.arange(h) // 50, np.arange(w) // 60) % 4).astype(np.uint8)
    labels[:, :30] = NO_LABEL  # an unlabelled strip
    mask = np.ones((h, w), bool)
    stack = rng.standard_normal((3, h, w)).astype(np.float32)
    return stack, labels, mask


def test_candidate_windows_skip_unlabelled():
    _, labels, mask = _scene()
    cand = T.candidate_windows(labels, mask, 32, 8)
    assert len(cand) > 0
    for r, c in cand:
        assert (labels[r:r + 32, c:c + 32] != NO_LABEL).any()
    assert not any(c + 32 <= 30 for _, c in cand)  # windows wholly inside the unlabelled strip are skipped
    with pytest.raises(ValueError, match="larger than the scene"):
        T.candidate_windows(labels, mask, 512, 8)


def test_paper_split_overlaps_and_spatial_does_not():
    _, labels, mask = _scene()
    paper = T.make_tiles(labels, mask, size=64, stride=8, n_samples=200, split="paper", seed=1)
    spatial = T.make_tiles(labels, mask, size=64, stride=8, n_samples=200, split="spatial", seed=1)
    assert len(paper.train) == 160 and len(paper.val) == 40
    assert T.overlap_report(paper)["mean_max_overlap"] > 0.5
    rep = T.overlap_report(spatial)
    assert rep["max_overlap"] == 0.0
    # no training tile enters the validation region or its buffer, and vice versa
    for r, c in spatial.train:
        assert (spatial.region[r:r + 64, c:c + 64] == 0).all()
    for r, c in spatial.val:
        assert (spatial.region[r:r + 64, c:c + 64] == 1).all()
    # the buffer is at least one tile wide: every training tile is >= 64 px from the validation region
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(spatial.region != 1)
    assert min(dist[r:r + 64, c:c + 64].min() for r, c in spatial.train) >= 64
    assert spatial.info["classes_on_both_sides"] >= 3  # of 4, with a 64-px buffer in a 200 x 240 scene


def test_spatial_split_keeps_classes_on_both_sides(small_area):
    ts = T.make_tiles(small_area.labels, small_area.mask, size=32, stride=8, n_samples=120, split="spatial", seed=0)
    info = ts.info
    assert info["classes_on_both_sides"] >= info["classes_in_scene"] - 1
    assert 0.05 < info["val_share_of_labelled"] < 0.45


def test_tiles_are_views_and_batches_cut_on_the_fly():
    stack, labels, mask = _scene()
    mask[100:110, 100:110] = False
    ts = T.make_tiles(labels, mask, size=32, stride=8, n_samples=50, split="paper", seed=0)
    b = TileBatches(stack, labels, mask, ts.train, 32, 5, mean=[0, 0, 0], std=[2, 2, 2])
    x, y = b[0]
    assert x.shape == (5, 32, 32, 3) and y.shape == (5, 32, 32) and x.dtype == np.float32
    r, c = b.windows[b.order[0]]
    assert np.allclose(x[0], stack[:, r:r + 32, c:c + 32].transpose(1, 2, 0) / 2 * mask[r:r + 32, c:c + 32, None])
    lab = labels[r:r + 32, c:c + 32]
    assert ((y[0] == T.IGNORE) == ((lab == NO_LABEL) | ~mask[r:r + 32, c:c + 32])).all()
    assert not hasattr(b, "tiles_cache") and b.stack is stack  # no copy of the scene
    for i in range(len(b)):  # every batch: unlabelled or masked pixels are IGNORE, never a class
        xb, yb = b[i]
        for k, (r, c) in enumerate(b.windows[b.order[i * 5:(i + 1) * 5]]):
            bad = (labels[r:r + 32, c:c + 32] == NO_LABEL) | ~mask[r:r + 32, c:c + 32]
            assert ((yb[k] == T.IGNORE) == bad).all() and yb[k][~bad].max() < 4
    first = b.order.copy()
    b.on_epoch_end()
    assert not np.array_equal(first, b.order)  # reshuffled each epoch, deterministically
    b2 = TileBatches(stack, labels, mask, ts.train, 32, 5, seed=0)
    b2.on_epoch_end()
    assert np.array_equal(b.order, b2.order)


def test_save_and_load(tmp_path):
    _, labels, mask = _scene()
    ts = T.make_tiles(labels, mask, size=64, stride=8, n_samples=100, split="spatial", seed=2)
    T.save_tiles(tmp_path / "t.npz", ts)
    back = T.load_tiles(tmp_path / "t.npz")
    assert np.array_equal(back.train, ts.train) and np.array_equal(back.region, ts.region)
    assert back.info == ts.info and back.size == 64


def test_class_weights_favour_rare_classes():
    labels = np.zeros((64, 64), np.uint8)
    labels[:4] = 1  # rare
    w = T.class_weights(labels, np.array([[0, 0]]), 64, 3)
    assert w[1] > w[0] > 0 and w[2] == 0
    freq = np.array([60 * 64, 4 * 64, 0]) / 4096
    assert np.isclose((w * freq).sum(), 1.0)


def test_stratified_sampling_draws_more_rare_tiles():
    labels = np.zeros((256, 256), np.uint8)
    labels[200:216, 200:216] = 1
    mask = np.ones_like(labels, bool)
    cand = T.candidate_windows(labels, mask, 32, 8)
    rng = np.random.default_rng(0)
    holds = lambda w: np.mean([(labels[r:r + 32, c:c + 32] == 1).any() for r, c in w])
    plain = T.sample_windows(cand, 100, rng)
    strat = T.sample_windows(cand, 100, np.random.default_rng(0), labels=labels, size=32, n_classes=2, stratified=True)
    assert holds(strat) > 2 * holds(plain)


def test_strip_by_strip_equals_the_whole_scene_computation(monkeypatch, small_area):
    """The label-side computations made strip by strip (a province's memory) give exactly what the whole-scene
    ones give: distances against scipy's transform of the whole scene, window counts against one integral image,
    and the folds and the spatial split unchanged when the strips are made tiny."""
    from scipy import ndimage

    from lithocore import crossval, knndm

    rng = np.random.default_rng(3)
    labels, mask = small_area.labels, small_area.mask

    def label_side():
        split = T.split_spatial(labels, mask, 32, np.random.default_rng(0), blocks=3)
        return (crossval.make_folds(labels, mask, 3, block=48, buffer=20, seed=1).fold, split[0],
                T.candidate_windows(labels, mask, 32, 8, allowed=labels != 0), split[1],
                knndm.autocorrelation_range(labels, mask))

    before = label_side()
    monkeypatch.setattr(T, "STRIP_MB", 0.02)  # strips of a few rows: many seams
    for _ in range(12):
        H, W = rng.integers(30, 200, 2)
        region = rng.random((H, W)) < 0.003
        region[rng.integers(H), rng.integers(W)] = True
        d = float(rng.uniform(0, 40))
        assert np.array_equal(T.within(region, d), ndimage.distance_transform_edt(~region) <= d)
        flags, size, stride = rng.random((H, W)) < 0.2, int(rng.integers(1, min(H, W))), int(rng.integers(1, 12))
        rows, cols = np.arange(0, H - size + 1, stride), np.arange(0, W - size + 1, stride)
        ii = np.pad(flags.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        r, c = np.meshgrid(rows, cols, indexing="ij")
        whole = ii[r + size, c + size] - ii[r, c + size] - ii[r + size, c] + ii[r, c]
        assert np.array_equal(T.window_sums(flags, size, rows, cols), whole)
    after = label_side()
    for a, b in zip(before[:3], after[:3]):
        assert np.array_equal(a, b)
    assert before[3] == after[3] and before[4] == after[4]  # the split's description, the labels' variogram
    assert (before[1] == -1).any() and len(before[2]) > 0  # a buffer was drawn and windows found


def test_a_buffer_around_whole_blocks_is_the_distance_transforms(monkeypatch):
    """``within_blocks`` (the buffer around folds' and validation blocks, from the blocks' rectangles) marks exactly
    the pixels scipy's whole-scene distance transform puts within the distance of the block map: rectangular
    blocks clipped at the scene's edges, subsampled maps, distances on and between the pixel grid's, strips of a
    few rows; and a fold's training region is the one the transform gives."""
    from scipy import ndimage

    from lithocore import crossval

    monkeypatch.setattr(T, "STRIP_MB", 0.0005)
    rng = np.random.default_rng(5)
    for _ in range(200):
        (bh, bw), (H, W), step = rng.integers(1, 14, 2), rng.integers(1, 90, 2), int(rng.integers(1, 4))
        chosen = rng.random((-(-H // bh), -(-W // bw))) < rng.random()
        d = float(rng.choice([0, 0.5, 1, np.sqrt(2), 2, 2 * np.sqrt(2), 3.7, 5, 128 / 3, 60]))
        blocks = T.block_map(chosen, (bh, bw), (H, W), step)
        want = ndimage.distance_transform_edt(~blocks) <= d if blocks.any() else np.zeros(blocks.shape, bool)
        assert np.array_equal(T.within_blocks(chosen, (bh, bw), (H, W), d, step), want), (bh, bw, H, W, step, d)
    labels = rng.integers(0, 3, (150, 170)).astype(np.uint8)
    folds = crossval.make_folds(labels, np.ones(labels.shape, bool), 3, block=24, buffer=10, seed=0)
    mask = rng.random(labels.shape) < 0.9
    for i in range(3):
        test, train = crossval.fold_regions(folds, i, mask)
        assert np.array_equal(train, (ndimage.distance_transform_edt(folds.fold != i) > 10) & mask)
        assert np.array_equal(test, (folds.fold == i) & mask)


def test_maps_made_strip_by_strip_count_as_the_whole_maps(monkeypatch):
    """The labelled pixels and a region's complement given strip by strip (no scene-sized map) give the same window
    sums, candidate windows and "any labelled pixel in the region" as the whole maps, across several strips."""
    monkeypatch.setattr(T, "STRIP_MB", 0.0005)  # strips of a few rows
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, (97, 61)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.6] = T.NO_LABEL
    mask = rng.random(labels.shape) < 0.9
    allowed = np.zeros(labels.shape, bool)
    allowed[10:80, 5:50] = True
    rows, cols = np.arange(0, 97 - 16 + 1, 5), np.arange(0, 61 - 16 + 1, 5)
    whole = (labels != T.NO_LABEL) & mask
    assert np.array_equal(T.window_sums(T.labelled_map(labels, mask), 16, rows, cols),
                          T.window_sums(whole, 16, rows, cols))
    got = T.candidate_windows(labels, mask, 16, 5, allowed=allowed)
    keep = (T.window_sums(whole, 16, rows, cols) > 0) & (T.window_sums(~allowed, 16, rows, cols) == 0)
    r, c = np.nonzero(keep)
    assert len(got) and np.array_equal(got, np.stack([rows[r], cols[c]], axis=1))
    region = np.zeros(labels.shape, bool)
    region[90:, 60:] = True
    for reg in (region, allowed):
        assert T.any_where(T.labelled_map(labels, mask), reg) == bool((whole & reg).any())
    empty = np.zeros(labels.shape, bool)
    empty[40, 30] = True
    labels[40, 30] = T.NO_LABEL
    assert not T.any_where(T.labelled_map(labels, mask), empty)


def test_window_map_and_region_statistics_strip_by_strip(monkeypatch):
    """The pixels under training windows given strip by strip are the windows painted on a whole map, and the
    normalisation statistics over them (a RowMap, seams everywhere) are the statistics over that map."""
    from lithocore import stackfile

    rng = np.random.default_rng(5)
    H, W, size = 150, 90, 24
    windows = np.stack([rng.integers(0, H - size, 30), rng.integers(0, W - size, 30)], axis=1)
    whole = np.zeros((H, W), bool)
    for r, c in windows:
        whole[r:r + size, c:c + size] = True
    wm = T.window_map((H, W), windows, size)
    assert all(np.array_equal(wm[a:a + 7], whole[a:a + 7]) for a in range(0, H, 7))
    mask = rng.random((H, W)) < 0.8
    stack = rng.standard_normal((3, H, W)).astype(np.float32)
    stack[1, rng.random((H, W)) < 0.05] = np.nan
    monkeypatch.setattr(stackfile, "STRIP_ROWS", 16)
    got = stackfile.region_stats(stack, T.RowMap(lambda a, b: wm[a:b] & mask[a:b], (H, W)))
    sel = whole & mask
    assert got["pixels"] == int(sel.sum())
    for c in range(3):
        v = stack[c][sel]
        v = v[np.isfinite(v)].astype(np.float64)
        assert got["mean"][c] == pytest.approx(v.mean(), rel=1e-12)
        assert got["std"][c] == pytest.approx(v.std(), rel=1e-9)
    assert got == stackfile.region_stats(stack, sel)


def test_pixels_drawn_strip_by_strip_are_the_whole_scenes_draw(monkeypatch):
    """Pixels drawn from a region (an array or a RowMap), the forests' training pixels, random folds and a coarse
    grid, all made a few rows at a time, are exactly what the whole scene's flat indices give, and leave the
    random generator where the whole-scene draw leaves it."""
    from lithocore import forest, knndm

    monkeypatch.setattr(T, "STRIP_MB", 0.0005)  # strips of a few rows: many seams
    rng = np.random.default_rng(7)
    for _ in range(40):
        H, W = rng.integers(1, 90, 2)
        region = rng.random((H, W)) < rng.choice([0.0, 0.01, 0.3, 1.0])
        n = int(rng.choice([0, 1, 5, 50, 10_000]))
        rows = T.RowMap(lambda a, b, region=region: region[a:b], region.shape)
        for given in (region, rows):
            seed = int(rng.integers(1000))
            got, r1 = T.draw_pixels(given, n, np.random.default_rng(seed)), np.random.default_rng(seed)
            idx = np.flatnonzero(region)
            want = np.sort(r1.choice(idx, min(n, idx.size), replace=False)) if idx.size else idx
            assert np.array_equal(got, want)
        r2 = np.random.default_rng(seed)
        T.draw_pixels(rows, n, r2)
        assert r2.random() == r1.random()  # the same draws consumed
        size = int(rng.integers(1, 9))
        pad = np.pad(region, ((0, -H % size), (0, -W % size)))
        want = pad.reshape(pad.shape[0] // size, size, -1, size).any((1, 3))
        assert np.array_equal(T.blocks_any(rows, size), want)
        folds = knndm.random_folds(rows, 3, np.random.default_rng(seed))
        want = np.full(region.shape, -1, np.int8)
        want[region] = np.random.default_rng(seed).integers(0, 3, int(region.sum()), dtype=np.int8)
        assert np.array_equal(folds, want)
    labels = rng.integers(0, 5, (83, 57)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.3] = NO_LABEL
    allowed = rng.random(labels.shape) < 0.8
    got = forest.sample_pixels(labels, T.RowMap(lambda a, b: allowed[a:b], allowed.shape), 0.2, seed=4,
                               max_per_class=60)
    r, picks = np.random.default_rng(4), []
    for k in range(5):  # each class's flat indices, drawn as the whole scene would
        idx = np.flatnonzero(allowed & (labels == k))
        picks.append(idx[np.sort(r.choice(idx.size, forest._drawn(idx.size, 0.2, 60), replace=False))])
    assert np.array_equal(got, np.sort(np.concatenate(picks))) and len(got) > 100
