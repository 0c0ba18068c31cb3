"""The module time-tuning trains: a dense backbone, the clustering head and the objective, one
module for DDP; built from the ``train`` section."""

from __future__ import annotations

import logging

import torch
from torch import nn

from timetuning.infra.config import TrainParams
from timetuning.method.loss import EmbeddingQueue, ForwarderSettings, TimeTuningObjective
from timetuning.models.backbones import DenseBackbone, build_backbone
from timetuning.models.head import ClusteringHead

log = logging.getLogger(__name__)


class TimeTuner(nn.Module):
    """Backbone + clustering head; ``forward(clips, step)`` returns the time-tuning loss and the summed
    :class:`~timetuning.method.loss.TargetStatistics` of its targets (one module for DDP).

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
                                  window_radius=p.forwarder_window_radius, context_frames=p.forwarder_context_frames)
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
