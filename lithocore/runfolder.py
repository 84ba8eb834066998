"""The run folder: one place that owns its layout, what each stage's output was made from, and safe writes.

A run folder holds one notebook stage per sub-folder (``01_load_data`` ... ``07_map_to_trust``). Every
result a later stage reads carries a **provenance key**: a hash of what it was made from (the content of the
manifest and of every file it names, and the settings that matter). A stage that finds a result whose key is
not the one it expects makes it again (and says so), never reuses it.

Keys chain: the manifest's content fingerprint -> the fused stack (+ fusion settings) -> the tiles (+ tile
settings) -> the model (+ training settings) -> the class maps (+ mapping settings) -> the comparison.

Every file is written to a temporary name beside its target and renamed into place when complete
(:func:`atomic_path`), with the permissions a normal file gets (readable by others, following the umask), and
the temporary files an interrupted write leaves are removed the next time the same target is written.

Examples
--------
>>> key({"a": 1, "b": [1, 2]}) == key({"b": [1, 2], "a": 1})
True
>>> len(key("x"))
16
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

__all__ = ["STAGES", "RunFolder", "key", "file_digest", "manifest_fingerprint", "atomic_path",
           "write_json", "read_npz", "write_npz", "normal_mode", "run_lock", "RunFolderBusy", "scratch"]

#: The stages, in order: the folder each notebook writes into.
STAGES = ("01_load_data", "02_fuse_sources", "03_build_tiles", "04_train_model", "05_map_scene",
          "06_compare_random_forest", "07_map_to_trust")

_TMP_PREFIX = ".tmp-"


def key(obj: Any) -> str:
    """A short, stable hash of a JSON-able object (dict keys sorted)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


_DIGESTS: dict[tuple, str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """Hash of a file's content (cached in this process by path, size and modification time)."""
    p = Path(path)
    st = p.stat()
    k = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if k not in _DIGESTS:
        h = hashlib.blake2b(digest_size=16)
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        _DIGESTS[k] = h.hexdigest()
    return _DIGESTS[k]


_SIDECARS = (".shx", ".dbf", ".prj", ".cpg", ".aux.xml", ".ovr", ".tfw")


def manifest_fingerprint(manifest: str | os.PathLike) -> str:
    """Content fingerprint of a study area: the manifest's text and the content of every file it names
    (shapefile sidecars and GDAL auxiliary files included). Any edit to any of them changes it."""
    from .manifest import manifest_files

    mpath = Path(manifest).resolve()
    parts = {"manifest": hashlib.blake2b(mpath.read_bytes(), digest_size=16).hexdigest()}
    for f in manifest_files(mpath):
        candidates = [f] + [f.with_suffix(s) for s in _SIDECARS if f.suffix.lower() == ".shp"] + \
                     [Path(str(f) + ".aux.xml"), Path(str(f) + ".ovr")]
        for c in candidates:
            if c.is_file():
                parts[str(c)] = file_digest(c)
    return key(parts)


def normal_mode(path: str | os.PathLike) -> None:
    """Give a file the mode a newly created file gets (0666 less the umask): temporary files are 0600."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it is renamed to ``path``
    (normal permissions), else removed. Leftovers of earlier interrupted writes of ``path`` are removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob(f"{_TMP_PREFIX}{path.name}.*"):
        with contextlib.suppress(OSError):
            if old.is_dir():
                import shutil

                shutil.rmtree(old)
            else:
                old.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        normal_mode(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_failed(exc, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def scratch(parent: str | os.PathLike, kind: str) -> Iterator[Path]:
    """A working folder ``<parent>/.<kind>-<host>-<pid>-<random>`` for one pass, removed when the block ends.

    Working folders of the same ``kind`` in ``parent`` that a process of this host left when it was killed (its
    pid no longer running: an out-of-memory kill, a stopped kernel) are removed first; at province scale one holds
    gigabytes (the scene-sized arrays a cluster's tasks map). Those of a running process, or of another host
    sharing the folder, are left alone.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> with scratch(d, "spill") as work:
    ...     work.parent == d, work.name.startswith(".spill-"), work.is_dir()
    (True, True, True)
    >>> work.exists()
    False
    """
    import shutil
    import socket

    import psutil

    parent, host = Path(parent), socket.gethostname()
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.glob(f".{kind}-*"):
        owner, _, pid = old.name[len(kind) + 2:].rpartition("-")[0].rpartition("-")
        if old.is_dir() and owner == host and pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{kind}-{host}-{os.getpid()}-", dir=parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_failed(exc: OSError, path: str | os.PathLike) -> OSError:
    """An OSError of a failed write that names the file and what to do (a full disk raises ``[Errno 28]`` with no
    path); the half-written file is gone.

    >>> import errno
    >>> str(write_failed(OSError(errno.ENOSPC, "No space left on device"), "/runs/a/stack.tif"))
    '[Errno 28] No space left on device: could not write /runs/a/stack.tif (nothing half-written is left): free some space or give another run_dir'
    """
    what = {28: "free some space or give another run_dir", 30: "the folder is read-only: give another run_dir",
            13: "no permission to write there: give another run_dir", 122: "over the disk quota: free some space"}
    advice = what.get(exc.errno or 0, "check the disk and the folder's permissions")
    return OSError(exc.errno, f"{exc.strerror or exc}: could not write {path} (nothing half-written is left): {advice}")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write strict JSON atomically: numpy values as Python ones, NaN and infinities as ``null`` (JSON has no
    NaN; a bare ``NaN`` breaks other tools' parsers).

    >>> import tempfile, math
    >>> p = write_json(Path(tempfile.mkdtemp()) / "a.json", {"x": float("nan"), "y": [1.5, math.inf]})
    >>> p.read_text().replace(chr(10), "").replace(" ", "")
    '{"x":null,"y":[1.5,null]}'
    """
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_strict(obj), indent=2, allow_nan=False))
    return Path(path)


