"""The run's cross-validation: its settings (the profile's, fitted to the scene), its folds (made, or reused when made
from the same study area and settings) and the fold models that notebooks 06 and 07 train and score on them."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .area import NO_LABEL
from .runfolder import RunFolder, file_digest, key, manifest_fingerprint
from .settings import ForestSettings, given, profile as profile_settings
from .stages import stack_provenance, training_tiles
from .tiles import blocks_any

__all__ = ["cv_cache_key", "cached_fold_predictions", "trust_settings", "cv_settings", "cv_folds",
           "deep_fold_model", "forest_fold_model", "DeepFold", "ForestFold", "HybridFold",
           "match_confidence"]


def cv_cache_key(run_dir, cv: dict, cfg, forest: ForestSettings | None = None) -> str:
    """The key under which notebook 06 caches each model's fold predictions (``<cv_dir>/fold<i>_<model>.npz``): the
    stack, the cross-validation and training settings and the forests' settings (``forest``; default
    :class:`ForestSettings`). Notebook 07 reads the block estimate from there when it matches."""
    forest = forest or ForestSettings()
    return key([stack_provenance(run_dir).get("stack_key"), cv, cfg.__dict__, forest.n_trees, forest.max_features,
                forest.pixel_fraction, FOLD_MODELS_VERSION])


#: Changes when the fold models' results change for the same settings (2: float64 normalisation, the deep fold
#: model's map in one pass, neighbourhood features strip by strip; 3: a network's fold tiles on a finer grid and
#: repeated up to the profile's tiles an epoch where a fold has few; 4: neighbourhood features as float64 window sums
#: in a fixed order), so that older cached predictions are not reused.
FOLD_MODELS_VERSION = 4


def cached_fold_predictions(run_dir, k: int, model: str, cache_key: str):
    """Notebook 06's fold predictions of ``model`` (class indices over each fold's test region) when all ``k``
    were made under ``cache_key``, read a fold at a time when used (:class:`lithocore.crossval.StoredPredictions`);
    else None."""
    from .crossval import StoredPredictions

    return StoredPredictions.find(RunFolder(run_dir).cv_dir, model, cache_key, k)


def trust_settings(profile: str, *, k: int = -1, forest_cap: int = -1, deep: int = -1) -> dict:
    """Notebook 07's settings: matched folds ``k``, the forests' pixel cap per class (in every fold and the final
    fit), whether the deep model is a candidate too (``deep``: 1 yes, 0 no; the quick profile leaves it out, its
    cross-validation being the long part of a CPU run, and the paper profile takes it) and the estimates run for
    the recommended candidate; -1 keeps the profile's.

    >>> trust_settings("quick")["k"], trust_settings("quick", forest_cap=0)["cap"], trust_settings("paper")["deep"]
    (4, 0, True)
    """
    base = profile_settings(profile).cv
    return dict(k=int(k if given(k) else base.matched_folds),
                cap=int(forest_cap if given(forest_cap) else base.forest_cap), estimates=tuple(base.estimates),
                deep=bool(deep if given(deep) else base.matched_deep))


def cv_settings(profile: str, cfg, *, shape: tuple[int, int] | None = None, k: int = -1, epochs: int = -1,
                block: int = -1, forest_cap: int = -1, labels: np.ndarray | None = None,
                mask: np.ndarray | None = None) -> dict:
    """The cross-validation settings of a run: the profile's, with the overrides (-1 keeps the profile's).

    Blocks not given (-1) are as long as the labels' spatial autocorrelation range (the practical range of their
    indicator variogram, :func:`lithocore.knndm.autocorrelation_range`, as blockCV's ``cv_spatial_autocor``
    suggests), rounded up to whole tiles and kept between two and eight tiles; four tiles when no ``labels`` are
    given. With ``labels``, blocks (and folds, when ``k`` is not given) are made smaller only as far as every fold
    needs to keep a training window (:func:`lithocore.plan.fit_evaluation`; what changed and why under
    ``fitted_to_scene``); without, only when a scene of ``shape`` holds fewer than ``k`` blocks. The buffer is one
    tile. Large blocks keep the training side large: each test block takes a one-tile
    ring of buffer with it (``benchmarks/README.md``).

    Parameters
    ----------
    profile
        The profile whose cross-validation settings are the defaults.
    cfg
        The training settings (tile size, stride, seed, epochs).
    shape
        The scene's shape, for the block count when no ``labels`` are given.
    k, epochs, block, forest_cap
        Folds, deep-model epochs per fold, CV block side (px) and forest pixels per class per fold; -1: the
        profile's (blocks: fitted as above).
    labels, mask
        The labels and the valid mask: blocks and folds are fitted to them.

    Returns
    -------
    dict
        ``k``, ``epochs``, ``block``, ``buffer``, ``forest_cap``, ``seed`` (and ``autocorrelation_range_px``,
        ``fitted_to_scene`` when fitted).
    """
    base = profile_settings(profile).cv
    k_given = given(k)
    k = k if k_given else base.folds
    epochs = epochs if given(epochs) else base.epochs
    epochs = epochs if given(epochs) else cfg.epochs
    range_px, changes = None, []
    if labels is not None and k >= 2:  # blocks and folds with which every fold has training windows
        from .plan import fit_evaluation

        plan = fit_evaluation(labels, mask if mask is not None else np.ones(labels.shape, bool), tile=cfg.tile, k=k,
                              block=block, stride=cfg.stride, tile_given=True, k_given=k_given, seed=cfg.seed)
        k, block, range_px, changes = plan.k, plan.block, plan.autocorrelation_range_px, plan.changes
    elif not given(block):
        block = 4 * cfg.tile
        while shape is not None and block > 2 * cfg.tile and _blocks_holding(block, shape, labels, mask) < k:
            block -= cfg.tile
    return dict(k=int(k), epochs=int(epochs), block=int(block), buffer=int(cfg.tile),
                forest_cap=int(forest_cap if given(forest_cap) else base.forest_cap), seed=int(cfg.seed),
                **({"autocorrelation_range_px": int(range_px)} if range_px else {}),
                **({"fitted_to_scene": changes} if changes else {}))


def _blocks_holding(block: int, shape: tuple[int, int], labels=None, mask=None) -> int:
    """Blocks of ``block`` px on a scene of ``shape`` (that hold a label, when ``labels`` are given)."""
    if labels is None:
        return math.ceil(shape[0] / block) * math.ceil(shape[1] / block)
    return int(blocks_any((labels != NO_LABEL) & (mask if mask is not None else True), block).sum())


def cv_folds(run_dir, area, cfg, settings: dict):
    """The run's folds (notebook 03 writes them; made now when missing or made from something else). ``k = 1``
    is the single spatial split: its validation region is the one fold's test region.

    Parameters
    ----------
    run_dir
        The run folder (its folds: ``03_build_tiles/folds.npz``).
    area
        The study area.
    cfg
        The training settings (the key includes the tile settings).
    settings
        The cross-validation settings (:func:`cv_settings`).

    Returns
    -------
    lithocore.crossval.Folds
        The fold number of every pixel (-1: buffer or outside), the block size, the buffer and ``info``.
    """
    from . import crossval
    from .runfolder import read_npz, write_npz

    rf = RunFolder(run_dir)
    path = rf.folds_path
    k = key(dict(manifest=manifest_fingerprint(area.manifest_path), **settings, tile=cfg.tile, stride=cfg.stride,
                 n_samples=cfg.n_samples))
    z = read_npz(path, k)
    if z is not None:
        return crossval.Folds(int(z["k"]), int(z["block"]), int(z["buffer"]), z["fold"], json.loads(str(z["info"])))
    if path.is_file():
        print(f"{path} was made from another study area or other settings (or cut off): making the folds again.")
    if settings["k"] == 1:
        ts = training_tiles(rf.root, area, cfg, "spatial")
        folds = crossval.Folds(1, 0, settings["buffer"], np.where(ts.region == 1, 0, -1).astype(np.int8),
                               dict(k=1, note="the single spatial split of notebook 03 (one held-out region)"))
    else:
        folds = crossval.make_folds(area.labels, area.mask, settings["k"], block=settings["block"],
                                    buffer=settings["buffer"], seed=settings["seed"])
    write_npz(path, k=folds.k, block=folds.block, buffer=folds.buffer, fold=folds.fold, info=json.dumps(folds.info),
              key=k)
    return folds


@dataclass
class DeepFold:
    """A cross-validation model (:func:`deep_fold_model`): picklable, so that a fold runs as a Dask task on a
    worker; it carries the labels and the mask, and the stack as an array or as a
    :class:`~lithocore.stackfile.StackFile` (its path: the worker reads its own windows)."""

    stack: object
    labels: np.ndarray
    mask: np.ndarray
    n_classes: int
    cfg: object
    out_dir: Path
    pretrained: str = ""  # a masked autoencoder (lithocore.embedding) whose layers start the network
    own_process = True  # trained in a fresh process of its own, with one thread (lithocore.crossval._fold_process)

    def fit(self, i, train):
        """The fold's network trained on windows wholly inside ``train``: ``(network, normalisation stats)``."""
        from .tiles import fold_windows, sample_windows
        from .training import train_on_windows

        cfg = self.cfg
        rng = np.random.default_rng((cfg.seed, i))
        inner, val_windows = self._inner_validation(i, train, rng) if cfg.inner_validation > 0 else (train, None)
        cand = fold_windows(self.labels, self.mask, cfg.tile, cfg.stride, cfg.n_samples, allowed=inner)
        if len(cand) == 0 and val_windows is not None:  # the inner area took the room of every training tile
            print(f"fold {i}: no {cfg.tile}-px window fits beside the inner validation area; the last epoch is kept")
            val_windows = None
            cand = fold_windows(self.labels, self.mask, cfg.tile, cfg.stride, cfg.n_samples, allowed=train)
        if len(cand) == 0:
            raise ValueError(f"fold {i}: no {cfg.tile}-px window fits wholly in the training region; use a smaller "
                             f"tile_size, larger cv_block or fewer folds")
        n_train = cfg.n_samples - (0 if val_windows is None else len(val_windows))
        windows = sample_windows(cand, n_train, rng, labels=self.labels, size=cfg.tile, n_classes=self.n_classes,
                                 stratified=cfg.balanced_tiles)
        start_from = [self.pretrained, file_digest(self.pretrained)] if self.pretrained else ""  # its content too
        chosen_on = [] if val_windows is None else [val_windows.tolist()]  # the tiles that choose the epoch kept
        run_key = key([i, asdict(cfg), windows.tolist(), start_from] + chosen_on)
        for held in _FITTED:  # the same network trained a moment ago in this process (the hybrid's after the U-Net's)
            if held[0] is self.stack and held[1] is self.labels and held[2] == run_key:
                return held[3]
        start, name = None, cfg.architecture
        if self.pretrained:
            from .embedding import pretrained_network

            start, name = pretrained_network(self.pretrained, cfg, self.stack.shape[0], self.n_classes, seed=i), \
                f"{cfg.architecture}_pretrained"
        got = train_on_windows(self.stack, self.labels, self.mask, windows, cfg, self.n_classes,
                               Path(self.out_dir) / f"{name}_fold{i}", model=start, run_key=run_key, seed=i,
                               val_windows=val_windows, choose_best=val_windows is not None)
        _FITTED.append((self.stack, self.labels, run_key, (got["model"], got["stats"])))
        del _FITTED[:-2]
        return got["model"], got["stats"]

    def _inner_validation(self, i, train, rng):
        """(inner training region, validation windows): the fold's training side split as notebook 03 splits the
        scene (:func:`lithocore.tiles.split_spatial`: a rectangle of blocks with the classes on both sides, a
        tile-wide buffer), ``cfg.inner_validation`` of its windows on the held-out part, which chooses the epoch
        kept. Where the training side cannot be split so, the fold trains on all of it (its last epoch), said."""
        from .tiles import fold_windows, sample_windows, split_spatial

        cfg = self.cfg
        side = self.mask & train
        try:
            region, _ = split_spatial(np.where(side, self.labels, NO_LABEL).astype(np.uint8), side, cfg.tile, rng,
                                      val_fraction=cfg.inner_validation, stride=cfg.stride)
        except ValueError as exc:
            print(f"fold {i}: no inner validation area ({exc}); the last epoch is kept")
            return train, None
        n_val = max(1, int(round(cfg.inner_validation * cfg.n_samples)))
        cand = fold_windows(self.labels, self.mask, cfg.tile, cfg.stride, n_val, allowed=train & (region == 1))
        if len(cand) == 0:
            print(f"fold {i}: no window fits the inner validation area; the last epoch is kept")
            return train, None
        val = sample_windows(cand, n_val, rng, labels=self.labels, size=cfg.tile, n_classes=self.n_classes)
        return train & (region == 0), val

    def proba(self, fitted, test) -> np.ndarray:
        """(n, K) class probabilities of the ``test`` pixels (in ``np.flatnonzero(test)`` order), from the windows
        the fold's map is made in (their argmax is its class)."""
        from .mapping import scene_outputs

        net, stats = fitted
        return scene_outputs(net, self.stack, stats["mean"], stats["std"], region=test)[:, test].T

    def __call__(self, i, train, test):
        from . import mapping

        from .crossval import release

        model, stats = self.fit(i, train)
        release(self.labels, self.mask)  # memory-mapped on a cluster: not read again while mapping
        # only the windows that hold the test region (within the mask already: crossval.fold_regions)
        classes, _ = mapping.map_array(model, self.stack, test, stats["mean"], stats["std"], progress=False,
                                       confidence=False)
        return classes


