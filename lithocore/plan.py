"""Fit the evaluation to the scene before any long work: the tile size, the cross-validation's blocks and its
number of folds, chosen together so that every fold can be trained and scored.

A fold is *feasible* when its test region holds labels and its training region (every valid pixel farther than
one tile from the test blocks) holds at least one tile-sized window wholly inside it that holds labels: the deep
model of that fold has something to learn from. :func:`fit_evaluation` tries, in order, the largest tile that
fits the scene down to 32 px (when the user gave none), the profile's folds down to two (when the user gave none)
and blocks as long as the labels' autocorrelation range, then longer ones (up to eight tiles), then shorter ones
(down to one tile) (when the user gave none), and returns the first plan in which every fold is feasible, with what it changed and why. When none is, it raises
:class:`SceneTooSmall` with the smallest scene that works and what to change: notebook 01 calls it, so a scene
too small stops there, not after minutes of training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .area import NO_LABEL
from .settings import given, profile as profile_settings, resolve
from .words import and_list, count


__all__ = ["EvaluationPlan", "SceneTooSmall", "fit_evaluation", "fit_tile_to_area", "MIN_TILE",
           "COMFORTABLE_WINDOWS", "fold_windows", "evaluation_plan", "run_config"]

#: The smallest tile: five poolings of the FCN-8s and four of the U-Net need a multiple of 32.
MIN_TILE = 32
#: Training windows per fold (distinct positions on the stride grid) for a plan to be comfortable; a plan with
#: fewer, down to one, is taken only when no comfortable one exists, and says so.
COMFORTABLE_WINDOWS = 8


class SceneTooSmall(ValueError):
    """No tile size, blocks and number of folds leave every fold something to train on and to score."""


@dataclass(frozen=True)
class EvaluationPlan:
    """What :func:`fit_evaluation` chose: the tile size, folds ``k``, block side and buffer (pixels), the
    training windows each fold has, and the changes from what the profile asked for (sentences)."""

    tile: int
    k: int
    block: int
    buffer: int
    windows_per_fold: list[int] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    autocorrelation_range_px: int | None = None

    def to_dict(self) -> dict:
        return dict(tile=self.tile, k=self.k, block=self.block, buffer=self.buffer,
                    windows_per_fold=list(self.windows_per_fold), changes=list(self.changes),
                    autocorrelation_range_px=self.autocorrelation_range_px)


def fit_tile_to_area(tile: int, shape: tuple[int, int], *, blocks: int = 4) -> int:
    """The largest multiple of 32 not above ``tile`` that leaves room for a spatial split of the scene into
    ``blocks`` x ``blocks`` blocks (at least ``blocks`` tiles across the short side).

    Examples
    --------
    >>> fit_tile_to_area(128, (1611, 1650)), fit_tile_to_area(128, (290, 260)), fit_tile_to_area(256, (100, 90))
    (128, 64, 32)
    """
    t = tile
    while t > MIN_TILE and blocks * t > min(shape):
        t -= 32
    return max(MIN_TILE, t)


def _range_blocks(tile: int, range_px: int | None) -> int:
    """Tiles per block from the autocorrelation range: rounded up, kept between two and eight (four without a
    range)."""
    return int(min(8, max(2, math.ceil(range_px / tile)))) if range_px else 4


def fold_windows(labels: np.ndarray, mask: np.ndarray, k: int, block: int, tile: int, stride: int,
                 seed: int = 0) -> list[int] | None:
    """Training windows of ``tile`` px wholly inside each fold's training region (with a one-tile buffer), or None
    when the folds cannot be made (fewer than ``k`` blocks hold labels) or a fold's test region holds none."""
    from .crossval import fold_regions, make_folds
    from .tiles import any_where, candidate_windows, labelled_map

    try:
        folds = make_folds(labels, mask, k, block=block, buffer=tile, seed=seed)
    except ValueError:
        return None
    labelled = labelled_map(labels, mask)  # strip by strip: no third scene-sized map beside the fold's two
    out = []
    for i in range(k):
        test, train = fold_regions(folds, i, mask, test_as_rows=True)  # one scene-sized map, the training side
        if not any_where(labelled, test):
            return None
        out.append(len(candidate_windows(labels, mask, tile, stride, allowed=train)))
    return out


