"""Training: overfit, bit-exact resume after a kill at any step, selection and cadence, precision, clipping,
progress lines, NaN stop, and 2-process DDP (gloo) equal to one process on the same global batch."""

import copy
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import timetuning.train.loop as loop
from tests.dvc_repo import PROJECT, dvc_env
from tests.evalsets import named_davis_set, sharded_set
from timetuning.data.synthetic import write_clip_shards
from timetuning.infra.checkpoint import load_checkpoint, save_checkpoint
from timetuning.infra.config import TrainParams, dump_params, validate_params
from timetuning.infra.distributed import DistContext
from timetuning.models.backbones import build_backbone
from timetuning.models.head import ClusteringHead
from timetuning.train.loop import NonFiniteLossError, optimisation_step, train
from timetuning.train.optimizer import build_optimizer
from timetuning.train.progress import ProgressLog
from timetuning.train.run_state import TrainingRun
from timetuning.train.selection import BestValidation, beats
from timetuning.train.tuner import TimeTuner, build_objective, build_tuner
from timetuning.train.validation import ValidationData, ValidationScores, validation_data

CPU = DistContext()


@pytest.fixture(scope="module")
def clip_shards(tmp_path_factory):
    """Two shards of 4-frame clips cut from synthetic videos (the shard contract of shard_videos)."""
    return write_clip_shards(tmp_path_factory.mktemp("shards"), videos=3, clips_per_video=4, frames=8, width=80,
                             height=64, maxcount=6)


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    named_davis_set(root, {"train": ["t0", "t1", "t2"], "val": ["v0"]})
    sharded_set(root, root.parent / f"{root.name}-shards", "davis", ["train", "val"], max_clips_per_video=2)
    return root


def tiny(clip_shards, out, **kw) -> TrainParams:
    base = dict(shards=str(clip_shards), output_dir=str(out), input_size=64, batch_size=4, steps=8,
                num_prototypes=16, hidden_dim=64, bottleneck_dim=32, projection_dim=16, num_workers=0,
                checkpoint_every=2, val_every=100, val_set=None, lr_backbone=1e-4, lr_head=1e-3, grad_clip=0.0,
                freeze_backbone_steps=0,
                backbone={"name": "test_vit", "weights": "none"})
    base.update(kw)
    return TrainParams(**base)


def with_validation(p: TrainParams, eval_root: Path) -> ValidationData:
    """The run's validation data as the stage builds it (leak checks included), on the tiny DAVIS set."""
    params = validate_params({
        "train": p.model_dump(mode="json") | {"val_set": "davis", "val_split": "train", "val_clips": 4},
        "shard_eval": {"output_dir": str(eval_root.parent / f"{eval_root.name}-shards"),
                       "sets": {"davis": {"layout": "davis", "root": str(eval_root)}}}})
    return validation_data(params)


def _log_column(out: Path, name: str) -> list[str]:
    lines = (out / "train_log.csv").read_text().splitlines()
    col = lines[0].split(",").index(name)
    return [line.split(",")[col] for line in lines[1:]]


def test_loss_decreases_on_a_tiny_overfit_run(clip_shards, tmp_path):
    summary = train(tiny(clip_shards, tmp_path, steps=30, lr_head=3e-3, log_every=1), 0, CPU, progress=False)
    losses = [float(v) for v in _log_column(tmp_path, "loss")[1:]]
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2
    assert summary["exported"] == "final" and (tmp_path / "timetuned.safetensors").is_file()
    assert json.loads((tmp_path / "model.json").read_text())["name"] == "test_vit"


class Killed(BaseException):
    """A kill at a step boundary (as SIGKILL would leave it: nothing after the last checkpoint is kept)."""


def _killed_then_resumed(monkeypatch, p: TrainParams, kill_at: int, validation) -> dict:
    original = loop.apply_schedules

    def dying(optimizer, step, params):
        if step == kill_at:
            raise Killed
        return original(optimizer, step, params)

    monkeypatch.setattr(loop, "apply_schedules", dying)
    with pytest.raises(Killed):
        train(p, 0, CPU, validation, progress=False)
    monkeypatch.setattr(loop, "apply_schedules", original)
    return train(p, 0, CPU, validation, progress=False)


