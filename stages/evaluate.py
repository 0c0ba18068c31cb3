"""DVC stage `evaluate`: metrics.json for `dvc metrics diff` / `dvc exp show`, per-class plot data, and the report
(report.md, report.html) of every evaluation set listed in params.yaml; the example pictures are the first
evaluate.num_example_clips of the clips whose predictions fit_probes kept."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from pathlib import Path

from timetuning.data.eval_shards import iter_eval_clips
from timetuning.eval.result_store import load_examples
from timetuning.infra.config import Params
from timetuning.infra.files import write_json_atomic, write_text_atomic
from timetuning.report.evaluation_report import per_class_rows, report_sections
from timetuning.report.report import metrics_document, write_report
from timetuning.run.inputs import check_stage_inputs
from timetuning.run.stage import run_stage

log = logging.getLogger("timetuning.stages.evaluate")


def run(params: Params, args: argparse.Namespace) -> None:
    check_stage_inputs(params, "evaluate")  # before any work, naming the stage to run
    out, probes, train = (Path(params.evaluate.output_dir), Path(params.fit_probes.output_dir),
                          Path(params.train.output_dir))
    results = {name: json.loads((probes / name / "results.json").read_text()) for name in params.shard_eval.sets}
    shown = params.evaluate.num_example_clips  # of the EXAMPLE_CLIPS clips whose predictions fit_probes keeps
    clips = {name: list(iter_eval_clips(Path(params.shard_eval.output_dir) / name, doc["scored_on"], limit=shown))
             for name, doc in results.items()}
    examples = {name: {m: load_examples(probes / name / "models" / m / "examples.npz", shown) for m in doc["models"]}
                for name, doc in results.items()}
    summary = json.loads((train / "train_summary.json").read_text()) if (train / "train_summary.json").is_file() else {}
    log_rows = list(csv.DictReader((train / "train_log.csv").open())) if (train / "train_log.csv").is_file() else []
    models = params.extract_features
    tuned = next((name for name, m in models.models.items() if m.source == "train_result"), None)
    # the reference fit_probes compared every model with (fit_probes.reference_model), as its results say
    reference = next((c["baseline"] for doc in results.values() for c in doc["comparisons"].values()),
                     models.baseline_model())
    write_json_atomic(out / "metrics.json", metrics_document(results))
    for name, doc in results.items():
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(per_class_rows(name, doc))
        write_text_atomic(out / "plots" / f"{name}_per_class_iou.csv", text.getvalue())
    write_report(out, "timetuning evaluation report",
                 report_sections(results, clips, examples, reference, tuned, summary, log_rows))
    log.info("wrote %s, %s and %s", out / "metrics.json", out / "report.md", out / "report.html")


def main(argv: list[str] | None = None) -> int:
    return run_stage(run, __doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
