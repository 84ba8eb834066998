"""The map to trust: the ground to predict, matched folds, calibration, the area of applicability."""

import json

import numpy as np
import pytest
import yaml

from lithocore import applicability, calibration, knndm
from lithocore.area import NO_LABEL
from lithocore.errors import StudyAreaError
from lithocore.data import load_study_area
from lithocore.synthetic import ground_polygon, write_ground
from lithocore.tiles import RowMap


# ------------------------------------------------------------------------------------------ matched folds
def _strip_labels(width_labelled: int = 60, width: int = 160, height: int = 80):
    lab = np.full((height, width), NO_LABEL, np.uint8)
    lab[:, :width_labelled] = (np.arange(width_labelled) // 12 % 4)[None, :]
    return lab


def test_knndm_moves_cv_distances_towards_a_distant_ground():
    """Labels on the left, the ground 8-20 px beyond them: kNNDM's test-to-training distances are much closer
    to the ground's (lower W) than random folds', and longer than a pixel."""
    lab = _strip_labels()
    ground = np.zeros(lab.shape, bool)
    ground[:, 68:80] = True
    f = knndm.knndm_folds(lab, np.ones(lab.shape, bool), ground, 10.0, k=3, n_points=600, seed=1)
    assert f.method.startswith("kNNDM")
    assert f.W < 0.5 * f.info["W_random"]
    assert np.median(f.Gjstar) > 5 * 10.0  # test pixels lie well away from their training side
    assert set(np.unique(f.fold[lab != NO_LABEL]).tolist()) == {0, 1, 2}
    assert (f.fold[lab == NO_LABEL] == -1).all()


def test_knndm_gives_random_folds_when_the_ground_lies_among_the_labels():
    """Sparse labels interleaved with the ground to predict (every other pixel): the ground is a pixel away,
    as random folds' test pixels are, so random folds are the match."""
    lab = _strip_labels(160)
    ground = np.zeros(lab.shape, bool)
    ground[:, 1::2] = True
    lab[ground] = NO_LABEL
    f = knndm.knndm_folds(lab, np.ones(lab.shape, bool), ground, 10.0, k=3, n_points=600, seed=1)
    assert f.method == "random"
    assert f.W <= f.info["W_random"] + 1e-9


def test_knndm_refuses_an_empty_ground():
    lab = _strip_labels()
    with pytest.raises(ValueError, match="ground to predict is empty"):
        knndm.knndm_folds(lab, np.ones(lab.shape, bool), np.zeros(lab.shape, bool), 10.0, k=3)


def test_autocorrelation_range_grows_with_the_units():
    small = np.repeat((np.arange(240) // 10 % 3).astype(np.uint8)[None], 120, 0)
    large = np.repeat((np.arange(240) // 40 % 3).astype(np.uint8)[None], 120, 0)
    ok = np.ones(small.shape, bool)
    r_small, r_large = (knndm.autocorrelation_range(a, ok)["range_px"] for a in (small, large))
    assert r_large >= 2 * r_small


# ------------------------------------------------------------------------------------------ calibration
def test_temperature_scaling_lowers_the_error_of_an_over_confident_model():
    rng = np.random.default_rng(0)
    n, K = 4000, 4
    truth = rng.integers(0, K, n)
    right = rng.random(n) < 0.6  # right 60 % of the time ...
    pred = np.where(right, truth, (truth + rng.integers(1, K, n)) % K)
    proba = np.full((n, K), 0.02 / (K - 1))
    proba[np.arange(n), pred] = 0.98  # ... and 98 % sure every time
    before = calibration.expected_calibration_error(proba, truth)
    T = calibration.fit_temperature(proba, truth)
    after = calibration.expected_calibration_error(calibration.apply_temperature(proba, T), truth)
    assert before > 0.3 and T > 1
    assert after < 0.05 < before


def test_crossfit_temperature_reports_the_honest_error():
    rng = np.random.default_rng(1)
    n, K = 3000, 3
    truth = rng.integers(0, K, n)
    proba = rng.dirichlet(np.ones(K) * 0.3, n)
    out = calibration.crossfit_temperature(proba, truth, np.arange(n) % 3)
    assert len(out["per_fold_temperature"]) == 3
    assert out["ece_after"] < out["ece_before"]  # random probabilities are over-confident: scaling helps


# ------------------------------------------------------------------------------------------ applicability
def test_dissimilarity_and_threshold_by_hand():
    """Two predictors, the second twice as important; training points at (0,0), (1,0) fold 0 and (0,1), (1,1)
    fold 1. Standardised, each coordinate is +-1; weighted, x spans 1 (weight 0.5 after dividing by the
    largest) ... computed by hand below."""
    X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    a = applicability.fit_aoa(X, np.array([0, 0, 1, 1]), importance=np.array([1.0, 2.0]))
    # standardised: +-1 on both axes; weights 0.5 (x) and 1 (y): points at (+-0.5, +-1)
    d_x, d_y, d_xy = 1.0, 2.0, np.hypot(1.0, 2.0)
    dbar = (2 * d_x + 2 * d_y + 2 * d_xy) / 6
    assert a.dbar == pytest.approx(dbar, rel=1e-5)
    # each point's nearest point of the other fold is straight across in y: distance 2
    assert a.train_di == pytest.approx(np.full(4, d_y / dbar), rel=1e-5)
    assert a.threshold == pytest.approx(d_y / dbar, rel=1e-5)  # no spread: capped at the largest
    new = applicability.dissimilarity(a, np.array([[0.5, 0.0], [3.0, 0.0]]))
    # (0.5, 0) is (0, -1) scaled: 0.5 from both lower points; (3, 0) is (2.5, -1): 2 beyond (1, 0)
    assert new == pytest.approx([0.5 / dbar, 2.0 / dbar], rel=1e-5)


def test_nearest_distance_is_exact_where_a_float32_ranking_is_not():
    """The DI's search ranks in float32 and settles near ties in float64: the distance to the true nearest training
    pixel (scipy's float64 distances), over several blocks, also for points far from the origin and close together,
    where the float32 ranking alone picks the wrong neighbour for most pixels."""
    from scipy.spatial.distance import cdist

    def exact(T, X):
        return np.sqrt(cdist(X.astype(np.float64), T.astype(np.float64), "sqeuclidean").min(1))

    rng = np.random.default_rng(3)
    T = rng.standard_normal((5000, 45)).astype(np.float32)  # 419 query rows a block: five blocks
    X = np.concatenate([rng.standard_normal((1900, 45)), T[:100] + 1e-4]).astype(np.float32)  # near duplicates too
    np.testing.assert_allclose(applicability.nearest_distance(T, X), exact(T, X), rtol=1e-12, atol=1e-15)
    far = rng.standard_normal((1, 10)) * 1000
    T = (far + rng.standard_normal((500, 10)) * 0.01).astype(np.float32)
    X = (far + rng.standard_normal((3000, 10)) * 0.01).astype(np.float32)
    ranked = T[(X @ (-2 * T.T) + (T.astype(np.float64) ** 2).sum(1).astype(np.float32)).argmin(1)]
    assert (np.abs(np.sqrt(((X - ranked.astype(np.float64)) ** 2).sum(1)) - exact(T, X)) > 1e-9).mean() > 0.5
    np.testing.assert_allclose(applicability.nearest_distance(T, X), exact(T, X), rtol=1e-12)
    assert applicability.nearest_distance(T, X[:0]).shape == (0,)


def test_threshold_is_q75_plus_1_5_iqr():
    di = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 10.0])
    q25, q75 = np.quantile(di, [0.25, 0.75])
    assert applicability.threshold_of(di) == pytest.approx(q75 + 1.5 * (q75 - q25))


def test_accuracy_by_di_falls_with_dissimilarity():
    di = np.linspace(0, 2, 400)
    right = di < 1
    curve = applicability.accuracy_by_di(di, right, bins=4)
    assert curve[0]["accuracy"] == 1.0 and curve[-1]["accuracy"] == 0.0


# ------------------------------------------------------------------------------------------ predict: faults
def _manifest_with(small_manifest, tmp_path, predict_path) -> str:
    from .test_data import _copy_manifest

    man = _copy_manifest(small_manifest, tmp_path)
    man.pop("truth", None)
    man["predict"] = str(predict_path)
    p = tmp_path / "manifest.yaml"
    p.write_text(yaml.safe_dump(man))
    return p


def test_predict_withholds_labels_and_keeps_them_to_check(small_area):
    assert small_area.predict_declared
    ground = small_area.predict
    assert ground.any() and (small_area.labels[ground] == NO_LABEL).all()
    assert (small_area.held_out[ground] != NO_LABEL).all()  # the synthetic map is labelled everywhere
    assert (small_area.held_out[~ground] == NO_LABEL).all()
    assert ground[:, -10:].all() and not ground[:, :100].any()  # the east quarter


def test_predict_faults_are_named(small_manifest, small_area, tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    with pytest.raises(StudyAreaError, match="file not found"):
        load_study_area(_manifest_with(small_manifest, tmp_path, tmp_path / "nowhere.gpkg"))
    far = tmp_path / "far.gpkg"
    write_ground(far, box(0, 0, 1000, 1000), small_area.grid.crs)
    with pytest.raises(StudyAreaError, match="does not overlap the study area"):
        load_study_area(_manifest_with(small_manifest, tmp_path, far))
    empty = tmp_path / "empty.gpkg"
    gpd.GeoDataFrame({"name": []}, geometry=[], crs=small_area.grid.crs).to_file(empty, driver="GPKG")
    with pytest.raises(StudyAreaError, match="no polygon"):
        load_study_area(_manifest_with(small_manifest, tmp_path, empty))
    nocrs = tmp_path / "nocrs.shp"  # a shapefile without its .prj
    with pytest.warns(UserWarning, match="crs"):
        gpd.GeoDataFrame({"name": ["a"]}, geometry=[ground_polygon(small_area.grid, (0, 0, 0.5, 0.5))]).to_file(nocrs)
    with pytest.raises(StudyAreaError, match="no CRS"):
        load_study_area(_manifest_with(small_manifest, tmp_path, nocrs))


def test_predict_in_another_crs_is_reprojected(small_manifest, small_area, tmp_path):
    poly = ground_polygon(small_area.grid, (0.0, 0.0, 0.5, 0.5))
    p = write_ground(tmp_path / "wgs84.gpkg", poly, small_area.grid.crs)
    import geopandas as gpd

    gpd.read_file(p).to_crs("EPSG:4326").to_file(tmp_path / "ll.gpkg", driver="GPKG")
    area = load_study_area(_manifest_with(small_manifest, tmp_path, tmp_path / "ll.gpkg"))
    assert 0.2 < area.predict.mean() < 0.3  # the north-west quarter, give or take the reprojected edges
    assert area.predict[:10, :10].all() and not area.predict[-10:, -10:].any()


# ------------------------------------------------------------------------------------------ the whole step
def test_map_to_trust_on_the_small_area(small_area, tmp_path):
    """The recommended map, its files and trust.json's keys; the AOA separates good from bad pixels; the map
    stores unit ids."""
    import rasterio

    from lithocore import fusion
    from lithocore.recommend import map_to_trust
    from lithocore.runfolder import write_json

    stack = fusion.build_stack(fusion.fuse_study_area(small_area, progress=False), small_area)[0]
    r = map_to_trust(small_area, stack, tmp_path, k=3, cap=2000, seed=0, estimates=("matched", "random"),
                     progress=False, aoa_pixels=800, max_test=5000)
    t = r["trust"]
    write_json(tmp_path / "trust.json", t)
    back = json.loads((tmp_path / "trust.json").read_text())
    for key in ("recommended_model", "aoa_share", "oof_accuracy_inside_aoa", "oof_accuracy_outside_aoa"):
        assert key in back
    for key in ("overall_accuracy", "mean_iou"):
        assert 0 <= back["expected"][key] <= 1
    assert 0 <= back["calibration"]["ece_before"] <= 1 and 0 <= back["calibration"]["ece_after"] <= 1
    assert set(back["estimates"]) == {"matched", "random"}
    assert back["estimates"]["random"]["overall_accuracy"] > back["estimates"]["matched"]["overall_accuracy"]
    assert back["held_out_check"]["pixels"] == int((small_area.held_out != NO_LABEL).sum())
    name = t["files"]["classes"]
    assert "recommended" in name and "classes" in name
    with rasterio.open(name) as src:
        ids = set(np.unique(src.read(1)).tolist()) - {src.nodata}
    assert ids <= set(small_area.classes.ids)
    with rasterio.open(t["files"]["aoa"]) as src:
        assert set(np.unique(src.read(1)).tolist()) <= {0, 1, 255}


def test_map_to_trust_read_strip_by_strip_is_the_map_held_whole(small_area, tmp_path, monkeypatch):
    """Notebook 07 on a stack read window by window from its file, the neighbourhood forest's predictors made
    strip by strip (nothing held whole: the in-memory budget 0), gives the same trust record and the same files,
    pixel for pixel, as on the stack and predictors held in memory."""
    import rasterio

    from lithocore import fusion
    from lithocore.outputs import write_stack_file
    import matplotlib.pyplot as plt

    from lithocore import plotting
    from lithocore.plotting import plot_ground, plot_labels, plot_matched_folds, plot_trust_map, plot_value
    from lithocore.recommend import map_to_trust
    from lithocore.stackfile import Neighbourhood, StackFile, hold_if_fits

    stack = fusion.build_stack(fusion.fuse_study_area(small_area, progress=False), small_area)[0]
    path = write_stack_file(tmp_path / "stack.tif", stack, [str(i) for i in range(len(stack))],
                            [""] * len(stack), small_area.grid)
    kw = dict(k=2, cap=800, seed=0, estimates=("matched", "random"), progress=False, aoa_pixels=400, max_test=3000)
    held = map_to_trust(small_area, stack, tmp_path / "held", **kw)
    monkeypatch.setenv("LITHOCORE_STACK_IN_MEMORY_MB", "0")
    assert isinstance(hold_if_fits(Neighbourhood(stack, (5, 15))), Neighbourhood)  # the predictors: strips
    monkeypatch.setattr(plotting, "FIGURE_PIXELS", small_area.mask.size // 9)  # figures: every 3rd pixel
    strips = map_to_trust(small_area, StackFile(path), tmp_path / "strips", **kw)
    a, b = held["trust"], strips["trust"]
    assert a["recommended_model"] == b["recommended_model"]
    for key in ("expected", "estimates", "held_out_check", "held_out_check_all", "aoa_share", "aoa_threshold",
                "oof_accuracy_inside_aoa", "calibration"):
        assert a[key] == b[key], key
    for name in ("classes", "probabilities", "dissimilarity", "aoa", "agreement", "entropy"):
        with rasterio.open(a["files"][name]) as x, rasterio.open(b["files"][name]) as y:
            assert np.array_equal(x.read(), y.read(), equal_nan=True), name
    with rasterio.open(a["files"]["aoa"]) as src:  # the strips written where they belong
        assert np.array_equal(src.read(1), np.where(small_area.mask, held["aoa"], 255))
    with rasterio.open(a["files"]["classes"]) as src:
        assert np.array_equal(src.read(1), small_area.classes.to_ids(held["classes"]))
    assert held["figure_step"] == 1 and strips["figure_step"] == 3
    for name in ("classes", "di", "aoa", "agreement", "entropy"):
        assert np.array_equal(held[name][::3, ::3], strips[name], equal_nan=True), name
    shown = tuple(-(-n // 3) for n in small_area.shape)  # every figure draws every 3rd pixel, of any map given
    axes = [plot_trust_map(small_area, strips["classes"], strips["aoa"]), plot_value(small_area, strips["di"]),
            plot_value(small_area, held["di"]), plot_matched_folds(small_area, strips["folds"].fold, 2),
            plot_ground(small_area), plot_labels(small_area, held["classes"]),
            *plotting.compare_maps(small_area, {"DI": strips["di"], "map": held["classes"]}, overlay="DI",
                                   interactive=False).axes[:1]]
    assert {im.get_array().shape for ax in axes for im in ax.get_images()} == {shown}
    zoom = plotting.plot_zoom(small_area, {"map": held["classes"]}, size=60)  # its centre found on the shown labels
    assert {im.get_array().shape for ax in zoom for im in ax.get_images()} == {(60, 60)}
    plt.close("all")


def _same_map_to_trust(one: dict, two: dict) -> None:
    """Two runs of ``map_to_trust`` gave the same trust record, the same six files (pixels, tags, band
    descriptions) and the same figure maps."""
    import rasterio

    a, b = one["trust"], two["trust"]
    for key in ("recommended_model", "expected", "estimates", "held_out_check", "held_out_check_all", "aoa_share",
                "ground"):
        assert a[key] == b[key], key
    for name in ("classes", "probabilities", "dissimilarity", "aoa", "agreement", "entropy"):
        with rasterio.open(a["files"][name]) as x, rasterio.open(b["files"][name]) as y:
            assert np.array_equal(x.read(), y.read(), equal_nan=True), name
            assert x.tags() == y.tags() and x.descriptions == y.descriptions, name
    for name in ("classes", "di", "aoa", "agreement", "entropy"):
        assert np.array_equal(one[name], two[name], equal_nan=True), name


def test_an_interrupted_map_to_trust_goes_on_where_it_stopped(small_area, tmp_path, monkeypatch):
    """Notebook 07's final pass stopped after its first strip (a checkpoint after every strip) and called again with
    the same inputs goes on from the second strip, not the first, to the same trust record and the same six files,
    pixel for pixel, as a pass run in one go; nothing of it is left behind. A checkpoint made from other inputs
    is not used, nor one whose working files are gone."""
    from dataclasses import replace

    from lithocore import fusion, recommend, stackfile
    from lithocore.candidates import CANDIDATES
    from lithocore.recommend import map_to_trust

    class Stop(Exception):
        pass

    stack = fusion.build_stack(fusion.fuse_study_area(small_area, progress=False), small_area)[0]
    kw = dict(k=2, cap=800, seed=0, estimates=("matched",), progress=False, aoa_pixels=400, max_test=3000,
              cache_key="stack", candidates={m: replace(c, n_trees=30) for m, c in CANDIDATES.items()})
    strips = -(-small_area.shape[0] // stackfile.STRIP_ROWS)
    whole = map_to_trust(small_area, stack, tmp_path / "whole", **kw)
    made, real = [], recommend._strip_layers

    def stopping_after(n):
        def layers(*args, **kwargs):
            made.append(1)
            if len(made) > n:
                raise Stop
            return real(*args, **kwargs)
        return layers

    monkeypatch.setattr(recommend, "PASS_CHECKPOINT_SECONDS", 0.0)
    monkeypatch.setattr(recommend, "_strip_layers", stopping_after(1))
    with pytest.raises(Stop):
        map_to_trust(small_area, stack, tmp_path / "cut", **kw)
    journal = tmp_path / "cut" / "partial" / "final_pass.npz"
    assert journal.is_file() and not (tmp_path / "cut" / "aoa.tif").exists()
    kept = journal.read_bytes()
    made.clear()
    monkeypatch.setattr(recommend, "_strip_layers", stopping_after(10**6))
    again = map_to_trust(small_area, stack, tmp_path / "cut", **kw)
    assert len(made) == strips - 1 > 0
    _same_map_to_trust(whole, again)
    assert not (tmp_path / "cut" / "partial").exists()
    journal.parent.mkdir()
    journal.write_bytes(kept)  # a checkpoint without its working files: the pass starts at the first row
    made.clear()
    map_to_trust(small_area, stack, tmp_path / "cut", **kw)
    assert len(made) == strips
    journal.parent.mkdir()
    journal.write_bytes(kept)  # a checkpoint read under its own key, and not under another
    with np.load(journal) as z:
        own = str(z["key"])
    assert recommend._pass_state(journal, own, {})["next_row"] > 0
    assert recommend._pass_state(journal, "made from something else", {}) is None


def test_map_to_trust_on_a_two_worker_cluster_is_that_of_one_process(small_area, tmp_path):
    """The final pass's strips made as tasks of a two-worker Dask cluster (the models and scene-sized arrays, another
    map counted in the agreement among them, sent as files): the same trust record and the same six files, pixel
    for pixel, as in one process; the files sent are gone afterwards."""
    from dataclasses import replace

    from lithocore import fusion
    from lithocore.candidates import CANDIDATES
    from lithocore.recommend import map_to_trust

    stack = fusion.build_stack(fusion.fuse_study_area(small_area, progress=False), small_area)[0]
    other = np.where(small_area.mask, (np.arange(small_area.mask.size).reshape(small_area.shape) // 7919) % 3,
                     NO_LABEL).astype(np.uint8)
    kw = dict(k=2, cap=800, seed=0, estimates=("matched",), progress=False, aoa_pixels=400, max_test=3000,
              extra_maps={"other": other}, candidates={m: replace(c, n_trees=30) for m, c in CANDIDATES.items()})
    one = map_to_trust(small_area, stack, tmp_path / "one", **kw)
    two = map_to_trust(small_area, stack, tmp_path / "two", cluster="local:2", **kw)
    _same_map_to_trust(one, two)
    assert not list((tmp_path / "two").glob(".spill-*"))


def test_a_fully_labelled_area_is_told_there_is_no_ground_to_predict(small_area, tmp_path):
    """Every valid pixel labelled: the matched folds fall back to the labelled map itself (random folds, the
    ground's distance to a label being 0), and the warning says so."""
    from dataclasses import replace

    from lithocore import fusion
    from lithocore.candidates import CANDIDATES
    from lithocore.recommend import map_to_trust

    full = np.where(small_area.labels == NO_LABEL, small_area.held_out, small_area.labels).astype(np.uint8)
    area = replace(small_area, labels=full, declared_ground=None,
                   held_out=np.full(full.shape, NO_LABEL, np.uint8))
    stack = fusion.build_stack(fusion.fuse_study_area(area, progress=False), area)[0]
    r = map_to_trust(area, stack, tmp_path, k=2, cap=500, seed=0, estimates=("matched",), progress=False,
                     aoa_pixels=300, max_test=2000, candidates={"forest": CANDIDATES["forest"]})
    t = r["trust"]
    assert t["matched_method"] == "random"
    assert any("no unlabelled ground to predict" in w for w in t["warnings"])
    assert t["held_out_check"] is None


def test_cross_validation_resumes_from_kept_folds(tmp_path, monkeypatch):
    """Fold probabilities kept under a key are reused (no fit), and refitted when the key changes or the candidate's
    predictors are made another way."""
    from dataclasses import dataclass

    from lithocore.candidates import ForestCandidate
    from lithocore.recommend import cross_validate_proba, fold_sets

    fits = []

    @dataclass(frozen=True)
    class Counting(ForestCandidate):
        def fit(self, F, labels, pixels, seed=0, train=None):
            fits.append(1)
            return super().fit(F, labels, pixels, seed, train)

    rng = np.random.default_rng(0)
    lab = (np.arange(40)[None, :] // 10 % 2).repeat(40, 0).astype(np.uint8)
    F = np.stack([lab + 0.3 * rng.standard_normal(lab.shape), rng.standard_normal(lab.shape)]).astype(np.float32)
    fold = (np.arange(40)[:, None] // 20).repeat(40, 1).astype(np.int8)
    ok = np.ones(lab.shape, bool)
    cands = {"c": Counting("c", "counting forest", n_trees=5)}
    run = lambda key: cross_validate_proba({"c": F}, lab, fold_sets("matched", fold, 2, ok, lab), 2, 2,  # noqa: E731
                                           candidates=cands, progress=False, cache_dir=tmp_path, cache_key=key)
    first = run("a")
    assert len(fits) == 2
    again = run("a")
    assert len(fits) == 2 and np.array_equal(first["proba"]["c"], again["proba"]["c"])
    run("b")
    assert len(fits) == 4
    monkeypatch.setattr(Counting, "features_made", "another way")  # e.g. the neighbourhood sums redefined
    run("b")
    assert len(fits) == 6


def test_cross_validation_reads_a_folds_pixels_once_for_every_forest(tmp_path, monkeypatch, file_rows):
    """Both forests of a fold fitted and scored from one pass over the stack's file (each strip holding any of the
    fold's pixels read once), with the probabilities of each forest cross-validated alone on the stack in memory."""
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    from lithocore.area import Grid
    from lithocore.candidates import forest_candidates
    from lithocore.outputs import write_stack_file
    from lithocore.recommend import cross_validate_proba, fold_sets
    from lithocore.settings import ForestSettings
    from lithocore.stackfile import StackFile

    rng = np.random.default_rng(0)
    lab = (np.arange(40)[None, :] // 10 % 2).repeat(130, 0).astype(np.uint8)
    F = np.stack([lab + 0.5 * rng.standard_normal(lab.shape), rng.standard_normal(lab.shape)]).astype(np.float32)
    sf = StackFile(write_stack_file(tmp_path / "s.tif", F, ["a", "b"], ["", ""],
                                    Grid(CRS.from_epsg(32646), from_origin(0, 3000, 15, 15), 40, 130)))
    fold = (np.arange(130)[:, None] // 65).repeat(40, 1).astype(np.int8)  # fold 0: rows 0-64, fold 1: rows 65-129
    ok = np.ones(lab.shape, bool)
    cands = forest_candidates(ForestSettings(n_trees=5))
    monkeypatch.setenv("LITHOCORE_STACK_IN_MEMORY_MB", "0")  # the neighbourhood read strip by strip, not held
    on_file = {m: c.features(sf) for m, c in cands.items()}
    file_rows.clear()
    run = lambda feats, cs: cross_validate_proba(feats, lab, fold_sets("matched", fold, 2, ok, lab), 2, 2,  # noqa: E731
                                                 candidates=cs, progress=False, max_test=500, cap=200)
    shared = run(on_file, cands)
    assert sum(file_rows) == 2 * 130  # each fold's pixels lie in every strip: each row read once a
    # fold for both forests
    monkeypatch.delenv("LITHOCORE_STACK_IN_MEMORY_MB")
    for m, c in cands.items():
        alone = run({m: c.features(F)}, {m: c})
        assert np.array_equal(alone["idx"], shared["idx"]) and np.array_equal(alone["proba"][m], shared["proba"][m])


def test_a_scene_too_big_for_notebook_07_is_refused_before_any_work(small_area, monkeypatch, tmp_path):
    from lithocore.recommend import map_to_trust

    monkeypatch.setenv("LITHOCORE_MEMORY_LIMIT", "1M")
    stack = np.zeros((9, *small_area.shape), np.float32)
    with pytest.raises(MemoryError, match="192 x 192 px stack of 9 channels needs about"):
        map_to_trust(small_area, stack, tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # nothing written
    from lithocore.candidates import CANDIDATES
    from lithocore.forest import neighbourhood_channels, training_memory, training_pixels
    from lithocore.recommend import memory_needed

    K = len(small_area.classes)  # room for the scene's arrays and each forest's fit, not for the forests' predictors
    n = training_pixels(small_area.labels, small_area.mask, 0.1, 5000)  # read at once beside the largest fit
    fits = [training_memory(n, neighbourhood_channels(9, c.neighbourhood), K, c.n_trees) for c in CANDIDATES.values()]
    each = max([memory_needed(stack.shape, CANDIDATES, K), *fits])
    monkeypatch.setenv("LITHOCORE_MEMORY_LIMIT", str(each + 1024))
    with pytest.raises(MemoryError, match="forests: their predictors at [0-9,]+ training and test pixels, read once"):
        map_to_trust(small_area, stack, tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_distances_on_a_coarser_grid_for_a_large_scene(monkeypatch):
    """Past DISTANCE_PIXELS the nearest-label distances are measured on a grid k times coarser: within k pixels
    of the exact ones (no scene-sized distance transform); within it, the exact transform's."""
    from lithocore import knndm

    rng = np.random.default_rng(0)
    lab = np.zeros((300, 400), bool)
    lab[rng.integers(0, 300, 40), rng.integers(0, 400, 40)] = True
    pts = rng.choice(lab.size, 500, replace=False)
    exact = knndm.nearest_label_distance(lab, 10.0).ravel()[pts]  # scipy's distance map of the whole scene
    rows = RowMap(lambda a, b: lab[a:b], lab.shape)  # the labels given strip by strip
    assert np.array_equal(knndm.distances_at(lab, 10.0, pts), exact)
    assert np.array_equal(knndm.distances_at(rows, 10.0, pts), exact)
    monkeypatch.setattr(knndm, "DISTANCE_PIXELS", lab.size // 16)  # a grid 4 times coarser
    coarse = knndm.distances_at(lab, 10.0, pts)
    assert not np.array_equal(coarse, exact) and np.abs(coarse - exact).max() <= 4 * np.sqrt(2) * 10.0
    assert np.array_equal(knndm.distances_at(rows, 10.0, pts), coarse)
