"""The map to use and where to trust it (notebook 07).

Every candidate model is cross-validated on folds matched to the user's ground to predict
(:mod:`lithocore.knndm`), scored on the pooled out-of-fold pixels ("global validation"); the best is
recommended, retrained on every usable label and mapped over the whole area with **calibrated** class
probabilities (:mod:`lithocore.calibration`), their entropy, its **area of applicability**
(:mod:`lithocore.applicability`) and the candidates' **agreement**. Beside the matched estimate, each labelled
with the question it answers, the block cross-validation's (new terrane a block away) and a random
cross-validation's (a pixel beside a training pixel). Where the ground to predict holds withheld labels
(``predict:`` in the manifest), the promise is checked against them.

The candidates are pixel classifiers that give class probabilities (:class:`ForestCandidate`): the paper's
random forest and the neighbourhood forest. Every candidate is trained and scored by the same code on the same
folds and pixels.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import calibration
from .area import NO_LABEL, gdal_cache
from .candidates import CANDIDATES, DeepCandidate, ForestCandidate
from .crossval import fold_file
from .forest import check_training_memory, neighbourhood_channels, pixel_features, sample_pixels, training_pixels
from .knndm import random_folds
from .stackfile import at_pixels
from .tiles import RowMap, both_map, draw_pixels, labelled_map, value_counts

__all__ = ["QUESTIONS", "fold_sets", "cross_validate_proba", "estimate", "choose", "fit_final", "aoa_for",
           "held_out_check", "agreement", "cv_distances", "confidence_errors", "distance_weights", "memory_needed",
           "check_memory", "map_to_trust"]

#: What each cross-validation answers (printed beside its estimate).
QUESTIONS = {
    "matched": "your ground to predict: folds whose distances to the training labels match the ground's (kNNDM)",
    "block": "new terrane a block away: whole blocks held out with a buffer (notebook 06's folds)",
    "random": "a pixel beside a training pixel: pixels dealt at random into folds (the paper's random split)",
}


def fold_sets(kind: str, fold: np.ndarray, k: int, mask: np.ndarray, labels: np.ndarray, buffer: int = 0):
    """``regions(i) -> (test, train)`` for folds given as a raster: matched and random folds use every other
    fold's labels; block folds keep the buffer around the test blocks (:func:`lithocore.crossval.fold_regions`)."""
    from .crossval import Folds, fold_regions

    labelled = labelled_map(labels, mask)  # every region strip by strip (RowMaps): no scene-sized map a fold
    if kind == "block":
        folds = Folds(k, 0, buffer, fold)
        return lambda i: tuple(both_map(r, labelled) for r in fold_regions(folds, i, mask, test_as_rows=True))
    return lambda i: (RowMap(lambda a, b: labelled[a:b] & (fold[a:b] == i), fold.shape),
                      RowMap(lambda a, b: labelled[a:b] & (fold[a:b] >= 0) & (fold[a:b] != i), fold.shape))


def cross_validate_proba(features: dict[str, np.ndarray], labels: np.ndarray, regions, k: int, n_classes: int, *,
                         candidates: dict[str, ForestCandidate], fraction: float = 0.1, cap: int = 0, seed: int = 0,
                         max_test: int = 40_000, progress: bool = True, cache_dir=None, cache_key: str = "") -> dict:
    """Train every candidate on each fold's training side and predict class probabilities on (a sample of at
    most ``max_test`` pixels of) its test side. Training pixels: ``fraction`` of each class's pixels of the
    training side, at most ``cap`` a class (0: no cap), the same pixels for every candidate.

    With ``cache_dir``, each fold's probabilities are kept there under ``cache_key`` (with the candidate's
    settings, the folds and the sampled pixels in it) and reused: an interrupted run resumes at the next fit.

    Returns ``{"idx", "truth", "fold", "proba": {name: (n, K)}, "seconds": {name: s}, "missing": [...]}``: the
    pooled out-of-fold sample."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    idx_all, fold_all, missing = [], [], []
    proba = {m: [] for m in candidates}
    secs = dict.fromkeys(candidates, 0.0)
    flat = labels.ravel()
    bar = tqdm(total=k * len(candidates), desc="cross-validation", disable=not progress)
    for i in range(k):
        test, train = regions(i)
        t = draw_pixels(test, max_test, rng) if train.any() else ()
        if not len(t):
            bar.update(len(candidates))
            continue
        have = set(np.flatnonzero(value_counts(labels, train, 256)).tolist())
        lack = sorted(set(np.unique(flat[t]).tolist()) - have)
        if lack:
            missing.append(dict(fold=i, classes=lack))
        pixels = sample_pixels(labels, train, fraction, seed + i, max_per_class=cap or None)
        keys = {m: _fold_key(cache_dir, i, m, [cache_key, repr(c), getattr(c, "features_made", ""), fraction, cap, seed,
                                                n_classes, _digest(t), _digest(pixels)]) for m, c in candidates.items()}
        kept = {m: _cached(*keys[m]) for m in candidates}
        t0 = time.perf_counter()  # the fold's pixels read once for every forest still to fit (at_pixels)
        F = at_pixels({m: features[m] for m, c in candidates.items() if kept[m] is None and reads_pixels(c)},
                      np.concatenate([pixels, t]))
        for m in F:
            secs[m] += (time.perf_counter() - t0) / len(F)
        for m, cand in candidates.items():
            t0 = time.perf_counter()
            p = kept[m]
            if p is None:
                model = cand.fit(F.get(m, features[m]), labels, pixels, seed, train=train)
                p = cand.proba(model, F.get(m, features[m]), t, n_classes)
                if keys[m][0] is not None:
                    from .runfolder import write_npz

                    write_npz(keys[m][0], proba=p, key=keys[m][1])
            proba[m].append(p)
            secs[m] += time.perf_counter() - t0
            bar.update()
        idx_all.append(t)
        fold_all.append(np.full(len(t), i, np.int16))
    bar.close()
    idx = np.concatenate(idx_all) if idx_all else np.zeros(0, np.int64)
    return dict(idx=idx, truth=flat[idx].astype(np.int64), fold=np.concatenate(fold_all) if fold_all else idx,
                proba={m: np.concatenate(p) if p else np.zeros((0, n_classes), np.float32) for m, p in proba.items()},
                seconds={m: round(s, 1) for m, s in secs.items()}, missing=missing)


def _digest(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def _fold_key(cache_dir, i: int, m: str, parts: list) -> tuple:
    """Where fold ``i``'s probabilities of candidate ``m`` are kept and under which key (None, "": not kept)."""
    if cache_dir is None:
        return None, ""
    from .runfolder import key

    return fold_file(cache_dir, i, m), key(parts)


def reads_pixels(cand) -> bool:
    """Whether a candidate fits and predicts from its predictors at scattered pixels (a forest: read once for every
    such candidate, :func:`lithocore.stackfile.at_pixels`), not from windows of the scene (a network)."""
    return isinstance(cand, ForestCandidate)


def _cached(path, fkey: str) -> np.ndarray | None:
    """Fold probabilities kept under ``fkey`` at ``path``, or None (missing, made from something else, unreadable)."""
    from .runfolder import read_npz

    kept = read_npz(path, fkey) if path is not None else None
    return kept["proba"] if kept else None


