"""DVC stage `fit_probes@<set>-<model>`: every evaluation protocol for one model on one set -> its summary and
per-video statistics (``<output_dir>/<set>/models/<model>/result.json``, ``scores.npz``, from which compare@<set>
recomputes every comparison) and the example predictions of the first EXAMPLE_CLIPS clips (``examples.npz``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from timetuning.data.eval_shards import read_labels
from timetuning.eval.progress import EvalProgress
from timetuning.eval.result_store import save_arrays, save_scores
from timetuning.eval.results import evaluate_set_model
from timetuning.infra.config import EXAMPLE_CLIPS, Params
from timetuning.run.inputs import check_stage_inputs
from timetuning.run.stage import run_stage, set_model_parser

log = logging.getLogger("timetuning.stages.fit_probes")


def run(params: Params, args: argparse.Namespace) -> None:
    stage = f"fit_probes@{args.set}-{args.model}"
    check_stage_inputs(params, stage)  # before any work, naming the stage to run
    eval_set, feats = params.shard_eval.set(args.set), params.extract_features
    feats.model(args.model)
    set_dir, out = (Path(params.shard_eval.output_dir) / args.set,
                    Path(params.fit_probes.output_dir) / args.set / "models" / args.model)
    classes = [c["name"] for c in read_labels(set_dir)["classes"]]
    with EvalProgress(stage, params.fit_probes.progress_seconds) as progress:
        doc, ev = evaluate_set_model(args.set, set_dir, Path(feats.output_dir) / args.set / args.model,
                                     eval_set.splits, args.model, classes, params.fit_probes, EXAMPLE_CLIPS, progress)
    save_arrays(out / "examples.npz", {k.replace("/", "__"): v for k, v in ev.examples.items()})
    save_scores(out, ev.scores, ev.variant_scores, doc)
    for name in ("linear", "cluster_per_clip", "jf_mean"):
        if (mean := doc["protocols"].get(name, {}).get("mean")) is not None:
            log.info("%s, %s: %.1f", stage, name, 100 * mean)


def main(argv: list[str] | None = None) -> int:
    return run_stage(run, __doc__, parser=set_model_parser(__doc__), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
