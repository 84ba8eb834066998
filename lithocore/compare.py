"""Notebook 06's comparison: the models of the registry and the forests, like for like under spatial
cross-validation and under the paper's protocol, and the stripes of the maps they make."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import crossval
from .registry import display_name, model_name
from .runfolder import RunFolder
from .settings import ForestSettings, profile as profile_settings

__all__ = ["stripe_report", "CrossValidation", "cross_validation", "DEEP_PARTS", "deep_parts", "PaperProtocol",
           "paper_protocol", "comparison_record"]


def stripe_report(run_dir, area, classes: np.ndarray, mapping_result: dict | None = None,
                  others: dict[str, np.ndarray] | None = None) -> dict:
    """Stripe ratios (:func:`lithocore.metrics.stripe_ratio`) of a window-made map on the 4-px grid of the
    FCN-8s's upsampling, the network's 32-px grid, the first version's 64-px window step and the borders of this
    map's windows, beside those of the geological map, of the per-pixel forest's map (notebook 06's, when it
    exists) and of ``others``. (Out-of-fold maps do not belong here: their fold blocks meet on the same grid.)"""
    from . import mapping, metrics

    grids = {"upsampling grid (4 px)": 4, "network grid (32 px)": 32, "old window step (64 px)": 64}
    if mapping_result and mapping_result.get("windows", 1) > 1:  # the borders between the map's cores
        grids["window borders"] = mapping_result.get("borders") or tuple(mapping_result["core"])  # older: equal cores
    step = min((mapping_result or {}).get("core") or [64])  # the borders' lines are shifted by parts of a core

    def ratio(m, p, offset=0):  # on a grid of period p, or on the window borders' rows and columns
        if isinstance(p, dict):
            return metrics.stripe_ratio(m, area.mask, lines=p, offset=offset)
        return metrics.stripe_ratio(m, area.mask, period=p, offset=offset)

    maps = {"this map": classes, "geological map": area.labels}
    forest_path = RunFolder(run_dir).forest_map_path
    if forest_path.is_file():
        with contextlib.suppress(ValueError):  # made with another class table: not comparable
            maps["random forest (per pixel)"] = mapping.read_class_map(forest_path, area.classes)[0]
    maps.update(others or {})
    ratios = {name: {g: ratio(m, p) for g, p in grids.items()} for name, m in maps.items()}
    # the noise of the measure: the same ratio on the same map's lines shifted off the grid (largest of 7 shifts),
    # and this map's ratio over each other map's on the same shifted lines (a few lines, as a scene's window
    # borders are, may hold more contacts than most: the geology's own ratio there says so)
    off, shifted = {}, {}
    for name, m in maps.items():
        off[name] = {}
        for g, p in grids.items():
            q = step if isinstance(p, dict) else p if np.isscalar(p) else min(p)
            shifted[name, g] = [ratio(m, p, o) for o in sorted({max(1, q * k // 8) for k in range(1, 8)}) if o % q]
            vals = [v for v in shifted[name, g] if v is not None]
            off[name][g] = max(vals) if vals else None
    relative = {name: {g: max([a / b for a, b in zip(shifted["this map", g], shifted[name, g]) if a and b],
                              default=None) for g in grids} for name in maps if name != "this map"}
    return dict(ratios=ratios, off_grid_max=off, off_grid_relative_max=relative, grids=grids)


# ------------------------------------------------------------------------------- spatial cross-validation
@dataclass
class CrossValidation:
    """Notebook 06's spatial cross-validation of the run's deep model and the forests, on the same folds and
    pixels, scored by the same code (:func:`lithocore.crossval.cross_validate`). Its tables, verdicts and record
    are written by the methods below from the numbers, never by hand."""

    folds: object  # lithocore.crossval.Folds
    coverage: list[dict]
    models: list[str]  # registry keys and forest names, the deep model first
    names: dict[str, str]  # how the notebook names each
    results: dict  # cross_validate's: per-fold scores, pooled scores, out-of-fold maps
    cache_key: str
    settings: dict

    @property
    def deep(self) -> str:
        return self.models[0]

    @property
    def summary(self) -> dict:
        return crossval.summarise(self.results["folds"])

    def coverage_table(self):
        import pandas as pd

        return pd.DataFrame([{"fold": c["fold"], "test pixels": c["test_pixels"], "training pixels": c["train_pixels"],
                              "classes missing from training": ", ".join(c["classes_missing_from_training"]) or "none"}
                             for c in self.coverage]).set_index("fold")

    def fold_table(self):
        """Per fold and model: OA, mIoU, kappa, pixels and seconds; then each model's mean +/- sd."""
        import pandas as pd

        rows = [{"fold": f["fold"], "model": self.names[m], "OA": s["overall_accuracy"], "mIoU": s["mean_iou"],
                 "kappa": s["kappa"], "pixels": s["pixels"], "seconds": f["seconds"][m]}
                for f in self.results["folds"] for m, s in f["scores"].items()]
        summary = self.summary
        for m in self.models:
            rows.append({"fold": "mean +/- sd", "model": self.names[m],
                         **{c: f"{summary[m][k]['mean']:.3f} +/- {summary[m][k]['sd']:.3f}"
                            for c, k in (("OA", "overall_accuracy"), ("mIoU", "mean_iou"), ("kappa", "kappa"))}})
        return pd.DataFrame(rows).set_index(["fold", "model"])

    @property
    def forests(self) -> list[str]:
        """The forests among the models (the baselines every deep candidate is judged against)."""
        return [m for m in self.models if m in ("forest", "forest_context")]

    @property
    def parts(self) -> list[str]:
        """The deep parts added as candidates (:data:`DEEP_PARTS`), after the run's deep model."""
        return [m for m in self.models[1:] if m not in self.forests]

    def differences(self):
        """Per fold, the mIoU of the deep model (and of each deep part) minus each forest's on the same pixels."""
        import pandas as pd

        per_fold = self.results["folds"]
        return pd.DataFrame({f"{self.names[d]} - {self.names[m]}": crossval.paired_differences(per_fold, d, m)
                             for d in [self.deep, *self.parts] for m in self.forests},
                            index=pd.Index(range(self.folds.k), name="fold"))

    def verdicts(self) -> dict[str, str]:
        """The deep model against each forest (:func:`lithocore.crossval.verdict`, mIoU)."""
        return {m: crossval.verdict(crossval.paired_differences(self.results["folds"], self.deep, m),
                                    self.names[self.deep], f"the {self.names[m]}", "mIoU") for m in self.forests}

    def part_verdicts(self) -> dict[str, str]:
        """Each deep part against the strongest baseline there is, the neighbourhood forest (else the forest)."""
        base = self.forests[-1]
        return {p: crossval.verdict(crossval.paired_differences(self.results["folds"], p, base), self.names[p],
                                    f"the {self.names[base]}", "mIoU") for p in self.parts}

    def collapsed(self) -> list[dict]:
        """Fold models that learned next to nothing (:func:`lithocore.crossval.collapsed_folds`)."""
        return crossval.collapsed_folds(self.results["folds"], self.names)

    def flagged(self) -> list[int]:
        return [c["fold"] for c in self.coverage if c["flagged"]]

    def verdict_text(self) -> str:
        """The verdicts, the folds lacking a class and the collapsed fold models, in one paragraph (Markdown)."""
        flagged = self.flagged()
        return (f"**Verdicts (spatial cross-validation, {self.folds.k} folds, mIoU):** "
                + " ".join(f"{v[0].upper()}{v[1:]}." for v in [*self.verdicts().values(),
                                                                *self.part_verdicts().values()])
                + (f" Folds {flagged} lack a class on their training side." if flagged else "")
                + "".join(f" **The {c['label']} of fold {c['fold']} collapsed**: {c['why']}."
                          for c in self.collapsed()))

    def pooled_table(self):
        """IoU, producer's and user's accuracy per class, pooled over the folds."""
        import pandas as pd

        pooled = self.results["pooled"]
        return pd.DataFrame({f"{self.names[m]} {k}": pooled[m][key_] for m in self.models
                             for k, key_ in (("IoU", "iou"), ("producer's", "producer_accuracy"),
                                             ("user's", "user_accuracy"))})

    def write_maps(self, out_dir: Path, area) -> list[Path]:
        """Each model's out-of-fold map as a class-map GeoTIFF (``<model>_oof_classes.tif``)."""
        from .mapping import write_class_map

        return [write_class_map(Path(out_dir) / f"{m}_oof_classes.tif", self.results["oof"][m], area.grid,
                                area.classes, tags=dict(what="out-of-fold map: each pixel predicted by the fold model "
                                                             "that never saw it", folds=self.folds.k,
                                                        cache_key=self.cache_key))
                for m in self.models]

    def record(self) -> dict:
        """The cross-validation as ``comparison.json`` records it."""
        per_fold, verdicts = self.results["folds"], self.verdicts()
        return dict(folds=[dict(fold=f["fold"], scores=f["scores"], seconds=f["seconds"], coverage=c)
                           for f, c in zip(per_fold, self.coverage)],
                    summary=self.summary, pooled=self.results["pooled"],
                    paired_differences={k: crossval.paired_differences(per_fold, self.deep, "forest", k)
                                        for k in crossval.METRICS},
                    verdict=verdicts["forest"], verdicts=verdicts, part_verdicts=self.part_verdicts(),
                    flagged_folds=self.flagged(),
                    collapsed=self.collapsed(), model_names=self.names, deep_model=self.deep,
                    settings=self.settings, folds_info=self.folds.info)


