"""The neighbourhood forest's predictors read at scattered pixels (its training pixels, a fold's held-out
sample): :meth:`lithocore.stackfile.Neighbourhood.pixel_values` from each pixel's windows alone, against the same
pixels read from their strips' features (what every read did before: a strip of 64 rows filtered whole for any pixel
in it, so a sample spread over a province filtered the whole scene).

A random ``--channels`` x ``--rows`` x ``--width`` stack in memory (no file read: the features' cost alone), windows
of 5 and 15 px (the workbook's), ``--pixels`` pixels drawn at random over it.

    python benchmarks/bench_neighbourhood.py [--width 20000] [--rows 2048] [--channels 9] [--pixels 20000]

One JSON line: seconds of each way, per strip and scaled to a 20000 x 20000 scene, whether the values are identical.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=20000)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--channels", type=int, default=9)
    ap.add_argument("--pixels", type=int, default=20000)
    a = ap.parse_args()

    from lithocore.stackfile import STRIP_ROWS, Neighbourhood

    rng = np.random.default_rng(0)
    stack = rng.standard_normal((a.channels, a.rows, a.width)).astype(np.float32)
    fill = np.zeros(a.channels, np.float32)
    pixels = rng.choice(a.rows * a.width, a.pixels, replace=False)

    n = Neighbourhood(stack, (5, 15), fill)
    t0 = time.perf_counter()
    windows = n.pixel_values(pixels)
    t_windows = time.perf_counter() - t0

    n = Neighbourhood(stack, (5, 15), fill)
    rows, cols = pixels // a.width, pixels % a.width
    strips = np.unique(rows // STRIP_ROWS) * STRIP_ROWS
    from_strips = np.empty_like(windows)
    t0 = time.perf_counter()
    for r0 in strips:
        sel = np.flatnonzero(rows // STRIP_ROWS * STRIP_ROWS == r0)
        from_strips[sel] = n[:, r0:min(a.rows, r0 + STRIP_ROWS)][:, rows[sel] - r0, cols[sel]].T
    t_strips = time.perf_counter() - t0

    scale = 20000 * 20000 / (a.rows * a.width)
    print(json.dumps(dict(width=a.width, rows=a.rows, channels=a.channels, pixels=a.pixels, strips=len(strips),
                          seconds_windows=round(t_windows, 2), seconds_strips=round(t_strips, 2),
                          seconds_a_strip=round(t_strips / len(strips), 3),
                          ratio=round(t_strips / t_windows, 1),
                          scaled_to_20000=dict(pixels=round(a.pixels * scale), seconds_windows=round(t_windows * scale),
                                               seconds_strips=round(t_strips * scale)),
                          identical=bool(np.array_equal(windows, from_strips)))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
