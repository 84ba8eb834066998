"""Real maps and real mistakes: labels as maps encode them, and bad input stopped with the file and the fault
before any long work (issue: any study area runs, nothing silently wrong)."""

import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import Polygon, box

from lithocore.area import NO_LABEL
from lithocore.errors import DataWarning, StudyAreaError
from lithocore.data import load_study_area
from lithocore.manifest import read_manifest
from lithocore.workbook import check_parameters, main, notebooks, run_workbook

from .test_data import _copy_manifest, _error, _rewrite, _write


# ------------------------------------------------------------------------------------------ labels
def _label_raster(small_manifest, tmp_path, name, data, dtype, nodata):
    return _rewrite(small_manifest.parent / "geology_15m.tif", tmp_path / name, data=data, dtype=dtype, nodata=nodata)


def test_zero_means_unlabelled_when_declared(small_manifest, small_area, tmp_path):
    man = _copy_manifest(small_manifest, tmp_path)
    # a training raster: 0 = unlabelled, no nodata tag, one block left unlabelled
    man["labels"] = dict(man["labels"], path=_label_raster(small_manifest, tmp_path, "train.tif",
                                                         lambda a: np.where(np.arange(192) < 40, 0, a), "uint8", None))
    man["labels"].pop("field")
    msg = _error(tmp_path, man)
    assert "train.tif" in msg and "[0]" in msg and "unlabelled: [0]" in msg  # nothing guessed, the fix named
    man["labels"]["unlabelled"] = [0]
    area = load_study_area(_write(tmp_path, man))
    assert (area.labels[:, :40] == NO_LABEL).all()
    assert np.array_equal(area.labels[:, 40:], small_area.labels[:, 40:])
    man["labels"]["unlabelled"] = 0  # a single value, as the schema allows
    assert np.array_equal(load_study_area(_write(tmp_path, man)).labels, area.labels)


def test_unlabelled_value_that_is_a_class_is_refused(small_manifest, tmp_path):
    """`unlabelled: [3]` while 3 is a unit's id would drop that unit from training and scoring: refused, named."""
    man = _copy_manifest(small_manifest, tmp_path)
    man["labels"]["unlabelled"] = [0, 3]
    msg = _error(tmp_path, man)
    assert "geology.gpkg" in msg and "unlabelled: [3]" in msg and "Triassic sandstone and slate" in msg
    man["labels"]["unlabelled"] = [0]
    man["labels"]["nodata"] = [3]
    assert "nodata: [3]" in _error(tmp_path, man)


def test_float_labels_with_nan_nodata(small_manifest, small_area, tmp_path):
    man = _copy_manifest(small_manifest, tmp_path)

    def to_float(a):
        f = a.astype(np.float32)
        f[:, :10, :] = np.nan
        return f

    man["labels"] = dict(man["labels"], path=_label_raster(small_manifest, tmp_path, "float.tif", to_float, "float32",
                                                         float("nan")))
    area = load_study_area(_write(tmp_path, man))
    assert (area.labels[:10] == NO_LABEL).all() and np.array_equal(area.labels[10:], small_area.labels[10:])


def _geology(small_manifest) -> gpd.GeoDataFrame:
    return gpd.read_file(small_manifest.parent / "geology.gpkg")


def test_text_class_codes(small_manifest, small_area, tmp_path):
    gdf = _geology(small_manifest)
    gdf["code"] = [f"U{v}" for v in gdf["unit_id"]]
    gdf.to_file(tmp_path / "coded.gpkg", driver="GPKG")
    man = _copy_manifest(small_manifest, tmp_path)
    man["labels"] = dict(man["labels"], path=str(tmp_path / "coded.gpkg"), field="code")
    for c in man["labels"]["classes"]:
        c["value"] = f"U{c['id']}"
    area = load_study_area(_write(tmp_path, man))
    assert np.array_equal(area.labels, small_area.labels)
    # the code given as the id: a message naming the class and the field, not a bare int() error
    man["labels"]["classes"][0]["id"] = "U1"
    msg = _error(tmp_path, man)
    name = man["labels"]["classes"][0]["name"]
    assert f"class '{name}' has id 'U1'" in msg and "the field 'code'" in msg and "(value: U1)" in msg


