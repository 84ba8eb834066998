"""Every notebook runs under papermill, on a small synthetic area and on Central Lapland."""

import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import rasterio
import yaml

from lithocore.data import load_study_area

from lithocore.workbook import notebooks, run_workbook

from .conftest import LAPLAND_MANIFEST

PARAMS = yaml.safe_load((Path(__file__).parent / "notebook_params.yaml").read_text())
NOTEBOOKS = [nb.name for nb in notebooks()]


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_synthetic(notebook, tmp_path, small_manifest):
    params = dict(PARAMS["synthetic"], study_area=str(small_manifest))
    run_workbook(tmp_path, parameters=params, only=[notebook[:2]], progress=False)
    assert (tmp_path / "notebooks" / notebook).is_file()
    _check_outputs(tmp_path, notebook, small_manifest)


@pytest.mark.notebook
@pytest.mark.real_data
def test_every_notebook_on_central_lapland(tmp_path, lapland_manifest):
    """The seven notebooks in order in one run folder, as a user runs the workbook on a real area: each reads what
    the one before it wrote. (Each notebook run alone, making what it needs itself, is tested on the synthetic area
    above; doing that here too remade the stack five times and took 9 minutes of the suite's two cores.)"""
    params = {k: v.format(lapland=LAPLAND_MANIFEST) if isinstance(v, str) else v
              for k, v in PARAMS["central-lapland"].items()}
    timings = run_workbook(tmp_path, parameters=params, progress=False)
    assert list(timings) == NOTEBOOKS and all(t > 0 for t in timings.values())  # every notebook ran, none skipped
    for notebook in NOTEBOOKS:
        _check_outputs(tmp_path, notebook, LAPLAND_MANIFEST, params)
    # the parameters given to the workbook reach notebooks 04-07 alike (the network, here not the profile's,
    # is checked in notebook 06's outputs; the forests' trees, the folds' epochs): notebook 07's block estimate is
    # read from notebook 06's fold predictions, not fitted again with other forests
    assert json.loads((tmp_path / "07_map_to_trust" / "trust.json").read_text())["block_from_notebook_06"] is True


#: Lines of an executed notebook's stderr that mean noise or trouble: a library warning ("FutureWarning: ..."), a
#: logged error, TensorFlow's C++ log (I0000 / W0000 / E0000 lines). The workbook's own messages about the
#: user's data (lithocore's DataWarning and WorkbookWarning, one plain line each) are what a reader must see.
NOISE = re.compile(r"(\w+Warning:|ERROR|^[IWE]\d{4} |absl::InitializeLog)", re.MULTILINE)
OWN = re.compile(r"^(DataWarning|WorkbookWarning): .*$", re.MULTILINE)


def _check_quiet_and_readable(run_dir: Path, notebook: str):
    """No stderr output with an error, a warning or a C++ log line (progress bars are fine); every figure the
    notebook saved passed lithocore.plotting.figure_check (a legend or colour bar wherever it shows data)."""
    from PIL import Image

    nb = nbformat.read(run_dir / "notebooks" / notebook, as_version=4)
    noisy = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            text = out.get("text", "") if out.get("name") == "stderr" else ""
            if out.get("output_type") == "error":
                text = f"{out['ename']}: {out['evalue']}"
            if out.get("output_type") == "execute_result" and set(out.get("data", {})) == {"text/plain"}:
                text = f"ERROR: a bare value as the cell's result: {out['data']['text/plain'][:80]}"
            if NOISE.search(OWN.sub("", text)):
                noisy.append((i, text.strip()[:300]))
    assert not noisy, f"{notebook}: noisy stderr in cells {noisy}"
    stage = run_dir / Path(notebook).stem
    figures = [p for p in stage.glob("*.png") if not p.name.endswith("_legend.png")]
    for png in figures:
        check = json.loads(Image.open(png).text.get("lithocore:figure-check", "null") or "null")
        assert check is not None, f"{png.name} was not saved through lithocore.plotting.save_figure"
        assert check["ok"], f"{png.name}: panels without a legend or colour bar: {check['panels']}"
    for tif in stage.glob("*_classes.tif"):  # every class map has its QGIS style and legend beside it
        assert tif.with_suffix(".qml").is_file() and tif.with_name(tif.stem + "_legend.png").is_file(), tif


