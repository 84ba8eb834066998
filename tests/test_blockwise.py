"""The out-of-core stack (written block by block from the manifest) equals the in-memory fusion's, for the
fusion settings, mixes of sources and file conventions a user brings, with several blocks and a halo."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from rasterio.warp import calculate_default_transform, reproject
from shapely.geometry import box

from lithocore import blockwise, fusion, outputs
from lithocore.area import NO_LABEL
from lithocore.data import load_study_area

from .test_data import _copy_manifest


def _in_memory(manifest, settings):
    area = load_study_area(manifest)
    result = fusion.fuse_study_area(area, progress=False, **settings.fuse_kwargs())
    stack, names, units = fusion.build_stack(result, area, list(settings.channels) or None)
    return area, stack, names, units


def _compare(manifest, settings, tmp_path, memory_mb=2.0):
    area, stack, names, units = _in_memory(manifest, settings)
    out = blockwise.write_stack(manifest, tmp_path / "stack.tif", settings, memory_mb=memory_mb, progress=False)
    assert out["blocks"] >= 3  # the comparison is across block borders
    assert np.array_equal(out["valid"], area.mask)  # the mask made block by block, which later notebooks load
    got, got_names, got_units, stats, _ = outputs.read_stack(tmp_path / "stack.tif")
    assert got_names == names and got_units == units
    assert np.array_equal(np.isnan(got), np.isnan(stack))  # the same valid-data mask
    scale = np.nanmax(np.abs(stack), axis=(1, 2), keepdims=True)
    assert np.nanmax(np.abs(got - stack) / scale) < 1e-5
    labelled = area.mask & (area.labels != NO_LABEL)
    ref = fusion.normalisation_stats(stack, labelled)
    assert stats["pixels"] == ref["pixels"]
    assert np.allclose(stats["mean"], ref["mean"], rtol=0, atol=1e-4 * np.array(ref["std"]))
    assert np.allclose(stats["std"], ref["std"], rtol=1e-4)
    with rasterio.open(tmp_path / "stack.tif") as src:  # a cloud-optimised GeoTIFF (overviews above 512 px)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    return out


@pytest.mark.parametrize("settings", [
    fusion.FusionSettings(),  # the calibrated defaults: smoothing 5 px, so a halo of 20 rows
    fusion.FusionSettings(method="local", guide_transform="clr", detail_gain=1.0, detail_smoothing=0.0),
])
def test_blockwise_stack_equals_the_in_memory_stack(small_manifest, tmp_path, settings):
    out = _compare(small_manifest, settings, tmp_path)
    assert out["halo"] == (20 if settings.detail_smoothing == 5.0 else 0)


def test_blockwise_reprojected_layer_outline_and_declared_nodata(small_manifest, tmp_path):
    """A DEM in another CRS with a declared fill value and an area outline: warped, masked and filled the same."""
    man = _copy_manifest(small_manifest, tmp_path)
    dem = Path(man["extra"][0]["path"])
    with rasterio.open(dem) as src:
        data = src.read(1)
        data[:40, :60] = -9999.0  # a block of fill value, declared in the manifest below
        crs = "EPSG:32645"
        transform, w, h = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        prof = src.profile | dict(crs=crs, transform=transform, width=w, height=h, nodata=None, dtype="float32")
        out = np.full((h, w), -9999.0, np.float32)
        reproject(data.astype(np.float32), out, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                  dst_crs=crs, src_nodata=-9999.0, dst_nodata=-9999.0)
        left, bottom, right, top = src.bounds
        outline = box(left + 600, bottom + 300, right - 450, top - 900)
        grid_crs = src.crs
    with rasterio.open(tmp_path / "dem_utm45.tif", "w", **prof) as dst:
        dst.write(out, 1)
    gpd.GeoDataFrame(geometry=[outline], crs=grid_crs).to_file(tmp_path / "outline.gpkg")
    man["extra"][0].update(path=str(tmp_path / "dem_utm45.tif"), nodata=-9999.0)
    man["area"] = str(tmp_path / "outline.gpkg")
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(man, sort_keys=False))
    area = load_study_area(path)
    assert 0.3 < area.mask.mean() < 0.9  # the outline and the fill value both cut the area
    _compare(path, fusion.FusionSettings(), tmp_path)


def test_blockwise_imagery_only_and_block_size_follow_memory(small_manifest, tmp_path):
    man = _copy_manifest(small_manifest, tmp_path)
    man.update(extra=[], coarse=[], points=[])
    path = tmp_path / "imagery.yaml"
    path.write_text(yaml.safe_dump(man, sort_keys=False))
    out = _compare(path, fusion.FusionSettings(), tmp_path)
    assert out["channels"] == ["B1", "B2", "B3N", "B4", "B5", "B6", "B7", "B8", "B9"]  # maps from its imagery
    grid = load_study_area(path).grid
    small = blockwise.block_rows_for(grid, 9, 9, memory_mb=1.0, halo=0)
    large = blockwise.block_rows_for(grid, 9, 9, memory_mb=64.0, halo=0)
    assert 32 <= small < large == grid.height


def test_a_stack_fused_on_a_two_worker_cluster_is_that_of_one_process(small_manifest, tmp_path):
    """Every pass's strips as tasks of a two-worker Dask cluster (each worker reading the rasters itself, a halo of
    rows around each strip, the logarithms' floor of a clr guide): the same file, value for value, the same
    statistics and valid-data mask as in one process from the files; the folder the strips came back through is
    gone."""
    settings = fusion.FusionSettings(guide_transform="clr")  # pass 0 too; smoothing 5 px: a halo of 20 rows
    one = blockwise.write_stack(small_manifest, tmp_path / "one.tif", settings, memory_mb=2.0, progress=False)
    two = blockwise.write_stack(small_manifest, tmp_path / "two.tif", settings, memory_mb=2.0, progress=False,
                                cluster="local:2")
    assert one["blocks"] >= 3 and one["halo"] == 20
    a, b = outputs.read_stack(tmp_path / "one.tif"), outputs.read_stack(tmp_path / "two.tif")
    assert np.array_equal(a[0], b[0], equal_nan=True) and a[1:4] == b[1:4]
    assert np.array_equal(one["valid"], two["valid"]) and one["coefficients"] == two["coefficients"]
    assert not list(tmp_path.glob(".spill-*"))


def test_a_loaded_area_is_used_and_a_preview_is_not(small_manifest, tmp_path, monkeypatch):
    """Given the area already loaded on the same grid, the stack is made from its layers (no second read of the
    files) and equals the one made from the files; given a preview on a coarser grid (``max_pixels``), the stack
    is still made at full resolution from the files."""
    settings = fusion.FusionSettings()
    files = blockwise.write_stack(small_manifest, tmp_path / "files.tif", settings, memory_mb=2.0, progress=False)
    full = load_study_area(small_manifest)
    preview = load_study_area(small_manifest, max_pixels=full.grid.width * full.grid.height // 5)
    assert preview.preview_factor == 3 and preview.grid.res == 3 * full.grid.res
    assert preview.grid.bounds[:2] == full.grid.bounds[:2] and preview.grid.bounds[2] >= full.grid.bounds[2]
    assert any("preview" in w for w in preview.warnings)
    reads = []
    real = blockwise.read_fine_rows
    monkeypatch.setattr(blockwise, "read_fine_rows", lambda *a, **k: reads.append(1) or real(*a, **k))
    blockwise.write_stack(small_manifest, tmp_path / "loaded.tif", settings, memory_mb=2.0, progress=False, area=full)
    assert not reads  # the loaded layers, not the files
    blockwise.write_stack(small_manifest, tmp_path / "preview.tif", settings, memory_mb=2.0, progress=False,
                          area=preview)
    assert reads  # the files, at full resolution
    ref = outputs.read_stack(tmp_path / "files.tif")[0]
    for name in ("loaded", "preview"):
        got = outputs.read_stack(tmp_path / f"{name}.tif")[0]
        assert got.shape == ref.shape and np.array_equal(np.isnan(got), np.isnan(ref))
        assert np.nanmax(np.abs(got - ref)) <= 1e-5 * np.nanmax(np.abs(ref)), name
    assert files["blocks"] >= 3


def test_later_notebooks_load_the_area_without_its_layers(small_manifest, small_area, tmp_path):
    """A run fuses its stack from the files strip by strip and, as every run opened again, loads the labels, the mask
    and the ground to predict as the whole-scene loader does, but neither the fine bands nor the coarse layers and
    point samples (the stack holds them); a mask written with another stack is never used, and what needs the
    layers says so."""
    from lithocore import plotting
    from lithocore.run import Run
    from lithocore.runfolder import RunFolder
    from lithocore.stages import stack_valid_mask

    fused_now = Run.open(tmp_path, str(small_manifest)).area  # fused from the files, then loaded without the layers
    area = Run.open(tmp_path, str(small_manifest)).area  # the stack reused
    assert not fused_now.layers_loaded and np.array_equal(fused_now.labels, small_area.labels)
    assert not area.layers_loaded and area.guide.shape[0] == 0 and small_area.guide.shape[0] > 0
    assert not area.coarse and not area.points and small_area.coarse and small_area.points
    assert area.guide_names == small_area.guide_names and area.extra_names == small_area.extra_names
    assert area.units == {k: small_area.units[k] for k in area.guide_names + area.extra_names}
    assert area.wavelengths == small_area.wavelengths and area.classes == small_area.classes
    for name in ("mask", "labels", "predict", "held_out"):
        assert np.array_equal(getattr(area, name), getattr(small_area, name)), name
    assert small_area.predict.any() and (small_area.held_out != NO_LABEL).any()  # the withholding was exercised
    for figure in (lambda: plotting.plot_composite(area), lambda: plotting.plot_coarse(area, "magnetic"),
                   lambda: plotting.plot_points(area, small_area.coarse[-1].name)):
        with pytest.raises(ValueError, match="needs the layers"):
            figure()
    assert stack_valid_mask(tmp_path, "another stack's key") is None
    with np.load(RunFolder(tmp_path).valid_mask_path) as z:
        stale = dict(z) | {"stack_key": np.array("made from something else")}
    np.savez(RunFolder(tmp_path).valid_mask_path, **stale)
    assert Run.open(tmp_path, str(small_manifest)).area.layers_loaded  # the files read again, not the stale mask


@pytest.mark.parametrize("case", ["float_nan", "uint16_tag", "uint16_declared", "offset_partial"])
def test_a_source_on_the_grid_is_read_as_the_warp_would_give_it(tmp_path, case):
    """A raster whose pixels are the reference grid's own is read, not warped: the values, the nodata and the
    pixels it does not reach are those of GDAL's bilinear warp onto the grid (the computation it replaces), for the
    whole scene and for strips of rows."""
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin

    from lithocore.area import Grid
    from lithocore.sources.common import grid_offset, source_band, warp_scales
    from lithocore.sources.fine import read_fine

    rng = np.random.default_rng(3)
    grid = Grid("EPSG:32635", from_origin(500000, 7000000, 30, 30), 70, 45)
    dtype, entry, tag, shift = "float32", {}, None, (0, 0)
    if case.startswith("uint16"):
        dtype, tag = "uint16", 0
    if case == "uint16_declared":
        entry, tag = {"nodata": 7}, 0  # the manifest's value wins over the file's tag
    if case == "offset_partial":
        shift = (-12, 9)  # the source starts 12 rows above the grid and 9 columns inside it: the rest is NaN
    data = (rng.uniform(1, 500, (3, 45, 60))).astype(dtype)
    data[:, 5:9, 10:20] = {"float32": np.nan, "uint16": 0}[dtype]
    data[:, 30, :] = 7
    transform = from_origin(500000 + 30 * shift[1], 7000000 - 30 * shift[0], 30, 30)
    path = tmp_path / "on_grid.tif"
    with rasterio.open(path, "w", driver="GTiff", width=60, height=45, count=3, dtype=dtype, crs=grid.crs,
                       transform=transform, nodata=tag, tiled=True, blockxsize=16, blockysize=16) as dst:
        dst.write(data)
    with rasterio.open(path) as src:
        assert grid_offset(src, grid) == (-shift[0], -shift[1])
        nodata = blockwise.declared_nodata(entry, src)
        warped = np.full((3, *grid.shape), np.nan, np.float32)
        for b in range(3):
            reproject(destination=warped[b], src_nodata=nodata, dst_transform=grid.transform, dst_crs=grid.crs,
                      dst_nodata=np.nan, resampling=Resampling.bilinear, tolerance=0.0, **warp_scales(src, grid),
                      **source_band(src, b + 1, entry))
        rows = np.concatenate([blockwise.read_fine_rows(src, entry, grid, r0, min(8, grid.height - r0))
                               for r0 in range(0, grid.height, 8)], axis=1)
    whole, _ = read_fine(path, grid, 3, Resampling.bilinear, entry)
    assert np.isnan(warped).any() and np.isfinite(warped).any()
    np.testing.assert_array_equal(whole, warped)
    np.testing.assert_array_equal(rows, warped)
    half = Grid(grid.crs, from_origin(500000 + 15, 7000000, 30, 30), 70, 45)  # half a pixel off: warped
    with rasterio.open(path) as src:
        assert grid_offset(src, half) is None
