"""The time-tuning training loop: one process or torchrun DDP, resumable, validated, exported.

Per step: a batch of clips (T frames, clip-consistent augmentation) goes through the backbone once; frame 0's
prototype scores are balanced by Sinkhorn-Knopp, carried to the last frame by the Feature-Forwarder over the
(no-grad) backbone features, and the student's scores on the last frame are trained against that target.
Only the last ``trainable_blocks`` blocks, the head and the prototypes train (AdamW, per-iteration cosine lr and
weight decay, none on biases / 1-D parameters); prototypes are re-normalised after every step.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from timetuning.backbones import DenseBackbone, build_backbone, dense_features
from timetuning.checkpoint import (code_fingerprint, export_backbone, load_resume_state, params_fingerprint,
                                  save_checkpoint)
from timetuning.clustering import KMeansSettings, clip_clustering_miou
from timetuning.config import TrainParams
from timetuning.distributed import DistContext, barrier, broadcast_object
from timetuning.eval_shards import iter_eval_clips, read_labels
from timetuning.files import write_json_atomic, write_text_atomic
from timetuning.head import ClusteringHead
from timetuning.loss import LossConfig, propagated_targets, time_tuning_loss
from timetuning.schedules import cosine
from timetuning.shards import clip_frames, decode_image, list_shards
from timetuning.transforms import ClipAugmentation
from timetuning.upsampling import resize_nearest

log = logging.getLogger(__name__)
LOG_FIELDS = ("step", "loss", "lr_backbone", "lr_head", "weight_decay", "clips_per_s", "val_miou")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; training stopped and the last good checkpoint was kept."""


class TimeTuner(nn.Module):
    """Backbone + clustering head; ``forward(clips)`` returns the time-tuning loss (one module for DDP)."""

    def __init__(self, backbone: DenseBackbone, head: ClusteringHead, loss_cfg: LossConfig):
        super().__init__()
        self.backbone, self.head, self.loss_cfg = backbone, head, loss_cfg

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, t = clips.shape[:2]
        images = clips.flatten(0, 1)
        if images.is_cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = self.backbone(images)
        feats = feats.float().reshape(b, t, *feats.shape[1:])
        with torch.no_grad():
            first_scores = self.head(feats[:, 0])
        targets = propagated_targets(feats, first_scores, self.loss_cfg)
        return time_tuning_loss(self.head(feats[:, -1]), targets, self.loss_cfg.student_temperature)


def loss_config(p: TrainParams) -> LossConfig:
    return LossConfig(p.sinkhorn_epsilon, p.sinkhorn_iterations, p.student_temperature, p.forwarder_temperature,
                      p.forwarder_topk, p.forwarder_window, p.forwarder_context)


# ---------------------------------------------------------------------------------------------- data
class _DecodeClip:
    """Shard sample -> augmented clip tensor; one random stream per (seed, rank, worker, resume step)."""

    def __init__(self, aug: ClipAugmentation, seed: int):
        self.aug, self.seed, self.generator = aug, seed, None

    def __call__(self, sample: dict[str, Any]) -> torch.Tensor:
        if self.generator is None:
            info = torch.utils.data.get_worker_info()
            self.generator = torch.Generator().manual_seed(self.seed * 1000 + (info.id if info else 0))
        frames = [decode_image(sample[name]) for name in clip_frames(sample)]
        if len(frames) < 2:
            raise ValueError(f"{sample.get('__url__', '?')}: sample {sample['__key__']} has {len(frames)} frame(s), "
                             "need >= 2")
        clip = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)  # copy: decoded arrays may be read-only
        return self.aug(clip, self.generator)


def clip_loader(shard_dir: str | Path, p: TrainParams, aug: ClipAugmentation, seed: int, ctx: DistContext,
                samples_needed: int) -> DataLoader:
    """An endless, shuffled stream of augmented clip batches for this rank."""
    urls = [str(u) for u in list_shards(shard_dir, "clips")]
    if not urls:
        raise FileNotFoundError(f"train.shards: no clips-*.tar shards in {shard_dir} (run the shard_videos stage)")
    workers = loader_workers(p.num_workers, ctx.device)
    if len(urls) >= ctx.world_size * max(1, workers):  # enough shards to split across ranks and workers
        dataset = wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=wds.split_by_node,
                                 workersplitter=wds.split_by_worker, repeat=True, seed=seed, empty_check=False)
    else:  # fewer shards than readers: every reader samples shards with replacement
        dataset = wds.WebDataset(urls, resampled=True, shardshuffle=True, nodesplitter=None, seed=seed + ctx.rank,
                                 empty_check=False)
    per_worker = math.ceil(samples_needed / max(1, workers)) + p.batch_size
    dataset = (dataset.shuffle(p.shuffle_buffer, seed=seed + ctx.rank).map(_DecodeClip(aug, seed + 7919 * ctx.rank))
               .with_epoch(per_worker))
    return DataLoader(dataset, batch_size=p.batch_size, num_workers=workers, drop_last=True,
                      persistent_workers=False, pin_memory=ctx.device.type == "cuda")


