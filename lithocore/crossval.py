"""Spatial k-fold cross-validation: the FCN-8s and the random forest trained and scored on the same folds.

The scene is cut into square blocks (``block`` pixels, default three tiles); scikit-learn's
``StratifiedGroupKFold`` assigns whole blocks to ``k`` folds so that each fold's class make-up is as close to
the map's as the blocks allow. Fold ``i``'s **test region** is its blocks; its **training region** is every
valid pixel farther than ``buffer`` (default one tile) from them. Training windows must lie wholly inside the
training region and forest pixels are drawn from it, so nothing a fold model trains on touches, or borders,
the ground it is scored on. Every labelled pixel is tested exactly once, by the fold model that never saw it:
the **out-of-fold map**.

Both models are scored by the same code (:func:`lithocore.metrics.scores`) on the same pixels, per fold and
pooled; :func:`summarise` gives mean +/- standard deviation over folds and the paired differences, and
:func:`verdict` writes the one-line conclusion from those numbers.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .area import NO_LABEL, trim_heap
from .metrics import confusion_matrix, one_class, scores
from .runfolder import read_npz, write_npz
from .tiles import (RowMap, block_map, both_map, labelled_map, row_strips, value_counts, window_map, within,
                    within_blocks)
from .words import and_list, plural

__all__ = ["Folds", "make_folds", "fold_regions", "release", "leakage", "fold_coverage", "cross_validate",
           "fold_file", "cached_fold", "StoredPredictions", "summarise", "verdict", "collapsed_folds", "fold_trust",
           "fold_task", "spill", "unspill", "spill_to", "unspilled", "worker_local", "forget_worker_local",
           "forget_on", "METRICS"]

#: The headline measures summarised over folds.
METRICS = ("mean_iou", "overall_accuracy", "kappa")


@dataclass
class Folds:
    """``fold`` (H, W) int8: the fold whose test region holds each pixel (-1: a block without labels)."""

    k: int
    block: int
    buffer: int
    fold: np.ndarray
    info: dict = field(default_factory=dict)


def make_folds(labels: np.ndarray, mask: np.ndarray, k: int = 5, *, block: int = 384, buffer: int = 128,
               seed: int = 0) -> Folds:
    """Assign blocks of ``block`` x ``block`` pixels to ``k`` folds, classes spread over the folds
    (``sklearn.model_selection.StratifiedGroupKFold``, the blocks as groups, shuffled by ``seed``).

    Examples
    --------
    >>> lab = np.repeat(np.arange(4, dtype=np.uint8), 16)[None].repeat(64, 0)
    >>> f = make_folds(lab, np.ones_like(lab, bool), k=2, block=16, buffer=4)
    >>> sorted(np.unique(f.fold).tolist()), f.info["blocks_per_fold"]
    ([0, 1], [8, 8])

    Parameters
    ----------
    labels, mask
        Class indices (:data:`~lithocore.area.NO_LABEL` where none) and the valid pixels.
    k
        Folds.
    block
        The CV block's side (px).
    buffer
        Pixels around a fold's test blocks kept out of its training side.
    seed
        Shuffles the blocks.

    Returns
    -------
    Folds
        Each pixel's fold (-1: outside), the block, the buffer and ``info`` (blocks and labelled share per fold).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    H, W = labels.shape
    if k < 2:
        raise ValueError("k-fold cross-validation needs k >= 2 (k = 1 is the single spatial split of notebook 03)")
    nby, nbx = math.ceil(H / block), math.ceil(W / block)
    block_id = np.arange(nby * nbx).reshape(nby, nbx)
    labelled = labelled_map(labels, mask)  # strip by strip: no scene-sized map
    n_labelled = int(value_counts(labels, labelled, 256).sum())
    step = max(1, int(math.sqrt(n_labelled / 200_000)))  # a sample of pixels is enough to weigh the blocks
    sub = (labels[::step, ::step] != NO_LABEL) & mask[::step, ::step]
    y = labels[::step, ::step][sub]
    groups = block_map(block_id, (block, block), (H, W), step)[sub]
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise ValueError(f"only {n_groups} blocks of {block} px hold labels: too few for {k} folds; use smaller "
                         f"blocks (cv_block) or fewer folds")
    fold_of_block = np.full(nby * nbx, -1, np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has only n members"
        for i, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
            fold_of_block[np.unique(groups[test])] = i
    fold = block_map(fold_of_block.astype(np.int8).reshape(nby, nbx), (block, block), (H, W))
    per_fold = value_counts(fold, labelled, k + 1, offset=1)  # labelled pixels outside any fold, in each fold
    info = dict(k=k, block=block, buffer=buffer, seed=seed, blocks=int(nby * nbx), blocks_with_labels=int(n_groups),
                blocks_per_fold=[int((fold_of_block == i).sum()) for i in range(k)],
                labelled_share_per_fold=[float(per_fold[i + 1] / max(per_fold.sum(), 1)) for i in range(k)])
    return Folds(k, block, buffer, fold, info)


def fold_regions(folds: Folds, i: int, mask: np.ndarray, *, test_as_rows: bool = False) -> tuple:
    """(test region, training region) of fold ``i``: its blocks, and the valid pixels farther than the buffer
    from them. ``test_as_rows``: the test region as a :class:`~lithocore.tiles.RowMap` (made strip by strip as it
    is read), so that only the training region is a scene-sized map."""
    fold = folds.fold
    if folds.block:  # whole blocks (make_folds): the buffer from the blocks' rectangles, no distance transform
        b = folds.block
        train = within_blocks(fold[::b, ::b] == i, (b, b), fold.shape, folds.buffer)
    else:
        train = within(RowMap(lambda a, b: fold[a:b] == i, fold.shape), folds.buffer)
    np.logical_not(train, out=train)  # in place: no scene-sized temporaries
    train &= mask
    if test_as_rows:
        return RowMap(lambda a, b: (fold[a:b] == i) & mask[a:b], fold.shape), train
    test = fold == i
    test &= mask  # in place: one scene-sized map
    return test, train


def leakage(labels: np.ndarray, mask: np.ndarray, train_windows: np.ndarray, size: int,
            tested: np.ndarray) -> float:
    """Share of the tested labelled pixels that lie inside *any* training window (the union, not the largest
    single overlap).

    Examples
    --------
    >>> lab = np.zeros((10, 10), np.uint8); tested = np.zeros((10, 10), bool); tested[:, 5:] = True
    >>> leakage(lab, np.ones((10, 10), bool), np.array([[0, 0], [0, 3]]), 4, tested)  # columns 5-6 of rows 0-3
    0.16
    """
    labelled, seen = labelled_map(labels, mask), window_map(labels.shape, train_windows, size)
    n_scored = n_seen = 0
    for a, b in row_strips(*labels.shape, 4):  # strip by strip: no scene-sized map
        scored = tested[a:b] & labelled[a:b]
        n_scored += int(scored.sum())
        n_seen += int((seen[a:b] & scored).sum())
    return float(n_seen / n_scored) if n_scored else 0.0


def fold_coverage(folds: Folds, labels: np.ndarray, mask: np.ndarray, names) -> list[dict]:
    """Per fold: labelled pixels per class on the test and the training side, and the classes the training
    side lacks although the test side holds them (the fold model cannot predict those)."""
    out = []
    n = len(names)
    labelled = labelled_map(labels, mask)
    for i in range(folds.k):
        test, train = fold_regions(folds, i, mask, test_as_rows=True)
        t = value_counts(labels, both_map(test, labelled), n)
        r = value_counts(labels, both_map(train, labelled), n)
        del test, train
        lacking = [names[c] for c in range(n) if t[c] > 0 and r[c] == 0]
        out.append(dict(fold=i, test_pixels=int(t.sum()), train_pixels=int(r.sum()),
                        test_per_class={names[c]: int(t[c]) for c in range(n)},
                        train_per_class={names[c]: int(r[c]) for c in range(n)},
                        classes_missing_from_training=lacking, flagged=bool(lacking)))
    return out


def cross_validate(labels: np.ndarray, mask: np.ndarray, names, folds: Folds,
                   models: dict[str, Callable[[int, np.ndarray, np.ndarray], np.ndarray]], *,
                   cache_dir: str | Path | None = None, cache_key: str = "", progress: bool = True,
                   cluster=None) -> dict:
    """Train and score every model on every fold.

    ``models[name](i, train_region, test_region)`` trains on the training region and returns a class-index map
    (at least over the test region). Fold predictions are cached in ``cache_dir`` under ``cache_key`` (an
    interrupted run resumes at the next fold). Returns per-fold scores, pooled scores, the out-of-fold maps
    (class indices) and timings.

    With ``cluster``, every fold x model not cached is a task of a Dask cluster (:func:`fold_task`: the fold's
    regions made and the model fitted on the worker; the models must pickle, as
    :class:`lithocore.folds.DeepFold` and :class:`~lithocore.folds.ForestFold` do, the stack as its path); the
    predictions are scored here by the same code as in one process, so the scores are the same.

    Parameters
    ----------
    labels, mask, names
        The labels, the valid mask and the class names.
    folds
        The folds (:class:`Folds`).
    models
        Name -> ``model(i, train_region, test_region)`` returning class indices.
    cache_dir, cache_key
        Where each fold's predictions are kept, and the key they must carry to be reused.
    progress
        Show a progress bar.
    cluster
        None (this process), ``"local:K"``, a scheduler address or a ``distributed.Client``
        (:func:`lithocore.mapping.connect`).

    Returns
    -------
    dict
        ``folds`` (per fold: scores and seconds per model), ``pooled`` (scores over every fold's test pixels) and
        ``oof`` (each model's out-of-fold map).
    """
    from tqdm.auto import tqdm

    n = len(names)
    oof = {m: np.full(labels.shape, NO_LABEL, np.uint8) for m in models}
    cms = {(i, m): None for i in range(folds.k) for m in models}
    secs = {}
    bar = tqdm(total=folds.k * len(models), desc="cross-validation", disable=not progress)
    todo = []
    for i, m in cms:
        cached = cached_fold(cache_dir, i, m, cache_key) if cache_dir else None
        if cached is None:
            todo.append((i, m))
            continue
        pred, secs[i, m] = cached
        cms[i, m] = _score_fold(folds, i, mask, labels, pred, oof[m], n)
        bar.update()
    for i, m, pred, s in _fit_folds(todo, models, folds, mask, cluster, spill_dir=cache_dir):
        secs[i, m] = s
        if cache_dir:
            write_npz(fold_file(cache_dir, i, m), pred=pred, key=cache_key, seconds=s)  # fold_task's
        cms[i, m] = _score_fold(folds, i, mask, labels, pred, oof[m], n)
        bar.update()
    bar.close()
    per_fold = [dict(fold=i, scores={m: scores(cms[i, m], names) | {"confusion_matrix": cms[i, m].tolist()}
                                     for m in models},
                     seconds={m: round(secs[i, m], 1) for m in models}) for i in range(folds.k)]
    pooled = {}
    for m in models:
        cm = sum(cms[i, m] for i in range(folds.k))
        pooled[m] = scores(cm, names) | {"confusion_matrix": cm.tolist()}
    return dict(folds=per_fold, pooled=pooled, oof=oof)


def fold_file(cache_dir, i: int, m: str) -> Path:
    """Where :func:`cross_validate` keeps fold ``i``'s predictions of model ``m`` (``fold<i>_<m>.npz``).

    >>> fold_file("cv", 2, "forest").as_posix()
    'cv/fold2_forest.npz'
    """
    return Path(cache_dir) / f"fold{i}_{m}.npz"


def cached_fold(cache_dir, i: int, m: str, cache_key: str) -> tuple[np.ndarray, float] | None:
    """(prediction, seconds) of fold ``i``'s model ``m`` when kept under ``cache_key``; else None (missing, made
    from something else, or unreadable: made again)."""
    kept = read_npz(fold_file(cache_dir, i, m), cache_key, only=("pred", "seconds"))
    return (kept["pred"], float(kept["seconds"])) if kept else None


class StoredPredictions:
    """The ``k`` fold predictions (class indices) of model ``m`` that :func:`cross_validate` kept under
    ``cache_key``, read one fold at a time when used: a scene's byte a pixel per fold, not ``k`` of them per model
    (at 20000 px, 400 MB each). :meth:`find` gives them only when every fold is there under that key."""

    def __init__(self, cache_dir, m: str, cache_key: str, k: int):
        self.cache_dir, self.m, self.cache_key, self.k = cache_dir, m, cache_key, int(k)

    @classmethod
    def find(cls, cache_dir, m: str, cache_key: str, k: int) -> "StoredPredictions | None":
        """The predictions when all ``k`` folds were kept under ``cache_key`` (only their keys read); else None."""
        if all(read_npz(fold_file(cache_dir, i, m), cache_key, only=()) is not None for i in range(k)):
            return cls(cache_dir, m, cache_key, k)
        return None

    def __len__(self) -> int:
        return self.k

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.k:
            raise IndexError(i)
        kept = cached_fold(self.cache_dir, i, self.m, self.cache_key)
        if kept is None:
            raise FileNotFoundError(f"{fold_file(self.cache_dir, i, self.m)}: this fold's predictions were removed "
                                    "or remade since they were found; run the notebook again")
        return kept[0]


def _fold_only(pred: np.ndarray, folds: Folds, i: int) -> np.ndarray:
    """``pred`` (uint8 class indices) with NO_LABEL outside fold ``i``'s blocks, in place strip by strip where it
    is the model's own array (else on a copy): what is cached and scored of a fold, no scene-sized temporary."""
    pred = np.asarray(pred, np.uint8)
    if pred.base is not None or not pred.flags.writeable or not pred.flags.c_contiguous:
        pred = pred.copy()
    for a, b in row_strips(*pred.shape, 2):
        p = pred[a:b]
        p[folds.fold[a:b] != i] = NO_LABEL
    return pred


def _score_fold(folds: Folds, i: int, mask, labels, pred, oof: np.ndarray, n: int) -> np.ndarray:
    """Fold ``i``'s confusion matrix over its test region; its predictions written into the out-of-fold map. Strip
    by strip: a whole scene's selection, widened to eight bytes a pixel to count it, was 4.8 GB at 20000 px."""
    pred = np.asarray(pred, np.uint8)
    cm = np.zeros((n, n), np.int64)
    for a, b in row_strips(*pred.shape, 32):
        sl = slice(a, b)
        test = (folds.fold[sl] == i) & mask[sl]
        oof[sl][test] = pred[sl][test]
        cm += confusion_matrix(labels[sl], pred[sl], n, test)
    return cm


def fold_task(model, i: int, folds: Folds, mask: np.ndarray, regions=None) -> tuple[np.ndarray, float]:
    """One fold x model, as a Dask task runs it (and one process alike): the fold's regions (``regions``: the
    (test, train) of :func:`fold_regions` made already), then the model fitted on the training region and
    predicting the test region. Returns (class indices, seconds)."""
    test, train = regions if regions is not None else fold_regions(folds, i, mask)
    release(folds.fold)  # read again only strip by strip at the end (a memory-mapped fold map, on a cluster)
    t0 = time.perf_counter()
    pred = model(i, train, test)
    seconds = time.perf_counter() - t0
    return _fold_only(pred, folds, i), seconds  # cut where it is made: the client gets it ready to cache


def _fit_folds(todo: list[tuple[int, str]], models: dict, folds: Folds, mask: np.ndarray, cluster,
               spill_dir: str | Path | None = None):
    """Yield ``(fold, model, prediction, seconds)`` for each of ``todo``: in this process (:func:`_fit_here`: each
    network in a fresh process of its own, several at once) or as tasks of ``cluster``, as they finish. On a
    cluster the models, the folds and the mask travel as a small pickle whose scene-sized arrays are files in
    ``spill_dir`` (the run's cross-validation folder: a shared file system, as the run folder is), opened
    memory-mapped where a task runs (:func:`spill`): at 20000 px, sending them pickled had taken the client from
    3.2 to 4.7 GB, and each worker and each network's own process held its own copies."""
    if not todo:
        return
    if cluster is None:
        yield from _fit_here(todo, models, folds, mask, spill_dir)
        return
    import tempfile

    from distributed import as_completed

    from .mapping import connect
    from .runfolder import scratch

    with scratch(spill_dir or tempfile.gettempdir(), "spill") as where:
        payload = spill(dict(models=models, folds=folds, mask=mask), where)
        trim_heap()  # the planning's freed pages back to the system before the client waits on the folds
        with connect(cluster) as client:
            futures = {client.submit(_remote_fold, payload, i, m, str(where), pure=False): (i, m) for i, m in todo}
            for fut in as_completed(futures):
                i, m = futures[fut]
                path, secs = fut.result()
                fut.release()
                yield from _from_file(i, m, path, secs)


def _in_order(todo, models, folds, mask):
    """``todo`` fitted in this process in fold order: each fold's regions (a distance transform of the scene) made
    once."""
    regions = {}
    for i, m in todo:
        if i not in regions:
            regions = {i: fold_regions(folds, i, mask)}
        yield (i, m) + fold_task(models[m], i, folds, mask, regions[i])


def _from_file(i: int, m: str, path: str, secs: float):
    """Yield fold ``i``'s prediction by ``m`` from the file a fold process wrote, memory-mapped (read strip by strip
    where it is scored), then remove the file."""
    import contextlib

    pred = np.load(path, mmap_mode="r")
    yield i, m, pred, secs
    del pred
    with contextlib.suppress(OSError):  # still mapped where that forbids it: removed with the folder
        Path(path).unlink()


def _fit_here(todo, models, folds, mask, spill_dir):
    """:func:`_fit_folds` in one process: a model that asks for a process of its own (``own_process``: a network)
    trains in a fresh one (:func:`_fold_process`), :func:`side_by_side` of them at once, while this process fits the
    others in fold order; each result is yielded as it is ready."""
    own = [(i, m) for i, m in todo if getattr(models[m], "own_process", False)]
    here = [t for t in todo if t not in own]
    if not own:
        yield from _in_order(here, models, folds, mask)
        return
    import tempfile
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from .runfolder import scratch

    with scratch(spill_dir or tempfile.gettempdir(), "spill") as where:
        payload = spill(dict(models=models, folds=folds, mask=mask), where)
        started: list = []  # the fold processes, stopped if this generator ends early (an error, an interrupt)
        pool = ThreadPoolExecutor(side_by_side(len(own)), thread_name_prefix="lithocore-fold")
        try:
            futures = {pool.submit(_fold_process, payload, i, m, str(where), started): (i, m) for i, m in own}
            yield from _in_order(here, models, folds, mask)
            for fut in as_completed(futures):
                yield from _from_file(*futures[fut], *fut.result())
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in started:
                if proc.poll() is None:
                    proc.kill()
            pool.shutdown(wait=True)


#: Memory a network fold's own process may take (MB): TensorFlow and the network (about 1 GB on the default area),
#: the fold's tiles; the stack is shared, memory-mapped from its spilled file.
FOLD_PROCESS_MB = 1500

#: TensorFlow's intra-op and inter-op threads in a network fold's own process, wherever it runs: the same weights
#: on every machine, one process or a cluster (the same seed trains weights 3e-5 apart with one thread or two).
FOLD_THREADS = 1


def side_by_side(n: int) -> int:
    """How many of ``n`` network folds train at once in one process's cross-validation: one a core (each trains
    with :data:`FOLD_THREADS` thread: two at once made 1.5 x the steps of one with both of two cores), as many as
    the memory available holds (:func:`lithocore.data.memory_available`, :data:`FOLD_PROCESS_MB` each), and one
    where a GPU is visible (one device)."""
    import os

    if n <= 1 or _gpu_visible():
        return 1
    from .data import memory_available

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    room = memory_available() // (FOLD_PROCESS_MB * 2**20)
    return max(1, min(n, cores // FOLD_THREADS, room))


def _gpu_visible() -> bool:
    """Whether this machine shows a GPU to a fresh process (an NVIDIA or AMD device file, not hidden by
    ``CUDA_VISIBLE_DEVICES``/``HIP_VISIBLE_DEVICES``)."""
    import os

    hidden = {"", "-1"}
    nvidia = Path("/dev/nvidiactl").exists() and os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() not in hidden
    amd = Path("/dev/kfd").exists() and os.environ.get("HIP_VISIBLE_DEVICES", "0").strip() not in hidden
    return nvidia or amd


#: Arrays at least this large (bytes) travel to a cluster's tasks as files (:func:`spill`).
SPILL_BYTES = 1 << 20


def spill(obj, folder: Path) -> bytes:
    """``obj`` pickled with its numpy arrays of :data:`SPILL_BYTES` or more saved as ``.npy`` files in ``folder``
    (each array once, however often it is referred to): a small pickle for :func:`unspill`, which opens them
    memory-mapped, read only."""
    import io
    import pickle

    saved: dict[int, str] = {}

    class _Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, np.ndarray) and o.nbytes >= SPILL_BYTES:
                if id(o) not in saved:
                    path = folder / f"{len(saved)}.npy"
                    np.save(path, np.ascontiguousarray(o))
                    saved[id(o)] = str(path)
                return ("npy", saved[id(o)])
            return None

    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def unspill(payload: bytes):
    """The object :func:`spill` pickled, its large arrays memory-mapped from their files (read only)."""
    import io
    import pickle

    opened: dict[str, np.ndarray] = {}

    class _Unpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            kind, path = pid
            if kind != "npy":
                raise pickle.UnpicklingError(f"unknown spilled object {kind!r}")
            if path not in opened:  # one mapping an array, however often it is referred to
                opened[path] = np.load(path, mmap_mode="r")
            return opened[path]

    return _Unpickler(io.BytesIO(payload)).load()


def spill_to(obj, folder: Path) -> str:
    """``obj`` spilled (:func:`spill`) into ``folder`` (made now): its pickle, ``object.pkl``, and its large arrays'
    files; returns the pickle's path, for :func:`worker_local` to read where a task runs."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    (folder / "object.pkl").write_bytes(spill(obj, folder))
    return str(folder / "object.pkl")


_WORKER_LOCAL: dict = {}


def worker_local(name: str, make: Callable[[], object]):
    """The object kept under ``name`` (a path of the stage's spill folder) in this process, made by ``make()`` the
    first time: what a cluster's worker reads or builds once for a stage, however many of its tasks it runs."""
    if name not in _WORKER_LOCAL:
        _WORKER_LOCAL[name] = make()
    return _WORKER_LOCAL[name]


def unspilled(path: str):
    """The object :func:`spill_to` wrote at ``path``, read once a process (:func:`worker_local`)."""
    return worker_local(path, lambda: unspill(Path(path).read_bytes()))


def forget_worker_local(folder: str) -> None:
    """Drop the objects :func:`worker_local` keeps under ``folder`` (a finished stage's)."""
    import os

    for name in [n for n in _WORKER_LOCAL if n.startswith(str(folder) + os.sep)]:
        del _WORKER_LOCAL[name]


def forget_on(client, folder) -> None:
    """Ask every worker of ``client`` to drop what it keeps of the stage spilled in ``folder`` (a worker gone, or a
    cluster failing, is not a second error)."""
    import contextlib

    with contextlib.suppress(Exception):
        client.run(forget_worker_local, str(folder))


def release(*arrays) -> None:
    """Drop from this process's memory the pages it has read of read-only memory-mapped arrays (:func:`unspill`'s):
    the kernel reads them again from their files (its page cache) if they are touched again. Any other array is
    left as it is. A network's fold, done with the labels and the mask once trained, maps its test region without
    them: 1.2 GB fewer at 20000 px."""
    import mmap

    for a in arrays:
        m = getattr(a, "_mmap", None)  # np.memmap's mapping (np.load(..., mmap_mode="r"))
        if isinstance(a, np.memmap) and m is not None and not a.flags.writeable and hasattr(m, "madvise"):
            m.madvise(mmap.MADV_DONTNEED)


def _result_file(folder, i: int, m: str, pred: np.ndarray) -> str:
    """Fold ``i``'s prediction by ``m`` saved in ``folder`` (beside the spilled arrays): it reaches the client as a
    file, memory-mapped there, not through the cluster's messages (400 MB at 20000 px, held twice as received)."""
    path = Path(folder) / f"fold{i}_{m}.npy"
    np.save(path, pred)
    return str(path)


def _remote_fold(payload: bytes, i: int, m: str, folder: str):
    """A fold x model on a worker; returns (its prediction's file in ``folder``, seconds). A model that asks for a
    process of its own (``own_process``: a network, whose training on a worker varies with the worker's other
    threads) runs in a fresh Python process started by the worker, as it would in one process; the others run on
    the worker. Either opens the spilled arrays itself."""
    shared = unspill(payload)
    if not getattr(shared["models"][m], "own_process", False):
        pred, secs = fold_task(shared["models"][m], i, shared["folds"], shared["mask"])
        return _result_file(folder, i, m, pred), secs
    del shared
    return _fold_process(payload, i, m, folder)


def _fold_process(payload: bytes, i: int, m: str, folder: str, started: list | None = None):
    """Fold ``i`` of model ``m`` trained in a fresh Python process (``python -m lithocore.crossval``) with
    :data:`FOLD_THREADS` TensorFlow threads; returns (its prediction's file in ``folder``, seconds). ``started``
    gets the process, so that whoever waits on it can stop it."""
    import os
    import pickle
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lithocore-fold-") as tmp:
        job, out = Path(tmp) / "job.pkl", Path(tmp) / "out.pkl"
        with open(job, "wb") as f:  # the small pickle: the process maps the arrays from their files
            pickle.dump((payload, i, m, folder), f, protocol=pickle.HIGHEST_PROTOCOL)
        threads = str(FOLD_THREADS)
        env = os.environ | {"LITHOCORE_PARENT_PID": str(os.getpid()), "TF_NUM_INTRAOP_THREADS": threads,
                            "TF_NUM_INTEROP_THREADS": threads}
        proc = subprocess.Popen([sys.executable, "-m", "lithocore.crossval", str(job), str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        if started is not None:
            started.append(proc)
        _, err = proc.communicate()
        if proc.returncode or not out.is_file():
            raise RuntimeError(f"fold {i} of {m} failed in its own process:\n{err[-4000:]}")
        with open(out, "rb") as f:
            return pickle.load(f)


def exit_with_parent(poll_s: float = 2.0) -> None:
    """Stop this process when the one that started it is gone: a fold's own process outlives no stopped worker or
    cluster (it would go on training a network, its memory and cores taken, for nothing). The parent is the process
    named by ``LITHOCORE_PARENT_PID`` (set by the worker: it may be gone before this process has started
    watching), else this process's parent now."""
    import os
    import threading

    parent = int(os.environ.get("LITHOCORE_PARENT_PID") or os.getppid())

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(3)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _main(argv: list[str]) -> None:
    """``python -m lithocore.crossval JOB OUT``: one fold x model from a pickled (spilled payload, fold, model, result
    folder); OUT gets (the prediction's file, seconds)."""
    import pickle

    exit_with_parent()
    with open(argv[0], "rb") as f:
        payload, i, m, folder = pickle.load(f)
    shared = unspill(payload)
    pred, secs = fold_task(shared["models"][m], i, shared["folds"], shared["mask"])
    del shared
    with open(argv[1], "wb") as f:
        pickle.dump((_result_file(folder, i, m, pred), secs), f, protocol=pickle.HIGHEST_PROTOCOL)


def summarise(per_fold: list[dict], metrics=METRICS) -> dict:
    """``{model: {metric: {"mean", "sd", "per_fold"}}}`` over folds (sd with ddof=1; 0 for one fold)."""
    models = list(per_fold[0]["scores"]) if per_fold else []
    out = {}
    for m in models:
        out[m] = {}
        for k in metrics:
            v = np.array([f["scores"][m][k] for f in per_fold], dtype=np.float64)
            out[m][k] = dict(mean=float(np.nanmean(v)), sd=float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0,
                             per_fold=v.tolist())
    return out


def paired_differences(per_fold: list[dict], a: str, b: str, metric: str = "mean_iou") -> list[float]:
    """Per fold, model ``a``'s score minus model ``b``'s on the same pixels."""
    return [float(f["scores"][a][metric] - f["scores"][b][metric]) for f in per_fold]


def verdict(diffs, a: str = "FCN-8s", b: str = "the forest", metric: str = "mIoU", level: float = 0.95) -> str:
    """One line written from the paired per-fold differences ``a - b``: ahead, behind, or level within noise.

    ``a`` is ahead when the lower end of the ``level`` confidence interval of the mean difference (Student's t
    over folds) is above zero, behind when its upper end is below zero, else level within noise, with the
    interval's half-width (few folds make it wide: with 3 folds, t has 2 degrees of freedom and the half-width is
    2.5 sd, so one model can be ahead in every fold and still not be shown better). One fold has no uncertainty
    and is never called a result.

    Examples
    --------
    >>> verdict([0.07, 0.05, 0.06, 0.08, 0.04])
    'FCN-8s ahead of the forest by 0.060 +/- 0.016 mIoU (mean +/- sd over folds), in 5 of 5 folds'
    >>> print(verdict([0.02, -0.03, 0.01]))
    FCN-8s and the forest level within noise: difference 0.000 +/- 0.026 mIoU (mean +/- sd over folds), FCN-8s ahead in 2 of 3 folds; the 95 % interval of the mean difference, 0.000 +/- 0.066 (Student's t, 2 degrees of freedom), includes zero
    >>> print(verdict([0.02, 0.09, 0.01]).split(', FCN-8s ')[1])
    ahead in 3 of 3 folds, but with 3 folds the 95 % interval of the mean difference, 0.040 +/- 0.108 (Student's t, 2 degrees of freedom), includes zero
    >>> verdict([-0.10, -0.12, -0.09])
    'FCN-8s behind the forest by 0.103 +/- 0.015 mIoU (mean +/- sd over folds), in 3 of 3 folds'
    """
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    k = len(d)
    ahead = int((d > 0).sum())
    if k < 2:
        return (f"one split cannot tell: {a} minus {b} is {d.mean():+.3f} {metric} on a single fold, with no "
                f"measure of its uncertainty (use k >= 2 folds)")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, k - 1) * sd / math.sqrt(k))
    spread = f"{sd:.3f} {metric} (mean +/- sd over folds)"
    if mean - half > 0:
        return f"{a} ahead of {b} by {mean:.3f} +/- {spread}, in {ahead} of {k} folds"
    if mean + half < 0:
        return f"{a} behind {b} by {-mean:.3f} +/- {spread}, in {k - ahead} of {k} folds"
    interval = (f"the {level:.0%} interval of the mean difference, {mean:.3f} +/- {half:.3f} (Student's t, "
                f"{k - 1} {plural('degree', k - 1)} of freedom), includes zero").replace("95%", "95 %")
    if ahead in (0, k):  # one model ahead in every fold, yet not shown better: say why
        return (f"{a} and {b} level within noise: difference {mean:.3f} +/- {spread}, {a} ahead in {ahead} of {k} "
                f"folds, but with {k} folds {interval}")
    return (f"{a} and {b} level within noise: difference {mean:.3f} +/- {spread}, {a} ahead in {ahead} of {k} "
            f"folds; {interval}")


def fold_trust(models, collapsed: list[dict], coverage: list[dict], base: dict | None = None) -> dict:
    """``{model: {"trustworthy", "reasons"}}``: every warning that makes a model's cross-validated scores mean
    little (its collapsed fold models, folds whose training side lacks a class), merged with ``base`` (e.g. the
    notebook-04 model's own verdict, :func:`lithocore.training.assess_model`).

    >>> fold_trust(["unet", "forest"], [dict(model="unet", fold=1, why="kappa 0.000")], [])["unet"]["reasons"]
    ['fold 1: the fold model collapsed (kappa 0.000)']
    """
    out = {m: dict(trustworthy=v.get("trustworthy", True), reasons=list(v.get("reasons", [])))
           for m, v in (base or {}).items()}
    lacking = [c for c in coverage if c.get("classes_missing_from_training")]
    for m in models:
        t = out.setdefault(m, dict(trustworthy=True, reasons=[]))
        t["reasons"] += [f"fold {c['fold']}: the fold model collapsed ({c['why']})" for c in collapsed
                         if c["model"] == m]
        t["reasons"] += [f"fold {c['fold']}: the training side lacks {and_list(c['classes_missing_from_training'])}"
                         for c in lacking]
        t["trustworthy"] = t["trustworthy"] and not any(c["model"] == m for c in collapsed)
    return out


def collapsed_folds(per_fold: list[dict], names: dict[str, str] | None = None, *, dominant: float = 0.95,
                    kappa_floor: float = 0.05, kappa_gap: float = 0.2) -> list[dict]:
    """Fold models that learned next to nothing: one class predicted for at least ``dominant`` of the fold's test
    pixels where the test holds several classes (its largest under ``dominant``), or a kappa under
    ``kappa_floor`` where another model on the same fold's pixels is ``kappa_gap`` or more above it. Their scores
    measure the collapse, not the model; each entry names the model, the fold and why.

    Examples
    --------
    >>> cm_one = [[50, 0], [50, 0]]; cm_ok = [[45, 5], [10, 40]]
    >>> f = [dict(fold=0, scores={"unet": dict(confusion_matrix=cm_one, kappa=0.0),
    ...                           "forest": dict(confusion_matrix=cm_ok, kappa=0.7)})]
    >>> [(c["model"], c["fold"]) for c in collapsed_folds(f)]
    [('unet', 0)]
    """
    names = names or {}
    out = []
    for f in per_fold:
        kappas = {m: s.get("kappa") for m, s in f["scores"].items()}
        for m, s in f["scores"].items():
            why = [w for w in [one_class(s.get("confusion_matrix", []), dominant)] if w]
            kappa = kappas[m]
            best = max((v for o, v in kappas.items() if o != m and v is not None and np.isfinite(v)), default=None)
            if kappa is not None and np.isfinite(kappa) and kappa < kappa_floor and best is not None \
                    and best - kappa >= kappa_gap:
                why.append(f"kappa {kappa:.3f} where another model reaches {best:.3f} on the same pixels")
            if why:
                out.append(dict(model=m, label=names.get(m, m), fold=int(f["fold"]), why="; ".join(why)))
    return out


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
