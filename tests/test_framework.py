"""Starting Keras: TensorFlow's host allocator is its pooling one, and its convolutions oneDNN's on any x86 CPU,
unless the user chose; both set before TensorFlow loads (settings read once, at its start)."""

import os
import platform
import subprocess
import sys

import pytest

pytest.importorskip("tensorflow")

SCRIPT = ("import os, sys; from lithocore.framework import start_keras; start_keras(); "
          "print(os.environ.get('TF_CPU_ALLOCATOR_USE_BFC'), 'tensorflow' in sys.modules)")


def _fresh_process(script, name, value, **more):
    """``script`` run in a fresh Python with the variable ``name`` unset (``value`` None) or set by the user."""
    env = {k: v for k, v in os.environ.items() if k != name} | more
    if value is not None:
        env[name] = value
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)


def _started(env_value):
    return _fresh_process(SCRIPT, "TF_CPU_ALLOCATOR_USE_BFC", env_value).stdout.split()


def test_tensorflow_pools_host_memory_unless_the_user_chose():
    assert _started(None) == ["true", "True"]  # set before TensorFlow was loaded
    assert _started("false") == ["false", "True"]  # the user's choice kept


CONV = ("from lithocore.framework import start_keras; import numpy as np; keras = start_keras(); "
        "keras.layers.Conv2D(4, 3)(np.zeros((1, 8, 8, 3), 'float32'))")


def _convolution_kernels(env_value):
    """The oneDNN primitives a convolution ran (oneDNN's own log: ``ONEDNN_VERBOSE``)."""
    out = _fresh_process(CONV, "TF_ENABLE_ONEDNN_OPTS", env_value, ONEDNN_VERBOSE="1")
    return [line for line in (out.stdout + out.stderr).splitlines()
            if line.startswith("onednn_verbose") and ",exec," in line and ",convolution," in line]


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="start_keras turns oneDNN on only on x86")
def test_convolutions_run_on_onednn_unless_the_user_chose():
    # TensorFlow itself turns oneDNN on only on CPUs with AVX-512 VNNI or newer; start_keras does on every x86 CPU
    # (an AVX2 machine trained the quick profile's U-Net 1.5-2.4 x faster with it: 174-199 against 84-114 ms a step)
    assert _convolution_kernels(None)
    assert not _convolution_kernels("0")  # the user's choice kept: TensorFlow's own (Eigen) convolution
