"""The Feature-Forwarder (FF): parameter-free propagation of soft cluster assignments along a clip.

Frame 0's soft assignment is carried to each later frame through patch correspondences given by the (frozen,
no-grad) backbone features: every target patch takes a weighted average of the assignments of its top-k most
similar source patches, over all context frames jointly, restricted to a local spatial window. The context is
frame 0 (the Sinkhorn-balanced anchor) plus the ``context_frames`` most recent frames, as in the reference (frame 0
and a queue of 7). Fully vectorised: one batched matrix product per frame, no loop over patches.
"""

from __future__ import annotations

import torch


def window_mask(h: int, w: int, radius: int, device: torch.device | None = None) -> torch.Tensor:
    """``[h*w, h*w]`` bool: True where source patch (column) lies within ``radius`` rows and columns of the target."""
    ii, jj = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ii, jj = ii.reshape(-1), jj.reshape(-1)
    return ((ii[:, None] - ii[None, :]).abs() <= radius) & ((jj[:, None] - jj[None, :]).abs() <= radius)


def propagate_step(target: torch.Tensor, sources: torch.Tensor, source_assignments: torch.Tensor,
                   window: torch.Tensor, temperature: float, topk: int) -> torch.Tensor:
    """Assignments of the target frame from its context.

    target: ``[B, N, D]`` L2-normalised patch features of the frame to label.
    sources: ``[B, C, N, D]`` L2-normalised features of the ``C`` context frames.
    source_assignments: ``[B, C, N, K]`` their soft assignments.
    window: ``[N, N]`` bool locality mask. Returns ``[B, N, K]`` (rows sum to 1 when the sources' rows do).
    """
    b, c, n, _ = sources.shape
    logits = torch.einsum("bnd,bcmd->bncm", target, sources) / temperature  # A = exp(logits)
    logits = logits.masked_fill(~window[None, :, None, :], float("-inf")).reshape(b, n, c * n)
    k = min(topk, c * n)
    values, index = logits.topk(k, dim=-1)  # top-k over all context sources jointly
    weights = torch.softmax(values, dim=-1)  # exp, zero elsewhere, normalise to sum 1
    flat = source_assignments.reshape(b, c * n, -1)
    gathered = torch.gather(flat.unsqueeze(1).expand(b, n, c * n, flat.shape[-1]), 2,
                            index.unsqueeze(-1).expand(b, n, k, flat.shape[-1]))
    return (weights.unsqueeze(-1) * gathered).sum(dim=2)


@torch.no_grad()
def propagate_assignments(features: torch.Tensor, first_assignment: torch.Tensor, *, temperature: float = 0.1,
                          topk: int = 5, window_radius: int = 6, context_frames: int = 7) -> torch.Tensor:
    """Carry frame 0's assignment through a clip.

    features: ``[B, T, D, h, w]`` backbone features (normalised here). first_assignment: ``[B, K, h, w]``.
    Frame t is labelled from frame 0 and frames ``max(1, t - context_frames) .. t - 1`` (their propagated labels).
    Returns the assignments of every frame, ``[B, T, K, h, w]`` (frame 0 is ``first_assignment``).
    """
    b, t, d, h, w = features.shape
    feats = torch.nn.functional.normalize(features.float(), dim=2).flatten(3).transpose(2, 3)  # [B,T,N,D]
    window = window_mask(h, w, window_radius, features.device)
    q0 = first_assignment.float().flatten(2).transpose(1, 2)  # [B,N,K]
    context_f, context_q = [feats[:, 0]], [q0]
    out = [q0]
    for i in range(1, t):
        q = propagate_step(feats[:, i], torch.stack(context_f, 1), torch.stack(context_q, 1), window,
                           temperature, topk)
        out.append(q)
        context_f.append(feats[:, i])
        context_q.append(q)
        if len(context_f) > 1 + context_frames:  # frame 0 stays; the oldest of the others leaves the queue
            del context_f[1], context_q[1]
    return torch.stack(out, 1).transpose(2, 3).reshape(b, t, -1, h, w)
