"""What the evaluation report says: the verdict of every set in words, the protocol as run, the results and
robustness tables, per-class results, pictures of segmentations, training curves, and loud warnings where the
numbers cannot mean what a reader would assume."""

from __future__ import annotations

from typing import Any

import numpy as np

from timetuning.data.eval_shards import EvalClip
from timetuning.data.labels import IGNORE_INDEX
from timetuning.report import figures
from timetuning.report.report import (
    HEADLINE,
    Section,
    label,
    main_table,
    models_table,
    per_class_table,
    protocol_order,
    robustness_table,
    x100,
)

# class names as a set's tools write them -> as the report shows them (labelme's background class is `_background_`)
DISPLAY_NAMES = {"_background_": "background"}
PROBE_PROTOCOLS = {"linear": "the linear probe", "cluster_per_dataset": "per-dataset clustering",
                   "hummingbird": "retrieval"}


def display_classes(classes: list[str]) -> list[str]:
    """The class names as the report shows them: ``_background_`` (labelme's convention) as ``background``."""
    return [DISPLAY_NAMES.get(c, c) for c in classes]


def resampled_units(doc: dict[str, Any]) -> str:
    """What the bootstrap resampled, in words: "the 8 scored videos", or "the 5 scored images" for an image set,
    whose every image is its own unit (timetuning.eval.bootstrap resamples the scored split's video ids)."""
    facts = next(iter(doc["models"].values()))["facts"] if doc["models"] else {}
    boot = next((c["bootstrap"] for c in doc.get("comparisons", {}).values() if "bootstrap" in c), {})
    n = boot.get("videos", facts.get("videos"))
    if n is None:
        return "the scored images" if doc.get("image_set") else "the scored videos"
    noun = "image" if doc.get("image_set") and n == facts.get("frames") else "video"
    return f"the {n} scored {noun}{'' if n == 1 else 's'}"


def _ran(doc: dict[str, Any], protocol: str) -> bool:
    """Whether ``protocol`` ran for the set's models (it is not n/a, as the probes are without a train split)."""
    return any(protocol in m["protocols"] for m in doc["models"].values())


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def starting_model_warning(summary: dict[str, Any]) -> str | None:
    """A warning when the exported "time-tuned" model is in fact the starting model."""
    if not summary:
        return None
    if summary.get("exported_is_start") or summary.get("best_step") == 0:
        return ("the exported time-tuned model is the STARTING model: validation picked step 0 (no later "
                "checkpoint scored higher), so every delta below compares the start model with itself plus "
                "nothing; train longer or check the validation set.")
    if summary.get("steps") is not None and summary.get("val_every") and summary["steps"] < summary["val_every"]:
        return (f"training ran {summary['steps']} steps, fewer than val_every={summary['val_every']}: no "
                "validation ran, the last step was exported unchecked.")
    return None


def verdict_paragraphs(set_name: str, doc: dict[str, Any], tuned: str) -> list[str]:
    """Plain sentences: robust gains, robust losses, and what is inconclusive (with the reason)."""
    comp = doc["comparisons"].get(tuned)
    if not comp:
        return [f"{set_name}: no starting model to compare with."]
    verdicts, deltas = comp["verdicts"], comp["deltas"]
    headline = [p for p in protocol_order(list(verdicts)) if p in HEADLINE or p.startswith("overcluster_k")]
    gains = [p for p in headline if verdicts[p]["robust"] and deltas[p]["delta"] > 0]
    losses = [p for p in headline if verdicts[p]["robust"] and deltas[p]["delta"] < 0]
    unsure = [p for p in headline if not verdicts[p]["robust"]]
    lines = []
    if gains and not losses and not unsure:
        summary = f"time-tuning robustly helps on every headline protocol of {set_name}."
    elif gains:
        summary = (f"time-tuning robustly helps on {len(gains)} of {len(headline)} headline protocols of {set_name}"
                   + (f" and robustly hurts on {len(losses)}" if losses else "") + ".")
    elif losses:
        summary = f"time-tuning robustly hurts on {len(losses)} of {len(headline)} headline protocols of {set_name}."
    else:
        summary = f"time-tuning does not robustly help on any headline protocol of {set_name}."
    lines.append("Verdict: " + summary)
    for p in headline:
        lines.append(f"{label(p)}: {verdicts[p]['text']}.")
    return lines


