"""TensorFlow's host allocator: the quick profile's U-Net run ten times over one window, in a fresh process with
glibc's allocator (``TF_CPU_ALLOCATOR_USE_BFC=false``) and with TensorFlow's pooling one (``true``, what
:func:`lithocore.framework.start_keras` sets unless the user chose).

    python benchmarks/bench_allocator.py [--size 1024] [--repeats 10]

Prints one JSON line per allocator: wall, user and kernel (``sys``) seconds of the ten passes, minor page faults
and the process's peak memory. glibc hands a buffer over 32 MB back to the system when it is freed, so every pass
faults its layer outputs in again, page by page; the pool keeps them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def one(size: int, repeats: int) -> dict:
    import resource
    import time

    import numpy as np

    from lithocore.framework import start_keras
    from lithocore.model import any_size, build_unet
    from lithocore.settings import PROFILES

    keras = start_keras()
    q = PROFILES["quick"].training
    keras.utils.set_random_seed(0)
    model = any_size(build_unet(9, 8, width=q.width, norm=q.norm, tile=q.tile))
    x = np.random.default_rng(0).normal(size=(1, size, size, 9)).astype(np.float32)
    model.predict_on_batch(x)  # traced
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(repeats):
        model.predict_on_batch(x)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return dict(allocator="tensorflow pool" if os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == "true" else "glibc",
                window=size, passes=repeats, seconds=round(time.perf_counter() - t0, 2),
                user_seconds=round(r1.ru_utime - r0.ru_utime, 2), sys_seconds=round(r1.ru_stime - r0.ru_stime, 2),
                minor_faults=r1.ru_minflt - r0.ru_minflt, peak_rss_mb=round(r1.ru_maxrss / 1024))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="window side (px)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.size, a.repeats)))
        return 0
    for value in ("false", "true"):
        env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC=value)
        out = subprocess.run([sys.executable, __file__, "--one", "--size", str(a.size), "--repeats", str(a.repeats)],
                             env=env, check=True, capture_output=True, text=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
