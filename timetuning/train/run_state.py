"""What a run carries from step to step and how it survives a kill: build, resume, wrap in DDP,
save (every rank's random state and queue included)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from timetuning.infra.checkpoint import (
    capture_rng_state,
    code_fingerprint,
    load_resume_state,
    params_fingerprint,
    restore_rng_state,
    save_checkpoint,
)
from timetuning.infra.config import TrainParams
from timetuning.infra.distributed import (
    DistContext,
    all_gather_object,
)
from timetuning.train.optimizer import build_optimizer
from timetuning.train.progress import write_log_csv
from timetuning.train.selection import BestValidation
from timetuning.train.tuner import TimeTuner, build_tuner

log = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """What a run carries from step to step (a checkpoint saves all of it): model, AdamW and grad-scaler states,
    the log rows, the best validation so far with the selected step's weights, and the fingerprints that tie it to
    its params and code."""

    p: TrainParams
    seed: int
    tuner: TimeTuner
    optimizer: torch.optim.AdamW
    scaler: torch.amp.GradScaler
    fingerprint: str
    code: str
    model: nn.Module  # what the loop calls: the tuner, DDP-wrapped when distributed
    start_step: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: BestValidation = field(default_factory=BestValidation)
    selected: dict[str, torch.Tensor] | None = None  # the selected step's trainable weights
    reference: list[torch.Tensor] | None = None  # the starting backbone's features of the validation clips

    @property
    def out(self) -> Path:
        return Path(self.p.output_dir)

    @property
    def last_path(self) -> Path:
        return self.out / "checkpoints" / "last.pt"


def build_run(p: TrainParams, seed: int, ctx: DistContext) -> TrainingRun:
    """Tuner, AdamW and grad scaler: the same initial weights on every rank (DDP also broadcasts rank 0's), then a
    random stream of its own per rank."""
    fingerprint, code = params_fingerprint(p.model_dump(mode="json"), seed), code_fingerprint()
    torch.manual_seed(seed)
    tuner = build_tuner(p, seed, ctx.device, ctx.world_size)
    torch.manual_seed(seed + ctx.rank)
    optimizer = build_optimizer(tuner, p)
    scaler = torch.amp.GradScaler("cuda", enabled=tuner.amp_dtype == torch.float16)
    return TrainingRun(p, seed, tuner, optimizer, scaler, fingerprint, code, model=tuner)


def resume_run(run: TrainingRun, ctx: DistContext) -> None:
    """Continue from ``last.pt`` when the same params made it. An unusable file is set aside by rank 0 and the run
    starts fresh; so does a *finished* run of other training code (DVC reruns the stage after a code change)."""
    state = load_resume_state(run.last_path, may_set_aside=ctx.is_main)
    if state is None:
        return
    if state.get("fingerprint") != run.fingerprint:
        log.info("ignoring %s: it was made with other params (fingerprint differs)", run.last_path)
        return
    if int(state.get("step", 0)) >= run.p.steps and state.get("code") != run.code:
        log.info("ignoring %s: a finished run made by other training code; training again", run.last_path)
        return
    if state.get("code") != run.code:
        log.warning("resuming %s, which was started by other training code", run.last_path)
    run.tuner.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    rng = state.get("rng", [])
    if len(rng) == ctx.world_size:
        restore_rng_state(rng[ctx.rank], ctx.device)
    elif ctx.is_main:
        log.warning("resuming with %d process(es), the checkpoint was made with %d: the run continues, but its data "
                    "order differs from an uninterrupted run", ctx.world_size, state.get("world_size", len(rng)))
    queue, queues = run.tuner.objective.queue, state.get("queues")
    if queue is not None and queues:
        queue.load_state_dict(queues[ctx.rank if len(queues) == ctx.world_size else 0])
    run.start_step, run.rows, run.best = int(state["step"]), list(state["log"]), BestValidation(**state["best"])
    if state.get("selected_weights") is not None:
        run.selected = state["selected_weights"]
    log.info("resuming from %s at step %d", run.last_path, run.start_step)


def data_parallel(tuner: TimeTuner, ctx: DistContext) -> nn.Module:
    """The tuner, wrapped in DDP when distributed (once its weights are final: DDP broadcasts rank 0's)."""
    if not ctx.distributed:
        return tuner
    return nn.parallel.DistributedDataParallel(tuner, device_ids=[ctx.device.index] if ctx.device.type == "cuda"
                                               else None)


def save_run(run: TrainingRun, step: int, ctx: DistContext) -> None:
    """``last.pt`` (rank 0) with every rank's random state, and the log so far."""
    rng = all_gather_object(ctx, capture_rng_state(ctx.device))  # every rank's stream, gathered on all
    queue = run.tuner.objective.queue
    queues = all_gather_object(ctx, queue.state_dict()) if queue is not None else None  # each rank keeps its own
    if ctx.is_main:
        save_checkpoint(run.last_path, {
            "step": step, "model": run.tuner.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(), "rng": rng, "world_size": ctx.world_size,
            "fingerprint": run.fingerprint, "code": run.code, "log": run.rows, "best": asdict(run.best),
            "selected_weights": run.selected, "queues": queues})
        write_log_csv(run.out / "train_log.csv", run.rows)
