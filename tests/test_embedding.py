"""Issue 23's deep parts: the self-supervised pretraining on the whole scene (what it hides, that it is reproducible,
reused only when made from the same stack and settings), the network started from it, the embedding as a forest's
extra channels, and the hybrid of a fold's network and forest."""

import json

import numpy as np
import pytest

from lithocore import crossval, fusion
from lithocore.area import NO_LABEL
from lithocore.embedding import (EMBEDDING_LAYER, EmbeddingSettings, MaskedTiles, pretrained_network, read_embedding,
                                 scene_embedding)
from lithocore.folds import HybridFold, deep_fold_model, forest_fold_model
from lithocore.settings import TrainingConfig
from lithocore.stackfile import Channels, pixel_values

SMALL = EmbeddingSettings(dims=4, width=1 / 16, tile=32, n_tiles=16, batch_size=4, epochs=1, patch=8)


@pytest.fixture(scope="module")
def stack(small_area):
    res = fusion.fuse_study_area(small_area, progress=False)
    return fusion.build_stack(res, small_area)[0].astype(np.float32)


@pytest.fixture(scope="module")
def embedded(small_area, stack, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    return run, scene_embedding(run, stack, small_area.mask, SMALL, stack_key="s1", progress=False)


def test_masked_tiles_hide_patches_and_channels_and_weigh_them(small_area, stack):
    C = stack.shape[0]
    s = EmbeddingSettings(tile=32, batch_size=3, patch=8, patch_ratio=0.5, channel_ratio=0.3)
    data = MaskedTiles(stack, small_area.mask, np.array([[0, 0], [40, 60], [100, 100]]), s,
                       np.zeros(C, np.float32), np.ones(C, np.float32))
    x, y = data[0]
    assert x.shape == (3, 32, 32, C) and y.shape == (3, 32, 32, 2 * C)
    target, w = y[..., :C], y[..., C:]
    hidden = w == 4.0
    assert hidden.any() and (w == 1.0).any()
    assert (x[hidden] == 0).all()  # what is hidden is not shown
    shown = w == 1.0
    np.testing.assert_array_equal(x[shown], target[shown])  # what is shown is the target itself
    assert not hidden.all(axis=(1, 2)).all(axis=1).any()  # no tile has every channel hidden
    np.testing.assert_array_equal(data[0][0], x)  # the same batch for the same (seed, epoch, batch)


def test_embedding_is_reproducible_nan_outside_and_remade_only_when_its_inputs_change(small_area, stack, embedded,
                                                                                        tmp_path, capsys):
    run, npy = embedded
    emb = read_embedding(npy)
    assert emb.shape == (SMALL.dims, *small_area.labels.shape)
    assert np.isfinite(emb[:, small_area.mask]).all() and np.isnan(emb[:, ~small_area.mask]).all()
    meta = json.loads((run / "embedding" / "embedding.json").read_text())
    assert meta["stack_key"] == "s1" and len(meta["loss"]) == SMALL.epochs
    # the same stack and settings: the file is reused as it is
    mtime = npy.stat().st_mtime_ns
    assert scene_embedding(run, stack, small_area.mask, SMALL, stack_key="s1", progress=False) == npy
    assert npy.stat().st_mtime_ns == mtime
    # made again elsewhere from the same inputs: the same numbers
    again = read_embedding(scene_embedding(tmp_path, stack, small_area.mask, SMALL, stack_key="s1", progress=False))
    np.testing.assert_array_equal(np.asarray(again), np.asarray(emb))
    # another stack: made again, and said
    scene_embedding(tmp_path, stack, small_area.mask, SMALL, stack_key="s2", progress=False)
    assert "another stack or other settings" in capsys.readouterr().out


def test_network_starts_from_the_pretrained_layers(small_area, stack, embedded):
    from lithocore.framework import start_keras

    run, _ = embedded
    keras = start_keras()
    path = run / "embedding" / "autoencoder.keras"
    auto = keras.models.load_model(path, compile=False, safe_mode=False)
    cfg = TrainingConfig(architecture="unet", width=SMALL.width, tile=32, norm="none")
    net = pretrained_network(path, cfg, stack.shape[0], len(small_area.classes))
    for name in ("down1_conv1", "bottom_conv2", "dec1_conv2"):
        for a, b in zip(net.get_layer(name).get_weights(), auto.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert EMBEDDING_LAYER not in [layer.name for layer in net.layers]  # the head is the classifier's own
    with pytest.raises(ValueError, match="no layer of this pretrained network fits"):
        pretrained_network(path, TrainingConfig(architecture="fcn8s", width=SMALL.width, tile=32),
                           stack.shape[0], len(small_area.classes))


def test_channels_read_as_the_stacked_arrays(stack, embedded):
    emb = np.asarray(read_embedding(embedded[1]))
    both = Channels(stack, emb)
    whole = np.concatenate([stack, emb])
    np.testing.assert_array_equal(both[:, 10:70, 5:50], whole[:, 10:70, 5:50])
    pixels = np.arange(0, whole[0].size, 97)
    np.testing.assert_array_equal(pixel_values(both, pixels), pixel_values(whole, pixels))
    with pytest.raises(ValueError, match="different grids"):
        Channels(stack, emb[:, :10])


def test_hybrid_is_its_forest_at_weight_zero_and_its_network_at_one(small_area, stack, tmp_path):
    folds = crossval.make_folds(small_area.labels, small_area.mask, k=2, block=96, buffer=32, seed=0)
    cfg = TrainingConfig(architecture="unet", width=1 / 16, tile=32, stride=16, n_samples=12, epochs=1, batch_size=4,
                         seed=0)
    deep = deep_fold_model(stack, small_area, cfg, tmp_path / "deep")
    rf = forest_fold_model(stack, small_area, n_trees=20, max_features="sqrt", fraction=0.2, seed=1,
                           neighbourhood=(5,))
    train, test = crossval.fold_regions(folds, 0, small_area.mask)
    test = test & small_area.mask
    np.testing.assert_array_equal(HybridFold(deep, rf, weight=0.0)(0, train, test)[test], rf(0, train, test)[test])
    hybrid = HybridFold(deep, rf, weight=1.0)(0, train, test)
    network = deep(0, train, test)  # the same network (seeded), mapped in the workbook's windows
    assert (hybrid[test] == network[test]).mean() > 0.99
    assert (hybrid[~test] == NO_LABEL).all()


def test_an_embedding_too_big_for_memory_is_refused_before_pretraining(small_area, stack, tmp_path, monkeypatch):
    monkeypatch.setenv("LITHOCORE_MEMORY_LIMIT", "100K")  # the 192 x 192 px, 4-channel embedding needs 1.1 MiB
    with pytest.raises(MemoryError, match="needs about 1.1 MiB while it is made, where 0.1 MiB is available"):
        scene_embedding(tmp_path, stack, small_area.mask, SMALL, stack_key="s1", progress=False)
    assert not (tmp_path / "embedding").exists()  # nothing begun


def test_inner_validation_keeps_the_best_epoch_chosen_away_from_the_test_fold(small_area, stack, tmp_path):
    """With ``inner_validation`` a fold network holds part of its own training side out (never the fold's test
    region), scores every epoch there and keeps the epoch of lowest validation loss: the network returned is the
    one saved, and its epoch is the history's minimum."""
    import keras

    from lithocore.training import read_history

    folds = crossval.make_folds(small_area.labels, small_area.mask, k=2, block=64, buffer=16, seed=0)
    cfg = TrainingConfig(architecture="unet", width=1 / 16, tile=32, stride=8, n_samples=20, epochs=4, batch_size=4,
                         seed=0, inner_validation=0.25)
    deep = deep_fold_model(stack, small_area, cfg, tmp_path)
    train, test = crossval.fold_regions(folds, 0, small_area.mask)
    inner, val = deep._inner_validation(0, train, np.random.default_rng((0, 0)))
    assert val is not None and len(val) == 5
    assert not (inner & ~train).any() and inner.sum() < train.sum()
    for r, c in val:  # every validation tile wholly on the training side, off the inner training region
        assert train[r:r + 32, c:c + 32].all() and not inner[r:r + 32, c:c + 32].any()
    net, _ = deep.fit(0, train)
    run = tmp_path / "unet_fold0"
    record = json.loads((run / "training.json").read_text())
    losses = read_history(run / "history.csv")["val_loss"]
    assert len(losses) == 4 and record["epoch_kept"] == int(np.argmin(losses))
    saved = keras.models.load_model(run / "model.keras", compile=False)
    for a, b in zip(net.get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(a, b)
    # where the inner area leaves no room for a training tile (a 128-px tile on Central Lapland's folds), the fold
    # trains on its whole training side and keeps its last epoch, rather than failing
    deep._inner_validation = lambda i, train, rng: (np.zeros_like(train), val)
    deep.fit(1, crossval.fold_regions(folds, 1, small_area.mask)[1])
    assert json.loads((tmp_path / "unet_fold1" / "training.json").read_text())["epoch_kept"] is None
