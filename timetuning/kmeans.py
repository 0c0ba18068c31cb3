"""Batched k-means: many small clustering problems (one per frame, clip or dataset) solved in one vectorised Lloyd.

The algorithm is the one TimeT's reference evaluation runs (``faiss.Kmeans(d, k, niter=50, nredo=5)``): each
problem is trained on a seeded random sample of at most ``points_per_centroid * k`` of its points (faiss's
``max_points_per_centroid = 256`` default), centroids start at ``k`` distinct sample points, ``iterations`` Lloyd
steps follow, and of ``restarts`` runs the one with the lowest within-cluster sum of squares on its sample is kept.
An empty cluster is moved onto the sample point farthest from its centroid (scikit-learn's rule; faiss splits the
largest cluster instead: both only matter in degenerate cases). Problems of different sizes and different ``k``
share one padded tensor; padding never takes part. Plain torch, so it also runs on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

INFINITY = float("inf")


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # [G, K_max, d]; slots >= k[g] are unused (zeros)
    k: torch.Tensor  # [G] clusters per problem
    inertia: torch.Tensor  # [G] within-cluster sum of squares of the kept run, on its training points


def squared_distances(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``[G, N, K]`` squared Euclidean distances between ``points [G, N, d]`` and ``centroids [G, K, d]``."""
    return _distances(points, (points * points).sum(-1, keepdim=True), centroids)


def _distances(points, point_norms, centroids, bias=None):
    d2 = torch.baddbmm(point_norms, points, centroids.transpose(1, 2), alpha=-2)
    d2 += (centroids * centroids).sum(-1)[:, None, :]
    if bias is not None:
        d2 += bias
    return d2.clamp_(min=0)


def _initial_centroids(points: torch.Tensor, valid: torch.Tensor, k_max: int, seeds: list[int]) -> torch.Tensor:
    """``k_max`` distinct valid points per problem, chosen uniformly at random from the problem's own seed."""
    n = valid.shape[1]
    keys = torch.from_numpy(np.stack([np.random.default_rng(s).random(n) for s in seeds]))
    keys = keys.to(points.device).masked_fill(~valid, INFINITY)
    index = keys.topk(k_max, dim=1, largest=False).indices  # [G, K]
    return torch.gather(points, 1, index[..., None].expand(-1, -1, points.shape[-1]))


def _lloyd(points, valid, centroid_valid, centroids, iterations):
    """Lloyd iterations per problem until its assignments stop changing (a fixed point: more iterations would
    change nothing) or ``iterations``; converged problems leave the batch. Returns the centroids and inertias.

    The problems still running are kept in compact tensors, gathered again only when some converge (not every
    iteration), and the one-hot is scattered in place: the same arithmetic, in the same batches, as before. (Lazier
    compaction is faster but changes the batches, and MKL's batched products round differently by batch size.)"""
    g, n, d = points.shape
    k_max = centroids.shape[1]
    norms = (points * points).sum(-1, keepdim=True)
    bias = torch.zeros(g, 1, k_max, device=points.device).masked_fill_(~centroid_valid[:, None, :], INFINITY)
    weights = valid.to(points.dtype)
    final = centroids.clone()
    active = torch.arange(g, device=points.device)
    x, x_norms, c, b, w, ok = points, norms, final.clone(), bias, weights, valid
    c_valid = centroid_valid
    previous = torch.full((g, n), -1, dtype=torch.long, device=points.device)
    for _ in range(iterations):
        d2 = _distances(x, x_norms, c, b)
        nearest = d2.argmin(-1)  # [A, N]
        moved = (nearest != previous).any(1)
        if not moved.all():  # problems whose assignments did not change are done: keep their centroids
            final[active[~moved]] = c[~moved]
            keep = moved.nonzero().flatten()
            active, x, x_norms, c, b, w, ok, c_valid, d2, nearest = (
                t[keep] for t in (active, x, x_norms, c, b, w, ok, c_valid, d2, nearest))
            if keep.numel() == 0:
                break
        previous = nearest
        onehot = torch.zeros(*nearest.shape, k_max, dtype=x.dtype, device=x.device)
        onehot.scatter_(2, nearest[..., None], w[..., None])  # [A, N, K]: the point's weight at its cluster
        counts = onehot.sum(1)  # [A, K]
        sums = torch.bmm(onehot.transpose(1, 2), x)  # [A, K, d]
        updated = torch.where((counts > 0)[..., None], sums / counts.clamp(min=1)[..., None], c)
        empty = (counts == 0) & c_valid
        if empty.any():  # move each empty cluster onto the point farthest from its centroid
            gap = d2.min(-1).values.masked_fill(~ok, -1.0)  # [A, N]
            for a in torch.nonzero(empty.any(1)).flatten().tolist():
                slots = torch.nonzero(empty[a]).flatten()
                updated[a, slots] = x[a, gap[a].topk(len(slots)).indices]
        c = updated
    final[active] = c
    d2 = _distances(points, norms, final, bias)
    inertia = (d2.min(-1).values * weights).sum(1)
    return final, inertia


def batched_kmeans(points: torch.Tensor, valid: torch.Tensor, k: torch.Tensor, *, iterations: int = 50,
                   restarts: int = 5, seeds: list[int] | None = None) -> KMeansResult:
    """Cluster each of ``G`` point sets ``points [G, N, d]`` (``valid [G, N]`` marks real points) into ``k[g]``
    clusters (``k`` is clipped to the number of valid points). The caller samples the training points.

    ``seeds[g]`` seeds problem ``g``'s initialisations, so a problem's result does not depend on the others in the
    batch. All restarts of all problems run as one batch; Lloyd stops early once no assignment changes anywhere
    (a fixed point: more iterations would change nothing)."""
    if points.ndim != 3 or valid.shape != points.shape[:2] or k.shape != points.shape[:1]:
        raise ValueError(f"points {tuple(points.shape)}, valid {tuple(valid.shape)}, k {tuple(k.shape)} do not fit")
    g = points.shape[0]
    points = points.float()
    k = torch.minimum(k.long().clamp(min=1), valid.sum(1).clamp(min=1)).to(points.device)
    k_max = int(k.max())
    centroid_valid = torch.arange(k_max, device=points.device)[None, :] < k[:, None]
    seeds = list(range(g)) if seeds is None else list(seeds)
    run_seeds = [[s, r] for r in range(restarts) for s in seeds]  # restart-major: run r*G + i is problem i
    rep = (restarts, 1, 1)
    start = _initial_centroids(points.repeat(rep), valid.repeat(restarts, 1), k_max, run_seeds)
    centroids, inertia = _lloyd(points.repeat(rep), valid.repeat(restarts, 1), centroid_valid.repeat(restarts, 1),
                                start, iterations)
    inertia = inertia.reshape(restarts, g)
    best = inertia.argmin(0)  # the first of equal runs
    centroids = centroids.reshape(restarts, g, k_max, -1)[best, torch.arange(g)]
    centroids = centroids * centroid_valid[..., None]
    return KMeansResult(centroids, k, inertia[best, torch.arange(g)])
