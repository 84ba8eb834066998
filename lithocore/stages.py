"""The workbook's stages as functions over a run folder: each result is reused only when it was made from the
same inputs and settings (its provenance key, :mod:`lithocore.runfolder`), else made again, with a message.

A notebook run alone calls these to get what an earlier notebook would have written: the fused stack
(:func:`fused_stack`), the tiles (:func:`training_tiles`), the model (:func:`load_or_train`), the deep model's class
map (:func:`model_map`). They use the same settings objects as the notebooks (:class:`~lithocore.fusion.FusionSettings`,
:class:`~lithocore.training.TrainingConfig`), so a notebook run alone trains on the stack the whole workbook
would have made.

Small scenes and sparse labels are noticed here: :func:`evaluation_plan` picks the tile, folds and CV blocks with
which every fold can be trained (:mod:`lithocore.plan`) when the user gives none, :func:`tile_warnings` flags too
few tiles and classes missing from a side of the split,
and :func:`assess_model` writes a verdict on whether the model's scores mean anything (``trust`` in the JSON).
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from .area import NO_LABEL
from .data import load_study_area
from .runfolder import RunFolder, key, manifest_fingerprint, write_json
from .settings import given, given_only, resolve
from .settings import profile as profile_settings
from .errors import WorkbookWarning
from .registry import model_name

__all__ = ["fused_stack", "write_fused_stack", "stack_provenance", "evaluation_plan", "run_config", "tiles_made_from", "training_tiles",
           "tile_warnings", "train_model", "assess_model", "load_or_train", "evaluation_regions", "model_map", "model_name",
           "WorkbookWarning", "MIN_TRAINING_TILES", "trust_settings", "deep_map_if_current", "cv_cache_key",
           "cached_fold_predictions", "current_map", "paper_forest_map"]

#: Fewer training tiles than this and the model's scores are flagged as untrustworthy.
MIN_TRAINING_TILES = 20


def _say(message: str) -> None:
    print(message)


# ------------------------------------------------------------------------------------------ stack
def stack_provenance(run_dir) -> dict:
    """What the run's stack was made from (its tags), or {} when there is none."""
    import rasterio

    path = RunFolder(run_dir).stack_path
    if not path.is_file():
        return {}
    with rasterio.open(path) as src:
        tags = src.tags()
    return dict(manifest_fingerprint=tags.get("manifest_fingerprint"), stack_key=tags.get("stack_key"),
                fusion_settings=json.loads(tags.get("fusion_settings", "{}")))


def fused_stack(run_dir, manifest, area=None, settings=None, *, memory_mb: float = 256.0,
                max_pixels: int | None = None):
    """The run's fused stack: the one notebook 02 wrote when it was made from this manifest's content (and
    ``settings``, when given), said so; else fused now with ``settings`` (default: :class:`FusionSettings`'s
    defaults, notebook 02's) and written where notebook 02 writes it (block by block, ``memory_mb`` a block).
    ``max_pixels``: the stack returned is read coarser beyond it (a preview, :func:`~lithocore.fusion.read_stack`).

    Returns (area, stack, channel names, units).
    """
    from . import fusion

    rf = RunFolder(run_dir)
    area = area if area is not None else load_study_area(manifest)
    fp = manifest_fingerprint(manifest)
    prov = stack_provenance(rf.root)
    if prov:
        same_area = prov["manifest_fingerprint"] == fp
        same_settings = settings is None or fusion.FusionSettings.from_dict(prov["fusion_settings"]) == settings
        if same_area and same_settings:
            if settings is not None:  # notebook 02 asks with its settings: say that nothing is fused again
                _say(f"{rf.stack_path} was made from this study area with these settings: reused")
            stack, names, units, _, _ = fusion.read_stack(rf.stack_path, max_pixels=max_pixels)
            return area, stack, names, units
        why = "another study area (or the manifest or its files changed)" if not same_area else "other fusion settings"
        _say(f"{rf.stack_path} was made from {why}: fusing again.")
    settings = settings or fusion.FusionSettings()
    stack, names, units = write_fused_stack(rf.root, manifest, area, settings, memory_mb=memory_mb,
                                            max_pixels=max_pixels)
    return area, stack, names, units