def test_invalid_polygons_repaired_and_reported(small_manifest, tmp_path):
    gdf = _geology(small_manifest)
    x0, y0, x1, y1 = gdf.total_bounds
    bowtie = Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])  # self-intersecting
    extra = gpd.GeoDataFrame({"unit_id": [int(gdf["unit_id"].iloc[0])], "unit": ["x"]}, geometry=[bowtie], crs=gdf.crs)
    gdf = gpd.GeoDataFrame(
        __import__("pandas").concat([gdf, extra], ignore_index=True), crs=gdf.crs)
    gdf.to_file(tmp_path / "broken.gpkg", driver="GPKG")
    man = _copy_manifest(small_manifest, tmp_path)
    man["labels"]["path"] = str(tmp_path / "broken.gpkg")
    with pytest.warns(DataWarning, match=r"1 invalid polygon\(s\).*repaired"):
        area = load_study_area(_write(tmp_path, man))
    assert any("invalid polygon" in w for w in area.warnings)


def test_overlapping_polygons_of_different_classes_reported_with_area(small_manifest, small_area, tmp_path):
    gdf = _geology(small_manifest)
    x0, y0, x1, y1 = gdf.total_bounds
    big = box(x0, y0, (x0 + x1) / 2, y1)  # half the map, drawn last over every unit there
    rare = int(gdf["unit_id"].iloc[-1])
    extra = gpd.GeoDataFrame({"unit_id": [rare], "unit": ["overlap"]}, geometry=[big], crs=gdf.crs)
    import pandas as pd

    pd.concat([gdf, extra], ignore_index=True).pipe(gpd.GeoDataFrame, crs=gdf.crs).to_file(tmp_path / "ov.gpkg",
                                                                                         driver="GPKG")
    man = _copy_manifest(small_manifest, tmp_path)
    man["labels"]["path"] = str(tmp_path / "ov.gpkg")
    with pytest.warns(DataWarning, match=r"polygons of different classes overlap \(.* km2 \(\d+\.\d% of the labelled map"):
        area = load_study_area(_write(tmp_path, man))
    assert any("overlap" in w for w in area.warnings)
    man["labels"]["overlaps"] = "error"
    assert "overlap" in _error(tmp_path, man)


# ------------------------------------------------------------------------------------- manifest faults
@pytest.mark.parametrize("typo, nearest", [("guid", "guide"), ("spacng", "spacing"), ("lables", "labels")])
def test_unknown_manifest_keys_name_the_nearest(small_manifest, tmp_path, typo, nearest):
    man = _copy_manifest(small_manifest, tmp_path)
    if typo == "spacng":
        man["points"][0]["spacng"] = 600
    elif typo == "guid":
        man["guid"] = man.pop("guide")
    else:
        man["lables"] = man["labels"]
    msg = _error(tmp_path, man)
    assert f"unknown key" in msg and f"'{typo}'" in msg.replace("points.0.", "") and f"did you mean '{nearest}'" in msg


def test_wrong_types_in_the_manifest(small_manifest, tmp_path):
    man = _copy_manifest(small_manifest, tmp_path)
    man["points"][0]["spacing"] = "two km"
    man["points"][0]["method"] = "kriging"
    msg = _error(tmp_path, man)
    assert "points.0.spacing" in msg and "points.0.method" in msg and "'spline'" in msg


