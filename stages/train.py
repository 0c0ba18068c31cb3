"""DVC stage `train`: time-tune a backbone on the clip shards (one process, or `torchrun ... -m stages.train`)."""

from __future__ import annotations

import argparse
import logging
import sys

from timetuning.infra.config import Params
from timetuning.infra.distributed import cleanup, init_distributed
from timetuning.run.inputs import check_stage_inputs
from timetuning.run.stage import run_stage
from timetuning.train.loop import train
from timetuning.train.validation import validation_data

log = logging.getLogger("timetuning.stages.train")


def _rounded(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def run(params: Params, args: argparse.Namespace) -> None:
    check_stage_inputs(params, "train")
    validation = validation_data(params)  # refuses data that evaluation scores, before any training
    ctx = init_distributed()
    try:
        seed = params.seed if params.train.seed is None else params.train.seed
        summary = train(params.train, seed, ctx, validation=validation)
    finally:
        cleanup(ctx)
    if ctx.is_main:
        log.info("trained %d steps (resumed from %d): loss %s -> %s, %s clips/s, val mIoU %s -> best %s at step %s; "
                 "exported %s", summary["steps"], summary["resumed_from"], _rounded(summary["first_loss"]),
                 _rounded(summary["final_loss"]), _rounded(summary["median_clips_per_s"], 3),
                 _rounded(summary["val_miou_start"]), _rounded(summary["val_miou_best"]), summary["best_step"],
                 summary["exported"])


def main(argv: list[str] | None = None) -> int:
    return run_stage(run, __doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
