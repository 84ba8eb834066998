"""Run the workbook's notebooks in order with papermill, into a run folder.

From the shell (this is what ``make workbook`` does)::

    python -m lithocore.workbook --run-dir runs/default --profile quick
    python -m lithocore.workbook --run-dir runs/lapland --study-area data/central-lapland.yaml
    python -m lithocore.workbook --only 01 -p synthetic_height 256 -p synthetic_width 256

Every notebook gets the parameters it declares (its ``parameters`` cell) from the profile and the command
line; executed notebooks go to ``<run-dir>/notebooks/``, each notebook's figures, GeoTIFFs and JSON to
``<run-dir>/<notebook stem>/``.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import time
from pathlib import Path

from .runfolder import RunFolderBusy, atomic_path, key, run_lock, write_json
from .settings import PROFILES, profile as profile_settings
from .synthetic import SyntheticSpec, generate_study_area

__all__ = ["NOTEBOOK_DIR", "notebooks", "study_area_manifest", "declared_parameters", "check_parameters",
           "run_workbook", "main", "code_version", "data_version"]

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"

def notebooks(directory: str | Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``), in order."""
    return sorted(p for p in Path(directory).glob("[0-9][0-9]_*.ipynb"))


def study_area_manifest(study_area: str = "", *, height: int = 1611, width: int = 1650,
                        coarse_spacing: float = 2000.0, seed: int = 0, cache_dir: str | Path | None = None,
                        progress: bool = True) -> Path:
    """The manifest to load: ``study_area`` when given, else the embedded synthetic area (generated once and
    cached under ``data/generated/`` or ``cache_dir``)."""
    if study_area:
        path = Path(study_area).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: study-area manifest not found")
        return path
    spec = SyntheticSpec(height=height, width=width, coarse_spacing=coarse_spacing, seed=seed)
    out = None if cache_dir is None else Path(cache_dir) / spec.key()
    return generate_study_area(spec, out, progress=progress)


def declared_parameters(nb_path: Path) -> dict[str, str]:
    """The parameters a notebook declares (its ``parameters`` cell): ``{name: type name}``."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            names = {}
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    names[node.target.id] = ast.unparse(node.annotation)
                elif isinstance(node, ast.Assign):
                    names.update({t.id: "" for t in node.targets if isinstance(t, ast.Name)})
            return names
    return {}


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def check_parameters(parameters: dict, todo: list[Path]) -> None:
    """Refuse unknown parameter names (with the nearest known one) and values of the wrong type, before any
    notebook runs."""
    import difflib

    declared: dict[str, str] = {}
    for nb in todo:
        declared.update(declared_parameters(nb))
    faults = []
    for name, value in parameters.items():
        if name == "run_dir":
            continue
        if name not in declared:
            near = difflib.get_close_matches(name, list(declared), n=1, cutoff=0.6)
            faults.append(f"unknown parameter '{name}'" + (f" (did you mean '{near[0]}'?)" if near else "")
                          + (f"; the notebooks run take: {', '.join(sorted(declared))}" if not near else ""))
            continue
        want = _TYPES.get(declared[name])
        if want and (not isinstance(value, want) or (isinstance(value, bool) and bool not in want)):
            faults.append(f"parameter '{name}' must be {declared[name]}, got {value!r} ({type(value).__name__})")
    if faults:
        raise ValueError("; ".join(faults))


def run_workbook(run_dir: str | Path = "runs/default", profile: str = "quick", parameters: dict | None = None,
                 only: list[str] | None = None, notebook_dir: str | Path = NOTEBOOK_DIR,
                 kernel_name: str | None = None, progress: bool = True, force: bool = False) -> dict:
    """Execute the notebooks in order; returns ``{notebook: seconds}`` and writes it to ``<run_dir>/timings.json``.

    ``only`` keeps the notebooks whose name starts with one of the given prefixes (``["01", "02"]``).
    A notebook that fails stops the run; papermill leaves the executed copy, with the error, in the run folder.
    One run at a time in a run folder: a second stops at once (:class:`~lithocore.runfolder.RunFolderBusy`).
    A notebook whose last run succeeded from the same notebook, parameters, ``lithocore`` code, study-area data
    and earlier notebooks, with its outputs still in place, is not run again (0 s; said so): ``force`` runs
    every notebook anyway.
    """
    profile_settings(profile)  # an unknown profile is an error before anything runs
    run_dir = Path(run_dir).expanduser().resolve()
    params = {"profile": profile, **(parameters or {}), "run_dir": str(run_dir)}
    todo = [nb for nb in notebooks(notebook_dir) if not only or any(nb.name.startswith(o) for o in only)]
    if not todo:
        raise FileNotFoundError(f"no notebook in {notebook_dir} matches {only}")
    check_parameters({k: v for k, v in params.items() if k != "profile"}, notebooks(notebook_dir))
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):  # one run at a time in a run folder
        timings = _execute(todo, params, out_dir, kernel_name, progress, force=force)
    write_json(run_dir / "timings.json", timings)
    return timings


def code_version() -> str:
    """A key of the ``lithocore`` package's source: a notebook run with other code is run again."""
    from .runfolder import file_digest

    return key({p.name: file_digest(p) for p in sorted(Path(__file__).resolve().parent.glob("*.py"))})


