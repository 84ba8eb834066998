"""What one mapping window really holds against what the window plan assumes: a network (the quick profile's
U-Net, or the slim FCN-8s) maps one S x S window (``lithocore.mapping.map_array``, one pass, no margin), in a
fresh process per size; the growth of the peak resident memory over the same process after a small first
window (which traces the network) is the window's (the scene array is made before; the window's copy, its
normalised form, the network's outputs and the class and confidence maps count).

    python benchmarks/bench_window_memory.py [--models unet slim] [--sizes 800 1216 1632]

Prints one JSON line per model and size: ``bytes_per_px_measured``, ``bytes_per_px_live`` (the layer outputs alive
at once, ``mapping.live_floats``, float32), ``bytes_per_px_summed`` (every layer's output, the old estimate) and
``bytes_per_px_planned`` (what ``mapping.bytes_per_pixel`` gives the window plan).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def one(model_name: str, size: int, channels: int = 9, classes: int = 8) -> dict:
    import numpy as np

    from lithocore import mapping
    from lithocore.model import any_size, build_fcn8s, build_unet, with_input_size
    from lithocore.settings import PROFILES

    q = PROFILES["quick"].training
    if model_name == "unet":
        model = any_size(build_unet(channels, classes, width=q.width, norm=q.norm, tile=q.tile))
    else:
        model = any_size(build_fcn8s(channels, classes, tile=128, upsampling="bilinear", width=0.125, fc=256))
    probe = with_input_size(model, 64)
    summed = sum(int(np.prod(l.output.shape[1:])) for l in probe.layers if getattr(l, "output", None) is not None)

    def scene(n: int):
        return np.random.default_rng(0).normal(size=(channels, n, n)).astype(np.float32), np.ones((n, n), bool)

    def run(st, ok) -> None:
        mapping.map_array(model, st, ok, np.zeros(channels), np.ones(channels), margin=0, memory_mb=1e6, shifts=1,
                          progress=False)

    run(*scene(256))
    st, ok = scene(size)  # the scene itself is not the window's: made before the measure starts
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    run(st, ok)
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    return dict(model=model_name, size=size, growth_mb=round(growth),
                bytes_per_px_measured=round(growth * 2**20 / size**2, 1),
                bytes_per_px_live=4.0 * mapping.live_floats(probe) / 64**2,
                bytes_per_px_summed=4.0 * summed / 64**2, bytes_per_px_planned=mapping.bytes_per_pixel(model))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["unet", "slim"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[800, 1216, 1632])
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]))))
        return 0
    for m in a.models:
        for s in a.sizes:
            done = subprocess.run([sys.executable, __file__, "--one", m, str(s)], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stderr[-2000:])
            print(done.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
