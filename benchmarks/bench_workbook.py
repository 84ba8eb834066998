"""The whole workbook as `make workbook` runs it, timed, with the resident memory of every process it starts.

Runs ``python -m lithocore.workbook`` (default: the embedded area, quick profile) in a fresh process, ``--runs``
times into the same run folder (the second run measures what a rerun with nothing changed reuses), sampling the
resident set size of the workbook process and all its children (papermill kernels, Dask workers) every 0.5 s.
One JSON line per run: seconds per notebook and in all, the largest process's peak (MB) and the notebook running
when it peaked.

    python benchmarks/bench_workbook.py --run-dir runs/bench --runs 2 [--study-area data/central-lapland.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import psutil


def run_once(run_dir: Path, study_area: str, profile: str) -> dict:
    cmd = [sys.executable, "-m", "lithocore.workbook", "--run-dir", str(run_dir), "--profile", profile]
    if study_area:
        cmd += ["--study-area", study_area]
    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "bench_workbook.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(proc.pid)
    peak, peak_at = 0, ""
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                if rss > peak:
                    peak = rss
                    running = sorted((run_dir / "notebooks").glob(".tmp-*.ipynb"))  # runfolder.atomic_path's names
                    peak_at = running[-1].name[5:].split(".ipynb")[0] if running else "between notebooks"
        except psutil.Error:
            pass
        time.sleep(0.5)
    lines = log.read_text().splitlines()
    seconds = time.perf_counter() - t0
    timings = json.loads((run_dir / "timings.json").read_text()) if proc.returncode == 0 else {}
    return dict(rc=proc.returncode, seconds=round(seconds, 1), notebooks=timings,
                peak_rss_mb_max_process=round(peak / 2**20), peak_while=peak_at,
                tail=[] if proc.returncode == 0 else lines[-15:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default="runs/bench")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--study-area", default="")
    ap.add_argument("--profile", default="quick")
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir).resolve()
    for i in range(args.runs):
        out = run_once(run_dir, args.study_area, args.profile)
        print(json.dumps(dict(run=i + 1, machine=f"{platform.machine()}, {os.cpu_count()} CPUs", **out)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
