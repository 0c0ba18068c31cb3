"""The time-tuning training loop: one process or torchrun DDP, resumable bit for bit, validated, exported.

Per step: a batch of clips (T frames, clip-consistent augmentation) goes through the backbone once (bf16 autocast
there only, when asked); frame 0's prototype scores are balanced by Sinkhorn-Knopp, carried to the last frame by
the Feature-Forwarder over the (no-grad) backbone features, and the student's scores on the last frame are trained
against that target, all in fp32. Only the last ``trainable_blocks`` blocks, the head and the prototypes train
(AdamW, per-iteration cosine lr and weight decay, none on biases / 1-D parameters, no clipping unless asked);
prototypes are re-normalised after every step.

Shape (DINO's): :func:`build_run` -> :func:`resume_run` -> validate the start -> :func:`train_steps` (a short
"why" at each step, nanoGPT's) -> :func:`finish_run` (export). A resumed run equals an uninterrupted one:
the data stream is a function of the step (:mod:`timetuning.data.clip_stream`), and the checkpoint holds the model,
AdamW and grad-scaler states and every rank's random state.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from timetuning.data.clip_stream import clip_batches, loader_workers, training_clips
from timetuning.data.transforms import ClipAugmentation
from timetuning.infra.checkpoint import (
    export_backbone,
)
from timetuning.infra.config import TrainParams
from timetuning.infra.distributed import (
    DistContext,
    barrier,
    broadcast_object,
    global_mean,
    global_sum,
)
from timetuning.infra.files import write_json_atomic
from timetuning.method.loss import TargetStatistics
from timetuning.models.backbones import build_backbone
from timetuning.train.optimizer import apply_schedules, drop_frozen_gradients
from timetuning.train.progress import ProgressLog, write_log_csv
from timetuning.train.run_state import TrainingRun, build_run, data_parallel, resume_run, save_run
from timetuning.train.selection import BestValidation, beats, selection_warning, trainable_weights
from timetuning.train.validation import ValidationData, clip_features, validate

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; training stopped and the last good checkpoint was kept."""


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
        run.best = BestValidation(miou=scores.miou, step=step)
        run.selected = trainable_weights(backbone)
    return {"val_miou": scores.miou, "forwarder_jf": scores.forwarder_jf, "feature_cosine": scores.feature_cosine}


def starting_features(run: TrainingRun, validation: ValidationData | None, ctx: DistContext) -> None:
    """A resumed run's reference for the features' drift: the starting backbone's features, computed again."""
    if validation is not None and ctx.is_main and run.reference is None and run.start_step > 0:
        with torch.random.fork_rng(devices=[]):  # the resumed random streams stay as they were
            torch.manual_seed(run.seed)  # as build_run: a random initialisation is drawn again
            start = build_backbone(run.p.backbone).to(ctx.device)
        run.reference = clip_features(start, validation, run.p.input_size, ctx.device)[0]


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
                                   "step": str(best.step if validation else p.steps)})
    write_json_atomic(out / "model.json", {"name": p.backbone.name, "output_stride": p.backbone.output_stride,
                                           "img_size": p.input_size, "mean": list(backbone.mean),
                                           "std": list(backbone.std), "weights": final.name,
                                           "feature_layer": p.backbone.feature_layer})
    rows = run.rows
    losses = [r["loss"] for r in rows if r.get("loss") is not None]
    speeds = [r["clips_per_s"] for r in rows if r.get("clips_per_s")]
    val = [r["val_miou"] for r in rows if r.get("val_miou") is not None]
    best_step = best.step if validation is not None else p.steps
    warning = selection_warning(best_step, p.steps) if validation is not None else None
    if warning:
        log.warning("%s", warning)
    summary = {
        "steps": p.steps, "resumed_from": run.start_step, "world_size": ctx.world_size,
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "median_clips_per_s": float(np.median(speeds)) if speeds else None,
        "val_miou_start": val[0] if val else None, "val_miou_best": best.miou if validation else None,
        "best_step": best.step if validation else None,
        "exported": "final" if validation is None else ("start" if best_step == 0 else "best"),
        "exported_step": best_step, "exported_is_start": best_step == 0, "warning": warning,
        **(validation.describe() if validation else {"val_set": None}),
    }
    write_log_csv(out / "train_log.csv", rows)
    write_json_atomic(out / "train_summary.json", summary)
    return summary