#: The deep parts notebook 06 can add to its candidates (``deep_parts``), and how it names them (issue 23).
DEEP_PARTS = {
    "pretrained": "U-Net started from the scene's masked autoencoder (self-supervised on every valid pixel)",
    "embedding_forest": "neighbourhood forest given the autoencoder's per-pixel embedding",
    "hybrid": "U-Net and neighbourhood forest of the fold, class probabilities averaged",
}


def deep_parts(text: str) -> tuple[str, ...]:
    """The deep parts named in ``text`` (comma-separated keys of :data:`DEEP_PARTS`; "all"; "" none); an unknown
    name is an error that lists them.

    >>> deep_parts("hybrid, pretrained"), deep_parts(""), len(deep_parts("all"))
    (('hybrid', 'pretrained'), (), 3)
    """
    names = [t.strip() for t in str(text or "").split(",") if t.strip()]
    if names == ["all"]:
        return tuple(DEEP_PARTS)
    bad = [n for n in names if n not in DEEP_PARTS]
    if bad:
        raise ValueError(f"unknown deep part(s) {bad}: choose among {sorted(DEEP_PARTS)} or 'all'")
    return tuple(names)


def cross_validation(run, forest: ForestSettings | None = None, *, neighbourhood_forest: bool = True,
                     cluster: str = "", parts: tuple[str, ...] = ()) -> CrossValidation:
    """The spatial cross-validation of ``run`` (a :class:`lithocore.run.Run`): its deep model (the run's training
    settings, notebook 04's), the paper's forest (``forest``; default the profile's) and, with
    ``neighbourhood_forest``, the neighbourhood forest (both as :func:`lithocore.candidates.forest_candidates`
    defines them for notebook 07 too), trained and scored on the run's folds. Each model's fold predictions are
    cached under the settings' key, so adding a model reuses the others.

    Parameters
    ----------
    run
        The run (:class:`lithocore.run.Run`): its stack, settings and folds.
    forest
        The forests' trees, variables tried at each split and share of each class's training pixels.
    neighbourhood_forest
        Whether the neighbourhood forest is a candidate too.
    cluster
        "" (this process), ``"local:K"`` or a scheduler address: every fold x model becomes a task of that Dask
        cluster, which reads the stack from the run folder window by window (a shared file system); the
        scores are those of one process.
    parts
        Deep parts added as candidates (:data:`DEEP_PARTS`): ``"pretrained"`` (the U-Net fine-tuned from the
        masked autoencoder), ``"embedding_forest"`` (the neighbourhood forest plus the embedding), ``"hybrid"``
        (the fold's U-Net and neighbourhood forest averaged). The autoencoder is trained once on the whole scene
        (no label read: :meth:`lithocore.run.Run.embedding`).

    Returns
    -------
    CrossValidation
        The folds, their coverage, per-fold and pooled scores, out-of-fold maps; tables, verdicts and the record.
    """
    from .candidates import forest_candidates
    from .folds import ForestFold, cv_cache_key, deep_fold_model

    from .stackfile import StackFile

    area, stack, _, _ = run.stack()
    if cluster:  # the workers read their own windows of the stack file: the same values as the array
        stack = StackFile(run.folder.stack_path)
    cfg, cv = run.training(), run.cv()
    folds = run.folds()
    forest = forest or profile_settings(run.profile).forest
    forests = forest_candidates(forest)  # the paper's and the neighbourhood forest, as notebook 07 fits them
    sampling = dict(fraction=forest.pixel_fraction, cap=cv["forest_cap"], seed=run.seed)
    context = forests["forest_context"]
    deep = model_name(cfg.__dict__)  # results, files and scores are named by the registry key
    models = {deep: deep_fold_model(stack, area, replace(cfg, epochs=cv["epochs"]), run.folder.cv_dir),
              "forest": forests["forest"].fold_model(stack, area, **sampling)}
    if neighbourhood_forest:  # the context-aware baseline: same pixels, the stack plus local means and sds
        models["forest_context"] = context.fold_model(stack, area, **sampling)
    if "pretrained" in parts and deep != "unet":  # said before the pretraining, not at the first fold
        raise ValueError(f"deep_parts 'pretrained' starts a U-Net from the autoencoder; this run's network is "
                         f"{display_name(deep)}: leave 'pretrained' out, or train a U-Net (architecture 'unet')")
    if parts:
        from .embedding import read_embedding
        from .folds import HybridFold

        npy = run.embedding()
        if "pretrained" in parts:
            models[f"{deep}_pretrained"] = replace(models[deep], pretrained=str(npy.with_name("autoencoder.keras")))
        if "embedding_forest" in parts:
            models["forest_context_embedding"] = context.fold_model(stack, area, extra=read_embedding(npy), **sampling)
        if "hybrid" in parts:
            models["hybrid"] = HybridFold(models[deep], context.fold_model(stack, area, **sampling))
    for m, model in models.items():  # before any fold: every forest's fit fits in memory
        if isinstance(model, ForestFold):
            model.check_memory(len(area.classes), f"the cross-validation's {m}")
    cache_key = cv_cache_key(run.root, cv, cfg, forest)
    results = crossval.cross_validate(area.labels, area.mask, area.classes.names, folds, models,
                                      cache_dir=run.folder.cv_dir, cache_key=cache_key, cluster=cluster or None)
    names = {deep: display_name(deep), "forest": forests["forest"].label, "forest_context": context.label,
             f"{deep}_pretrained": f"{display_name(deep)} (pretrained)",
             "forest_context_embedding": f"{context.label} + embedding",
             "hybrid": f"{display_name(deep)} + {context.label}"}
    settings = cv | dict(tile=cfg.tile, n_samples=cfg.n_samples, n_trees=forest.n_trees,
                         max_features=forest.max_features, pixel_fraction=forest.pixel_fraction)
    return CrossValidation(folds, crossval.fold_coverage(folds, area.labels, area.mask, area.classes.names),
                           list(models), {m: names[m] for m in models}, results, cache_key, settings)


