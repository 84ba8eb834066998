"""What each deep part adds (issue 23), per fold, on a run's own folds: the forests, the U-Net as the quick profile
trains it, with balanced classes and tiles, with its epoch chosen on an inner validation area, started from the
masked autoencoder (self-supervised on the whole scene), the neighbourhood forest given the autoencoder's
embedding, and the network and the neighbourhood forest averaged (the hybrid). Every candidate on the same folds
and pixels, scored by the same code (``cross_validate``).

    python benchmarks/deep_ablation.py --run-dir runs/default [--study-area data/central-lapland.yaml]
        [--only forest forest_context ...] [--out benchmarks/results/cpu2_deep_ablation.jsonl]

One JSON line: the area, its shape, the folds, per candidate its fold mIoUs, mean, collapsed folds and seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from lithocore import crossval
from lithocore.candidates import forest_candidates
from lithocore.embedding import EmbeddingSettings, read_embedding, scene_embedding
from lithocore.folds import HybridFold, deep_fold_model
from lithocore.run import Run
from lithocore.settings import ForestSettings
from lithocore.stages import stack_provenance

CANDIDATES = ["forest", "forest_context", "unet", "unet_balanced", "unet_pretrained", "forest_context_embedding",
              "hybrid", "hybrid_balanced", "unet_inner"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--study-area", default="")
    ap.add_argument("--only", nargs="*", default=CANDIDATES)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    run = Run.open(args.run_dir, args.study_area)
    area, stack, _, _ = run.stack()
    stack = np.asarray(stack)
    folds, cv, cfg = run.folds(), run.cv(), run.training()
    fcfg = replace(cfg, epochs=cv["epochs"])
    bal = replace(fcfg, class_weight_power=1.0, balanced_tiles=True)
    out = Path(args.run_dir) / "ablation"
    t0 = time.perf_counter()
    settings = EmbeddingSettings.for_network(cfg)
    npy = scene_embedding(out, stack, area.mask, settings, stack_key=stack_provenance(run.root).get("stack_key", ""),
                          progress=False)
    embed_seconds = round(time.perf_counter() - t0, 1)
    emb = np.asarray(read_embedding(npy))
    auto = str(out / "embedding" / "autoencoder.keras")
    kw = dict(fraction=ForestSettings.pixel_fraction, cap=cv["forest_cap"], seed=run.seed)
    forests = forest_candidates()  # the workbook's two forests, as notebooks 06 and 07 make them
    make = {
        "forest": lambda: forests["forest"].fold_model(stack, area, **kw),
        "forest_context": lambda: forests["forest_context"].fold_model(stack, area, **kw),
        "forest_context_embedding": lambda: forests["forest_context"].fold_model(stack, area, **kw, extra=emb),
        "unet": lambda: deep_fold_model(stack, area, fcfg, out / "cv"),
        "unet_balanced": lambda: deep_fold_model(stack, area, bal, out / "cv"),
        "unet_inner": lambda: deep_fold_model(stack, area, replace(fcfg, inner_validation=0.2), out / "cv_inner"),
        "unet_pretrained": lambda: replace(deep_fold_model(stack, area, fcfg, out / "cv"), pretrained=auto),
        "hybrid": lambda: HybridFold(deep_fold_model(stack, area, fcfg, out / "cv"),
                                     forests["forest_context"].fold_model(stack, area, **kw)),
        "hybrid_balanced": lambda: HybridFold(deep_fold_model(stack, area, bal, out / "cv"),
                                              forests["forest_context"].fold_model(stack, area, **kw)),
    }
    models = {m: make[m]() for m in args.only}
    res = crossval.cross_validate(area.labels, area.mask, area.classes.names, folds, models, progress=False)
    collapsed = crossval.collapsed_folds(res["folds"])
    rec = dict(area=str(run.manifest), shape=list(stack.shape), k=folds.k, cv=cv, embedding_seconds=embed_seconds,
               candidates={m: dict(folds=[round(f["scores"][m]["mean_iou"], 4) for f in res["folds"]],
                                   mean=round(float(np.mean([f["scores"][m]["mean_iou"] for f in res["folds"]])), 4),
                                   collapsed=[c["fold"] for c in collapsed if c["model"] == m],
                                   seconds=[f["seconds"][m] for f in res["folds"]]) for m in models})
    line = json.dumps(rec)
    print(line)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