def write_fused_stack(run_dir, manifest, area, settings, *, memory_mb: float = 256.0, max_pixels: int | None = None):
    """Fuse the study area with ``settings`` and write its stack where notebook 02 does, block by block from the
    manifest (:func:`lithocore.blockwise.write_stack`: memory set by ``memory_mb``, not by the scene; the same
    values as :func:`~lithocore.fusion.fuse_study_area` in memory, which notebook 02 draws),
    with what it was made from in its tags. Returns (stack, channel names, units): the stack read back, at most
    ``max_pixels`` (coarser beyond: a preview, :func:`~lithocore.fusion.read_stack`)."""
    from . import blockwise, fusion

    fp = manifest_fingerprint(manifest)
    names = list(settings.channels) or fusion.default_channels_for([c.name for c in area.coarse], area.extra_names,
                                                                   area.guide_names)
    out = blockwise.write_stack(manifest, RunFolder(run_dir).stack_path, settings, memory_mb=memory_mb, progress=False,
                                area=area,
                                tags=dict(manifest=str(Path(manifest).resolve()), manifest_fingerprint=fp,
                                          fusion_settings=json.dumps(settings.to_dict()),
                                          stack_key=key([fp, settings.key(), names])))
    if names != out["channels"]:
        raise RuntimeError(f"the block-wise stack has channels {out['channels']}, the study area {names}")
    stack, names, units, _, _ = fusion.read_stack(RunFolder(run_dir).stack_path, max_pixels=max_pixels)
    return stack, names, units


# ------------------------------------------------------------------------------------------ tiles
def evaluation_plan(profile: str, area, cfg=None, *, tile: int = -1, k: int = -1, block: int = -1, blocks: int = 4):
    """The plan of tile size, folds and CV blocks that fits this scene (:func:`lithocore.plan.fit_evaluation`):
    the profile's tile and folds unless given (-1: not given), the training configuration ``cfg``'s stride and
    seed (default: the profile's). Raises :class:`~lithocore.plan.SceneTooSmall` when no plan fits."""
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
    windows (:func:`evaluation_plan`; the same whichever notebook asks, so every notebook finds the same tiles)."""
    
    cfg = resolve(profile, tile=tile, **overrides)
    if not given(tile):
        plan = evaluation_plan(profile, area, cfg, blocks=blocks)
        if plan.tile != cfg.tile:
            _say(f"tile size: {plan.tile} px for this {area.shape[0]} x {area.shape[1]} px scene ({plan.changes[0]})")
            cfg = replace(cfg, tile=plan.tile)
    return cfg


def tiles_made_from(fingerprint: str, cfg, split: str) -> dict:
    """What a tile set is made from: the study area's content and the settings every notebook shares."""
    return dict(manifest=fingerprint, size=cfg.tile, stride=cfg.stride, n_samples=cfg.n_samples, seed=cfg.seed,
                split=split)


def tile_warnings(ts, area, n_samples: int) -> list[str]:
    """What makes a tile set unfit to train or judge a model: too few training tiles, far fewer windows than
    asked for, classes absent from the training or the validation side."""
    from .training import window_pixels

    out = []
    if len(ts.train) < MIN_TRAINING_TILES:
        out.append(f"only {len(ts.train)} training tiles of {ts.size} px (at least {MIN_TRAINING_TILES} are needed "
                   f"for scores that mean anything): use a smaller tile_size or a larger area")
    got = len(ts.train) + len(ts.val)
    if got < 0.5 * n_samples:
        out.append(f"only {got} windows could be drawn where n_samples asks for {n_samples}: the labelled area is "
                   f"small for {ts.size}-px tiles")
    labelled = area.mask & (area.labels != NO_LABEL)
    present = set(np.unique(area.labels[labelled]).tolist())
    for side, windows in (("training", ts.train), ("validation", ts.val)):
        px = window_pixels(area.shape, windows, ts.size) & labelled
        have = set(np.unique(area.labels[px]).tolist())
        missing = [area.classes.names[c] for c in sorted(present - have)]
        if missing:
            out.append(f"{len(missing)} of {len(present)} classes are absent from the {side} tiles: {', '.join(missing)}"
                       + (" (the model cannot learn them)" if side == "training" else " (they are not scored)"))
    return out