def protocol_paragraphs(doc: dict[str, Any]) -> list[str]:
    proto = doc["protocol"]
    return [
        f"Scored on the {doc['scored_on']} split" + (f"; probes fitted on the {doc['fitted_on']} split."
                                                      if doc["fitted_on"] else "; no train split, so no probes."),
        f"Features: {proto['features']}. Reduction: {proto['reduction']}.",
        f"Clustering: {proto['clustering']}, at {proto['cluster_eval_size']}x{proto['cluster_eval_size']} px per frame "
        f"and per clip, {proto['dataset_eval_size']}x{proto['dataset_eval_size']} px per dataset. K = {proto['k']}. "
        f"Matching: {proto['matching']}. mIoU: {proto['miou']}.",
        f"k-means: {proto['kmeans']['backend']}; {proto['kmeans']['iterations']} iterations, "
        f"{proto['kmeans']['restarts']} restarts, at most {proto['kmeans']['points_per_centroid']} training points per "
        f"cluster; {proto['kmeans']['switches']}. Seeds {proto['seeds']}: every seeded protocol is the mean over them.",
        probe_paragraph(doc),
        f"Intervals: {interval_statement(doc)}. Robustness variants: "
        + "; ".join(f"{k}: {v}" for k, v in proto["variants"].items() if k != "timet") + ".",
    ] + search_paragraphs(doc) + weights_paragraphs(doc)


def search_paragraphs(doc: dict[str, Any]) -> list[str]:
    """How the retrieval found each query's neighbours (``hummingbird_search``, and what each model's banks got)."""
    used = sorted({s for m in doc["models"].values() for s in m["facts"].get("hummingbird_search", [])})
    if not used:
        return []
    return [f"Retrieval neighbours (hummingbird_search: {doc['protocol'].get('hummingbird_search', 'exact')}): "
            + "; ".join(used) + "."]


def probe_paragraph(doc: dict[str, Any]) -> str:
    """The supervised read-outs as run, or why they were not (no train split to fit them on)."""
    proto, parts = doc["protocol"], []
    if _ran(doc, "linear"):
        parts.append(f"Linear probe: {proto['linear']}.")
    if _ran(doc, "hummingbird"):
        parts.append(f"Hummingbird: {proto['hummingbird']}.")
    missing = [p for p in ("linear", "hummingbird") if not _ran(doc, p)]
    if missing:
        why = next((m["not_applicable"][p] for m in doc["models"].values() for p in missing
                    if p in m["not_applicable"]), "not run")
        names = {"linear": "the linear probe", "hummingbird": "Hummingbird retrieval"}
        text = _listed([names[p] for p in missing])
        parts.append(f"{text[0].upper()}{text[1:]}: not run ({why}).")
    return " ".join(parts)


def interval_statement(doc: dict[str, Any]) -> str:
    """How the intervals were made, naming the unit the bootstrap resampled (videos, or an image set's images)."""
    boot = next((c["bootstrap"] for c in doc.get("comparisons", {}).values() if "bootstrap" in c), None)
    if boot is None:
        return "none (no model to compare with)"
    return (f"{boot['samples']} resamples of {resampled_units(doc)}, paired (both models scored on each resample), "
            f"{round(100 * boot['confidence'])}% percentile interval")


def weights_paragraphs(doc: dict[str, Any]) -> list[str]:
    """Where each model's weights came from: the file, and for a checkpoint the layout, the part and the prefix
    the loader took (the features' ``weights_source``)."""
    parts = []
    for model, m in doc["models"].items():
        ws = m["facts"].get("weights_source")
        if not ws:
            continue
        if ws.get("layout"):
            where = f"{ws['container']}/" if ws.get("container") else ""
            how = "detected" if ws.get("detected") else "named"
            parts.append(f"{model}: {ws['weights']}, layout {ws['layout']} ({how}), the {ws['part']}: "
                         f"{ws['tensors']} tensors from {where}{ws.get('prefix') or '(no prefix)'}")
        else:
            parts.append(f"{model}: {ws['weights']}")
    return ["Weights: " + "; ".join(parts) + "."] if parts else []


