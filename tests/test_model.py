"""FCN-8s: Table 1's shapes, any size / channels / classes, the masked loss, training that learns and resumes,
and both Keras backends (TensorFlow here; JAX in a subprocess when it is installed)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from lithocore.settings import PROFILES, TrainingConfig, resolve
from lithocore import model as M
from lithocore import training as TR


def test_table1_shapes_full_width():
    m = M.build_fcn8s(9, 8, width=1.0, fc=4096, tile=256)
    out = {layer.name: tuple(layer.output.shape[1:]) for layer in m.layers}
    assert out["conv1_2"] == (256, 256, 64) and out["pool1"] == (128, 128, 64)
    assert out["conv2_2"] == (128, 128, 128) and out["pool2"] == (64, 64, 128)
    assert out["conv3_4"] == (64, 64, 256) and out["pool3"] == (32, 32, 256)
    assert out["conv4_4"] == (32, 32, 512) and out["pool4"] == (16, 16, 512)
    assert out["conv5_4"] == (16, 16, 512) and out["pool5"] == (8, 8, 512)
    assert out["conv6"] == out["conv7"] == out["conv8"] == (8, 8, 4096)
    assert out["tconv1"] == (16, 16, 512) and out["tconv2"] == (32, 32, 256)
    assert out["softmax"] == (256, 256, 8)
    convs = [layer for layer in m.layers if layer.name.startswith("conv") and "_" in layer.name]
    assert len(convs) == 16  # VGG-19's 16 convolutions
    assert m.count_params() == 64_736_456


@pytest.mark.parametrize("tile,channels,classes", [(64, 3, 2), (96, 12, 10)])
def test_any_size_channels_classes(tile, channels, classes):
    m = M.build_fcn8s(channels, classes, width=1 / 16, fc=16, tile=tile)
    y = np.asarray(m.predict(np.zeros((2, tile, tile, channels), np.float32), verbose=0))
    assert y.shape == (2, tile, tile, classes) and np.allclose(y.sum(-1), 1, atol=1e-4)
    free = M.build_fcn8s(channels, classes, width=1 / 16, fc=16)  # no fixed size: any multiple of 32
    assert np.asarray(free.predict(np.zeros((1, 160, 224, channels), np.float32), verbose=0)).shape == (1, 160, 224, classes)
    with pytest.raises(ValueError, match="multiple of 32"):
        M.build_fcn8s(channels, classes, tile=100)


def test_loss_ignores_unlabelled_and_sums_or_means():
    y_pred = np.full((1, 2, 2, 2), 0.5, np.float32)
    y_pred[0, 0, 0] = [0.9, 0.1]
    y_true = np.array([[[0, -1], [1, -1]]], np.int32)
    ln = np.log
    mean = float(M.PixelCrossEntropy(2, "mean")(y_true, y_pred))
    total = float(M.PixelCrossEntropy(2, "sum")(y_true, y_pred))
    assert np.isclose(total, -ln(0.9) - ln(0.5), atol=1e-5)
    assert np.isclose(mean, total / 2, atol=1e-5)
    weighted = float(M.PixelCrossEntropy(2, "sum", class_weights=[1.0, 3.0])(y_true, y_pred))
    assert np.isclose(weighted, -ln(0.9) - 3 * ln(0.5), atol=1e-5)
    acc = float(M.masked_accuracy(y_true, y_pred))
    assert np.isclose(acc, 0.5)  # pixel (0,0) right, pixel (1,0) a tie resolved to class 0: wrong


def _toy_batches(n=40, size=32, seed=0):
    """A learnable toy problem: the class is which channel is larger, in blobs."""
    from scipy import ndimage

    from lithocore.loaders import TileBatches

    rng = np.random.default_rng(seed)
    H = W = 128
    field = ndimage.gaussian_filter(rng.standard_normal((H, W)), 4)
    labels = (field > 0).astype(np.uint8)
    stack = np.stack([labels + 0.3 * rng.standard_normal((H, W)), 1 - labels + 0.3 * rng.standard_normal((H, W))])
    mask = np.ones((H, W), bool)
    windows = rng.integers(0, H - size, (n, 2))
    return TileBatches(stack.astype(np.float32), labels, mask, windows, size, 5, seed=seed), labels


def test_training_learns_saves_and_resumes(tmp_path):
    keras.utils.set_random_seed(0)
    batches, _ = _toy_batches()
    cfg = TrainingConfig(width=1 / 16, fc=16, tile=32, epochs=3, learning_rate=3e-3)
    m = M.build_fcn8s(2, 2, width=cfg.width, fc=cfg.fc, tile=32)
    TR.compile_model(m, 2, cfg)
    hist = TR.fit(m, batches, batches, tmp_path, cfg, verbose=0)
    assert len(hist["loss"]) == 3 and hist["loss"][-1] < hist["loss"][0]
    assert (tmp_path / "model.keras").is_file() and not (tmp_path / "backup").exists()
    scores = TR.evaluate_tiles(m, batches, ["a", "b"])
    assert scores["overall_accuracy"] > 0.75
    # the saved model loads without custom objects and predicts the same
    back = keras.models.load_model(tmp_path / "model.keras", compile=False)
    x, _ = batches[0]
    assert np.allclose(np.asarray(back.predict(x, verbose=0)), np.asarray(m.predict(x, verbose=0)), atol=1e-5)


def test_interrupted_training_resumes(tmp_path):
    """Kill training in epoch 3 of 4; a second call resumes at epoch 3, and the history has all 4 epochs."""

    class Boom(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    keras.utils.set_random_seed(0)
    batches, _ = _toy_batches()
    cfg = TrainingConfig(width=1 / 16, fc=16, tile=32, epochs=4)
    m = M.build_fcn8s(2, 2, width=cfg.width, fc=cfg.fc, tile=32)
    TR.compile_model(m, 2, cfg)
    original_fit = m.fit

    def fit_with_boom(*a, **k):
        k["callbacks"] = k["callbacks"] + [Boom()]
        return original_fit(*a, **k)

    m.fit = fit_with_boom
    with pytest.raises(KeyboardInterrupt):
        TR.fit(m, batches, batches, tmp_path, cfg, verbose=0)
    assert (tmp_path / "backup").exists()
    assert len(TR.read_history(tmp_path / "history.csv")["epoch"]) == 2
    m2 = M.build_fcn8s(2, 2, width=cfg.width, fc=cfg.fc, tile=32)
    TR.compile_model(m2, 2, cfg)
    hist = TR.fit(m2, batches, batches, tmp_path, cfg, verbose=0)
    assert hist["epoch"] == [0.0, 1.0, 2.0, 3.0]  # epochs 0-1 from the first run, 2-3 resumed
    assert not (tmp_path / "backup").exists()


def test_profiles():
    paper = PROFILES["paper"].training
    assert (paper.width, paper.fc, paper.tile, paper.stride, paper.n_samples, paper.batch_size) == (1.0, 4096, 256, 20, 1000, 5)
    assert (paper.optimizer, paper.learning_rate, paper.momentum, paper.loss_mode) == ("sgd", 1e-4, 0.9, "sum")
    assert paper.iterations == 7000 and paper.upsampling == "table1"  # the paper profile is Table 1 exactly
    assert PROFILES["quick"].training.upsampling == "bilinear"
    assert resolve("quick", upsampling="", epochs=-1) == PROFILES["quick"].training
    with pytest.raises(TypeError, match="unknown training setting"):
        resolve("quick", lr=1)


JAX_SCRIPT = textwrap.dedent('''
    import json, sys, numpy as np, keras
    sys.path.insert(0, sys.argv[1])
    from lithocore.model import build_fcn8s, PixelCrossEntropy, masked_accuracy
    keras.utils.set_random_seed(0)
    m = build_fcn8s(3, 4, width=1 / 16, fc=16, tile=32, upsampling="bilinear")
    m.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9, clipnorm=1.0),
              loss=PixelCrossEntropy(4, "sum"), metrics=[masked_accuracy])
    x = np.random.default_rng(0).standard_normal((10, 32, 32, 3)).astype("float32")
    y = np.random.default_rng(1).integers(-1, 4, (10, 32, 32)).astype("int32")
    h = m.fit(x, y, batch_size=5, epochs=2, verbose=0)
    m.save(sys.argv[2])
    print(json.dumps(dict(backend=keras.backend.backend(), loss=h.history["loss"])))
''')


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_trains_under_backend(backend, tmp_path):
    """The same model code trains under each backend; a model saved under one loads under the other."""
    if backend == "jax":
        pytest.importorskip("jax", reason="JAX is not installed here (the GPU machine has it)")
    env = dict(os.environ, KERAS_BACKEND=backend)
    script = tmp_path / "run.py"
    script.write_text(JAX_SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.abspath(M.__file__)))
    out = subprocess.run([sys.executable, str(script), root, str(tmp_path / "m.keras")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["backend"] == backend and all(np.isfinite(res["loss"]))
    back = keras.models.load_model(tmp_path / "m.keras", compile=False)  # loaded under this process's backend
    assert back.output_shape == (None, 32, 32, 4)


def test_bilinear_upsampling_variant(tmp_path):
    """The optional decoder starts smooth (Table 1's non-overlapping kernels start blocky), keeps the shapes,
    and saves / loads."""
    x = np.random.default_rng(0).standard_normal((1, 64, 64, 9)).astype(np.float32)
    changes = {}
    for up in ("table1", "bilinear"):
        keras.utils.set_random_seed(0)
        m = M.build_fcn8s(9, 8, width=1 / 8, fc=64, tile=64, upsampling=up)
        assert m.output_shape == (None, 64, 64, 8)
        cls = np.asarray(m.predict(x, verbose=0))[0].argmax(-1)
        changes[up] = (np.diff(cls, axis=1) != 0).mean()
    assert changes["bilinear"] < 0.1 < changes["table1"]
    m.save(tmp_path / "b.keras")
    back = keras.models.load_model(tmp_path / "b.keras", compile=False)
    assert np.allclose(np.asarray(back.predict(x, verbose=0)), np.asarray(m.predict(x, verbose=0)), atol=1e-5)
    with pytest.raises(ValueError, match="upsampling"):
        M.build_fcn8s(9, 8, upsampling="nearest")


@pytest.mark.parametrize("architecture,tile", [("fcn8s_paper", 32), ("fcn8s", 32), ("fcn8s", 96), ("unet", 32),
                                               ("unet", 96)])  # the paper's full-width model: one size is enough
def test_registry_builds_every_model_at_any_multiple_of_32(architecture, tile):
    from lithocore.model import build_model

    cfg = dict(architecture=architecture, n_channels=5, n_classes=3, width=1 / 16, fc=16, tile=None, norm="group")
    model = build_model(cfg)
    out = np.asarray(model.predict_on_batch(np.zeros((1, tile, tile, 5), np.float32)))
    assert out.shape == (1, tile, tile, 3) and np.allclose(out.sum(-1), 1, atol=1e-4)
    if architecture == "fcn8s_paper":  # Table 1 whatever the configuration says
        assert model.count_params() > 60e6 and "conv1_1_gn" not in [l.name for l in model.layers]
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model(dict(cfg, tile=48))


def test_group_normalisation_does_not_depend_on_the_batch():
    """Per-sample statistics: a tile's prediction is the same alone or in a batch of other tiles (batch
    normalisation in training mode is not, which broke mapping with batches of 5 similar tiles)."""
    from lithocore.model import build_model

    model = build_model(dict(architecture="fcn8s", n_channels=3, n_classes=4, width=1 / 16, fc=16, norm="group",
                             dropout=0.0))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 64, 64, 3)).astype(np.float32)
    alone = np.asarray(model(x[:1], training=True))
    batch = np.asarray(model(x, training=True))[:1]
    assert np.allclose(alone, batch, atol=1e-5)


def test_augmentation_applies_the_same_symmetry_to_tile_and_targets():
    from lithocore.loaders import _dihedral

    x = np.arange(4 * 4 * 2, dtype=np.float32).reshape(4, 4, 2)
    y = x[..., 0].astype(np.int32)
    seen = set()
    for k in range(8):
        xa, ya = _dihedral(x, y, k)
        assert np.array_equal(xa[..., 0].astype(np.int32), ya)
        seen.add(xa[..., 0].tobytes())
    assert len(seen) == 8  # eight different symmetries


def test_steps_per_execution_trains_the_same_model(tmp_path):
    """Several steps per compiled call (the GPU setting) is the same training: the same weights at the end."""
    weights = []
    for k in (1, 4):
        keras.utils.set_random_seed(0)
        batches, _ = _toy_batches(n=40)  # 8 batches of 5
        cfg = TrainingConfig(width=1 / 16, fc=16, tile=32, epochs=2, learning_rate=3e-3, dropout=0.0,
                                steps_per_execution=k)
        m = M.build_model(cfg.model_config(2, 2))
        TR.compile_model(m, 2, cfg)
        hist = TR.fit(m, batches, batches, tmp_path / f"spe{k}", cfg, verbose=0)
        assert hist["loss"][-1] < hist["loss"][0]
        weights.append([np.asarray(w) for w in m.get_weights()])
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(*weights))
    moved = max(float(np.abs(a - b).max()) for a, b in zip(weights[0], _fresh_weights()))
    assert moved > 1e-3  # the comparison is between trained models, not two untouched ones


def _fresh_weights():
    keras.utils.set_random_seed(0)
    cfg = TrainingConfig(width=1 / 16, fc=16, tile=32, dropout=0.0)
    return [np.asarray(w) for w in M.build_model(cfg.model_config(2, 2)).get_weights()]
