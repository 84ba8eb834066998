"""Mapping a large stack on disk: one process against a Dask ``LocalCluster`` of 1, 2, ... workers.

    python benchmarks/bench_scale.py [--size 20000] [--workers 1 2] [--memory-mb 512] [--shifts 1] [--out runs/bench/scale]

Builds (once, then reused) an N x N x 9 float32 GeoTIFF of smooth random fields, written block by block
(20000 x 20000 x 9 is 14.4 GB of float32 on disk; this process never holds more than a block), then maps it
with the slim FCN-8s (untrained, seeded: speed does not depend on the weights) through
``lithocore.mapping.map_geotiff``: first in this process (``workers: 0``, the reference), then on a local
cluster of each ``--workers`` count. Prints one JSON line per run with ``pixels``, ``seconds``,
``pixels_per_second``, ``peak_rss_mb_per_worker`` (the largest worker's peak resident memory; for the
one-process run, this process's growth during mapping), ``overhead_vs_one_process`` and ``identical`` (the
class map equals the one-process map on a sample of 64 random windows of 256 x 256 pixels).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np


def build_stack(path: Path, size: int, channels: int = 9, block: int = 1024, seed: int = 0) -> Path:
    """Smooth fields (sums of random plane waves) so that the stack compresses and looks like imagery."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from tqdm import tqdm

    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    waves = [(rng.uniform(-1, 1, (6, 2)) / rng.uniform(50, 800, (6, 1)), rng.uniform(0, 2 * np.pi, 6))
             for _ in range(channels)]
    prof = dict(driver="GTiff", width=size, height=size, count=channels, dtype="float32", crs=CRS.from_epsg(32646),
                transform=from_origin(400000, 3100000, 15, 15), tiled=True, blockxsize=512, blockysize=512,
                compress="deflate", predictor=3, BIGTIFF="YES")
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **prof) as dst:
        for r0 in tqdm(range(0, size, block), desc="building the stack", unit="block row"):
            rr = np.arange(r0, min(size, r0 + block), dtype=np.float32)[:, None]
            for c0 in range(0, size, block):
                cc = np.arange(c0, min(size, c0 + block), dtype=np.float32)[None, :]
                arr = np.stack([np.sum([np.sin(k[0] * rr + k[1] * cc + p) for k, p in zip(*w)], axis=0)
                                for w in waves]).astype(np.float32)
                dst.write(arr, window=rasterio.windows.Window(c0, r0, arr.shape[2], arr.shape[1]))
    tmp.rename(path)
    return path


def _model(channels: int, classes: int):
    from lithocore.framework import start_keras
    from lithocore.model import any_size, build_fcn8s

    keras = start_keras()  # as the workbook starts it
    keras.utils.set_random_seed(0)
    return any_size(build_fcn8s(channels, classes, width=0.125, fc=256, tile=128, upsampling="bilinear"))


def _worker_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(stack: Path, out: Path, workers: int, memory_mb: float, reference: Path | None, shifts: int = 1) -> dict:
    import rasterio

    from lithocore import mapping
    from lithocore.area import ClassTable

    table = ClassTable.from_list([{"id": i + 1, "name": f"unit {i + 1}"} for i in range(8)])
    model = _model(9, 8)
    with rasterio.open(stack) as src:
        H, W = src.height, src.width
    cluster = None
    client = None
    if workers:
        from distributed import Client, LocalCluster

        lc = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          memory_limit=0)
        client = Client(lc)
        cluster = client
    before = _worker_peak_mb()
    t0 = time.perf_counter()
    res = mapping.map_geotiff(model, stack, out, table, [0.0] * 9, [1.0] * 9, memory_mb=memory_mb,
                              cluster=cluster, shifts=shifts, progress=True, prefix=f"workers{workers}")
    seconds = time.perf_counter() - t0
    if client is not None:
        peak = max(client.run(_worker_peak_mb).values())
        client.close()
        lc.close()
    else:
        peak = _worker_peak_mb() - before
    identical = None
    if reference is not None:
        rng = np.random.default_rng(1)
        with rasterio.open(res["classes"]) as a, rasterio.open(reference) as b:
            identical = True
            for _ in range(64):
                r, c = int(rng.integers(0, max(1, H - 256))), int(rng.integers(0, max(1, W - 256)))
                win = rasterio.windows.Window(c, r, min(256, W), min(256, H))
                identical &= bool(np.array_equal(a.read(1, window=win), b.read(1, window=win)))
    return dict(workers=workers, pixels=H * W, seconds=round(seconds, 1), mapping_seconds=round(res["mapping_seconds"], 1),
                pixels_per_second=round(H * W / seconds), peak_rss_mb_per_worker=round(peak),
                windows=res["windows"], window=res["window"], memory_mb=memory_mb, shifts=shifts, identical=identical,
                classes=res["classes"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--memory-mb", type=float, default=512, help="memory for one window on each worker")
    ap.add_argument("--shifts", type=int, default=1, help="shifted passes per window (the workbook maps with 4)")
    ap.add_argument("--out", default="runs/bench/scale")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stack = build_stack(out / f"stack_{a.size}.tif", a.size)
    ref = run(stack, out, 0, a.memory_mb, None, a.shifts)
    ref["overhead_vs_one_process"] = 1.0
    print(json.dumps(ref), flush=True)
    for k in a.workers:
        res = run(stack, out, k, a.memory_mb, Path(ref["classes"]), a.shifts)
        res["overhead_vs_one_process"] = round(res["seconds"] * k / ref["seconds"], 3) if k == 1 else None
        res["speed_up_vs_one_process"] = round(ref["seconds"] / res["seconds"], 3)
        print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
