"""A real DVC repository in a temp dir holding this project's stages, for end-to-end pipeline tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.dvc_runner import stage_env
from timetuning.infra.config import dump_params, validate_params

PROJECT = Path(__file__).resolve().parents[1]


def dvc_env() -> dict[str, str]:
    """The flows' environment for stage commands (`python` is this interpreter, the project importable), offline."""
    return stage_env() | {"HF_HUB_OFFLINE": "1"}


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=dvc_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], repo, check)


def make_repo(path: Path, params: dict) -> Path:
    """Copy the pipeline (dvc.yaml, stages, library, splits/) into a fresh git + DVC repo with ``params`` (files
    already under ``path``, e.g. lists in splits/, are committed with it)."""
    path.mkdir(parents=True, exist_ok=True)
    for item in ("dvc.yaml", "stages", "timetuning", ".dvcignore", "models/custom", "splits"):
        src = PROJECT / item
        if src.is_dir():
            shutil.copytree(src, path / item, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            shutil.copy(src, path / item)
    (path / "models/custom").mkdir(parents=True, exist_ok=True)
    # dvc.yaml interpolates ${section.key}: params.yaml must hold every key, so write the schema's full form
    (path / "params.yaml").write_text(dump_params(validate_params(params)))
    shutil.copy(PROJECT / ".gitignore", path / ".gitignore")  # the project's: which outputs git tracks
    run(["git", "init", "-q"], path)
    run(["git", "config", "user.email", "test@example.com"], path)
    run(["git", "config", "user.name", "test"], path)
    dvc(path, "init", "-q")
    dvc(path, "config", "core.analytics", "false")
    dvc(path, "config", "core.check_update", "false")
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", "init"], path)
    return path


def tiny_params() -> dict:
    """Params for a pipeline that runs in seconds on 2 cores."""
    return {
        "seed": 0,
        "demo_data": {"num_train_videos": 2, "num_val_videos": 1, "frames": 8, "width": 64, "height": 48,
                      "copy_package_videos": False},
        "shard_videos": {"fps": 6, "size": 32, "clips_per_video": 2, "workers": 1},
        "shard_eval": {"sets": {"davis_demo": {"layout": "davis", "root": "data/raw/davis_demo",
                                                "short_side": 64, "frames_per_clip": 2, "max_clips_per_video": 2}}},
    }


def tiny_full_params() -> dict:
    """Every stage, tiny: real package weights at 64 px, a few training steps, one seed."""
    params = tiny_params()
    params["train"] = {"input_size": 64, "batch_size": 4, "steps": 4, "num_prototypes": 16, "hidden_dim": 64,
                       "bottleneck_dim": 32, "projection_dim": 16, "num_workers": 0,
                       "checkpoint_every": 2, "val_every": 2, "freeze_backbone_steps": 0}
    params["extract_features"] = {"input_size": 64, "batch_size": 8}
    params["fit_probes"] = {"seeds": [0], "kmeans_restarts": 1, "overclustering_k": [8], "linear_epochs": 3,
                            "linear_drop_epoch": 2}
    params["evaluate"] = {"num_example_clips": 1}
    return params


def ran_stages(output: str) -> list[str]:
    """Stage names DVC says it ran ("Running stage 'x':")."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]
