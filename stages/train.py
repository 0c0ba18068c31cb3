"""DVC stage `train`: time-tune a backbone on the clip shards (one process, or `torchrun ... -m stages.train`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from timetuning.config import Params
from timetuning.distributed import cleanup, init_distributed
from timetuning.stage import run_stage
from timetuning.training import train

log = logging.getLogger("timetuning.stages.train")


def run(params: Params, args: argparse.Namespace) -> None:
    p = params.train
    val_dir = None
    if p.val_set:
        if p.val_set not in params.shard_eval.sets:
            raise ValueError(f"train.val_set: no evaluation set named {p.val_set!r} in shard_eval.sets")
        val_dir = Path(params.shard_eval.output_dir) / p.val_set
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
