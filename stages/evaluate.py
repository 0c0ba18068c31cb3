"""DVC stage `evaluate`: metrics.json for `dvc metrics diff` / `dvc exp show`, per-class plot data, and the report
(report.md, report.html) of every evaluation set listed in params.yaml."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np

from timetuning import figures
from timetuning.config import Params
from timetuning.eval_shards import iter_eval_clips
from timetuning.evaluation_report import set_section, starting_model_warning
from timetuning.files import atomic_path, write_json_atomic
from timetuning.inputs import check_stage_inputs
from timetuning.report import Section, metrics_document, write_report
from timetuning.stage import run_stage

log = logging.getLogger("timetuning.stages.evaluate")


def run(params: Params, args: argparse.Namespace) -> None:
    check_stage_inputs(params, "evaluate")  # before any work, naming the stage to run
    out, probes = Path(params.evaluate.output_dir), Path(params.fit_probes.output_dir)
    results = {}
    for name in params.shard_eval.sets:
        results[name] = json.loads((probes / name / "results.json").read_text())
    write_json_atomic(out / "metrics.json", metrics_document(results))
    baseline = params.extract_features.baseline_model()
    tuned = next((m.name for m in params.extract_features.models if m.source == "train_result"), None)
    train_dir = Path(params.train.output_dir)
    summary_path = train_dir / "train_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    intro = Section("Summary", [f"Models: {', '.join(next(iter(results.values()))['models'])}; sets: "
                                f"{', '.join(results)}. Numbers x100; deltas are time-tuned minus start."],
                    warning=starting_model_warning(summary))
    sections = [intro]
    for name, doc in results.items():
        clips = list(iter_eval_clips(Path(params.shard_eval.output_dir) / name, doc["scored_on"],
                                     limit=params.evaluate.num_example_clips))
        examples = {m: dict(np.load(probes / name / m / "examples.npz")) for m in doc["models"]
                    if (probes / name / m / "examples.npz").is_file()}
        sections += set_section(name, doc, baseline, tuned, clips, examples)
        _write_per_class_csv(out / "plots" / f"{name}_per_class_iou.csv", name, doc)
    rows = list(csv.DictReader((train_dir / "train_log.csv").open())) if (train_dir / "train_log.csv").is_file() else []
    curves = figures.training_curves_png(rows)
    training = Section("Training", [f"{k}: {v}" for k, v in summary.items()])
    if curves:
        training.figures.append(("training_curves.png", curves, "Training loss, throughput and validation mIoU "
                                                                "(x100) per step."))
    write_report(out, "timetuning evaluation report", sections + [training])
    log.info("wrote %s, %s and %s", out / "metrics.json", out / "report.md", out / "report.html")


def _write_per_class_csv(path: Path, set_name: str, doc: dict) -> None:
    """Long-form per-class IoU (x100) for `dvc plots` (x: class, y: iou, one series per model x protocol)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["set", "model", "protocol", "class", "iou"])
        for model, values in figures.per_class_values(doc).items():
            for kind, iou in values.items():
                for c, v in zip(doc["classes"], iou):
                    w.writerow([set_name, model, kind, c, "" if v is None else f"{100 * v:.4f}"])


def main(argv: list[str] | None = None) -> int:
    return run_stage(run, __doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
