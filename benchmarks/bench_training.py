"""Training throughput and peak memory of the registry's models (slim FCN-8s, the paper's full FCN-8s, the quick
profile's U-Net), batch 5, 256-pixel tiles; under any Keras backend (``KERAS_BACKEND=jax`` on a GPU machine).

    python benchmarks/bench_training.py [--steps 5] [--models slim full] [--out runs/bench/training.json]

Each model runs in its own process (clean peak memory). Reports tiles/s, seconds per step, the time the
paper's 7000 iterations would take at that rate, and, on a GPU, the share of its peak FLOP rate reached
(``--peak-tflops``, e.g. 989 for an H100's dense bf16, 67 for its fp32).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

MODELS = {"slim": dict(architecture="fcn8s", width=0.125, fc=256, upsampling="bilinear"),
          "full": dict(architecture="fcn8s_paper"),  # Table 1 exactly: the paper profile's model
          "unet": dict(architecture="unet", width=0.125, norm="none")}  # the quick profile's model


def one(name: str, steps: int, tile: int, batch: int, mixed: bool) -> dict:
    import keras
    import numpy as np

    from lithocore.model import PixelCrossEntropy, backend_info, build_model

    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(0)
    m = build_model(dict(n_channels=9, n_classes=8, tile=tile, **MODELS[name]))  # through the registry
    m.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9, clipnorm=1.0), loss=PixelCrossEntropy(8, "sum"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, tile, tile, 9)).astype("float32")
    y = rng.integers(0, 8, (batch, tile, tile)).astype("int32")
    m.train_on_batch(x, y)  # compile / warm up
    t0 = time.perf_counter()
    for _ in range(steps):
        m.train_on_batch(x, y)
    per_step = (time.perf_counter() - t0) / steps
    flops = _train_flops(m, batch)
    return dict(model=name, parameters=m.count_params(), tile=tile, batch=batch, seconds_per_step=per_step,
                tiles_per_second=batch / per_step, paper_7000_iterations_hours=7000 * per_step / 3600,
                train_tflop_per_step=flops / 1e12, achieved_tflops=flops / per_step / 1e12,
                peak_memory_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, **backend_info())


def _train_flops(model, batch: int) -> float:
    """Forward multiply-adds of the convolutions x 2 (FLOPs) x 3 (forward + backward)."""
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("Conv2D", "Conv2DTranspose"):
            k = layer.kernel.shape  # (kh, kw, in, out) for Conv2D; (kh, kw, out, in) for transposed
            out_hw = layer.output.shape[1] * layer.output.shape[2]
            in_hw = layer.input.shape[1] * layer.input.shape[2]
            macs = (out_hw if kind == "Conv2D" else in_hw) * k[0] * k[1] * k[2] * k[3]
            total += macs
    return 2 * 3 * total * batch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["slim", "full", "unet"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--mixed", action="store_true", help="mixed float16 (GPUs)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak, for the utilisation share")
    ap.add_argument("--out", default="runs/bench/training.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.steps, a.tile, a.batch, a.mixed)))
        return 0
    results = []
    for name in a.models:
        cmd = [sys.executable, __file__, "--one", name, "--steps", str(a.steps), "--tile", str(a.tile),
               "--batch", str(a.batch)] + (["--mixed"] if a.mixed else [])
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        if a.peak_tflops:
            res["share_of_peak_flops"] = res["achieved_tflops"] / a.peak_tflops
        results.append(res)
        print(f"{name:5s} {res['parameters']:>11,d} params  {res['seconds_per_step']:7.3f} s/step  "
              f"{res['tiles_per_second']:7.2f} tiles/s  7000 it: {res['paper_7000_iterations_hours']:6.2f} h  "
              f"peak {res['peak_memory_gb']:.2f} GB  {res['achieved_tflops']:.3f} TFLOP/s")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
