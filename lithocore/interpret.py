"""Interpretation written from a run's own numbers: each notebook ends with a few sentences filled in by these
functions (templated text, never typed results), so a sentence can only say what the numbers show.

Every function returns Markdown text; the thresholds that pick a sentence are named here, in one place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .area import NO_LABEL
from .recommend import QUESTIONS
from .words import and_list, count, plural, verb

__all__ = ["study_area_text", "fusion_text", "tiles_text", "training_text", "mapping_text", "comparison_text",
           "STRIPE_TOLERANCE", "handover_text"]

#: A map's stripe ratio counts as "no trace of the windows" up to this factor above the windowless floor.
STRIPE_TOLERANCE = 1.15


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def study_area_text(area) -> str:
    """Notebook 01: size, sources, class make-up, warnings."""
    lab = area.labels[area.mask]
    ids, counts = np.unique(lab[lab != NO_LABEL], return_counts=True)
    shares = {area.classes.names[i]: c / counts.sum() for i, c in zip(ids, counts)} if counts.size else {}
    big = max(shares, key=shares.get) if shares else None
    small = min(shares, key=shares.get) if shares else None
    text = [f"The study area is {area.shape[0]} x {area.shape[1]} pixels of {abs(area.grid.transform.a):g} m, "
            f"{_pct(area.mask.mean())} of them valid, with {len(area.classes)} classes."]
    if big:
        text.append(f"The classes are unbalanced: **{big}** covers {_pct(shares[big])} of the labelled pixels and "
                    f"**{small}** {_pct(shares[small])}; overall accuracy will mostly reflect the large units, so "
                    f"the later notebooks report mean IoU, which weighs every class the same.")
    missing = [n for i, n in enumerate(area.classes.names) if i not in set(ids.tolist())]
    if missing:
        text.append(f"Classes in the table but not on the map: {', '.join(missing)} (no model can learn them).")
    text.append(f"Loading raised {count(len(area.warnings), 'warning')}" + (": read them above before going on."
                                                                             if area.warnings else "."))
    return " ".join(text)


def fusion_text(quality: dict) -> str:
    """Notebook 02: does fusion beat plain bilinear upsampling against the truth, and is it consistent?"""
    rows = quality.get("truth") or []
    text = []
    paper = [r["rmse_fused"] / r["rmse_bilinear"] for r in quality.get("truth_paper_eq2") or [] if r.get("rmse_bilinear")]
    ratios = [r["rmse_fused"] / r["rmse_bilinear"] for r in rows if r.get("rmse_bilinear")]
    if ratios:
        better = sum(r < 1 for r in ratios)
        text.append(f"Against the true fine fields, the fused layers' error is {min(ratios):.2f}-{max(ratios):.2f} x "
                    f"that of bilinear upsampling (below 1 is better): fusion helps on {better} of {len(ratios)} layers.")
        if paper:
            text.append(f"The paper's Eq. 2 as written gives {min(paper):.2f}-{max(paper):.2f} x: "
                        + ("better than the calibrated settings." if np.median(paper) < np.median(ratios) else
                           "worse than the calibrated settings, which is why they are the default."))
    else:
        text.append("There is no truth for this area, so fusion can only be checked for consistency.")
    cons = [r["corr"] for r in quality.get("consistency", []) if r.get("corr") is not None]
    if cons:
        text.append(f"Averaged back to the coarse grid, the fused layers correlate {min(cons):.3f}-{max(cons):.3f} "
                    f"with the measured coarse data" + (" (they keep what was measured)." if min(cons) > 0.9 else
                                                        ": below 0.9 somewhere, fusion changed the measured values."))
    return " ".join(text)


def tiles_text(summary: dict) -> str:
    """Notebook 03: how much the paper's split leaks, against the spatial split and the folds."""
    ov = summary.get("overlap", {})
    paper = ov.get("paper", {}).get("leakage")
    spatial = ov.get("spatial", {}).get("leakage")
    text = []
    if paper is not None:
        text.append(f"With the paper's random split, {_pct(paper)} of the validation pixels lie inside a training "
                    f"tile: its validation scores mostly measure memory of the map.")
    if spatial is not None:
        text.append(f"The spatial split leaks {_pct(spatial)}; the cross-validation folds leak "
                    f"{_pct(max(summary.get('fold_leakage') or [0]))} at most.")
    return " ".join(text)


