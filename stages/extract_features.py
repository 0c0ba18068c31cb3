"""DVC stage `extract_features@<set>-<model>`: dense patch features of one evaluation set for one model -> Parquet
(``<output_dir>/<set>/<model>/<split>.parquet`` and its ``index.json``). Under torchrun each rank embeds a block of
the clips and rank 0 merges the parts: the files are those one process writes."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from timetuning.data.eval_shards import read_labels
from timetuning.eval.extraction import extract_split_distributed
from timetuning.infra.config import Params
from timetuning.infra.distributed import cleanup, init_distributed
from timetuning.infra.files import write_json_atomic
from timetuning.models.backbones import build_backbone
from timetuning.run.inputs import check_stage_inputs
from timetuning.run.stage import run_stage, set_model_parser

log = logging.getLogger("timetuning.stages.extract_features")


def run(params: Params, args: argparse.Namespace) -> None:
    check_stage_inputs(params, f"extract_features@{args.set}-{args.model}")  # before any work, naming the stage
    p, eval_set, model = params.extract_features, params.shard_eval.set(args.set), params.extract_features.model(
        args.model)
    set_dir, out = Path(params.shard_eval.output_dir) / args.set, Path(p.output_dir) / args.set / args.model
    ctx = init_distributed()
    spec = model.resolve(params.train)
    backbone = build_backbone(spec).to(ctx.device)
    source = backbone.weights_source.as_dict() if backbone.weights_source is not None else None
    index: dict = {"set": args.set, "model": args.model, "input_size": p.input_size, "dtype": p.dtype,
                   "labels": read_labels(set_dir), "backbone": spec.model_dump(mode="json"), "weights_source": source,
                   "files": {}}
    for split in eval_set.splits:
        path = out / f"{split}.parquet"
        stats = extract_split_distributed(backbone, set_dir, split, path, ctx=ctx, input_size=p.input_size,
                                          dtype=p.dtype, batch_size=p.batch_size, row_group_size=p.row_group_size,
                                          device=ctx.device, progress=ctx.is_main)
        if ctx.is_main:
            log.info("%s %s/%s: %d patches of %d frames, %.1f frames/s", args.model, args.set, split, stats["rows"],
                     stats["frames"], stats["frames_per_second"])
        index["files"][split] = {"path": str(path), **{k: v for k, v in stats.items() if "second" not in k}}
    if ctx.is_main:
        write_json_atomic(out / "index.json", index)
    cleanup(ctx)


def main(argv: list[str] | None = None) -> int:
    return run_stage(run, __doc__, parser=set_model_parser(__doc__), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
