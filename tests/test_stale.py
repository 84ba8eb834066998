"""Nothing stale, nothing half-written: each stage's result carries what it was made from, and a later stage
recomputes (or refuses) instead of reusing a result made from something else."""

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from lithocore.settings import resolve
from lithocore.registry import model_name
from lithocore import plan as lplan
from lithocore import fusion, stages
from lithocore import training as TR
from lithocore.data import load_study_area
from lithocore.outputs import write_geotiff
from lithocore.runfolder import RunFolder, atomic_path, manifest_fingerprint, scratch

from .test_data import _copy_manifest

TINY = dict(tile=32, stride=16, n_samples=24, epochs=1, steps_per_epoch=1)


@pytest.fixture()
def manifest(small_manifest, tmp_path) -> Path:
    man = _copy_manifest(small_manifest, tmp_path)
    man.pop("truth", None)
    path = tmp_path / "area.yaml"
    path.write_text(yaml.safe_dump(man, sort_keys=False))
    return path


def _edit(manifest: Path, change) -> None:
    man = yaml.safe_load(manifest.read_text())
    change(man)
    manifest.write_text(yaml.safe_dump(man, sort_keys=False))


def test_fingerprint_follows_content(manifest, tmp_path):
    before = manifest_fingerprint(manifest)
    assert manifest_fingerprint(manifest) == before
    _edit(manifest, lambda m: m["labels"]["classes"].reverse())
    assert manifest_fingerprint(manifest) != before


def test_edited_manifest_gives_new_stack_and_new_model(manifest, tmp_path, capsys):
    run = tmp_path / "run"
    _, stack, names, _ = stages.fused_stack(run, manifest)
    assert len(names) == 9
    _, meta = stages.load_or_train(run, manifest, **TINY)
    _edit(manifest, lambda m: m.update(coarse=[]))  # the magnetics dropped
    _, stack2, names2, _ = stages.fused_stack(run, manifest)
    assert "magnetic" not in names2 and len(names2) == 8
    assert "was made from another study area" in capsys.readouterr().out
    _, meta2 = stages.load_or_train(run, manifest, **TINY)
    assert meta2["channels"] == names2 and meta2["model_key"] != meta["model_key"]
    assert "training again" in capsys.readouterr().out


def test_new_tile_settings_give_new_tiles(manifest, tmp_path, capsys):
    run = tmp_path / "run"
    area = load_study_area(manifest)
    cfg = resolve("quick", **TINY)
    a = stages.training_tiles(run, area, cfg, "paper")
    assert stages.training_tiles(run, area, cfg, "paper").info["tiles_key"] == a.info["tiles_key"]  # reused
    b = stages.training_tiles(run, area, resolve("quick", **(TINY | dict(n_samples=40, stride=8))), "paper")
    assert len(b.train) + len(b.val) == 40 != len(a.train) + len(a.val)
    assert "sampling again" in capsys.readouterr().out


def test_reordered_class_table_never_maps_with_the_old_legend(manifest, tmp_path):
    run = tmp_path / "run"
    _, meta = stages.load_or_train(run, manifest, **TINY)
    old_model = tmp_path / "old"
    RunFolder(run).model_dir.rename(old_model)
    _edit(manifest, lambda m: m["labels"]["classes"].reverse())
    with pytest.raises(ValueError, match="class table"):
        stages.load_or_train(run, manifest, model_path=old_model / "model.keras", **TINY)
    _, meta2 = stages.load_or_train(run, manifest, **TINY)
    assert [c["id"] for c in meta2["classes"]] == [c["id"] for c in meta["classes"]][::-1]


def test_class_map_remade_when_the_model_changes(manifest, tmp_path, capsys):
    run = tmp_path / "run"
    rf = RunFolder(run)
    classes, scores = stages.model_map(run, manifest, **TINY)
    assert scores["model"] == model_name(json.loads(rf.model_meta_path.read_text()))
    with rasterio.open(rf.class_map_path(scores["model"])) as src:
        first = src.tags()["model_key"]
    assert scores["whole_map"]["pixels"] > 0 and scores["trust"] is not None
    stages.model_map(run, manifest, **TINY)  # same model: the map is reused
    assert "mapping again" not in capsys.readouterr().out
    stages.model_map(run, manifest, **(TINY | dict(epochs=2)))  # another model: the old map is not paired with it
    with rasterio.open(rf.class_map_path(scores["model"])) as src:
        assert src.tags()["model_key"] != first
    out = capsys.readouterr().out
    assert "training again" in out and "mapping again" in out


