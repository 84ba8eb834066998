"""Notebook 07's candidates: the forests (per pixel, with neighbourhood features) and the registry's networks, each
with the same small interface (features, fit, class probabilities) so that every cross-validation treats them alike."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .area import NO_LABEL
from .forest import pixel_features
from .settings import ForestSettings

__all__ = ["ForestCandidate", "DeepCandidate", "NEIGHBOURHOOD", "forest_candidates", "CANDIDATES", "candidates_for",
           "proba_at"]

#: The neighbourhood forest's windows (px): every channel's local mean and sd over 5 and 15 px.
NEIGHBOURHOOD = (5, 15)


@dataclass(frozen=True)
class ForestCandidate:
    """A random forest on the stack's channels, and with ``neighbourhood`` window sizes also every channel's
    local mean and standard deviation (:func:`lithocore.forest.neighbourhood_features`)."""

    name: str
    label: str
    neighbourhood: tuple[int, ...] = ()
    max_features: int | str = ForestSettings.max_features
    n_trees: int = ForestSettings.n_trees

    #: What the predictors are made by (part of every kept fold's key: a change of it refits the folds).
    features_made = "the stack; stackfile.Neighbourhood, float64 window sums in a fixed order"

    def features(self, stack):
        """The predictors (F, H, W): the stack itself, or with ``neighbourhood`` the stack and every channel's local
        mean and sd (:class:`lithocore.stackfile.Neighbourhood`, the values notebook 06's folds read), held whole
        when they fit the in-memory budget, else computed strip by strip as they are read
        (:func:`lithocore.stackfile.hold_if_fits`: the same values either way). Read them with
        :func:`lithocore.forest.pixel_features`."""
        if not self.neighbourhood:
            return stack
        from .stackfile import Neighbourhood, hold_if_fits

        return hold_if_fits(Neighbourhood(stack, tuple(self.neighbourhood)))

    def fit(self, F: np.ndarray, labels: np.ndarray, pixels: np.ndarray, seed: int = 0, train=None):
        """A forest on the sampled training ``pixels`` (flat indices; ``train``, the training side, is not needed)."""
        from .forest import train_forest

        return train_forest(F, labels, pixels, n_trees=self.n_trees, max_features=self.max_features, seed=seed)[0]

    def proba(self, model, F: np.ndarray, idx: np.ndarray, n_classes: int) -> np.ndarray:
        return proba_at(model, F, idx, n_classes)

    def fold_model(self, stack, area, *, fraction: float, cap: int, seed: int, extra=None):
        """This forest as notebook 06's cross-validation model (:func:`lithocore.folds.forest_fold_model`): the
        same trees, variables and neighbourhood on ``fraction`` of each class's training pixels (at most ``cap``)."""
        from .folds import forest_fold_model

        return forest_fold_model(stack, area, n_trees=self.n_trees, max_features=self.max_features, fraction=fraction,
                                 cap=cap, seed=seed, neighbourhood=self.neighbourhood, extra=extra)

    def describe(self) -> dict:
        """The settings that make this forest (kept with its estimates in ``trust.json``)."""
        return dict(n_trees=self.n_trees, max_features=self.max_features, neighbourhood=list(self.neighbourhood))


@dataclass(frozen=True)
class DeepCandidate:
    """A network of the registry (``config``: a :class:`lithocore.settings.TrainingConfig`) as a candidate: trained
    on tiles of the whole scene whose labels outside the training side are removed (a matched fold is a set of
    Voronoi cells: no tile fits wholly inside one), normalised with its tiles' statistics; its class probabilities
    from the whole scene in the windows a map is made in."""

    name: str
    label: str
    config: object
    n_classes: int
    neighbourhood: tuple[int, ...] = ()

    def features(self, stack: np.ndarray) -> np.ndarray:
        return np.asarray(stack, np.float32)

    def describe(self) -> dict:
        """The settings that make this network (kept with its estimates in ``trust.json``)."""
        return dict(architecture=self.config.architecture, epochs=self.config.epochs, tile=self.config.tile)

    def fit(self, F: np.ndarray, labels: np.ndarray, pixels: np.ndarray, seed: int = 0, train=None):
        import tempfile

        from .runfolder import key
        from .tiles import fold_windows, sample_windows
        from .training import train_on_windows

        cfg = self.config
        mask = np.isfinite(F).all(0)
        side = mask if train is None else np.asarray(train[0:len(mask)], bool) & mask  # an array or a RowMap
        lab = np.where(side, labels, NO_LABEL).astype(np.uint8)
        cand = fold_windows(lab, mask, cfg.tile, cfg.stride, cfg.n_samples)
        if not len(cand):
            raise ValueError(f"{self.label}: no {cfg.tile}-px tile holds a training label")
        windows = sample_windows(cand, cfg.n_samples, np.random.default_rng((cfg.seed, seed)), labels=lab,
                                 size=cfg.tile, n_classes=self.n_classes, stratified=cfg.balanced_tiles)
        with tempfile.TemporaryDirectory(prefix=".deep-candidate-") as tmp:
            got = train_on_windows(F, lab, mask, windows, cfg, self.n_classes, tmp,
                                   run_key=key([repr(cfg), windows.tolist()]), seed=seed)
        return dict(net=got["model"], mean=np.asarray(got["stats"]["mean"], np.float32),
                    std=np.asarray(got["stats"]["std"], np.float32))

    def proba(self, model, F: np.ndarray, idx: np.ndarray, n_classes: int) -> np.ndarray:
        scene = self.scene_proba(model, F)
        return scene.reshape(scene.shape[0], -1)[:, idx].T.astype(np.float32)

    def scene_proba(self, model, F: np.ndarray) -> np.ndarray:
        """(K, H, W) class probabilities over the scene, from the windows a map is made in
        (:func:`lithocore.mapping.scene_outputs`)."""
        from .mapping import scene_outputs

        return scene_outputs(model["net"], F, model["mean"], model["std"])


def forest_candidates(forest: ForestSettings | None = None) -> dict[str, ForestCandidate]:
    """The workbook's two forests, the one home of what they are (notebook 06 cross-validates them, notebook 07
    chooses among them): the paper's forest on the stack's channels (``forest``'s trees and variables tried at
    each split) and the neighbourhood forest, which adds every channel's local mean and sd over
    :data:`NEIGHBOURHOOD` and tries ``sqrt`` of its many variables. ``forest``: default :class:`ForestSettings`.

    >>> {m: (c.n_trees, c.max_features) for m, c in forest_candidates(ForestSettings(n_trees=30)).items()}
    {'forest': (30, 3), 'forest_context': (30, 'sqrt')}
    """
    forest = forest or ForestSettings()
    return {"forest": ForestCandidate("forest", "random forest", (), forest.max_features, forest.n_trees),
            "forest_context": ForestCandidate("forest_context", "neighbourhood forest", NEIGHBOURHOOD, "sqrt",
                                              forest.n_trees)}


#: The two forests with the default settings, by key (the keys notebook 06 uses for the same models).
CANDIDATES = forest_candidates()


def candidates_for(cfg, n_classes: int, *, forest: ForestSettings | None = None, deep: bool = False,
                   epochs: int | None = None) -> dict:
    """Notebook 07's candidates: the two forests of ``forest`` (:func:`forest_candidates`), and with ``deep`` the
    network of ``cfg`` (trained ``epochs`` per fit, as notebook 06's folds).

    >>> list(candidates_for(None, 8))
    ['forest', 'forest_context']
    """
    out = forest_candidates(forest)
    if deep:
        from dataclasses import replace

        from .registry import display_name

        name = cfg.architecture or "fcn8s"
        out[name] = DeepCandidate(name, display_name(name), replace(cfg, epochs=epochs or cfg.epochs), n_classes)
    return out


def proba_at(model, F: np.ndarray, idx: np.ndarray, n_classes: int, chunk: int = 200_000) -> np.ndarray:
    """Class probabilities (n, K) of the pixels ``idx`` (flat indices), every class of the table a column
    (a class the model never saw gets 0)."""
    out = np.zeros((len(idx), n_classes), np.float32)
    cols = np.asarray(model.classes_, np.int64)
    for s in range(0, len(idx), chunk):
        out[s:s + chunk][:, cols] = model.predict_proba(pixel_features(F, idx[s:s + chunk]))
    return out
