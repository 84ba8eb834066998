"""Fusing a large study area into its stack out of core: time and peak memory against the scene size.

    python benchmarks/bench_fuse_scale.py [--sizes 2000 5000 10000] [--memory-mb 256] [--in-memory-up-to 3000]

Builds (once, then reused) a study area of N x N pixels of 15 m on disk: nine guide bands (smooth random fields,
as ``bench_scale.py``), eight coarse layers on 1920 m cells (linear mixtures of the guide bands' cell means plus
noise, so that Eq. 1 finds a relation and Eq. 2 adds detail), and a label raster of four classes. Then, each in
a fresh process, writes the fused stack with :func:`lithocore.blockwise.write_stack` (the workbook's path) and,
up to ``--in-memory-up-to`` pixels a side, loads and fuses the area in memory as the first version did, and
compares the two stacks. Prints one JSON line per run: ``pixels``, ``seconds``, ``peak_rss_mb`` (the process's
peak resident memory), ``growth_mb`` (the peak above what the imported libraries hold), ``block_rows``, and for
the block-wise runs beside an in-memory one ``max_relative_difference``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FACTOR = 128  # coarse cell: 128 fine pixels (1920 m at 15 m)


def build_area(folder: Path, size: int, seed: int = 0) -> Path:
    """The study area's files and manifest (reused when present)."""
    import rasterio
    import yaml
    from rasterio.windows import Window

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_scale import build_stack

    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.yaml"
    if manifest.is_file():
        return manifest
    guide = build_stack(folder / "guide.tif", size, seed=seed)
    rng = np.random.default_rng(seed)
    ch = size // FACTOR + (size % FACTOR > 0)
    sums = np.zeros((9, ch, ch))
    counts = np.zeros((ch, ch))
    labels_prof = None
    with rasterio.open(guide) as src:
        labels_prof = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint8", crs=src.crs,
                           transform=src.transform, nodata=0, tiled=True, blockxsize=512, blockysize=512,
                           compress="deflate", BIGTIFF="YES")
        with rasterio.open(folder / "labels.tif", "w", **labels_prof) as lab:
            for r0 in range(0, size, FACTOR * 8):
                n = min(FACTOR * 8, size - r0)
                block = src.read(window=Window(0, r0, size, n)).astype(np.float64)
                rr = (np.arange(n) + r0) // FACTOR
                cc = np.arange(size) // FACTOR
                ids = (rr[:, None] * ch + cc[None, :]).ravel()
                counts += np.bincount(ids, minlength=ch * ch).reshape(ch, ch)
                for b in range(9):
                    sums[b] += np.bincount(ids, weights=block[b].ravel(), minlength=ch * ch).reshape(ch, ch)
                classes = (np.digitize(block[0], [-1.0, 0.0, 1.0]) + 1).astype(np.uint8)
                lab.write(classes, 1, window=Window(0, r0, size, n))
        cgrid_transform = src.transform * src.transform.scale(FACTOR, FACTOR)
        crs = src.crs
    means = sums / np.maximum(counts, 1)
    coarse = []
    for k in range(8):
        w = rng.normal(0, 1, 9)
        values = (np.tensordot(w, means, axes=1) + 0.3 * rng.normal(0, 1, (ch, ch))).astype(np.float32)
        path = folder / f"coarse_{k}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=ch, height=ch, count=1, dtype="float32", crs=crs,
                           transform=cgrid_transform, nodata=float("nan")) as dst:
            dst.write(values, 1)
        coarse.append(dict(path=path.name, name=f"layer{k}", units="", factor=FACTOR))
    man = dict(name=f"bench {size} x {size}", reference="guide.tif",
               guide=[dict(path="guide.tif", bands=[f"b{i + 1}" for i in range(9)], units="")],
               extra=[], coarse=coarse, points=[],
               labels=dict(path="labels.tif", nodata=0, classes=[dict(id=i, name=f"unit {i}") for i in range(1, 5)]))
    manifest.write_text(yaml.safe_dump(man, sort_keys=False))
    return manifest


def one(manifest: Path, out: Path, mode: str, memory_mb: float) -> dict:
    from lithocore import blockwise, fusion, outputs
    from lithocore.data import load_study_area
    import rasterio.features, scipy.ndimage, sklearn.linear_model, tqdm.auto  # noqa: F401,E401

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the libraries (TensorFlow among them)
    t0 = time.perf_counter()
    if mode == "blockwise":
        res = blockwise.write_stack(manifest, out, memory_mb=memory_mb, progress=False)
        extra = dict(block_rows=res["block_rows"], blocks=res["blocks"], memory_mb=memory_mb)
    else:
        area = load_study_area(manifest)
        result = fusion.fuse_study_area(area, progress=False, **fusion.FusionSettings().fuse_kwargs())
        stack, names, units = fusion.build_stack(result, area)
        outputs.write_stack_file(out, stack, names, units, area.grid)
        extra = {}
    seconds = time.perf_counter() - t0
    import rasterio

    with rasterio.open(out) as src:
        pixels = src.width * src.height
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(mode=mode, pixels=pixels, seconds=round(seconds, 1), pixels_per_second=round(pixels / seconds),
                peak_rss_mb=round(peak), growth_mb=round(peak - baseline), **extra)


def _max_relative_difference(a_path: Path, b_path: Path) -> float:
    import rasterio
    from rasterio.windows import Window

    worst = 0.0
    with rasterio.open(a_path) as a, rasterio.open(b_path) as b:
        for r0 in range(0, a.height, 1024):
            win = Window(0, r0, a.width, min(1024, a.height - r0))
            x, y = a.read(window=win), b.read(window=win)
            if not np.array_equal(np.isnan(x), np.isnan(y)):
                return float("inf")
            scale = np.nanmax(np.abs(y)) or 1.0
            worst = max(worst, float(np.nanmax(np.abs(x - y)) / scale) if np.isfinite(y).any() else 0.0)
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[2000, 5000, 10000])
    ap.add_argument("--memory-mb", type=float, default=256.0, help="memory for one block")
    ap.add_argument("--in-memory-up-to", type=int, default=3000, help="also fuse in memory up to this size")
    ap.add_argument("--out", default="runs/bench/fuse_scale")
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--build", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(Path(a.one[0]), Path(a.one[1]), a.one[2], a.memory_mb)))
        return 0
    if a.build:
        print(build_area(Path(a.build[0]), int(a.build[1])))
        return 0
    for size in a.sizes:
        folder = Path(a.out) / f"area{size}"
        # built in its own process: a child's peak memory starts at its parent's resident memory (Linux keeps the
        # high-water mark across fork and exec), so this process stays small
        subprocess.run([sys.executable, __file__, "--build", str(folder), str(size)], check=True)
        manifest = folder / "manifest.yaml"
        modes = ["blockwise"] + (["in_memory"] if size <= a.in_memory_up_to else [])
        rows = {}
        for mode in modes:
            out = folder / f"stack_{mode}.tif"
            cmd = [sys.executable, __file__, "--one", str(manifest), str(out), mode, "--memory-mb", str(a.memory_mb)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.stderr.write(done.stderr[-3000:])
                raise SystemExit(f"{mode} at {size}: failed")
            rows[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        if "in_memory" in rows:
            rows["blockwise"]["max_relative_difference"] = _max_relative_difference(
                folder / "stack_blockwise.tif", folder / "stack_in_memory.tif")
        for row in rows.values():
            print(json.dumps(row | dict(size=size)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
