"""Training a network: compilation, checkpoints that resume, history, validation scores.

The two profiles (their table: :data:`lithocore.settings.PROFILES`; the measurements that chose them:
``benchmarks/README.md``):

* ``paper``: full width (fc 4096), 256-pixel tiles, stride 20, 1000 samples, batch 5, SGD with momentum 0.9,
  learning rate 1e-4, the loss *summed* over the training pixels as the paper describes, with the gradient norm
  clipped to 1 (without, the summed loss diverges), 7000 iterations (100 epochs of 70 steps), 10 steps per
  compiled call. A GPU job.
* ``quick``: the U-Net with flips and quarter turns, Adam at 1e-3 on the pixel-mean loss with class weights,
  the bilinear decoder, 16 epochs: the whole workbook within 15 minutes on 2 CPU cores.

The model kept is the last epoch's, not the best on validation: the validation region is also what the
scores are reported on, and choosing on it would flatter them. A cross-validation fold's network may instead keep
the epoch of lowest loss on an inner validation area of its own training side (``TrainingConfig.inner_validation``;
measured worse on every area tried, so off: ``benchmarks/README.md``).

Training resumes after an interruption with nothing lost (``keras.callbacks.BackupAndRestore``, two
checkpoints kept), writes the model after every epoch (to a temporary file renamed into place) and appends the
history to a CSV file. A resume checkpoint is used only by the run it was made for (same stack, tiles and
settings: its key); an unreadable one (interrupted while written) is reported and training starts again.
The model's ``model.json`` is written last, by :func:`lithocore.stages.train_model`: a ``model.keras`` without
it is unfinished and never used for mapping.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .area import NO_LABEL
from .framework import start_keras
from .metrics import confusion_matrix, scores
from .runfolder import atomic_path, write_json
from .settings import TrainingConfig
from .tiles import both_map, window_map

__all__ = ["compile_model", "fit", "evaluate_tiles", "train_on_windows", "read_history", "clear_run",
           "save_bundle", "load_bundle", "data_parallel", "seed_everything", "assess_model", "private_python_random",
           "epoch_windows"]


def data_parallel(batch_size: int, devices: int | None = None):
    """A context in which a model built, compiled and trained is *data-parallel* over all visible devices (or the
    first ``devices``): Keras 3's distribution API (``keras.distribution.DataParallel``, JAX backend) replicates
    the weights on every device and splits each batch between them. Several GPUs train one model this way; on a
    CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` simulates two devices (the test does).

    With one device, or another backend, it changes nothing (a null context). A batch that does not split evenly
    (the paper's 5 on 2 devices) is said and trained on one device. Yields the distribution (or None).
    """
    import contextlib

    keras = start_keras()

    if keras.backend.backend() != "jax":
        return contextlib.nullcontext(None)
    found = keras.distribution.list_devices()
    found = found[:devices] if devices else found
    if len(found) < 2:
        return contextlib.nullcontext(None)
    if batch_size % len(found):
        print(f"data-parallel training needs a batch size that {len(found)} devices share evenly; {batch_size} does "
              f"not, so training runs on one device (give a batch size of {len(found) * max(1, batch_size // len(found))})")
        return contextlib.nullcontext(None)
    dist = keras.distribution.DataParallel(devices=found)

    @contextlib.contextmanager
    def scope():
        with dist.scope():
            yield dist
    return scope()


def compile_model(model, n_classes: int, cfg: TrainingConfig, class_weights=None):
    """Compile with the configured optimiser and :class:`~lithocore.model.PixelCrossEntropy`."""
    keras = start_keras()

    from .model import PixelCrossEntropy, masked_accuracy

    if cfg.optimizer == "sgd":
        opt = keras.optimizers.SGD(learning_rate=cfg.learning_rate, momentum=cfg.momentum, clipnorm=cfg.clipnorm)
    elif cfg.optimizer == "adam":
        opt = keras.optimizers.Adam(learning_rate=cfg.learning_rate, clipnorm=cfg.clipnorm)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}: 'sgd' or 'adam'")
    loss = PixelCrossEntropy(n_classes, mode=cfg.loss_mode, class_weights=class_weights)
    model.compile(optimizer=opt, loss=loss, metrics=[masked_accuracy],
                  steps_per_execution=max(1, int(cfg.steps_per_execution)))
    return model


def _keras_callbacks():
    keras = start_keras()

    class SafeBackupAndRestore(keras.callbacks.BackupAndRestore):
        """Resume from the checkpoint when it is readable; otherwise say so and start from scratch. The history
        file keeps only the epochs before the one training resumes at (none when it starts again)."""

        def __init__(self, backup_dir, history_csv, **kwargs):
            super().__init__(backup_dir, **kwargs)
            self.history_csv = Path(history_csv)

        def on_train_begin(self, logs=None):
            try:
                super().on_train_begin(logs)
            except Exception as exc:  # h5py, OSError, JSON: a checkpoint cut off while it was written
                print(f"the resume checkpoint in {self.backup_dir} cannot be read ({type(exc).__name__}: {exc}); "
                      f"training starts again from the first epoch")
                shutil.rmtree(self.backup_dir, ignore_errors=True)
                self.model._initial_epoch = 0
            _keep_epochs(self.history_csv, int(getattr(self.model, "_initial_epoch", 0) or 0))

    class AtomicCheckpoint(keras.callbacks.Callback):
        """Save the model after every epoch into a temporary file renamed into place: never a half-written file."""

        def __init__(self, path):
            super().__init__()
            self.path = Path(path)

        def on_epoch_end(self, epoch, logs=None):
            with atomic_path(self.path) as tmp:
                self.model.save(tmp)

    return SafeBackupAndRestore, AtomicCheckpoint


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and the backend (``keras.utils.set_random_seed``) and, under TensorFlow, make its ops
    deterministic (``tf.config.experimental.enable_op_determinism``: reductions and scatters in a fixed order), so
    the same seed trains the same model on the same machine, run after run. (Another CPU may still round
    differently: its kernels use other instructions.)"""
    keras = start_keras()

    keras.utils.set_random_seed(int(seed))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


@contextlib.contextmanager
def private_python_random(seed: int):
    """Keras draws the seeds of initialisers and dropout layers created without one from Python's *global*
    ``random`` (``keras.src.random.seed_generator.make_default_seed``). On a Dask worker other threads (the
    event loop's heartbeats and retries) draw from it too, at moments that vary from run to run, so the same seed
    built another network. Inside this context Keras draws from a ``random.Random(seed)`` of its own: the same
    numbers the seeded global generator gives when nothing else draws from it, whatever other threads do."""
    try:
        from keras.src.random import seed_generator
    except ImportError:  # another Keras layout: nothing to isolate
        yield
        return
    shared = seed_generator.python_random
    seed_generator.python_random = random.Random(int(seed))
    try:
        yield
    finally:
        seed_generator.python_random = shared


def fit(model, train_batches, val_batches, out_dir: str | Path, cfg: TrainingConfig, *, verbose: int | str = "auto",
        run_key: str = "", choose_best: bool = False):
    """Train with checkpoints every epoch; an interrupted run called again (same ``run_key``) resumes where it
    stopped. A checkpoint left by a run with another key is discarded. ``choose_best``: the weights of the epoch
    with the lowest validation loss are kept (and saved), not the last epoch's (after a resume: the best of the
    epochs run since).

    Writes ``model.keras`` (after every epoch), ``history.csv`` and ``training.json`` (configuration and
    seconds) into ``out_dir``. Returns the history as a dict of lists (all epochs, resumed ones included).
    """
    keras = start_keras()

    SafeBackupAndRestore, AtomicCheckpoint = _keras_callbacks()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backup = out / "backup"
    csv = out / "history.csv"
    key_file = backup / "run_key.txt"
    if backup.exists() and (not key_file.is_file() or key_file.read_text() != run_key):
        print(f"{backup} holds the checkpoint of another training run (other stack, tiles or settings): discarded")
        shutil.rmtree(backup, ignore_errors=True)
    if not backup.exists() and csv.exists():
        csv.unlink()  # a run is being done from scratch: start a fresh history
    backup.mkdir(parents=True, exist_ok=True)
    key_file.write_text(run_key)
    callbacks = [
        SafeBackupAndRestore(str(backup), csv, double_checkpoint=True, delete_checkpoint=True),
        AtomicCheckpoint(out / "model.keras"),
        keras.callbacks.CSVLogger(str(csv), append=True),
        keras.callbacks.TerminateOnNaN(),
    ]
    best = None
    if choose_best and val_batches is not None:
        best = keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.epochs, restore_best_weights=True)
        callbacks.append(best)
    t0 = time.perf_counter()
    model.fit(train_batches, validation_data=val_batches, epochs=cfg.epochs, steps_per_epoch=cfg.steps_per_epoch,
              callbacks=callbacks, verbose=verbose)
    seconds = time.perf_counter() - t0
    chosen = None
    if best is not None and best.best_weights is not None:  # restored at the end of training: the file says so too
        chosen = int(best.best_epoch)  # counted as history.csv counts (from 0; a resumed run's epochs included)
        with atomic_path(out / "model.keras") as tmp:
            model.save(tmp)
    shutil.rmtree(backup, ignore_errors=True)
    history = read_history(csv)
    write_json(out / "training.json", dict(config=asdict(cfg), seconds=round(seconds, 1),
                                           epochs_run=len(history.get("epoch", [])), epoch_kept=chosen))
    return history


def _keep_epochs(csv: Path, n: int) -> None:
    """Keep the history rows of the first ``n`` epochs (the ones a resumed training run keeps), atomically."""
    if not csv.is_file():
        return
    lines = csv.read_text().splitlines(keepends=True)
    if n == 0 or len(lines) <= 1:
        csv.unlink()
        return
    kept = lines[:1] + [ln for ln in lines[1:] if ln.split(",", 1)[0].strip().isdigit()
                        and int(ln.split(",", 1)[0]) < n]
    if len(kept) != len(lines):
        with atomic_path(csv) as tmp:
            Path(tmp).write_text("".join(kept))


def read_history(csv: str | Path) -> dict:
    """The CSV history as a dict of lists."""
    import csv as _csv

    with open(csv, newline="") as fh:
        rows = list(_csv.DictReader(fh))
    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):  # Keras writes "NA" for a value it did not compute
            return float("nan")

    return {k: [num(r[k]) for r in rows] for k in (rows[0].keys() if rows else [])}


def evaluate_tiles(model, batches, class_names: list[str]) -> dict:
    """Scores (:func:`lithocore.metrics.scores`) over the labelled pixels of every tile."""
    n = len(class_names)
    cm = np.zeros((n, n), dtype=np.int64)
    for i in range(len(batches)):
        x, y = batches[i]
        pred = np.argmax(np.asarray(model.predict_on_batch(x)), axis=-1)
        ref = np.where(y < 0, NO_LABEL, y)
        cm += confusion_matrix(ref, pred, n)
    return scores(cm, class_names) | {"confusion_matrix": cm.tolist()}


def clear_run(out_dir: str | Path) -> None:
    """Forget a training run (its backup, model and history), to start again from scratch."""
    shutil.rmtree(out_dir, ignore_errors=True)


def train_on_windows(stack: np.ndarray, labels: np.ndarray, mask: np.ndarray, windows: np.ndarray,
                     cfg: TrainingConfig, n_classes: int, out_dir: str | Path, *, run_key: str, seed: int = 0,
                     val_windows: np.ndarray | None = None, model=None, verbose: int | str = 0,
                     choose_best: bool = False) -> dict:
    """The one training procedure (notebook 04's model, every fold model, notebook 07's deep candidates): the
    network of ``cfg`` trained on tiles at ``windows``.

    Parameters
    ----------
    stack, labels, mask
        The channels (C, H, W), the class indices (:data:`~lithocore.area.NO_LABEL` where there is none: a fold's
        test side is removed this way) and the valid-data mask.
    windows
        Origins (row, column) of the training tiles, ``cfg.tile`` px square.
    cfg
        Tiles, network and optimiser (:class:`~lithocore.settings.TrainingConfig`).
    n_classes
        Classes of the study area's table (the network's outputs).
    out_dir
        Where the checkpoints and history go (:func:`fit`: a run with the same ``run_key`` resumes there).
    seed
        Added to ``cfg.seed`` for this model (a fold's number), for the weights, the batch order and the flips.
    val_windows
        Tiles scored after every epoch (notebook 04's validation tiles); None: none.
    model
        A network built already (default: built from ``cfg``).
    choose_best
        Keep the epoch with the lowest loss on ``val_windows`` (:func:`fit`), not the last.

    Returns
    -------
    dict
        ``model``, ``stats`` (the channels' mean and sd over the training windows, which normalise its input),
        ``history`` and ``val`` (the validation batches, or None).
    """
    from .fusion import normalisation_stats
    from .loaders import TileBatches
    from .model import build_model
    from .tiles import class_weights

    seen = window_map(labels.shape, windows, cfg.tile)  # strip by strip: no scene-sized map
    stats = normalisation_stats(stack, both_map(seen, mask))
    kw = dict(mean=stats["mean"], std=stats["std"])
    train = TileBatches(stack, labels, mask, epoch_windows(windows, cfg.n_samples), cfg.tile, cfg.batch_size,
                        seed=cfg.seed + seed, augment=cfg.augment, **kw)
    val = None if val_windows is None else TileBatches(stack, labels, mask, val_windows, cfg.tile, cfg.batch_size,
                                                       shuffle=False, **kw)
    seed_everything(cfg.seed + seed)
    with private_python_random(cfg.seed + seed), data_parallel(cfg.batch_size):  # several devices (JAX): one model, each batch split
        if model is None:
            model = build_model(cfg.model_config(stack.shape[0], n_classes))
        weights = class_weights(labels, windows, cfg.tile, n_classes, power=cfg.class_weight_power) \
            if cfg.class_weighting else None
        compile_model(model, n_classes, cfg, class_weights=weights)
        history = fit(model, train, val, out_dir, cfg, verbose=verbose, run_key=run_key, choose_best=choose_best)
    return dict(model=model, stats=stats, history=history, val=val)


def epoch_windows(windows: np.ndarray, n_samples: int) -> np.ndarray:
    """The windows one epoch goes through: all of them, or, where there are fewer than half the profile's
    ``n_samples`` (a small or sparsely labelled scene), all of them repeated up to ``n_samples``, so that a network
    gets as many steps as the profile gives it rather than a handful (measured: 4-14 windows a fold on a 257 x 289
    px scene with 6 % labelled gave 6-18 steps in 6 epochs and fold models that predicted one class). A training
    set of the profile's size (notebook 04's 320 of 400 windows) is left as it is. With augmentation each repeat
    is flipped or turned anew.

    >>> epoch_windows(np.array([[0, 0], [5, 5]]), 5).tolist()
    [[0, 0], [5, 5], [0, 0], [5, 5], [0, 0]]
    >>> len(epoch_windows(np.zeros((320, 2)), 400))
    320
    """
    windows = np.asarray(windows)
    if 0 < len(windows) and 2 * len(windows) < n_samples:
        return np.resize(windows, (int(n_samples), windows.shape[1]))
    return windows


def save_bundle(out_dir: str | Path, model, meta: dict) -> Path:
    """Save ``model.keras`` and ``model.json`` (channels, classes, normalisation, configuration, scores)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.keras") as tmp:
        model.save(tmp)
    write_json(out / "model.json", meta)  # last: its presence says the model is finished
    return out / "model.keras"


def load_bundle(model_path: str | Path):
    """A saved model and the ``model.json`` beside it; loads under any Keras backend."""
    keras = start_keras()

    path = Path(model_path)
    meta_path = path.with_name("model.json")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: saved model not found")
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: the model's metadata (channels, normalisation, classes) is missing")
    return keras.models.load_model(path, compile=False), json.loads(meta_path.read_text())


def assess_model(meta: dict, history: dict | None = None) -> dict:
    """Whether a trained model's scores mean anything: ``{"trustworthy": bool, "reasons": [...]}``.

    Not trustworthy when its tiles were flagged (too few training tiles, classes absent from training or from
    validation: those are not scored), or when it fits its training tiles far better than the validation tiles
    (overfitting: training accuracy more than 0.3 above validation accuracy). Every reason is named.
    """
    reasons = list(meta.get("tile_warnings", []))
    history = history or {}
    tr, va = history.get("masked_accuracy"), history.get("val_masked_accuracy")
    if tr and va and tr[-1] - va[-1] > 0.3:
        reasons.append(f"overfitting: training accuracy {tr[-1]:.2f} against validation accuracy {va[-1]:.2f} "
                       f"in the last epoch")
    return dict(trustworthy=not reasons, reasons=reasons)
