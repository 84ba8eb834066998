"""Fit the evaluation to the scene before any long work (issue: real areas as they come): the tile size, folds and
CV blocks are chosen together so every fold can train, and a scene too small stops in notebook 01 with advice that
can work."""

import numpy as np
import pytest

from lithocore import plan as lplan, folds as lfolds
from lithocore import crossval
from lithocore.data import load_study_area
from lithocore.plan import MIN_TILE, SceneTooSmall, fit_evaluation
from lithocore.synthetic import SyntheticSpec, generate_study_area
from lithocore.tiles import candidate_windows

# The sizes real areas came in (issue 20): pixels, metres, survey spacing.
SCENES = {"95x228": (95, 228, 62.5, 500.0), "120x232": (120, 232, 62.5, 500.0), "256x256": (256, 256, 15.0, 2000.0)}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return {name: load_study_area(generate_study_area(
        SyntheticSpec(height=h, width=w, pixel_size=px, coarse_spacing=cs, seed=3, predict=""), root / name,
        progress=False)) for name, (h, w, px, cs) in SCENES.items()}


@pytest.mark.parametrize("name", list(SCENES))
def test_every_fold_of_a_small_scene_has_training_windows(scenes, name, tmp_path):
    """With no parameter given, notebook 06's folds (from the same settings notebooks 03-07 compute) leave every
    fold a training window wholly outside its test blocks and buffer: the failure that came after minutes of
    training on a 256 x 256 px scene (the profile's 128-px tiles fitted to 64 px) cannot happen."""
    area = scenes[name]
    cfg = lplan.run_config("quick", area)
    cv = lfolds.cv_settings("quick", cfg, shape=area.shape, labels=area.labels, mask=area.mask)
    folds = lfolds.cv_folds(tmp_path, area, cfg, cv)
    for i in range(folds.k):
        test, train = crossval.fold_regions(folds, i, area.mask)
        assert len(candidate_windows(area.labels, area.mask, cfg.tile, cfg.stride, allowed=train)) > 0, (name, i)
        assert (test & (area.labels != 255)).any()
    assert cfg.tile == lplan.evaluation_plan("quick", area).tile  # every notebook finds the same tile


def test_the_default_scene_keeps_the_profiles_settings():
    """A scene large enough changes nothing: 128-px tiles, 4 folds, blocks from the autocorrelation range."""
    lab = (np.add.outer(np.arange(1024) // 300, np.arange(1024) // 300) % 5).astype(np.uint8)
    plan = fit_evaluation(lab, np.ones_like(lab, bool), tile=128, k=4, stride=20)
    assert (plan.tile, plan.k, plan.changes) == (128, 4, []) and plan.block % 128 == 0


def test_a_scene_too_small_stops_with_advice_that_can_work():
    """40 x 40 px fully labelled: no setting works. The message says the smallest scene that does, and does not
    advise what cannot help (more labels, a smaller tile): a larger area or a finer pixel size."""
    lab = (np.arange(40)[None, :] // 10 % 4).repeat(40, 0).astype(np.uint8)
    with pytest.raises(SceneTooSmall) as err:
        fit_evaluation(lab, np.ones_like(lab, bool), tile=128, k=4, stride=20, pixel_size=30.0)
    msg = str(err.value)
    assert "40 x 40 px (1.2 x 1.2 km of 30 m pixels)" in msg and f"{2 * MIN_TILE} x {4 * MIN_TILE} px" in msg
    assert "a larger area or a finer pixel size" in msg and "e.g. 15 m" in msg
    assert "label more" not in msg and "smaller tile" not in msg
    # parameters the user gave that cannot work are named, and leaving them out is the advice
    lab = (np.arange(228)[None, :] // 19 % 6).repeat(95, 0).astype(np.uint8)
    with pytest.raises(SceneTooSmall, match=r"with tile_size 64 and cv_folds 4 as given, .* leave those parameters "
                                            r"out \(-1\)"):
        fit_evaluation(lab, np.ones_like(lab, bool), tile=64, k=4, stride=20, tile_given=True, k_given=True)


def test_one_fold_is_notebook_03s_single_split(scenes):
    """cv_folds 1 (the single spatial split) plans the tile only: no blocks to deal, nothing refused."""
    area = scenes["256x256"]
    plan = lplan.evaluation_plan("quick", area, k=1)
    assert (plan.k, plan.block, plan.tile) == (1, 0, lplan.evaluation_plan("quick", area).tile)


def test_sparse_labels_are_advised_to_be_extended():
    lab = np.full((60, 60), 255, np.uint8)
    lab[5:15, 5:15], lab[40:50, 40:50] = 0, 1
    with pytest.raises(SceneTooSmall, match=r"label more of the scene \(training polygons spread over it\), a larger "
                                            r"area or a finer pixel size"):
        fit_evaluation(lab, np.ones_like(lab, bool), tile=128, k=4, stride=20)


@pytest.mark.notebook
def test_notebook_01_stops_a_scene_too_small_before_any_long_work(tmp_path):
    """The plan runs in notebook 01: a 40 x 40 px area stops there, with the plan's message."""
    import papermill as pm

    from lithocore.workbook import run_workbook

    manifest = generate_study_area(SyntheticSpec(height=40, width=40, coarse_spacing=300.0, seed=3, predict=""),
                                   tmp_path / "area", progress=False)
    with pytest.raises(pm.PapermillExecutionError, match="too small for the spatial cross-validation"):
        run_workbook(tmp_path / "run", parameters={"study_area": str(manifest)}, only=["01", "02"], progress=False)
    assert not (tmp_path / "run" / "02_fuse_sources").exists()
    # the executed copy with the error is kept under its own name, and nothing half-written beside it
    assert sorted(p.name for p in (tmp_path / "run" / "notebooks").iterdir()) == ["01_load_data.ipynb", "run_keys.json"]