def data_version(params: dict) -> str | None:
    """A key of the study area's content (:func:`~lithocore.runfolder.manifest_fingerprint`), or None while the
    embedded area is not generated yet (then nothing can be known unchanged)."""
    from .runfolder import manifest_fingerprint
    from .synthetic import default_area_dir

    if params.get("study_area"):
        manifest = Path(params["study_area"]).expanduser().resolve()
    else:
        spec = SyntheticSpec(height=int(params.get("synthetic_height", 1611)), width=int(params.get("synthetic_width", 1650)),
                             coarse_spacing=float(params.get("synthetic_coarse_spacing", 2000.0)),
                             seed=int(params.get("seed", 0)))
        manifest = default_area_dir(spec) / "manifest.yaml"
    return manifest_fingerprint(manifest) if manifest.is_file() else None


def _outputs(stage: Path) -> dict:
    """What a notebook left in its stage folder: ``{relative path: [size, modification time]}``."""
    if not stage.is_dir():
        return {}
    return {str(p.relative_to(stage)): [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(stage.rglob("*"))
            if p.is_file()}


def _execute(todo: list[Path], params: dict, out_dir: Path, kernel_name, progress: bool, force: bool = False) -> dict:
    import papermill as pm

    timings = {}
    record_path = out_dir / "run_keys.json"
    try:
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    except ValueError:
        record = {}
    data, code = data_version(params), code_version()
    upstream = ""
    for i, nb in enumerate(todo, start=1):
        declared = declared_parameters(nb)
        t0 = time.perf_counter()
        bar = dict(desc=f"[{i}/{len(todo)}] {nb.stem}", unit="cell") if progress else False
        given = {k: v for k, v in params.items() if k in declared}
        if "interactive" in declared:  # widgets need a browser; an executed notebook gets static figures
            given.setdefault("interactive", False)
        stage = out_dir.parent / nb.stem
        made_from = [hashlib.blake2b(nb.read_bytes(), digest_size=16).hexdigest(), given, code, upstream]
        this = key(made_from + [data])
        last = record.get(nb.name) or {}
        if not force and data is not None and last.get("key") == this and (out_dir / nb.name).is_file() \
                and last.get("outputs") == _outputs(stage):
            timings[nb.name] = 0.0
            upstream = key([this, last["outputs"]])
            if progress:
                print(f"{nb.stem}: unchanged since its last run (same notebook, parameters, code, data and earlier "
                      f"notebooks; its outputs in place): kept {out_dir / nb.name}", flush=True)
            continue
        record.pop(nb.name, None)
        write_json(record_path, record)
        # the executed copy is written under a temporary name and renamed when complete, or when a cell failed
        # (the copy with the error is what to read); a failed write (a full disk) leaves none half-written
        failed = None
        with atomic_path(out_dir / nb.name, suffix=".ipynb") as partial:
            try:
                # the kernel's own log at errors only: it warns on every start that a local kernel talks over TCP
                pm.execute_notebook(str(nb), str(partial), parameters=given, cwd=str(nb.parent),
                                    kernel_name=kernel_name, progress_bar=bar,
                                    extra_arguments=["--IPKernelApp.log_level=ERROR"])
            except pm.PapermillExecutionError as exc:
                failed = exc  # raised once the copy with the error is in place
        if failed is not None:
            raise failed
        if data is None:  # the embedded area was generated by this notebook: its content is known from now on
            data = data_version(params)
            this = key(made_from + [data])
        record[nb.name] = dict(key=this, outputs=_outputs(stage))
        upstream = key([this, record[nb.name]["outputs"]])  # a notebook run again makes its followers run again
        write_json(record_path, record)
        timings[nb.name] = round(time.perf_counter() - t0, 1)
        if progress:
            print(f"{nb.stem}: done in {timings[nb.name]:.0f} s -> {out_dir / nb.name}", flush=True)
    return timings


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lithocore.workbook", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default="runs/default", help="folder for executed notebooks and results")
    ap.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    ap.add_argument("--study-area", default="", help="manifest of a study area (default: the embedded synthetic one)")
    ap.add_argument("--only", nargs="*", help="run only notebooks whose names start with these prefixes")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override a notebook parameter (Python literal)")
    ap.add_argument("--force", action="store_true",
                    help="run every notebook, even those unchanged since their last run in this run folder")
    args = ap.parse_args(argv)
    params = {k: _value(v) for k, v in args.parameter}
    if args.study_area:
        params["study_area"] = str(Path(args.study_area).resolve())
    try:
        check_parameters(params, notebooks())
    except ValueError as exc:
        ap.error(str(exc))
    try:
        timings = run_workbook(args.run_dir, args.profile, params, only=args.only, force=args.force)
    except RunFolderBusy as exc:
        ap.exit(2, f"error: {exc}\n")
    for nb, s in timings.items():
        print(f"{nb:40s} {s:8.1f} s")
    print(f"results in {Path(args.run_dir).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
