"""Whole-scene mapping: seamless blending, exact shape, nodata kept, bounded strips, GeoTIFFs for QGIS."""

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from lithocore import mapping
from lithocore.area import NO_LABEL, ClassTable, Grid
from lithocore.outputs import write_geotiff


def _probabilities(C, H, W, seed=0):
    x = np.random.default_rng(seed).random((C, H, W)).astype(np.float32) + 0.1
    return x / x.sum(0)


class IdentityModel:
    """A 'model' whose probabilities are its input: any shift, gap or wrong crop of a window would show."""

    def predict_on_batch(self, x):
        return x


@pytest.mark.parametrize("shape,max_core,margin", [((150, 170), 64, 32), ((64, 64), 64, 64), ((40, 300), 32, 0),
                                                   ((33, 97), 32, 64), ((150, 170), None, 64)])
def test_windows_reproduce_a_pixelwise_model(shape, max_core, margin):
    x = _probabilities(3, *shape)
    classes, conf = mapping.map_array(IdentityModel(), x, np.ones(shape, bool), [0] * 3, [1] * 3, max_core=max_core,
                                      margin=margin, progress=False)
    assert np.array_equal(classes, np.argmax(x, axis=0)) and np.allclose(conf, x.max(axis=0))


def test_plan_keeps_windows_on_the_network_grid_and_covers_the_scene():
    for shape, max_core in (((1611, 1650), 512), ((100, 3000), 256), ((31, 31), 64), ((1611, 1650), None),
                            ((2000, 700), None), ((70, 1000), 32)):
        for edge in (0, 32):  # windows make up no context: at most `edge` pixels beyond the scene's 32-px extent
            plan = mapping.plan_windows(shape, max_core=max_core, margin=64, edge=edge, memory_mb=64)
            (wh, ww), extent = plan.window, [-(-n // 32) * 32 for n in shape]
            assert wh % 32 == 0 and ww % 32 == 0 and plan.count == len(plan.origins())
            covered = np.zeros(shape, int)
            for r0, c0 in plan.origins():
                (h, w), (sr, sc) = plan.core_at(r0, c0), plan.start(r0, c0)
                assert r0 % 32 == 0 and c0 % 32 == 0 and sr % 32 == 0 and sc % 32 == 0
                assert -edge <= sr and -edge <= sc and sr + wh <= extent[0] + edge and sc + ww <= extent[1] + edge
                covered[r0:r0 + h, c0:c0 + w] += 1
                # the full margin inside the window wherever the scene goes on, `edge` where it does not
                assert r0 - sr >= (64 if r0 > 0 else edge) and c0 - sc >= (64 if c0 > 0 else edge)
                assert sr + wh - r0 - h >= (64 if r0 + h < shape[0] else edge)
                assert sc + ww - c0 - w >= (64 if c0 + w < shape[1] else edge)
            assert (covered == 1).all()  # every pixel predicted once
    # a window at the scene's edge needs no margin there: three 640-px strips cover the default area's 1664 px
    # (3 x 640 - 4 x 64), where three equal cores, each with two margins, took 672-px strips (1.15 x the pixels,
    # not 1.24)
    plan = mapping.plan_windows((1611, 1650), bytes_per_px=384, memory_mb=512, margin=64)
    assert plan.count == 3 and plan.window == (1632, 640) and plan.cost() < 1.16
    # a memory budget sets the window: 1 GB at 400 bytes a pixel is one window of at most ~1600 px a side
    plan = mapping.plan_windows((5000, 5000), bytes_per_px=400, memory_mb=1024, margin=64)
    assert plan.window[0] * plan.window[1] * 400 <= 1024 * 2 ** 20 and len(plan.origins()) > 1
    with pytest.raises(ValueError, match="multiple of 32"):
        mapping.plan_windows((100, 100), margin=20)


def test_memory_is_bounded_by_the_window():
    """The reader is asked for at most one window of pixels at a time, never the whole scene."""
    H, W = 600, 500
    x = _probabilities(2, H, W)
    asked = []

    def read(a, b, c, d):
        asked.append((b - a, d - c))
        return x[:, a:b, c:d]

    plan = mapping.plan_windows((H, W), max_core=128, margin=32)
    for r0, c0 in plan.origins():
        mapping.predict_window(mapping.window_predictor(IdentityModel(), [0, 0], [1, 1]), read, plan, r0, c0)
    assert max(a for a, _ in asked) <= plan.window[0] and max(b for _, b in asked) <= plan.window[1]


class ContextModel:
    """A translation-invariant 'model' that needs context: class = whether the 9x9 mean exceeds 0.5."""

    output_shape = (None, None, None, 2)

    def predict_on_batch(self, x):
        from scipy import ndimage

        m = ndimage.uniform_filter(x[..., 0], size=(1, 9, 9), mode="reflect")
        p1 = 1 / (1 + np.exp(-40 * (m - 0.5)))
        return np.stack([1 - p1, p1], axis=-1)


def test_no_seams_where_windows_meet():
    """A model that needs a 9 x 9 neighbourhood gives the same map from 32-px cores with a 32-px margin as from one
    window over the whole scene: the margin carries the context across every window border."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    field = ndimage.gaussian_filter(rng.standard_normal((200, 230)), 4).astype(np.float32)[None] + 0.5
    mask = np.ones(field.shape[1:], bool)
    small, _ = mapping.map_array(ContextModel(), field, mask, [0], [1], max_core=32, margin=32, progress=False)
    whole, _ = mapping.map_array(ContextModel(), field, mask, [0], [1], max_core=256, margin=32, progress=False)
    assert np.array_equal(small, whole)
    # without a margin the windows' edges show up on the 32-px grid as a stripe ratio above 1
    edged, _ = mapping.map_array(ContextModel(), field, mask, [0], [1], max_core=32, margin=0, progress=False)
    assert not np.array_equal(edged, whole)


def test_map_array_and_geotiff_agree_and_keep_nodata(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    from scipy import ndimage

    H, W = 130, 150
    field = ndimage.gaussian_filter(rng.standard_normal((H, W)), 6)
    stack = np.stack([(field > 0).astype(np.float32), rng.random((H, W)).astype(np.float32)])
    mask = np.ones((H, W), bool)
    mask[:10, :20] = False
    stack[:, :10, :20] = np.nan
    model = ContextModel()
    classes, conf = mapping.map_array(model, stack, mask, [0, 0], [1, 1], max_core=64, progress=False)
    assert classes.shape == (H, W) and (classes[~mask] == NO_LABEL).all() and np.isnan(conf[~mask]).all()
    inside = mask.copy()
    inside[:16, :] = inside[:, :16] = inside[-8:, :] = inside[:, -8:] = False
    agree = (classes[inside] == (field > 0)[inside]).mean()
    assert agree > 0.97
    grid = Grid(CRS.from_epsg(32646), from_origin(400000, 3100000, 15, 15), W, H)
    path = write_geotiff(tmp_path / "stack.tif", stack, grid)
    table = ClassTable.from_list([{"id": 1, "name": "low", "colour": "#112233"}, {"id": 2, "name": "high", "colour": "#aabbcc"}])
    res = mapping.map_geotiff(model, path, tmp_path / "out", table, [0, 0], [1, 1], max_core=64, progress=False)
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
    # confidence is stored as Byte (value / 250, 255 nodata): within half a step of the float map
    whole = mapping.read_confidence(res["confidence"])
    assert np.allclose(whole, conf, equal_nan=True, atol=0.5 / 250 + 1e-6)
    monkeypatch.setattr(mapping, "READ_STRIP_PIXELS", 7 * classes.shape[1])  # strips of a few rows
    for step in (1, 3, 4):  # what a figure shows of a large scene, read strip by strip
        assert np.array_equal(mapping.read_confidence(res["confidence"], step), whole[::step, ::step], equal_nan=True)
    with rasterio.open(res["confidence"]) as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 255 and src.scales[0] == pytest.approx(1 / 250)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model_classes.qml", "model_classes.tif",
                                                                    "model_classes_legend.png", "model_confidence.tif"]
    qml = (tmp_path / "out" / "model_classes.qml").read_text()
    assert 'value="2" color="#aabbcc"' in qml and 'label="high"' in qml
    for f in (tmp_path / "out").iterdir():  # readable by others, as any normal file (not a temp file's 0600)
        assert f.stat().st_mode & 0o044 == 0o044, oct(f.stat().st_mode)
    # A class map read with another class table (reordered) is refused, not read with the wrong legend.
    swapped = ClassTable.from_list([{"id": 2, "name": "high"}, {"id": 1, "name": "low"}])
    with pytest.raises(ValueError, match="class table"):
        mapping.read_class_map(res["classes"], swapped)


def test_a_class_map_carries_its_palette_without_a_gdal_error(tmp_path, capfd):
    """The class table's colours go into the file before any pixel (a palette set once blocks are written makes
    libtiff print "Cannot modify tag PhotometricInterpretation" into the notebook), and survive the COG copy."""
    table = ClassTable.from_list([{"id": 11, "name": "a", "colour": "#112233"}, {"id": 12, "name": "b", "colour": "#aabbcc"}])
    grid = Grid(CRS.from_epsg(32646), from_origin(400000, 3100000, 15, 15), 700, 600)
    idx = np.random.default_rng(0).integers(0, 2, (600, 700)).astype(np.uint8)
    path = mapping.write_class_map(tmp_path / "m.tif", idx, grid, table)
    assert "ERROR" not in capfd.readouterr().err
    with rasterio.open(path) as src:
        assert src.colormap(1)[11] == (17, 34, 51, 255) and src.colormap(1)[12] == (170, 187, 204, 255)
        assert src.overviews(1) and src.read(1)[0, :3].tolist() == (idx[0, :3] + 11).tolist()


def test_a_cog_is_copied_under_a_bounded_gdal_cache_whatever_the_callers(tmp_path, monkeypatch):
    """A writer's COG copy (its overviews) runs with GDAL's block cache at ``COG_CACHE_MB`` whatever cache is set
    around it, or none: notebook 07's six writers close after its own bounded cache is gone, and GDAL's default, 5 %
    of the machine's memory, took the copy of an 8000-px stack to 1,538 MB. The file is the same."""
    import rasterio.shutil
    from rasterio.env import get_gdal_config

    from lithocore.outputs import COG_CACHE_MB, GeoTiffWriter

    seen, copy = [], rasterio.shutil.copy

    def spy(*args, **kwargs):
        seen.append(int(get_gdal_config("GDAL_CACHEMAX")))
        return copy(*args, **kwargs)

    monkeypatch.setattr(rasterio.shutil, "copy", spy)
    grid = Grid(CRS.from_epsg(32646), from_origin(400000, 3100000, 15, 15), 300, 280)
    data = np.random.default_rng(1).random((1, 280, 300)).astype(np.float32)
    with rasterio.Env(GDAL_CACHEMAX=3 * 2**30), GeoTiffWriter(tmp_path / "a.tif", grid, 1, "float32", cog="average") as w:
        w.write(data)
    with GeoTiffWriter(tmp_path / "b.tif", grid, 1, "float32", cog="average") as w:
        w.write(data)
    assert seen == [COG_CACHE_MB * 2**20] * 2
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        assert np.array_equal(a.read(), b.read()) and a.overviews(1) == b.overviews(1)


@pytest.mark.parametrize("cog", [None, "average"])
def test_a_geotiff_written_in_two_runs_is_the_one_written_in_one(tmp_path, cog):
    """A writer given a working file (``work``) keeps it when its block fails, with what :meth:`flush` put on disk;
    a writer with ``resume`` continues it, and the file is the one written in one go (pixels, tags, band names,
    overviews); the working file is gone after. A working file of another grid is not continued."""
    from lithocore.outputs import GeoTiffWriter

    grid = Grid(CRS.from_epsg(32646), from_origin(400000, 3100000, 15, 15), 300, 280)
    data = np.random.default_rng(1).random((2, 280, 300)).astype(np.float32)
    opts = dict(band_names=["a", "b"], tags=dict(what="test"), cog=cog)
    with GeoTiffWriter(tmp_path / "one.tif", grid, 2, "float32", **opts) as w:
        w.write(data)
    work = tmp_path / "partial" / "two.tif"
    with pytest.raises(RuntimeError):
        with GeoTiffWriter(tmp_path / "two.tif", grid, 2, "float32", work=work, **opts) as w:
            w.write(data[:, :128])
            w.flush()
            raise RuntimeError("stopped")
    assert work.is_file() and not (tmp_path / "two.tif").exists()
    again = GeoTiffWriter(tmp_path / "two.tif", grid, 2, "float32", work=work, resume=True, **opts)
    assert again.continuable()
    with again as w:
        w.write(data[:, 128:], 128)
    assert not work.exists()
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "two.tif") as b:
        assert np.array_equal(a.read(), b.read()) and a.tags() == b.tags() and a.descriptions == b.descriptions
        assert a.overviews(1) == b.overviews(1) and a.profile.get("compress") == b.profile.get("compress")
    with pytest.raises(RuntimeError), GeoTiffWriter(tmp_path / "two.tif", grid, 2, "float32", work=work, **opts):
        raise RuntimeError("stopped")
    wider = Grid(grid.crs, grid.transform, 301, 280)
    assert not GeoTiffWriter(tmp_path / "two.tif", wider, 2, "float32", work=work, resume=True, **opts).continuable()


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
    classes, conf = mapping.map_array(model, stack, np.ones((77, 101), bool), [0] * 3, [1] * 3, max_core=32,
                                      progress=False)
    assert classes.shape == (77, 101) and classes.max() < 4 and np.all((conf > 0) & (conf <= 1))


