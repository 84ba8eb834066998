"""Small real-like scenes run through the whole workbook with no parameter (issue 20's goal).

Builds the four scenes a geologist brings that this workbook was not tuned on, from the synthetic generator:

- ``s95x228``: 95 x 228 px of 62.5 m, a 500 m survey, full geological map;
- ``s120x232``: 120 x 232 px of 62.5 m, a 500 m survey (the case whose spline gridding went negative);
- ``s185x92_geographic``: 185 x 92 px, every file reprojected to EPSG:4326 (degrees);
- ``s257x289_sparse``: 257 x 289 px of 30 m, training polygons on ~6 % of the pixels, 0 = unlabelled.

Each runs ``python -m lithocore.workbook`` (quick profile, no parameter) in a fresh process; one JSON line each:
the notebook reached, seconds, and the last lines of the error when it stopped. A scene passes when every notebook
runs, or when it stops in notebook 01 or 02 with a message that says what to change.

    python benchmarks/small_scenes.py --out runs/scenes [--only s95x228 ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from lithocore.synthetic import SyntheticSpec, generate_study_area
from lithocore.variants import geographic_copy, sparse_training_polygons

SCENES = {
    "s95x228": dict(height=95, width=228, pixel_size=62.5, coarse_spacing=500.0),
    "s120x232": dict(height=120, width=232, pixel_size=62.5, coarse_spacing=500.0),
    "s185x92_geographic": dict(height=185, width=92, pixel_size=30.0, coarse_spacing=300.0),
    "s257x289_sparse": dict(height=257, width=289, pixel_size=30.0, coarse_spacing=600.0),
}


def build(name: str, root: Path) -> Path:
    spec = SyntheticSpec(**SCENES[name], seed=3, predict="")
    manifest = generate_study_area(spec, root / f"{name}-base", progress=False)
    if name.endswith("_geographic"):
        return geographic_copy(manifest, root / name)
    if name.endswith("_sparse"):
        return sparse_training_polygons(manifest, root / name, share=0.06, seed=0)
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/scenes")
    ap.add_argument("--only", nargs="*", default=list(SCENES))
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    for name in args.only:
        manifest = build(name, out / "areas")
        run_dir = out / name
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "lithocore.workbook", "--run-dir", str(run_dir),
                               "--study-area", str(manifest)], capture_output=True, text=True)
        seconds = round(time.perf_counter() - t0, 1)
        done = sorted(p.name for p in (run_dir / "notebooks").glob("*.ipynb")) if (run_dir / "notebooks").is_dir() else []
        tail = "" if proc.returncode == 0 else "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:])
        print(json.dumps(dict(scene=name, rc=proc.returncode, seconds=seconds, last_notebook=done[-1] if done else None,
                              error=tail)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
