"""Keras loaders: batches of training tiles cut from the stack on the fly (:class:`TileBatches`), kept apart from
:mod:`lithocore.tiles` (which windows, which split) so that choosing tiles starts no deep-learning framework."""

from __future__ import annotations

import math

import numpy as np

from .area import NO_LABEL
from .framework import start_keras
from .tiles import IGNORE

__all__ = ["TileBatches"]


def _keras_pydataset():
    keras = start_keras()

    return keras.utils.PyDataset


def _dihedral(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k-th of the 8 symmetries of a square (k % 4 quarter turns, then a flip when k >= 4), applied alike
    to a tile (H, W, C) and its targets (H, W). Safe where the geology has no preferred orientation in the
    image; not for oriented fabrics (bedding that always strikes one way, a regional foliation) that a model
    should learn as such."""
    x, y = np.rot90(x, k % 4, axes=(0, 1)), np.rot90(y, k % 4, axes=(0, 1))
    if k >= 4:
        x, y = x[:, ::-1], y[:, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


class TileBatches(_keras_pydataset()):
    """Batches of (tiles, targets) cut from the scene on the fly: ``x`` is (B, size, size, C) float32, the
    channels normalised with ``mean``/``std``; ``y`` is (B, size, size) int32 with :data:`IGNORE` where a
    pixel is unlabelled or outside the valid mask. Reshuffled every epoch from ``seed``."""

    def __init__(self, stack: np.ndarray, labels: np.ndarray, mask: np.ndarray, windows: np.ndarray, size: int,
                 batch_size: int = 5, *, mean=None, std=None, shuffle: bool = True, seed: int = 0,
                 augment: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.stack, self.labels, self.mask = stack, labels, mask
        self.windows, self.size, self.batch_size = np.asarray(windows), int(size), int(batch_size)
        c = stack.shape[0]
        self.mean = np.zeros(c, np.float32) if mean is None else np.asarray(mean, np.float32)
        self.std = np.ones(c, np.float32) if std is None else np.asarray(std, np.float32)
        self.shuffle, self.seed, self.epoch, self.augment = shuffle, seed, 0, bool(augment)
        self.order = self._order()

    def _order(self):
        if not self.shuffle:
            return np.arange(len(self.windows))
        return np.random.default_rng((self.seed, self.epoch)).permutation(len(self.windows))

    def __len__(self) -> int:
        return math.ceil(len(self.windows) / self.batch_size)

    def tile(self, r: int, c: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.size
        x = (self.stack[:, r:r + s, c:c + s].transpose(1, 2, 0) - self.mean) / self.std
        valid = self.mask[r:r + s, c:c + s]
        x = np.where(valid[..., None] & np.isfinite(x), x, 0.0).astype(np.float32)
        lab = self.labels[r:r + s, c:c + s].astype(np.int32)  # int32 first: -1 does not fit a uint8
        y = np.where(valid & (lab != NO_LABEL), lab, IGNORE)
        return x, y

    def __getitem__(self, idx: int):
        sel = self.order[idx * self.batch_size:(idx + 1) * self.batch_size]
        pairs = [self.tile(*self.windows[i]) for i in sel]
        if self.augment:  # one of the 8 flips and quarter turns per tile, drawn from (seed, epoch, batch)
            rng = np.random.default_rng((self.seed, self.epoch, idx, 1))
            pairs = [_dihedral(x, y, int(k)) for (x, y), k in zip(pairs, rng.integers(0, 8, len(pairs)))]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def on_epoch_end(self):
        self.epoch += 1
        self.order = self._order()
