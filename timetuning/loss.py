"""The time-tuning objective: Sinkhorn targets on frame 0, carried to the last frame by the Feature-Forwarder,
against the student's prototype scores on the last frame. Its constants are read from the ``train`` params section
(:class:`timetuning.config.TrainParams`), never copied."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from timetuning.forwarder import propagate_assignments
from timetuning.sinkhorn import sinkhorn_knopp

if TYPE_CHECKING:
    from timetuning.config import TrainParams


def propagated_targets(features: torch.Tensor, first_scores: torch.Tensor, p: TrainParams) -> torch.Tensor:
    """Hard labels ``[B, h*w]`` for the last frame.

    features: ``[B, T, D, h, w]`` backbone features (used without grad for correspondences).
    first_scores: ``[B, h*w, K]`` prototype scores of frame 0 (no grad).
    p: the ``train`` section: ``sinkhorn_*`` and ``forwarder_*`` (context: previous frames kept besides frame 0).
    """
    b, t, d, h, w = features.shape
    k = first_scores.shape[-1]
    q0 = sinkhorn_knopp(first_scores.detach().reshape(-1, k), p.sinkhorn_epsilon, p.sinkhorn_iterations)
    q0 = q0.reshape(b, h * w, k).transpose(1, 2).reshape(b, k, h, w)
    q = propagate_assignments(features.detach(), q0, temperature=p.forwarder_temperature,
                              topk=p.forwarder_topk, window_radius=p.forwarder_window,
                              previous_frames=p.forwarder_context)
    return q[:, -1].flatten(2).argmax(dim=1)  # [B, h*w]


def time_tuning_loss(last_scores: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of the last frame's scores ``[B, N, K]`` / temperature (``student_temperature``) against
    targets ``[B, N]``."""
    return F.cross_entropy(last_scores.reshape(-1, last_scores.shape[-1]).float() / temperature,
                           targets.reshape(-1))
