"""DVC stage `shard_videos`: raw videos (any folder of mp4/avi/mkv/webm/mov) -> WebDataset clip shards."""

from __future__ import annotations

import argparse
import logging
import sys

from timetuning.data.ingest import shard_videos
from timetuning.infra.config import Params
from timetuning.run.inputs import check_stage_inputs
from timetuning.run.stage import run_stage

log = logging.getLogger("timetuning.stages.shard_videos")


def run(params: Params, args: argparse.Namespace) -> None:
    check_stage_inputs(params, "shard_videos")
    manifest = shard_videos(params.shard_videos, params.seed)  # on the executor params.yaml names
    log.info("%d clips from %d/%d videos -> %d shard(s) in %s; skipped %d",
             manifest["clips_written"], manifest["videos_used"], manifest["videos_seen"],
             len(manifest["shards"]), params.shard_videos.output_dir, len(manifest["videos_skipped"]))
    for item in manifest["folders_skipped"] + manifest["videos_skipped"] + manifest["videos_shortened"]:
        log.warning("%s: %s", "shortened" if item in manifest["videos_shortened"] else "skipped", item["reason"])


def main(argv: list[str] | None = None) -> int:
    return run_stage(run, __doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