def test_model_built_for_a_tile_maps_a_whole_scene_in_one_window():
    """Training fixes the input size; mapping rebuilds the network for any size with the same weights."""
    keras = pytest.importorskip("keras")
    from lithocore.model import any_size, build_fcn8s

    keras.utils.set_random_seed(0)
    model = build_fcn8s(3, 4, width=1 / 16, fc=16, tile=64, upsampling="bilinear")
    x = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype(np.float32)
    free = any_size(model)
    assert np.array_equal(np.asarray(free.predict_on_batch(x)), np.asarray(model.predict_on_batch(x)))
    stack = np.random.default_rng(1).standard_normal((3, 90, 140)).astype(np.float32)
    classes, _ = mapping.map_array(model, stack, np.ones((90, 140), bool), [0] * 3, [1] * 3, progress=False)
    assert classes.shape == (90, 140) and classes.max() < 4


def test_class_maps_are_cloud_optimised_with_overviews(tmp_path):
    table = ClassTable.from_list([{"id": 3, "name": "a", "colour": "#ff0000"}, {"id": 5, "name": "b", "colour": "#0000ff"}])
    grid = Grid(CRS.from_epsg(32646), from_origin(400000, 3100000, 15, 15), 1500, 1200)
    idx = (np.indices((1200, 1500)).sum(0) // 200 % 2).astype(np.uint8)
    path = mapping.write_class_map(tmp_path / "m.tif", idx, grid, table)
    with rasterio.open(path) as src:
        assert src.overviews(1) and src.profile["tiled"] and src.colormap(1)[5][:3] == (0, 0, 255)
        assert src.tags()["class_3"] == "a"
    assert (tmp_path / "m.qml").is_file() and (tmp_path / "m_legend.png").stat().st_size > 2000


def test_stripe_ratio_finds_window_seams():
    """A map with a class change forced onto every 64th column scores well above a map without."""
    from scipy import ndimage

    from lithocore.metrics import stripe_ratio

    rng = np.random.default_rng(0)
    geology = (ndimage.gaussian_filter(rng.standard_normal((400, 400)), 12) > 0).astype(np.uint8)
    striped = geology.copy()
    striped[:, 64::64] = 1 - striped[:, 64::64]  # a one-pixel dyke of the other class every 64 px
    clean = stripe_ratio(geology, period=64)
    assert 0.5 < clean < 2.0
    assert stripe_ratio(striped, period=64) > 5 * clean
    assert stripe_ratio(striped, period=(64, 64), offset=32) < stripe_ratio(striped, period=64)
    # a map's window borders need not be a grid: the same columns given as lines, and one line off them
    grid = {"rows": list(range(0, 400, 64)), "cols": list(range(0, 400, 64))}
    assert stripe_ratio(striped, lines=grid) == stripe_ratio(striped, period=64)
    assert stripe_ratio(striped, lines=grid, offset=32) == stripe_ratio(striped, period=64, offset=32)
    one = {"rows": [], "cols": [192]}
    assert stripe_ratio(striped, lines=one) > 5 * stripe_ratio(geology, lines=one)


def test_one_process_reads_every_window_through_one_open_file(tmp_path, monkeypatch):
    """Mapping in this process opens the stack file once for all its windows (a StackFile, whose cache holds a row
    of the file's blocks), not once a window: a forest's thin strips would decompress each block once per strip
    (at 20000 px a block row took 17.6-18.4 s so, 1.3-1.8 s through one file). The map is the forest's own."""
    from sklearn.ensemble import RandomForestClassifier

    from lithocore import forest

    rng = np.random.default_rng(2)
    H, W = 150, 170
    stack = rng.standard_normal((3, H, W)).astype(np.float32)
    grid = Grid(CRS.from_epsg(32646), from_origin(400000, 3100000, 15, 15), W, H)
    path = write_geotiff(tmp_path / "stack.tif", stack, grid)
    table = ClassTable.from_list([{"id": i + 1, "name": f"c{i}"} for i in range(2)])
    labels = (stack[0] > 0).astype(np.uint8)
    rf = RandomForestClassifier(n_estimators=5, random_state=0).fit(stack.reshape(3, -1).T, labels.ravel())
    opened, rasterio_open = [], rasterio.open

    def counted(fp, *args, **kwargs):
        if str(fp) == str(path.resolve()) or str(fp) == str(path):
            opened.append(fp)
        return rasterio_open(fp, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", counted)
    res = mapping.map_geotiff(rf, path, tmp_path / "out", table, [0] * 3, [1] * 3, max_core=32, margin=0,
                              progress=False)
    assert res["windows"] > 20 and len(opened) <= 3  # its size, then the file once for every window
    classes, _ = mapping.read_class_map(res["classes"], table)
    assert np.array_equal(classes, forest.predict_forest(rf, stack, np.ones((H, W), bool), progress=False)[0])


def test_distributed_map_equals_the_one_process_map(tmp_path):
    """Mapping on a two-worker LocalCluster writes the same maps, pixel for pixel, as mapping in this process:
    for a network, and for the per-pixel forest of notebook 06 (whose map is also the one
    ``forest.predict_forest`` makes in memory)."""
    keras = pytest.importorskip("keras")
    distributed = pytest.importorskip("distributed")
    from sklearn.ensemble import RandomForestClassifier

    from lithocore import forest
    from lithocore.model import build_fcn8s

    rng = np.random.default_rng(1)
    H, W = 150, 170
    stack = rng.standard_normal((3, H, W)).astype(np.float32)
    stack[:, :5, :7] = np.nan
    grid = Grid(CRS.from_epsg(32646), from_origin(400000, 3100000, 15, 15), W, H)
    path = write_geotiff(tmp_path / "stack.tif", stack, grid)
    table = ClassTable.from_list([{"id": i + 1, "name": f"c{i}"} for i in range(4)])
    keras.utils.set_random_seed(0)
    net = build_fcn8s(3, 4, width=1 / 16, fc=16, tile=64, upsampling="bilinear")
    labels = (np.nan_to_num(stack[0]) > 0).astype(np.uint8) + 2 * (np.nan_to_num(stack[1]) > 0.5)  # classes 0-3
    px = rng.choice(H * W, 3000, replace=False)
    rf = RandomForestClassifier(n_estimators=10, random_state=0).fit(np.nan_to_num(stack.reshape(3, -1)[:, px].T),
                                                                     labels.ravel()[px])
    mask = np.isfinite(stack).all(axis=0)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
            distributed.Client(lc) as client:
        for name, model, kw in (("net", net, dict(max_core=32, margin=32, shifts=1)),
                                ("forest", rf, dict(max_core=64, margin=0, shifts=1, mask=mask))):
            one = mapping.map_geotiff(model, path, tmp_path / f"{name}1", table, [0] * 3, [1] * 3, progress=False,
                                      **kw)
            two = mapping.map_geotiff(model, path, tmp_path / f"{name}2", table, [0] * 3, [1] * 3, progress=False,
                                      cluster=client, **kw)
            assert one["windows"] == two["windows"] > 4
            for k in ("classes", "confidence"):
                with rasterio.open(one[k]) as a, rasterio.open(two[k]) as b:
                    x, y = a.read(1), b.read(1)
                assert np.array_equal(x, y), (name, k)
            with rasterio.open(one["classes"]) as a:
                assert a.read(1)[0, 0] == a.nodata and len(np.unique(a.read(1))) > 2
    classes, _ = mapping.read_class_map(one["classes"], table)
    ref, conf, _ = forest.predict_forest(rf, stack, mask, progress=False)
    assert np.array_equal(classes, ref)
    assert np.allclose(mapping.read_confidence(one["confidence"])[mask], conf[mask], atol=mapping.CONFIDENCE_SCALE)


def test_shifted_passes_are_aligned():
    """For a network that is exactly translation-equivariant (one 3x3 convolution), every shifted pass predicts
    the same thing, so their average must equal the single pass pixel for pixel: any misaligned crop would
    show. (On the FCN-8s the shifts average out its 4-px upsampling imprint.)"""
    keras = pytest.importorskip("keras")

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, keras.layers.Softmax()(keras.layers.Conv2D(4, 3, padding="same")(inp)))
    stack = np.random.default_rng(4).standard_normal((3, 130, 150)).astype(np.float32)
    mask = np.ones((130, 150), bool)
    one, _ = mapping.map_array(model, stack, mask, [0] * 3, [1] * 3, shifts=1, max_core=64, progress=False)
    four, _ = mapping.map_array(model, stack, mask, [0] * 3, [1] * 3, shifts=4, max_core=64, progress=False)
    inside = np.zeros_like(mask)
    inside[1:-1, 1:-1] = True  # the outermost pixels see reflected padding differently when shifted
    assert np.array_equal(one[inside], four[inside])
    with pytest.raises(ValueError, match="margin of at least 32"):
        mapping.map_array(model, stack, mask, [0] * 3, [1] * 3, shifts=4, margin=0, progress=False)


def test_keras_head_matches_argmax_with_ties_and_leaves_the_stack_alone():
    """The in-graph class is numpy's argmax (the first class at the largest probability, ties included) and the
    confidence its probability; pixels with a NaN channel are nodata, and the caller's stack is not written."""
    keras = pytest.importorskip("keras")

    inp = keras.Input((None, None, 4))
    model = keras.Model(inp, keras.layers.Identity()(inp))  # 'probabilities' = the normalised input
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, (4, 96, 128)).astype(np.float32)  # values 0, 1, 2: ties in most pixels
    x[:, 10:20, 30:40] = np.nan
    x[2, 50, 60] = np.inf
    before = x.copy()
    mask = np.ones((96, 128), bool)
    classes, conf = mapping.map_array(model, x, mask, [0] * 4, [1] * 4, shifts=1, progress=False)
    ok = np.isfinite(before).all(axis=0)
    assert np.array_equal(x, before, equal_nan=True)
    assert np.array_equal(classes[ok], np.argmax(before, axis=0)[ok]) and np.allclose(conf[ok], before.max(0)[ok])
    assert (classes[~ok] == NO_LABEL).all() and np.isnan(conf[~ok]).all()


