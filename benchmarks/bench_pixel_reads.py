"""A fold's pixels read for notebook 07's two forests from a stack on disk: in one pass for both
(:func:`lithocore.stackfile.at_pixels`, what the cross-validation, the final fits and the AOA now do) against each
forest reading its training pixels and then its test pixels (four passes, what they did before: every block of a
province's file decompressed for each).

The stack is a stack COG (``--stack``, e.g. a run folder's ``02_fuse_sources/fused_stack.tif``), read window by window;
``--train`` and ``--test`` pixels drawn at random over it; the forests' predictors as notebook 07 makes them (the
stack, and the stack with its local means and sds over 5 and 15 px).

    python benchmarks/bench_pixel_reads.py --stack RUN/02_fuse_sources/fused_stack.tif [--train 40000] [--test 40000]

One JSON line: seconds of one pass for both (run first and again last), of the four passes, whether the values are
identical.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stack", required=True)
    ap.add_argument("--train", type=int, default=40000)
    ap.add_argument("--test", type=int, default=40000)
    a = ap.parse_args()

    os.environ["LITHOCORE_STACK_IN_MEMORY_MB"] = "0"  # a province: read window by window, never held
    from lithocore.candidates import forest_candidates
    from lithocore.stackfile import Neighbourhood, StackFile, at_pixels, pixel_values, region_stats

    sf = StackFile(a.stack)
    C, H, W = sf.shape
    rng = np.random.default_rng(0)
    train, test = np.split(rng.choice(H * W, a.train + a.test, replace=False), [a.train])
    t0 = time.perf_counter()
    fill = np.asarray(region_stats(sf)["mean"], np.float32)  # the neighbourhood's fill: one pass, made once a stage
    t_fill = time.perf_counter() - t0
    stacks = {m: Neighbourhood(sf, c.neighbourhood, fill) if c.neighbourhood else sf
              for m, c in forest_candidates().items()}

    def shared() -> tuple[float, dict]:
        t0 = time.perf_counter()
        got = at_pixels(stacks, np.concatenate([train, test]))
        return time.perf_counter() - t0, {m: (pixel_values(g, train), pixel_values(g, test)) for m, g in got.items()}

    t_one, first = shared()
    t0 = time.perf_counter()
    apart = {m: (pixel_values(s, train), pixel_values(s, test)) for m, s in stacks.items()}
    t_four = time.perf_counter() - t0
    t_again, _ = shared()
    same = all(np.array_equal(first[m][i], apart[m][i], equal_nan=True) for m in stacks for i in (0, 1))
    print(json.dumps(dict(stack=a.stack, shape=[C, H, W], gb=round(sf.nbytes / 1e9, 1), train=a.train, test=a.test,
                          seconds_fill_pass=round(t_fill, 1), seconds_one_pass=round(t_one, 1),
                          seconds_one_pass_again=round(t_again, 1), seconds_four_passes=round(t_four, 1),
                          ratio=round(t_four / min(t_one, t_again), 2), identical=bool(same))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