def training_tiles(run_dir, area, cfg, split: str = "spatial", *, stratified: bool | None = None,
                   blocks: int | None = None):
    """The run's tiles for ``split``: read from notebook 03's file when made from the same study area and
    settings, else sampled now and written there. ``stratified`` and ``blocks`` (notebook 03's options) of
    None accept what notebook 03 chose; new tiles use False and 4. The tile set's ``info`` carries what it was
    made from, its key and its warnings."""
    from . import tiles as T

    rf = RunFolder(run_dir)
    path = rf.tiles_path(split)
    made = tiles_made_from(manifest_fingerprint(area.manifest_path), cfg, split)
    if path.is_file():
        ts = T.load_tiles(path)
        stored = ts.info.get("made_from", {})
        if all(stored.get(k) == v for k, v in made.items()) and \
                (stratified is None or stored.get("stratified") == bool(stratified)) and \
                (blocks is None or stored.get("blocks") == int(blocks)):
            return ts
        _say(f"{path} was made from another study area or other tile settings: sampling again.")
    made |= dict(stratified=bool(stratified), blocks=4 if blocks is None else int(blocks))
    ts = T.make_tiles(area.labels, area.mask, size=cfg.tile, stride=cfg.stride, n_samples=cfg.n_samples,
                      split=split, seed=cfg.seed, stratified=made["stratified"], blocks=made["blocks"],
                      n_classes=len(area.classes))
    ts.info["made_from"] = made
    for side in ("val", "train"):  # the classes by name, as every JSON names them
        if f"classes_missing_from_{side}" in ts.info:
            ts.info[f"classes_missing_from_{side}"] = [area.classes.names[c] for c in ts.info[f"classes_missing_from_{side}"]]
    ts.info["tiles_key"] = key(made)
    ts.info["warnings"] = tile_warnings(ts, area, cfg.n_samples)
    for w in ts.info["warnings"]:
        warnings.warn(f"{split} split: {w}", WorkbookWarning, stacklevel=2)
    T.save_tiles(path, ts)
    return ts


# ------------------------------------------------------------------------------------------ model
def _model_made_from(run_dir, area, ts, cfg, split: str) -> dict:
    prov = stack_provenance(run_dir)
    return dict(stack_key=prov.get("stack_key"), tiles_key=ts.info.get("tiles_key"), split=split,
                config=asdict(cfg), classes=area.classes.to_list())


def assess_model(meta: dict, history: dict | None = None) -> dict:
    """Whether a trained model's scores mean anything: ``{"trustworthy": bool, "reasons": [...]}``.

    Not trustworthy when its tiles were flagged (too few training tiles, classes absent from training or from
    validation: those are not scored), or when it fits its training tiles far better than the validation tiles
    (overfitting: training accuracy more than 0.3 above validation accuracy). Every reason is named.
    """
    reasons = list(meta.get("tile_warnings", []))
    history = history or {}
    tr, va = history.get("masked_accuracy"), history.get("val_masked_accuracy")
    if tr and va and tr[-1] - va[-1] > 0.3:
        reasons.append(f"overfitting: training accuracy {tr[-1]:.2f} against validation accuracy {va[-1]:.2f} "
                       f"in the last epoch")
    return dict(trustworthy=not reasons, reasons=reasons)


