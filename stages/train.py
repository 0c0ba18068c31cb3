"""DVC stage `train`: time-tune a backbone on the clip shards (one process, or `torchrun ... -m stages.train`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from timetuning.config import Params
from timetuning.distributed import cleanup, init_distributed
from timetuning.inputs import check_stage_inputs
from timetuning.stage import run_stage
from timetuning.training import train

log = logging.getLogger("timetuning.stages.train")


def run(params: Params, args: argparse.Namespace) -> None:
    check_stage_inputs(params, "train")
    p = params.train
    # the schema checked that val_set names a set; without its shards training skips validation (logged)
    val_dir = Path(params.shard_eval.output_dir) / p.val_set if p.val_set else None
    ctx = init_distributed()
    try:
        summary = train(p, params.seed, ctx, val_dir=val_dir)
    finally:
        cleanup(ctx)
    if ctx.is_main:
        log.info("trained %d steps (resumed from %d): loss %s -> %s, %s clips/s, val mIoU %s -> best %s",
                 summary["steps"], summary["resumed_from"], summary["first_loss"], summary["final_loss"],
                 summary["mean_clips_per_s"], summary["val_miou_start"], summary["val_miou_best"])


def main(argv: list[str] | None = None) -> int:
    return run_stage(run, __doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