def test_a_run_killed_at_any_step_resumes_to_the_same_bits(clip_shards, eval_root, tmp_path, monkeypatch):
    """Uninterrupted vs killed at steps 1 (no checkpoint yet), 3 (one step after a checkpoint) and 4 (right after
    one), then resumed: the exported backbone, the whole model and AdamW state, the losses, the targets'
    statistics and the validation scores and diagnostics are bitwise equal. The run crosses a pass over the data
    (12 clips, 4 per step), validates twice, and carries a queue (filled from step 1, used from step 3: the
    checkpoints at steps 2 and 4 hold it) and frozen prototypes for 2 steps."""
    def params(out):
        return tiny(clip_shards, out, steps=6, checkpoint_every=2, val_every=3, lr_backbone=1e-3, queue_size=96,
                    queue_start_step=1, freeze_prototypes_steps=2)

    reference = params(tmp_path / "ref")
    validation = with_validation(reference, eval_root)
    train(reference, 0, CPU, validation, progress=False)
    want = load_file(str(tmp_path / "ref" / "timetuned.safetensors"))
    want_state = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")
    for kill_at in (1, 3, 4):
        out = tmp_path / f"killed{kill_at}"
        summary = _killed_then_resumed(monkeypatch, params(out), kill_at, validation)
        assert summary["resumed_from"] == kill_at // 2 * 2
        got = load_file(str(out / "timetuned.safetensors"))
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), kill_at
        state = load_checkpoint(out / "checkpoints" / "last.pt")
        assert all(torch.equal(state["model"][k], want_state["model"][k]) for k in want_state["model"])
        for a, b in zip(state["optimizer"]["state"].values(), want_state["optimizer"]["state"].values()):
            assert all(torch.equal(a[k], b[k]) for k in a)
        for column in ("step", "loss", "prototypes_used", "target_perplexity", "agreement", "val_miou",
                       "forwarder_jf", "feature_cosine"):
            assert _log_column(out, column) == _log_column(tmp_path / "ref", column), (kill_at, column)
    # the runs really trained and validated: the weights moved and validation scored steps 0, 3 and 6
    torch.manual_seed(0)
    start = build_backbone(reference.backbone).model.state_dict()
    assert any(not torch.equal(start[k], want[k]) for k in want)
    assert [v != "" for v in _log_column(tmp_path / "ref", "val_miou")] == [True, False, False, True, False, False,
                                                                            True]


def test_params_change_never_resumes_a_foreign_checkpoint(clip_shards, tmp_path):
    train(tiny(clip_shards, tmp_path, steps=4), 0, CPU, progress=False)
    summary = train(tiny(clip_shards, tmp_path, steps=6, lr_head=5e-4), 0, CPU, progress=False)
    assert summary["resumed_from"] == 0
    same = train(tiny(clip_shards, tmp_path, steps=6, lr_head=5e-4, log_every=3), 0, CPU, progress=False)
    assert same["resumed_from"] == 6  # already complete (logging cadence is not part of the run)
    assert train(tiny(clip_shards, tmp_path, steps=6, lr_head=5e-4, val_every=3), 0, CPU,
                 progress=False)["resumed_from"] == 0  # validation cadence picks the export: a different run
    last = tmp_path / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    state["code"] = "other-code"  # as after an edit of the training code, which makes DVC rerun the stage
    save_checkpoint(last, state)
    assert train(tiny(clip_shards, tmp_path, steps=6, lr_head=5e-4, val_every=3), 0, CPU,
                 progress=False)["resumed_from"] == 0


def _scripted_validation(monkeypatch, scores: dict[int, float]):
    """Validation scores chosen per step (the real scoring is tested in test_validation.py)."""
    calls = []

    def scripted(backbone, data, input_size, device, forwarder, reference=None, seed=0):
        calls.append(len(calls))
        return ValidationScores(scores[len(calls) - 1], 0.5, 1.0), []

    monkeypatch.setattr(loop, "validate", scripted)
    return ValidationData("davis", "train", Path("unused"), 4, [], [])


