"""A run of the workbook: one object that owns its folder, its study area and its settings.

Every notebook opens the same run with its parameters (:meth:`Run.open`) and asks it for what it needs; each
method makes a stage's result or reuses the one an earlier notebook wrote when it was made from the same inputs
and settings (:mod:`lithocore.stages`, :mod:`lithocore.folds`), so a notebook run alone finds what the whole
workbook would have made.

Examples
--------
A run on a small synthetic area (a study area of your own: its manifest's path as ``study_area``):

>>> import tempfile
>>> run = Run.open(tempfile.mkdtemp(), synthetic=(256, 256, 300.0), profile="quick")
>>> area, stack, channels, units = run.stack()  # fused now: no notebook 02 ran in this folder
>>> cfg = run.training()  # the profile's, the tile size fitted to the scene  # doctest: +ELLIPSIS
tile size: 32 px for this 256 x 256 px scene (tiles of 32 px, not the profile's 128 px: ...)
>>> stack.shape, cfg.architecture, cfg.tile, run.cv()["k"]
((9, 256, 256), 'unet', 32, 4)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .runfolder import RunFolder
from .settings import ForestSettings, MappingSettings, given, profile as profile_settings

__all__ = ["Run"]


@dataclass
class Run:
    """One run: ``folder`` (where results go), ``manifest`` (the study area), ``profile`` and the values the user
    gave (-1 or "": the profile's, :func:`lithocore.settings.given`).

    Parameters
    ----------
    folder
        The run folder.
    manifest
        The study area's manifest.
    profile
        ``"quick"`` or ``"paper"`` (:data:`lithocore.settings.PROFILES`).
    seed
        Seed of the sampling, the folds and the models.
    tile, stride, n_samples
        Tile size (px, a multiple of 32), pixels between candidate windows and tiles sampled per model.
    cv_folds, cv_block, cv_epochs, cv_forest_cap
        Folds, CV block side (px), deep-model epochs per fold and forest pixels per class per fold.
    split_blocks
        Blocks a side of notebook 03's spatial split (the tile size fitted to the scene keeps it possible).
    training
        Other training settings (notebook 04's: ``epochs``, ``width``, ``architecture``, ...).
    """

    folder: RunFolder
    manifest: Path
    profile: str = "quick"
    seed: int = 0
    tile: int = -1
    stride: int = -1
    n_samples: int = -1
    cv_folds: int = -1
    cv_block: int = -1
    cv_epochs: int = -1
    cv_forest_cap: int = -1
    split_blocks: int = 4
    training_overrides: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, run_dir: str | Path, study_area: str = "", *, profile: str = "quick", seed: int = 0,
             synthetic: tuple[int, int, float] = (1611, 1650, 2000.0), training: dict | None = None,
             **settings) -> "Run":
        """The run in ``run_dir`` on the study area of manifest ``study_area`` (empty: the embedded synthetic area
        of ``synthetic`` = (height, width, coarse spacing in metres), generated once), with the notebook's
        parameters (see :class:`Run`). An unknown profile is an error before anything is read."""
        from .workbook import study_area_manifest

        profile_settings(profile)
        height, width, spacing = synthetic
        manifest = study_area_manifest(study_area, height=height, width=width, coarse_spacing=spacing, seed=seed)
        return cls(RunFolder(run_dir), Path(manifest), profile, seed=seed, training_overrides=dict(training or {}),
                   **settings)

    # ------------------------------------------------------------------ where
    @property
    def root(self) -> Path:
        return self.folder.root

    def stage(self, name: str) -> Path:
        """``<run>/<name>``, created: where one notebook writes its figures, rasters and JSON."""
        return self.folder.stage(name)

    # ------------------------------------------------------------------ what
    def _tile_settings(self) -> dict:
        return dict(tile=self.tile, stride=self.stride, n_samples=self.n_samples, seed=self.seed)

    def stack(self):
        """(area, stack, channel names, units): notebook 02's stack when current, else fused now."""
        if "stack" not in self._cache:
            from .stages import fused_stack

            self._cache["stack"] = fused_stack(self.root, self.manifest)
        return self._cache["stack"]

    @property
    def area(self):
        return self.stack()[0]

    def training(self):
        """The training settings (:class:`~lithocore.settings.TrainingConfig`): the profile's, the values given, and
        the tile size fitted to the scene when none was given (:func:`lithocore.plan.run_config`)."""
        if "training" not in self._cache:
            from .plan import run_config

            self._cache["training"] = run_config(self.profile, self.area, **self._tile_settings(),
                                                 blocks=self.split_blocks, **self.training_overrides)
        return self._cache["training"]

    def cv(self) -> dict:
        """The spatial cross-validation's settings, fitted to the scene (:func:`lithocore.folds.cv_settings`)."""
        if "cv" not in self._cache:
            from .folds import cv_settings

            area = self.area
            self._cache["cv"] = cv_settings(self.profile, self.training(), shape=area.shape, k=self.cv_folds,
                                            epochs=self.cv_epochs, block=self.cv_block, forest_cap=self.cv_forest_cap,
                                            labels=area.labels, mask=area.mask)
        return self._cache["cv"]

    def folds(self):
        """The folds (notebook 03's, or made now)."""
        from .folds import cv_folds

        return cv_folds(self.root, self.area, self.training(), self.cv())

    def tiles(self, split: str = "spatial", *, stratified: bool | None = None, blocks: int | None = None):
        """The training tiles of ``split`` (notebook 03's, or sampled now; :func:`lithocore.stages.training_tiles`)."""
        from .stages import training_tiles

        return training_tiles(self.root, self.area, self.training(), split, stratified=stratified, blocks=blocks)

    def model(self, split: str = "spatial", model_path: str = ""):
        """(model, meta): ``model_path`` when given, else notebook 04's model when current (made from this stack and
        tiles, and with every training setting this run was given), else trained now (loaded once per run object)."""
        key = ("model", split, model_path)
        if key not in self._cache:
            from .stages import load_or_train

            self._cache[key] = load_or_train(self.root, self.manifest, self.profile, split, model_path or None,
                                             area=self.area, **self._tile_settings(), **self.training_overrides)
        return self._cache[key]

    def class_map(self, split: str = "spatial", *, model_path: str = "", boundary_width: int = 3,
                  mapping: MappingSettings | None = None):
        """(class indices, scores) of the deep model's map of the scene (:func:`lithocore.stages.model_map`)."""
        from .stages import model_map

        return model_map(self.root, self.manifest, profile=self.profile, split=split, area=self.area,
                         boundary_width=boundary_width, model_path=model_path or None, mapping=mapping,
                         loaded=self.model(split, model_path))

    def embedding(self, settings=None):
        """The scene's self-supervised embedding (:func:`lithocore.embedding.scene_embedding`, its settings by
        default those whose network starts the profile's U-Net): made once per stack and settings, in
        ``<run>/embedding``; returns its ``.npy`` path."""
        from .embedding import EmbeddingSettings, scene_embedding
        from .stages import stack_provenance

        area, stack, _, _ = self.stack()
        settings = settings or EmbeddingSettings.for_network(self.training())
        return scene_embedding(self.root, stack, area.mask, settings,
                               stack_key=stack_provenance(self.root).get("stack_key") or "")

    def paper_forest(self, forest: ForestSettings | None = None, *, cap: int = -1, cluster: str = "") -> dict:
        """Notebook 06's forest by the paper's protocol and its map (:func:`lithocore.stages.paper_forest_map`):
        ``forest`` (default: the profile's), at most ``cap`` pixels a class (-1: the profile's; 0: none)."""
        from .stages import paper_forest_map

        area, stack, _, _ = self.stack()
        forest = forest or profile_settings(self.profile).forest
        cap = cap if given(cap) else profile_settings(self.profile).cv.paper_forest_cap
        return paper_forest_map(self.root, area, stack, n_trees=forest.n_trees, max_features=forest.max_features,
                                fraction=forest.pixel_fraction, cap=cap, seed=self.seed, cluster=cluster)
