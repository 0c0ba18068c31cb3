"""DVC stage `shard_eval@<set>`: a labeled set (DAVIS-2017, YouTube-VOS or Pascal VOC layout, or a VOC-like export of
labelme, CVAT or a plain folder) -> eval shards."""

from __future__ import annotations

import argparse
import logging
import sys

from timetuning.data.eval_shards import shard_eval_set
from timetuning.infra.config import Params
from timetuning.run.inputs import check_stage_inputs
from timetuning.run.stage import run_stage, stage_parser

log = logging.getLogger("timetuning.stages.shard_eval")


def run(params: Params, args: argparse.Namespace) -> None:
    section = params.shard_eval
    sets = section.sets
    chosen = [args.set] if args.set else list(sets)
    for name in chosen:
        check_stage_inputs(params, f"shard_eval@{name}")  # also names an unknown set
    for name in chosen:
        manifest = shard_eval_set(sets[name], section.output_dir, section.on_error, section.maxcount)
        log.info("%s: %s samples per split, %d sequence(s) skipped", name, manifest["splits"],
                 len(manifest["skipped"]))
        for item in manifest["skipped"]:
            log.warning("skipped %s/%s: %s", item["split"], item["video_id"], item["reason"])
        for warning in manifest.get("warnings", []):
            log.warning("%s: %s", name, warning)
        for note in manifest.get("notes", []):
            log.info("%s: %s", name, note)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--set", default=None, help="the set name (default: every set in params.yaml)")
    return run_stage(run, __doc__, parser=parser, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