def loader_workers(requested: int, device: torch.device) -> int:
    """DataLoader workers: as requested, or (-1) none on CPU, where a worker only steals cores from compute."""
    if requested >= 0:
        return requested
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def endless(loader: DataLoader) -> Iterator[torch.Tensor]:
    while True:
        yield from loader


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


# ---------------------------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(backbone: DenseBackbone, set_dir: str | Path, input_size: int, device: torch.device,
             max_clips: int = 16, seed: int = 0) -> float:
    """Per-clip clustering mIoU (TimeT's protocol) on a held-out labeled split (never a test set)."""
    labels = read_labels(set_dir)
    num_classes = len(labels["classes"])
    was_training = backbone.training
    backbone.eval()
    feats, masks = [], []
    for clip in iter_eval_clips(set_dir, "train", limit=max_clips):
        feats.append(dense_features(backbone, clip.frames, input_size, device=device))  # [T, D, g, g]
        masks.append(resize_nearest(clip.masks, (input_size, input_size)))  # the evaluation size of the features
    backbone.train(was_training)
    return clip_clustering_miou(feats, masks, num_classes, seed=seed, settings=KMeansSettings(restarts=3))


# ---------------------------------------------------------------------------------------------- the loop
def autocast_dtype(p: TrainParams, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or p.precision == "fp32":
        return None
    if p.precision == "fp16":
        return torch.float16
    return torch.bfloat16  # "auto" and "bf16" on a GPU


def loss_is_finite(loss: torch.Tensor, ctx: DistContext) -> bool:
    """True when the loss is finite on every rank (so all ranks stop together, none hangs in an all-reduce)."""
    finite = torch.isfinite(loss.detach()).float()
    if ctx.distributed:
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite.item())


def write_log_csv(path: Path, rows: list[dict[str, float]]) -> None:
    lines = [",".join(LOG_FIELDS)]
    for r in rows:
        lines.append(",".join("" if r.get(k) is None else f"{r[k]:.6g}" for k in LOG_FIELDS))
    write_text_atomic(path, "\n".join(lines) + "\n")