def test_scores_of_an_earlier_map_are_never_paired_with_a_new_one(manifest, tmp_path, capsys):
    """Notebook 05 stopped after writing a new map but before its scores: the scores on disk belong to the map
    before. They record that map's id, so the next stage scores again instead of reading them."""
    run = tmp_path / "run"
    rf = RunFolder(run)
    _, scores = stages.model_map(run, manifest, **TINY)
    metrics_path = rf.map_metrics_path(scores["model"])
    stale = json.loads(metrics_path.read_text())
    stale["mapping"]["map_id"] = "an-earlier-map"
    stale["whole_map"]["mean_iou"] = -1.0
    metrics_path.write_text(json.dumps(stale))
    capsys.readouterr()
    _, again = stages.model_map(run, manifest, **TINY)
    assert "was computed from another map" in capsys.readouterr().out
    assert again["whole_map"]["mean_iou"] >= 0
    with rasterio.open(rf.class_map_path(scores["model"])) as src:
        assert json.loads(metrics_path.read_text())["mapping"]["map_id"] == src.tags()["map_id"]


def test_notebook_04_reuses_a_model_made_from_the_same_inputs(manifest, tmp_path, capsys):
    run = tmp_path / "run"
    area = load_study_area(manifest)
    _, stack, channels, units = stages.fused_stack(run, manifest, area=area)
    cfg = lplan.run_config("quick", area, **TINY)
    _, meta, history = stages.train_model(run, area, stack, channels, units, cfg, reuse=True, verbose=0)
    assert "reused" not in capsys.readouterr().out
    _, again, history2 = stages.train_model(run, area, stack, channels, units, cfg, reuse=True, verbose=0)
    assert "reused" in capsys.readouterr().out and again["model_key"] == meta["model_key"] and history2 == history
    from dataclasses import replace

    _, other, _ = stages.train_model(run, area, stack, channels, units, replace(cfg, epochs=2), reuse=True, verbose=0)
    assert "reused" not in capsys.readouterr().out and other["model_key"] != meta["model_key"]


def test_a_later_notebook_maps_with_the_network_it_was_given(manifest, tmp_path, capsys):
    """Notebooks 05 and 06 (``Run.model``) map with notebook 04's model when it is the network the run was given,
    and train the one asked for when notebook 04's is another: a value given to the workbook reaches them all."""
    from lithocore.run import Run

    run_dir = tmp_path / "run"
    area = load_study_area(manifest)
    _, stack, channels, units = stages.fused_stack(run_dir, manifest, area=area)
    cfg = lplan.run_config("quick", area, **TINY)
    stages.train_model(run_dir, area, stack, channels, units, cfg, verbose=0)
    tiles = {k: TINY[k] for k in ("tile", "stride", "n_samples")}
    given = dict(epochs=TINY["epochs"], steps_per_epoch=TINY["steps_per_epoch"])
    _, same = Run.open(run_dir, str(manifest), training=given, **tiles).model()
    assert same["config"]["architecture"] == cfg.architecture and "training again" not in capsys.readouterr().out
    asked = "fcn8s" if cfg.architecture != "fcn8s" else "unet"  # a network not the profile's
    _, other = Run.open(run_dir, str(manifest), training=given | {"architecture": asked}, **tiles).model()
    assert other["config"]["architecture"] == asked and "training again" in capsys.readouterr().out


def test_the_same_seed_trains_the_same_model(manifest, tmp_path):
    """Deterministic with a seed: two trainings of the same settings give the same weights and scores, bit for bit
    (op determinism on; what differs between machines is rounding, not the order of operations)."""
    area = load_study_area(manifest)
    results = []
    for run in ("a", "b"):
        _, stack, channels, units = stages.fused_stack(tmp_path / run, manifest, area=area)
        cfg = lplan.run_config("quick", area, **(TINY | dict(epochs=2, steps_per_epoch=2)))
        model, meta, history = stages.train_model(tmp_path / run, area, stack, channels, units, cfg, verbose=0)
        results.append((model.get_weights(), meta["validation"]["mean_iou"], history["loss"]))
    (wa, sa, la), (wb, sb, lb) = results
    assert sa == sb and la == lb and all(np.array_equal(x, y) for x, y in zip(wa, wb))


