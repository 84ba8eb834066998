"""Shared fixtures: a small synthetic study area (generated once per session) and the real Central Lapland data."""

from pathlib import Path

import pytest

from lithocore.synthetic import SyntheticSpec, generate_study_area

ROOT = Path(__file__).resolve().parent.parent
LAPLAND_MANIFEST = ROOT / "data" / "central-lapland.yaml"
LAPLAND_DATA = ROOT.parent / "shared" / "data" / "central-lapland"

#: The small area the tests use: 192 x 192 pixels of 15 m, surveys every 300 m (20 pixels).
SMALL_SPEC = SyntheticSpec(height=192, width=192, coarse_spacing=300.0, seed=3)


def pytest_collection_modifyitems(config, items):
    """The longest tests first: a whole workbook on real data, then the other notebook runs (minutes each), then
    the rest in their order. With the Makefile's ``--maxschedchunk=1`` each worker takes the next test when it is
    free, so two workers share the long ones and end together on short ones (the longest-first rule)."""
    def rank(item) -> int:
        notebook = item.get_closest_marker("notebook") is not None
        return 0 if notebook and item.get_closest_marker("real_data") else 1 if notebook else 2

    items.sort(key=rank)  # stable: each group keeps its order


@pytest.fixture(scope="session")
def small_manifest(tmp_path_factory) -> Path:
    return generate_study_area(SMALL_SPEC, tmp_path_factory.mktemp("synthetic") / "area", progress=False)


@pytest.fixture(scope="session")
def small_area(small_manifest):
    from lithocore.data import load_study_area

    return load_study_area(small_manifest)


@pytest.fixture(scope="session")
def lapland_manifest() -> Path:
    if not (LAPLAND_DATA / "geophysics").is_dir():
        pytest.skip(f"Central Lapland data not found at {LAPLAND_DATA} (it sits beside the project in "
                    "../shared/data/central-lapland; CI has it, a fresh clone may not)")
    return LAPLAND_MANIFEST


@pytest.fixture
def file_rows(monkeypatch) -> list[int]:
    """The rows each read of a :class:`~lithocore.stackfile.StackFile` takes from its file (decompressed), in
    order, recorded while the test runs (``clear()`` it before the reads to count)."""
    from lithocore.stackfile import StackFile

    rows, from_file = [], StackFile._file

    def recorded(self, r0, r1, *rest):
        rows.append(r1 - r0)
        return from_file(self, r0, r1, *rest)

    monkeypatch.setattr(StackFile, "_file", recorded)
    return rows
