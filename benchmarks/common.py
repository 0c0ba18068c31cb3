"""Shared set-up for the benchmarks: synthetic clip shards and evaluation shards in a temp dir, and a stage run in a
fresh process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timetuning.data.eval_shards import shard_eval_set  # noqa: E402
from timetuning.data.synthetic import generate_video, write_clip_shards, write_davis_sequence  # noqa: E402
from timetuning.infra.config import EvalSetParams  # noqa: E402


def clip_shards(out: Path, videos: int = 8, clips_per_video: int = 8, size: int = 128) -> Path:
    return write_clip_shards(out, videos=videos, clips_per_video=clips_per_video, frames=16, width=size * 5 // 4,
                             height=size, maxcount=32)


def eval_shards(out: Path, sequences: int, frames: int = 8, size: int = 224) -> Path:
    rng = np.random.default_rng(0)
    root = out / "davis"
    names = []
    for i in range(sequences):
        write_davis_sequence(generate_video(rng, frames=frames, width=160, height=128, num_classes=4, objects=3),
                             root, f"s{i}")
        names.append(f"s{i}")
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names))
    shard_eval_set(EvalSetParams(name="bench", layout="davis", root=str(root), splits=["val"], size=size,
                                 frames_per_clip=4, max_clips_per_video=2), out / "eval", progress=False)
    return out / "eval" / "bench"


def run_stage(module: str, params: Path, log: Path, *extra: str) -> None:
    """``python -m <module> --params <params> <extra>`` from the repository root, its output appended to ``log``;
    a failure ends the benchmark naming the log."""
    with open(log, "a") as f:
        proc = subprocess.run([sys.executable, "-m", module, "--params", str(params), *extra], cwd=ROOT, stdout=f,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"error: {module} failed (exit {proc.returncode}); see {log}")


def run_evaluation(params: Path, log: Path, eval_set: str, models: list[str]) -> None:
    """The evaluation stages of one set as dvc.yaml chains them: model_weights, each model's extract_features and
    fit_probes, then compare (results.json)."""
    run_stage("stages.model_weights", params, log)
    for model in models:
        run_stage("stages.extract_features", params, log, "--set", eval_set, "--model", model)
        run_stage("stages.fit_probes", params, log, "--set", eval_set, "--model", model)
    run_stage("stages.compare", params, log, "--set", eval_set)
