"""The stack read window by window from its file gives the later stages what the stack in memory gives them: the
same tiles, forest pixels, statistics and neighbourhood features, and the same cross-validation, in one process
and as tasks of a two-worker Dask cluster."""

import pickle

import numpy as np
import pytest
from scipy import ndimage

from lithocore import crossval, forest, fusion, outputs
from lithocore.area import NO_LABEL
from lithocore.folds import deep_fold_model, forest_fold_model
from lithocore.settings import TrainingConfig
from lithocore.stackfile import (STRIP_ROWS, Channels, Neighbourhood, StackFile, at_pixels, open_stack, pixel_values,
                                 region_stats)
from lithocore.tiles import make_tiles, window_pixels


@pytest.fixture(scope="module")
def stack_pair(small_area, tmp_path_factory):
    """The small area's stack in memory and the same stack on disk (a COG with NaN outside the valid mask)."""
    res = fusion.fuse_study_area(small_area, progress=False)
    stack, names, units = fusion.build_stack(res, small_area)
    path = outputs.write_stack_file(tmp_path_factory.mktemp("stack") / "stack.tif", stack, names, units,
                                    small_area.grid, chunk_rows=50)
    return stack.astype(np.float32), StackFile(path)


def test_windows_strips_and_channels_read_as_the_array(stack_pair):
    arr, sf = stack_pair
    assert sf.shape == arr.shape
    for key in [(slice(None), slice(10, 74), slice(3, 99)), (slice(None), slice(150, 400)), (2,),
                (slice(1, 4), slice(0, 5), slice(180, 192)), (0, 5, 7)]:
        np.testing.assert_array_equal(sf[key], arr[key])
    with pytest.raises(IndexError, match="steps"):
        sf[:, ::2]
    with pytest.raises(TypeError, match="window by window"):
        np.asarray(sf)  # never read whole by accident
    assert pickle.loads(pickle.dumps(sf)).path == sf.path  # a task gets its path, not its pixels


def test_strips_with_a_halo_read_each_row_from_the_file_once(stack_pair, file_rows):
    """Strips read with a halo of rows (a neighbourhood's) take the rows they share with the last one from memory:
    every row decompressed once, the values the file's, each read the caller's own array."""
    arr, path = stack_pair
    sf = StackFile(path.path)
    H = arr.shape[1]
    for r0 in range(0, H, STRIP_ROWS):
        a, b = max(0, r0 - 7), min(H, r0 + STRIP_ROWS + 7)
        got = sf[:, a:b]
        np.testing.assert_array_equal(got, arr[:, a:b])
        got[:] = 0  # the caller's own copy: the kept rows are not changed
        np.testing.assert_array_equal(sf[1, a + 2:b - 1, 3:50], arr[1, a + 2:b - 1, 3:50])
    assert sum(file_rows) == H


def test_open_stack_holds_it_whole_only_under_the_budget(stack_pair, monkeypatch):
    arr, sf = stack_pair
    assert isinstance(open_stack(sf.path), np.ndarray)
    assert isinstance(open_stack(sf.path, memory_mb=0.1), StackFile)
    monkeypatch.setenv("LITHOCORE_STACK_IN_MEMORY_MB", "0")  # the budget a user or a benchmark sets
    assert isinstance(open_stack(sf.path), StackFile)


def test_same_tiles_pixels_and_statistics_from_the_file(small_area, stack_pair):
    from lithocore.loaders import TileBatches

    arr, sf = stack_pair
    ts = make_tiles(small_area.labels, small_area.mask, size=32, stride=8, n_samples=40, seed=5)
    region = window_pixels(small_area.shape, ts.train, 32) & small_area.mask
    s_arr, s_file = region_stats(arr, region), region_stats(sf, region)
    assert s_arr == s_file and s_arr["pixels"] == int(region.sum())
    sel = arr[:, region].astype(np.float64)  # against numpy over the same pixels
    np.testing.assert_allclose(s_arr["mean"], np.nanmean(sel, 1), rtol=1e-9)
    np.testing.assert_allclose(s_arr["std"], np.nanstd(sel, 1), rtol=1e-9)
    kw = dict(mean=s_arr["mean"], std=s_arr["std"], seed=3, augment=True)
    a = TileBatches(arr, small_area.labels, small_area.mask, ts.train, 32, 4, **kw)
    b = TileBatches(sf, small_area.labels, small_area.mask, ts.train, 32, 4, **kw)
    for i in range(len(a)):
        (xa, ya), (xb, yb) = a[i], b[i]
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    pixels = forest.sample_pixels(small_area.labels, small_area.mask, 0.2, seed=2)
    rng = np.random.default_rng(0).permutation(len(pixels))  # any order, across every strip
    np.testing.assert_array_equal(pixel_values(sf, pixels[rng]), arr.reshape(arr.shape[0], -1)[:, pixels[rng]].T)