def estimate(proba: np.ndarray, truth: np.ndarray, idx: np.ndarray, shape: tuple[int, int], names, *,
             trained_classes=None, block_px: int = 64, n_boot: int = 400, seed: int = 0) -> dict:
    """Pooled out-of-fold scores ("global validation") with a spatial-bootstrap interval.

    ``overall_accuracy`` and its ``oa_interval`` (2.5-97.5 % of the OA over ``n_boot`` resamples of
    ``block_px`` blocks of pixels, so that neighbouring pixels are not counted as independent evidence),
    ``oa_half_width``; per-class IoU; ``mean_iou`` over the classes the training side holds (and the test side
    or the predictions touch)."""
    from .metrics import confusion_matrix, scores

    n = len(names)
    pred = proba.argmax(1) if len(proba) else np.zeros(0, np.int64)
    cm = confusion_matrix(truth, pred, n)
    s = scores(cm, names)
    trained = set(range(n)) if trained_classes is None else set(trained_classes)
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1) - tp
    use = [c for c in range(n) if c in trained and denom[c] > 0]
    miou = float(np.mean(tp[use] / denom[use])) if use else float("nan")
    right = pred == truth
    W = shape[1]
    block = (idx // W // block_px) * (W // block_px + 1) + (idx % W) // block_px
    ub, inv = np.unique(block, return_inverse=True)
    hits, count = np.bincount(inv, right, len(ub)), np.bincount(inv, minlength=len(ub)).astype(np.float64)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot if len(ub) > 1 else 0):
        pick = rng.integers(0, len(ub), len(ub))
        boots.append(hits[pick].sum() / max(count[pick].sum(), 1))
    lo, hi = (np.quantile(boots, [0.025, 0.975]).tolist() if boots else [float("nan")] * 2)
    return dict(overall_accuracy=s["overall_accuracy"], oa_interval=[lo, hi], oa_half_width=(hi - lo) / 2,
                mean_iou=miou, mean_iou_classes=[names[c] for c in use], kappa=s["kappa"], iou=s["iou"],
                pixels=int(len(truth)), confusion_matrix=cm.tolist(), blocks=int(len(ub)), block_px=int(block_px))


def cv_distances(regions, k: int, res: float, idx: np.ndarray, fold: np.ndarray, *, n: int = 3000,
                 seed: int = 0) -> np.ndarray:
    """For a sample of the scored out-of-fold pixels ``idx`` (their folds ``fold``), the distance (metres) to
    the nearest labelled pixel of their fold's training side: the cross-validation's ``Gj*``."""
    from .knndm import distances_at

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(idx), min(n, len(idx)), replace=False)
    idx, fold = idx[pick], fold[pick]
    out = np.empty(len(idx))
    for i in range(k):
        at = fold == i
        if at.any():
            out[at] = distances_at(regions(i)[1], res, idx[at])
    return out


def _from_predictions(preds, regions, labels: np.ndarray, name: str, n_classes: int, max_test: int,
                      seed: int) -> dict:
    """The pooled out-of-fold sample of :func:`cross_validate_proba` from stored fold predictions (class
    indices: one-hot probabilities). ``preds[i]``, fold ``i``'s scene of class indices, is read only at its drawn
    pixels and let go before the next (:class:`lithocore.crossval.StoredPredictions` reads it from its file then)."""
    rng = np.random.default_rng(seed)
    idx_all, fold_all, pr = [], [], []
    for i in range(len(preds)):
        t = draw_pixels(regions(i)[0], max_test, rng)
        if not len(t):
            continue
        p = preds[i].ravel()[t].astype(np.int64)
        ok = p < n_classes
        idx_all.append(t[ok])
        fold_all.append(np.full(int(ok.sum()), i, np.int16))
        pr.append(np.eye(n_classes, dtype=np.float32)[p[ok]])
    idx = np.concatenate(idx_all)
    return dict(idx=idx, truth=labels.ravel()[idx].astype(np.int64), fold=np.concatenate(fold_all),
                proba={name: np.concatenate(pr)}, seconds={name: 0.0}, missing=[], cached=True)


def confidence_errors(proba: np.ndarray, truth: np.ndarray, fold: np.ndarray) -> list[float]:
    """Per fold: the mean largest probability minus the accuracy (the error of "expected accuracy = mean
    confidence" on ground the model did not see). Give the probabilities as they would be handed over (each
    fold's scaled by a temperature fitted on the others: :func:`lithocore.calibration.crossfit_temperature`'s
    ``scaled``, when scaling is applied).

    >>> p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    >>> [round(e, 2) for e in confidence_errors(p, np.array([0, 1, 0, 0]), np.array([0, 0, 1, 1]))]
    [0.4, -0.4]
    """
    return [float(proba[fold == i].max(1).mean() - (proba[fold == i].argmax(1) == truth[fold == i]).mean())
            for i in np.unique(fold)]