# ------------------------------------------------------------------------------------- the paper's protocol
@dataclass
class PaperProtocol:
    """Notebook 06's second comparison, the paper's: notebook 04's model (trained on the ``split`` tiles) and the
    forest trained on a share of every class's pixels, each mapping the whole scene, scored on the same regions."""

    deep: str  # registry key of notebook 04's model
    names: dict[str, str]
    deep_map: np.ndarray
    deep_scores: dict
    forest: dict  # paper_forest_map's record
    forest_map: np.ndarray
    forest_confidence: np.ndarray  # as the figures show it: every figure_step-th row and column
    forest_scores: dict
    split: str

    @property
    def regions(self) -> list[str]:
        return [k for k in self.deep_scores["regions"] if k != "train_region"]

    @property
    def trust(self) -> dict:
        return self.deep_scores.get("trust") or {"trustworthy": True, "reasons": []}

    def rows(self) -> list[dict]:
        return [dict(model=name, scored_on=r, OA=sc[r]["overall_accuracy"], mIoU=sc[r]["mean_iou"],
                     kappa=sc[r]["kappa"], boundary_mIoU=sc[r]["boundary"]["mean_iou"],
                     salt_and_pepper=sc["noise"]["salt_and_pepper"], caution=sc[r].get("caution") or "")
                for name, sc in ((self.names[self.deep], self.deep_scores), (self.names["forest"], self.forest_scores))
                for r in self.regions]

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.rows())

    def notices(self) -> list[str]:
        """What the reader must see beside the table: an untrustworthy deep model, scores with a caution."""
        out = []
        if not self.trust["trustworthy"]:
            out.append(f"WARNING: the {self.names[self.deep]} model's scores do not mean much:\n- "
                       + "\n- ".join(self.trust["reasons"]))
        out += [f"CAUTION ({r['model']}, {r['scored_on']}): {r['caution']}" for r in self.rows() if r["caution"]]
        return out

    def lesson(self, cv: CrossValidation):
        """Each model's mean mIoU under spatial cross-validation beside its whole-map mIoU by the paper's protocol."""
        import pandas as pd

        cv_mean = {m: cv.summary[m]["mean_iou"]["mean"] for m in cv.models}
        whole = {self.deep: self.deep_scores["whole_map"]["mean_iou"],
                 "forest": self.forest_scores["whole_map"]["mean_iou"]}
        table = pd.DataFrame({"spatial cross-validation (mean mIoU)": cv_mean,
                              "paper's protocol (whole-map mIoU)": whole})
        table.index = [{**cv.names, **self.names}[m] for m in table.index]
        return table

    def stripes(self, run) -> dict:
        """Stripe ratios of the whole-scene maps (:func:`stripe_report`; out-of-fold maps would add their blocks)."""
        out = stripe_report(run.root, run.area, self.deep_map, self.deep_scores.get("mapping"))
        out["ratios"][f"{self.names[self.deep]} (notebook 05's map)"] = out["ratios"].pop("this map")
        return out

    def record(self) -> dict:
        return {"rows": self.rows(), self.deep: self.deep_scores | {"regions": None}, "deep_model": self.deep,
                "forest": self.forest_scores, "forest_pixels": self.forest["pixels"],
                "forest_fit_seconds": self.forest["fit_seconds"],
                "forest_predict_seconds": self.forest["map"]["mapping_seconds"], "split": self.split}


