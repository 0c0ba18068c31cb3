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
UNUSED_COST = 1e30  # cost of an unused centroid slot: finite, so no inf or NaN enters a product


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


def _initial_centroids(points: torch.Tensor, valid: torch.Tensor, k_max: int, seeds: list[int],
                       restarts: int) -> torch.Tensor:
    """``[G, R, k_max, d]``: for each problem and restart, ``k_max`` distinct valid points chosen uniformly at
    random from the generator seeded ``[seeds[g], r]``."""
    g, n, d = points.shape
    keys = torch.from_numpy(np.stack([np.random.default_rng([s, r]).random(n) for s in seeds for r in range(restarts)]))
    keys = keys.to(points.device).reshape(g, restarts, n).masked_fill(~valid[:, None, :], INFINITY)
    index = keys.topk(k_max, dim=2, largest=False).indices  # [G, R, K]
    return torch.gather(points[:, None].expand(-1, restarts, -1, -1), 2, index[..., None].expand(-1, -1, -1, d))


def _lloyd(points, valid, centroid_valid, centroids, iterations):
    """Lloyd iterations of every restart of every problem (``centroids [G, R, K, d]``): a run stops when its
    assignments stop changing (a fixed point: more iterations would change nothing) or after ``iterations``; a
    problem leaves the batch when all its runs have stopped. Returns the centroids and the inertias ``[G, R]``.

    The restarts of a problem share its points: the costs ``|c|^2 - 2 x.c`` (the squared distance less ``|x|^2``,
    which no argmin needs) of all ``R x K`` centroids are one product per problem and iteration (``|c|^2`` is the
    weight of an extra all-ones coordinate), laid out centroids x points so that the argmin over a run's ``K``
    compares whole rows; the centroid sums are another product."""
    g, n, d = points.shape
    r, k_max = centroids.shape[1:3]
    if k_max > 2 ** 15:
        raise ValueError(f"k = {k_max}: at most {2 ** 15} clusters")
    weights = valid.to(points.dtype)
    slot_valid = centroid_valid[:, None, :].expand(-1, r, -1).reshape(g, r * k_max)
    offsets = (torch.arange(r, device=points.device) * k_max)[:, None]  # [R, 1]: first slot of each run
    augmented = torch.cat([points, torch.ones(g, n, 1, dtype=points.dtype, device=points.device)], 2)
    final = centroids.reshape(g, r * k_max, d).clone()
    active = torch.arange(g, device=points.device)
    x, c, w, ok, slots = augmented, final.clone(), weights, valid, slot_valid
    done = torch.zeros(g, r, dtype=torch.bool, device=points.device)
    previous = torch.full((g, r, n), -1, dtype=torch.int16, device=points.device)
    for _ in range(iterations):
        cost = _costs(x, c, slots).view(-1, r, k_max, n)  # [A, R, K, N]
        nearest = argmin_along(cost, 2)  # [A, R, N]
        done |= ~(nearest != previous).any(2)
        if done.all(1).any():  # problems whose runs have all stopped leave the batch
            finished = done.all(1)
            final[active[finished]] = c[finished]
            keep = (~finished).nonzero().flatten()
            if keep.numel() == 0:
                break
            active, x, c, w, ok, slots, done, cost, nearest = (
                t[keep] for t in (active, x, c, w, ok, slots, done, cost, nearest))
        previous = nearest
        onehot = torch.zeros(x.shape[0], r * k_max, n, dtype=x.dtype, device=x.device)
        onehot.scatter_(1, nearest.long() + offsets, w[:, None, :].expand(-1, r, -1))  # each run: the point's weight
        counts = onehot.sum(2)  # [A, R*K]
        sums = torch.bmm(onehot, x[..., :d])  # [A, R*K, d]
        updated = torch.where((counts > 0)[..., None], sums / counts.clamp(min=1)[..., None], c)
        empty = ((counts == 0) & slots).view(-1, r, k_max) & ~done[..., None]
        if empty.any():  # move each empty cluster onto the point farthest from its run's centroid
            xd = x[..., :d]
            gap = (cost.min(2).values + (xd * xd).sum(-1)[:, None, :]).masked_fill(~ok[:, None, :], -INFINITY)
            for a, run in torch.nonzero(empty.any(2)).tolist():
                moved = torch.nonzero(empty[a, run]).flatten()
                updated[a, run * k_max + moved] = xd[a, gap[a, run].topk(len(moved)).indices]
        frozen = done.repeat_interleave(k_max, dim=1)[..., None]  # stopped runs keep their centroids
        c = torch.where(frozen, c, updated)
    else:
        final[active] = c
    bias = torch.zeros(g, 1, r * k_max, device=points.device).masked_fill_(~slot_valid[:, None, :], INFINITY)
    d2 = _distances(points, (points * points).sum(-1, keepdim=True), final, bias).view(g, n, r, k_max)
    inertia = (d2.min(-1).values * weights[..., None]).sum(1)  # [G, R]
    return final.view(g, r, k_max, d), inertia


