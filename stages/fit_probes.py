"""DVC stage `fit_probes@<set>`: every evaluation protocol for every model on one set, and the comparison of each
model with the starting model (deltas, bootstrap intervals, robustness, verdicts) -> ``<output_dir>/<set>/``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from timetuning.data.eval_shards import read_labels
from timetuning.eval.results import evaluate_set
from timetuning.infra.config import Params
from timetuning.infra.files import atomic_path, write_json_atomic
from timetuning.run.inputs import check_stage_inputs
from timetuning.run.stage import run_stage, set_parser

log = logging.getLogger("timetuning.stages.fit_probes")


def run(params: Params, args: argparse.Namespace) -> None:
    check_stage_inputs(params, f"fit_probes@{args.set}")  # before any work, naming the stage to run
    eval_set, feats = params.shard_eval.set(args.set), params.extract_features
    set_dir, out = Path(params.shard_eval.output_dir) / args.set, Path(params.fit_probes.output_dir) / args.set
    classes = [c["name"] for c in read_labels(set_dir)["classes"]]
    doc, examples = evaluate_set(args.set, set_dir, Path(feats.output_dir) / args.set, eval_set.splits,
                                 [m.name for m in feats.models], params.reference_model(), classes, params.fit_probes,
                                 params.evaluate.num_example_clips)
    for model, arrays in examples.items():
        with atomic_path(out / model / "examples.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **{k.replace("/", "__"): v for k, v in arrays.items()})
    write_json_atomic(out / "results.json", doc)
    for model, comparison in doc["comparisons"].items():
        for name, v in comparison["verdicts"].items():
            log.info("%s vs %s, %s: %s", model, comparison["baseline"], name, v["text"])


def main(argv: list[str] | None = None) -> int:
    return run_stage(run, __doc__, parser=set_parser(__doc__), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
