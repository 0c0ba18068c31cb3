"""The time-tuning objective: balanced cluster targets on the first frame, carried to the last frame by the
Feature-Forwarder, against the student's prototype scores on the last frame.

:class:`TimeTuningObjective` holds every constant explicitly (like DINO's ``DINOLoss``) and the one piece of state
the objective has, the optional queue of past embeddings. Per step:

1. Sinkhorn-Knopp balances the prototype scores of the batch's patches: the first frame's (the paper's), or every
   frame's (``sinkhorn_frames="all"``, TimeT_clean's variant); with a full queue, the queued embeddings of earlier
   steps are scored against the *current* prototypes and balanced together with the batch, and only the batch's
   rows are used (SwAV's and the reference's answer to small batches);
2. the first frame's assignment is propagated to the last frame over the (no-grad) backbone features;
3. cross-entropy of the last frame's scores / ``student_temperature`` against the propagated argmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn import functional as F

from timetuning.method.forwarder import propagate_assignments
from timetuning.method.sinkhorn import sinkhorn_knopp

SinkhornFrames = Literal["first", "all"]


@dataclass(frozen=True)
class ForwarderSettings:
    """The Feature-Forwarder's constants (the reference's: affinity temperature 0.1, top-5 sources, a window of
    +-6 patches, frame 0 plus the 7 most recent frames as context)."""

    temperature: float = 0.1
    topk: int = 5
    window_radius: int = 6
    context_frames: int = 7


class EmbeddingQueue:
    """A FIFO of past L2-normalised head embeddings ``[size, E]`` (newest first), filled from ``start_step`` on
    and used once full.

    The embeddings are stale (an older head made them) but are scored against the current prototypes, so they add
    rows to Sinkhorn's balancing without adding targets: SwAV starts its queue late and keeps it small for that
    reason. Not a module buffer: under DDP every rank keeps its own queue (the Sinkhorn sums are all-reduced).
    """

    def __init__(self, size: int, dim: int, start_step: int = 0):
        if size <= 0:
            raise ValueError(f"queue size must be positive, got {size}")
        self.size, self.dim, self.start_step = size, dim, start_step
        self.embeddings = torch.zeros(size, dim)
        self.filled = 0

    @property
    def full(self) -> bool:
        return self.filled >= self.size

    def ready(self, step: int) -> bool:
        """Whether step ``step`` balances with the queue (it is full: only steps >= ``start_step`` fill it)."""
        return step >= self.start_step and self.full

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor, step: int) -> None:
        """Put a batch's embeddings ``[M, E]`` at the front (the oldest leave at the back); nothing before
        ``start_step``."""
        if step < self.start_step:
            return
        self.embeddings = self.embeddings.to(embeddings.device)
        new = embeddings.detach().reshape(-1, self.dim)[: self.size].to(self.embeddings.dtype)
        self.embeddings = torch.cat([new, self.embeddings[: self.size - new.shape[0]]])
        self.filled = min(self.size, self.filled + new.shape[0])

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        return {"embeddings": self.embeddings.clone().cpu(), "filled": self.filled}

    def load_state_dict(self, state: dict[str, torch.Tensor | int]) -> None:
        embeddings = state["embeddings"]
        if tuple(embeddings.shape) != (self.size, self.dim):
            raise ValueError(f"queue state of shape {tuple(embeddings.shape)}, expected {(self.size, self.dim)}")
        self.embeddings, self.filled = embeddings.to(self.embeddings.device), int(state["filled"])


@dataclass
class TargetStatistics:
    """What a step's targets look like (sums, so ranks add up): per prototype, how many last-frame patches take it
    as their target; how many patches the student already gives its target as argmax; how many patches."""

    target_counts: torch.Tensor  # [K]
    agreeing: torch.Tensor  # scalar
    patches: torch.Tensor  # scalar

    @staticmethod
    @torch.no_grad()
    def of(targets: torch.Tensor, last_scores: torch.Tensor) -> TargetStatistics:
        """The statistics of targets ``[B, N]`` and the student's scores ``[B, N, K]``."""
        return TargetStatistics(torch.bincount(targets.reshape(-1), minlength=last_scores.shape[-1]),
                                (last_scores.argmax(-1) == targets).sum(),
                                torch.tensor(targets.numel(), device=targets.device))

    def as_tensor(self) -> torch.Tensor:
        return torch.cat([self.target_counts.float(), self.agreeing.reshape(1).float(),
                          self.patches.reshape(1).float()])

    @staticmethod
    def summary(total: torch.Tensor) -> dict[str, float]:
        """``prototypes_used`` (targets of >= 1 patch), ``target_perplexity`` (exp of the targets' entropy: the
        number of equally used prototypes that would give it) and ``agreement`` of a summed :meth:`as_tensor`."""
        counts, agreeing, patches = total[:-2], total[-2], total[-1]
        share = counts / counts.sum().clamp_min(1)
        entropy = -(share[share > 0] * share[share > 0].log()).sum()
        return {"prototypes_used": float((counts > 0).sum()), "target_perplexity": float(entropy.exp()),
                "agreement": float(agreeing / patches.clamp_min(1))}


