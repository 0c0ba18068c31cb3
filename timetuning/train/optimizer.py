"""AdamW as time-tuning uses it: backbone and head groups, no weight decay on biases and 1-D
parameters, per-iteration cosine schedules, and the parts frozen for the first steps."""

from __future__ import annotations

import logging

import torch

from timetuning.infra.config import TrainParams
from timetuning.train.schedules import cosine
from timetuning.train.tuner import TimeTuner

log = logging.getLogger(__name__)


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