def example_figures(set_name: str, doc: dict[str, Any], clips: list[EvalClip],
                    examples: dict[str, dict[str, np.ndarray]]) -> list[tuple[str, bytes, str]]:
    """One overlay figure per example clip: ground truth, then each model's per-clip clusters (per-frame ones for
    image sets) and linear probe, over time."""
    out = []
    classes = display_classes(doc["classes"])
    for i, clip in enumerate(clips):
        propagated = {f"{m}: propagated": ex[f"propagation__{i}"] for m, ex in examples.items()
                      if f"propagation__{i}" in ex}
        if propagated and clip.instances is not None:
            names = ["background"] + [f"object {k}" for k in range(1, IGNORE_INDEX)]
            caption = (f"{set_name}, clip {clip.clip_id}: label propagation (J&F protocol). The first frame's instance "
                       "masks are given; each model's features carry them through the clip (colours = instances).")
            out.append((f"{set_name}_propagation{i}.png",
                        figures.segmentation_png(clip.frames, clip.instances, propagated, names,
                                                 f"{set_name}: {clip.clip_id} (instances)"), caption))
        preds = {}
        for model, ex in examples.items():
            if f"cluster__{i}" in ex:
                preds[f"{model}: clusters"] = ex[f"cluster__{i}"]
            if f"linear__{i}" in ex:
                preds[f"{model}: linear"] = ex[f"linear__{i}"]
        if not preds:
            continue
        kind = "per-frame" if doc["image_set"] else "per-clip"
        shown = [f"{kind} clusters matched to classes"] + (
            ["the linear probe's prediction"] if any(k.endswith(": linear") for k in preds) else [])
        where = (f"image {clip.clip_id}: the image, ground truth, " if doc["image_set"] else
                 f"clip {clip.clip_id} (video {clip.video_id}): frames over time (t = frame index in the clip), "
                 "ground truth, ")
        caption = (f"{set_name}, {where}{_listed(shown)}; colours = classes (legend), background unpainted.")
        image = figures.segmentation_png(clip.frames, clip.masks, preds, classes, f"{set_name}: {clip.clip_id}")
        out.append((f"{set_name}_clip{i}.png", image, caption))
    return out


def set_section(set_name: str, doc: dict[str, Any], baseline: str | None, tuned: str | None,
                clips: list[EvalClip], examples: dict[str, dict[str, np.ndarray]]) -> list[Section]:
    """The sections of one evaluation set."""
    classes = display_classes(doc["classes"])
    facts = next(iter(doc["models"].values()))["facts"]
    size = f"{facts['frames']} images" if doc["image_set"] else f"{facts['videos']} videos, {facts['frames']} frames"
    head = Section(f"{set_name}: results ({doc['scored_on']} split, {size}{', image set' if doc['image_set'] else ''})")
    if baseline and tuned and tuned in doc["comparisons"]:
        head.paragraphs += verdict_paragraphs(set_name, doc, tuned)
        if facts.get("all_background_miou") is not None:
            start = doc["models"][baseline]["protocols"].get("cluster_per_dataset", {}).get("mean")
            if start is not None:
                margin = start - facts["all_background_miou"]
                head.paragraphs.append(
                    f"All-background baseline (predicting background everywhere, per-dataset scoring): "
                    f"{x100(facts['all_background_miou'])} mIoU; the starting model's per-dataset clustering is "
                    f"{x100(abs(margin))} points {'above' if margin >= 0 else 'BELOW'} it.")
        who = "time-tuned minus start" if (baseline, tuned) == ("start", "timetuned") else f"{tuned} minus {baseline}"
        head.tables.append((f"All numbers x100 (mIoU; stability in %). Delta = {who} with its 95% "
                            f"bootstrap interval over {resampled_units(doc)}; seed std = standard deviation over the "
                            "k-means/probe seeds. " + training_randomness(doc),
                            main_table(doc, baseline, tuned)))
    compared = sorted(doc["comparisons"], key=lambda m: (m != tuned, list(doc["models"]).index(m)))
    reference = baseline if compared else None  # the stage read it from the results (fit_probes.reference_model)
    if reference and (len(compared) > 1 or tuned not in compared):
        head.tables.append((f"Every model side by side (x100): each model's value, its delta against {reference} "
                            f"with its 95% bootstrap interval over {resampled_units(doc)}, * = robust (interval "
                            "excludes zero and every protocol variant agrees in sign).", models_table(doc, reference)))
    for model in compared:
        robust = robustness_table(doc, model)
        if robust:
            who = "" if compared == [tuned] else f"{model} minus {reference}: "
            head.tables.append((f"Robustness, {who}the same delta under protocol variants that each change one "
                                "choice (x100, [95% interval]); 'robust' needs every variant to agree in sign and "
                                "the default interval to exclude zero.", robust))
    series = {m: [(label(p), d["delta"] * 100, d["ci_low"] * 100, d["ci_high"] * 100,
                   doc["comparisons"][m]["verdicts"][p]["robust"])
                  for p, d in ((p, doc["comparisons"][m]["deltas"][p])
                               for p in protocol_order(list(doc["comparisons"][m]["deltas"])))
                  if not p.startswith("temporal_stability")] for m in compared}
    if series:
        who = "time-tuned" if compared == [tuned] else "each model"
        head.figures.append((f"{set_name}_deltas.png", figures.deltas_png(series, set_name, reference),
                             f"{set_name}: every delta ({who} minus {reference}, x100) with its 95% interval; "
                             "filled markers are robust."))
    details = Section(f"{set_name}: protocol, classes and pictures", protocol_paragraphs(doc))
    details.tables.append(("IoU per class (x100).", per_class_table(doc, classes)))
    values = figures.per_class_values(doc)
    if values:
        kinds = [PROBE_PROTOCOLS[k] for k in PROBE_PROTOCOLS if any(k in v for v in values.values())]
        details.figures.append((f"{set_name}_per_class_iou.png", figures.per_class_png(values, classes),
                                f"{set_name}: IoU per class (x100) of each model for {_listed(kinds)}."))
    confusions = {m: d["protocols"]["linear"]["confusion"] for m, d in doc["models"].items()
                  if "confusion" in d["protocols"].get("linear", {})}
    if confusions:
        details.figures.append((f"{set_name}_confusion_linear.png",
                                figures.confusion_png(confusions, classes, "linear probe"),
                                f"{set_name}: linear-probe confusion matrices, each row normalised to 100% of its "
                                "ground-truth pixels (numbers in the cells)."))
    details.figures += example_figures(set_name, doc, clips, examples)
    return [head, details]


