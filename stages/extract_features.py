"""DVC stage `extract_features`: dense patch features of every evaluation set, for every model -> Parquet."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from timetuning.backbones import build_backbone
from timetuning.config import Params
from timetuning.features import extract_split, read_labels
from timetuning.files import write_json_atomic
from timetuning.stage import run_stage

log = logging.getLogger("timetuning.stages.extract_features")


def run(params: Params, args: argparse.Namespace) -> None:
    p = params.extract_features
    out = Path(p.output_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    index: dict = {"input_size": p.input_size, "dtype": p.dtype, "models": {}, "sets": {}}
    for name in params.shard_eval.sets:
        index["sets"][name] = read_labels(Path(params.shard_eval.output_dir) / name)
    for model in p.models:
        spec = model.resolve(params.train)
        backbone = build_backbone(spec).to(device)
        index["models"][model.name] = {"backbone": spec.model_dump(mode="json"), "files": {}}
        for name, eval_set in params.shard_eval.sets.items():
            for split in eval_set.splits:
                path = out / model.name / name / f"{split}.parquet"
                stats = extract_split(backbone, Path(params.shard_eval.output_dir) / name, split, path,
                                      input_size=p.input_size, dtype=p.dtype, batch_size=p.batch_size,
                                      row_group_size=p.row_group_size, device=device)
                log.info("%s %s/%s: %d patches of %d frames, %.1f frames/s", model.name, name, split, stats["rows"],
                         stats["frames"], stats["frames_per_second"])
                index["models"][model.name]["files"][f"{name}/{split}"] = {"path": str(path), **stats}
    write_json_atomic(out / "index.json", index)


def main(argv: list[str] | None = None) -> int:
    return run_stage(run, __doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
