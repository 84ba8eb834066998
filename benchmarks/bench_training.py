"""Training throughput and peak memory of the registry's models (slim FCN-8s, the paper's full FCN-8s, the quick
profile's U-Net), batch 5, 256-pixel tiles; under any Keras backend (``KERAS_BACKEND=jax`` on a GPU machine).

    python benchmarks/bench_training.py [--steps 5] [--models slim full] [--out runs/bench/training.json]
    python benchmarks/bench_training.py --models unet --tile 128 --steps 20 --processes 2 --threads 1
    KERAS_BACKEND=jax python benchmarks/bench_training.py --models full --steps 7000 --precision mixed_bfloat16

Each model runs in its own process (clean peak memory), on random tiles of the profile's shape (the workbook's
tile loader is not timed). Reports tiles/s, seconds per step, the time the paper's 7000 iterations take at that
rate (``--steps 7000`` runs them all), and, on a GPU, the share of its peak FLOP rate reached: ``--peak-tflops``,
or the dense peak of a known GPU for the precision used (H100/H200: 67 TFLOP/s fp32 without tensor cores, 495
with TF32 tensor cores, which XLA uses for float32 convolutions by default, 989 for bf16/fp16).

``--processes P`` trains P copies of each model at once, as P cross-validation folds would run side by side, and
``--threads T`` gives each TensorFlow process T intra-op and T inter-op threads (``TF_NUM_INTRAOP_THREADS``,
``TF_NUM_INTEROP_THREADS``; 0: TensorFlow's default, every core for both): a row per process, and the steps a
second of all P together (``steps_per_second_all``), whether folds side by side would train faster than one after
another on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

MODELS = {"slim": dict(architecture="fcn8s", width=0.125, fc=256, upsampling="bilinear"),
          "full": dict(architecture="fcn8s_paper"),  # Table 1 exactly: the paper profile's model
          "unet": dict(architecture="unet", width=0.125, norm="none")}  # the quick profile's model


# dense peak TFLOP/s of known GPUs: (fp32 without tensor cores, tf32 tensor cores, bf16/fp16 tensor cores)
PEAKS = {"H100": (67.0, 494.7, 989.4), "H200": (67.0, 494.7, 989.4), "A100": (19.5, 156.0, 312.0)}


def one(name: str, steps: int, tile: int, batch: int, precision: str, per_execution: int = 0) -> dict:
    """One model's training steps: ``train_on_batch`` (one step per Python call) or, with ``per_execution`` K,
    ``model.fit`` with ``steps_per_execution=K`` (K steps per compiled call, as the workbook's training can).
    Keras is started as the workbook starts it (``start_keras``: TensorFlow's pooled host memory and oneDNN's
    convolutions unless the environment says otherwise)."""
    import numpy as np

    from lithocore.framework import start_keras
    from lithocore.model import PixelCrossEntropy, build_model

    keras = start_keras()

    if precision != "float32":
        keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    m = build_model(dict(n_channels=9, n_classes=8, tile=tile, **MODELS[name]))  # through the registry
    m.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9, clipnorm=1.0), loss=PixelCrossEntropy(8, "sum"),
              steps_per_execution=max(1, per_execution))
    rng = np.random.default_rng(0)
    if per_execution:
        n = batch * per_execution * 2  # two compiled calls per epoch
        x = rng.standard_normal((n, tile, tile, 9)).astype("float32")
        y = rng.integers(0, 8, (n, tile, tile)).astype("int32")
        t0 = time.perf_counter()
        m.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)  # compile / warm up
        compile_s = time.perf_counter() - t0
        epochs = max(1, steps // (2 * per_execution))
        t0 = time.perf_counter()
        hist = m.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, shuffle=False)
        seconds = time.perf_counter() - t0
        steps = epochs * 2 * per_execution
        loss = hist.history["loss"][-1]
        return _result(m, name, tile, batch, precision, steps, seconds, compile_s, loss, per_execution)
    x = rng.standard_normal((batch, tile, tile, 9)).astype("float32")
    y = rng.integers(0, 8, (batch, tile, tile)).astype("int32")
    t0 = time.perf_counter()
    m.train_on_batch(x, y)  # compile / warm up
    m.train_on_batch(x, y)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = m.train_on_batch(x, y)  # returns the loss as a number: the step has finished on the device
    seconds = time.perf_counter() - t0
    return _result(m, name, tile, batch, precision, steps, seconds, compile_s, loss, 0)


def _result(m, name, tile, batch, precision, steps, seconds, compile_s, loss, per_execution) -> dict:
    import numpy as np

    from lithocore.model import backend_info

    per_step = seconds / steps
    flops = _train_flops(m, batch)
    info = backend_info()
    res = dict(model=name, parameters=m.count_params(), tile=tile, batch=batch, precision=precision, steps=steps,
               loop=f"fit, steps_per_execution={per_execution}" if per_execution else "train_on_batch",
               seconds=seconds, compile_seconds=compile_s, seconds_per_step=per_step,
               tiles_per_second=batch / per_step, paper_7000_iterations_minutes=7000 * per_step / 60,
               train_tflop_per_step=flops / 1e12, achieved_tflops=flops / per_step / 1e12,
               final_loss=float(np.asarray(loss).ravel()[0]),
               peak_memory_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
               tf_enable_onednn_opts=os.environ.get("TF_ENABLE_ONEDNN_OPTS"), **info)
    if info["backend"] == "jax" and info["gpu"]:
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        res["gpu_name"] = jax.devices()[0].device_kind
        res["gpu_peak_memory_gb"] = stats.get("peak_bytes_in_use", 0) / 1e9
    return res


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


def peak_shares(res: dict, peak_tflops: float = 0.0) -> dict:
    """The achieved FLOP rate as a share of the device's peak: the given one, or a known GPU's dense peaks."""
    if peak_tflops:
        return {"share_of_peak_flops": res["achieved_tflops"] / peak_tflops}
    name = res.get("gpu_name") or " ".join(res.get("gpus", []))
    for key, (fp32, tf32, half) in PEAKS.items():
        if key in name:
            if res["precision"] == "float32":
                return {"share_of_fp32_peak": res["achieved_tflops"] / fp32,
                        "share_of_tf32_peak": res["achieved_tflops"] / tf32}
            return {"share_of_bf16_peak": res["achieved_tflops"] / half}
    return {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["slim", "full", "unet"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16", "mixed_float16"],
                    help="Keras dtype policy (mixed precision for GPUs)")
    ap.add_argument("--per-execution", type=int, default=0,
                    help="time model.fit with steps_per_execution=K instead of train_on_batch")
    ap.add_argument("--peak-tflops", type=float, default=0.0,
                    help="the device's peak, for the utilisation share (default: known GPUs' dense peak)")
    ap.add_argument("--processes", type=int, default=1, help="copies of each model trained at once")
    ap.add_argument("--threads", type=int, default=0,
                    help="TensorFlow's intra-op and inter-op threads in each process (0: its default)")
    ap.add_argument("--out", default="runs/bench/training.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.steps, a.tile, a.batch, a.precision, a.per_execution)))
        return 0
    results = []
    for name in a.models:
        cmd = [sys.executable, __file__, "--one", name, "--steps", str(a.steps), "--tile", str(a.tile),
               "--batch", str(a.batch), "--precision", a.precision,
               "--per-execution", str(a.per_execution)]
        env = os.environ | ({"TF_NUM_INTRAOP_THREADS": str(a.threads), "TF_NUM_INTEROP_THREADS": str(a.threads)}
                            if a.threads > 0 else {})
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(max(1, a.processes))]
        rows = []
        for p in procs:
            out, err = p.communicate()
            if p.returncode:
                sys.stderr.write(err)
                raise SystemExit(f"{name}: the benchmark process failed (exit {p.returncode})")
            rows.append(json.loads(out.strip().splitlines()[-1]))
        together = sum(1 / r["seconds_per_step"] for r in rows)  # the timed steps overlap: all started at once
        for r in rows:
            r.update(processes=len(rows), threads=a.threads or None, steps_per_second_all=together,
                     **peak_shares(r, a.peak_tflops))
        res = rows[0]
        results.append(res)
        shares = "  ".join(f"{k[len('share_of_'):]} {v:.1%}" for k, v in res.items() if k.startswith("share_of_"))
        print(f"{name:5s} {res['parameters']:>11,d} params  {res['seconds_per_step']:8.4f} s/step  "
              f"{res['tiles_per_second']:8.2f} tiles/s  7000 it: {res['paper_7000_iterations_minutes']:7.1f} min  "
              f"peak {res['peak_memory_gb']:.2f} GB  {res['achieved_tflops']:.2f} TFLOP/s  {shares}", flush=True)
        if len(rows) > 1:
            print(f"      {len(rows)} processes at once: {together:.2f} steps/s together", flush=True)
        for r in rows:
            print(json.dumps(r), flush=True)
        results.extend(rows[1:])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