def report_sections(results: dict[str, dict[str, Any]], clips: dict[str, list[EvalClip]],
                    examples: dict[str, dict[str, dict[str, np.ndarray]]], baseline: str | None, tuned: str | None,
                    summary: dict[str, Any], log_rows: list[dict[str, str]]) -> list[Section]:
    """The whole report: a summary (with the starting-model warning), each set's sections, then training."""
    models = ", ".join(next(iter(results.values()))["models"]) if results else "-"
    several = results and len(next(iter(results.values()))["models"]) > 2
    who = "each model" if several or not tuned else tuned
    intro = Section("Summary", [f"Models: {models}; sets: {', '.join(results)}. Numbers x100; deltas are "
                                f"{who} minus {baseline or 'the starting model'}."],
                    warning=starting_model_warning(summary))
    sections = [intro]
    for name, doc in results.items():
        sections += set_section(name, doc, baseline, tuned, clips.get(name, []), examples.get(name, {}))
    training = Section("Training", [summary["warning"]] if summary.get("warning") else [])
    training.paragraphs += training_story(log_rows)
    if summary:
        training.tables.append(("The training run (models/train_summary.json).", training_rows(summary)))
    curves = figures.training_curves_png(log_rows)
    if curves:
        training.figures.append(("training_curves.png", curves, TRAINING_CURVES_CAPTION))
    return sections + [training]


def training_randomness(doc: dict[str, Any]) -> str:
    """What the interval leaves out: the randomness of training."""
    return (f"The interval resamples {resampled_units(doc)} with both models fixed: it does not contain the "
            "randomness of training (another training seed gives another time-tuned model); "
            "benchmarks/training_seeds.py measures the spread over training seeds, and a delta inside that spread is "
            "not a gain.")

TRAINING_CURVES_CAPTION = (
    "Top: per step (faint) and over 10 steps (solid), the loss, how many prototypes are the target of at least one "
    "patch with the targets' perplexity, and how often the student's argmax already is its target. Bottom: at "
    "each validation (dashed: the start), the selection score that picks the exported step, the "
    "Feature-Forwarder's J&F when it carries the selection clips' first-frame ground truth to their last frame "
    "with the current features, and the mean cosine of the features to the starting ones.")


def _number(row: dict[str, str], key: str) -> float | None:
    value = row.get(key)
    return None if value in (None, "") else float(value)


