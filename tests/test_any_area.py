"""Any mix of sources runs through every notebook: imagery only, geophysics only, point samples only, and a small
scene with sparse training polygons (0 = unlabelled). Each area is derived from the small synthetic area."""

import json
from pathlib import Path

import pytest
import rasterio
import yaml

from lithocore.data import load_study_area
from lithocore.variants import sparse_training_polygons
from lithocore.workbook import run_workbook

from .test_data import _copy_manifest

PARAMS = dict(tile_size=32, stride=16, n_samples=40, epochs=2, steps_per_epoch=2, n_trees=20, cv_folds=2, cv_epochs=1,
              cv_block=64, matched_folds=2)


def _reference_spec(manifest: Path) -> dict:
    with rasterio.open(manifest.parent / "aster_vnir_15m.tif") as src:
        return {"crs": src.crs.to_string(), "bounds": list(src.bounds), "resolution": float(src.res[0])}


def _write(folder: Path, name: str, man: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(man, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def areas(small_manifest, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("areas")
    full = _copy_manifest(small_manifest, folder)
    full.pop("truth", None)
    out = {}
    out["imagery_only"] = _write(folder, "imagery_only", {**full, "extra": [], "coarse": [], "points": []})
    out["geophysics_only"] = _write(folder, "geophysics_only", {**full, "reference": _reference_spec(small_manifest),
                                                               "guide": [], "extra": [], "points": []})
    out["points_only"] = _write(folder, "points_only", {**full, "reference": _reference_spec(small_manifest),
                                                       "guide": [], "extra": [], "coarse": []})
    # training polygons on ~6 % of the pixels (discs), everything else a polygon of unit 0 (unlabelled)
    out["sparse_labels"] = sparse_training_polygons(small_manifest, folder / "sparse", share=0.06, seed=0)
    return out


def test_derived_areas_load_as_declared(areas):
    img = load_study_area(areas["imagery_only"])
    assert len(img.guide_names) == 9 and not img.extra_names and not img.coarse
    geo = load_study_area(areas["geophysics_only"])
    assert not geo.guide_names and [c.name for c in geo.coarse] == ["magnetic"]
    pts = load_study_area(areas["points_only"])
    assert not pts.guide_names and all(c.kind == "points" for c in pts.coarse) and len(pts.coarse) == 7
    sparse = load_study_area(areas["sparse_labels"])
    labelled = (sparse.labels != 255) & sparse.mask
    assert 0.04 < labelled.mean() < 0.09  # 0 = unlabelled is no class
    assert sparse.labels_name == "training polygons" and img.labels_name == "geological map"


@pytest.mark.notebook
@pytest.mark.parametrize("name", ["imagery_only", "geophysics_only", "points_only"])
def test_every_notebook_runs_on_a_partial_area(name, areas, tmp_path):
    """Each mix through the notebooks its sources change. Geophysics only (a one-channel stack; notebook 06's
    single-split look, k = 1) and point samples only (gridded channels, a mask their reach sets) run every
    notebook; imagery only runs notebooks 01-03, which make its stack: a stack of guide bands is, to notebooks
    04-07, a multi-channel stack like the synthetic area's, which every notebook test runs (running them here too
    took 110 s of the suite's two cores)."""
    folds = 1 if name == "geophysics_only" else PARAMS["cv_folds"]
    only = ["01", "02", "03"] if name == "imagery_only" else None
    run_workbook(tmp_path, parameters=dict(PARAMS, cv_folds=folds, study_area=str(areas[name])), only=only,
                 progress=False)
    nb02 = (tmp_path / "notebooks" / "02_fuse_sources.ipynb").read_text()
    if name == "imagery_only":
        assert "Skipped: fusion (this study area has no coarse layer" in nb02
    else:
        assert "Skipped: fusion (no guide bands" in nb02
    with rasterio.open(tmp_path / "02_fuse_sources" / "fused_stack.tif") as src:
        channels = json.loads(src.tags()["channels"])
    area = load_study_area(areas[name])
    expected = {"imagery_only": area.guide_names, "geophysics_only": ["magnetic"],
                "points_only": [c.name for c in area.coarse]}[name]
    assert channels == expected
    if only:
        assert json.loads((tmp_path / "03_build_tiles" / "tiles.json").read_text())["tile"] == PARAMS["tile_size"]
        return
    comparison = json.loads((tmp_path / "06_compare_random_forest" / "comparison.json").read_text())
    cv = comparison["cross_validation"]
    assert len(cv["folds"]) == folds
    if folds == 1:
        assert cv["verdict"].startswith("one split cannot tell")


@pytest.mark.notebook
def test_sparse_labels_are_flagged_not_reported_as_if_fine(areas, tmp_path):
    """A small scene with sparse polygons, trained on the spatial split (the case seen in the field: few training
    tiles in one region): the tile size is chosen to fit, and the model is flagged untrustworthy in the notebooks
    and the JSON (too few tiles, classes missing from training, overfitting)."""
    run_workbook(tmp_path, parameters=dict(PARAMS, tile_size=-1, split="spatial",
                                           study_area=str(areas["sparse_labels"])), progress=False)
    tiles = json.loads((tmp_path / "03_build_tiles" / "tiles.json").read_text())
    assert tiles["tile"] == 32  # the quick profile's 128 px does not fit a 192-px scene
    assert tiles["warnings"]["spatial"]
    meta = json.loads((tmp_path / "04_train_model" / "model.json").read_text())
    assert meta["trust"]["trustworthy"] is False and meta["trust"]["reasons"]
    scores = json.loads((tmp_path / "05_map_scene" / f"{meta['config']['architecture']}_metrics.json").read_text())
    assert scores["trust"]["trustworthy"] is False
    assert "WARNING: this model's scores do not mean much" in (tmp_path / "notebooks" / "05_map_scene.ipynb").read_text()