def test_validation_cadence_is_independent_of_logging(clip_shards, tmp_path, monkeypatch):
    validation = _scripted_validation(monkeypatch, {0: 0.1, 1: 0.2, 2: 0.3, 3: 0.25})
    summary = train(tiny(clip_shards, tmp_path, steps=6, log_every=4, val_every=2), 0, CPU, validation,
                    progress=False)
    steps = [int(s) for s in _log_column(tmp_path, "step")]
    validated = [int(s) for s, v in zip(_log_column(tmp_path, "step"), _log_column(tmp_path, "val_miou")) if v]
    assert validated == [0, 2, 4, 6] and steps == [0, 2, 4, 6]  # log_every 4 adds nothing new here
    assert summary["best_step"] == 4 and summary["exported"] == "best" and summary["warning"] is None


def test_the_start_is_exported_only_when_strictly_best_and_then_loudly(clip_shards, tmp_path, monkeypatch, caplog):
    tie = _scripted_validation(monkeypatch, {0: 0.5, 1: 0.5, 2: 0.4})
    summary = train(tiny(clip_shards, tmp_path / "tie", steps=4, val_every=2), 0, CPU, tie, progress=False)
    assert summary["best_step"] == 2 and summary["exported"] == "best" and not summary["exported_is_start"]

    worse = _scripted_validation(monkeypatch, {0: 0.6, 1: 0.5, 2: 0.55})
    p = tiny(clip_shards, tmp_path / "worse", steps=4, val_every=2)
    with caplog.at_level(logging.WARNING, logger="timetuning.train"):
        summary = train(p, 0, CPU, worse, progress=False)
    assert summary["exported"] == "start" and summary["exported_is_start"] and summary["best_step"] == 0
    assert "IS the starting backbone" in summary["warning"] and "IS the starting backbone" in caplog.text
    written = json.loads((tmp_path / "worse" / "train_summary.json").read_text())
    assert written["exported_is_start"] is True and written["warning"] == summary["warning"]
    exported = load_file(str(tmp_path / "worse" / "timetuned.safetensors"))
    torch.manual_seed(0)  # as train() does before building: the random init of weights "none"
    start = build_backbone(p.backbone).model.state_dict()
    assert all(torch.equal(exported[k], start[k]) for k in start)


def test_selection_rule():
    assert beats(0.1, 0, BestValidation(-1.0, -1))
    assert beats(0.5, 5, BestValidation(0.5, 0))  # a trained step wins a tie against the start
    assert not beats(0.5, 10, BestValidation(0.5, 5))  # between trained steps the earlier one stays
    assert not beats(0.4, 5, BestValidation(0.5, 0))


def _tiny_tuner(seed=0, amp=None, student_temperature=0.1):
    p = TrainParams(backbone={"name": "test_vit", "weights": "none"}, num_prototypes=8, hidden_dim=32,
                    bottleneck_dim=16, projection_dim=8, student_temperature=student_temperature,
                    freeze_backbone_steps=0)
    tuner = build_tuner(p, seed, torch.device("cpu"))
    tuner.amp_dtype = amp
    return p, tuner


def _tiny_run(tuner: TimeTuner, p: TrainParams) -> TrainingRun:
    """A run around a copy of ``tuner`` (its own AdamW, no grad scaler)."""
    model = copy.deepcopy(tuner)
    return TrainingRun(p, 0, model, build_optimizer(model, p), torch.amp.GradScaler("cuda", enabled=False), "", "",
                       model=model)


def test_gradients_reach_adamw_unclipped_unless_asked():
    """The paper does not clip: with grad_clip 0 the optimiser sees the raw gradients, even when their norm is far
    above the demo's clip of 3; with grad_clip > 0 their norm is cut to it."""
    p, tuner = _tiny_tuner(student_temperature=0.01)
    clips = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reference = copy.deepcopy(tuner)
    trainable = [q for q in reference.parameters() if q.requires_grad]
    grads = torch.autograd.grad(reference(clips)[0], trainable)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert norm > 3.0
    for clip_to in (0.0, 1.0):
        run = _tiny_run(tuner, p.model_copy(update={"grad_clip": clip_to}))
        optimisation_step(run, clips, 0, CPU)
        got = [q.grad for q in run.tuner.parameters() if q.requires_grad]
        if clip_to == 0:
            assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(got, grads))
        else:
            clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in got]))
            assert clipped == pytest.approx(1.0, rel=1e-4)