#: The last two fold networks this process trained, with the stack and labels they were trained on (held, so
#: compared by identity) and their training's key: a hybrid's network is its fold's U-Net, trained with the same
#: seed on the same windows (deterministic), so it is taken from here rather than trained twice.
_FITTED: list = []


def deep_fold_model(stack, area, cfg, out_dir) -> DeepFold:
    """A cross-validation model: the deep model of ``cfg`` (any of the registry) trained on windows wholly inside
    the fold's training region (normalised with their own statistics), then mapping the fold's test region.

    Parameters
    ----------
    stack, area
        The fused stack (C, H, W; in memory or a :class:`~lithocore.stackfile.StackFile`) and its study area.
    cfg
        The network and its training (:class:`~lithocore.settings.TrainingConfig`; ``epochs``: a fold's).
    out_dir
        Where each fold's checkpoints go (``<architecture>_fold<i>``): an interrupted fold resumes.

    Returns
    -------
    DeepFold
        ``model(i, train_region, test_region) -> class indices`` over the test region, for
        :func:`lithocore.crossval.cross_validate`.
    """
    return DeepFold(stack, area.labels, area.mask, len(area.classes), cfg, Path(out_dir))


@dataclass
class ForestFold:
    """A cross-validation forest (:func:`forest_fold_model`), picklable like :class:`DeepFold`."""

    stack: object
    labels: np.ndarray
    mask: np.ndarray
    n_trees: int = ForestSettings.n_trees
    max_features: int | str = ForestSettings.max_features
    fraction: float = ForestSettings.pixel_fraction
    cap: int = 0
    seed: int = 0
    neighbourhood: tuple[int, ...] = ()
    fill: np.ndarray | None = None  # the channels' means that fill NaN before the neighbourhood filters
    extra: object = None  # more predictors (an embedding, lithocore.embedding), (D, H, W), taken as they are

    def features(self):
        """The forest's predictors: the stack, its neighbourhood features and the extra channels, read by rows."""
        from .stackfile import Channels, Neighbourhood

        stack = Neighbourhood(self.stack, self.neighbourhood, self.fill) if self.neighbourhood else self.stack
        return stack if self.extra is None else Channels(stack, self.extra)

    def check_memory(self, n_classes: int, what: str) -> None:
        """Refuse, before any fold, a forest whose fit would not fit in memory: sized on every labelled pixel (more
        than any fold trains on), the predictors counted without computing them."""
        from . import forest

        n_features = forest.neighbourhood_channels(self.stack.shape[0], self.neighbourhood)
        n_features += self.extra.shape[0] if self.extra is not None else 0
        n = forest.training_pixels(self.labels, self.mask, self.fraction, self.cap or None)
        forest.check_training_memory(n, n_features, n_classes, self.n_trees, what)

    def fit(self, i, train):
        from . import forest

        from .tiles import both_map

        allowed = both_map(train, self.mask)  # no scene-sized map
        pixels = forest.sample_pixels(self.labels, allowed, self.fraction, self.seed + i,
                                      max_per_class=self.cap or None)
        return forest.train_forest(self.features(), self.labels, pixels, n_trees=self.n_trees,
                                   max_features=self.max_features, seed=self.seed)[0]

    def proba(self, rf, test, n_classes: int) -> np.ndarray:
        """(n, K) class probabilities of the ``test`` pixels (every class of the table a column)."""
        from .candidates import proba_at

        return proba_at(rf, self.features(), np.flatnonzero(test), n_classes)

    def __call__(self, i, train, test):
        from . import forest

        from .tiles import both_map

        from .crossval import release

        where = both_map(test, self.mask)  # read by rows: no scene-sized map
        rf = self.fit(i, train)
        release(self.labels)  # memory-mapped on a cluster: not read while predicting
        classes, _, _ = forest.predict_forest(rf, self.features(), where, progress=False, confidence=False)
        return classes