def train_model(run_dir, area, stack, channels, units, cfg, split: str = "spatial", *, profile: str = "quick",
                model=None, verbose="auto", reuse: bool = False):
    """Train the FCN-8s of ``cfg`` (or ``model``, built from it) on the run's tiles and save it with its
    metadata (``model.json``, written last: a model without it is unfinished). With ``reuse``, a finished model
    in the run folder made from the same stack, tiles, split, classes and every training setting is loaded
    instead, and said so. Returns (model, meta, history)."""
    from .model import backend_info, build_model
    from .tiles import class_weights
    from .training import compile_model, data_parallel, evaluate_tiles, fit, load_bundle, make_batches, read_history, save_bundle, seed_everything

    rf = RunFolder(run_dir)
    rf.stage("04_train_model")
    ts = training_tiles(rf.root, area, cfg, split)
    made_from = _model_made_from(rf.root, area, ts, cfg, split)
    if reuse and rf.model_path.is_file() and rf.model_meta_path.is_file():
        meta = json.loads(rf.model_meta_path.read_text())
        history_csv = rf.model_dir / "history.csv"
        if meta.get("made_from") == json.loads(json.dumps(made_from)) and history_csv.is_file():
            _say(f"{rf.model_path} was trained on this stack and these tiles with these settings: reused "
                 f"(restart=True trains again)")
            model, meta = load_bundle(rf.model_path)
            return model, meta, read_history(history_csv)
    rf.model_meta_path.unlink(missing_ok=True)  # from here on, what is in the folder is unfinished
    seed_everything(cfg.seed)
    train, val, stats = make_batches(stack, area, ts, cfg)
    with data_parallel(cfg.batch_size):  # several devices (JAX): one model, each batch split between them
        if model is None:
            model = build_model(cfg.model_config(len(channels), len(area.classes)))
        weights = class_weights(area.labels, ts.train, ts.size, len(area.classes)) if cfg.class_weighting else None
        compile_model(model, len(area.classes), cfg, class_weights=weights)
        history = fit(model, train, val, rf.model_dir, cfg, verbose=verbose, run_key=key(made_from))
    meta = dict(profile=profile, split=split, channels=channels, units=units, classes=area.classes.to_list(),
                study_area=dict(name=area.name, manifest=str(area.manifest_path)),
                normalisation=stats, config=asdict(cfg), backend=backend_info(),
                validation=evaluate_tiles(model, val, area.classes.names), made_from=made_from,
                model_key=key(made_from), tile_warnings=ts.info.get("warnings", []),
                tiles=dict(train=len(ts.train), val=len(ts.val), size=ts.size))
    meta["trust"] = assess_model(meta, history)
    save_bundle(rf.model_dir, model, meta)
    return model, meta, history


def load_or_train(run_dir, manifest, profile: str = "quick", split: str = "spatial", model_path=None, *,
                  area=None, **overrides):
    """The model to map with: ``model_path`` if given (its channels and classes must match the stack's), else
    this run's notebook-04 model when it was made from the same stack, tiles and settings, else one trained now
    and saved where notebook 04 saves it. Returns (model, meta)."""
    from .training import load_bundle

    rf = RunFolder(run_dir)
    area, stack, channels, units = fused_stack(rf.root, manifest, area=area)
    if model_path:
        model, meta = load_bundle(model_path)
        _check_compatible(meta, channels, area, model_path)
        trained = meta.get("study_area") or {}
        own = (meta.get("made_from") or {}).get("stack_key") == stack_provenance(rf.root).get("stack_key")
        _say(f"mapping with the model given as model_path, {model_path}: "
             + ("trained on this run's stack" if own else
                f"trained in another run, on {trained.get('name') or 'another study area'}"
                + (f" ({trained['manifest']})" if trained.get("manifest") else "")
                + ", not on this run's stack: its scores here measure how it carries over")
             + f"; {meta.get('profile', '?')} profile, {model_name(meta)}")
        return model, meta
    cfg = run_config(profile, area, **overrides)
    if rf.model_path.is_file() and rf.model_meta_path.is_file():
        meta = json.loads(rf.model_meta_path.read_text())
        ts = training_tiles(rf.root, area, cfg, split)
        if _same_model(meta, _model_made_from(rf.root, area, ts, cfg, split), overrides):
            return load_bundle(rf.model_path)
        _say(f"{rf.model_path} was trained on another stack, other tiles or other settings: training again.")
    elif rf.model_path.is_file():
        _say(f"{rf.model_path} has no model.json beside it (its training did not finish): training again.")
    model, meta, _ = train_model(rf.root, area, stack, channels, units, cfg, split, profile=profile, verbose=0)
    return model, meta