def test_a_softmax_networks_class_and_probability_come_from_its_scores():
    """A network that ends in a softmax (the registry's) is mapped from its scores: the class is the softmax's
    argmax (the first on a tie) and the confidence its largest probability; a network that does not end in a
    softmax is mapped from its outputs as they are."""
    keras = pytest.importorskip("keras")
    from lithocore.framework import start_keras
    from lithocore.model import build_fcn8s, build_unet

    start_keras()
    assert mapping._before_softmax(keras, build_unet(3, 4, width=1 / 16, tile=64)) is not None
    assert mapping._before_softmax(keras, build_fcn8s(3, 4, width=1 / 16, fc=16, tile=64)) is not None
    inp = keras.Input((None, None, 5))
    scores = keras.layers.Identity()(inp)
    net = keras.Model(inp, keras.layers.Softmax(name="softmax")(scores))
    assert mapping._before_softmax(keras, keras.Model(inp, scores)) is None
    rng = np.random.default_rng(2)
    z = (rng.standard_normal((5, 64, 96)) * 3).astype(np.float32)
    z[:, 3, 4] = [1.0, 2.5, 2.5, -1.0, 0.0]  # a tie: the first
    classes, conf = mapping.map_array(net, z, np.ones((64, 96), bool), [0] * 5, [1] * 5, shifts=1, progress=False)
    e = np.exp(z.astype(np.float64) - z.max(0))
    p = e / e.sum(0)
    assert np.array_equal(classes, np.argmax(z, axis=0)) and classes[3, 4] == 1
    np.testing.assert_allclose(conf, p.max(0), rtol=1e-6)