def paper_protocol(run, split: str = "paper", forest: ForestSettings | None = None, *, cap: int = -1,
                   boundary_width: int = 3, cluster: str = "") -> PaperProtocol:
    """The paper's protocol on ``run``: notebook 05's map of notebook 04's model (mapped now when missing) and the
    paper's forest (``cap`` pixels per class at most; -1: the profile's), scored on the same regions.

    Parameters
    ----------
    run
        The run (:class:`lithocore.run.Run`).
    split
        The split notebook 04's model was trained on.
    forest, cap
        The paper's forest (default: the profile's), at most ``cap`` pixels a class (-1: the profile's; 0: none).
    boundary_width
        Pixels either side of a boundary for the boundary scores.
    cluster
        Where the forest maps the scene: "" this process, "local:K" or a scheduler address.

    Returns
    -------
    PaperProtocol
    """
    from . import metrics
    from .mapping import read_class_map, read_confidence
    from .plotting import figure_step

    area = run.area
    deep_map, deep_scores = run.class_map(split, boundary_width=boundary_width)
    deep = deep_scores["model"]
    forest = run.paper_forest(forest, cap=cap, cluster=cluster)  # rf_paper_classes.tif
    forest_map, _ = read_class_map(forest["map"]["classes"], area.classes)
    regions = {k: v for k, v in deep_scores["regions"].items() if k != "train_region"}
    forest_scores = metrics.evaluate_map(forest_map, area.labels, area.mask, area.classes.names, regions=regions,
                                         boundary_width=boundary_width)
    from .candidates import CANDIDATES

    return PaperProtocol(deep, {deep: display_name(deep), "forest": CANDIDATES["forest"].label}, deep_map, deep_scores,
                         forest, forest_map, read_confidence(forest["map"]["confidence"], figure_step(area.shape)),
                         forest_scores, split)


def comparison_record(cv: CrossValidation, paper: PaperProtocol, stripes: dict) -> dict:
    """``comparison.json``: the cross-validation, the paper's protocol, the stripes and each model's trust."""
    return dict(cross_validation=cv.record(), stripes=stripes, deep_model=cv.deep,
                paper_protocol=paper.record(), comparison=paper.rows(),
                trust=crossval.fold_trust(cv.models, cv.collapsed(), cv.coverage, base={paper.deep: paper.trust}))
