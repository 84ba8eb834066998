"""Notebook 07's candidates: the forests (per pixel, with neighbourhood features) and the registry's networks, each
with the same small interface (features, fit, class probabilities) so that every cross-validation treats them alike."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .area import NO_LABEL
from .forest import pixel_features

__all__ = ["ForestCandidate", "DeepCandidate", "CANDIDATES", "candidates_for", "proba_at"]


@dataclass(frozen=True)
class ForestCandidate:
    """A random forest on the stack's channels, and with ``neighbourhood`` window sizes also every channel's
    local mean and standard deviation (:func:`lithocore.forest.neighbourhood_features`)."""

    name: str
    label: str
    neighbourhood: tuple[int, ...] = ()
    max_features: int | str = 3
    n_trees: int = 200

    #: What the predictors are made by (part of every kept fold's key: a change of it refits the folds).
    features_made = "the stack; stackfile.Neighbourhood strips"

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


#: The registry's pixel candidates, by key (the keys notebook 06 uses for the same models).
CANDIDATES = {
    "forest": ForestCandidate("forest", "random forest"),
    "forest_context": ForestCandidate("forest_context", "neighbourhood forest", (5, 15), "sqrt"),
}


def candidates_for(cfg, n_classes: int, *, deep: bool = False, epochs: int | None = None) -> dict:
    """Notebook 07's candidates: the registry's forests, and with ``deep`` the network of ``cfg`` (trained
    ``epochs`` per fit, as notebook 06's folds).

    >>> list(candidates_for(None, 8))
    ['forest', 'forest_context']
    """
    out = dict(CANDIDATES)
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
