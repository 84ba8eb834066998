"""Whole-scene mapping: seamless blending, exact shape, nodata kept, bounded strips, GeoTIFFs for QGIS."""

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from lithocore import mapping
from lithocore.data import NO_LABEL, ClassTable, Grid, write_geotiff


def _probabilities(C, H, W, seed=0):
    x = np.random.default_rng(seed).random((C, H, W)).astype(np.float32) + 0.1
    return x / x.sum(0)


@pytest.mark.parametrize("shape,tile,overlap", [((150, 170), 64, 0.5), ((64, 64), 64, 0.5), ((40, 300), 32, 0.25)])
def test_blending_reproduces_a_pixelwise_model(shape, tile, overlap):
    """A 'model' whose output is its input: any seam, shift or gap in the blending would show."""
    x = _probabilities(3, *shape)
    strips = list(mapping.predict_strips(lambda b: b, lambda a, b: x[:, a:b], shape, 3, tile=tile, overlap=overlap,
                                         progress=False))
    rows = [r0 for r0, _ in strips]
    assert rows[0] == 0 and sum(p.shape[1] for _, p in strips) == shape[0]
    for r0, p in strips:
        assert p.shape[2] == shape[1]
        assert np.allclose(p, x[:, r0:r0 + p.shape[1]], atol=1e-5)


def test_memory_is_bounded_by_strips():
    """The reader is asked for at most one tile of rows at a time, never the whole scene."""
    H, W, tile = 600, 80, 64
    x = _probabilities(2, H, W)
    asked = []

    def read(a, b):
        asked.append(b - a)
        return x[:, a:b]

    for _ in mapping.predict_strips(lambda b: b, read, (H, W), 2, tile=tile, progress=False):
        pass
    assert max(asked) <= tile


class ContextModel:
    """A translation-invariant 'model' that needs context: class = whether the 9x9 mean exceeds 0.5."""

    output_shape = (None, None, None, 2)

    def predict_on_batch(self, x):
        from scipy import ndimage

        m = ndimage.uniform_filter(x[..., 0], size=(1, 9, 9), mode="reflect")
        p1 = 1 / (1 + np.exp(-40 * (m - 0.5)))
        return np.stack([1 - p1, p1], axis=-1)


def test_map_array_and_geotiff_agree_and_keep_nodata(tmp_path):
    rng = np.random.default_rng(1)
    from scipy import ndimage

    H, W = 130, 150
    field = ndimage.gaussian_filter(rng.standard_normal((H, W)), 6)
    stack = np.stack([(field > 0).astype(np.float32), rng.random((H, W)).astype(np.float32)])
    mask = np.ones((H, W), bool)
    mask[:10, :20] = False
    stack[:, :10, :20] = np.nan
    model = ContextModel()
    classes, conf = mapping.map_array(model, stack, mask, [0, 0], [1, 1], tile=64, progress=False)
    assert classes.shape == (H, W) and (classes[~mask] == NO_LABEL).all() and np.isnan(conf[~mask]).all()
    inside = mask.copy()
    inside[:16, :] = inside[:, :16] = inside[-8:, :] = inside[:, -8:] = False
    agree = (classes[inside] == (field > 0)[inside]).mean()
    assert agree > 0.97
    grid = Grid(CRS.from_epsg(32646), from_origin(400000, 3100000, 15, 15), W, H)
    path = write_geotiff(tmp_path / "stack.tif", stack, grid)
    table = ClassTable.from_list([{"id": 1, "name": "low", "colour": "#112233"}, {"id": 2, "name": "high", "colour": "#aabbcc"}])
    res = mapping.map_geotiff(model, path, tmp_path / "out", table, [0, 0], [1, 1], tile=64, progress=False)
    with rasterio.open(res["classes"]) as src:
        assert src.nodata == NO_LABEL and src.dtypes[0] == "uint8" and src.crs.to_epsg() == 32646
        # The file stores the class table's ids (1 = low, 2 = high), as a label raster does, not indices.
        ids = src.read(1)
        assert src.colormap(1)[2] == (170, 187, 204, 255)
        assert src.tags()["class_2"] == "high"
    expected = np.where(classes == NO_LABEL, NO_LABEL, classes + 1)
    assert np.array_equal(ids, expected) and set(np.unique(ids)) <= {1, 2, NO_LABEL}
    back, _ = mapping.read_class_map(res["classes"], table)
    assert np.array_equal(back, classes)
    with rasterio.open(res["confidence"]) as src:
        assert np.allclose(src.read(1), conf, equal_nan=True, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fcn_classes.tif", "fcn_confidence.tif"]
    for f in (tmp_path / "out").iterdir():  # readable by others, as any normal file (not a temp file's 0600)
        assert f.stat().st_mode & 0o044 == 0o044, oct(f.stat().st_mode)
    # A class map read with another class table (reordered) is refused, not read with the wrong legend.
    swapped = ClassTable.from_list([{"id": 2, "name": "high"}, {"id": 1, "name": "low"}])
    with pytest.raises(ValueError, match="class table"):
        mapping.read_class_map(res["classes"], swapped)


def test_class_map_with_large_ids(tmp_path):
    """Unit ids above 254 (e.g. 1001) are kept: the file becomes uint16 with its own nodata."""
    table = ClassTable.from_list([{"id": 1001, "name": "a"}, {"id": 7, "name": "b"}])
    grid = Grid(CRS.from_epsg(32646), from_origin(400000, 3100000, 15, 15), 3, 2)
    idx = np.array([[0, 1, NO_LABEL], [1, 0, 0]], np.uint8)
    path = mapping.write_class_map(tmp_path / "m.tif", idx, grid, table)
    with rasterio.open(path) as src:
        assert src.dtypes[0] == "uint16" and src.nodata == 65535
        assert src.read(1).tolist() == [[1001, 7, 65535], [7, 1001, 1001]]
    assert np.array_equal(mapping.read_class_map(path, table)[0], idx)


def test_keras_model_maps_any_scene_size(tmp_path):
    keras = pytest.importorskip("keras")
    from lithocore.model import build_fcn8s

    keras.utils.set_random_seed(0)
    model = build_fcn8s(3, 4, width=1 / 16, fc=16)  # no fixed input size
    stack = np.random.default_rng(0).standard_normal((3, 77, 101)).astype(np.float32)
    classes, conf = mapping.map_array(model, stack, np.ones((77, 101), bool), [0] * 3, [1] * 3, tile=32,
                                      progress=False)
    assert classes.shape == (77, 101) and classes.max() < 4 and np.all((conf > 0) & (conf <= 1))
