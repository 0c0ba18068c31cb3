"""DVC stage `model_weights`: the fingerprint of every model of extract_features.models, one file per model
(``<weights_dir>/<model>.json``: its backbone and the SHA-256 of its weights file), so that each model's extraction
depends on its own weights only."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from timetuning.eval.model_weights import weights_record
from timetuning.infra.config import Params
from timetuning.infra.files import write_json_atomic
from timetuning.run.inputs import check_stage_inputs
from timetuning.run.stage import run_stage

log = logging.getLogger("timetuning.stages.model_weights")


def run(params: Params, args: argparse.Namespace) -> None:
    check_stage_inputs(params, "model_weights")  # before any work, naming the stage to run
    out = Path(params.extract_features.weights_dir)
    for name, model in params.extract_features.models.items():
        record = weights_record(model, params.train)
        write_json_atomic(out / f"{name}.json", record)
        file = record.get("weights_file")
        log.info("%s: %s%s", name, record["backbone"]["weights"], f" (sha256 {file['sha256'][:12]})" if file else "")


def main(argv: list[str] | None = None) -> int:
    return run_stage(run, __doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