def test_one_pass_by_default_unless_the_upsampling_leaves_an_imprint():
    from lithocore.model import build_fcn8s, build_unet

    unet = build_unet(3, 4, width=1 / 16, tile=64)
    fcn = build_fcn8s(3, 4, width=1 / 16, fc=16, tile=64)
    assert not mapping.leaves_imprint(unet) and mapping.leaves_imprint(fcn)
    assert mapping._shifts(unet, None) == 1 and mapping._shifts(unet, -1) == 1
    assert mapping._shifts(fcn, None) == mapping.DEFAULT_SHIFTS == 4 and mapping._shifts(fcn, 2) == 2


def test_map_array_skips_windows_with_nothing_to_map_and_keeps_the_others():
    class Counting:
        """A pixel-wise model that counts the pixels it was asked to predict."""
        classes_ = np.arange(3)
        seen = 0

        def predict_proba(self, x):
            Counting.seen += len(x)
            return np.eye(3)[(x[:, 0] > 0).astype(int)]

    rng = np.random.default_rng(0)
    stack = rng.normal(size=(2, 256, 256)).astype(np.float32)
    part = np.zeros((256, 256), bool)
    part[10:40, 20:60] = True
    kw = dict(max_core=64, margin=0, shifts=1, progress=False)
    whole, _ = mapping.map_array(Counting(), stack, np.ones_like(part), [0, 0], [1, 1], **kw)
    n_whole, Counting.seen = Counting.seen, 0
    some, _ = mapping.map_array(Counting(), stack, part, [0, 0], [1, 1], **kw)
    assert np.array_equal(some[part], whole[part]) and (some[~part] == NO_LABEL).all()
    assert Counting.seen < n_whole / 4  # only the windows that hold the region were predicted


