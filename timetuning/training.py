"""The time-tuning training loop: one process or torchrun DDP, resumable bit for bit, validated, exported.

Per step: a batch of clips (T frames, clip-consistent augmentation) goes through the backbone once (bf16 autocast
there only, when asked); frame 0's prototype scores are balanced by Sinkhorn-Knopp, carried to the last frame by
the Feature-Forwarder over the (no-grad) backbone features, and the student's scores on the last frame are trained
against that target, all in fp32. Only the last ``trainable_blocks`` blocks, the head and the prototypes train
(AdamW, per-iteration cosine lr and weight decay, none on biases / 1-D parameters, no clipping unless asked);
prototypes are re-normalised after every step.

Shape (DINO's): :func:`build_run` -> :func:`resume_run` -> validate the start -> :func:`train_steps` (a short
"why" at each step, nanoGPT's) -> :func:`finish_run` (export). A resumed run equals an uninterrupted one:
the data stream is a function of the step (:mod:`timetuning.clip_stream`), and the checkpoint holds the model,
AdamW and grad-scaler states and every rank's random state.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from timetuning.backbones import DenseBackbone, build_backbone
from timetuning.checkpoint import (capture_rng_state, code_fingerprint, export_backbone, load_resume_state,
                                   params_fingerprint, restore_rng_state, save_checkpoint)
from timetuning.clip_stream import clip_batches, loader_workers, training_clips
from timetuning.config import TrainParams
from timetuning.distributed import (DistContext, all_gather_object, barrier, broadcast_object, global_mean,
                                    global_sum)
from timetuning.files import write_json_atomic, write_text_atomic
from timetuning.head import ClusteringHead
from timetuning.loss import EmbeddingQueue, ForwarderSettings, TargetStatistics, TimeTuningObjective
from timetuning.schedules import cosine
from timetuning.transforms import ClipAugmentation
from timetuning.validation import ValidationData, clip_features, validate

log = logging.getLogger(__name__)
# per step: the loss, the schedules, throughput and what the step's targets look like; per validation: the
# selection score and the diagnostics that tell collapse, drift and broken correspondences apart
LOG_FIELDS = ("step", "loss", "lr_backbone", "lr_head", "weight_decay", "clips_per_s", "prototypes_used",
              "target_perplexity", "agreement", "val_miou", "forwarder_jf", "feature_cosine")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; training stopped and the last good checkpoint was kept."""


