"""The client's side of a cross-validation on a Dask cluster: what receiving the folds' predictions costs it, with
models that cost nothing (each returns its fold's test region), on a made run's labels and folds.

    PYTHONPATH=benchmarks python benchmarks/bench_cv_exchange.py --folder runs/bench/e2e/run_20000 \\
        --manifest runs/bench/e2e/area_20000/manifest.yaml --models 3 --workers 2

(``PYTHONPATH``: the workers import the models from this file.) Prints one JSON line: ``client_before_mb`` (the
client's resident memory with the study area, folds and out-of-fold maps made), ``client_peak_mb`` (its peak over
the cross-validation), ``rise_mb`` and ``seconds``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


class Passthrough:
    """A fold model that costs nothing: its fold's test region as the prediction (class 1 there, 0 elsewhere)."""

    def __call__(self, i, train, test):
        return np.asarray(test, np.uint8)


def _rss_mb() -> float:
    text = Path("/proc/self/status").read_text()
    return int(next(l for l in text.splitlines() if l.startswith("VmRSS")).split()[1]) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    a = ap.parse_args()

    from distributed import Client, LocalCluster

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_cv_exchange import Passthrough as Model  # by this module's name: the workers import it so
    from bench_end_to_end import _run
    from lithocore import crossval

    run = _run(Path(a.folder), Path(a.manifest), a.epochs)
    area, folds = run.stack()[0], run.folds()
    models = {f"m{j}": Model() for j in range(a.models)}
    with LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
            Client(lc), tempfile.TemporaryDirectory(prefix=".bench-exchange-", dir=run.folder.cv_dir) as tmp:
        before = _rss_mb()
        t0 = time.perf_counter()
        out = crossval.cross_validate(area.labels, area.mask, area.classes.names, folds, models, cache_dir=tmp,
                                      cluster=lc.scheduler_address, progress=False)
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(pixels=int(area.labels.size), models=a.models, folds=folds.k, workers=a.workers,
                          client_before_mb=round(before), client_peak_mb=round(peak), rise_mb=round(peak - before),
                          seconds=round(seconds, 1), oof_class_1=int((out["oof"]["m0"] == 1).sum()))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