def _same_model(meta: dict, expected: dict, overrides: dict) -> bool:
    """Whether a saved model was made from the expected stack, tiles, split and classes, and with every training
    setting the caller named (settings the caller did not name are the model's own: notebook 05 maps with the
    model notebook 04 trained, whatever its epochs)."""
    made = meta.get("made_from") or {}
    if any(made.get(k) != expected[k] for k in ("stack_key", "tiles_key", "split", "classes")):
        return False
    named = {k: v for k, v in given_only(**overrides).items() if k in expected["config"]}
    return all(made.get("config", {}).get(k) == expected["config"][k] for k in named)


def _check_compatible(meta: dict, channels: list[str], area, source) -> None:
    if meta.get("channels") != channels:
        raise ValueError(f"{source}: the model was trained on channels {meta.get('channels')}, but this run's stack "
                         f"has {channels}; map with a model trained on this stack")
    theirs = [(c["id"], c["name"]) for c in meta.get("classes", [])]
    ours = list(zip(area.classes.ids, area.classes.names))
    if theirs != ours:
        raise ValueError(f"{source}: the model's class table {theirs} is not the study area's {ours} (other classes "
                         f"or another order): its outputs would be read with the wrong legend")


def evaluation_regions(run_dir, area, meta: dict) -> dict[str, np.ndarray]:
    """The regions a map is scored on, from the split the model was trained with.

    Spatial split: ``held_out`` (the validation region, never seen in training), ``whole_map`` (every valid
    pixel, the paper's protocol) and ``train_region`` (where training pixels may come from). Paper split:
    ``outside_training_tiles`` replaces ``held_out`` (those pixels border training tiles: not independent).
    """
    from .settings import TrainingConfig
    from .training import window_pixels

    cfg = TrainingConfig(**{k: v for k, v in meta["config"].items() if k in TrainingConfig.__dataclass_fields__})
    ts = training_tiles(run_dir, area, cfg, meta["split"])
    if ts.region is not None:
        return dict(held_out=area.mask & (ts.region == 1), whole_map=area.mask, train_region=area.mask & (ts.region == 0))
    seen = window_pixels(area.shape, ts.train, ts.size)
    return dict(outside_training_tiles=area.mask & ~seen, whole_map=area.mask, train_region=area.mask & seen)


# ------------------------------------------------------------------------------------------ map


def model_map(run_dir, manifest, *, profile: str = "quick", split: str = "spatial", boundary_width: int = 3,
              area=None, **overrides):
    """This run's deep-model class map (class indices) and its scores: read from notebook 05's outputs
    (``<model>_classes.tif``, ``<model>_metrics.json``) when they were mapped with this run's model, else
    mapped now (training the model first when there is none that matches). The scores carry the evaluation
    regions under ``"regions"``, the training time under ``"training_seconds"``, the model's ``"trust"`` and
    its registry key under ``"model"``."""
    from . import mapping, metrics

    rf = RunFolder(run_dir)
    area = area if area is not None else load_study_area(manifest)
    model, meta = load_or_train(rf.root, manifest, profile, split, area=area, **overrides)  # makes the stack too
    regions = evaluation_regions(rf.root, area, meta)
    name = model_name(meta)
    classes_path, metrics_path = rf.class_map_path(name), rf.map_metrics_path(name)
    scores = current_map(rf.root, meta)
    if scores is not None:
        classes, _ = mapping.read_class_map(classes_path, area.classes)
    else:
        norm = meta["normalisation"]
        result = mapping.map_geotiff(model, rf.stack_path, rf.stage("05_map_scene"), area.classes, norm["mean"],
                                     norm["std"], mask=area.mask, progress=False,
                                     tags=dict(model_key=meta.get("model_key")), prefix=name)
        classes, _ = mapping.read_class_map(classes_path, area.classes)
        scores = metrics.evaluate_map(classes, area.labels, area.mask, area.classes.names, boundary_width=boundary_width,
                                      regions={k: v for k, v in regions.items() if k != "train_region"})
        scores["mapping"] = result
        scores["trust"] = meta.get("trust")
        write_json(metrics_path, scores)
    training = rf.model_dir / "training.json"
    scores["training_seconds"] = json.loads(training.read_text())["seconds"] if training.is_file() else None
    scores["regions"] = regions
    scores.setdefault("trust", meta.get("trust"))
    scores["model"] = name
    return classes, scores