def training_story(rows: list[dict[str, str]]) -> list[str]:
    """What the selection curve did, and what the diagnostics say about why, in sentences that follow from the
    numbers of ``train_log.csv`` (an empty list without validations)."""
    validated = [(int(float(r["step"])), r) for r in rows if _number(r, "val_miou") is not None]
    if len(validated) < 2:
        return []
    start = 100 * _number(validated[0][1], "val_miou")
    trained = [(step, 100 * _number(r, "val_miou")) for step, r in validated[1:]]
    best_step, best = max(trained, key=lambda c: (c[1], -c[0]))
    low = min(v for _, v in trained)
    span = f"steps {trained[0][0]}-{trained[-1][0]}"
    if round(best, 1) > round(start, 1):
        first = [f"Selection rose from {start:.1f} at step 0 to {best:.1f} at step {best_step} (the exported step; "
                 f"{low:.1f}-{best:.1f} over {span})."]
    elif best >= start:
        first = [f"Selection did not rise: {start:.1f} at step 0, {low:.1f}-{best:.1f} over {span}; step {best_step} "
                 "is exported on a tie with the start."]
    else:
        first = [f"Selection did not rise above the start: {start:.1f} at step 0, {low:.1f}-{best:.1f} over {span}; "
                 "the starting model is exported."]
    stepped = [r for r in rows if _number(r, "prototypes_used") is not None]
    if not stepped:
        return first
    tail = stepped[-10:]  # the last 10 logged steps, as the solid curves

    def mean(key: str, part: list[dict[str, str]]) -> float:
        return float(np.mean([_number(r, key) for r in part]))

    used, perplexity = mean("prototypes_used", tail), mean("target_perplexity", tail)
    agree_first, agree_last = mean("agreement", stepped[:10]), mean("agreement", tail)
    collapsed = perplexity < 2.0
    first.append(f"Targets: {used:.0f} prototypes were the target of some patch per step at the end, perplexity "
                 f"{perplexity:.1f}, so the targets {'collapsed' if collapsed else 'did not collapse'}. The "
                 f"student's argmax matched {100 * agree_last:.0f}% of its targets at the end "
                 f"({100 * agree_first:.0f}% over the first 10 steps).")
    end = validated[-1][1]
    jf0, jf1 = _number(validated[0][1], "forwarder_jf"), _number(end, "forwarder_jf")
    cosine = _number(end, "feature_cosine")
    if jf0 is not None and jf1 is not None and cosine is not None:
        change = 100 * (jf1 - jf0)
        held = "held" if change > -2.0 else "weakened"
        moved = "barely moved" if cosine > 0.98 else "moved"
        first.append(f"Correspondences {held}: the Feature-Forwarder's J&F on the selection clips went from "
                     f"{100 * jf0:.1f} to {100 * jf1:.1f} ({change:+.1f}) at step {validated[-1][0]}. The features "
                     f"{moved}: their mean cosine to the starting features is {cosine:.3f} there.")
    return first


TRAINING_FACTS = (  # (key, label, format) in reading order; mIoU values x100
    ("steps", "steps", "{}"), ("world_size", "processes (world size)", "{}"),
    ("resumed_from", "resumed from step", "{}"),
    ("first_loss", "first loss", "{:.3f}"), ("final_loss", "final loss", "{:.3f}"),
    ("median_clips_per_s", "clips/s (median)", "{:.2f}"), ("val_set", "validation set", "{}"),
    ("val_split", "validation split", "{}"), ("val_clips", "validation clips", "{}"),
    ("val_videos", "validation videos", "{}"), ("val_miou_start", "validation mIoU at step 0", "x100"),
    ("val_miou_best", "best validation mIoU", "x100"), ("best_step", "best step", "{}"),
    ("exported", "exported weights", "{}"), ("exported_step", "exported step", "{}"))


def training_rows(summary: dict[str, Any]) -> list[list[str]]:
    """The training summary as a two-column table, rounded (keys it lacks are left out)."""
    rows = [["fact", "value"]]
    for key, name, fmt in TRAINING_FACTS:
        value = summary.get(key)
        if value is None:
            continue
        rows.append([name, x100(value) if fmt == "x100" else fmt.format(value)])
    return rows


def per_class_rows(set_name: str, doc: dict[str, Any]) -> list[list[str]]:
    """Long-form per-class IoU (x100) for `dvc plots` (x: class, y: iou, a series per model x protocol)."""
    rows = [["set", "model", "protocol", "class", "iou"]]
    for model, values in figures.per_class_values(doc).items():
        for kind, iou in values.items():
            rows += [[set_name, model, kind, c, "" if v is None else f"{100 * v:.4f}"]
                     for c, v in zip(display_classes(doc["classes"]), iou)]
    return rows