def balanced_assignments(scores: torch.Tensor, queue_scores: torch.Tensor | None, epsilon: float,
                         iterations: int) -> torch.Tensor:
    """Sinkhorn assignments ``[N, K]`` of the batch's scores ``[N, K]``, balanced together with the queue's
    ``[M, K]`` when given (only the batch's rows are returned)."""
    if queue_scores is None:
        return sinkhorn_knopp(scores, epsilon, iterations)
    return sinkhorn_knopp(torch.cat([scores, queue_scores.to(scores)]), epsilon, iterations)[: scores.shape[0]]


def propagated_targets(features: torch.Tensor, first_assignment: torch.Tensor,
                       forwarder: ForwarderSettings) -> torch.Tensor:
    """Hard labels ``[B, h*w]`` of the last frame: the first frame's assignment ``[B, h*w, K]`` carried along the
    clip's features ``[B, T, D, h, w]`` (no grad) by the Feature-Forwarder."""
    b, _, _, h, w = features.shape
    k = first_assignment.shape[-1]
    q0 = first_assignment.transpose(1, 2).reshape(b, k, h, w)
    q = propagate_assignments(features.detach(), q0, temperature=forwarder.temperature, topk=forwarder.topk,
                              window_radius=forwarder.window_radius, context_frames=forwarder.context_frames)
    return q[:, -1].flatten(2).argmax(dim=1)


def time_tuning_loss(last_scores: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of the last frame's scores ``[B, N, K]`` / temperature against targets ``[B, N]``."""
    return F.cross_entropy(last_scores.reshape(-1, last_scores.shape[-1]).float() / temperature,
                           targets.reshape(-1))


class TimeTuningObjective:
    """The objective with its constants (the paper's by default) and its queue (off by default)."""

    def __init__(self, *, sinkhorn_epsilon: float = 0.05, sinkhorn_iterations: int = 10,
                 student_temperature: float = 0.1, forwarder: ForwarderSettings = ForwarderSettings(),
                 sinkhorn_frames: SinkhornFrames = "first", queue: EmbeddingQueue | None = None):
        if sinkhorn_frames not in ("first", "all"):
            raise ValueError(f"sinkhorn_frames must be 'first' or 'all', got {sinkhorn_frames!r}")
        self.sinkhorn_epsilon, self.sinkhorn_iterations = sinkhorn_epsilon, sinkhorn_iterations
        self.student_temperature, self.forwarder = student_temperature, forwarder
        self.sinkhorn_frames, self.queue = sinkhorn_frames, queue

    def sinkhorn_frame_index(self, frames: int) -> list[int]:
        """The frames whose patches Sinkhorn balances (the first one is always frame 0)."""
        return [0] if self.sinkhorn_frames == "first" else list(range(frames))

    @torch.no_grad()
    def first_frame_assignment(self, embeddings: torch.Tensor, prototypes: torch.nn.Module,
                               step: int) -> torch.Tensor:
        """Balanced assignments ``[B, N, K]`` of frame 0 from the embeddings ``[B, F, N, E]`` of the frames
        Sinkhorn sees (frame 0 first); then the queue takes those embeddings."""
        b, f, n, _ = embeddings.shape
        scores = prototypes(embeddings).reshape(b * f * n, -1)
        ready = self.queue is not None and self.queue.ready(step)
        queue_scores = prototypes(self.queue.embeddings.to(embeddings)) if ready else None
        q = balanced_assignments(scores, queue_scores, self.sinkhorn_epsilon, self.sinkhorn_iterations)
        if self.queue is not None:
            self.queue.push(embeddings.reshape(-1, embeddings.shape[-1]), step)
        return q.reshape(b, f, n, -1)[:, 0]

    def __call__(self, features: torch.Tensor, sinkhorn_embeddings: torch.Tensor, last_scores: torch.Tensor,
                 prototypes: torch.nn.Module, step: int) -> tuple[torch.Tensor, TargetStatistics]:
        """The loss and its targets' statistics.

        features: ``[B, T, D, h, w]`` backbone features; sinkhorn_embeddings: ``[B, F, h*w, E]`` head embeddings of
        :meth:`sinkhorn_frame_index`'s frames (no grad); last_scores: ``[B, h*w, K]`` the student's scores of the
        last frame (with grad); step: the training step (the queue's clock).
        """
        first = self.first_frame_assignment(sinkhorn_embeddings, prototypes, step)
        targets = propagated_targets(features, first, self.forwarder)
        loss = time_tuning_loss(last_scores, targets, self.student_temperature)
        return loss, TargetStatistics.of(targets, last_scores)
