"""Time and peak memory of loading and fusing a study area into the run's stack (notebooks 01-02's work), in a
fresh process: prints one JSON line.

    python benchmarks/bench_load_fuse.py [--manifest data/central-lapland.yaml] [--run-dir runs/bench/load_fuse]

Default: the embedded synthetic area at its default size (1611 x 1650 pixels), generated first if missing
(generation is not timed).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", default="")
    ap.add_argument("--run-dir", default="")
    args = ap.parse_args()
    from lithocore.data import load_study_area
    from lithocore.stages import fused_stack
    from lithocore.workbook import study_area_manifest

    manifest = study_area_manifest(args.manifest, progress=False)
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="bench_load_fuse_"))
    t0 = time.perf_counter()
    area = load_study_area(manifest)
    t1 = time.perf_counter()
    _, stack, names, _ = fused_stack(run_dir, manifest, area=area)
    t2 = time.perf_counter()
    print(json.dumps(dict(manifest=str(manifest), pixels=int(area.grid.width * area.grid.height),
                          channels=len(names), load_seconds=round(t1 - t0, 2), fuse_and_write_seconds=round(t2 - t1, 2),
                          peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))))


if __name__ == "__main__":
    main()
