"""DVC stage `compare@<set>`: every model of extract_features.models compared with the reference model on one set
(deltas, bootstrap intervals, robustness, verdicts), from the models' saved per-video statistics (no features
read) -> ``<fit_probes.output_dir>/<set>/results.json``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from timetuning.eval.result_store import load_scores
from timetuning.eval.results import compare_set
from timetuning.infra.config import Params
from timetuning.infra.files import write_json_atomic
from timetuning.run.inputs import check_stage_inputs
from timetuning.run.stage import run_stage, set_parser

log = logging.getLogger("timetuning.stages.compare")


def run(params: Params, args: argparse.Namespace) -> None:
    check_stage_inputs(params, f"compare@{args.set}")  # before any work, naming the stage to run
    params.shard_eval.set(args.set)
    p, folder = params.fit_probes, Path(params.fit_probes.output_dir) / args.set
    models = {}
    for name in params.extract_features.models:
        scores, variants, doc = load_scores(folder / "models" / name)
        models[name] = (doc, scores, variants)
    doc = compare_set(models, params.reference_model(), samples=p.bootstrap_samples, confidence=p.confidence,
                      seed=p.seeds[0])
    write_json_atomic(folder / "results.json", doc)
    for model, comparison in doc["comparisons"].items():
        for name, v in comparison["verdicts"].items():
            log.info("%s vs %s, %s: %s", model, comparison["baseline"], name, v["text"])


def main(argv: list[str] | None = None) -> int:
    return run_stage(run, __doc__, parser=set_parser(__doc__), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
