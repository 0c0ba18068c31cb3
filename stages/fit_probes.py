"""DVC stage `fit_probes`: clustering, overclustering, linear probe, retrieval and temporal consistency for every
model x evaluation set (scored on each set's val split; fitted on its train split)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from timetuning.config import Params
from timetuning.features import read_labels
from timetuning.files import atomic_path, write_json_atomic
from timetuning.protocols import load_split, run_protocols
from timetuning.stage import run_stage

log = logging.getLogger("timetuning.stages.fit_probes")


def run(params: Params, args: argparse.Namespace) -> None:
    p, feats = params.fit_probes, params.extract_features
    out = Path(p.output_dir)
    results: dict = {}
    for model in feats.models:
        for name, eval_set in params.shard_eval.sets.items():
            set_dir = Path(params.shard_eval.output_dir) / name
            labels = read_labels(set_dir)
            score_split = "val" if "val" in eval_set.splits else eval_set.splits[-1]
            fit_split = "train" if "train" in eval_set.splits and score_split != "train" else None
            base = Path(feats.output_dir) / model.name / name
            val = load_split(base / f"{score_split}.parquet", set_dir, score_split, feats.input_size)
            train = load_split(base / f"{fit_split}.parquet", set_dir, fit_split, feats.input_size) if fit_split else None
            metrics, examples = run_protocols(val, train, len(labels["classes"]), p,
                                              params.evaluate.num_example_clips)
            metrics["scored_on"], metrics["fitted_on"] = score_split, fit_split
            results.setdefault(model.name, {})[name] = metrics
            with atomic_path(out / model.name / f"{name}_examples.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, **examples, clip_names=np.array(val.clip_names[: len(examples["frames_of_clip"])]))
            log.info("%s on %s: per-clip clustering mIoU %.3f, linear %s", model.name, name,
                     metrics["cluster_per_clip"]["mean"], metrics.get("linear", {}).get("miou"))
    write_json_atomic(out / "results.json", results)


def main(argv: list[str] | None = None) -> int:
    return run_stage(run, __doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
