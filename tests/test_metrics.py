import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix as sk_cm, jaccard_score

from lithocore.area import NO_LABEL
from lithocore.metrics import confusion_matrix, scores


def test_against_scikit_learn():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 4, 5000)
    pred = np.where(rng.random(5000) < 0.7, ref, rng.integers(0, 4, 5000))
    cm = confusion_matrix(ref, pred, 4)
    assert np.array_equal(cm, sk_cm(ref, pred, labels=range(4)))
    s = scores(cm)
    assert np.isclose(s["overall_accuracy"], (ref == pred).mean())
    assert np.isclose(s["mean_iou"], jaccard_score(ref, pred, average="macro"))
    assert np.isclose(s["kappa"], cohen_kappa_score(ref, pred))


def test_unlabelled_and_absent_classes():
    ref = np.array([0, 0, 1, NO_LABEL, NO_LABEL])
    pred = np.array([0, 2, 1, 2, 0])
    cm = confusion_matrix(ref, pred, 3)
    assert cm.sum() == 3
    s = scores(cm, ["a", "b", "c"])
    assert s["iou"]["c"] is None  # absent from the reference: not in the mean
    assert np.isclose(s["mean_iou"], (0.5 + 1.0) / 2)


def test_confusion_matrix_counted_in_chunks_is_the_whole_count(monkeypatch):
    """Counted a few hundred pixels at a time (a province's memory), the matrix is the one-pass count."""
    from lithocore import metrics as M

    rng = np.random.default_rng(0)
    n = 5
    ref = rng.integers(0, n + 1, (333, 517)).astype(np.uint8)
    ref[rng.random(ref.shape) < 0.2] = NO_LABEL
    pred = rng.integers(0, n + 1, ref.shape).astype(np.uint8)
    mask = rng.random(ref.shape) < 0.8
    keep = (ref != NO_LABEL) & (ref < n) & (pred < n) & mask
    whole = np.bincount(ref[keep].astype(np.int64) * n + pred[keep], minlength=n * n).reshape(n, n)
    monkeypatch.setattr(M, "_COUNT_CHUNK", 777)
    assert np.array_equal(M.confusion_matrix(ref, pred, n, mask), whole) and whole.sum() > 50000


def test_map_measures_made_strip_by_strip_are_the_whole_scene_ones(monkeypatch):
    """Boundary zone, speckle share, patch counts and the evaluation, made in strips of a few rows (patches that
    cross many seams, diagonal contacts across them), equal the whole-scene definitions."""
    from scipy import ndimage

    from lithocore import metrics as M, tiles

    def zone_whole(labels, width):
        lab = labels.astype(np.int32)
        edge = np.zeros(lab.shape, bool)
        edge[:-1] |= (lab[:-1] != lab[1:]) & (lab[:-1] != NO_LABEL) & (lab[1:] != NO_LABEL)
        edge[1:] |= (lab[:-1] != lab[1:]) & (lab[:-1] != NO_LABEL) & (lab[1:] != NO_LABEL)
        edge[:, :-1] |= (lab[:, :-1] != lab[:, 1:]) & (lab[:, :-1] != NO_LABEL) & (lab[:, 1:] != NO_LABEL)
        edge[:, 1:] |= (lab[:, :-1] != lab[:, 1:]) & (lab[:, :-1] != NO_LABEL) & (lab[:, 1:] != NO_LABEL)
        if width > 1:
            edge = ndimage.binary_dilation(edge, iterations=width - 1)
        return edge & (labels != NO_LABEL)

    def speckle_whole(classes, mask, n, size=5):
        valid = mask & (classes != NO_LABEL)
        counts = np.stack([ndimage.uniform_filter(((classes == k) & valid).astype(np.float32), size) for k in range(n)])
        return float((np.argmax(counts, axis=0)[valid] != classes[valid]).mean())

    def patches_whole(classes, mask, n, min_pixels=10):
        valid = mask & (classes != NO_LABEL)
        total = small = 0
        for k in range(n):
            lab, m = ndimage.label((classes == k) & valid, structure=np.ones((3, 3)))
            if m:
                sizes = np.bincount(lab.ravel())[1:]
                total, small = total + m, small + int((sizes < min_pixels).sum())
        return total, small

    rng = np.random.default_rng(4)
    n = 4
    blobs = ndimage.zoom(rng.integers(0, n, (12, 9)), (9, 11), order=0)[:100, :97].astype(np.uint8)
    speck = rng.random(blobs.shape) < 0.05
    classes = np.where(speck, rng.integers(0, n, blobs.shape), blobs).astype(np.uint8)
    classes[rng.random(blobs.shape) < 0.01] = NO_LABEL
    labels = blobs.copy()
    labels[rng.random(blobs.shape) < 0.3] = NO_LABEL
    mask = rng.random(blobs.shape) < 0.97
    regions = {"a": rng.random(blobs.shape) < 0.5, "whole_map": mask}
    before = M.evaluate_map(classes, labels, mask, list("abcd"), regions=regions, boundary_width=3)
    stripes = [M.stripe_ratio(classes, mask, period=p, offset=o) for p, o in ((8, 0), ((4, 6), 3), (16, 5))]
    assert all(r is not None for r in stripes)
    monkeypatch.setattr(tiles, "STRIP_MB", 0.0002)  # strips of a few rows
    assert len(tiles.row_strips(*classes.shape, 32, 3)) >= 6
    for w in (1, 3):
        assert np.array_equal(M.boundary_zone(labels, w), zone_whole(labels, w))
    assert M.salt_and_pepper(classes, mask, n) == speckle_whole(classes, mask, n) > 0
    got = M.fragments(classes, mask, n)
    assert (got["patches"], got["small_patches"]) == patches_whole(classes, mask, n) and got["small_patches"] > 10
    assert M.evaluate_map(classes, labels, mask, list("abcd"), regions=regions, boundary_width=3) == before
    assert [M.stripe_ratio(classes, mask, period=p, offset=o) for p, o in ((8, 0), ((4, 6), 3), (16, 5))] == stripes


