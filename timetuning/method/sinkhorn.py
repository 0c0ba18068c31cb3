"""Sinkhorn-Knopp (SwAV style): balanced soft assignments of patches to prototypes, correct under DDP."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _all_reduce(x: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x, op=op)
    return x


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 10) -> torch.Tensor:
    """Soft assignments ``[N, K]`` of ``N`` patches to ``K`` prototypes with uniform marginals.

    ``scores`` are cosine similarities ``[N, K]`` of this process's patches. Under DDP the normalising sums are
    all-reduced, so the marginals are uniform over the patches of *all* ranks. Each returned row sums to 1.
    """
    q = scores.float() / epsilon
    q = q - _all_reduce(q.max().clone(), dist.ReduceOp.MAX)  # exp without overflow; cancels in normalisation
    q = torch.exp(q).t()  # [K, N]
    k = q.shape[0]
    n = _all_reduce(torch.tensor(float(q.shape[1]), device=q.device))
    q /= _all_reduce(q.sum())
    for _ in range(iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))  # rows: every prototype gets 1/K of the mass
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # columns: every patch has 1/N of the mass
        q /= n
    return (q * n).t()