def test_a_unet_maps_scenes_of_two_sizes_with_one_head():
    """The quick profile's network (bilinear upsampling) maps a second scene of another size with the head cached
    for the first: Keras would trace the head again for any size, which fails in its bilinear upsampling."""
    keras = pytest.importorskip("keras")
    from lithocore.model import any_size, build_unet

    keras.utils.set_random_seed(0)
    model = any_size(build_unet(3, 4, width=1 / 16, tile=64))
    rng = np.random.default_rng(0)
    for shape in ((64, 64), (96, 128)):
        stack = rng.standard_normal((3, *shape)).astype(np.float32)
        classes, _ = mapping.map_array(model, stack, np.ones(shape, bool), [0] * 3, [1] * 3, margin=0,
                                       memory_mb=1e6, progress=False)
        assert classes.shape == shape and classes.max() < 4


def test_window_memory_counts_the_layer_outputs_alive_at_once():
    """A chain of 4-channel convolutions on a 2-channel input holds two outputs at a time (8 floats a pixel); a
    skip from the first to a final concatenation keeps the first alive to the end (16 at the concatenation)."""
    keras = pytest.importorskip("keras")
    layers = keras.layers

    def net(skip: bool):
        x = keras.Input((8, 8, 2))
        c1 = layers.Conv2D(4, 3, padding="same")(x)
        c = c1
        for _ in range(3):
            c = layers.Conv2D(4, 3, padding="same")(c)
        return keras.Model(x, layers.Concatenate()([c1, c]) if skip else c)

    assert mapping.live_floats(net(False)) == 8 * 64
    assert mapping.live_floats(net(True)) == 16 * 64  # every output summed would be 26 a pixel
    assert mapping.bytes_per_pixel(net(True)) == mapping.LIVE_MEMORY_FACTOR * 4 * 16
