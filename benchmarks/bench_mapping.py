"""Mapping against one bare forward pass of the same model over the same scene, in one process (the quick
profile's U-Net, the slim and the full FCN-8s), and the random forest's fit / predict times, on the default-size synthetic area (1611 x 1650 pixels,
9 channels).

    python benchmarks/bench_mapping.py [--models slim full rf] [--memory-mb MB] [--out runs/bench/mapping.json]

Prints one JSON line per model. For an FCN: ``bare_pass_seconds`` (one ``predict_on_batch`` over the whole scene
padded to the 32-pixel grid, the least any mapping can cost), ``mapping_seconds`` (``lithocore.mapping.map_array``:
windows, margins, normalisation, class and confidence maps, one pass) and ``ratio_to_bare_pass``, and the same
with four shifted passes averaged (``ratio_to_bare_pass_4_shifts``: the price of a map without the FCN-8s's
4-px imprint) and as the workbook maps by default (``ratio_to_bare_pass_default``: one pass for a network that
leaves no imprint, the quick profile's U-Net; four for the FCN-8s; ``default_shifts``); medians of ``--repeats`` runs after a first that traces the network, same
process, same threads. Models are untrained (speed does not depend on
the weights). Each model runs in its own process so that peak memory (``peak_rss_mb``) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _stack():
    from lithocore import fusion
    from lithocore.data import load_study_area
    from lithocore.workbook import study_area_manifest

    area = load_study_area(study_area_manifest("", progress=False))
    res = fusion.fuse_study_area(area, progress=False, **fusion.FusionSettings().fuse_kwargs())
    stack, names, _ = fusion.build_stack(res, area)
    return area, stack


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fcn(name: str, memory_mb: float, margin: int, repeats: int) -> dict:
    import numpy as np

    from lithocore import mapping
    from lithocore.framework import start_keras
    from lithocore.model import any_size, build_fcn8s, build_unet

    keras = start_keras()  # as the workbook starts it: pooled host memory, oneDNN's convolutions
    area, stack = _stack()
    mean, std = np.nanmean(stack, (1, 2)), np.nanstd(stack, (1, 2))
    keras.utils.set_random_seed(0)
    if name == "unet":  # the quick profile's network, at its width
        from lithocore.settings import PROFILES

        q = PROFILES["quick"].training
        model = any_size(build_unet(stack.shape[0], len(area.classes), width=q.width, norm=q.norm, tile=q.tile))
    else:
        kw = dict(width=0.125, fc=256) if name == "slim" else dict(width=1.0, fc=4096)
        model = any_size(build_fcn8s(stack.shape[0], len(area.classes), tile=128, upsampling="bilinear", **kw))
    H, W = area.shape
    ph, pw = -(-H // 32) * 32, -(-W // 32) * 32
    x = np.zeros((1, ph, pw, stack.shape[0]), np.float32)
    x[0, :H, :W] = np.nan_to_num(((stack - mean[:, None, None]) / std[:, None, None]).transpose(1, 2, 0))
    before = _rss_mb()
    runs = (("bare", lambda: model.predict_on_batch(x)),
            ("mapping", lambda: mapping.map_array(model, stack, area.mask, mean, std, memory_mb=memory_mb,
                                                  margin=margin, shifts=1, progress=False)),
            ("mapping_4_shifts", lambda: mapping.map_array(model, stack, area.mask, mean, std, memory_mb=memory_mb,
                                                           margin=margin, shifts=4, progress=False)),
            ("mapping_default", lambda: mapping.map_array(model, stack, area.mask, mean, std, memory_mb=memory_mb,
                                                          margin=margin, progress=False)))
    for _, fn in runs:  # trace both first
        fn()
    samples = {label: [] for label, _ in runs}
    for _ in range(repeats):  # interleaved, so that a slow moment of the machine hits both
        for label, fn in runs:
            t0 = time.perf_counter()
            fn()
            samples[label].append(time.perf_counter() - t0)
    times = {k: float(np.median(v)) for k, v in samples.items()}
    plan = mapping.plan_windows(area.shape, bytes_per_px=mapping.bytes_per_pixel(model), memory_mb=memory_mb,
                                margin=margin)
    return dict(model=name, pixels=H * W, bare_pass_seconds=round(times["bare"], 3),
                mapping_seconds=round(times["mapping"], 3),
                ratio_to_bare_pass=round(times["mapping"] / times["bare"], 3),
                mapping_4_shifts_seconds=round(times["mapping_4_shifts"], 3),
                ratio_to_bare_pass_4_shifts=round(times["mapping_4_shifts"] / times["bare"], 3),
                default_shifts=mapping._shifts(model, None),
                ratio_to_bare_pass_default=round(times["mapping_default"] / times["bare"], 3),
                pixels_per_second=round(H * W / times["mapping"]), windows=len(plan.origins()),
                window=list(plan.window), margin=margin, planned_cost=round(plan.cost(), 3), memory_mb=memory_mb,
                repeats=repeats,
                peak_rss_mb=round(_rss_mb()), rss_before_mapping_mb=round(before))


def rf() -> dict:
    from lithocore import forest

    area, stack = _stack()
    px = forest.sample_pixels(area.labels, area.mask, 0.1, 0)
    model, fit_s = forest.train_forest(stack, area.labels, px, n_trees=200, max_features=3)
    _, _, pred_s = forest.predict_forest(model, stack, area.mask, progress=False)
    return dict(model="random forest", training_pixels=int(len(px)), fit_seconds=round(fit_s, 2),
                predict_seconds=round(pred_s, 2), pixels_per_second=round(area.mask.sum() / pred_s),
                peak_rss_mb=round(_rss_mb()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["unet", "slim", "full", "rf"])
    ap.add_argument("--memory-mb", type=float, default=None, help="mapping memory budget (default: the workbook's)")
    ap.add_argument("--margin", type=int, default=None, help="context around each window (default: the workbook's)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of each (the median is reported)")
    ap.add_argument("--out", default="runs/bench/mapping.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.memory_mb is None:
        from lithocore.mapping import memory_budget_mb

        a.memory_mb = round(memory_budget_mb())
    if a.margin is None:
        from lithocore.mapping import DEFAULT_MARGIN

        a.margin = DEFAULT_MARGIN
    if a.one:
        print(json.dumps(rf() if a.one == "rf" else fcn(a.one, a.memory_mb, a.margin, a.repeats)))
        return 0
    results = []
    for name in a.models:
        cmd = [sys.executable, __file__, "--one", name, "--memory-mb", str(a.memory_mb), "--margin", str(a.margin),
               "--repeats", str(a.repeats)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        results.append(res)
        print(json.dumps(res), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