def training_text(meta: dict, history: dict | None) -> str:
    """Notebook 04: validation scores, how much they swing between epochs, which model is kept, trust."""
    val = meta.get("validation", {})
    text = [f"On its validation tiles the model reaches OA {val.get('overall_accuracy', float('nan')):.3f} and mIoU "
            f"{val.get('mean_iou', float('nan')):.3f}."]
    acc = [v for v in (history or {}).get("val_masked_accuracy", []) if v is not None and np.isfinite(v)]
    if len(acc) >= 4:
        tail = acc[len(acc) // 2:]
        text.append(f"Validation accuracy swings between {min(tail):.2f} and {max(tail):.2f} over the second half "
                    f"of training: with few validation tiles, one epoch's score is noisy. The model kept is the "
                    f"last epoch's, not the best one's, because picking the best on the validation tiles and then "
                    f"reporting it on the same tiles would flatter it.")
    trust = meta.get("trust") or {}
    if trust and not trust.get("trustworthy", True):
        text.append("**Do not trust these scores**: " + "; ".join(trust.get("reasons", [])) + ".")
    return " ".join(text)


def _stripe_sentence(stripes: dict) -> str:
    ratios = stripes.get("ratios", {})
    off = stripes.get("off_grid_max", {}).get("this map", {})
    this = ratios.get("this map", {})
    floor_name = "random forest (per pixel)" if "random forest (per pixel)" in ratios else "geological map"
    floor = ratios.get(floor_name, {})
    parts = []
    relative = stripes.get("off_grid_relative_max", {}).get(floor_name, {})
    for grid, value in this.items():
        ref = floor.get(grid)
        if value is None or ref is None:
            continue
        noise, rel = off.get(grid), relative.get(grid)
        if value <= ref:
            verdict = "no more than"
        elif value <= max(STRIPE_TOLERANCE * ref, noise or 0) or (rel is not None and value <= rel * ref and ref > 0):
            verdict = "higher than, but within the noise of,"  # of the measure, or of the map against the floor
        else:
            verdict = "above"
        parts.append(f"{value:.2f} on the {grid} ({verdict} the {floor_name}'s {ref:.2f}"
                     + (f" or this map's {noise:.2f} off the grid" if noise is not None else "")
                     + (f"; {value / ref:.2f} x the {floor_name}'s on these lines, up to {rel:.2f} x on lines shifted "
                        f"off the grid" if rel is not None and value > ref > 0 else "") + ")")
    if not parts:
        return ""
    seams = any("(above" in p for p in parts)
    return ("Stripe ratio of the map: " + "; ".join(parts) + ". " +
            ("Class changes line up on a window grid more often than the geology explains: look for seams."
             if seams else "The windows leave no trace the geology does not leave as well."))


def mapping_text(scores: dict, regions: list[str]) -> str:
    """Notebook 05: scores by region (honest first), speckle, stripes."""
    first = regions[0]
    s, w = scores[first], scores.get("whole_map", {})
    text = [f"Outside what the model trained on (`{first}`) the map scores OA {s['overall_accuracy']:.3f} and mIoU "
            f"{s['mean_iou']:.3f}; over the whole map, as the paper scored, mIoU {w.get('mean_iou', float('nan')):.3f}."]
    trust = scores.get("trust") or {}
    if trust and not trust.get("trustworthy", True):
        text.append("**Do not trust this map's scores**: " + "; ".join(trust.get("reasons", [])) + ".")
    for r in regions:
        if (scores.get(r) or {}).get("caution"):
            text.append(f"**Read the `{r}` score with care**: {scores[r]['caution']}.")
    zero = [n for n, v in (s.get("iou") or {}).items() if v is not None and v < 0.05]
    if zero:
        text.append(f"Classes the map all but misses there (IoU below 0.05): {', '.join(zero)}.")
    noise = scores.get("noise", {}).get("salt_and_pepper")
    if noise is not None:
        text.append(f"{_pct(noise) if noise >= 0.01 else f'{100 * noise:.1f} %'} of the pixels disagree with their "
                    f"5 x 5 majority (speckle).")
    if scores.get("stripes"):
        text.append(_stripe_sentence(scores["stripes"]))
    return " ".join(text)


def comparison_text(per_fold: list[dict], coverage: list[dict], pooled: dict, names: dict[str, str],
                    collapsed: list[dict] | None = None) -> str:
    """Notebook 06: which map to trust and why (the best model by out-of-fold mean mIoU, and whether that holds
    fold by fold against every other model), fold models that collapsed, which classes score 0 and why, how test
    and training sides differ in class make-up."""
    from .crossval import paired_differences, summarise, verdict

    summary = summarise(per_fold)
    means = {m: summary[m]["mean_iou"]["mean"] for m in summary}
    best = max(means, key=means.get)
    other = [m for m in means if m != best]
    text = [f"**Which map to trust.** Out of fold, the {names[best]} scores the highest mean mIoU "
            f"({means[best]:.3f}; " + ", ".join(f"the {names[m]} {means[m]:.3f}" for m in other) + ")."]
    lines = {m: verdict(paired_differences(per_fold, best, m), names[best], f"the {names[m]}") for m in other}
    holds = [m for m in other if " ahead of " in lines[m]]
    text.append(" ".join(f"{v[0].upper()}{v[1:]}." for v in lines.values()))
    if len(holds) == len(other):
        text.append(f"The lead holds across folds: trust the {names[best]}'s map where the maps disagree, and read "
                    f"its out-of-fold map (not a whole-map one, scored on its own training ground) for an honest "
                    f"picture of its errors.")
    else:
        text.append("The lead is not established against the " +
                    and_list(names[m] for m in other if m not in holds) + " (the intervals above include zero): no "
                    "map is shown to be the better one here; where the maps agree, the call is safer; where they "
                    "disagree, go to the field.")
    by_model: dict[str, list[dict]] = {}
    for c in collapsed or []:
        by_model.setdefault(c["model"], []).append(c)
    for m, cs in by_model.items():
        text.append(f"**Collapsed fold models**: the {names.get(m, m)} in {plural('fold', len(cs))} "
                    f"{and_list(c['fold'] for c in cs)} ({cs[0]['why']}): its scores there measure the collapse, "
                    f"not what it can learn, and its mean over folds is no fair measure of it.")
    flagged = [c for c in coverage if c.get("flagged")]
    for m in summary:
        iou = pooled[m].get("iou") or {}
        zero = [n for n, v in iou.items() if v is not None and v < 0.05]
        if zero:
            causes = sorted({n for c in flagged for n in c.get("classes_missing_from_training", []) if n in zero})
            they = "it" if len(zero) == 1 else "they"
            text.append(f"The {names[m]} all but misses {and_list(zero)} (IoU below 0.05)" +
                        (f"; {and_list(causes)} {verb('is', len(causes))} missing from the training side of some "
                         f"folds, so those fold models could not predict {'it' if len(causes) == 1 else 'them'} "
                         f"there." if causes else
                         f"; {they} {verb('was', len(zero))} in every training side, so the model failed to tell "
                         f"{'it' if len(zero) == 1 else 'them'} apart, not to see {'it' if len(zero) == 1 else 'them'}."))
    gaps = []
    for c in coverage:
        tr, te = c.get("train_per_class") or {}, c.get("test_per_class") or {}
        if sum(tr.values()) and sum(te.values()):
            tr = {n: v / sum(tr.values()) for n, v in tr.items()}
            te = {n: v / sum(te.values()) for n, v in te.items()}
            name = max(te, key=lambda n: abs(te.get(n, 0) - tr.get(n, 0)))
            gaps.append((abs(te[name] - tr.get(name, 0)), c["fold"], name, te[name], tr.get(name, 0)))
    if gaps:
        g = max(gaps)
        text.append(f"**Test and training sides differ**: the largest difference in class make-up is in fold {g[1]}, "
                    f"where {g[2]} is {_pct(g[3])} of the test pixels and {_pct(g[4])} of the training pixels; a "
                    f"model's score there measures how it copes with that shift as much as how good it is.")
    return " ".join(text)


def _fmt_share(x: float) -> str:
    """A share in percent, never rounded to 0 or 100 when it is neither.

    >>> _fmt_share(0.998), _fmt_share(1.0), _fmt_share(0.5)
    ('99.8 %', '100 %', '50 %')
    """
    if 0 < x < 0.01 or 0.99 < x < 1:
        return f"{100 * x:.1f} %"
    return f"{100 * x:.0f} %"


def handover_text(trust: dict) -> str:
    """The closing advice, written from ``trust.json``'s numbers."""
    rec = trust["recommended_label"]
    e = trust["expected"]
    lines = [f"**Use the {rec} map** (`{Path(trust['files']['classes']).name}`): {trust['why']}."]
    m = trust["estimates"]["matched"]
    lines.append(f"On your ground to predict, expect overall accuracy **{e['overall_accuracy']:.2f} +/- "
                 f"{e['oa_half_width']:.2f}** (mIoU {e['mean_iou']:.2f} over {len(e['mean_iou_classes'])} classes): the "
                 f"map's {'calibrated ' if trust['calibration']['applied'] else ''}confidence averaged over that ground, "
                 f"which on the {trust['settings']['k']} matched folds missed each fold's accuracy by "
                 f"{min(abs(x) for x in e['per_fold_error']):.2f}-{max(abs(x) for x in e['per_fold_error']):.2f}. "
                 f"The matched cross-validation itself ({trust['matched_method']} folds, whose distances to the training "
                 f"side follow the ground's, median {trust['distances']['ground_median_m']:.0f} m) scores "
                 f"{m['overall_accuracy']:.2f} ({m['oa_interval'][0]:.2f}-{m['oa_interval'][1]:.2f}, 95 % spatial "
                 "bootstrap) on its own class mix, not the ground's.")
    if trust.get("aoa_share") is not None:
        lines.append(f"{_fmt_share(trust['aoa_share'])} of the ground to predict lies inside the area of applicability; "
                     "outside it, the predictors differ from anything the model was trained on: go to the field there.")
    ins, outs = trust.get("oof_accuracy_inside_aoa"), trust.get("oof_accuracy_outside_aoa")
    if ins is not None and outs is not None:
        word = "higher" if ins > outs else ("lower" if ins < outs else "the same")
        lines.append(f"Out of fold, accuracy inside the area of applicability is {ins:.2f}, {word} than outside "
                     f"({outs:.2f}).")
    est = trust["estimates"]
    others = [f"{k} cross-validation {est[k]['overall_accuracy']:.2f} ({QUESTIONS[k].split(':')[0]})"
              for k in ("block", "random") if est.get(k)]
    if others:
        lines.append("Other questions, other answers: " + "; ".join(others) + ".")
    c = trust["calibration"]
    if c["applied"]:
        lines.append(f"The class probabilities are calibrated (temperature {c['temperature']:.2f}): expected "
                     f"calibration error {c['ece_before']:.3f} before, {c['ece_after']:.3f} after (out of fold, each "
                     "fold scaled by a temperature fitted on the others).")
    else:
        lines.append(f"The class probabilities are left as the model gives them: temperature scaling raised the "
                     f"out-of-fold calibration error from {c['ece_before']:.3f} to {c['ece_after']:.3f} (the folds "
                     "disagree on the temperature), so none is applied.")
    chk = trust.get("held_out_check")
    if chk:
        gap = chk["overall_accuracy"] - e["overall_accuracy"]
        inside = (abs(gap) <= e["oa_half_width"])
        lines.append(f"Checked on the {chk['pixels']:,} labelled pixels withheld inside the ground to predict: real "
                     f"overall accuracy {chk['overall_accuracy']:.2f} ({gap:+.2f} from the promise, "
                     + ("inside" if inside else "outside") + " its interval).")
    for w in trust.get("warnings", []):
        lines.append(f"*Warning:* {w}")
    return "\n\n".join(lines)