def test_a_geotiff_or_binary_file_as_manifest(small_manifest, tmp_path):
    with pytest.raises(StudyAreaError, match="aster_vnir_15m.tif: is a GeoTIFF, not a manifest"):
        read_manifest(small_manifest.parent / "aster_vnir_15m.tif")
    (tmp_path / "blob.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    with pytest.raises(StudyAreaError, match="blob.yaml: is not a text file"):
        read_manifest(tmp_path / "blob.yaml")


# ----------------------------------------------------------------------------------------- samples
def _samples(small_manifest, tmp_path, edit) -> dict:
    lines = (small_manifest.parent / "geochem_samples.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [r.split(",") for r in lines[1:]]
    edit(header, rows)
    (tmp_path / "samples.csv").write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    man = _copy_manifest(small_manifest, tmp_path)
    man["points"][0]["path"] = str(tmp_path / "samples.csv")
    return man


def test_below_detection_values(small_manifest, tmp_path):
    def edit(header, rows):
        rows[4][header.index("MgO")] = "<0.02"

    man = _samples(small_manifest, tmp_path, edit)
    msg = _error(tmp_path, man)
    assert "samples.csv" in msg and "column 'MgO', row 6" in msg and "'<0.02'" in msg and "below_detection: half" in msg
    man["points"][0]["below_detection"] = "half"
    area = load_study_area(_write(tmp_path, man))
    assert float(area.points["samples"]["MgO"].iloc[4]) == pytest.approx(0.01)


def test_not_determined_values_and_text_coordinates(small_manifest, tmp_path):
    def nd(header, rows):
        rows[2][header.index("CaO")] = "n.d."

    man = _samples(small_manifest, tmp_path, nd)
    msg = _error(tmp_path, man)
    assert "column 'CaO', row 4: 'n.d.' is not a number" in msg and "missing" in msg
    man["points"][0]["missing"] = ["n.d."]
    area = load_study_area(_write(tmp_path, man))
    assert np.isnan(area.points["samples"]["CaO"].iloc[2])

    def text_xy(header, rows):
        rows[7][header.index("x")] = "396 100 E"

    msg = _error(tmp_path, _samples(small_manifest, tmp_path, text_xy))
    assert "samples.csv" in msg and "column 'x', row 9: '396 100 E' is not a number; coordinates must be" in msg


# ------------------------------------------------------------------------------------------ nodata
def test_undeclared_fill_value_warned_and_per_layer_nodata(small_manifest, tmp_path):
    man = _copy_manifest(small_manifest, tmp_path)

    def fill(a):
        a = a.copy()
        a[:, :30, :] = -9999
        return a

    man["extra"][0]["path"] = _rewrite(man["extra"][0]["path"], tmp_path / "dem_fill.tif", data=fill, nodata=None)
    with pytest.warns(DataWarning, match=r"dem_fill.tif: band 1 \(dem\) holds the constant -9999 .* 'nodata: -9999'"):
        area = load_study_area(_write(tmp_path, man))
    assert np.nanmin(area.extra[0]) < -9000  # used as elevation, as the warning says
    man["extra"][0]["nodata"] = -9999
    area = load_study_area(_write(tmp_path, man))
    assert np.nanmin(area.extra[0]) > 0 and not area.mask[:25].any()


def test_nodata_tag_colliding_with_data_warned_and_overridable(small_manifest, small_area, tmp_path):
    man = _copy_manifest(small_manifest, tmp_path)
    mag = man["coarse"][0]["path"]
    with rasterio.open(mag) as src:
        values = src.read(1)
    common = float(np.median(values))
    tagged = _rewrite(mag, tmp_path / "mag_tagged.tif", data=lambda a: np.where(np.abs(a - common) < np.std(a) / 4,
                                                                              common, a).astype(a.dtype),
                      nodata=common)
    man["coarse"][0]["path"] = tagged
    with pytest.warns(DataWarning, match=r"mag_tagged.tif: band 1 \(magnetic\): the nodata value .* lies inside the "
                                         r"data's range .* 'nodata: none'"):
        load_study_area(_write(tmp_path, man))
    man["coarse"][0]["nodata"] = "none"
    area = load_study_area(_write(tmp_path, man))
    assert np.isfinite(area.coarse_layer("magnetic").values).all()


def test_grid_too_big_for_memory_refused_before_allocating(small_manifest, tmp_path, monkeypatch):
    man = _copy_manifest(small_manifest, tmp_path)
    monkeypatch.setenv("LITHOCORE_MEMORY_LIMIT", "2M")
    msg = _error(tmp_path, man)
    assert "192 x 192 pixels of 15 m" in msg and "MiB is available" in msg and "coarser resolution" in msg
    monkeypatch.setenv("LITHOCORE_MEMORY_LIMIT", "8G")
    load_study_area(_write(tmp_path, man))


def test_a_preview_whose_full_stack_cannot_be_held_is_refused_in_notebook_01(small_manifest, tmp_path, monkeypatch):
    """A grid shown as a preview in notebook 01 loads, but when notebooks 03-07 could not hold its full stack the
    loader says so there, before notebook 02 spends minutes writing the stack."""
    man = _copy_manifest(small_manifest, tmp_path)
    monkeypatch.setenv("LITHOCORE_MEMORY_LIMIT", "4M")
    with pytest.raises(StudyAreaError, match=r"192 x 192 pixels of 15 m .* notebooks 03-07 read the whole stack .* "
                                             r"is available"):
        load_study_area(_write(tmp_path, man), max_pixels=5000)
    monkeypatch.setenv("LITHOCORE_MEMORY_LIMIT", "64M")
    assert load_study_area(_write(tmp_path, man), max_pixels=5000).preview_factor > 1


# -------------------------------------------------------------------------------------- parameters
def test_notebook_parameters_checked_before_any_notebook_runs(tmp_path):
    with pytest.raises(ValueError, match=r"parameter 'tile_size' must be int, got 'abc'"):
        run_workbook(tmp_path, parameters={"tile_size": "abc"}, progress=False)
    with pytest.raises(ValueError, match=r"unknown parameter 'tile_sise' \(did you mean 'tile_size'\?\)"):
        check_parameters({"tile_sise": 64}, notebooks())
    assert not (tmp_path / "notebooks").exists() or not any((tmp_path / "notebooks").iterdir())
    check_parameters({"detail_gain": 1, "tile_size": 64, "use_clr": False, "study_area": "x.yaml"}, notebooks())
    with pytest.raises(SystemExit):
        main(["--run-dir", str(tmp_path), "-p", "epoks", "3"])


def test_geographic_reference_grid_warped_onto_its_utm_zone_with_a_notice(small_manifest, tmp_path):
    """Degrees are not metres: a geographic reference grid is replaced by the UTM zone of its centre (its bounds
    there, the pixel size in metres), with a notice that names it and how to choose another; the area then loads
    in metres, so no later stage reports "pixels of 0.0027 m"."""
    from lithocore.variants import geographic_copy

    geo = geographic_copy(small_manifest, tmp_path / "geo")
    with pytest.warns(DataWarning, match=r"geographic CRS \(EPSG:4326.*warped onto the UTM zone of its centre, "
                                         r"reference: \{crs: EPSG:32646, bounds: \[\d+, \d+, \d+, \d+\], "
                                         r"resolution: 15\}"):
        area = load_study_area(geo)
    assert area.grid.crs.to_epsg() == 32646 and area.grid.res == 15.0
    flat = load_study_area(small_manifest)
    assert abs(area.shape[0] - flat.shape[0]) <= 8 and abs(area.shape[1] - flat.shape[1]) <= 8  # a warped extent
    inner = (slice(10, -10), slice(10, -10))  # the same geology, back in metres (edges lose a pixel or two)
    assert area.mask[inner].mean() > 0.9
    labelled = [(a.mask & (a.labels != NO_LABEL)).mean() for a in (area, flat)]
    assert abs(labelled[0] - labelled[1]) < 0.05, labelled


# ------------------------------------------------------------------------------------------ sensors
def test_composites_follow_the_declared_sensor_not_the_band_names(small_manifest, tmp_path):
    """Landsat-8 bands named B02...B07 and Landsat-5 TM bands B1...B3 with the same names as other sensors' bands:
    the composite follows the declared sensor (false colour where a near-infrared band exists, true colour else);
    without a declaration it is titled as the first three bands, never as a sensor's convention."""
    import matplotlib

    matplotlib.use("Agg")
    from lithocore import plotting

    def plot_composite(area):  # the title as one line (long titles are wrapped, never cut off)
        ax = plotting.plot_composite(area)
        ax.set_title(ax.get_title().replace("\n", " "))
        return ax

    man = _copy_manifest(small_manifest, tmp_path)
    vnir = {k: v for k, v in man["guide"][0].items() if k != "sensor"}
    man["guide"] = [dict(vnir, bands=["B03", "B04", "B05"], sensor="Landsat 8/9 OLI")]
    area = load_study_area(_write(tmp_path, man))
    assert plot_composite(area).get_title().startswith("False-colour composite (R, G, B = near infrared B05, red B04,")
    man["guide"] = [dict(vnir, bands=["B1", "B2", "B3"], sensor="Landsat 4-5 TM")]
    title = plot_composite(load_study_area(_write(tmp_path, man))).get_title()
    assert title.startswith("True-colour composite (R, G, B = red B3, green B2, blue B1)")
    man["guide"] = [dict(vnir, bands=["B5", "B4", "B3"])]  # nothing declared: nothing guessed
    assert "Composite of the first three bands" in plot_composite(load_study_area(_write(tmp_path, man))).get_title()
    man["guide"] = [dict(vnir, bands=["B1", "B2", "B3"], sensor="Landsat 9000")]
    assert "unknown sensor 'Landsat 9000'" in _error(tmp_path, man)
    man["guide"] = [dict(vnir, bands=["B1", "B2", "B3N"], wavelengths=[0.56, 0.66])]
    msg = _error(tmp_path, man)
    assert "aster_vnir_15m.tif" in msg and "'wavelengths' gives 2 values for 3 bands" in msg


def test_a_cut_off_raster_is_named_damaged(small_manifest, tmp_path):
    """A GeoTIFF cut off half-way (an interrupted download): its header reads, its pixels do not. The message
    names the file and says it is damaged, not GDAL's chained traceback."""
    man = _copy_manifest(small_manifest, tmp_path)
    whole = _rewrite(man["extra"][0]["path"], tmp_path / "dem_whole.tif", tiled=True, blockxsize=64, blockysize=64,
                     compress="deflate")
    data = Path(whole).read_bytes()
    (tmp_path / "dem_cut.tif").write_bytes(data[: len(data) // 2])
    man["extra"][0]["path"] = str(tmp_path / "dem_cut.tif")
    msg = _error(tmp_path, man)
    assert msg.startswith(f"{tmp_path / 'dem_cut.tif'}: this file is damaged") and "copy or export it again" in msg


def test_near_identical_class_colours_warned(small_manifest, tmp_path):
    man = _copy_manifest(small_manifest, tmp_path)
    classes = man["labels"]["classes"]
    classes[1]["colour"] = classes[0]["colour"][:-1] + ("0" if classes[0]["colour"][-1] != "0" else "1")
    with pytest.warns(DataWarning, match=rf"classes '{classes[0]['name']}' .* and '{classes[1]['name']}' .* have "
                                         r"near-identical colours"):
        load_study_area(_write(tmp_path, man))


@pytest.mark.parametrize("tiled", [True, False])
def test_fill_value_found_on_a_sample_of_blocks_of_a_large_raster(tmp_path, monkeypatch, tiled):
    """A band too large for a decimated read of its whole extent (no overviews) is checked on 8 x 8 of its file
    blocks (64 strips of a striped file), edges included: a fill collar along its left edge is still found, and a
    band without one is not flagged."""
    from rasterio.transform import from_origin

    from lithocore.sources import common

    monkeypatch.setattr(common, "FILL_CHECK_WHOLE_PX", 0)
    rng = np.random.default_rng(0)
    data = rng.uniform(100, 900, (2, 640, 640)).astype(np.float32)
    data[0, :, :40] = -9999  # a collar a sixteenth of the width, on band 1 only
    layout = dict(tiled=True, blockxsize=16, blockysize=16) if tiled else dict(blockysize=4)
    path = tmp_path / "large.tif"
    with rasterio.open(path, "w", driver="GTiff", width=640, height=640, count=2, dtype="float32",
                       crs="EPSG:32635", transform=from_origin(0, 640 * 30, 30, 30), **layout) as dst:
        dst.write(data)
    warns: list = []
    with rasterio.open(path) as src:
        sample = common.fill_sample(src, 1)
        assert sample.size == (64 * 16 * 16 if tiled else 64 * 4 * 640)  # blocks, not the band
        with pytest.warns(DataWarning, match=r"large.tif: band 1 \(b1\) holds the constant -9999"):
            common.check_fill_value(path, src, 1, None, "b1", warns)
        common.check_fill_value(path, src, 2, None, "b2", warns)
    assert len(warns) == 1