def _strict(v):
    """``v`` with containers walked, numpy values converted and non-finite floats as None."""
    import math

    if isinstance(v, dict):
        return {str(k) if not isinstance(k, str) else k: _strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    return _strict(_jsonable(v))


class RunFolderBusy(RuntimeError):
    """Another process is running the workbook into this run folder."""


@contextlib.contextmanager
def run_lock(root: str | os.PathLike) -> Iterator[Path]:
    """Hold ``<root>/.lock`` (this process's pid) while the workbook runs into ``root``: a second run into the
    same folder stops at once, naming the holder; a lock left by a process that is gone is taken over.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with run_lock(d):
    ...     try:
    ...         with run_lock(d):
    ...             pass
    ...     except RunFolderBusy as exc:
    ...         print(str(exc).split(":")[0].endswith("is in use by process " + str(os.getpid())))
    True
    """
    import psutil

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lock = root / ".lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            pid = int(lock.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = -1
        if pid > 0 and psutil.pid_exists(pid):
            raise RunFolderBusy(f"{root} is in use by process {pid}: another workbook run writes there; wait for it "
                                f"to finish or use another run folder (--run-dir)") from None
        lock.unlink(missing_ok=True)  # its holder is gone
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{os.getpid()}\n")
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)


def read_npz(path: str | os.PathLike, key: str, *, field: str = "key", only: tuple[str, ...] | None = None
             ) -> dict | None:
    """The arrays of an ``.npz`` file written (:func:`write_npz`) with ``field=key`` (``only``: just those); None
    when it is missing, unreadable (cut off while written) or was made under another key. The key is read first:
    a file made from something else costs one small read, not its arrays.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = Path(tempfile.mkdtemp()) / "a.npz"
    >>> _ = write_npz(path, a=np.arange(3), key="k1")
    >>> read_npz(path, "k1")["a"].tolist(), read_npz(path, "k2"), read_npz(path.with_name("b.npz"), "k1")
    ([0, 1, 2], None, None)
    >>> sorted(read_npz(path, "k1", only=("key",)))
    ['key']
    >>> _ = path.with_name("cut.npz").write_bytes(path.read_bytes()[:40])  # cut off while written
    >>> read_npz(path.with_name("cut.npz"), "k1") is None
    True
    """
    import zipfile
    import zlib

    import numpy as np

    try:
        with np.load(path) as z:
            if str(z[field]) != key:
                return None
            return {k: z[k] for k in (z.files if only is None else only)}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None


def write_npz(path: str | os.PathLike, *, compress: bool = True, **arrays) -> Path:
    """Write arrays to one ``.npz`` file (compressed unless ``compress`` is False), atomically."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            (np.savez_compressed if compress else np.savez)(fh, **arrays)
    return Path(path)


def _jsonable(v):
    import numpy as np

    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return str(v)


@dataclass(frozen=True)
class RunFolder:
    """The layout of a run folder: every result one stage writes and another reads is named here, nowhere else.

    Examples
    --------
    >>> import tempfile
    >>> rf = RunFolder(tempfile.mkdtemp())
    >>> rf.stack_path.parent.name, rf.tiles_path("spatial").name, rf.model_path.name
    ('02_fuse_sources', 'tiles_spatial.npz', 'model.keras')
    """

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root).expanduser().resolve())

    def stage(self, name: str) -> Path:
        """``<root>/<stage>``, created."""
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages: {STAGES}")
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    # --- 02
    @property
    def stack_path(self) -> Path:
        return self.root / "02_fuse_sources" / "fused_stack.tif"

    @property
    def valid_mask_path(self) -> Path:
        """The stack's valid-data mask (one bit a pixel), so that later notebooks need not read the fine bands."""
        return self.root / "02_fuse_sources" / "valid_mask.npz"

    # --- 03
    def tiles_path(self, split: str) -> Path:
        return self.root / "03_build_tiles" / f"tiles_{split}.npz"

    @property
    def folds_path(self) -> Path:
        """The folds of the spatial cross-validation (notebook 03 draws them, notebook 06 uses them)."""
        return self.root / "03_build_tiles" / "folds.npz"

    # --- 04
    @property
    def model_dir(self) -> Path:
        return self.root / "04_train_model"

    @property
    def model_path(self) -> Path:
        return self.model_dir / "model.keras"

    @property
    def model_meta_path(self) -> Path:
        """Written last, when training has finished: a model without it is unfinished and never used."""
        return self.model_dir / "model.json"

    # --- 05
    def class_map_path(self, model: str) -> Path:
        """Notebook 05's class map of a model, named by the model (``unet_classes.tif``)."""
        return self.root / "05_map_scene" / f"{model}_classes.tif"

    def map_metrics_path(self, model: str) -> Path:
        return self.root / "05_map_scene" / f"{model}_metrics.json"

    # --- 06
    @property
    def forest_map_path(self) -> Path:
        """The per-pixel forest's whole-scene map (the paper's protocol), notebook 06."""
        return self.root / "06_compare_random_forest" / "rf_paper_classes.tif"

    @property
    def cv_dir(self) -> Path:
        """Per-fold models and cached fold predictions of the cross-validation."""
        return self.root / "06_compare_random_forest" / "cv"
