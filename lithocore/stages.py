"""Making or reusing each stage's result in a run folder: each result is reused only when it was made from the same
inputs and settings (its provenance key, :mod:`lithocore.runfolder`), else made again, with a message.

A notebook run alone gets here what an earlier notebook would have written (through :class:`lithocore.run.Run`):
the fused stack (:func:`fused_stack`), the tiles (:func:`training_tiles`), the model (:func:`train_model`,
:func:`load_or_train`), the deep model's class map and scores (:func:`model_map`), notebook 06's paper-protocol
forest map (:func:`paper_forest_map`). The settings come from :mod:`lithocore.settings` and the scene's plan
(:mod:`lithocore.plan`); the cross-validation's folds from :mod:`lithocore.folds`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .data import load_study_area
from .errors import WorkbookWarning
from .plan import run_config
from .registry import display_name, model_name
from .runfolder import RunFolder, key, manifest_fingerprint, read_npz, write_json, write_npz
from .settings import MappingSettings, given_only
from .tiles import tile_warnings, tiles_made_from
from .training import assess_model

__all__ = ["fused_stack", "stack_provenance", "stack_valid_mask", "training_tiles", "train_model",
           "load_or_train", "evaluation_regions", "model_map", "deep_map_if_current", "current_map",
           "paper_forest_map"]


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
                max_pixels: int | None = None, cluster=None):
    """The run's fused stack: the one notebook 02 wrote when it was made from this manifest's content (and
    ``settings``, when given), said so; else fused now with ``settings`` (default: :class:`FusionSettings`'s
    defaults, notebook 02's) and written where notebook 02 writes it (block by block, ``memory_mb`` a block).
    ``max_pixels``: the stack returned is read coarser beyond it (a preview, :func:`~lithocore.outputs.read_stack`).

    Parameters
    ----------
    run_dir
        The run folder (its stack: ``02_fuse_sources/fused_stack.tif``).
    manifest
        The study area's manifest.
    area
        The study area loaded from ``manifest`` (default: loaded here).
    settings
        A :class:`~lithocore.fusion.FusionSettings`; None accepts whatever settings notebook 02 used.
    memory_mb
        Memory for one row strip when the stack is written.
    max_pixels
        Read the stack coarser beyond this many pixels (a preview).
    cluster
        Where the stack's strips are fused when it is made: None or "" this process, else a Dask cluster
        (:func:`lithocore.blockwise.write_stack`; the workers read the files, not ``area``'s layers).

    Returns
    -------
    tuple
        (area, stack (C, H, W) float32, channel names, units); the stack in memory, or read window by window when
        larger than :data:`lithocore.stackfile.STACK_IN_MEMORY_MB` (:func:`lithocore.stackfile.open_stack`).
    """
    from . import fusion

    rf = RunFolder(run_dir)
    fp = manifest_fingerprint(manifest)
    prov = stack_provenance(rf.root)
    if prov:
        same_area = prov["manifest_fingerprint"] == fp
        same_settings = settings is None or fusion.FusionSettings.from_dict(prov["fusion_settings"]) == settings
        if same_area and same_settings:
            if settings is not None:  # notebook 02 asks with its settings: say that nothing is fused again
                print(f"{rf.stack_path} was made from this study area with these settings: reused")
            if area is None:  # the fine bands are in the stack: not read again when its valid-data mask is at hand
                valid = stack_valid_mask(rf.root, prov["stack_key"]) if max_pixels is None else None
                area = load_study_area(manifest, valid=valid)
            return (area, *_stack_from_file(rf.stack_path, max_pixels))
        why = "another study area (or the manifest or its files changed)" if not same_area else "other fusion settings"
        print(f"{rf.stack_path} was made from {why}: fusing again.")
    settings = settings or fusion.FusionSettings()
    stack, names, units, valid = _fuse_into_run(rf.root, manifest, area, settings, memory_mb=memory_mb,
                                                max_pixels=max_pixels, cluster=cluster)
    if area is None:  # fused from the files strip by strip; the area loaded after it, without the fine bands
        area = load_study_area(manifest, valid=valid)
    return area, stack, names, units


def _fuse_into_run(run_dir, manifest, area, settings, *, memory_mb: float = 256.0, max_pixels: int | None = None,
                   cluster=None):
    """Fuse the study area with ``settings`` and write its stack where notebook 02 does, block by block from the
    manifest (:func:`lithocore.blockwise.write_stack`: memory set by ``memory_mb``, not by the scene; the same
    values as :func:`~lithocore.fusion.fuse_study_area` in memory, which notebook 02 draws),
    with what it was made from in its tags. ``area`` None: every layer read from the files. Returns (stack, channel
    names, units, valid-data mask): the stack read back, at most ``max_pixels`` (coarser beyond: a preview,
    :func:`~lithocore.outputs.read_stack`)."""
    from . import blockwise, fusion

    fp = manifest_fingerprint(manifest)

    def stack_key(channels: list[str]) -> str:  # the channels the stack's plan chose (the settings', else the default)
        return key([fp, settings.key(), channels])

    def tags(channels: list[str]) -> dict:
        return dict(manifest=str(Path(manifest).resolve()), manifest_fingerprint=fp,
                    fusion_settings=json.dumps(settings.to_dict()), stack_key=stack_key(channels))

    out = blockwise.write_stack(manifest, RunFolder(run_dir).stack_path, settings, memory_mb=memory_mb, progress=False,
                                area=area, tags=tags, cluster=cluster or None)
    if area is not None and area.layers_loaded:  # notebook 02's in-memory default channels are the stack's
        names = list(settings.channels) or fusion.default_channels_for([c.name for c in area.coarse],
                                                                       area.extra_names, area.guide_names)
        if names != out["channels"]:
            raise RuntimeError(f"the block-wise stack has channels {out['channels']}, the study area {names}")
    valid = out["valid"]
    write_npz(RunFolder(run_dir).valid_mask_path, bits=np.packbits(valid), shape=np.array(valid.shape),
              stack_key=stack_key(out["channels"]))
    return (*_stack_from_file(RunFolder(run_dir).stack_path, max_pixels), valid)


def stack_valid_mask(run_dir, stack_key: str) -> np.ndarray | None:
    """The valid-data mask written with the run's stack of key ``stack_key`` (:func:`fused_stack`), or None when
    there is none or it was written with another stack."""
    z = read_npz(RunFolder(run_dir).valid_mask_path, stack_key, field="stack_key", only=("shape", "bits"))
    if z is None:
        return None
    shape = tuple(int(v) for v in z["shape"])
    return np.unpackbits(z["bits"], count=shape[0] * shape[1]).reshape(shape).view(bool)  # 0/1 bytes: no copy


def _stack_from_file(path, max_pixels: int | None = None):
    """(stack, channel names, units) of the stack file: a preview of at most ``max_pixels``; else the stack in memory
    when it fits :data:`lithocore.stackfile.STACK_IN_MEMORY_MB`, or a :class:`~lithocore.stackfile.StackFile` read
    window by window (the tiles, the forests' pixels, the cross-validation and the mapping read only what they
    need)."""
    import rasterio

    from . import outputs
    from .stackfile import open_stack

    if max_pixels is not None:
        stack, names, units, _, _ = outputs.read_stack(path, max_pixels=max_pixels)
        return stack, names, units
    with rasterio.open(path) as src:
        tags = src.tags()
    return open_stack(path), json.loads(tags["channels"]), json.loads(tags["units"])


# ------------------------------------------------------------------------------------------ tiles


def training_tiles(run_dir, area, cfg, split: str = "spatial", *, stratified: bool | None = None,
                   blocks: int | None = None):
    """The run's tiles for ``split``: read from notebook 03's file when made from the same study area and
    settings, else sampled now and written there. ``stratified`` and ``blocks`` (notebook 03's options) of
    None accept what notebook 03 chose; new tiles use False and 4. The tile set's ``info`` carries what it was
    made from, its key and its warnings.

    Parameters
    ----------
    run_dir
        The run folder (its tiles: ``03_build_tiles/tiles_<split>.npz``).
    area
        The study area.
    cfg
        The training settings whose ``tile``, ``stride``, ``n_samples`` and ``seed`` the tiles are drawn with.
    split
        ``"spatial"`` (disjoint regions) or ``"paper"`` (random 80/20).
    stratified, blocks
        Notebook 03's options (see above).

    Returns
    -------
    lithocore.tiles.TileSet
        Training and validation windows, the split's region map and ``info`` (made from, key, warnings).
    """
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
        print(f"{path} was made from another study area or other tile settings: sampling again.")
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


def train_model(run_dir, area, stack, channels, units, cfg, split: str = "spatial", *, profile: str = "quick",
                model=None, verbose="auto", reuse: bool = False):
    """Train the FCN-8s of ``cfg`` (or ``model``, built from it) on the run's tiles and save it with its
    metadata (``model.json``, written last: a model without it is unfinished). With ``reuse``, a finished model
    in the run folder made from the same stack, tiles, split, classes and every training setting is loaded
    instead, and said so. Returns (model, meta, history)."""
    from .model import backend_info
    from .training import evaluate_tiles, load_bundle, read_history, save_bundle, train_on_windows

    rf = RunFolder(run_dir)
    rf.stage("04_train_model")
    ts = training_tiles(rf.root, area, cfg, split)
    made_from = _model_made_from(rf.root, area, ts, cfg, split)
    if reuse and rf.model_path.is_file() and rf.model_meta_path.is_file():
        meta = json.loads(rf.model_meta_path.read_text())
        history_csv = rf.model_dir / "history.csv"
        if meta.get("made_from") == json.loads(json.dumps(made_from)) and history_csv.is_file():
            print(f"{rf.model_path} was trained on this stack and these tiles with these settings: reused "
                 f"(restart=True trains again)")
            model, meta = load_bundle(rf.model_path)
            return model, meta, read_history(history_csv)
    rf.model_meta_path.unlink(missing_ok=True)  # from here on, what is in the folder is unfinished
    got = train_on_windows(stack, area.labels, area.mask, ts.train, cfg, len(area.classes), rf.model_dir,
                           run_key=key(made_from), val_windows=ts.val, model=model, verbose=verbose)
    model, history, val = got["model"], got["history"], got["val"]
    stats = got["stats"] | {"fitted_on": "training windows"}
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
        print(f"mapping with the model given as model_path, {model_path}: "
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
        print(f"{rf.model_path} was trained on another stack, other tiles or other settings: training again.")
    elif rf.model_path.is_file():
        print(f"{rf.model_path} has no model.json beside it (its training did not finish): training again.")
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


def evaluation_regions(run_dir, area, meta: dict) -> dict:
    """The regions a map is scored on (boolean maps, or :class:`~lithocore.tiles.RowMap` made strip by strip), from
    the split the model was trained with.

    Spatial split: ``held_out`` (the validation region, never seen in training), ``whole_map`` (every valid
    pixel, the paper's protocol) and ``train_region`` (where training pixels may come from). Paper split:
    ``outside_training_tiles`` replaces ``held_out`` (those pixels border training tiles: not independent).
    """
    from .settings import TrainingConfig
    from .tiles import RowMap, both_map, window_map

    cfg = TrainingConfig(**{k: v for k, v in meta["config"].items() if k in TrainingConfig.__dataclass_fields__})
    ts = training_tiles(run_dir, area, cfg, meta["split"])
    mask, shape = area.mask, area.shape  # the regions are RowMaps, made strip by strip as they are scored
    if ts.region is not None:
        region = ts.region
        return dict(held_out=RowMap(lambda a, b: mask[a:b] & (region[a:b] == 1), shape), whole_map=mask,
                    train_region=RowMap(lambda a, b: mask[a:b] & (region[a:b] == 0), shape))
    seen = window_map(shape, ts.train, ts.size)
    return dict(outside_training_tiles=RowMap(lambda a, b: mask[a:b] & ~seen[a:b], shape), whole_map=mask,
                train_region=both_map(mask, seen))


# ------------------------------------------------------------------------------------------ map


def model_map(run_dir, manifest, *, profile: str = "quick", split: str = "spatial", boundary_width: int = 3,
              area=None, model_path=None, mapping: MappingSettings | None = None, loaded: tuple | None = None,
              **overrides):
    """A deep model's class map of the scene (class indices) and its scores.

    The model is ``model_path`` when given, else this run's (:func:`load_or_train`: notebook 04's when current,
    else trained now). Notebook 05's outputs (``<model>_classes.tif``, ``<model>_metrics.json``) are reused when
    they were mapped with this model (and, when ``mapping`` is given, with the same ``shifts`` and ``margin``:
    what changes the map, not where or in how much memory it runs) and scored from that very map; else the scene
    is mapped now (``mapping``: a :class:`~lithocore.settings.MappingSettings`; default its defaults) and scored
    on the evaluation regions. A map of (nearly) one class makes the model untrustworthy, said so. ``loaded``:
    the (model, meta) that :func:`load_or_train` returned already (not loaded again).

    Returns
    -------
    (np.ndarray, dict)
        The class indices and the scores, which carry ``mapping`` (the mapping's record), ``trust``, ``model``
        (the registry key), ``stripes`` (:func:`lithocore.compare.stripe_report`), the evaluation ``regions`` and
        ``training_seconds``.
    """
    from . import mapping as M
    from . import metrics
    from .compare import stripe_report

    rf = RunFolder(run_dir)
    area = area if area is not None else load_study_area(manifest)
    model, meta = loaded or load_or_train(rf.root, manifest, profile, split, model_path, area=area, **overrides)
    regions = evaluation_regions(rf.root, area, meta)
    name = model_name(meta)
    settings_key = mapping.key() if mapping is not None else None
    mapping = mapping or MappingSettings()
    scores = None if model_path else current_map(rf.root, meta, settings_key)
    if scores is not None:
        classes, _ = M.read_class_map(rf.class_map_path(name), area.classes)
        print(f"{scores['mapping']['classes']} was mapped by this model with these settings: reused")
    else:
        norm = meta["normalisation"]
        result = M.map_geotiff(model, rf.stack_path, rf.stage("05_map_scene"), area.classes, norm["mean"],
                               norm["std"], mask=area.mask, progress=False, prefix=name,
                               memory_mb=mapping.memory_mb if mapping.memory_mb > 0 else None,
                               margin=mapping.margin, cluster=mapping.cluster or None, shifts=mapping.shifts,
                               tags=dict(model_key=meta.get("model_key"),
                                         **({"settings_key": settings_key} if settings_key else {})))
        classes, _ = M.read_class_map(result["classes"], area.classes)
        scored = {k: v for k, v in regions.items() if k != "train_region"}
        scores = metrics.evaluate_map(classes, area.labels, area.mask, area.classes.names, regions=scored,
                                      boundary_width=boundary_width)
        scores["mapping"] = result
        trust = meta.get("trust") or {"trustworthy": True, "reasons": []}
        collapsed = metrics.one_class(scores[next(iter(scored))]["confusion_matrix"])  # a map of (nearly) one class
        if collapsed:
            trust = dict(trustworthy=False, reasons=trust["reasons"] + [f"the map collapsed: it {collapsed}"])
            print(f"WARNING: the {display_name(name)} map collapsed: it {collapsed}")
        scores["trust"] = trust
        scores["model"] = name
        scores["stripes"] = stripe_report(rf.root, area, classes, result)
        write_json(rf.map_metrics_path(name), scores)
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
        print(f"{classes_path} was mapped with another model: mapping again.")
        return None
    if settings_key is not None and tags.get("settings_key") != settings_key:
        print(f"{classes_path} was mapped with other mapping settings: mapping again.")
        return None
    scores = json.loads(metrics_path.read_text())
    if (scores.get("mapping") or {}).get("map_id") != tags.get("map_id"):
        print(f"{metrics_path} was computed from another map than {classes_path.name} (a mapping stopped before its "
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
            print(f"{path} was made from this stack and these labels with these settings: reused")
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


# ------------------------------------------------------------------------------------ cross-validation


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