def test_frozen_prototypes_and_backbone_stay_put_for_their_steps_only():
    """freeze_prototypes_steps 2, freeze_backbone_steps 1: step 0 moves the head's projection only, step 1 the
    backbone too, step 2 everything; a frozen part gets no weight decay either (it is bit for bit unchanged)."""
    p, tuner = _tiny_tuner()
    run = _tiny_run(tuner, p.model_copy(update={"freeze_prototypes_steps": 2, "freeze_backbone_steps": 1}))
    clips = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    parts = {"prototypes": run.tuner.head.prototypes, "projection": run.tuner.head.projection,
             "backbone": run.tuner.backbone}

    def snapshot():
        return {name: [q.detach().clone() for q in part.parameters() if q.requires_grad] for name, part in
                parts.items()}

    moved = []
    for step in range(3):
        before = snapshot()
        optimisation_step(run, clips, step, CPU)
        after = snapshot()
        moved.append({name for name in parts if any(not torch.equal(a, b) for a, b in zip(before[name],
                                                                                         after[name]))})
    assert moved == [{"projection"}, {"projection", "backbone"}, {"projection", "backbone", "prototypes"}]


class _RecordingBackbone(torch.nn.Module):
    """Fixed dense features (autocast cannot change them) that record whether autocast was on."""

    def __init__(self, feats):
        super().__init__()
        self.feats, self.autocast_seen = torch.nn.Parameter(feats), []

    def forward(self, images):
        self.autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return self.feats[: images.shape[0]] * 1.0


def test_only_the_backbone_runs_under_autocast():
    """bf16 autocast covers the backbone only: head scores, Sinkhorn and the Feature-Forwarder stay in fp32, also
    when a caller autocasts around the whole module, so the loss equals the fp32 loss exactly."""
    g = torch.Generator().manual_seed(0)
    b, t, d, h = 2, 4, 24, 4
    backbone = _RecordingBackbone(torch.randn(b * t, d, h, h, generator=g))
    head = ClusteringHead(d, num_prototypes=6, hidden_dim=32, bottleneck_dim=16, out_dim=8, generator=g)
    head_autocast = []
    head.register_forward_pre_hook(lambda m, args: head_autocast.append(torch.is_autocast_enabled("cpu")))
    tuner = TimeTuner(backbone, head, build_objective(TrainParams()))
    clips = torch.zeros(b, t, 3, 16, 16)
    fp32 = tuner(clips)[0]
    tuner.amp_dtype = torch.bfloat16
    own = tuner(clips)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        wrapped = tuner(clips)[0]
    assert backbone.autocast_seen == [False, True, True] and not any(head_autocast)
    assert own.dtype == wrapped.dtype == torch.float32
    assert own.item() == fp32.item() == wrapped.item()