def _check_outputs(run_dir: Path, notebook: str, manifest, params: dict | None = None):
    stage = run_dir / Path(notebook).stem
    assert stage.is_dir(), f"{notebook} wrote nothing into {stage}"
    _check_quiet_and_readable(run_dir, notebook)
    shown = params.get("max_pixels_shown") if params else None
    if notebook.startswith("01"):
        info = json.loads((stage / "study_area.json").read_text())
        assert info["valid_fraction"] > 0.5 and len(info["classes"]) >= 2
        assert (stage / "layers.png").stat().st_size > 10_000
        assert info["shape"][0] * info["shape"][1] <= (shown or np.inf)
        assert (info["preview_factor"] > 1) == bool(shown)  # Lapland's parameters ask for a preview
    if notebook.startswith("02"):
        quality = json.loads((stage / "fusion_quality.json").read_text())
        assert all(row["corr"] > 0.9 for row in quality["consistency"])
        with rasterio.open(stage / "fused_stack.tif") as src:  # at full resolution, even when a preview is shown
            assert src.width * src.height > (shown or 0)
            assert src.overviews(1) or max(src.width, src.height) <= 512  # a COG: overviews above 512 px
    if notebook.startswith("03"):
        info = json.loads((stage / "tiles.json").read_text())
        assert info["overlap"]["spatial"]["max_overlap"] == 0.0 and info["overlap"]["spatial"]["leakage"] == 0.0
        assert info["overlap"]["paper"]["leakage"] > 0.0 and info["fold_leakage"] == [0.0] * len(info["fold_leakage"])
        assert (stage / "tiles_spatial.npz").is_file() and (stage / "tiles_paper.npz").is_file()
    if notebook.startswith("04"):
        meta = json.loads((stage / "model.json").read_text())
        assert 0.0 <= meta["validation"]["overall_accuracy"] <= 1.0 and len(meta["channels"]) >= 2
        assert (stage / "model.keras").is_file() and (stage / "history.csv").is_file()
    if notebook.startswith("05"):
        # files named by the model: the run's model.json says which (the quick profile's U-Net: unet_*)
        name = json.loads((stage.parent / "04_train_model" / "model.json").read_text())["config"]["architecture"]
        assert not list(stage.glob("fcn_*")) or name.startswith("fcn8s")
        scores = json.loads((stage / f"{name}_metrics.json").read_text())
        assert scores["model"] == name
        assert "whole_map" in scores and ("held_out" in scores or "outside_training_tiles" in scores)
        with rasterio.open(stage / f"{name}_classes.tif") as src:
            assert src.nodata == 255 and src.colormap(1)
            mapped = src.read(1)
        # The class map holds the class table's unit ids, as the label raster does: read back and compared with
        # the labels (as ids) it gives the whole-map accuracy the notebook reports from class indices.
        area = load_study_area(manifest)
        ids = area.classes.to_ids(area.labels)
        scored = area.mask & (area.labels != 255)
        assert set(np.unique(mapped[area.mask])) <= set(area.classes.ids)
        assert np.mean(mapped[scored] == ids[scored]) == pytest.approx(scores["whole_map"]["overall_accuracy"])
    if notebook.startswith("06"):
        comparison = json.loads((stage / "comparison.json").read_text())
        cv = comparison["cross_validation"]
        dk = cv["deep_model"]  # scores named by the model's registry key, e.g. "unet"
        assert dk == json.loads((stage.parent / "04_train_model" / "model.json").read_text())["config"]["architecture"]
        assert len(cv["folds"]) == cv["settings"]["k"] >= 2
        parts = {"all": {f"{dk}_pretrained", "forest_context_embedding", "hybrid"}, "": set()}[
            (params or PARAMS["synthetic"]).get("deep_parts", "")]
        for fold in cv["folds"]:
            assert set(fold["scores"]) == {dk, "forest", "forest_context"} | parts
            assert len({s["pixels"] for s in fold["scores"].values()}) == 1  # like for like: the same pixels
            assert fold["scores"]["forest"]["pixels"] > 0
        assert set(cv["part_verdicts"]) == parts  # each deep part judged against the neighbourhood forest
        for p in parts:
            d = cv["summary"][p]["mean_iou"]["mean"] - cv["summary"]["forest_context"]["mean_iou"]["mean"]
            assert f"{abs(d):.3f}" in cv["part_verdicts"][p]
        for model in (dk, "forest"):
            for metric in ("mean_iou", "overall_accuracy", "kappa"):
                assert set(cv["summary"][model][metric]) >= {"mean", "sd"}
        diffs = cv["paired_differences"]["mean_iou"]
        assert isinstance(cv["verdict"], str) and f"{abs(np.mean(diffs)):.3f}" in cv["verdict"]
        rows = {(r["model"], r["scored_on"]) for r in comparison["paper_protocol"]["rows"]}
        deep = cv["model_names"][comparison["paper_protocol"]["deep_model"]]  # notebook 04's model, e.g. "U-Net"
        assert (deep, "whole_map") in rows and ("random forest", "whole_map") in rows
        # the out-of-fold maps: every labelled valid pixel predicted once, stored as unit ids
        area = load_study_area(manifest)
        with rasterio.open(stage / f"{dk}_oof_classes.tif") as src:
            oof = src.read(1)
        scored = area.mask & (area.labels != 255)
        assert set(np.unique(oof[scored])) <= set(area.classes.ids)
        assert sum(f["scores"][dk]["pixels"] for f in cv["folds"]) == int(scored.sum())
    if notebook.startswith("07"):  # the forests notebook 07 chooses among are notebook 06's: the trees given to both
        trust = json.loads((stage / "trust.json").read_text())
        forests = [c["settings"] for m, c in trust["candidates"].items() if m.startswith("forest")]
        assert len(forests) == 2 and all(f["n_trees"] == (params or PARAMS["synthetic"])["n_trees"] for f in forests)


@pytest.mark.notebook
def test_map_scene_alone_from_a_saved_model(tmp_path, small_manifest):
    """Notebook 05 in a fresh run folder maps from a saved .keras model: it trains nothing itself."""
    params = dict(PARAMS["synthetic"], study_area=str(small_manifest))
    run_workbook(tmp_path / "trained", parameters=params, only=["04"], progress=False)
    saved = tmp_path / "trained" / "04_train_model" / "model.keras"
    fresh = tmp_path / "fresh"
    run_workbook(fresh, parameters=params | {"model_path": str(saved)}, only=["05"], progress=False)
    assert not (fresh / "04_train_model").exists(), "notebook 05 trained a model instead of using the saved one"
    said = (fresh / "notebooks" / "05_map_scene.ipynb").read_text()
    assert f"mapping with the model given as model_path, {saved}: trained on this run's stack" in said
    name = json.loads(saved.with_name("model.json").read_text())["config"]["architecture"]
    scores = json.loads((fresh / "05_map_scene" / f"{name}_metrics.json").read_text())
    assert scores["whole_map"]["pixels"] > 0