def fit_evaluation(labels: np.ndarray, mask: np.ndarray, *, tile: int, k: int, stride: int, block: int = -1,
                   tile_given: bool = False, k_given: bool = False, seed: int = 0, pixel_size: float | None = None,
                   range_px: int | None = None, split_blocks: int = 4) -> EvaluationPlan:
    """The first plan (tile, folds, blocks) in which every fold is feasible (module docstring). ``tile`` and ``k``
    are the profile's (or the user's, with ``tile_given``/``k_given``: then only they are tried); ``block`` of -1
    is chosen here. The first tile tried leaves ``split_blocks`` tiles across the short side (notebook 03's
    single spatial split). ``pixel_size`` (metres) words the advice when nothing fits.

    Examples
    --------
    A 95 x 228 px scene: 128-px tiles and 4 folds cannot all train; 32-px tiles in 3 folds of 96-px blocks can.

    >>> lab = np.repeat((np.arange(228) // 19 % 6).astype(np.uint8)[None], 95, 0)
    >>> p = fit_evaluation(lab, np.ones_like(lab, bool), tile=128, k=4, stride=20, range_px=40)
    >>> p.tile, p.k, p.block, min(p.windows_per_fold) > 0
    (32, 3, 96, True)
    """
    from .knndm import autocorrelation_range

    shape = labels.shape
    if range_px is None and block == -1:
        range_px = autocorrelation_range(labels, mask)["range_px"] or None
    first = fit_tile_to_area(tile, shape, blocks=split_blocks) if not tile_given else tile
    tiles = [first] if tile_given else list(range(first, MIN_TILE - 1, -32))
    ks = [k] if k_given else list(range(k, 1, -1))
    tried: dict[tuple, list[int] | None] = {}
    for need in (COMFORTABLE_WINDOWS, 1):
        for t in tiles:
            if t > min(shape):
                continue
            n0 = _range_blocks(t, range_px)
            # the range's blocks first, then longer ones (more cautious), then shorter ones (optimistic)
            blocks = [block] if block != -1 else [n * t for n in [n0, *range(n0 + 1, 9), *range(n0 - 1, 0, -1)]
                                                  if n * t <= max(shape)]
            for kk in ks:
                for b in blocks:
                    if (kk, b, t) not in tried:
                        tried[kk, b, t] = fold_windows(labels, mask, kk, b, t, stride, seed)
                    windows = tried[kk, b, t]
                    if windows and min(windows) >= need:
                        changes = _changes(tile, k, t, kk, b if block == -1 else n0 * t, n0, range_px, tile_given)
                        if need < COMFORTABLE_WINDOWS:
                            changes.append(f"some fold has only {count(min(windows), 'training window')} (the "
                                           f"plan looks for {COMFORTABLE_WINDOWS} or more): its deep model learns "
                                           f"from little, and may predict few classes")
                        return EvaluationPlan(t, kk, b, t, windows, changes, range_px)
    raise SceneTooSmall(_too_small(labels, mask, tile if tile_given else None, k if k_given else None,
                                   block if block != -1 else None, pixel_size))


def _changes(tile: int, k: int, t: int, kk: int, b: int, n0: int, range_px, tile_given: bool) -> list[str]:
    out = []
    if t != tile and not tile_given:
        out.append(f"tiles of {t} px, not the profile's {tile} px: larger ones leave some fold too few training windows "
                   f"(or the scene is under four of them across)")
    if kk != k:
        out.append(f"{kk} folds, not the profile's {k}: with more, some fold has too few training windows or no "
                   f"labels")
    why = f"the labels' autocorrelation range ({range_px} px)" if range_px else "the usual four tiles"
    if b < n0 * t:
        out.append(f"blocks of {b} px, shorter than {why}: longer ones leave some fold too few training windows; "
                   f"blocks shorter than the range make the block cross-validation optimistic (notebook 07's "
                   f"matched folds measure by distance instead)")
    elif b > n0 * t:
        out.append(f"blocks of {b} px, longer than {why} rounded to tiles: shorter ones leave some fold too few "
                   f"training windows (longer blocks make the block cross-validation more cautious)")
    return out


