"""Every setting of a run, with one profile table and one marker for "the profile's value".

A run's settings come from a *profile* (:data:`PROFILES`: ``quick`` for a CPU, ``paper`` for the paper's settings
on a GPU) and the values the user gives. A notebook parameter left at the profile's value is -1 (a number) or ""
(text), None in Python: :func:`given` is the one place that knows it, :func:`resolve` the one place that applies
overrides to a profile.

Each concept has its settings object: :class:`TrainingConfig` (one training run: tiles, network, optimiser) and
:class:`CrossValidationSettings` (the spatial and matched cross-validations), :class:`ForestSettings` (the
paper's random forest), :class:`MappingSettings` (how a network maps the scene), gathered per profile in
:class:`Profile`; the fusion's are :class:`lithocore.fusion.FusionSettings`, stored with the stack. The tile size, folds and blocks that a *scene* allows are fitted on top of these by
:mod:`lithocore.plan` (notebook 01), never stored back here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

__all__ = ["PROFILES", "Profile", "TrainingConfig", "CrossValidationSettings", "ForestSettings", "MappingSettings",
           "given", "given_only", "notebook_training", "profile", "resolve"]


def given(value) -> bool:
    """Whether a parameter holds a value rather than "the profile's" (-1, "" or None).

    >>> given(-1), given(""), given(None), given(0), given(False), given(-1.0), given("unet")
    (False, False, False, True, True, False, True)
    """
    if value is None or (isinstance(value, str) and value == ""):
        return False
    return not (isinstance(value, (int, float)) and not isinstance(value, bool) and value == -1)


def given_only(**values) -> dict:
    """The values that were given (:func:`given`).

    >>> given_only(tile=-1, epochs=3, architecture="")
    {'epochs': 3}
    """
    return {k: v for k, v in values.items() if given(v)}


def notebook_training(**values) -> dict:
    """The training settings a notebook's parameters give (notebook 04's names; notebooks 06 and 07 take those that
    make the network, so that a value given to the workbook trains, cross-validates and judges the same network):
    -1 and "" keep the profile's; ``class_weighting`` and ``augment`` are 1 or 0 there.

    >>> notebook_training(epochs=-1, architecture="fcn8s", augment=0, class_weighting=-1)
    {'architecture': 'fcn8s', 'augment': False}
    """
    return {k: bool(v) if k in ("class_weighting", "augment") else v for k, v in given_only(**values).items()}


@dataclass(frozen=True)
class TrainingConfig:
    """The settings of one training run: its tiles (``tile``, ``stride``, ``n_samples``), the network
    (``architecture``, ``width``, ``fc``, ``dropout``, ``upsampling``, ``norm``) and the optimiser (the rest); notebook
    04's parameters map onto these. The values of a profile: :data:`PROFILES`."""

    width: float = 0.125  # multiplier on the VGG-19 filters
    fc: int = 256  # filters of Conv6-8
    tile: int = 128  # pixels
    stride: int = 20  # pixels between candidate windows
    n_samples: int = 400  # windows sampled
    batch_size: int = 5
    epochs: int = 40
    steps_per_epoch: int | None = None  # None: one pass over the training tiles
    optimizer: str = "adam"  # "sgd" (with momentum) or "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    clipnorm: float | None = None  # clip each gradient's norm (needed by the summed loss at lr 1e-4)
    loss_mode: str = "mean"  # "sum" over pixels (the paper) or "mean"
    class_weighting: bool = True  # loss weights (1/f)^power from the training tiles' class frequencies
    class_weight_power: float = 0.5  # 0.5: the square root of the inverse frequency; 1: fully balanced
    balanced_tiles: bool = False  # a fold's or candidate's tiles drawn favouring those that hold rare classes
    inner_validation: float = 0.0  # > 0: that share of a fold's training side held out to choose its best epoch
    dropout: float = 0.5
    upsampling: str = "bilinear"  # "table1" (the paper's kernels) or "bilinear" (Long et al.'s, bilinear start)
    seed: int = 0
    architecture: str = "fcn8s"  # a model of lithocore.registry.ARCHITECTURES
    norm: str = "none"  # normalisation after each convolution: "none", "group" or "batch"
    augment: bool = False  # random flips and quarter turns of the training tiles
    steps_per_execution: int = 1  # training steps per compiled call: the same training, less Python per step (GPUs)

    def model_config(self, n_channels: int, n_classes: int) -> dict:
        """The configuration :func:`lithocore.model.build_model` takes."""
        return dict(architecture=self.architecture, n_channels=n_channels, n_classes=n_classes, width=self.width,
                    fc=self.fc, dropout=self.dropout, tile=self.tile, upsampling=self.upsampling, norm=self.norm)

    @property
    def iterations(self) -> int | None:
        return None if self.steps_per_epoch is None else self.steps_per_epoch * self.epochs


