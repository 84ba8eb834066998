"""Starting Keras: TensorFlow's host allocator is its pooling one unless the user chose, set before TensorFlow
loads (a setting read once, at its start)."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("tensorflow")

SCRIPT = ("import os, sys; from lithocore.framework import start_keras; start_keras(); "
          "print(os.environ.get('TF_CPU_ALLOCATOR_USE_BFC'), 'tensorflow' in sys.modules)")


def _started(env_value):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    if env_value is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = env_value
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_tensorflow_pools_host_memory_unless_the_user_chose():
    assert _started(None) == ["true", "True"]  # set before TensorFlow was loaded
    assert _started("false") == ["false", "True"]  # the user's choice kept
