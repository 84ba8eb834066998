"""The project's own promises: dependency lists agree, notebooks keep their skeleton, README and CI agree."""

import ast
import re
from pathlib import Path

import nbformat
import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_side = {_name(d) for d in project["dependencies"]} | {_name(d) for d in project["optional-dependencies"]["test"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"]
    conda_side = {_name(d) for d in env["dependencies"] if isinstance(d, str)} - {"python", "pip"}
    assert pip_side == conda_side, f"only in pyproject: {pip_side - conda_side}; only in environment.yml: {conda_side - pip_side}"
    assert any(d == "python=3.11" for d in env["dependencies"] if isinstance(d, str))
    assert {"pip": ["-e ."]} in env["dependencies"]


def test_notebooks_numbered():
    names = [nb.name for nb in NOTEBOOKS]
    assert names and all(re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", n) for n in names), names
    assert len({n[:2] for n in names}) == len(names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_skeleton(path):
    nb = nbformat.read(path, as_version=4)
    titles = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
              if line.startswith("# ")]
    assert len(titles) == 1, f"{path.name}: exactly one '# ' title, found {titles}"
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for section in ("## Overview", "## Prerequisites", "## Summary", "## What's next"):
        assert section in text, f"{path.name}: no '{section}' section"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
    for node in ast.parse(params[0].source).body:
        assert isinstance(node, ast.AnnAssign), f"{path.name}: parameters are annotated assignments"
        ast.literal_eval(node.value)  # literals only
    assert all(line.strip() == "" or "#" in line for line in params[0].source.splitlines()), \
        f"{path.name}: every parameter has a comment (its unit or meaning)"
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None, f"{path.name}: committed with outputs"
    code = [c for c in nb.cells if c.cell_type == "code"]
    late = [node for c in code[1:] for node in ast.parse(c.source).body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert not late, f"{path.name}: imports after the Imports cell: {[ast.unparse(n) for n in late]}"
    assert "plain_warnings()" in code[0].source, f"{path.name}: the Imports cell asks for plain warnings"


#: Parameters of one thing that several notebooks use (the network, the forests, the folds): each of those notebooks
#: declares them, so that a value given to the workbook reaches every one (a notebook that lacked one would use the
#: profile's value and train, judge or map something else than the notebook before it).
SHARED = {("04", "05", "06", "07"): ("architecture", "width", "fc", "upsampling", "norm", "class_weighting",
                                     "augment", "epochs", "steps_per_epoch"),
          ("06", "07"): ("n_trees", "max_features", "pixel_fraction", "cv_epochs", "cv_forest_cap"),
          ("01", "03", "06", "07"): ("cv_folds", "cv_block")}


def _parameters(path: Path) -> dict:
    cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    return {n.target.id: (ast.unparse(n.annotation), ast.literal_eval(n.value)) for n in ast.parse(cell.source).body}


def test_notebooks_share_parameters_alike():
    declared = {path.name[:2]: _parameters(path) for path in NOTEBOOKS}
    for group, names in SHARED.items():
        for name in names:
            lacking = [nb for nb in group if name not in declared[nb]]
            assert not lacking, f"parameter '{name}' is not declared by notebook(s) {lacking}"
    by_name: dict[str, dict] = {}
    for nb, params in declared.items():
        for name, typed in params.items():
            by_name.setdefault(name, {})[nb] = typed
    differ = {name: by_nb for name, by_nb in by_name.items() if len(set(by_nb.values())) > 1}
    assert not differ, f"parameters declared with other types or defaults in different notebooks: {differ}"


def test_import_lithocore_has_no_side_effects():
    """``import lithocore`` and the framework-free modules start no deep-learning framework and leave Python's
    warning format alone; the framework starts on an explicit call."""
    import subprocess
    import sys

    code = ("import sys, warnings; f = warnings.formatwarning; import lithocore, lithocore.data, lithocore.stages, "
            "lithocore.tiles, lithocore.crossval, lithocore.workbook, lithocore.plan, lithocore.recommend; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules), "
            "warnings.formatwarning is f)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "True"], out


def test_readme_commands_and_ci():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make workbook" in readme and "make test" in readme
    assert re.search(r"^make test$", ci, re.M), ".ci/run runs the README's test command"
    ignored = (ROOT / ".gitignore").read_text()
    assert "runs/" in ignored and "data/generated/" in ignored