@dataclass(frozen=True)
class CrossValidationSettings:
    """The cross-validations' settings of a profile.

    Parameters
    ----------
    folds
        Folds of notebook 06's spatial (block) cross-validation.
    epochs
        Deep-model epochs per fold; -1: as notebook 04 (the profile's training epochs).
    forest_cap
        Most training pixels per class for the forests in each fold (notebooks 06 and 07); 0: none.
    paper_forest_cap
        Most training pixels per class for notebook 06's paper-protocol forest; 0: none.
    matched_folds
        Folds of notebook 07's matched (kNNDM) and random cross-validations.
    estimates
        The estimates notebook 07 runs for the recommended candidate.
    matched_deep
        Whether notebook 07's candidates include the deep model.
    """

    folds: int = 4
    epochs: int = 6
    forest_cap: int = 2000
    paper_forest_cap: int = 10000
    matched_folds: int = 4
    estimates: tuple = ("matched", "block", "random")
    matched_deep: bool = False


@dataclass(frozen=True)
class ForestSettings:
    """The paper's random forest (notebooks 06 and 07).

    Parameters
    ----------
    n_trees
        Trees (the paper's ntree).
    max_features
        Variables tried at each split (the paper's mtry); the neighbourhood forest takes ``"sqrt"`` of its many.
    pixel_fraction
        Share of each class's training pixels a forest is trained on (the paper: 10 %).
    """

    n_trees: int = 200
    max_features: int | str = 3
    pixel_fraction: float = 0.1


@dataclass(frozen=True)
class MappingSettings:
    """How a network maps the scene (notebook 05).

    Parameters
    ----------
    memory_mb
        Memory for one mapping window (input and activations), which sets its size; -1: a quarter of the memory
        available, at most :data:`lithocore.mapping.DEFAULT_MEMORY_MB`.
    margin
        Pixels of context around each window's kept core (a multiple of 32).
    shifts
        Passes shifted by 0, 9, 18, 27 px, their probabilities averaged; 1: one pass; -1: the model's (four for a
        network whose upsampling leaves a 4-px imprint, the FCN-8s; one for the others,
        :func:`lithocore.mapping.leaves_imprint`).
    cluster
        Where the windows run: "" this process, "local:K" a Dask LocalCluster, or a scheduler address.

    Examples
    --------
    >>> MappingSettings().key() == MappingSettings(memory_mb=256, cluster="local:2").key()  # the same map
    True
    """

    memory_mb: float = -1.0
    margin: int = 64
    shifts: int = -1
    cluster: str = ""

    def key(self) -> str:
        """What changes the map (the passes and the margin), not where or in how much memory it runs."""
        from .runfolder import key

        return key([self.shifts, self.margin])


@dataclass(frozen=True)
class Profile:
    """A profile: the settings of every concept, before the scene and the user's values."""

    training: TrainingConfig
    cv: CrossValidationSettings
    forest: ForestSettings = ForestSettings()
    mapping: MappingSettings = MappingSettings()


#: The profiles. ``quick``: a CPU run of the whole workbook in minutes. ``paper``: the paper's settings (full-width
#: FCN-8s, 7000 iterations), meant for a GPU.
PROFILES: dict[str, Profile] = {
    # quick: the U-Net with flips and quarter turns, chosen by nested spatial cross-validation on inner
    # validation areas (benchmarks/select_model.py); 16 epochs and 6 a fold keep the workbook within 15 minutes
    # on 2 cores (the measurements behind these numbers: benchmarks/README.md)
    "quick": Profile(TrainingConfig(architecture="unet", augment=True, epochs=16),
                     CrossValidationSettings(folds=4, epochs=6, forest_cap=2000, paper_forest_cap=10000,
                                             matched_folds=4, matched_deep=False)),
    "paper": Profile(TrainingConfig(width=1.0, fc=4096, tile=256, stride=20, n_samples=1000, batch_size=5, epochs=100,
                                    steps_per_epoch=70, optimizer="sgd", learning_rate=1e-4, momentum=0.9,
                                    loss_mode="sum", clipnorm=1.0, class_weighting=False, upsampling="table1",
                                    architecture="fcn8s_paper", steps_per_execution=10),
                     CrossValidationSettings(folds=5, epochs=-1, forest_cap=0, paper_forest_cap=0, matched_folds=5,
                                             matched_deep=True)),
}


def profile(name: str) -> Profile:
    """The profile called ``name``; an unknown name is an error listing the profiles.

    >>> profile("paper").cv.folds
    5
    """
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[name]


def resolve(name: str = "quick", **overrides) -> TrainingConfig:
    """The training settings of profile ``name`` with the given overrides (those not :func:`given` keep the
    profile's).

    Examples
    --------
    >>> cfg = resolve("paper", epochs=2, tile=-1)
    >>> cfg.epochs, cfg.tile, cfg.width
    (2, 256, 1.0)
    """
    keep = given_only(**overrides)
    unknown = set(keep) - {f.name for f in fields(TrainingConfig)}
    if unknown:
        raise TypeError(f"unknown training setting(s) {sorted(unknown)}")
    from .registry import ARCHITECTURES

    cfg = replace(profile(name).training, **keep)
    if cfg.architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {cfg.architecture!r}; choose one of {sorted(ARCHITECTURES)}")
    if cfg.norm not in ("none", "group", "batch"):
        raise ValueError(f"norm must be 'none', 'group' or 'batch', got {cfg.norm!r}")
    return cfg