class TimeTuner(nn.Module):
    """Backbone + clustering head; ``forward(clips, step)`` returns the time-tuning loss and the summed
    :class:`~timetuning.loss.TargetStatistics` of its targets (one module for DDP).

    ``amp_dtype`` autocasts the backbone only: head scores, Sinkhorn and the Feature-Forwarder always run in fp32
    (in bf16 a few percent of the forwarder's targets flip), even when a caller autocasts around this module.
    """

    def __init__(self, backbone: DenseBackbone, head: ClusteringHead, objective: TimeTuningObjective,
                 amp_dtype: torch.dtype | None = None):
        super().__init__()
        self.backbone, self.head, self.objective, self.amp_dtype = backbone, head, objective, amp_dtype

    def forward(self, clips: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = clips.shape[:2]
        images = clips.flatten(0, 1)
        if images.is_cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            feats = self.backbone(images)
        with torch.autocast(images.device.type, enabled=False):
            feats = feats.float().reshape(b, t, *feats.shape[1:])
            frames = self.objective.sinkhorn_frame_index(t)
            with torch.no_grad():  # Sinkhorn's side: [B, F, h*w, E]
                embeddings = self.head.embed(feats[:, frames].flatten(0, 1)).unflatten(0, (b, len(frames)))
            loss, stats = self.objective(feats, embeddings, self.head(feats[:, -1]), self.head.prototypes, step)
            return loss, stats.as_tensor()


def build_objective(p: TrainParams, world_size: int = 1) -> TimeTuningObjective:
    """The objective with the ``train`` section's constants, and its queue when asked for: ``queue_size`` is over
    all processes, each keeps its share of it (as SwAV's), so the rows Sinkhorn balances do not depend on how many
    processes share the global batch."""
    queue = (EmbeddingQueue(max(1, p.queue_size // world_size), p.projection_dim, p.queue_start_step)
             if p.queue_size else None)
    forwarder = ForwarderSettings(temperature=p.forwarder_temperature, topk=p.forwarder_topk,
                                  window_radius=p.forwarder_window, context_frames=p.forwarder_context)
    return TimeTuningObjective(sinkhorn_epsilon=p.sinkhorn_epsilon, sinkhorn_iterations=p.sinkhorn_iterations,
                               student_temperature=p.student_temperature, forwarder=forwarder,
                               sinkhorn_frames=p.sinkhorn_frames, queue=queue)


def autocast_dtype(p: TrainParams, device: torch.device) -> torch.dtype | None:
    """The backbone's autocast dtype: none on CPU or for fp32, fp16 when asked, else bf16 on a GPU."""
    if device.type != "cuda" or p.precision == "fp32":
        return None
    return torch.float16 if p.precision == "fp16" else torch.bfloat16


def build_tuner(p: TrainParams, seed: int, device: torch.device, world_size: int = 1) -> TimeTuner:
    """Backbone (last blocks trainable) + head with prototypes seeded by ``seed``, on ``device``."""
    backbone = build_backbone(p.backbone, trainable_blocks=p.trainable_blocks)
    head = ClusteringHead(backbone.embed_dim, p.num_prototypes, p.hidden_dim, p.bottleneck_dim, p.projection_dim,
                          generator=torch.Generator().manual_seed(seed))
    tuner = TimeTuner(backbone, head, build_objective(p, world_size), autocast_dtype(p, device)).to(device)
    return tuner.to(memory_format=torch.channels_last) if device.type == "cuda" else tuner


# ---------------------------------------------------------------------------------------------- optimiser
def build_optimizer(tuner: TimeTuner, p: TrainParams) -> torch.optim.AdamW:
    """AdamW with groups: backbone / head x decay / no decay (biases and 1-D parameters get none)."""
    groups = []
    for part, lr in ((tuner.backbone, p.lr_backbone), (tuner.head, p.lr_head)):
        params = [q for q in part.parameters() if q.requires_grad]
        decay = [q for q in params if q.ndim >= 2]
        no_decay = [q for q in params if q.ndim < 2]
        for chunk, wd in ((decay, True), (no_decay, False)):
            if chunk:
                groups.append({"params": chunk, "lr": lr, "base_lr": lr, "apply_wd": wd,
                               "weight_decay": p.weight_decay_start if wd else 0.0})
    return torch.optim.AdamW(groups, lr=p.lr_head)


def apply_schedules(optimizer: torch.optim.Optimizer, step: int, p: TrainParams) -> dict[str, float]:
    wd = cosine(step, p.steps, p.weight_decay_start, p.weight_decay_end)
    for g in optimizer.param_groups:
        g["lr"] = cosine(step, p.steps, g["base_lr"], 0.0)
        g["weight_decay"] = wd if g["apply_wd"] else 0.0
    return {"lr_backbone": cosine(step, p.steps, p.lr_backbone, 0.0), "lr_head": cosine(step, p.steps, p.lr_head, 0.0),
            "weight_decay": wd}


def drop_frozen_gradients(tuner: TimeTuner, step: int, p: TrainParams) -> None:
    """Parts that must not move at ``step`` lose their gradients, so AdamW leaves them (weight decay included):
    the prototypes for the first ``freeze_prototypes_steps`` steps (SwAV), the backbone for the first
    ``freeze_backbone_steps`` (a new head first learns the targets, its early gradients stay out of the backbone)."""
    if step < p.freeze_prototypes_steps:
        tuner.head.prototypes.weight.grad = None
    if step < p.freeze_backbone_steps:
        for q in tuner.backbone.parameters():
            q.grad = None


def optimisation_step(run: TrainingRun, clips: torch.Tensor, step: int, ctx: DistContext) -> dict[str, float]:
    """Loss, backward, frozen parts, (optional) clipping, AdamW, prototype re-normalisation.

    Returns the loss averaged over ranks and the statistics of the step's targets over all ranks
    (:meth:`TargetStatistics.summary`). A NaN/inf loss on any rank stops every rank before the update (none hangs
    in an all-reduce).
    """
    loss, stats = run.model(clips, step)
    mean_loss = float(global_mean(loss, ctx))
    if not math.isfinite(mean_loss):
        raise NonFiniteLossError(f"train: loss is {mean_loss} at step {step}; stopped")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    drop_frozen_gradients(run.tuner, step, run.p)
    if run.p.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_([q for q in run.tuner.parameters() if q.requires_grad], run.p.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if step >= run.p.freeze_prototypes_steps:  # frozen ones are unit vectors already, and stay bit for bit
        run.tuner.head.prototypes.renormalize()
    return {"loss": mean_loss, **TargetStatistics.summary(global_sum(stats, ctx))}


# ---------------------------------------------------------------------------------------------- logging
def write_log_csv(path: Path, rows: list[dict[str, float]]) -> None:
    lines = [",".join(LOG_FIELDS)]
    for r in rows:
        lines.append(",".join("" if r.get(k) is None else f"{r[k]:.6g}" for k in LOG_FIELDS))
    write_text_atomic(path, "\n".join(lines) + "\n")


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class ProgressLog:
    """A rounded progress line in the log every ``every`` seconds: step, loss, clips/s, ETA (validation included)."""

    def __init__(self, total: int, start: int, every: float, enabled: bool = True):
        self.total, self.start, self.every, self.enabled = total, start, every, enabled
        self.started = self.last_time = time.perf_counter()
        self.last_step = start

    def update(self, step: int, loss: float, clips_per_step: int) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last_time < self.every and step < self.total):
            return
        rate = (step - self.last_step) * clips_per_step / max(now - self.last_time, 1e-9)
        eta = (self.total - step) * (now - self.started) / max(step - self.start, 1)
        log.info("step %d/%d (%d%%)  loss %.4f  %.1f clips/s  ETA %s", step, self.total, 100 * step // self.total,
                 loss, rate, format_duration(eta))
        self.last_time, self.last_step = now, step


# ---------------------------------------------------------------------------------------------- selection
def beats(miou: float, step: int, best: dict[str, Any]) -> bool:
    """Whether validation mIoU ``miou`` at ``step`` becomes the exported candidate. The starting weights (step 0) win
    only when strictly better than every trained step: a trained step takes over on a tie."""
    if best["step"] < 0:
        return True
    if best["step"] == 0 and step > 0:
        return miou >= best["miou"]
    return miou > best["miou"]


def selection_warning(best_step: int, steps: int) -> str | None:
    if best_step != 0:
        return None
    return (f"no trained step beat the starting weights on validation: the exported model IS the starting backbone "
            f"(best step 0 of {steps}); time-tuning did not improve it on the validation clips")


# ---------------------------------------------------------------------------------------------- the run
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
    best: dict[str, Any] = field(default_factory=lambda: {"miou": -1.0, "step": -1})
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
    run.start_step, run.rows, run.best = int(state["step"]), list(state["log"]), dict(state["best"])
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
            "fingerprint": run.fingerprint, "code": run.code, "log": run.rows, "best": run.best,
            "selected_weights": run.selected, "queues": queues})
        write_log_csv(run.out / "train_log.csv", run.rows)


def validate_run(run: TrainingRun, step: int, validation: ValidationData | None,
                 ctx: DistContext) -> dict[str, float]:
    """The log fields of a validation (rank 0 scores, every rank gets them); a better step is selected."""
    if validation is None:
        return {}
    backbone = run.tuner.backbone
    scores = None
    if ctx.is_main:
        scores, feats = validate(backbone, validation, run.p.input_size, ctx.device, run.tuner.objective.forwarder,
                                 run.reference, seed=run.seed)
        run.reference = feats if run.reference is None else run.reference  # step 0: the starting features
    scores = broadcast_object(ctx, scores)
    if ctx.is_main and beats(scores.miou, step, run.best):
        run.best.update(miou=scores.miou, step=step)
        run.selected = trainable_weights(backbone)
    return {"val_miou": scores.miou, "forwarder_jf": scores.forwarder_jf, "feature_cosine": scores.feature_cosine}


def starting_features(run: TrainingRun, validation: ValidationData | None, ctx: DistContext) -> None:
    """A resumed run's reference for the features' drift: the starting backbone's features, computed again."""
    if validation is not None and ctx.is_main and run.reference is None and run.start_step > 0:
        with torch.random.fork_rng(devices=[]):  # the resumed random streams stay as they were
            torch.manual_seed(run.seed)  # as build_run: a random initialisation is drawn again
            start = build_backbone(run.p.backbone).to(ctx.device)
        run.reference = clip_features(start, validation, run.p.input_size, ctx.device)[0]


def trainable_weights(backbone: DenseBackbone) -> dict[str, torch.Tensor]:
    """The backbone's trainable tensors (the rest never changes): with the starting weights, a whole backbone."""
    return {k: v.detach().clone() for k, v in backbone.model.named_parameters() if v.requires_grad}


# ---------------------------------------------------------------------------------------------- the loop
def train(p: TrainParams, seed: int, ctx: DistContext, validation: ValidationData | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a time-tuning run; rank 0 writes checkpoints, the exported backbone, log and summary."""
    run = build_run(p, seed, ctx)
    resume_run(run, ctx)
    run.model = data_parallel(run.tuner, ctx)
    if run.start_step == 0 and not run.rows:  # the starting weights: the baseline every trained step must beat
        run.rows.append({"step": 0, **validate_run(run, 0, validation, ctx)})
    starting_features(run, validation, ctx)
    train_steps(run, validation, ctx, progress)
    barrier(ctx)
    return finish_run(run, validation, ctx) if ctx.is_main else {}


def train_steps(run: TrainingRun, validation: ValidationData | None, ctx: DistContext, progress: bool) -> None:
    """Steps ``start_step`` .. ``steps``: schedule, optimise, log and validate, checkpoint, report progress."""
    p, tuner = run.p, run.tuner
    aug = ClipAugmentation(p.input_size, tuner.backbone.mean, tuner.backbone.std, scale=tuple(p.crop_scale))
    # the batches of step s are a function of s: a resumed run draws exactly what the uninterrupted one would have
    batches = clip_batches(training_clips(p.shards), aug, run.seed, p.batch_size, ctx, run.start_step, p.steps,
                           loader_workers(p.num_workers, ctx.device))
    tuner.train()
    bar = tqdm(total=p.steps, initial=run.start_step, desc="train", unit="step", disable=not (progress and ctx.is_main))
    reporter = ProgressLog(p.steps, run.start_step, p.progress_seconds, enabled=ctx.is_main)
    window_start, window_clips = time.perf_counter(), 0
    with logging_redirect_tqdm():
        for step, clips in zip(range(run.start_step, p.steps), batches):
            # lr and weight decay are functions of the step, not of what ran before (so a resume needs no history)
            sched = apply_schedules(run.optimizer, step, p)
            # one update; a NaN/inf loss stops every rank before it, so the last checkpoint stays good
            clips = clips.to(ctx.device, non_blocking=True)
            try:
                measured = optimisation_step(run, clips, step, ctx)
            except NonFiniteLossError as err:
                raise NonFiniteLossError(f"{err}. The last good checkpoint is kept at {run.last_path}. Lower "
                                         "train.lr_* or check the data.") from None
            done = step + 1
            window_clips += clips.shape[0] * ctx.world_size
            # validation picks the exported step: its cadence is never tied to the logging cadence
            validate_now = done % p.val_every == 0 or done == p.steps
            if validate_now or done % p.log_every == 0 or done == p.steps:
                row = {"step": done, **measured, **sched,
                       "clips_per_s": window_clips / (time.perf_counter() - window_start)}
                if validate_now:
                    row.update(validate_run(run, done, validation, ctx))
                run.rows.append(row)
                window_start, window_clips = time.perf_counter(), 0  # throughput excludes validation time
            # a kill loses at most checkpoint_every steps, and the resumed run reaches the same bits
            if done % p.checkpoint_every == 0 or done == p.steps:
                save_run(run, done, ctx)
            # for people: a bar on a terminal, a rounded line every progress_seconds in the stage's log
            bar.update()
            bar.set_postfix(loss=f"{measured['loss']:.3f}")
            reporter.update(done, measured["loss"], clips.shape[0] * ctx.world_size)
    bar.close()


def finish_run(run: TrainingRun, validation: ValidationData | None, ctx: DistContext) -> dict[str, Any]:
    """Export the selected backbone (or the last one without validation); write model.json, log and summary."""
    p, out, best, backbone = run.p, run.out, run.best, run.tuner.backbone
    final = out / "timetuned.safetensors"
    state = backbone.model.state_dict()
    if validation is not None:
        if run.selected is None:
            raise RuntimeError(f"{run.last_path} holds no selected weights; delete {run.last_path.parent} and train "
                               "again")
        state = state | run.selected  # frozen tensors never changed: the selected step's backbone
    export_backbone(final, state, {"name": p.backbone.name, "mean": json.dumps(list(backbone.mean)),
                                   "std": json.dumps(list(backbone.std)), "fingerprint": run.fingerprint,
                                   "step": str(best["step"] if validation else p.steps)})
    write_json_atomic(out / "model.json", {"name": p.backbone.name, "output_stride": p.backbone.output_stride,
                                           "img_size": p.input_size, "mean": list(backbone.mean),
                                           "std": list(backbone.std), "weights": final.name,
                                           "feature_layer": p.backbone.feature_layer})
    rows = run.rows
    losses = [r["loss"] for r in rows if r.get("loss") is not None]
    speeds = [r["clips_per_s"] for r in rows if r.get("clips_per_s")]
    val = [r["val_miou"] for r in rows if r.get("val_miou") is not None]
    best_step = best["step"] if validation is not None else p.steps
    warning = selection_warning(best_step, p.steps) if validation is not None else None
    if warning:
        log.warning("%s", warning)
    summary = {
        "steps": p.steps, "resumed_from": run.start_step, "world_size": ctx.world_size,
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "mean_clips_per_s": float(np.median(speeds)) if speeds else None,
        "val_miou_start": val[0] if val else None, "val_miou_best": best["miou"] if validation else None,
        "best_step": best["step"] if validation else None,
        "exported": "final" if validation is None else ("start" if best_step == 0 else "best"),
        "exported_step": best_step, "exported_is_start": best_step == 0, "warning": warning,
        **(validation.describe() if validation else {"val_set": None}),
    }
    write_log_csv(out / "train_log.csv", rows)
    write_json_atomic(out / "train_summary.json", summary)
    return summary