def current_map(run_dir, meta: dict, settings_key: str | None = None) -> dict | None:
    """Notebook 05's scores of this run's deep-model map (``<model>_metrics.json``) when the class map on disk was
    made by the model of ``meta`` (and with the mapping settings of ``settings_key``, when given) and the scores
    were computed from that very map (its ``map_id``); else None, with a message saying which part is stale."""
    import rasterio

    rf = RunFolder(run_dir)
    name = model_name(meta)
    classes_path, metrics_path = rf.class_map_path(name), rf.map_metrics_path(name)
    if not (classes_path.is_file() and metrics_path.is_file()):
        return None
    with rasterio.open(classes_path) as src:
        tags = src.tags()
    if tags.get("model_key") != meta.get("model_key"):
        _say(f"{classes_path} was mapped with another model: mapping again.")
        return None
    if settings_key is not None and tags.get("settings_key") != settings_key:
        _say(f"{classes_path} was mapped with other mapping settings: mapping again.")
        return None
    scores = json.loads(metrics_path.read_text())
    if (scores.get("mapping") or {}).get("map_id") != tags.get("map_id"):
        _say(f"{metrics_path} was computed from another map than {classes_path.name} (a mapping stopped before its "
             f"scores were written): mapping and scoring again.")
        return None
    return scores


def paper_forest_map(run_dir, area, stack, *, n_trees: int = 200, max_features: int | str = 3,
                     fraction: float = 0.1, cap: int = 0, seed: int = 0, cluster=None) -> dict:
    """Notebook 06's forest by the paper's protocol: ``fraction`` of each class's labelled pixels (at most ``cap``),
    fitted and mapped over the scene (``rf_paper_classes.tif`` and its confidence); reused, and said so, when the
    map on disk was made from the same stack, labels and settings (``rf_paper.json`` records them and the map's
    id). Returns ``{"map": map_geotiff's result, "pixels", "fit_seconds", "made_from"}``."""
    import rasterio

    from . import forest
    from .mapping import map_geotiff

    rf = RunFolder(run_dir)
    path = rf.forest_map_path
    record = path.with_name("rf_paper.json")
    made = key([stack_provenance(rf.root).get("stack_key"), manifest_fingerprint(area.manifest_path), n_trees,
                max_features, fraction, cap, seed])
    if path.is_file() and record.is_file():
        old = json.loads(record.read_text())
        with rasterio.open(path) as src:
            map_id = src.tags().get("map_id")
        if old.get("made_from") == made and old["map"].get("map_id") == map_id:
            _say(f"{path} was made from this stack and these labels with these settings: reused")
            return old
    pixels = forest.sample_pixels(area.labels, area.mask, fraction, seed, max_per_class=cap or None)
    model, fit_s = forest.train_forest(stack, area.labels, pixels, n_trees=n_trees, max_features=max_features,
                                       seed=seed, progress=True)
    C = stack.shape[0]
    result = map_geotiff(model, rf.stack_path, path.parent, area.classes, np.zeros(C), np.ones(C), mask=area.mask,
                         margin=0, shifts=1, cluster=cluster or None, prefix=path.name.removesuffix("_classes.tif"),
                         progress=False, tags=dict(protocol="paper", n_trees=n_trees, max_features=max_features))
    out = dict(map=result, pixels=int(len(pixels)), fit_seconds=fit_s, made_from=made)
    write_json(record, out)
    return out


