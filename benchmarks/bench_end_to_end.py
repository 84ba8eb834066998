"""The workbook end to end on a large synthetic area: manifest -> stack -> tiles -> training -> cross-validation ->
maps -> the map to trust, each stage in a fresh process, in one process and on a Dask ``LocalCluster`` of ``--workers`` workers.

    python benchmarks/bench_end_to_end.py --size 4000 --workers 2 [--epochs 2] [--out runs/bench/e2e] [--resume]

The area (N x N pixels of 15 m: nine guide bands, eight coarse layers, four classes; ``bench_fuse_scale.build_area``)
is built once and reused. Each stage runs through the notebooks' own API (:class:`lithocore.run.Run`) in a fresh
Python process: ``stack`` (the fused stack, block by block), ``tiles`` (the spatial split and the folds),
``training`` (notebook 04's model, ``--epochs`` epochs), ``cv`` (notebook 06's cross-validation, 2 folds: the
deep model, the forest and the neighbourhood forest) and ``maps`` (the deep model's map and the paper's forest's,
window by window) and ``trust`` (notebook 07's ``map_to_trust``: the two forests on 2 matched folds, the
recommended map, its DI, AOA and layers, strip by strip). With ``--workers`` K > 0 the stack's strips, the cross-validation's fold x model fits,
the maps' windows and notebook 07's strips run on a LocalCluster of K one-thread workers (the stack read from the run folder); the cross-validation runs again in one
process, and ``identical_to_one_process`` says whether the two give the same scores and out-of-fold maps
(``--no-one-process-check``: not run, null). Each stage's row is kept in the run folder (``bench_stages.json``,
each row also printed to stderr as it ends); ``--resume`` goes on from the first stage not finished.

Prints one JSON line: ``pixels``, ``seconds`` per stage and in all, ``peak_rss_mb`` per stage (the largest of the
client, the workers and the processes they started), ``peak_rss_mb_max_process`` and ``identical_to_one_process``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("stack", "tiles", "training", "cv", "maps", "trust")


def _peak_mb() -> float:
    """This process's and its finished children's largest resident memory (MB). This process's own is its
    ``VmHWM``: Linux's ``ru_maxrss`` of a process keeps the peak of the image it was started from before its
    ``exec`` (a stage started by the driver after building a 20000-px area reported the driver's 4.9 GB as its own)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        own = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def _run(folder: Path, manifest: Path, epochs: int):
    from lithocore.run import Run

    return Run.open(folder, str(manifest), profile="quick", cv_folds=2, cv_epochs=1, n_samples=120,
                    training=dict(epochs=epochs))


def stage(name: str, folder: Path, manifest: Path, epochs: int, workers: int) -> dict:
    """One stage in this (fresh) process; returns its seconds and the peak memory of every process it used."""
    import contextlib

    from lithocore import compare
    from lithocore.settings import ForestSettings

    run = _run(folder, manifest, epochs)
    t0 = time.perf_counter()
    out: dict = {}
    client_cm = contextlib.nullcontext(None)
    if workers and name in ("stack", "cv", "maps", "trust"):
        from distributed import Client, LocalCluster

        client_cm = contextlib.ExitStack()
        lc = client_cm.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                  dashboard_address=None))
        client = client_cm.enter_context(Client(lc))
    with client_cm as ctx:
        cluster = lc.scheduler_address if ctx is not None else ""  # the notebooks' `cluster`: a scheduler address
        forest = ForestSettings(n_trees=50)
        if name == "stack":
            from lithocore.stages import fused_stack

            fused_stack(run.root, run.manifest, cluster=cluster)  # notebook 02's cluster: its strips as tasks
        elif name == "tiles":
            run.tiles("spatial")
            run.folds()
        elif name == "training":
            run.model("spatial")
        elif name == "cv":
            cv = compare.cross_validation(run, forest, cluster=cluster)
            out["cv_summary"] = {m: v["mean_iou"]["per_fold"] for m, v in cv.summary.items()}
            import numpy as np

            np.savez_compressed(folder / ("oof_cluster.npz" if cluster else "oof.npz"), **cv.results["oof"])
        elif name == "maps":
            from lithocore.settings import MappingSettings

            run.class_map("spatial", mapping=MappingSettings(cluster=cluster))
            run.paper_forest(forest, cluster=cluster)
        elif name == "trust":  # notebook 07: the forests (50 trees, as the stages above) on 2 matched folds
            from lithocore.candidates import forest_candidates
            from lithocore.recommend import map_to_trust

            area, stack, _, _ = run.stack()
            cands = forest_candidates(forest)
            r = map_to_trust(area, stack, folder / "07_map_to_trust", k=2, candidates=cands, cap=2000, seed=0,
                             estimates=("matched",), progress=False, cluster=cluster)
            out["trust"] = dict(recommended=r["trust"]["recommended_model"],
                                expected_oa=r["trust"]["expected"]["overall_accuracy"],
                                aoa_share=r["trust"]["aoa_share"], seconds=r["trust"]["seconds"])
        seconds = time.perf_counter() - t0
        workers_mb = []
        if ctx is not None:
            workers_mb = list(client.run(_peak_mb).values())
    return dict(stage=name, seconds=round(seconds, 1), peak_rss_mb=round(max([_peak_mb(), *workers_mb])), **out)


