"""DVC stage `evaluate`: metrics.json for `dvc metrics diff`, plots, and the report (report.md, report.html)."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np

from timetuning import report
from timetuning.config import Params
from timetuning.features import iter_eval_clips, read_labels
from timetuning.files import write_json_atomic
from timetuning.stage import run_stage

log = logging.getLogger("timetuning.stages.evaluate")


def run(params: Params, args: argparse.Namespace) -> None:
    out = Path(params.evaluate.output_dir)
    probes = Path(params.fit_probes.output_dir)
    results_path = probes / "results.json"
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path}: no probe results (run the fit_probes stage)")
    results = json.loads(results_path.read_text())
    flat = report.flat_metrics(results)
    write_json_atomic(out / "metrics.json", flat)
    names = report.protocol_names(results)
    size = params.extract_features.input_size
    models = list(results)
    intro = [f"Models: {', '.join(models)}; features at {size}x{size}. Clustering scores are patch-level mIoU "
             "(K = number of classes, Hungarian matching, mean over seeds); linear probe and retrieval are "
             "pixel-level mIoU on the val split; stability = fraction of patches whose predicted class survives "
             "to the next frame where the ground truth does (x100 for mIoU rows)."]
    if "delta" in flat:
        for set_name, deltas in flat["delta"].items():
            d = deltas.get("cluster_per_clip")
            if d is not None:
                verdict = "helped" if d > 0.005 else "hurt" if d < -0.005 else "did not change"
                intro.append(f"On {set_name}, time-tuning {verdict} per-clip clustering: {100 * d:+.1f} mIoU points.")
    sections = []
    train_dir = Path(params.train.output_dir)
    log_csv = train_dir / "train_log.csv"
    if log_csv.is_file():
        rows = list(csv.DictReader(log_csv.open()))
        png = report.training_curves_png(rows)
        summary_path = train_dir / "train_summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        table = [["quantity", "value"]] + [[k, f"{v:.4g}" if isinstance(v, float) else str(v)]
                                           for k, v in summary.items()]
        sections.append(("Training", table, [("training_curves.png", png)] if png else []))
    for set_name in params.shard_eval.sets:
        if not any(set_name in results[m] for m in models):
            continue
        set_dir = Path(params.shard_eval.output_dir) / set_name
        classes = [c["name"] for c in read_labels(set_dir)["classes"]]
        figures = [(f"{set_name}_per_class_iou.png", report.per_class_png(results, set_name, classes))]
        conf = report.confusion_png(results, set_name, classes)
        if conf:
            figures.append((f"{set_name}_confusion_linear.png", conf))
        report.write_per_class_csv(out / "plots" / f"{set_name}_per_class_iou.csv", results, set_name, classes)
        examples = {m: np.load(probes / m / f"{set_name}_examples.npz") for m in models
                    if (probes / m / f"{set_name}_examples.npz").is_file()}
        split = results[models[0]][set_name].get("scored_on", "val")
        if examples:
            clips = list(iter_eval_clips(set_dir, split, limit=len(next(iter(examples.values()))["frames_of_clip"])))
            figures += report.example_figures(set_name, clips, examples, size)
        sections.append((f"{set_name} ({split} split)", report.metrics_table(flat, set_name, names), figures))
        sections.append((f"{set_name}: IoU per class", report.per_class_table(results, set_name, classes), []))
    report.write_report(out, "timetuning evaluation report", intro, sections)
    log.info("wrote %s, %s and %s", out / "metrics.json", out / "report.md", out / "report.html")


def main(argv: list[str] | None = None) -> int:
    return run_stage(run, __doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
