"""Backends and devices: training data-parallel over two (simulated) devices under JAX, and a model trained
under JAX mapping a scene under TensorFlow (a `.keras` file travels between backends)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("jax")

SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np, keras, jax
    from lithocore.model import build_fcn8s
    from lithocore.settings import TrainingConfig
    from lithocore.training import compile_model, data_parallel

    cfg = TrainingConfig(tile=64, batch_size=4, epochs=1, optimizer="adam", learning_rate=1e-3, width=1 / 16, fc=16)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 64, 64, 3)).astype("float32")
    y = (x[..., 0] > 0).astype("int32")
    keras.utils.set_random_seed(0)
    with data_parallel(cfg.batch_size) as dist:
        model = build_fcn8s(3, 2, width=cfg.width, fc=cfg.fc, tile=64, upsampling="bilinear")
        compile_model(model, 2, cfg)
        hist = model.fit(x, y, batch_size=cfg.batch_size, epochs=3, verbose=0)
    kernel = model.get_layer("conv1_1").kernel.value
    model.save(sys.argv[1])
    print(json.dumps(dict(devices=len(jax.devices()), distribution=type(dist).__name__ if dist else None,
                          weight_devices=len(kernel.sharding.device_set), loss=hist.history["loss"],
                          prediction=np.asarray(model.predict_on_batch(x[:1])).tolist())))
''')


def test_data_parallel_training_over_two_devices_and_the_model_maps_under_tensorflow(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    path = tmp_path / "jax_model.keras"
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["devices"] == 2 and res["distribution"] == "DataParallel"
    assert res["weight_devices"] == 2  # the weights live on both devices: replicated
    assert np.isfinite(res["loss"]).all() and res["loss"][-1] < res["loss"][0]  # it trained
    # the JAX-trained model maps under this process's backend (TensorFlow) with the same predictions
    import keras

    from lithocore import mapping

    model = keras.saving.load_model(path, compile=False)
    x = np.random.default_rng(0).standard_normal((8, 64, 64, 3)).astype("float32")
    assert np.allclose(np.asarray(model.predict_on_batch(x[:1])), np.asarray(res["prediction"]), atol=1e-4)
    stack = np.random.default_rng(2).standard_normal((3, 100, 130)).astype(np.float32)
    classes, conf = mapping.map_array(model, stack, np.ones((100, 130), bool), [0] * 3, [1] * 3, progress=False)
    assert classes.shape == (100, 130) and set(np.unique(classes)) <= {0, 1} and np.all(conf >= 0.5 - 1e-6)
