"""Training: overfit, resume after a kill, NaN stop, 2-process DDP (gloo), export."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.dvc_repo import PROJECT, dvc_env
from timetuning.checkpoint import load_checkpoint, save_checkpoint
from timetuning.config import TrainParams, dump_params, validate_params
from timetuning.distributed import DistContext
from timetuning.synthetic import write_clip_shards
from timetuning.training import NonFiniteLossError, train


@pytest.fixture(scope="module")
def clip_shards(tmp_path_factory):
    """Two shards of 4-frame clips cut from synthetic videos (the shard contract of shard_videos)."""
    return write_clip_shards(tmp_path_factory.mktemp("shards"), videos=3, clips_per_video=4, frames=8, width=80,
                             height=64, maxcount=6)


def tiny(clip_shards, out, **kw) -> TrainParams:
    base = dict(shards=str(clip_shards), output_dir=str(out), input_size=64, batch_size=4, steps=8,
                num_prototypes=16, hidden_dim=64, bottleneck_dim=32, projection_dim=16, num_workers=0,
                checkpoint_every=2, val_every=100, val_set=None, lr_backbone=1e-4, lr_head=1e-3,
                backbone={"name": "test_vit", "weights": "none"})
    base.update(kw)
    return TrainParams(**base)


def test_loss_decreases_on_a_tiny_overfit_run(clip_shards, tmp_path):
    summary = train(tiny(clip_shards, tmp_path, steps=30, lr_head=3e-3, log_every=1), 0, DistContext(),
                    progress=False)
    rows = [r for r in (tmp_path / "train_log.csv").read_text().splitlines()[2:]]
    losses = [float(r.split(",")[1]) for r in rows]
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2
    assert summary["exported"] == "final" and (tmp_path / "timetuned.safetensors").is_file()
    assert json.loads((tmp_path / "model.json").read_text())["name"] == "test_vit"


def test_params_change_never_resumes_a_foreign_checkpoint(clip_shards, tmp_path):
    train(tiny(clip_shards, tmp_path, steps=4), 0, DistContext(), progress=False)
    summary = train(tiny(clip_shards, tmp_path, steps=6, lr_head=5e-4), 0, DistContext(), progress=False)
    assert summary["resumed_from"] == 0
    same = train(tiny(clip_shards, tmp_path, steps=6, lr_head=5e-4), 0, DistContext(), progress=False)
    assert same["resumed_from"] == 6  # already complete: nothing left to do
    last = tmp_path / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    state["code"] = "other-code"  # as after an edit of the training code, which makes DVC rerun the stage
    save_checkpoint(last, state)
    assert train(tiny(clip_shards, tmp_path, steps=6, lr_head=5e-4), 0, DistContext(),
                 progress=False)["resumed_from"] == 0


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(clip_shards, tmp_path):
    # a genuine checkpoint, then its weights poisoned as a diverged run would leave them
    train(tiny(clip_shards, tmp_path, steps=8, checkpoint_every=4), 0, DistContext(), progress=False)
    last = tmp_path / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    state["step"] = 4
    for k in state["model"]:
        if k.startswith("head.projection"):
            state["model"][k] = torch.full_like(state["model"][k], float("nan"))
    save_checkpoint(last, state)
    before = last.read_bytes()
    with pytest.raises(NonFiniteLossError, match="at step 4; stopped. The last good checkpoint is kept"):
        train(tiny(clip_shards, tmp_path, steps=8, checkpoint_every=4), 0, DistContext(), progress=False)
    assert last.read_bytes() == before


def _stage_params(clip_shards, out, **kw) -> Path:
    data = {"train": tiny(clip_shards, out, **kw).model_dump(mode="json")}
    path = out.parent / f"{out.name}-params.yaml"
    path.write_text(dump_params(validate_params(data)))
    return path


@pytest.mark.slow
def test_killed_run_resumes_and_ends_with_the_same_step_count(clip_shards, tmp_path):
    out = tmp_path / "run"
    params = _stage_params(clip_shards, out, steps=24, checkpoint_every=2)
    cmd = [sys.executable, "-m", "stages.train", "--params", str(params)]
    proc = subprocess.Popen(cmd, cwd=PROJECT, env=dvc_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not (last.is_file() and load_checkpoint(last)["step"] >= 4):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # a hard kill mid-run
    proc.wait()
    killed_at = load_checkpoint(last)["step"]
    assert 4 <= killed_at < 24 and not list(last.parent.glob(".*.tmp"))
    subprocess.run(cmd, cwd=PROJECT, env=dvc_env(), check=True, capture_output=True)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] >= killed_at and summary["steps"] == 24
    assert load_checkpoint(last)["step"] == 24
    steps = [int(r.split(",")[0]) for r in (out / "train_log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(0, 25))  # one log row per step, none lost or doubled by the resume


@pytest.mark.slow
def test_two_process_ddp_on_gloo(clip_shards, tmp_path):
    out = tmp_path / "ddp"
    params = _stage_params(clip_shards, out, steps=3, checkpoint_every=3)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "stages.train",
           "--params", str(params)]
    env = dvc_env() | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["step"] == 3 and any(k.startswith("backbone.model.blocks") for k in state["model"])
    assert yaml.safe_load(params.read_text())["train"]["steps"] == 3