def test_progress_lines_are_rounded_and_complete(clip_shards, tmp_path, caplog):
    log = ProgressLog(total=400, start=100, every=0.0)
    log.started -= 30.0  # 30 s for the first 100 steps of this run
    log.last_time -= 30.0
    with caplog.at_level(logging.INFO, logger="timetuning.train"):
        log.update(200, 1.234567, 8)
    line = caplog.records[-1].getMessage()
    assert line.startswith("step 200/400 (50%)  loss 1.2346  ") and line.endswith("clips/s  ETA 1m00s")
    assert "%|" not in line  # a tqdm-like percentage would be taken for a progress bar by the flow
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="timetuning.train"):
        train(tiny(clip_shards, tmp_path, steps=3, progress_seconds=1e-6), 0, CPU, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [ln.split()[1] for ln in lines] == ["1/3", "2/3", "3/3"] and lines[-1].endswith("ETA 0s")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(clip_shards, tmp_path):
    # a genuine checkpoint, then its weights poisoned as a diverged run would leave them
    train(tiny(clip_shards, tmp_path, steps=8, checkpoint_every=4), 0, CPU, progress=False)
    last = tmp_path / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    state["step"] = 4
    for k in state["model"]:
        if k.startswith("head.projection"):
            state["model"][k] = torch.full_like(state["model"][k], float("nan"))
    save_checkpoint(last, state)
    before = last.read_bytes()
    with pytest.raises(NonFiniteLossError, match="at step 4; stopped. The last good checkpoint is kept"):
        train(tiny(clip_shards, tmp_path, steps=8, checkpoint_every=4), 0, CPU, progress=False)
    assert last.read_bytes() == before


def _stage_params(clip_shards, out, **kw) -> Path:
    data = {"train": tiny(clip_shards, out, **kw).model_dump(mode="json"),
            "shard_eval": {"output_dir": str(out.parent / "no-eval-shards")}}
    path = out.parent / f"{out.name}-params.yaml"
    path.write_text(dump_params(validate_params(data)))
    return path


@pytest.mark.slow
def test_killed_process_resumes_to_the_bits_of_an_uninterrupted_run(clip_shards, tmp_path):
    out = tmp_path / "run"
    params = _stage_params(clip_shards, out, steps=16, checkpoint_every=2)
    cmd = [sys.executable, "-m", "stages.train", "--params", str(params)]
    proc = subprocess.Popen(cmd, cwd=PROJECT, env=dvc_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and not (last.is_file() and load_checkpoint(last)["step"] >= 4):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # a hard kill mid-run
    proc.wait()
    killed_at = load_checkpoint(last)["step"]
    assert 4 <= killed_at < 16 and not list(last.parent.glob(".*.tmp"))
    subprocess.run(cmd, cwd=PROJECT, env=dvc_env(), check=True, capture_output=True)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] >= killed_at and summary["steps"] == 16
    assert [int(s) for s in _log_column(out, "step")] == list(range(0, 17))  # none lost or doubled
    # the reference runs as a process too: same thread count and start-up, whatever this test process did before
    reference = _stage_params(clip_shards, tmp_path / "uninterrupted", steps=16, checkpoint_every=2)
    subprocess.run([sys.executable, "-m", "stages.train", "--params", str(reference)], cwd=PROJECT, env=dvc_env(),
                   check=True, capture_output=True)
    want = load_file(str(tmp_path / "uninterrupted" / "timetuned.safetensors"))
    got = load_file(str(out / "timetuned.safetensors"))
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert _log_column(out, "loss") == _log_column(tmp_path / "uninterrupted", "loss")


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_on_the_same_global_batch(clip_shards, tmp_path):
    """2 gloo ranks x 2 clips vs 1 process x 4 clips: the same clips (the stream slices the global batch by rank),
    Sinkhorn balanced over both ranks, each rank's share of the queue with them, gradients averaged. Losses and
    weights agree to float rounding."""
    env = dvc_env() | {"OMP_NUM_THREADS": "1"}
    # a queue of 2 steps' patches (4 clips x 16 patches each): each rank keeps 64 of its own, the one process 128
    common = dict(steps=4, checkpoint_every=4, lr_backbone=1e-3, lr_head=1e-2, queue_size=128)
    ddp = _stage_params(clip_shards, tmp_path / "ddp", batch_size=2, **common)
    single = _stage_params(clip_shards, tmp_path / "single", batch_size=4, **common)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "stages.train",
           "--params", str(ddp)]
    proc = subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-m", "stages.train", "--params", str(single)], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "train_summary.json").read_text())["world_size"] == 2
    ddp_loss = [float(v) for v in _log_column(tmp_path / "ddp", "loss")[1:]]
    single_loss = [float(v) for v in _log_column(tmp_path / "single", "loss")[1:]]
    assert len(ddp_loss) == 4 and np.allclose(ddp_loss, single_loss, rtol=1e-5, atol=0)
    a = load_file(str(tmp_path / "ddp" / "timetuned.safetensors"))
    b = load_file(str(tmp_path / "single" / "timetuned.safetensors"))
    torch.manual_seed(0)
    start = build_backbone(tiny(clip_shards, tmp_path).backbone).model.state_dict()
    moved = max(float((b[k] - start[k]).abs().max()) for k in b)
    differ = max(float((a[k] - b[k]).abs().max()) for k in b)
    # trained, and the same training: AdamW divides by the gradient's own scale, so reduction-order rounding in
    # near-zero gradients moves a few weights by up to ~0.3% of the training's movement (measured), never more
    assert moved > 1e-3 and differ < 1e-2 * moved
    ddp_state = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    single_state = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")
    head = [k for k in single_state["model"] if k.startswith("head.")]
    assert all(torch.allclose(ddp_state["model"][k], single_state["model"][k], atol=1e-5) for k in head)
    assert len(ddp_state["rng"]) == 2  # every rank's random state is in the checkpoint
    assert [q["embeddings"].shape[0] for q in ddp_state["queues"]] == [64, 64]  # and every rank's queue
