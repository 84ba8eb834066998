"""Fusion (Eq. 1-2): known answers, no fake detail, bad inputs, quality measures, the written stack."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scipy import ndimage

from lithocore import fusion, fusion_quality, outputs
from lithocore.area import Grid
from lithocore.errors import StudyAreaError
from lithocore.data import load_study_area
from lithocore.synthetic import SyntheticSpec, generate_study_area

GRID = Grid(CRS.from_epsg(32646), from_origin(0, 1920, 15, 15), 128, 128)
F = 8  # coarse cell = 8 fine pixels -> 16 x 16 coarse cells


def _guide(seed=0, n=3):
    rng = np.random.default_rng(seed)
    g = np.stack([ndimage.gaussian_filter(rng.standard_normal((128, 128)), 3) for _ in range(n)])
    return (g / g.std(axis=(1, 2), keepdims=True)).astype(np.float32)


def _coarse(fine):
    return fine.reshape(16, F, 16, F).mean((1, 3))


def test_linear_layer_recovered_with_its_detail():
    guide = _guide()
    truth = 5.0 + 2.0 * guide[0] - 1.0 * guide[1] + 0.5 * guide[2]
    fused, up, info = fusion.fuse(guide, _coarse(truth), GRID, F)
    err_f = np.sqrt(np.mean((fused - truth) ** 2))
    err_b = np.sqrt(np.mean((up - truth) ** 2))
    assert np.corrcoef(fused.ravel(), truth.ravel())[0, 1] > 0.99
    assert err_f < 0.25 * err_b
    assert info["detail_added"] and info["cv_r2"] > 0.9
    f = info["f"]  # the recovered weights keep the signs and order of the true ones
    assert f["band1"] > 0 > f["band2"] and abs(f["band1"]) > abs(f["band3"])


def test_unrelated_layer_gains_no_fake_detail():
    guide = _guide(seed=1)
    rng = np.random.default_rng(7)
    unrelated = ndimage.gaussian_filter(rng.standard_normal((16, 16)), 1.5)  # independent of the guide
    fused, up, info = fusion.fuse(guide, unrelated, GRID, F)
    added = np.nanstd(fused - up)
    assert added < 0.05 * np.nanstd(unrelated), (added, info)


def test_mismatched_grids():
    with pytest.raises(ValueError, match="mismatched grids"):
        fusion.fuse(_guide(), np.zeros((15, 16)), GRID, F)


def test_all_nodata_layer():
    with pytest.raises(ValueError, match="all nodata"):
        fusion.fuse(_guide(), np.full((16, 16), np.nan), GRID, F)


def test_constant_bands():
    with pytest.raises(ValueError, match="constant"):
        fusion.fuse(np.ones((2, 128, 128), np.float32), np.arange(256.0).reshape(16, 16), GRID, F)
    # one constant band among informative ones is ignored, not fatal
    guide = _guide()
    guide[2] = 3.0
    truth = 1.0 + guide[0]
    fused, _, info = fusion.fuse(guide, _coarse(truth), GRID, F)
    assert info["f"]["band3"] == 0.0 and np.corrcoef(fused.ravel(), truth.ravel())[0, 1] > 0.99


def test_clr_closes_compositions():
    parts = np.array([[70.0, 60.0], [15.0, 18.0], [5.0, 2.0]])
    t = fusion.clr(parts)
    assert np.allclose(t.sum(axis=0), 0, atol=1e-6)
    assert np.allclose(fusion.clr(parts * 3.7), t, atol=1e-6)  # scale invariant: closure does not matter
    with pytest.raises(ValueError, match="positive"):
        fusion.clr(np.array([[1.0], [0.0]]))


def test_reduction_to_pole_centres_anomaly():
    from lithocore.synthetic import _magnetic_field

    chi = np.zeros((96, 96), np.float32)
    chi[40:56, 40:56] = 0.01
    spec = SyntheticSpec(height=96, width=96, coarse_spacing=150.0, inclination=43.0, declination=0.0)
    tmi = _magnetic_field(chi, 15.0, spec, 50.0)
    rtp = fusion.reduce_to_pole(tmi, 15.0, 43.0, 0.0)
    centre = np.array([47.5, 47.5])
    peak = lambda a: np.array(np.unravel_index(np.argmax(a), a.shape))
    assert np.linalg.norm(peak(rtp) - centre) < np.linalg.norm(peak(tmi) - centre)
    assert np.linalg.norm(peak(rtp) - centre) <= 4
    assert rtp.min() > -0.2 * rtp.max()  # the dipole's negative lobe is gone at the pole


@pytest.fixture(scope="module")
def fused_small(small_area):
    return fusion.fuse_study_area(small_area, detail_gain=0.3, detail_smoothing=5.0, guide_transform="clr", progress=False)


def test_fuse_study_area(small_area, fused_small):
    r = fused_small
    assert r.names == [c.name for c in small_area.coarse]
    assert r.fused.shape == (8, *small_area.shape)
    assert np.isfinite(r.fused[:, small_area.mask]).all()
    assert r.units[1:] == ["clr"] * 7 and r.coefficients[0]["preprocessing"] == "rtp"
    clr_sum = r.upsampled[1:].sum(axis=0)  # CLR parts of each pixel sum to zero
    assert np.nanmax(np.abs(clr_sum)) < 1e-3
    table = r.coefficient_table()
    assert list(table.index) == r.names and "cv_r2" in table.columns


def test_area_without_coarse_layers_passes_through(small_area):
    bare = replace(small_area, coarse=[])
    r = fusion.fuse_study_area(bare, progress=False)
    assert r.names == [] and r.fused.shape == (0, *small_area.shape)
    assert r.coefficient_table().empty  # no KeyError on an empty table
    stack, names, _ = fusion.build_stack(r, bare)
    # Without a coarse layer the imagery itself is what there is to map from: the DEM and the guide bands.
    assert names == ["dem", *small_area.guide_names] and stack.shape == (10, *small_area.shape)
    imagery_only = replace(bare, extra=bare.extra[:0], extra_names=[])
    r = fusion.fuse_study_area(imagery_only, progress=False)
    assert fusion.build_stack(r, imagery_only)[1] == small_area.guide_names


def test_area_without_guide_bands_resamples_bilinearly(small_area):
    bare = replace(small_area, guide=small_area.guide[:0], guide_names=[])
    r = fusion.fuse_study_area(bare, progress=False)
    assert r.names == [c.name for c in small_area.coarse]
    assert np.array_equal(r.fused, r.upsampled, equal_nan=True)
    assert all(not c["detail_added"] for c in r.coefficients)
    assert fusion.build_stack(r, bare)[1] == r.names + ["dem"]
    assert fusion_quality.wald_protocol(bare)["layers"] == []


def test_fusion_settings_are_notebook_02s_defaults():
    """One settings object: notebook 02's parameter defaults are FusionSettings' defaults."""
    import ast

    import nbformat

    nb = nbformat.read(Path(__file__).parent.parent / "notebooks" / "02_fuse_sources.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params = {n.target.id: ast.literal_eval(n.value) for n in ast.parse(cell.source).body}
    defaults = fusion.FusionSettings().to_dict()
    for k in ("use_clr", "use_rtp", "method", "guide_transform", "detail_gain", "detail_smoothing"):
        assert params[k] == defaults[k], k
    assert params["channels"] == "" and defaults["channels"] == []


def test_clr_refuses_non_positive_parts(small_area):
    layers = [replace(c, values=c.values.copy(), meta={**c.meta, "samples_positive": False}) if c.kind == "points"
              else c for c in small_area.coarse]
    bad = next(c for c in layers if c.kind == "points")
    bad.values[:2, :3] = -0.5
    with pytest.raises(StudyAreaError, match=rf"layer '{bad.name}': 6 of \d+ gridded cells are zero or negative "
                                             r"because some samples are"):
        fusion.preprocess(replace(small_area, coarse=layers))


def test_positive_samples_of_a_small_scene_stay_positive_when_gridded(tmp_path):
    """A 95 x 228 px scene of 62.5 m with a 500 m survey: a spline through its positive samples overshoots below
    zero near the edge; gridded in logarithms (the default for a composition) every part stays positive, and
    with 'log: false' the message blames the gridding, not the samples."""
    import yaml

    from lithocore.synthetic import SyntheticSpec, generate_study_area

    spec = SyntheticSpec(height=95, width=228, pixel_size=62.5, coarse_spacing=500.0, seed=3, predict="")
    manifest = generate_study_area(spec, tmp_path / "area", progress=False)
    area = load_study_area(manifest)
    assert all(c.meta["log"] for c in area.coarse if c.kind == "points")
    fusion.preprocess(area)  # every part positive: the log-ratio is taken
    man = yaml.safe_load(manifest.read_text())
    man["points"][0]["log"] = False
    linear = tmp_path / "area" / "linear.yaml"
    linear.write_text(yaml.safe_dump(man))
    with pytest.raises(StudyAreaError, match=r"the samples are all positive, but gridding them without logarithms "
                                             r"\('log: false'\) overshoots below zero in \d+ of \d+ gridded cells"):
        fusion.preprocess(load_study_area(linear))


def test_consistency_and_wald(small_area, fused_small):
    cons = fusion_quality.consistency(fused_small, small_area)
    assert all(c["corr"] > 0.95 for c in cons), cons
    wald = fusion_quality.wald_protocol(small_area, 2, guide_transform="clr")
    assert len(wald["layers"]) == 8 and wald["positive_layers"] == 7  # the magnetic anomaly is not positive
    assert 0 < wald["ergas_fused"] < 100 and 0 <= wald["sam_fused_deg"] < 45


def test_stack_written_and_read_back(small_area, fused_small, tmp_path):
    stack, names, units = fusion.build_stack(fused_small, small_area)
    assert names == [*fused_small.names, "dem"] and len(names) == 9  # the paper's nine channels
    stats = fusion.normalisation_stats(stack, small_area.mask)
    path = outputs.write_stack_file(tmp_path / "stack.tif", stack, names, units, small_area.grid, stats=stats, chunk_rows=50)
    with rasterio.open(path) as src:
        assert src.descriptions == tuple(names)
        assert src.tags(9)["units"] == "m"
        assert np.allclose(src.read(), stack, equal_nan=True)
        import json

        assert json.loads(src.tags()["normalisation"])["mean"] == pytest.approx(stats["mean"])
    assert [p.name for p in tmp_path.iterdir()] == ["stack.tif"]  # no temporary file left behind
    with pytest.raises(KeyError, match="unknown channel"):
        fusion.build_stack(fused_small, small_area, ["SiO2", "gravity"])


@pytest.fixture(scope="module")
def truth_area(tmp_path_factory):
    spec = SyntheticSpec(height=320, width=320, coarse_spacing=600.0, seed=0)
    return load_study_area(generate_study_area(spec, tmp_path_factory.mktemp("fz") / "a", progress=False))


def test_fusion_beats_bilinear_against_truth(truth_area):
    calibrated = fusion.fuse_study_area(truth_area, detail_gain=0.3, detail_smoothing=5.0, guide_transform="clr",
                                        progress=False)
    rows = fusion_quality.score_against_truth(calibrated, fusion_quality.read_truth(truth_area, calibrated))
    ratio = np.array([r["rmse_fused"] / r["rmse_bilinear"] for r in rows])
    assert len(rows) == 8 and ratio.mean() < 0.98 and (ratio < 1).sum() >= 6, ratio
    # The paper's Eq. 2 taken literally injects too much detail on this area (see notebook 02).
    literal = fusion.fuse_study_area(truth_area, detail_gain=1.0, detail_smoothing=0.0, guide_transform="clr",
                                     progress=False)
    rows = fusion_quality.score_against_truth(literal, fusion_quality.read_truth(truth_area, literal))
    assert np.mean([r["rmse_fused"] / r["rmse_bilinear"] for r in rows]) > 1.0


def test_bad_coarse_layer_named_in_error(small_area):
    bad = replace(small_area, coarse=[replace(small_area.coarse[0], values=np.full_like(small_area.coarse[0].values, np.nan))])
    with pytest.raises(StudyAreaError, match="aeromag_2km.tif: layer 'magnetic'.*all nodata"):
        fusion.fuse_study_area(bad, use_rtp=False, progress=False)


def test_stack_is_a_cloud_optimised_geotiff_with_its_tags(tmp_path):
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    from lithocore.area import Grid
    from lithocore.outputs import write_stack_file as write_stack

    grid = Grid(CRS.from_epsg(32646), from_origin(400000, 3100000, 15, 15), 1100, 1050)
    stack = np.random.default_rng(0).random((2, 1050, 1100)).astype(np.float32)
    path = write_stack(tmp_path / "s.tif", stack, ["SiO2", "dem"], ["wt%", "m"], grid, stats={"mean": [0, 0]})
    with rasterio.open(path) as src:
        assert src.overviews(1) and src.profile["tiled"] and src.descriptions == ("SiO2", "dem")
        assert src.tags(2)["units"] == "m" and "normalisation" in src.tags()
        assert np.array_equal(src.read(), stack)


def test_wald_on_a_survey_of_two_by_two_cells_says_why_it_skips(tmp_path):
    """A 256 x 256 px scene whose surveys are 2 x 2 cells: nothing can be degraded and fitted again; the
    protocol says so per layer instead of returning an empty table."""
    from lithocore.synthetic import SyntheticSpec, generate_study_area

    spec = SyntheticSpec(height=256, width=256, coarse_spacing=2000.0, seed=2, predict="")
    area = load_study_area(generate_study_area(spec, tmp_path / "area", progress=False))
    assert {c.grid.shape for c in area.coarse} == {(2, 2)}
    wald = fusion_quality.wald_protocol(area, 2)
    assert wald["layers"] == [] and len(wald["skipped"]) == len(area.coarse)
    assert "magnetic: 1 cell once degraded 2 times" in wald["note"]