def test_seams_are_told_from_contact_rich_window_borders(tmp_path):
    """The words on a map's stripes. At a scene's two window borders the default area's geology changes 1.53 times
    as often as elsewhere, and its U-Net map 1.83 times (as did the same map made in other windows): within the
    noise, since on lines shifted off the grid this map's ratio reaches 1.44 x the geology's. Told "above" only
    where no such noise covers it; and a seam the windows leave, on a map that follows the geology, is told."""
    from types import SimpleNamespace

    from scipy import ndimage

    from lithocore.compare import stripe_report
    from lithocore.interpret import _stripe_sentence

    g = "window borders"
    measured = dict(ratios={"this map": {g: 1.83}, "geological map": {g: 1.53}}, off_grid_max={"this map": {g: 1.34}},
                    off_grid_relative_max={"geological map": {g: 1.44}})
    assert "within the noise of, the geological map's 1.53 or this map's 1.34 off the grid; 1.20 x the geological " \
           "map's on these lines, up to 1.44 x" in _stripe_sentence(measured)
    assert "look for seams" not in _stripe_sentence(measured)
    measured["off_grid_relative_max"]["geological map"][g] = 1.1
    assert "(above the geological map's 1.53" in _stripe_sentence(measured)
    assert "look for seams" in _stripe_sentence(measured)

    rng = np.random.default_rng(0)
    H, W = 240, 300
    field = ndimage.gaussian_filter(rng.standard_normal((H, W)), 6)
    geology = np.digitize(field, np.quantile(field, [0.25, 0.5, 0.75])).astype(np.uint8)  # patches, contacts all ways
    borders = (96, 176)  # three windows' cores, the outer ones larger (no margin at the scene's edge): not a grid
    for r in borders:  # faults along the window borders: the geology changes more often across those lines
        geology[r:, 40:70] = (geology[r:, 40:70] + 1) % 4
    area = SimpleNamespace(labels=geology, mask=np.ones((H, W), bool))
    windows = {"windows": 3, "core": [96, 300], "borders": {"rows": list(borders), "cols": []}}
    following = geology.copy()
    following[rng.random((H, W)) < 0.01] = 1  # the map: the geology with some speckle, no seam
    report = stripe_report(tmp_path, area, following, windows)
    assert report["off_grid_relative_max"]["geological map"][g] is not None
    assert "look for seams" not in _stripe_sentence(report)
    seamed = following.copy()
    seamed[borders[1], ::4] = (seamed[borders[1], ::4] + 2) % 4  # a seam along the border off any grid of cores
    report = stripe_report(tmp_path, area, seamed, windows)
    assert "look for seams" in _stripe_sentence(report) and "(above the geological map's" in _stripe_sentence(report)