def test_notebook_02s_settings_are_the_fallbacks(manifest, tmp_path, capsys):
    run = tmp_path / "run"
    stages.fused_stack(run, manifest)
    assert stages.stack_provenance(run)["fusion_settings"] == fusion.FusionSettings().to_dict()
    paper = fusion.FusionSettings(detail_gain=1.0, detail_smoothing=0.0)
    _, s_paper, _, _ = stages.fused_stack(run, manifest, settings=paper)
    assert "other fusion settings" in capsys.readouterr().out
    _, s_again, _, _ = stages.fused_stack(run, manifest)  # a later notebook follows what notebook 02 chose
    assert np.array_equal(s_again, s_paper, equal_nan=True)
    assert "fusing again" not in capsys.readouterr().out


def test_unfinished_or_corrupt_model_is_never_used(manifest, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    rf = RunFolder(run)
    rf.stage("04_train_model")
    rf.model_path.write_bytes(b"")  # a model cut off while written, no model.json
    model, meta = stages.load_or_train(run, manifest, **TINY)
    assert "did not finish" in capsys.readouterr().out and rf.model_meta_path.is_file()
    assert rf.model_path.stat().st_size > 0

    # an interrupted rerun of a finished run: the old model.json must not vouch for the half-trained model
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(TR, "fit", interrupted)
    area, stack, names, units = stages.fused_stack(run, manifest)
    cfg = lplan.run_config("quick", area, **TINY)
    with pytest.raises(KeyboardInterrupt):
        stages.train_model(run, area, stack, names, units, cfg)
    assert rf.model_path.is_file() and not rf.model_meta_path.exists()


def test_corrupt_resume_checkpoint_restarts_training(manifest, tmp_path, capsys):
    import keras

    from lithocore.model import build_fcn8s
    from lithocore.loaders import TileBatches

    area = load_study_area(manifest)
    stack = np.nan_to_num(area.guide)
    windows = np.array([[0, 0], [32, 32], [64, 64]])
    batches = TileBatches(stack, area.labels, area.mask, windows, 32, 3)
    cfg = resolve("quick", **TINY)
    out = tmp_path / "train"
    (out / "backup").mkdir(parents=True)
    (out / "backup" / "run_key.txt").write_text("k1")
    (out / "backup" / "latest.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n cut off")
    (out / "backup" / "training_metadata.json").write_text('{"epoch": 3')
    (out / "history.csv").write_text("epoch,loss\n0,2.1\n1,1.9\n2,1.8\n")  # the discarded run's epochs
    keras.utils.set_random_seed(0)
    model = build_fcn8s(9, len(area.classes), width=1 / 16, fc=16)
    TR.compile_model(model, len(area.classes), cfg)
    history = TR.fit(model, batches, batches, out, cfg, verbose=0, run_key="k1")
    assert "cannot be read" in capsys.readouterr().out
    assert history["epoch"] == [0.0] and (out / "model.keras").stat().st_size > 0
    assert json.loads((out / "training.json").read_text())["epochs_run"] == 1
    # a checkpoint from another run (other key) is discarded, not resumed
    (out / "backup").mkdir()
    (out / "backup" / "run_key.txt").write_text("other")
    TR.fit(model, batches, batches, out, cfg, verbose=0, run_key="k1")
    assert "checkpoint of another training run" in capsys.readouterr().out


def test_atomic_writes_leave_no_temporary_files_and_normal_modes(tmp_path, small_area):
    target = tmp_path / "x.tif"
    leftover = tmp_path / ".tmp-x.tif.abc123.tif"
    leftover.write_bytes(b"half")  # what a killed process leaves
    write_geotiff(target, np.ones((4, 4), np.float32), small_area.grid.__class__(
        small_area.grid.crs, small_area.grid.transform, 4, 4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tif"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tif"] and target.stat().st_size > 100


def test_a_full_disk_names_the_file_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    """A write that fails on a full disk raises ``[Errno 28]`` with no path: the workbook's error names the file
    and what to do, and neither the temporary file nor a half-written target is left."""
    import errno

    from lithocore.runfolder import write_json

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full)
    from lithocore.runfolder import write_npz

    with pytest.raises(OSError, match=r"No space left on device: could not write .*fold0\.npz .*free some space"):
        write_npz(tmp_path / "fold0.npz", pred=np.zeros(3))
    monkeypatch.setattr(json, "dumps", full)
    with pytest.raises(OSError, match=r"could not write .*trust\.json \(nothing half-written is left\)"):
        write_json(tmp_path / "trust.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_notebook_03s_sampling_options_are_followed(manifest, tmp_path, capsys):
    """Tiles notebook 03 drew with its own options (stratified) are what a later stage trains on, unless that
    stage names other options."""
    run = tmp_path / "run"
    area = load_study_area(manifest)
    cfg = resolve("quick", **TINY)
    drawn = stages.training_tiles(run, area, cfg, "spatial", stratified=True, blocks=3)
    again = stages.training_tiles(run, area, cfg, "spatial")
    assert again.info["tiles_key"] == drawn.info["tiles_key"] and np.array_equal(again.train, drawn.train)
    other = stages.training_tiles(run, area, cfg, "spatial", stratified=False)
    assert other.info["made_from"]["stratified"] is False and "sampling again" in capsys.readouterr().out


def test_one_run_at_a_time_in_a_run_folder(tmp_path):
    """A second workbook run into a folder in use stops at once, naming the holder; a lock whose process is gone
    is taken over."""
    import subprocess
    import sys

    from lithocore.runfolder import RunFolderBusy, run_lock
    from lithocore.workbook import run_workbook

    with run_lock(tmp_path):
        with pytest.raises(RunFolderBusy, match=f"in use by process {os.getpid()}"):
            run_workbook(tmp_path, only=["01"], progress=False)
    assert not (tmp_path / ".lock").exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(gone.stdout)
    with run_lock(tmp_path) as lock:
        assert lock.read_text().strip() == str(os.getpid())


def test_a_killed_pass_leaves_no_working_folder_behind_the_next(tmp_path):
    """A pass killed while its working folder holds spilled arrays (an out-of-memory kill) leaves that folder; the
    next pass of its kind in the same folder removes it, and leaves a running pass's and another host's alone."""
    import subprocess
    import sys

    code = ("import sys, time\nfrom lithocore.runfolder import scratch\n"
            "with scratch(sys.argv[1], sys.argv[2]) as w:\n"
            "    (w / '0.npy').write_bytes(bytes(1000))\n    print(w, flush=True)\n    time.sleep(120)\n")
    passes = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), kind], stdout=subprocess.PIPE, text=True)
              for kind in ("spill", "spill", "map")]
    try:
        killed, running, other_kind = [Path(p.stdout.readline().strip()) for p in passes]
        passes[0].kill()
        passes[0].wait()
        passes[2].kill()
        passes[2].wait()
        elsewhere = tmp_path / ".spill-another-host-1-abc"
        elsewhere.mkdir()
        assert killed.is_dir() and (killed / "0.npy").is_file()
        with scratch(tmp_path, "spill") as work:
            assert work.is_dir() and work.name.startswith(f".spill-{socket.gethostname()}-{os.getpid()}-")
            assert not killed.exists()
            assert running.is_dir() and elsewhere.is_dir() and other_kind.is_dir()
        assert not work.exists()
    finally:
        for p in passes:
            p.kill()
            p.wait()


@pytest.mark.notebook
def test_a_rerun_with_nothing_changed_runs_nothing(small_manifest, tmp_path, capsys):
    """`make workbook` twice: the second run keeps every notebook whose notebook, parameters, code, data and
    earlier notebooks are unchanged and whose outputs are in place; an output removed, or `force`, runs it again."""
    from lithocore.workbook import run_workbook

    params = dict(study_area=str(small_manifest), tile_size=32, cv_folds=2, cv_block=64)
    first = run_workbook(tmp_path, parameters=params, only=["01"])
    assert first["01_load_data.ipynb"] > 0
    capsys.readouterr()
    assert run_workbook(tmp_path, parameters=params, only=["01"]) == {"01_load_data.ipynb": 0.0}
    assert "01_load_data: unchanged since its last run" in capsys.readouterr().out
    (tmp_path / "01_load_data" / "study_area.json").unlink()  # an output gone: the notebook runs again
    assert run_workbook(tmp_path, parameters=params, only=["01"])["01_load_data.ipynb"] > 0
    assert (tmp_path / "01_load_data" / "study_area.json").is_file()
    assert run_workbook(tmp_path, parameters=params | {"cv_folds": 3}, only=["01"])["01_load_data.ipynb"] > 0
