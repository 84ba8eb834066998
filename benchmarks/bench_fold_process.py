"""One cross-validation fold x model in a process of its own, as a cluster's worker runs a network's fold, on a run
whose stack, folds and cross-validation are made: its peak memory, resident and anonymous (sampled from /proc,
Linux), its seconds, and whether its prediction is the one the run's cross-validation kept.

    python benchmarks/bench_fold_process.py --folder runs/bench/e2e/run_20000 \\
        --manifest runs/bench/e2e/area_20000/manifest.yaml --fold 1 --model unet

The run is opened as ``bench_end_to_end.py`` opens it (quick profile, 2 folds, 1 epoch a fold); the models, folds
and mask are spilled to files (:func:`lithocore.crossval.spill`) and the fold runs as ``python -m
lithocore.crossval JOB OUT``, a network's checkpoints in a fresh folder (it trains, it does not resume). Prints
one JSON line: ``peak_rss_mb`` (the process's largest resident memory), ``peak_anon_mb`` and ``peak_file_mb``
(the largest anonymous and file-backed parts: the memory-mapped arrays and libraries are file pages the kernel
can drop), ``seconds``, ``identical_to_cv`` and ``pixels_differing_from_cv`` (a run made with another version may
differ: the mapping windows of a network changed with the window plan).
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def _status_mb(pid: int) -> dict | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "RssAnon", "RssFile") if k in fields}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--model", default="unet", help="unet (the run's network), forest or forest_context")
    ap.add_argument("--epochs", type=int, default=2, help="notebook 04's epochs, as the run was made with")
    ap.add_argument("--stack", choices=("file", "run"), default="file",
                    help="file: read window by window, as on a cluster; run: as the run holds it (in memory when small)")
    a = ap.parse_args()

    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_end_to_end import _run
    from lithocore.candidates import forest_candidates
    from lithocore.crossval import spill
    from lithocore.folds import deep_fold_model
    from lithocore.settings import ForestSettings
    from lithocore.stackfile import StackFile

    run = _run(Path(a.folder), Path(a.manifest), a.epochs)
    area, held = run.stack()[:2]
    stack = StackFile(run.folder.stack_path) if a.stack == "file" else held
    cfg, cv, folds = run.training(), run.cv(), run.folds()
    forest = ForestSettings(n_trees=50)  # as bench_end_to_end's cross-validation
    with tempfile.TemporaryDirectory(prefix=".bench-fold-", dir=run.folder.cv_dir) as tmp:
        tmp = Path(tmp)
        if a.model in ("forest", "forest_context"):  # as notebook 06's cross-validation makes them
            model = forest_candidates(forest)[a.model].fold_model(stack, area, fraction=forest.pixel_fraction,
                                                                 cap=cv["forest_cap"], seed=run.seed)
        else:
            model = deep_fold_model(stack, area, replace(cfg, epochs=cv["epochs"]), tmp / "checkpoints")
        (tmp / "spill").mkdir()
        payload = spill(dict(models={a.model: model}, folds=folds, mask=area.mask), tmp / "spill")
        del model, area, folds
        job, out = tmp / "job.pkl", tmp / "out.pkl"
        job.write_bytes(pickle.dumps((payload, a.fold, a.model, str(tmp)), protocol=pickle.HIGHEST_PROTOCOL))
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "lithocore.crossval", str(job), str(out)])
        peak = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
        while proc.poll() is None:
            now = _status_mb(proc.pid) or {}
            peak = {k: max(v, now.get(k, 0.0)) for k, v in peak.items()}
            time.sleep(0.5)
        seconds = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"the fold's process failed ({proc.returncode})")
        pred = np.load(pickle.loads(out.read_bytes())[0])
    kept = Path(run.folder.cv_dir) / f"fold{a.fold}_{a.model}.npz"
    differing = int((np.load(kept)["pred"] != pred).sum()) if kept.is_file() else None
    print(json.dumps(dict(pixels=int(pred.size), fold=a.fold, model=a.model, seconds=round(seconds, 1),
                          peak_rss_mb=round(peak["VmRSS"]), peak_anon_mb=round(peak["RssAnon"]),
                          peak_file_mb=round(peak["RssFile"]), identical_to_cv=None if differing is None else
                          differing == 0, pixels_differing_from_cv=differing)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