@dataclass
class HybridFold:
    """The network and the forest of a fold, trained on the same training side, their class probabilities
    averaged over the test pixels (``weight``: the network's share). Neither sees the other's outputs, so nothing
    needs nesting; picklable like the others (the network's part runs in its own process on a worker).

    A softmax is surer of itself than a forest's share of votes (mean top probability 0.90 against 0.78 on a
    sparse scene's fold), so the network's probabilities are first softened to the forest's mean confidence over
    the same pixels (:func:`match_confidence`; no label is read): 0.412 against a plain average's 0.402 mean
    mIoU on the default area (``benchmarks/README.md``). The network's probabilities come from one pass in the
    map's windows (an FCN-8s's shifted passes are its map's, not the hybrid's)."""

    deep: DeepFold
    forest: ForestFold
    weight: float = 0.5
    own_process = True

    def __call__(self, i, train, test):
        from dataclasses import replace

        test = test & self.forest.mask
        deep = replace(self.deep, out_dir=Path(self.deep.out_dir) / "hybrid")  # the network's own fold may train
        # at the same time, in another process: its checkpoints go elsewhere
        q = self.forest.proba(self.forest.fit(i, train), test, self.deep.n_classes)
        p = match_confidence(deep.proba(deep.fit(i, train), test), float(q.max(1).mean()))
        p = self.weight * p + (1 - self.weight) * q
        out = np.full(test.shape, NO_LABEL, np.uint8)
        out[test] = np.argmax(p, axis=1)
        return out


