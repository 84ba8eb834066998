"""Loading a study area: alignment, labels, mask, and a clear error for each bad input."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin

from lithocore.area import NO_LABEL
from lithocore.errors import StudyAreaError
from lithocore.data import load_study_area
from lithocore.manifest import read_manifest
from lithocore.synthetic import OXIDES


def test_synthetic_area_aligned(small_area, small_manifest):
    a = small_area
    assert a.grid.shape == (192, 192) and a.grid.res == 15.0
    assert a.guide.shape == (9, 192, 192)
    assert a.guide_names == ["B1", "B2", "B3N", "B4", "B5", "B6", "B7", "B8", "B9"]
    assert a.extra_names == ["dem"]
    assert [c.name for c in a.coarse] == ["magnetic", *OXIDES]
    for c in a.coarse:  # coarse grids share the reference origin, cell = whole pixels
        assert c.factor == 20 and c.grid.res == 300.0
        assert c.grid.bounds[0] == a.grid.bounds[0] and c.grid.bounds[3] == a.grid.bounds[3]
        assert np.isfinite(c.values).all()
    assert a.mask.all()
    # The polygons rasterised by the loader reproduce the generator's label raster.
    with rasterio.open(small_manifest.parent / "geology_15m.tif") as src:
        raster = src.read(1)
    ids = np.array(a.classes.ids)
    # (the east quarter's labels are withheld as the ground to predict: training and withheld labels partition it)
    assert ((a.labels == NO_LABEL) == (a.held_out != NO_LABEL)).all()
    assert np.mean(ids[np.where(a.labels == NO_LABEL, a.held_out, a.labels)] == raster) > 0.999
    # DEM written at 12.5 m is resampled onto the 15 m grid with its values intact.
    with rasterio.open(small_manifest.parent / "dem_12p5m.tif") as src:
        dem = src.read(1)
    assert abs(np.nanmean(a.extra[0]) - dem.mean()) < 5.0


def test_swir_resampled_from_30m(small_area, small_manifest):
    with rasterio.open(small_manifest.parent / "aster_swir_30m.tif") as src:
        swir = src.read(1)
    b4 = small_area.guide[3]
    # Averaging the 15 m band back over 2 x 2 blocks gives the 30 m band back (bilinear is mean-preserving).
    back = b4[: swir.shape[0] * 2, : swir.shape[1] * 2].reshape(swir.shape[0], 2, swir.shape[1], 2).mean((1, 3))
    assert np.corrcoef(back[1:-1, 1:-1].ravel(), swir[1:-1, 1:-1].ravel())[0, 1] > 0.95


def test_labels_from_raster_match_vector(small_area, small_manifest, tmp_path):
    man = _copy_manifest(small_manifest, tmp_path)
    man["labels"]["path"] = str(small_manifest.parent / "geology_15m.tif")
    a = load_study_area(_write(tmp_path, man))
    assert np.array_equal(a.labels, small_area.labels)


# ---------------------------------------------------------------------------------------- bad input
def _copy_manifest(manifest: Path, tmp_path: Path) -> dict:
    """The manifest with absolute paths, to be edited by a test and written into tmp_path."""
    man = yaml.safe_load(manifest.read_text())
    base = manifest.parent
    for key in ("guide", "extra", "coarse", "points"):
        for e in man.get(key, []):
            e["path"] = str(base / e["path"])
    man["reference"] = str(base / man["reference"])
    man["labels"]["path"] = str(base / man["labels"]["path"])
    if man.get("predict"):
        man["predict"] = str(base / man["predict"])
    return man


def _write(tmp_path: Path, man: dict) -> Path:
    p = tmp_path / "manifest.yaml"
    p.write_text(yaml.safe_dump(man))
    return p


def _rewrite(src_path, dst_path: Path, data=None, **profile) -> str:
    """A copy of a raster with some profile entries changed (None removes one) or its data transformed."""
    with rasterio.open(src_path) as src:
        arr, prof = src.read(), src.profile
    for k, v in profile.items():
        if v is None:
            prof.pop(k)
        else:
            prof[k] = v
    with rasterio.open(dst_path, "w", **prof) as dst:
        dst.write(data(arr) if data else arr)
    return str(dst_path)


def _error(tmp_path, man) -> str:
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(StudyAreaError) as err:
        load_study_area(_write(tmp_path, man))
    after = sorted(tmp_path.rglob("*"))
    assert after == sorted(set(before) | {tmp_path / "manifest.yaml"}), "loading must write nothing"
    return str(err.value)


def test_missing_file(small_manifest, tmp_path):
    man = _copy_manifest(small_manifest, tmp_path)
    man["extra"][0]["path"] = str(tmp_path / "no_such_dem.tif")
    msg = _error(tmp_path, man)
    assert "no_such_dem.tif" in msg and "file not found" in msg


def test_missing_manifest(tmp_path):
    with pytest.raises(StudyAreaError, match="nope.yaml: manifest file not found"):
        read_manifest(tmp_path / "nope.yaml")


def test_no_crs(small_manifest, tmp_path):
    man = _copy_manifest(small_manifest, tmp_path)
    man["extra"][0]["path"] = _rewrite(man["extra"][0]["path"], tmp_path / "dem_no_crs.tif", crs=None)
    msg = _error(tmp_path, man)
    assert "dem_no_crs.tif" in msg and "has no CRS" in msg


def test_csv_without_crs(small_manifest, tmp_path):
    man = _copy_manifest(small_manifest, tmp_path)
    del man["points"][0]["crs"]
    msg = _error(tmp_path, man)
    assert "geochem_samples.csv" in msg and "no CRS" in msg


def test_no_overlap(small_manifest, tmp_path):
    man = _copy_manifest(small_manifest, tmp_path)
    man["extra"][0]["path"] = _rewrite(man["extra"][0]["path"], tmp_path / "far_away.tif",
                                       transform=from_origin(100000.0, 1000000.0, 12.5, 12.5))
    msg = _error(tmp_path, man)
    assert "far_away.tif" in msg and "does not overlap the reference grid" in msg


def test_wrong_band_count(small_manifest, tmp_path):
    man = _copy_manifest(small_manifest, tmp_path)
    man["guide"][0]["bands"] = ["B1", "B2", "B3N", "B3B"]
    msg = _error(tmp_path, man)
    assert "aster_vnir_15m.tif" in msg and "expected 4 band(s)" in msg and "found 3" in msg


def test_label_values_missing_from_class_table(small_manifest, tmp_path):
    man = _copy_manifest(small_manifest, tmp_path)
    man["labels"]["classes"] = [c for c in man["labels"]["classes"] if c["id"] != 6]
    msg = _error(tmp_path, man)
    assert "geology.gpkg" in msg and "missing from the class table" in msg and "6" in msg


def test_label_raster_values_missing(small_manifest, tmp_path):
    man = _copy_manifest(small_manifest, tmp_path)
    man["labels"] = {"path": str(small_manifest.parent / "geology_15m.tif"),
                     "classes": [c for c in man["labels"]["classes"] if c["id"] != 2]}
    msg = _error(tmp_path, man)
    assert "geology_15m.tif" in msg and "missing from the class table" in msg


def test_class_field_does_not_exist(small_manifest, tmp_path):
    man = _copy_manifest(small_manifest, tmp_path)
    man["labels"]["field"] = "lithology"
    msg = _error(tmp_path, man)
    assert "geology.gpkg" in msg and "class field 'lithology' does not exist" in msg and "unit_id" in msg


def test_empty_area(small_manifest, tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    man = _copy_manifest(small_manifest, tmp_path)
    outline = tmp_path / "outline.gpkg"
    gpd.GeoDataFrame(geometry=[box(0, 0, 10, 10)], crs="EPSG:32646").to_file(outline)
    man["area"] = str(outline)
    msg = _error(tmp_path, man)
    assert "the study area is empty" in msg


def test_empty_reference_grid(small_manifest, tmp_path):
    man = _copy_manifest(small_manifest, tmp_path)
    man["reference"] = {"crs": "EPSG:32646", "bounds": [395000, 3105000, 395000, 3105000], "resolution": 15}
    with pytest.raises(StudyAreaError, match="empty"):
        load_study_area(_write(tmp_path, man))


def test_all_nodata_layer(small_manifest, tmp_path):
    man = _copy_manifest(small_manifest, tmp_path)
    man["coarse"][0]["path"] = _rewrite(man["coarse"][0]["path"], tmp_path / "mag_nodata.tif",
                                        data=lambda a: np.full_like(a, np.nan))
    msg = _error(tmp_path, man)
    assert "mag_nodata.tif" in msg and "all nodata" in msg


def test_unlabelled_pixels_are_not_a_class(small_manifest, tmp_path):
    import geopandas as gpd

    man = _copy_manifest(small_manifest, tmp_path)
    gdf = gpd.read_file(man["labels"]["path"])
    gdf.loc[gdf.unit_id == 6, "unit_id"] = None  # Quaternary polygons lose their class
    path = tmp_path / "geology_partial.gpkg"
    gdf.to_file(path)
    man["labels"]["path"] = str(path)
    a = load_study_area(_write(tmp_path, man))
    assert (a.labels == NO_LABEL).any()
    assert a.labels[a.labels != NO_LABEL].max() < len(a.classes)
    assert a.label_fractions()["Quaternary strata"] == 0.0


# ------------------------------------------------------------------------------------- real data
@pytest.mark.real_data
def test_load_central_lapland(lapland_manifest):
    a = load_study_area(lapland_manifest)
    assert a.grid.shape == (821, 681) and a.grid.res == 100.0
    assert a.grid.crs.to_epsg() == 3067
    assert a.guide.shape[0] == 9 and not a.extra_names
    assert [c.name for c in a.coarse] == ["Al", "Ca", "Fe", "K", "Mg", "Ti", "Cr", "Ni"]
    assert all(c.factor == 20 for c in a.coarse)
    assert len(a.classes) == 10
    assert 0.6 < a.mask.mean() < 0.95  # the area outline and the sample coverage cut the corners
    # The geology does not cover the southern ~8 km: unlabelled there, not a class.
    south = a.labels[-60:][a.mask[-60:]]
    assert (south == NO_LABEL).mean() > 0.95
    frac = a.label_fractions()
    assert frac["Carbonate rock"] < 0.01 and max(frac.values()) > 0.2  # very unbalanced, as its README says
    # Gridded till geochemistry stays positive (gridded in log space) and near the sample range.
    al = a.coarse_layer("Al").values
    assert np.nanmin(al) > 0 and np.nanmax(al) < 40000


def test_netcdf_grid_is_a_source_of_one_file(small_manifest, small_area, tmp_path):
    """A new kind of source is one module of lithocore.sources: a NetCDF copy of the magnetic grid, named under
    ``netcdf``, loads as the same coarse layer as the GeoTIFF; a missing variable is named with the ones there are."""
    import shutil

    import rasterio.shutil

    tmp_path = tmp_path / "area"
    shutil.copytree(small_manifest.parent, tmp_path)
    man = yaml.safe_load((tmp_path / small_manifest.name).read_text())
    mag = man["coarse"][0]
    rasterio.shutil.copy(tmp_path / mag["path"], tmp_path / "mag.nc", driver="netCDF")
    man["netcdf"] = [{"path": "mag.nc", "variable": "Band1", "name": "mag_nc", "units": "nT"}]
    (tmp_path / "nc.yaml").write_text(yaml.safe_dump(man))
    area = load_study_area(tmp_path / "nc.yaml")
    tif = next(c for c in area.coarse if c.name == mag.get("name", "magnetic"))
    nc = next(c for c in area.coarse if c.name == "mag_nc")
    assert nc.factor == tif.factor and nc.grid == tif.grid
    np.testing.assert_allclose(nc.values, tif.values, rtol=1e-6, equal_nan=True)
    assert any(row["kind"] == "netcdf" for row in area.layer_table)
    man["netcdf"][0]["variable"] = "bouguer"
    (tmp_path / "nc.yaml").write_text(yaml.safe_dump(man))
    with pytest.raises(StudyAreaError, match=r"mag\.nc: has no variable 'bouguer'; its gridded variables: Band1"):
        load_study_area(tmp_path / "nc.yaml")


def test_grid_sources_are_all_found_in_one_order_whatever_was_imported_first():
    """Importing one source module first must neither hide the others from the loader nor reorder them (the
    stack's channels follow this order)."""
    import subprocess
    import sys

    code = ("import lithocore.sources.points, lithocore.sources.netcdf; from lithocore.sources import grid_sources; "
            "print(list(grid_sources()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "['coarse', 'netcdf', 'points']", out