def train(p: TrainParams, seed: int, ctx: DistContext, val_dir: str | Path | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a time-tuning run; rank 0 writes checkpoints, the exported backbone, log and summary."""
    out = Path(p.output_dir)
    ckpt_dir = out / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    fingerprint = params_fingerprint(p.model_dump(mode="json"), seed)
    code = code_fingerprint()
    torch.manual_seed(seed + ctx.rank)

    backbone = build_backbone(p.backbone, trainable_blocks=p.trainable_blocks)
    head = ClusteringHead(backbone.embed_dim, p.num_prototypes, p.hidden_dim, p.bottleneck_dim, p.projection_dim,
                          generator=torch.Generator().manual_seed(seed))
    tuner = TimeTuner(backbone, head, loss_config(p)).to(ctx.device)
    if ctx.device.type == "cuda":
        tuner = tuner.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(tuner, p)
    start_step, rows, best = 0, [], {"miou": -1.0, "step": -1}
    state = load_resume_state(last_path, may_set_aside=ctx.is_main)  # an unusable file is set aside: start fresh
    if state is not None:
        finished_by_other_code = int(state.get("step", 0)) >= p.steps and state.get("code") != code
        if state.get("fingerprint") == fingerprint and finished_by_other_code:
            log.info("ignoring %s: a finished run made by other training code; training again", last_path)
        elif state.get("fingerprint") == fingerprint:
            if state.get("code") != code:
                log.warning("resuming %s, which was started by other training code", last_path)
            tuner.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start_step, rows, best = int(state["step"]), list(state["log"]), dict(state["best"])
            if ctx.is_main:  # rank 0 saved its own RNG state; other ranks keep distinct streams
                torch.set_rng_state(state["torch_rng"])
                if "cuda_rng" in state and ctx.device.type == "cuda":
                    torch.cuda.set_rng_state(state["cuda_rng"], ctx.device)
            else:
                torch.manual_seed(seed + ctx.rank + 104729 * start_step)
            log.info("resuming from %s at step %d", last_path, start_step)
        else:
            log.info("ignoring %s: it was made with other params (fingerprint differs)", last_path)
    model: nn.Module = tuner
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(
            tuner, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    has_val = val_dir is not None and bool(list_shards(val_dir, "train"))
    if val_dir is not None and not has_val:
        log.info("validation skipped: no labeled train shards in %s", val_dir)

    def checkpoint(step: int) -> None:
        if ctx.is_main:
            save_checkpoint(last_path, {"step": step, "model": tuner.state_dict(), "optimizer": optimizer.state_dict(),
                                        "torch_rng": torch.get_rng_state(), "fingerprint": fingerprint,
                                        **({"cuda_rng": torch.cuda.get_rng_state(ctx.device)}
                                           if ctx.device.type == "cuda" else {}),
                                        "code": code, "log": rows, "best": best})
            write_log_csv(out / "train_log.csv", rows)

    def run_validation(step: int) -> float | None:
        if not has_val:
            return None
        miou = validate(tuner.backbone, val_dir, p.input_size, ctx.device, seed=seed) if ctx.is_main else None
        miou = broadcast_object(ctx, miou)
        if ctx.is_main and miou > best["miou"]:
            best.update(miou=miou, step=step)
            export_backbone(ckpt_dir / "best_backbone.safetensors", tuner.backbone.model.state_dict(),
                            {"step": str(step), "val_miou": f"{miou:.6f}"})
        return miou

    if start_step == 0 and not rows:
        rows.append({"step": 0, "val_miou": run_validation(0)})
    aug = ClipAugmentation(p.input_size, backbone.mean, backbone.std, scale=tuple(p.crop_scale))
    remaining = p.steps - start_step
    loader = clip_loader(p.shards, p, aug, seed + 104729 * start_step, ctx, max(remaining, 0) * p.batch_size)
    batches = endless(loader)
    amp = autocast_dtype(p, ctx.device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    tuner.train()
    bar = tqdm(range(start_step, p.steps), initial=start_step, total=p.steps, desc="train", unit="step",
               disable=not (progress and ctx.is_main))
    window_start, window_clips = time.perf_counter(), 0
    for step in bar:
        sched = apply_schedules(optimizer, step, p)
        clips = next(batches).to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = model(clips)
        if not loss_is_finite(loss, ctx):
            raise NonFiniteLossError(f"train: loss is {loss.item()} at step {step}; stopped. The last good "
                                     f"checkpoint is kept at {last_path}. Lower train.lr_* or check the data.")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if p.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_([q for q in tuner.parameters() if q.requires_grad], p.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        tuner.head.prototypes.renormalize()
        window_clips += clips.shape[0] * ctx.world_size
        done = step + 1
        if done % p.log_every == 0 or done == p.steps:
            elapsed = time.perf_counter() - window_start
            row = {"step": done, "loss": float(loss.detach()), **sched, "clips_per_s": window_clips / elapsed}
            if done % p.val_every == 0 or done == p.steps:
                row["val_miou"] = run_validation(done)
            rows.append(row)
            window_start, window_clips = time.perf_counter(), 0  # throughput excludes validation time
            bar.set_postfix(loss=f"{row['loss']:.3f}", clips_s=f"{row['clips_per_s']:.1f}")
        if done % p.checkpoint_every == 0 or done == p.steps:
            checkpoint(done)
    bar.close()
    barrier(ctx)

    summary: dict[str, Any] = {}
    if ctx.is_main:
        losses = [r["loss"] for r in rows if r.get("loss") is not None]
        speeds = [r["clips_per_s"] for r in rows if r.get("clips_per_s")]
        use_best = has_val and (ckpt_dir / "best_backbone.safetensors").is_file()
        final = out / "timetuned.safetensors"
        if use_best:
            from safetensors.torch import load_file

            state = load_file(str(ckpt_dir / "best_backbone.safetensors"))
        else:
            state = tuner.backbone.model.state_dict()
        export_backbone(final, state, {"name": p.backbone.name, "fingerprint": fingerprint})
        write_json_atomic(out / "model.json", {"name": p.backbone.name, "output_stride": p.backbone.output_stride,
                                               "img_size": p.input_size, "mean": list(backbone.mean),
                                               "std": list(backbone.std), "weights": final.name,
                                               "feature_layer": p.backbone.feature_layer})
        val = [r["val_miou"] for r in rows if r.get("val_miou") is not None]
        summary = {
            "steps": p.steps, "resumed_from": start_step, "world_size": ctx.world_size,
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "mean_clips_per_s": float(np.median(speeds)) if speeds else None,
            "val_miou_start": val[0] if val else None, "val_miou_best": best["miou"] if has_val else None,
            "best_step": best["step"] if has_val else None, "exported": "best" if use_best else "final",
        }
        write_log_csv(out / "train_log.csv", rows)
        write_json_atomic(out / "train_summary.json", summary)
    return summary