def _fresh(name: str, a, folder: Path, manifest: Path, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--one", name, "--folder", str(folder), "--manifest", str(manifest),
           "--epochs", str(a.epochs), "--workers", str(workers)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"stage {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default="runs/bench/e2e")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the stages this folder's last run finished (bench_stages.json), run the rest")
    ap.add_argument("--no-one-process-check", dest="one_process_check", action="store_false",
                    help="skip the cross-validation's second run in one process (identical_to_one_process: null)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--manifest", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(stage(a.one, Path(a.folder), Path(a.manifest), a.epochs, a.workers)))
        return 0
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_fuse_scale import build_area

    out = Path(a.out).resolve()
    t0 = time.perf_counter()
    manifest = build_area(out / f"area_{a.size}", a.size)
    area_s = time.perf_counter() - t0
    folder = out / f"run_{a.size}"
    folder.mkdir(parents=True, exist_ok=True)
    done_path = folder / "bench_stages.json"  # each finished stage's row: --resume goes on from the first missing
    rows = json.loads(done_path.read_text()) if a.resume and done_path.is_file() else {}
    for name in STAGES:
        if name not in rows:
            rows[name] = _fresh(name, a, folder, manifest, a.workers)
            done_path.write_text(json.dumps(rows))
        print(json.dumps(rows[name]), file=sys.stderr, flush=True)
    identical = None
    if a.workers and a.one_process_check:
        import numpy as np

        one_folder = out / f"run_{a.size}_one_process"
        one_folder.mkdir(parents=True, exist_ok=True)
        for f in ("02_fuse_sources", "03_build_tiles"):  # the same stack and folds, the cross-validation made again
            subprocess.run(["cp", "-r", str(folder / f), str(one_folder)], check=True)
        one = _fresh("cv", a, one_folder, manifest, 0)
        with np.load(folder / "oof_cluster.npz") as c, np.load(one_folder / "oof.npz") as o:
            same_maps = all(np.array_equal(c[k], o[k]) for k in o.files)
        identical = bool(same_maps and one["cv_summary"] == rows["cv"]["cv_summary"])
        rows["cv_one_process"] = one
    result = dict(size=a.size, pixels=a.size * a.size, workers=a.workers, area_seconds=round(area_s, 1),
                  seconds={k: r["seconds"] for k, r in rows.items()},
                  seconds_total=round(sum(rows[k]["seconds"] for k in STAGES), 1),
                  peak_rss_mb={k: r["peak_rss_mb"] for k, r in rows.items()},
                  peak_rss_mb_max_process=max(r["peak_rss_mb"] for r in rows.values()),
                  identical_to_one_process=identical, cv_miou_per_fold=rows["cv"]["cv_summary"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