def _costs(x_augmented: torch.Tensor, centroids: torch.Tensor, slot_valid: torch.Tensor) -> torch.Tensor:
    """``[A, S, N]`` ``|c|^2 - 2 x.c`` of centroids ``[A, S, d]`` to points ``[A, N, d + 1]`` (last coordinate 1);
    unused slots cost ``UNUSED_COST``."""
    norms = (centroids * centroids).sum(-1).masked_fill(~slot_valid, UNUSED_COST)
    return torch.bmm(torch.cat([-2 * centroids, norms[..., None]], 2), x_augmented.transpose(1, 2))


def argmin_along(cost: torch.Tensor, dim: int) -> torch.Tensor:
    """Index (int16) of the smallest entry along a short ``dim``, the first of equal ones, as whole-slice
    comparisons: the running minimum, then the count of leading entries above it. Several times faster than
    torch's ``argmin`` over a dim of a few entries that is not the innermost."""
    slices = cost.unbind(dim)
    best = slices[0].clone()
    for s in slices[1:]:
        torch.minimum(best, s, out=best)
    above = slices[0] > best
    ids = above.to(torch.int16)
    for s in slices[1:-1]:
        above &= s > best
        ids += above
    return ids


def batched_kmeans(points: torch.Tensor, valid: torch.Tensor, k: torch.Tensor, *, iterations: int = 50,
                   restarts: int = 5, seeds: list[int] | None = None) -> KMeansResult:
    """Cluster each of ``G`` point sets ``points [G, N, d]`` (``valid [G, N]`` marks real points) into ``k[g]``
    clusters (``k`` is clipped to the number of valid points). The caller samples the training points.

    ``seeds[g]`` seeds problem ``g``'s initialisations (restart ``r`` starts from the generator ``[seeds[g], r]``),
    so a problem's result does not depend on the others in the batch. All restarts of all problems run as one
    batch; of a problem's restarts the one with the lowest inertia is kept (the first of equal ones)."""
    if points.ndim != 3 or valid.shape != points.shape[:2] or k.shape != points.shape[:1]:
        raise ValueError(f"points {tuple(points.shape)}, valid {tuple(valid.shape)}, k {tuple(k.shape)} do not fit")
    g = points.shape[0]
    points = points.float()
    k = torch.minimum(k.long().clamp(min=1), valid.sum(1).clamp(min=1)).to(points.device)
    k_max = int(k.max())
    centroid_valid = torch.arange(k_max, device=points.device)[None, :] < k[:, None]
    seeds = list(range(g)) if seeds is None else list(seeds)
    start = _initial_centroids(points, valid, k_max, seeds, restarts)
    centroids, inertia = _lloyd(points, valid, centroid_valid, start, iterations)
    best = inertia.argmin(1)  # the first of equal runs
    rows = torch.arange(g, device=points.device)
    centroids = centroids[rows, best] * centroid_valid[..., None]
    return KMeansResult(centroids, k, inertia[rows, best])