def _too_small(labels, mask, tile, k, block, pixel_size) -> str:
    H, W = labels.shape
    labelled = (labels != NO_LABEL) & mask
    given = [f"tile_size {tile}" if tile else "", f"cv_folds {k}" if k else "", f"cv_block {block}" if block else ""]
    given = [g for g in given if g]
    lead = (f"with {and_list(given)} as given, " if given else
            f"with any tile size from {MIN_TILE} px, two folds or more and any block size, ")
    metres = (f" ({H * pixel_size / 1e3:.1f} x {W * pixel_size / 1e3:.1f} km of {pixel_size:g} m pixels)"
              if pixel_size else "")
    finer = (f"a finer pixel size (the reference grid's 'resolution'{f', e.g. {pixel_size / 2:g} m' if pixel_size else ''}"
             f") so the scene spans more pixels")
    options = (["label more of the scene (training polygons spread over it)"] if labelled.mean() < 0.5 else []) + \
        ["a larger area", finer]
    advice = "leave those parameters out (-1) so the workbook can fit them" if given else and_list(options, "or")
    return (f"this scene of {H} x {W} px{metres}, {count(int(labelled.sum()), 'labelled pixel')}, is too small for "
            f"the spatial cross-validation: {lead}some fold has no {MIN_TILE}-px training window wholly outside its "
            f"test blocks and their one-tile buffer, or no labels to score. The smallest scene that works is about "
            f"{2 * MIN_TILE} x {4 * MIN_TILE} px with labels in each half (two folds of one {2 * MIN_TILE}-px block "
            f"each, a {MIN_TILE}-px buffer). What to change: {advice}.")


def evaluation_plan(profile: str, area, cfg=None, *, tile: int = -1, k: int = -1, block: int = -1, blocks: int = 4):
    """The plan of tile size, folds and CV blocks that fits this scene (:func:`lithocore.plan.fit_evaluation`):
    the profile's tile and folds unless given (-1: not given), the training configuration ``cfg``'s stride and
    seed (default: the profile's). Raises :class:`~lithocore.plan.SceneTooSmall` when no plan fits.

    Parameters
    ----------
    profile
        The profile whose tile and folds are the starting point.
    area
        The study area (its labels and mask).
    cfg
        Training settings for the stride and seed (default: the profile's).
    tile, k, block
        The user's tile size, folds and CV block side (px); -1: not given, chosen here.
    blocks
        Blocks a side of notebook 03's spatial split.

    Returns
    -------
    lithocore.plan.EvaluationPlan
        The tile size, folds, blocks, windows per fold and what was changed and why.
    """
    from .plan import fit_evaluation
    
    cfg = cfg or resolve(profile)
    base = profile_settings(profile).cv
    if k == 1:  # notebook 03's single spatial split instead of folds: the tile the folds would have, no blocks
        plan = evaluation_plan(profile, area, cfg, tile=tile, blocks=blocks)
        return replace(plan, k=1, block=0, windows_per_fold=[],
                       changes=plan.changes + ["one fold: notebook 03's single spatial split, no blocks to deal"])
    tile_given = given(tile)
    return fit_evaluation(area.labels, area.mask, tile=int(tile if tile_given else cfg.tile),
                          k=int(k if given(k) else base.folds), block=int(block) if given(block) else -1,
                          stride=cfg.stride, tile_given=tile_given, k_given=given(k), seed=cfg.seed,
                          pixel_size=area.grid.res, split_blocks=blocks)


def run_config(profile: str, area, *, tile: int = -1, blocks: int = 4, **overrides):
    """The training configuration of a run: the profile's, with the overrides; a tile of -1 (not given) is the
    largest, not above the profile's, with which every fold of the profile's cross-validation has training
    windows (:func:`evaluation_plan`; the same whichever notebook asks, so every notebook finds the same tiles).

    Parameters
    ----------
    profile
        The profile whose training settings are the defaults (:data:`lithocore.settings.PROFILES`).
    area
        The study area the tile size is fitted to.
    tile
        The user's tile size (px); -1: fitted.
    blocks
        Blocks a side of notebook 03's spatial split.
    **overrides
        Other training settings (:class:`~lithocore.settings.TrainingConfig` fields; -1 or "": the profile's).

    Returns
    -------
    lithocore.settings.TrainingConfig
    """
    
    cfg = resolve(profile, tile=tile, **overrides)
    if not given(tile):
        plan = evaluation_plan(profile, area, cfg, blocks=blocks)
        if plan.tile != cfg.tile:
            print(f"tile size: {plan.tile} px for this {area.shape[0]} x {area.shape[1]} px scene ({plan.changes[0]})")
            cfg = replace(cfg, tile=plan.tile)
    return cfg
