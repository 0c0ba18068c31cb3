"""The time-tuning objective: Sinkhorn targets on frame 0, carried to the last frame by the Feature-Forwarder,
against the student's prototype scores on the last frame."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from timetuning.forwarder import propagate_assignments
from timetuning.sinkhorn import sinkhorn_knopp


@dataclass(frozen=True)
class LossConfig:
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 10
    student_temperature: float = 0.1
    forwarder_temperature: float = 0.1
    forwarder_topk: int = 5
    forwarder_window: int = 6
    forwarder_context: int = 7  # previous frames kept besides frame 0 (the reference: first + 7 previous)


def propagated_targets(features: torch.Tensor, first_scores: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Hard labels ``[B, h*w]`` for the last frame.

    features: ``[B, T, D, h, w]`` backbone features (used without grad for correspondences).
    first_scores: ``[B, h*w, K]`` prototype scores of frame 0 (no grad).
    """
    b, t, d, h, w = features.shape
    k = first_scores.shape[-1]
    q0 = sinkhorn_knopp(first_scores.detach().reshape(-1, k), cfg.sinkhorn_epsilon, cfg.sinkhorn_iterations)
    q0 = q0.reshape(b, h * w, k).transpose(1, 2).reshape(b, k, h, w)
    q = propagate_assignments(features.detach(), q0, temperature=cfg.forwarder_temperature,
                              topk=cfg.forwarder_topk, window_radius=cfg.forwarder_window,
                              previous_frames=cfg.forwarder_context)
    return q[:, -1].flatten(2).argmax(dim=1)  # [B, h*w]


def time_tuning_loss(last_scores: torch.Tensor, targets: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Cross-entropy of the last frame's scores ``[B, N, K]`` / temperature against targets ``[B, N]``."""
    return F.cross_entropy(last_scores.reshape(-1, last_scores.shape[-1]).float() / temperature,
                           targets.reshape(-1))