def test_neighbourhood_strips_match_the_whole_scene_filters(small_area, stack_pair):
    arr, sf = stack_pair
    lazy = Neighbourhood(arr, (5, 15))
    whole, names = forest.neighbourhood_features(arr, (5, 15), lazy.fill)
    assert lazy.shape == whole.shape and lazy.names() == names
    got = lazy[:, :, :]
    # a pixel's values come from its own windows: the same bit for bit computed whole, strip by strip, from the file
    np.testing.assert_array_equal(got, whole)
    ok = small_area.mask
    # and they are the local means (scipy's filter, to rounding)
    filled = np.where(np.isfinite(arr[2]), arr[2], lazy.fill[2])
    scipy_mean = ndimage.uniform_filter(filled, 15, mode="reflect")
    np.testing.assert_allclose(got[names.index("mean15(2)")][ok], scipy_mean[ok], rtol=1e-5,
                               atol=1e-5 * np.nanstd(arr[2]))
    from_file = Neighbourhood(sf, (5, 15), lazy.fill)
    r0 = STRIP_ROWS - 3
    np.testing.assert_array_equal(from_file[:, r0:r0 + 10, 4:40], got[:, r0:r0 + 10, 4:40])
    pixels = np.flatnonzero(ok)[::37]
    np.testing.assert_array_equal(pixel_values(from_file, pixels), pixel_values(lazy, pixels))


def test_neighbourhood_at_scattered_pixels_is_the_strips_values():
    """Scattered pixels (few a strip: their windows alone) and dense ones (the strip's filters), at the scene's edges
    and beside not-finite values, get the values of the whole scene's computation."""
    rng = np.random.default_rng(4)
    scale, level = np.array([1.0, 50.0, 1e4])[:, None, None], np.array([0.0, 3e3, 5e4])[:, None, None]
    arr = (rng.standard_normal((3, 150, 90)) * scale + level).astype(np.float32)
    arr[1, 40:44, 10:30] = np.nan
    arr[2, 100, 5] = np.inf
    lazy = Neighbourhood(arr, (5, 15))
    whole = forest.neighbourhood_features(arr, (5, 15), lazy.fill)[0]
    assert np.isfinite(whole[3:]).all()  # not-finite values count as the channel's mean in every window
    # its default fill, each channel's mean over its finite values, is the scene's mean (to float32 rounding)
    np.testing.assert_allclose(forest.neighbourhood_features(arr, (5, 15))[0], whole, rtol=1e-6)
    table = whole.reshape(whole.shape[0], -1).T
    H, W = arr.shape[1:]
    corners = [0, W - 1, (H - 1) * W, H * W - 1, 41 * W + 12, 5 * W + 3]
    sparse = np.concatenate([corners, rng.choice(H * W, 20, replace=False)])
    n = Neighbourhood(arr, (5, 15), lazy.fill)
    np.testing.assert_array_equal(n.pixel_values(sparse), table[sparse])
    assert n._strip is None  # computed from their windows, no strip's filters
    dense = np.arange(64 * W, 128 * W)[::3]
    np.testing.assert_array_equal(n.pixel_values(dense), table[dense])
    assert n._strip is not None and n._strip[0] == 64  # from the strip's
    assert np.isnan(lazy.pixel_values(np.array([41 * W + 12]))[0, 1])  # the channel itself as it is


