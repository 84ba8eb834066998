"""The deep-learning framework, started by an explicit call where it is first needed.

``import lithocore`` starts no framework. :func:`start_keras` imports Keras (and TensorFlow, under Keras's default
backend) the first time a network is built, trained or loaded, and returns the ``keras`` module.

TensorFlow prints INFO lines (oneDNN, "Could not find cuda drivers") at import before its log level applies, and,
on a machine without an NVIDIA driver, ``failed call to cuInit ... UNKNOWN ERROR (303)`` at its first device
query, which reads as a failure on a CPU run. So, unless the user has set ``TF_CPP_MIN_LOG_LEVEL``, the level is
warnings and above (2), or errors are hidden too (3) only where no NVIDIA driver exists (no CUDA error can then be
real); and TensorFlow is imported with its C++ stderr caught, and every caught line that is not an INFO or WARNING
line is printed again. Python errors and warnings are never hidden. Before the import, TensorFlow is told to pool
its host memory and to compute convolutions with oneDNN on an x86 CPU (each unless the user said otherwise).
"""

import os
import platform
import sys

__all__ = ["start_keras"]


def _nvidia_driver() -> bool:
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")


def _import_tensorflow_quietly() -> None:
    if not os.environ.get("TF_CPP_MIN_LOG_LEVEL"):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2" if _nvidia_driver() else "3"
    if "tensorflow" in sys.modules or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return
    import importlib.util
    import tempfile

    if importlib.util.find_spec("tensorflow") is None:
        return
    # TensorFlow's pooling allocator for host memory: glibc hands every buffer over 32 MB back to the system when
    # freed, and the next step's is faulted in again, page by page (ten U-Net passes over a 1024 px window: 9.08 s,
    # 4.07 s of it in the kernel; pooled: 6.28 s, 0.25 s, peak memory 1,234 MB instead of 1,278 MB;
    # benchmarks/results/cpu2_bench_allocator.jsonl). A value the user set is kept.
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    # oneDNN's kernels for convolutions, on every x86 CPU: TensorFlow turns them on by itself only on CPUs with
    # AVX-512 VNNI or newer, so on an AVX2 machine (this project's AMD EPYC) its own Eigen kernels trained the
    # quick profile's U-Net at 174-199 ms a step of five 128-px tiles, oneDNN's at 84-114 ms (the slim FCN-8s 88-96
    # against 76-84 ms; a bare pass over the default area 2.25-2.45 s against 1.66-2.05 s); deterministic with the
    # same seed as before, the weights 1e-5 from Eigen's. A value the user set is kept; other CPUs (ARM) keep
    # TensorFlow's own choice (not measured here).
    if platform.machine().lower() in ("x86_64", "amd64"):
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        caught.seek(0)
        text = caught.read().decode(errors="replace")
    quiet = ("I0000", "W0000", "WARNING: All log messages before absl::InitializeLog()", "To enable the following")
    kept = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith(quiet)
            and "rebuild TensorFlow with the appropriate compiler flags" not in line]
    if kept:
        print("\n".join(kept), file=sys.stderr)


def start_keras():
    """Import Keras (TensorFlow's start-up log kept out of the notebook) and return the ``keras`` module.

    Examples
    --------
    >>> start_keras().__name__
    'keras'
    """
    _import_tensorflow_quietly()
    import keras

    return keras