def stripe_report(run_dir, area, classes: np.ndarray, mapping_result: dict | None = None,
                  others: dict[str, np.ndarray] | None = None) -> dict:
    """Stripe ratios (:func:`lithocore.metrics.stripe_ratio`) of a window-made map on the 4-px grid of the
    FCN-8s's upsampling, the network's 32-px grid, the first version's 64-px window step and the borders of this
    map's windows, beside those of the geological map, of the per-pixel forest's map (notebook 06's, when it
    exists) and of ``others``. (Out-of-fold maps do not belong here: their fold blocks meet on the same grid.)"""
    from . import mapping, metrics

    grids = {"upsampling grid (4 px)": 4, "network grid (32 px)": 32, "old window step (64 px)": 64}
    if mapping_result and mapping_result.get("windows", 1) > 1:
        grids["window borders"] = tuple(mapping_result["core"])
    maps = {"this map": classes, "geological map": area.labels}
    forest_path = RunFolder(run_dir).forest_map_path
    if forest_path.is_file():
        with contextlib.suppress(ValueError):  # made with another class table: not comparable
            maps["random forest (per pixel)"] = mapping.read_class_map(forest_path, area.classes)[0]
    maps.update(others or {})
    ratios = {name: {g: metrics.stripe_ratio(m, area.mask, period=p) for g, p in grids.items()}
              for name, m in maps.items()}
    # the noise of the measure: the same ratio on the same map's lines shifted off the grid (largest of 7 shifts)
    off = {}
    for name, m in maps.items():
        off[name] = {}
        for g, p in grids.items():
            q = p if np.isscalar(p) else min(p)
            vals = [metrics.stripe_ratio(m, area.mask, period=p, offset=o) for o in
                    sorted({max(1, q * k // 8) for k in range(1, 8)}) if o % q]
            vals = [v for v in vals if v is not None]
            off[name][g] = max(vals) if vals else None
    return dict(ratios=ratios, off_grid_max=off, grids=grids)


# ------------------------------------------------------------------------------------ cross-validation
def cv_cache_key(run_dir, cv: dict, cfg, n_trees: int = 200, max_features: int = 3, pixel_fraction: float = 0.1) -> str:
    """The key under which notebook 06 caches each model's fold predictions (``<cv_dir>/fold<i>_<model>.npz``): the
    stack, the cross-validation and training settings and the forests' settings. Notebook 07 reads the block
    estimate from there when it matches."""
    return key([stack_provenance(run_dir).get("stack_key"), cv, cfg.__dict__, n_trees, max_features, pixel_fraction])


def cached_fold_predictions(run_dir, k: int, model: str, cache_key: str) -> list[np.ndarray] | None:
    """Notebook 06's fold predictions of ``model`` (class indices over each fold's test region) when all ``k``
    were made under ``cache_key``; else None."""
    out = []
    for i in range(k):
        path = RunFolder(run_dir).cv_dir / f"fold{i}_{model}.npz"
        if not path.is_file():
            return None
        with np.load(path) as z:
            if str(z["key"]) != cache_key:
                return None
            out.append(z["pred"])
    return out


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


def deep_map_if_current(run_dir, area) -> dict[str, np.ndarray]:
    """Notebook 05's deep-model class map (class indices), keyed by the model's name, when it was mapped with this
    run's model and that model was trained on this run's stack; else {} (nothing stale is counted)."""
    from . import mapping
    from .registry import display_name

    rf = RunFolder(run_dir)
    if not rf.model_meta_path.is_file():
        return {}
    meta = json.loads(rf.model_meta_path.read_text())
    if (meta.get("made_from") or {}).get("stack_key") != stack_provenance(rf.root).get("stack_key"):
        return {}
    path = rf.class_map_path(model_name(meta))
    if not path.is_file():
        return {}
    try:
        classes, tags = mapping.read_class_map(path, area.classes)
    except ValueError:
        return {}
    if tags.get("model_key") != meta.get("model_key") or classes.shape != area.shape:
        return {}
    return {f"{display_name(model_name(meta))} (notebook 05)": classes}


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
    ring of buffer with it. Measured on a 1611 x 1650 scene with 128-px tiles: 4-tile blocks in 4 folds leave
    53-62 % of the scene to each fold's training side, 3-tile blocks in 3 folds only 40-44 %.
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
    ok = (labels != NO_LABEL) & (mask if mask is not None else True)
    H, W = ok.shape
    pad = np.pad(ok, ((0, -H % block), (0, -W % block)))
    return int(pad.reshape(pad.shape[0] // block, block, pad.shape[1] // block, block).any((1, 3)).sum())


def cv_folds(run_dir, area, cfg, settings: dict):
    """The run's folds (notebook 03 writes them; made now when missing or made from something else). ``k = 1``
    is the single spatial split: its validation region is the one fold's test region."""
    from . import crossval
    from .runfolder import write_npz

    rf = RunFolder(run_dir)
    path = rf.folds_path
    k = key(dict(manifest=manifest_fingerprint(area.manifest_path), **settings, tile=cfg.tile, stride=cfg.stride,
                 n_samples=cfg.n_samples))
    if path.is_file():
        with np.load(path) as z:
            if str(z["key"]) == k:
                return crossval.Folds(int(z["k"]), int(z["block"]), int(z["buffer"]), z["fold"],
                                      json.loads(str(z["info"])))
        _say(f"{path} was made from another study area or other settings: making the folds again.")
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


def deep_fold_model(stack, area, cfg, out_dir):
    """A cross-validation model: the deep model of ``cfg`` (any of the registry) trained on windows wholly inside the fold's training
    region (normalised with their own statistics), then mapping the scene."""
    def run(i, train, test):
        from . import mapping
        from .fusion import normalisation_stats
        from .model import build_model
        from .loaders import TileBatches
        from .tiles import candidate_windows, class_weights, sample_windows
        from .training import compile_model, fit, seed_everything, window_pixels

        cand = candidate_windows(area.labels, area.mask, cfg.tile, cfg.stride, allowed=train)
        if len(cand) == 0:
            raise ValueError(f"fold {i}: no {cfg.tile}-px window fits wholly in the training region; use a smaller "
                             f"tile_size, larger cv_block or fewer folds")
        windows = sample_windows(cand, cfg.n_samples, np.random.default_rng((cfg.seed, i)))
        stats = normalisation_stats(stack, window_pixels(area.shape, windows, cfg.tile) & area.mask)
        batches = TileBatches(stack, area.labels, area.mask, windows, cfg.tile, cfg.batch_size, mean=stats["mean"],
                              std=stats["std"], seed=cfg.seed + i, augment=cfg.augment)
        seed_everything(cfg.seed + i)
        model = build_model(cfg.model_config(stack.shape[0], len(area.classes)))
        weights = class_weights(area.labels, windows, cfg.tile, len(area.classes)) if cfg.class_weighting else None
        compile_model(model, len(area.classes), cfg, class_weights=weights)
        fit(model, batches, None, Path(out_dir) / f"{cfg.architecture}_fold{i}", cfg, verbose=0,
            run_key=key([i, asdict(cfg), windows.tolist()]))
        classes, _ = mapping.map_array(model, stack, area.mask, stats["mean"], stats["std"], progress=False)
        return classes
    return run


def forest_fold_model(stack, area, *, n_trees: int = 200, max_features: int | str = 3, fraction: float = 0.1,
                      cap: int = 0, seed: int = 0, neighbourhood: tuple[int, ...] = ()):
    """A cross-validation model: the paper's forest on ``fraction`` of each class's pixels of the fold's
    training region (at most ``cap`` per class), predicting the fold's test region. With ``neighbourhood``
    window sizes, the forest also gets every channel's local mean and standard deviation over them
    (:func:`lithocore.forest.neighbourhood_features`; give ``max_features="sqrt"`` then, as notebook 06 does)."""
    from . import forest

    if neighbourhood:
        stack, _ = forest.neighbourhood_features(stack, tuple(neighbourhood))

    def run(i, train, test):
        pixels = forest.sample_pixels(area.labels, train & area.mask, fraction, seed + i, max_per_class=cap or None)
        rf, _ = forest.train_forest(stack, area.labels, pixels, n_trees=n_trees, max_features=max_features, seed=seed)
        classes, _, _ = forest.predict_forest(rf, stack, test & area.mask, progress=False)
        return classes
    return run