def test_several_stacks_at_the_same_pixels_read_the_file_once(small_area, stack_pair, file_rows):
    """at_pixels: the stack, its neighbourhood and both side by side at the same scattered pixels, each strip's rows
    decompressed once for all of them, the values those of each stack read alone (and of the in-memory stack)."""
    arr, path = stack_pair
    sf = StackFile(path.path)
    fill = Neighbourhood(arr, (5, 15)).fill
    stacks = {"stack": sf, "context": Neighbourhood(sf, (5, 15), fill),
              "both": Channels(sf, Neighbourhood(sf, (3,), fill))}
    pixels = np.random.default_rng(1).permutation(np.flatnonzero(small_area.mask))[:3000]
    alone = {m: pixel_values(s, pixels) for m, s in stacks.items()}
    file_rows.clear()
    got = at_pixels(stacks, np.concatenate([pixels, pixels[:50]]))  # repeated pixels are read once
    H = arr.shape[1]
    assert len({p // arr.shape[2] // STRIP_ROWS for p in pixels}) == -(-H // STRIP_ROWS)  # pixels in every strip
    assert sum(file_rows) == H  # and each row read once for every stack
    for m, s in stacks.items():
        np.testing.assert_array_equal(pixel_values(got[m], pixels), alone[m])
    np.testing.assert_array_equal(pixel_values(got["stack"], pixels), pixel_values(arr, pixels))
    np.testing.assert_array_equal(pixel_values(at_pixels({"s": arr}, pixels)["s"], pixels), alone["stack"])
    file_rows.clear()
    other = np.setdiff1d(np.flatnonzero(small_area.mask), pixels)[:5]  # pixels not read at first: from the stack
    np.testing.assert_array_equal(pixel_values(got["context"], other), pixel_values(Neighbourhood(arr, (5, 15), fill),
                                                                                   other))
    assert file_rows


def _small_cv(small_area, stack, tmp, cluster=None, deep=True):
    folds = crossval.make_folds(small_area.labels, small_area.mask, k=2, block=96, buffer=32, seed=0)
    models = {"forest": forest_fold_model(stack, small_area, n_trees=20, fraction=0.2, seed=1),
              "forest_context": forest_fold_model(stack, small_area, n_trees=20, max_features="sqrt", fraction=0.2,
                                                  seed=1, neighbourhood=(5,))}
    if deep:
        cfg = TrainingConfig(architecture="unet", width=1 / 16, tile=32, stride=16, n_samples=12, epochs=1,
                             batch_size=4, optimizer="adam", learning_rate=1e-3, seed=0)
        models["unet"] = deep_fold_model(stack, small_area, cfg, tmp / "deep")
    return crossval.cross_validate(small_area.labels, small_area.mask, small_area.classes.names, folds, models,
                                   progress=False, cluster=cluster, cache_dir=tmp / "cache", cache_key="k")


def test_cross_validation_on_a_two_worker_cluster_is_that_of_one_process(small_area, stack_pair, tmp_path):
    """Forests and the U-Net: the same out-of-fold maps and scores, bit for bit. (The U-Net's folds train in
    processes of their own in both, as the hybrid's network does: notebook 06's test runs the hybrid.)"""
    arr, sf = stack_pair
    one = _small_cv(small_area, arr, tmp_path / "one")
    two = _small_cv(small_area, sf, tmp_path / "two", cluster="local:2")
    for name in one["oof"]:
        np.testing.assert_array_equal(one["oof"][name], two["oof"][name], err_msg=name)
        assert one["pooled"][name] == two["pooled"][name]
    assert [f["scores"] for f in one["folds"]] == [f["scores"] for f in two["folds"]]
    labelled = small_area.mask & (small_area.labels != NO_LABEL)
    assert (one["oof"]["forest"][labelled] != NO_LABEL).all()  # every labelled pixel was predicted by a fold model


def test_network_folds_side_by_side_train_what_they_train_one_after_another(small_area, stack_pair, tmp_path,
                                                                          monkeypatch):
    """In one process the network's folds train in processes of their own, several at once: the same out-of-fold
    map and scores as one at a time (and two did run at once)."""
    running, most = [], []
    fold_process = crossval._fold_process

    def counted(*args, **kwargs):
        running.append(1)
        most.append(len(running))
        try:
            return fold_process(*args, **kwargs)
        finally:
            running.pop()

    monkeypatch.setattr(crossval, "_fold_process", counted)
    folds = crossval.make_folds(small_area.labels, small_area.mask, k=2, block=96, buffer=32, seed=0)
    cfg = TrainingConfig(architecture="unet", width=1 / 16, tile=32, stride=16, n_samples=12, epochs=1, batch_size=4,
                         optimizer="adam", learning_rate=1e-3, seed=0)
    runs = []
    for at_once in (1, 2):
        monkeypatch.setattr(crossval, "side_by_side", lambda n: min(n, at_once))
        models = {"unet": deep_fold_model(stack_pair[0], small_area, cfg, tmp_path / str(at_once))}
        runs.append(crossval.cross_validate(small_area.labels, small_area.mask, small_area.classes.names, folds,
                                            models, progress=False))
        assert max(most) == at_once  # two folds: one after the other, then both at once
        most.clear()
    one, two = runs
    np.testing.assert_array_equal(one["oof"]["unet"], two["oof"]["unet"])
    assert [f["scores"] for f in one["folds"]] == [f["scores"] for f in two["folds"]]
