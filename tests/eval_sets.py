"""Tiny labeled evaluation sets (DAVIS layout, synthetic videos) and their shards, for training-side tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from timetuning.config import EvalSetParams
from timetuning.eval_shards import shard_eval_set
from timetuning.synthetic import generate_video, write_davis_sequence


def davis_set(root: Path, splits: dict[str, list[str]], frames: int = 6, width: int = 64, height: int = 48,
              seed: int = 0) -> Path:
    """A DAVIS-layout folder whose ``ImageSets/2017/<split>.txt`` list the given sequence names (4 classes)."""
    rng = np.random.default_rng(seed)
    written: set[str] = set()
    for split, names in splits.items():
        for name in names:
            if name not in written:
                write_davis_sequence(generate_video(rng, frames=frames, width=width, height=height, num_classes=4,
                                                    objects=3), root, name)
                written.add(name)
        (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "2017" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    (root / "classes.json").write_text(json.dumps(["background", "a", "b", "c"]))
    return root


def sharded_set(root: Path, out: Path, name: str, splits: list[str], **kw) -> Path:
    """Shard a DAVIS-layout set into ``out/<name>``; returns that folder."""
    params = EvalSetParams(name=name, layout="davis", root=str(root), splits=splits, size=kw.pop("size", 64),
                           frames_per_clip=kw.pop("frames_per_clip", 2), **kw)
    shard_eval_set(params, out, progress=False)
    return out / name