def distance_weights(oof_d: np.ndarray, ground_d: np.ndarray, bins: int = 12) -> np.ndarray:
    """Weights that give the out-of-fold pixels the ground's distribution of distances to the training labels
    (the ratio of the two histograms over quantile bins of the ground's distances; pixels in a bin the ground
    does not reach weigh nothing). Normalised to mean 1.

    >>> w = distance_weights(np.array([1.0, 1.0, 1.0, 9.0]), np.array([1.0, 9.0]), bins=2)
    >>> w.round(2).tolist()  # the lone far pixel stands for half the ground
    [0.67, 0.67, 0.67, 2.0]
    """
    edges = np.unique(np.quantile(ground_d, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        return np.ones(len(oof_d))
    which_g = np.clip(np.searchsorted(edges, ground_d, side="right") - 1, 0, len(edges) - 2)
    which_o = np.searchsorted(edges, oof_d, side="right") - 1
    inside = (which_o >= 0) & (oof_d <= edges[-1])
    which_o = np.clip(which_o, 0, len(edges) - 2)
    pg = np.bincount(which_g, minlength=len(edges) - 1) / len(ground_d)
    po = np.bincount(which_o[inside], minlength=len(edges) - 1) / max(int(inside.sum()), 1)
    w = np.where(inside & (po[which_o] > 0), pg[which_o] / np.maximum(po[which_o], 1e-12), 0.0)
    return w / w.mean() if w.sum() > 0 else np.ones(len(oof_d))


def choose(matched: dict[str, dict], rank_by: str = "overall_accuracy",
           labels: dict[str, str] | None = None) -> tuple[str, str]:
    """The candidate with the best matched-CV score and a sentence saying why (from the numbers), naming the
    runner-up and whether the lead is larger than the estimate's interval.

    >>> choose({"a": {"overall_accuracy": 0.8, "oa_half_width": 0.02}, "b": {"overall_accuracy": 0.7, "oa_half_width": 0.02}})
    ('a', 'the a has the best matched cross-validation overall accuracy, 0.800 against 0.700 for the b: a lead of 0.100, larger than the 95 % half-width of 0.020')
    """
    order = sorted(matched, key=lambda m: -np.nan_to_num(matched[m][rank_by], nan=-1))
    name = (labels or {}).get
    best = order[0]
    metric = rank_by.replace("_", " ")
    if len(order) == 1:
        return best, (f"the {name(best, best)} is the only candidate (matched cross-validation {metric} "
                      f"{matched[best][rank_by]:.3f})")
    second = order[1]
    lead = matched[best][rank_by] - matched[second][rank_by]
    hw = matched[best].get("oa_half_width", float("nan"))
    size = (f"larger than the 95 % half-width of {hw:.3f}" if lead > hw else
            f"within the 95 % half-width of {hw:.3f}: the two are level within noise, and either map will do")
    return best, (f"the {name(best, best)} has the best matched cross-validation {metric}, {matched[best][rank_by]:.3f} "
                  f"against {matched[second][rank_by]:.3f} for the {name(second, second)}: a lead of {lead:.3f}, {size}")


def fit_final(cand: ForestCandidate, F: np.ndarray, labels: np.ndarray, mask: np.ndarray, *, fraction: float = 0.1,
              cap: int = 0, seed: int = 0, pixels: np.ndarray | None = None):
    """The candidate trained on every usable label: ``pixels``, by default ``fraction`` of each class, at most ``cap``
    (:func:`lithocore.forest.sample_pixels`). Returns (model, training pixels)."""
    if pixels is None:
        pixels = sample_pixels(labels, mask, fraction, seed, max_per_class=cap or None)
    return cand.fit(F, labels, pixels, seed, train=labelled_map(labels, mask)), pixels


def aoa_for(model, F: np.ndarray, pixels: np.ndarray, fold: np.ndarray, *, n: int = 3000, seed: int = 0):
    """The area of applicability of a forest trained on ``pixels``: a sample of at most ``n`` of them (every
    class and fold kept in proportion), their folds from ``fold`` (the matched folds' raster), weighted by
    the forest's variable importance. Returns (AOA, the sample's flat indices)."""
    from .applicability import fit_aoa

    rng = np.random.default_rng(seed)
    pix = pixels[fold.ravel()[pixels] >= 0]
    pix = np.sort(rng.choice(pix, min(n, len(pix)), replace=False))
    return fit_aoa(pixel_features(F, pix), fold.ravel()[pix], getattr(model, "feature_importances_", None)), pix


def held_out_check(truth: np.ndarray, pred: np.ndarray, idx: np.ndarray, shape: tuple[int, int], names, *,
                   inside: np.ndarray | None = None, trained_classes=None) -> dict | None:
    """A map against the labels withheld on the ground to predict, at the withheld pixels ``idx`` (flat indices
    into ``shape``): their labels ``truth`` and the map's classes ``pred``. OA, mIoU (classes the training side
    holds), and with ``inside`` (each pixel in the AOA or not) the OA inside and outside it. None when nothing was
    withheld.

    >>> c = held_out_check(np.array([0, 1, 1]), np.array([0, 1, 0]), np.arange(3), (1, 3), ["a", "b"],
    ...                    inside=np.array([True, True, False]))
    >>> round(c["overall_accuracy"], 3), c["overall_accuracy_inside_aoa"], c["overall_accuracy_outside_aoa"]
    (0.667, 1.0, 0.0)
    """
    if not len(idx):
        return None
    truth, pred = np.asarray(truth, np.int64), np.asarray(pred, np.int64)
    onehot = np.eye(len(names), dtype=np.float32)[pred]
    s = estimate(onehot, truth, idx, shape, names, trained_classes=trained_classes, n_boot=0)
    out = dict(pixels=int(len(idx)), overall_accuracy=s["overall_accuracy"], mean_iou=s["mean_iou"], iou=s["iou"])
    if inside is not None:
        ins = np.asarray(inside, bool)
        right = pred == truth
        out["inside_aoa_pixels"], out["outside_aoa_pixels"] = int(ins.sum()), int((~ins).sum())
        out["overall_accuracy_inside_aoa"] = float(right[ins].mean()) if ins.any() else None
        out["overall_accuracy_outside_aoa"] = float(right[~ins].mean()) if (~ins).any() else None
    return out


def agreement(maps: dict[str, np.ndarray], reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Share of the candidate maps (class indices) that give each pixel ``reference``'s class (uint8 percent,
    255 outside ``mask``).

    >>> ref = np.array([[0, 1]], np.uint8)
    >>> agreement({"a": ref, "b": np.array([[0, 0]], np.uint8)}, ref, np.ones((1, 2), bool)).tolist()
    [[100, 50]]
    """
    agree = sum((m == reference).astype(np.float32) for m in maps.values()) / max(len(maps), 1)
    return np.where(mask, np.round(100 * agree), 255).astype(np.uint8)


def memory_needed(shape: tuple[int, int, int], candidates: dict[str, ForestCandidate], n_classes: int) -> int:
    """Bytes notebook 07 holds for a stack of ``shape`` (C, H, W): the stack and each forest's predictors where
    they fit the in-memory budget (:func:`lithocore.stackfile.hold_if_fits`; else a strip of them), a network
    candidate's probabilities over the scene, the maps shown in its figures (class indices, DI, entropy, AOA,
    agreement: 11 bytes a pixel) and the label side (labels, mask, ground, withheld labels, folds: 5). The
    probabilities and every other layer are made and written strip by strip.

    >>> memory_needed((9, 100, 100), {"f": ForestCandidate("f", "forest")}, 8) // 10_000  # bytes a pixel
    52
    """
    from .plotting import figure_step
    from .stackfile import STRIP_ROWS, held_whole

    C, H, W = shape

    def held(bands: int) -> int:  # the whole scene of them, or one strip
        return 4 * bands * (H if held_whole(4 * bands * H * W) else STRIP_ROWS) * W

    step = figure_step((H, W))
    need = held(C) + 11 * -(-H // step) * -(-W // step) + 5 * H * W
    for c in candidates.values():
        if isinstance(c, DeepCandidate):
            need += 4 * n_classes * H * W
        elif c.neighbourhood:
            need += held(neighbourhood_channels(C, c.neighbourhood))
    return int(need)


def check_memory(shape: tuple[int, int, int], candidates: dict[str, ForestCandidate], n_classes: int) -> None:
    """Refuse, before any work, a scene whose notebook-07 arrays would not fit in memory
    (:func:`lithocore.data.memory_available`, ``LITHOCORE_MEMORY_LIMIT``), naming the size and what to change."""
    from .data import memory_available

    need, have = memory_needed(shape, candidates, n_classes), memory_available()
    if need > have:
        raise MemoryError(f"notebook 07 on a {shape[1]:,} x {shape[2]:,} px stack of {shape[0]} channels needs about "
                          f"{need / 2**30:.1f} GiB ({', '.join(c.label for c in candidates.values())}), but "
                          f"{have / 2**30:.1f} GiB is available: map a smaller area or a coarser grid, or leave out the "
                          f"neighbourhood forest (candidates)")


def _trained_classes(labels: np.ndarray, mask: np.ndarray) -> list[int]:
    """The classes of the labelled valid pixels (counted strip by strip: no scene-sized selection)."""
    return np.flatnonzero(value_counts(labels, labelled_map(labels, mask), 256)).tolist()


def map_to_trust(area, stack: np.ndarray, out_dir, *, block_folds=None, k: int = 4, candidates=None,
                 fraction: float = 0.1, cap: int = 5000, seed: int = 0, rank_by: str = "overall_accuracy",
                 estimates: tuple[str, ...] = ("matched", "block", "random"), aoa_pixels: int = 3000,
                 max_test: int = 40_000, extra_maps: dict[str, np.ndarray] | None = None,
                 block_predictions: dict | None = None, cache_key: str | None = None,
                 progress: bool = True, cluster=None) -> dict:
    """Everything notebook 07 reports, computed and written into ``out_dir``.

    Parameters
    ----------
    area, stack
        The study area (labels with the ground to predict withheld) and its fused stack (C, H, W): in memory or a
        :class:`~lithocore.stackfile.StackFile` read strip by strip (the same results).
    out_dir
        Where the maps are written (cloud-optimised GeoTIFFs; ``trust.json`` is the caller's to write).
    block_folds
        Notebook 06's block folds (:class:`lithocore.crossval.Folds`) for the block estimate; None: no block
        estimate.
    k
        Matched and random folds.
    candidates
        ``{key: ForestCandidate or DeepCandidate}``; default :data:`CANDIDATES` (:func:`candidates_for`).
    fraction, cap, seed
        Training pixels per class (share, at most ``cap``; 0: no cap) and the seed, in every fold and the final fit.
    rank_by
        The matched estimate that chooses the map: ``"overall_accuracy"`` or ``"mean_iou"``.
    estimates
        Which cross-validations run for the recommended candidate besides the matched one (every candidate runs
        the matched one).
    aoa_pixels
        Training pixels sampled for the area of applicability.
    extra_maps
        Other whole-area class maps (class indices) to count in the agreement, e.g. notebook 05's deep model's.
    block_predictions
        Notebook 06's fold predictions on ``block_folds`` per candidate (a sequence of class-index scenes, one a
        fold: :func:`lithocore.folds.cached_fold_predictions`, made with the same settings, read a fold at a time):
        the block estimate is read from the recommended one's instead of fitted again.
    cache_key
        What the stack was made from (its provenance key): each fold's probabilities are then kept in
        ``out_dir/cv`` and reused by a rerun (None: nothing kept).
    progress
        Show progress bars.
    cluster
        Where the final pass's strips (every candidate's classes, the probabilities, the DI) are made: None or ""
        this process, ``"local:K"``, a scheduler address or a ``distributed.Client``
        (:func:`lithocore.mapping.connect`): the same files, pixel for pixel. The fitted models and scene-sized
        arrays reach the workers as files in ``out_dir`` (a shared file system, as the run folder is).

    Returns
    -------
    dict
        ``trust`` (what ``trust.json`` holds), and arrays for the figures: ``folds`` (MatchedFolds),
        ``classes``, ``entropy``, ``di``, ``aoa``, ``agreement`` (every ``figure_step``-th row and column of the
        scene: all of it up to :data:`lithocore.plotting.FIGURE_PIXELS`), ``oof`` (the pooled out-of-fold sample of
        every estimate).
        The probabilities and every layer are written into ``out_dir`` strip by strip, never held whole.
    """
    from . import knndm

    out_dir = Path(out_dir)
    candidates = candidates or CANDIDATES
    names = area.classes.names
    labels, mask = area.labels, area.mask
    _check_before_work(stack.shape, labels, mask, candidates, len(names), fraction, cap, k, max_test)
    warnings_ = []
    t0 = time.perf_counter()
    rng_range = knndm.autocorrelation_range(labels, mask)
    block_px = max(8, int(rng_range["range_px"] or 32))
    ground = _ground_to_predict(area, warnings_)
    folds = knndm.knndm_folds(labels, mask, ground, area.grid.res, k, seed=seed)
    features = {m: c.features(stack) for m, c in candidates.items()}
    trained = _trained_classes(labels, mask)
    cv = _estimates(area, features, candidates, folds, block_folds, block_predictions, estimates=estimates,
                    rank_by=rank_by, trained=trained, block_px=block_px, fraction=fraction, cap=cap, seed=seed,
                    max_test=max_test, cache_key=cache_key, out_dir=out_dir, progress=progress)
    best, oof, ests = cv["best"], cv["oof"], cv["ests"]
    warnings_ += cv["warnings"]
    cv_seconds = time.perf_counter() - t0

    m_oof = oof["matched"]
    cal = _calibration(m_oof, best)
    weighted_oa = _distance_weighted_accuracy(folds, area.grid.res, m_oof["idx"], cal["right"])

    t1 = time.perf_counter()
    fits, read = _final_fits(candidates, features, labels, mask, m_oof["idx"], fraction=fraction, cap=cap, seed=seed)
    fit_seconds = time.perf_counter() - t1

    t2 = time.perf_counter()
    app = _applicability(*fits[best], read[best], folds, m_oof, cal["right"], n=aoa_pixels, seed=seed)
    aoa_seconds = time.perf_counter() - t2
    if app["acc_out"] is None:
        warnings_.append("every out-of-fold pixel lies inside the area of applicability: accuracy outside it is "
                         "not measured")

    t3 = time.perf_counter()
    resume = None if cache_key is None else _pass_key(cache_key, area, candidates, read, fits, best, cal,
                                                      app["aoa"], ground, extra_maps, (fraction, cap, seed))
    final = _final_pass(area, candidates, features, fits, best, cal, app["aoa"], ground, out_dir, extra_maps,
                        trained, progress=progress, resume_key=resume, cluster=cluster or None)
    map_seconds = fit_seconds + time.perf_counter() - t3

    e = ests["matched"][best]
    if e["pixels"] < 1000 or len(e["mean_iou_classes"]) < max(2, len(trained) // 2):
        warnings_.append(f"the matched estimate rests on {e['pixels']:,} pixels and {len(e['mean_iou_classes'])} of "
                         f"{len(trained)} classes: read it as rough")
    trust = _trust_record(
        area, candidates, cv, folds, cal, app, ground, final,
        expected=_expected_accuracy(final["confidence_sum"], final["ground_pixels"], cal) | dict(weighted=weighted_oa),
        rng_range=rng_range, settings=dict(k=k, fraction=fraction, cap=cap, seed=seed, estimates=list(ests),
                                           max_test=max_test, aoa_pixels=aoa_pixels, block_px_bootstrap=block_px),
        seconds=dict(cross_validation=round(cv_seconds, 1), maps=round(map_seconds, 1), aoa=round(aoa_seconds, 1)),
        warnings=warnings_, rank_by=rank_by)
    return dict(trust=trust, folds=folds, cv_distances=cv["distances"], oof=oof, oof_di=app["oof_di"],
                **{k: final[k] for k in ("classes", "entropy", "di", "aoa", "agreement", "figure_step")})


def _final_fits(candidates, features, labels, mask, oof_idx: np.ndarray, *, fraction: float, cap: int, seed: int):
    """Step 3: every candidate retrained on every usable label (:func:`fit_final`, the same pixels for each), the
    forests' predictors at those pixels and at the out-of-fold ones (where the AOA is checked) read in one pass for
    all of them. Returns ``({name: (model, pixels)}, {name: predictors, those read kept})``."""
    pixels = sample_pixels(labels, mask, fraction, seed, max_per_class=cap or None)
    read = features | at_pixels({m: features[m] for m, c in candidates.items() if reads_pixels(c)},
                                np.concatenate([pixels, oof_idx]))
    return {m: fit_final(c, read[m], labels, mask, seed=seed, pixels=pixels) for m, c in candidates.items()}, read


def _distance_weighted_accuracy(folds, res: float, idx: np.ndarray, right: np.ndarray) -> float:
    """The matched out-of-fold pixels ``idx`` (``right``: each predicted right or not) weighted so that their
    distances to their fold's training side follow the ground's (:func:`distance_weights`)."""
    from .knndm import fold_distances

    w = distance_weights(fold_distances(folds.fold, folds.k, res, idx), folds.Gij)
    return float(np.average(right, weights=w)) if w.sum() > 0 else float("nan")


def _check_before_work(shape, labels, mask, candidates, n_classes: int, fraction: float, cap: int, k: int,
                       max_test: int) -> None:
    """Stop before any work when the scene's arrays (:func:`check_memory`), a forest's final fit on every training
    pixel (:func:`lithocore.forest.check_training_memory`), or the largest fit beside every forest's predictors read
    at once (:func:`lithocore.stackfile.at_pixels`: the training pixels and every fold's test sample, at most the
    labelled pixels) would not fit in the memory."""
    from .data import memory_available
    from .forest import training_memory

    check_memory(shape, candidates, n_classes)
    counts = value_counts(labels, labelled_map(labels, mask), 256)  # each class's labelled pixels, counted once
    n_train = training_pixels(labels, mask, fraction, cap or None, counts=counts)  # for every candidate
    forests = [c for c in candidates.values() if reads_pixels(c)]
    for c in forests:
        check_training_memory(n_train, neighbourhood_channels(shape[0], c.neighbourhood), n_classes, c.n_trees,
                              what=f"notebook 07's {c.label}")
    n = n_train + min(k * max_test, int(counts.sum()))  # the test samples: at most the labelled pixels
    tables = 4 * n * sum(neighbourhood_channels(shape[0], c.neighbourhood) for c in forests)
    need = tables + max((training_memory(n_train, neighbourhood_channels(shape[0], c.neighbourhood), n_classes,
                                         c.n_trees) for c in forests), default=0)
    if need > memory_available():
        raise MemoryError(f"notebook 07's forests: their predictors at {n:,} training and test pixels, read once for "
                          f"all of them ({tables / 2**30:.1f} GiB), and the largest fit need about "
                          f"{need / 2**30:.1f} GiB, but {memory_available() / 2**30:.1f} GiB is available: cap the "
                          f"training pixels of each class (cv_forest_cap, e.g. 10000), lower pixel_fraction or "
                          f"max_test_pixels")


def _ground_to_predict(area, warnings_: list):
    """The ground the map is for (the manifest's ``predict``, else every valid unlabelled pixel); where every
    valid pixel is labelled, the labelled map itself (distance 0), said so in ``warnings_``."""
    mask = area.mask
    ground = both_map(area.predict, mask)  # strip by strip: no copy of the scene
    if not ground.any():
        warnings_.append("every valid pixel carries a label, so there is no unlabelled ground to predict: the matched "
                         "estimate is for the labelled map itself (declare 'predict:' polygons to hold out ground)")
        ground = mask
    return ground


def _expected_accuracy(confidence_sum: float, ground_pixels: int, cal: dict) -> dict:
    """The accuracy promised on the ground: the calibrated confidence averaged over it (its sum over the ground's
    ``ground_pixels``), and the half-width of its band (1.96 x the RMS of the same estimate's error on each matched
    fold)."""
    conf = confidence_sum / ground_pixels if ground_pixels else float("nan")
    half = float(1.96 * np.sqrt(np.mean(np.square(cal["errors"])))) if cal["errors"] else float("nan")
    return dict(overall_accuracy=float(conf), oa_half_width=half)


def _trust_record(area, candidates, cv: dict, folds, cal: dict, app: dict, ground: np.ndarray, final: dict, *,
                  expected: dict, rng_range: dict, settings: dict, seconds: dict, warnings: list, rank_by: str) -> dict:
    """What ``trust.json`` holds: the recommended map, the accuracy to expect on the ground to predict, every
    estimate, the distances, the calibration, the area of applicability, the held-out check and the warnings."""
    best, ests = cv["best"], cv["ests"]
    e, m_oof = ests["matched"][best], cv["oof"]["matched"]
    conf_ground, conf_half = expected["overall_accuracy"], expected["oa_half_width"]
    aoa, ins = app["aoa"], app["oof_inside"]
    return dict(
        recommended_model=best, recommended_label=candidates[best].label, why=cv["why"], rank_by=rank_by,
        expected=dict(overall_accuracy=conf_ground, oa_half_width=conf_half,
                      oa_interval=[conf_ground - conf_half, conf_ground + conf_half],
                      how="the calibrated confidence averaged over the ground to predict; the band: 1.96 x the RMS, "
                          "over the matched folds, of the same estimate's error on each fold",
                      per_fold_error=cal["errors"],
                      mean_iou=e["mean_iou"], mean_iou_classes=e["mean_iou_classes"],
                      iou=e["iou"], kappa=e["kappa"], pixels=e["pixels"]),
        estimates={kind: v.get(best) for kind, v in ests.items()},
        ground_estimates=dict(matched_pooled=e["overall_accuracy"], matched_distance_weighted=expected["weighted"],
                              calibrated_confidence=conf_ground),
        candidates={m: dict(label=c.label, settings=c.describe(), matched=ests["matched"][m],
                            seconds=m_oof["seconds"][m]) for m, c in candidates.items()},
        block_from_notebook_06=bool(cv["oof"]["block"].get("cached")) if "block" in cv["oof"] else None,
        questions=QUESTIONS, matched_method=folds.method,
        distances=dict(ground_median_m=float(np.median(folds.Gij)), ground_q90_m=float(np.quantile(folds.Gij, 0.9)),
                       matched_cv_median_m=float(np.median(folds.Gjstar)), W=folds.W,
                       W_random=folds.info["W_random"])
        | {f"{kind}_cv_median_m": float(np.median(d)) for kind, d in cv["distances"].items()},
        knndm=folds.info, autocorrelation=dict(range_px=rng_range["range_px"],
                                               range_m=(rng_range["range_px"] or 0) * area.grid.res,
                                               lags=rng_range["lags"], gamma=rng_range["gamma"]),
        calibration=dict(method="temperature scaling", temperature=cal["T"], fitted_temperature=cal["temperature"],
                         applied=cal["applied"], ece_before=cal["ece_before"],
                         ece_after=cal["ece_after"], per_fold_temperature=cal["per_fold_temperature"],
                         reliability_before=cal["reliability_before"], reliability_after=cal["reliability_after"]),
        aoa_share=final["ground_inside"] / final["ground_pixels"] if final["ground_pixels"] else None,
        aoa_threshold=aoa.threshold,
        aoa_training_pixels=app["training_pixels"],
        oof_accuracy_inside_aoa=app["acc_in"], oof_accuracy_outside_aoa=app["acc_out"],
        oof_pixels_inside_aoa=int(ins.sum()), oof_pixels_outside_aoa=int((~ins).sum()), accuracy_by_di=app["curve"],
        ground=dict(pixels=int(ground.sum()), declared=bool(area.predict_declared),
                    share_of_area=float(ground.sum() / max(int(area.mask.sum()), 1))),
        held_out_check=final["check"], held_out_check_all=final["checks_all"], agreement_maps=final["agreement_maps"],
        settings=settings, seconds=seconds, files=final["files"], warnings=warnings,
    )


def _estimates(area, features, candidates, folds, block_folds, block_predictions, *, estimates, rank_by, trained,
               block_px, fraction, cap, seed, max_test, cache_key, out_dir, progress) -> dict:
    """Step 1 of :func:`map_to_trust`: every candidate cross-validated on the matched folds, the best chosen, and
    it cross-validated on random and block folds too. Returns the pooled out-of-fold samples (``oof``), their
    scores (``ests``), the choice (``best``, ``why``), each estimate's test-to-training distances and warnings."""
    labels, mask = area.labels, area.mask
    names, K, k = area.classes.names, len(area.classes), folds.k
    common = dict(n_classes=K, fraction=fraction, cap=cap, seed=seed, max_test=max_test, progress=progress,
                  cache_key=cache_key or "")
    keep = {kind: None if cache_key is None else out_dir / "cv" / kind for kind in ("matched", "random", "block")}
    score = lambda o, m: estimate(o["proba"][m], o["truth"], o["idx"], labels.shape, names,  # noqa: E731
                                  trained_classes=trained, block_px=block_px, seed=seed)
    oof = {"matched": cross_validate_proba(features, labels, fold_sets("matched", folds.fold, k, mask, labels), k,
                                           candidates=candidates, cache_dir=keep["matched"], **common)}
    ests = {"matched": {m: score(oof["matched"], m) for m in candidates}}
    best, why = choose(ests["matched"], rank_by, {m: c.label for m, c in candidates.items()})
    warnings_ = []
    if oof["matched"]["missing"]:
        miss = [str(f["fold"]) for f in oof["matched"]["missing"]]
        warnings_.append((f"matched fold {miss[0]} tests classes its training side lacks" if len(miss) == 1 else
                          f"matched folds {', '.join(miss[:-1])} and {miss[-1]} test classes their training sides lack")
                         + ": those pixels cannot be right, and the estimates count them")
    rec, regions = {best: candidates[best]}, {}
    if "random" in estimates:
        rand = random_folds(labelled_map(labels, mask), k, np.random.default_rng(seed))
        regions["random"] = (fold_sets("random", rand, k, mask, labels), k)
        oof["random"] = cross_validate_proba({best: features[best]}, labels, regions["random"][0], k, candidates=rec,
                                             cache_dir=keep["random"], **common)
    if "block" in estimates and block_folds is not None:
        regions["block"] = (fold_sets("block", block_folds.fold, block_folds.k, mask, labels, block_folds.buffer),
                            block_folds.k)
        cached = (block_predictions or {}).get(best)
        oof["block"] = (_from_predictions(cached, regions["block"][0], labels, best, K, max_test, seed)
                        if cached is not None else
                        cross_validate_proba({best: features[best]}, labels, regions["block"][0], block_folds.k,
                                             candidates=rec, cache_dir=keep["block"], **common))
    for kind in regions:
        ests[kind] = {best: score(oof[kind], best)}
    distances = {kind: cv_distances(reg, n, area.grid.res, oof[kind]["idx"], oof[kind]["fold"], seed=seed)
                 for kind, (reg, n) in regions.items()}
    return dict(oof=oof, ests=ests, best=best, why=why, distances=distances, warnings=warnings_)


def _calibration(m_oof: dict, best: str) -> dict:
    """Step 2: the temperature fitted on the matched out-of-fold probabilities, applied only when the
    cross-fitted calibration error says it helps (``T``, else 1); the error of "expected accuracy = mean
    confidence" on each fold, with the probabilities as they would be handed over (``errors``); which
    out-of-fold pixels are right (``right``)."""
    proba, truth, fold = m_oof["proba"][best], m_oof["truth"], m_oof["fold"]
    cal = calibration.crossfit_temperature(proba, truth, fold)
    cal["applied"] = bool(cal["ece_after"] < cal["ece_before"])
    cal["T"] = cal["temperature"] if cal["applied"] else 1.0  # scaling that does not help out of fold: not applied
    scaled = cal.pop("scaled")
    cal["errors"] = confidence_errors(scaled if cal["applied"] else proba, truth, fold)
    cal["right"] = proba.argmax(1) == truth
    return cal


def _applicability(model, pixels: np.ndarray, F, folds, m_oof: dict, right: np.ndarray, *, n: int, seed: int) -> dict:
    """Step 4: the recommended model's area of applicability (fitted on a sample of its training ``pixels``); the
    out-of-fold pixels' DI against the training pixels of other folds, accuracy inside and outside and against DI.
    Every pixel's DI is made with the map (:func:`_final_pass`)."""
    from .applicability import accuracy_by_di, dissimilarity

    aoa, pix = aoa_for(model, F, pixels, folds.fold, n=n, seed=seed)
    oof_di = dissimilarity(aoa, pixel_features(F, m_oof["idx"]), exclude_fold=m_oof["fold"])
    ins = oof_di <= aoa.threshold
    return dict(aoa=aoa, training_pixels=int(len(pix)), oof_di=oof_di, oof_inside=ins,
                acc_in=float(right[ins].mean()) if ins.any() else None,
                acc_out=float(right[~ins].mean()) if (~ins).any() else None, curve=accuracy_by_di(oof_di, right))


#: Seconds between the final pass's checkpoints (its files' strips put on disk, its sums and figures saved): an
#: interrupted pass of a province (hours) resumes at the last one.
PASS_CHECKPOINT_SECONDS = 120.0


def _pass_key(cache_key: str, area, candidates, features, fits: dict, best: str, cal: dict, aoa, ground,
              extra_maps: dict | None, sampling: tuple) -> str:
    """What the final pass's strips are made from: the stack (``cache_key``), the labels, mask, ground, withheld
    labels and other maps (hashed strip by strip), the candidates and how their predictors are made, the fitted
    models (each forest's probabilities at its first training pixels, a network's weights), the recommended one's
    temperature and AOA."""
    import hashlib

    from .runfolder import key

    h, H = hashlib.sha1(), area.mask.shape[0]
    for a in (area.labels, area.mask, ground, area.held_out, *(extra_maps or {}).values()):
        for r0 in range(0, H, 1024) if a is not None else ():
            h.update(np.ascontiguousarray(np.asarray(a[r0:r0 + 1024])).tobytes())
        h.update(b"|")
    models = [_digest(np.concatenate([w.ravel() for w in fit["net"].get_weights()])) if isinstance(c, DeepCandidate)
              else _digest(c.proba(fit, features[m], pixels[:256], len(area.classes.names)))
              for m, c in candidates.items() for fit, pixels in [fits[m]]]
    made = [(repr(c), getattr(c, "features_made", "")) for c in candidates.values()]
    return key([cache_key, "final pass", made, best, models, cal["T"], aoa.threshold,
                aoa.dbar, _digest(aoa.train), _digest(aoa.weights), h.hexdigest(), list(extra_maps or {}), sampling])


def _pass_state(journal: Path, resume_key: str, writers: dict) -> dict | None:
    """The checkpoint of an interrupted final pass made from the same inputs (``resume_key``) whose working files
    (``writers``) continue, or None (said when one was there)."""
    from .runfolder import read_npz

    if not journal.is_file():
        return None
    state = read_npz(journal, resume_key)
    if state is None:
        print(f"{journal} was left by a map made from something else, or cannot be read: the map is made from the "
              "first row")
    elif not all(w.continuable() for w in writers.values()):
        print(f"a working file of an earlier run in {journal.parent} is missing or damaged: the map is made from the "
              "first row")
        state = None
    return state


def _checkpoint(journal: Path, resume_key: str, next_row: int, files: dict, sums: dict, figs: dict,
                held: dict) -> None:
    """Put the final pass's files on disk, then what it summed and drew so far (:func:`_pass_state` reads it)."""
    from .runfolder import write_npz

    for w in files.values():
        w.flush()
    write_npz(journal, compress=False, key=resume_key, next_row=next_row, **sums,
              **{f"fig_{k}": v for k, v in figs.items()}, **{f"held_{k}": _joined(v) for k, v in held.items()})


def _final_pass(area, candidates, features, fits: dict, best: str, cal: dict, aoa, ground: np.ndarray, out_dir: Path,
                extra_maps: dict | None, trained: list, *, progress: bool, resume_key: str | None = None,
                cluster=None) -> dict:
    """Step 5: the map and its layers, strip by strip: every candidate's classes, the recommended one's calibrated
    probabilities, their entropy, the DI and the AOA, the maps' agreement, each strip written into its
    cloud-optimised GeoTIFF as it is made (a scene of probabilities is never held); the sums the trust record
    needs (confidence and AOA over the ground, the maps at the withheld labels). Returns the figures' maps
    (``classes``, ``entropy``, ``di``, ``aoa``, ``agreement``: every ``figure_step``-th row and column, so that they
    hold at most :data:`lithocore.plotting.FIGURE_PIXELS`), those sums, the held-out checks and the files.

    With ``resume_key`` (:func:`_pass_key`) the files are written in ``out_dir/partial`` and every
    :data:`PASS_CHECKPOINT_SECONDS` put on disk with the sums and figures so far (``final_pass.npz``); a pass
    interrupted and called again with the same key goes on from the last checkpoint, to the same files.

    The strips are made here or, with ``cluster``, as tasks of a Dask cluster (:func:`_strips`), and written here
    in order."""
    import contextlib

    from tqdm.auto import tqdm

    from .plotting import figure_step
    from .stackfile import STRIP_ROWS

    mask, names = area.mask, area.classes.names
    H, W = mask.shape
    K = len(names)
    step = figure_step((H, W))  # the figures' maps: every step-th row and column
    scenes = {m: c.scene_proba(fits[m][0], features[m]) for m, c in candidates.items() if isinstance(c, DeepCandidate)}
    shared = dict(candidates=candidates, features=features, best=best, T=cal["T"], aoa=aoa, mask=mask,
                  fits={m: fits[m][0] for m in candidates if m not in scenes},  # a network's strips: its scene's
                  extra_maps=extra_maps or {}, n_classes=K)
    others = list(dict.fromkeys([*candidates, *(extra_maps or {})]))  # the agreement: candidates' and other maps
    shown = (-(-H // step), -(-W // step))
    figs = dict(classes=np.full(shown, NO_LABEL, np.uint8), entropy=np.full(shown, np.nan, np.float32),
                di=np.full(shown, np.nan, np.float32), aoa=np.zeros(shown, bool), agreement=np.full(shown, 255, np.uint8))
    sums = dict(confidence_sum=0.0, ground_pixels=0, ground_inside=0)
    held = {k: [] for k in ("idx", "truth", "inside", *candidates)}
    partial = out_dir / "partial"
    journal = partial / "final_pass.npz"
    writers = _map_writers(out_dir, area, best, cal, aoa, others, work=partial if resume_key else None)
    state = _pass_state(journal, resume_key, writers) if resume_key else None
    start = int(state["next_row"]) if state else 0
    if state:
        sums = {k: state[k].item() for k in sums}
        figs = {k: state[f"fig_{k}"].copy() for k in figs}
        held = {k: [state[f"held_{k}"]] if state[f"held_{k}"].size else [] for k in held}  # dtypes as written
        for w in writers.values():
            w.resume = True
        print(f"the map to trust goes on from row {start:,} of {H:,}, where an earlier run of it stopped")
    row_mb = W * 256 * (2 + K + 4 + 4 + 1 + 1) / 2**20  # a row of the six files' 256-px blocks
    last = time.monotonic()
    with contextlib.ExitStack() as opened:
        files = {k: opened.enter_context(w) for k, w in writers.items()}
        opened.enter_context(gdal_cache(max(64.0, 2 * row_mb)))  # GDAL's default keeps 5 % of the memory of blocks
        made = _strips(shared, scenes, range(start, H, STRIP_ROWS), cluster, out_dir)
        for r0, layers in tqdm(made, desc="map to trust", disable=not progress, initial=start // STRIP_ROWS,
                               total=-(-H // STRIP_ROWS)):
            r1 = min(H, r0 + STRIP_ROWS)
            _tally(layers, area, ground, r0, r1, step, figs, sums, held)
            files["classes"].write(area.classes.to_ids(layers["classes"]), r0)
            files["probabilities"].write(layers["probabilities"], r0)
            files["entropy"].write(layers["entropy"], r0)
            files["dissimilarity"].write(layers["di"], r0)
            files["aoa"].write(np.where(mask[r0:r1], layers["aoa"], 255).astype(np.uint8), r0)
            files["agreement"].write(layers["agreement"], r0)
            if resume_key and r1 < H and time.monotonic() - last >= PASS_CHECKPOINT_SECONDS:
                _checkpoint(journal, resume_key, r1, files, sums, figs, held)
                last = time.monotonic()
    journal.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        partial.rmdir()  # empty now
    held = {k: _joined(v) for k, v in held.items()}
    check = held_out_check(held["truth"], held[best], held["idx"], (H, W), names, inside=held["inside"],
                           trained_classes=trained)
    checks_all = {m: held_out_check(held["truth"], held[m], held["idx"], (H, W), names, trained_classes=trained)
                  for m in candidates} if check else {}
    return figs | sums | dict(figure_step=step, check=check, checks_all=checks_all, agreement_maps=others,
                              files={k: str(w.path) for k, w in files.items()})


def _tally(layers: dict, area, ground: np.ndarray, r0: int, r1: int, step: int, figs: dict, sums: dict,
           held: dict) -> None:
    """What the trust record and the figures keep of the strip of rows ``r0:r1`` (its :func:`_strip_layers`):
    every ``step``-th row and column into ``figs``, the confidence and the AOA over the ground into ``sums``, every
    candidate's map at the withheld labels into ``held``."""
    ok, inside = area.mask[r0:r1], layers["aoa"]
    rows = np.flatnonzero(np.arange(r0, r1) % step == 0)
    for name in figs:
        figs[name][(r0 + rows) // step] = layers[name][rows, ::step]
    g = ground[r0:r1] & ok
    sums["confidence_sum"] += float(layers["confidence"][g[ok]].astype(np.float64).sum())
    sums["ground_pixels"] += int(g.sum())
    sums["ground_inside"] += int((g & inside).sum())
    if area.held_out is not None:
        h = ok & (area.held_out[r0:r1] != NO_LABEL)
        held["idx"].append(r0 * ok.shape[1] + np.flatnonzero(h))
        held["truth"].append(area.held_out[r0:r1][h])
        held["inside"].append(inside[h])
        for m, pred in layers["maps"].items():
            held[m].append(pred[h])


def _strips(shared: dict, scenes: dict, starts, cluster, out_dir: Path):
    """Yield ``(r0, layers)`` for the strips starting at the rows ``starts``, in order (:func:`_strip_layers`, from
    the pass's ``shared`` models and arrays; ``scenes``: a network's scene probabilities, cut to each strip here).
    With ``cluster`` each strip is a task of that Dask cluster (:func:`lithocore.mapping.in_order`); ``shared``
    reaches the workers as one pickle whose scene-sized arrays are ``.npy`` files, in a folder of ``out_dir``
    removed at the end (:func:`lithocore.crossval.spill`), opened once a worker."""
    from .stackfile import STRIP_ROWS

    H = shared["mask"].shape[0]
    cut = lambda r0: {m: np.asarray(v[:, r0:r0 + STRIP_ROWS]) for m, v in scenes.items()}  # noqa: E731
    if cluster is None:
        for r0 in starts:
            yield r0, _strip(shared, r0, min(H, r0 + STRIP_ROWS), cut(r0))
        return
    from .crossval import forget_on, spill_to
    from .mapping import connect, in_order
    from .runfolder import scratch

    with scratch(out_dir, "spill") as where, connect(cluster) as client:
        sent = spill_to(shared, where / "shared")
        try:
            yield from in_order(client, lambda r0: client.submit(_remote_strip, sent, r0, min(H, r0 + STRIP_ROWS),
                                                                 cut(r0), pure=False), starts)
        finally:
            forget_on(client, where)


def _remote_strip(sent: str, r0: int, r1: int, scenes: dict) -> dict:
    """One strip of the final pass on a worker; the pass's models and arrays read once a worker from ``sent``."""
    from .crossval import unspilled

    return _strip(unspilled(sent), r0, r1, scenes)


def _strip(shared: dict, r0: int, r1: int, scenes: dict) -> dict:
    """Rows ``r0:r1`` of the final pass (:func:`_strip_layers`) from its ``shared`` models and arrays."""
    mask = shared["mask"]
    ok = np.asarray(mask[r0:r1])
    other_maps = {k: np.asarray(v[r0:r1]) for k, v in shared["extra_maps"].items()}
    return _strip_layers(shared["candidates"], shared["features"], shared["fits"], scenes, shared["best"],
                         shared["T"], shared["aoa"], ok, r0 * mask.shape[1] + np.flatnonzero(ok), other_maps,
                         shared["n_classes"])


def _joined(pieces: list) -> np.ndarray:
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int64)


def _strip_layers(candidates, features, fits: dict, scenes: dict, best: str, T: float, aoa, ok: np.ndarray,
                  idx: np.ndarray, other_maps: dict, n_classes: int) -> dict:
    """One strip of :func:`_final_pass` (its valid pixels ``ok``, their flat indices ``idx``; ``fits``: each
    candidate's fitted model): every candidate's class indices (``maps``; a network's from its scene probabilities
    in ``scenes``, cut to the strip), the recommended one's probabilities scaled by ``T`` as the file stores them
    (``probabilities``, (K, rows, W) bytes) and their largest (``confidence``, one a valid pixel), its ``classes``,
    their ``entropy``, the ``di``, the ``aoa`` and the maps' ``agreement`` (``other_maps`` counted too)."""
    from .applicability import dissimilarity
    from .mapping import CONFIDENCE_STEPS

    maps = {}
    for m, c in candidates.items():
        if m in scenes:
            p = scenes[m][:, ok].T
        elif len(idx):
            p = c.proba(fits[m], features[m], idx, n_classes)
        else:
            p = np.zeros((0, n_classes), np.float32)
        if m == best:
            p = pb = calibration.apply_temperature(p, T)
        maps[m] = np.full(ok.shape, NO_LABEL, np.uint8)
        maps[m][ok] = p.argmax(1)
    ent = np.full(ok.shape, np.nan, np.float32)
    ent[ok] = calibration.entropy(pb, axis=1)
    di = np.full(ok.shape, np.nan, np.float32)
    di[ok] = dissimilarity(aoa, pixel_features(features[best], idx)) if len(idx) else []
    probs = np.full((n_classes, *ok.shape), 255, np.uint8)
    probs[:, ok] = np.round(pb.T * CONFIDENCE_STEPS)
    return dict(maps=maps, probabilities=probs, confidence=pb.max(1), classes=maps[best], entropy=ent, di=di,
                aoa=ok & (di <= aoa.threshold), agreement=agreement(maps | other_maps, maps[best], ok))


def _map_writers(out_dir: Path, area, best: str, cal: dict, aoa, agreement_maps: list[str], *,
                 work: Path | None = None) -> dict:
    """The recommended map's files, to be written strip by strip (:class:`lithocore.outputs.GeoTiffWriter`):
    its class map (with its QGIS style and legend), calibrated probabilities, entropy, DI, AOA and agreement, as
    cloud-optimised GeoTIFFs. ``work``: a folder for their working files, kept when the pass stops (a writer's
    ``resume`` continues its file)."""
    from .mapping import CONFIDENCE_SCALE, CONFIDENCE_STEPS, class_map_writer
    from .outputs import GeoTiffWriter

    grid, table = area.grid, area.classes
    tags = dict(model=best, temperature=f"{cal['T']:.4f}", what="recommended map: the candidate with the best "
                                                                "matched cross-validation, retrained on every usable label")
    thr = dict(threshold=f"{aoa.threshold:.6f}")

    def at(name: str) -> dict:  # out_dir/name, its working file in work
        return dict(path=out_dir / name, grid=grid) | (dict(work=work / name) if work else {})

    named = f"recommended_{best}"
    return dict(
        classes=class_map_writer(table=table, tags=tags, **at(f"{named}_classes.tif")),
        probabilities=GeoTiffWriter(
            count=len(table.names), dtype="uint8", nodata=255, band_names=[f"P({n})" for n in table.names],
            cog="average", scales=(CONFIDENCE_SCALE,) * len(table.names), **at(f"{named}_probabilities.tif"),
            tags=tags | dict(units=f"probability = value / {CONFIDENCE_STEPS}; 255 = nodata",
                             calibrated="temperature scaling" if cal["applied"] else "no (scaling did not help out of fold)")),
        entropy=GeoTiffWriter(count=1, dtype="float32", band_names=["entropy / log(K)"], tags=tags, cog="average",
                              **at("entropy.tif")),
        dissimilarity=GeoTiffWriter(count=1, dtype="float32", band_names=["dissimilarity index"], tags=tags | thr,
                                    cog="average", **at("dissimilarity.tif")),
        aoa=GeoTiffWriter(count=1, dtype="uint8", nodata=255, cog="nearest", tags=tags | thr,
                          band_names=["1 inside the area of applicability, 0 outside"], **at("aoa.tif")),
        agreement=GeoTiffWriter(count=1, dtype="uint8", nodata=255, cog="nearest",
                                band_names=["% of candidate maps giving the recommended class"],
                                tags=tags | dict(maps=", ".join(agreement_maps)), **at("agreement.tif")))