def match_confidence(p: np.ndarray, target: float, *, steps: int = 40) -> np.ndarray:
    """Probabilities ``p`` (n, K) tempered (``p ** (1 / T)``, renormalised; the order of the classes unchanged) so
    that their mean largest probability is ``target`` (as near as ``T`` in [1, 1000] allows; never sharpened).

    >>> p = np.array([[0.98, 0.01, 0.01], [0.01, 0.97, 0.02]])
    >>> q = match_confidence(p, 0.6)
    >>> round(float(q.max(1).mean()), 3), q.argmax(1).tolist()
    (0.6, [0, 1])
    """
    logp = np.log(np.clip(np.asarray(p, np.float64), 1e-12, 1.0))

    def temper(t):
        z = logp / t
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    if len(p) == 0 or temper(1.0).max(1).mean() <= target:
        return np.asarray(p, np.float32)
    lo, hi = 0.0, 3.0  # log10 of the temperature
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if temper(10 ** mid).max(1).mean() > target else (lo, mid)
    return temper(10 ** hi).astype(np.float32)


def forest_fold_model(stack, area, *, n_trees: int = ForestSettings.n_trees,
                      max_features: int | str = ForestSettings.max_features,
                      fraction: float = ForestSettings.pixel_fraction,
                      cap: int = 0, seed: int = 0, neighbourhood: tuple[int, ...] = (), extra=None) -> ForestFold:
    """A cross-validation model: the paper's forest on ``fraction`` of each class's pixels of the fold's
    training region (at most ``cap`` per class), predicting the fold's test region. With ``neighbourhood``
    window sizes, the forest also gets every channel's local mean and standard deviation over them, computed
    strip by strip as they are read (:class:`lithocore.stackfile.Neighbourhood`; give ``max_features="sqrt"``
    then, as notebook 06 does; :meth:`lithocore.candidates.ForestCandidate.fold_model` makes the workbook's two).

    Parameters
    ----------
    stack, area
        The fused stack (C, H, W; in memory or a :class:`~lithocore.stackfile.StackFile`) and its study area.
    n_trees, max_features
        The forest's trees and variables tried at each split (the paper's ntree and mtry).
    fraction, cap
        Share of each class's training pixels, and at most ``cap`` of them (0: no cap).
    seed
        The forest's seed (plus the fold's number).
    neighbourhood
        Window sizes of the local means and sds added as features; empty: none.
    extra
        More predictors of every pixel, (D, H, W), added as they are (the scene's self-supervised embedding,
        :func:`lithocore.embedding.scene_embedding`: learnt without a label, so no fold's labels are in it).

    Returns
    -------
    ForestFold
        ``model(i, train_region, test_region) -> class indices`` over the test region.
    """
    from .stackfile import Neighbourhood

    fill = Neighbourhood(stack, tuple(neighbourhood)).fill if neighbourhood else None  # once, not once a fold
    return ForestFold(stack, area.labels, area.mask, n_trees, max_features, fraction, cap, seed, tuple(neighbourhood),
                      fill, extra)
