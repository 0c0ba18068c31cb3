"""Unsupervised semantic segmentation by k-means on dense features, scored per pixel (TimeT's protocol).

TimeT's reference (``cluster_features`` in SMSD75/Timetuning): features are standardised and reduced to 50 dims by
a PCA fitted once on the evaluated set; each group (a frame, a clip, or the whole dataset) is clustered on its
features bilinearly upsampled to the evaluation resolution, per pixel, with ``faiss.Kmeans(niter=50, nredo=5)``;
K is the number of classes present in the group's annotation (``use_annotations``) or a fixed number; clusters are
matched to classes by the Hungarian algorithm on IoU (unmatched clusters count as background), or many-to-one by
precision for overclustering.

Two identities keep this cheap and exact: faiss trains on a random sample of at most 256 points per centroid,
so only the sampled pixels' features are built (bilinear sampling, :mod:`timetuning.eval.upsampling`); and the nearest
centroid of a bilinearly interpolated feature is the argmin of ``|c|^2 - 2 x.c``, which is linear in ``x``: the
argmin of the bilinearly upsampled *score* map (:func:`assign_clusters`), so no full-resolution feature map is built.

Protocol variants (robustness checks, one choice changed each): ``l2_no_pca`` (L2-normalised features, no scaler or
PCA: the DINO/Leopart way), ``pca_per_group`` (scaler and PCA fitted on each frame/clip), ``fixed_k`` (K = size of
the label set), ``patch_level`` (cluster patches, upsample the cluster map by nearest neighbour).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F

from timetuning.data.labels import IGNORE_INDEX
from timetuning.eval.kmeans import argmin_along, batched_kmeans
from timetuning.eval.metrics import confusion_matrix, fold_confusion, mean_iou
from timetuning.eval.pca import fit_standard_pca
from timetuning.eval.upsampling import bilinear_sample, nearest_indices

UNUSED_COST = 1e30  # the cost of an unused centroid slot: finite, so interpolating it makes no NaN


@dataclass(frozen=True)
class ClusterVariant:
    """One way of running the clustering protocols."""

    name: str
    features: Literal["pca", "l2", "pca_per_group"]  # global scaler+PCA, L2-normalised raw, or fitted per group
    k_rule: Literal["present", "label_set"]  # K = classes present in the group, or the whole label set
    pixels: bool  # cluster upsampled pixels (TimeT) or patches (cluster map upsampled by nearest neighbour)
    description: str


TIMET = ClusterVariant("timet", "pca", "present", True,
                       "scaler+PCA fitted once on the split, K = classes present in the group, pixels clustered")
VARIANTS: dict[str, ClusterVariant] = {v.name: v for v in (
    ClusterVariant("l2_no_pca", "l2", "present", True, "L2-normalised features, no scaler/PCA"),
    ClusterVariant("pca_per_group", "pca_per_group", "present", True, "scaler+PCA fitted on each frame/clip"),
    ClusterVariant("fixed_k", "pca", "label_set", True, "K = number of classes in the label set"),
    ClusterVariant("patch_level", "pca", "present", False, "patches clustered, cluster map upsampled (nearest)"),
)}


@dataclass(frozen=True)
class KMeansSettings:
    iterations: int = 50
    restarts: int = 5
    points_per_centroid: int = 256  # faiss's max_points_per_centroid: the training sample per problem


def classes_present(masks: np.ndarray, ignore_index: int = IGNORE_INDEX) -> int:
    """Number of distinct classes in ``masks`` (the ignore label excluded)."""
    values = np.unique(masks)
    return int((values != ignore_index).sum())


def group_pca(features: torch.Tensor, dim: int) -> torch.Tensor:
    """Standardise and PCA-reduce ``[F, D, g, g]`` maps fitted on their own patches (the ``pca_per_group``
    variant); the component signs do not matter to k-means."""
    f, d, gh, gw = features.shape
    x = features.permute(0, 2, 3, 1).reshape(-1, d).float()
    x = x - x.mean(0)
    std = x.std(0, unbiased=False)
    x = x / torch.where(std > 1e-12, std, torch.ones_like(std))
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    k = min(dim, x.shape[0], d)
    z = u[:, :k] * s[:k]
    return z.reshape(f, gh, gw, k).permute(0, 3, 1, 2).contiguous()


def sample_points(maps: torch.Tensor, positions: np.ndarray, size: tuple[int, int], pixels: bool) -> torch.Tensor:
    """Features ``[P, d]`` of ``maps [F, d, g, g]`` at flat positions over ``F x size`` pixels (``pixels``: bilinear
    upsampling) or over ``F x g x g`` patches."""
    pos = torch.from_numpy(np.asarray(positions, dtype=np.int64))
    if not pixels:
        return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1]).index_select(0, pos)
    h, w = size
    return bilinear_sample(maps, pos // (h * w), (pos % (h * w)) // w, pos % w, size)


def assign_clusters(maps: torch.Tensor, centroids: torch.Tensor, k: int | torch.Tensor, size: tuple[int, int],
                    pixels: bool, block: int = 32) -> np.ndarray:
    """Nearest-centroid ids ``[F, h, w]`` at the evaluation size of ``maps [F, d, g, g]``; ``centroids`` is one
    ``[K, d]`` set for every frame, or ``[F, K, d]`` (each frame its own, with ``k`` ``[F]``).

    The cost ``|c|^2 - 2 x.c`` is made on the patch grid and, for pixels, bilinearly upsampled ``block`` frames at a
    time (the weights sum to one, so this is the cost of the upsampled feature), then its argmin is taken."""
    per_frame = centroids.ndim == 3
    frames = maps.shape[0]
    cents = (centroids if per_frame else centroids[None].expand(frames, -1, -1)).float()
    ks = torch.as_tensor(k).reshape(-1).expand(frames) if per_frame else torch.full((frames,), int(k))
    unused = torch.arange(cents.shape[1])[None, :] >= ks[:, None]
    norms = (cents * cents).sum(-1).masked_fill(unused, UNUSED_COST)  # [F, K]
    cost = norms[:, :, None, None] - 2 * torch.einsum("fdyx,fkd->fkyx", maps.float(), cents)
    if not pixels:
        ids = argmin_along(cost, 1).long().numpy()
        return ids[:, nearest_indices(ids.shape[1], size[0])][:, :, nearest_indices(ids.shape[2], size[1])]
    out = np.empty((frames, *size), np.int64)
    for start in range(0, frames, block):
        up = F.interpolate(cost[start:start + block], size=size, mode="bilinear", align_corners=False)
        out[start:start + block] = argmin_along(up, 1).numpy()
    return out


def training_sample(count: int, k: int, points_per_centroid: int, rng: np.random.Generator) -> np.ndarray:
    """Flat indices of the points k-means trains on: all of them, or ``points_per_centroid * k`` at random."""
    n = min(count, points_per_centroid * k)
    return np.sort(rng.choice(count, n, replace=False)) if n < count else np.arange(count)


def _stack(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate groups' maps along frames, zero-padding the feature dims (zeros change no distance)."""
    d = max(m.shape[1] for m in maps)
    return torch.cat([F.pad(m.float(), (0, 0, 0, 0, 0, d - m.shape[1])) for m in maps])


def cluster_groups(maps: Sequence[torch.Tensor], ks: Sequence[int], keys: Sequence[int], *, size: tuple[int, int],
                   pixels: bool, seed: int, settings: KMeansSettings) -> list[np.ndarray]:
    """k-means on each group (one vectorised problem per group) -> cluster ids ``[F_i, h, w]`` per group.

    ``maps[i]``: the group's features ``[F_i, d, g, g]``; ``ks[i]``: its K; ``keys[i]``: its index in the split,
    which seeds its training sample and initialisations (so no result depends on how groups are batched)."""
    stacked = _stack(maps)
    frames = np.array([m.shape[0] for m in maps])
    offsets = np.concatenate([[0], np.cumsum(frames)])
    per_frame = size[0] * size[1] if pixels else stacked.shape[2] * stacked.shape[3]
    positions = []
    for i, (k, key) in enumerate(zip(ks, keys)):
        rng = np.random.default_rng([seed, key])
        positions.append(offsets[i] * per_frame + training_sample(frames[i] * per_frame, k,
                                                                  settings.points_per_centroid, rng))
    values = sample_points(stacked, np.concatenate(positions), size, pixels)
    counts = [len(p) for p in positions]
    points = torch.zeros(len(maps), max(counts), stacked.shape[1])
    valid = torch.zeros(len(maps), max(counts), dtype=torch.bool)
    for i, chunk in enumerate(values.split(counts)):
        points[i, : len(chunk)] = chunk
        valid[i, : len(chunk)] = True
    result = batched_kmeans(points, valid, torch.tensor(list(ks)), iterations=settings.iterations,
                            restarts=settings.restarts, seeds=[seed * 1_000_003 + key for key in keys])
    group_of_frame = torch.from_numpy(np.repeat(np.arange(len(maps)), frames))
    ids = assign_clusters(stacked, result.centroids[group_of_frame], result.k[group_of_frame], size, pixels)
    return np.split(ids, offsets[1:-1])


@dataclass
class GroupScore:
    miou: float  # NaN when the group has no scored pixel
    confusion: np.ndarray  # [C, K] classes x clusters, before matching
    mapping: np.ndarray  # [K] cluster -> class


def match_group(ids: np.ndarray, masks: np.ndarray, num_classes: int, num_clusters: int,
                matching: str = "hungarian") -> GroupScore:
    """Match one group's clusters to classes and score it (mIoU over the classes present)."""
    conf = confusion_matrix(ids, masks, num_clusters, num_classes)
    folded, mapping = fold_confusion(conf, matching)
    return GroupScore(mean_iou(folded) if folded.sum() else float("nan"), conf, mapping)


def clip_clustering_miou(features: list[torch.Tensor], masks: list[np.ndarray], num_classes: int, *,
                         pca_dim: int = 50, seed: int = 0, settings: KMeansSettings = KMeansSettings()) -> float:
    """Per-clip clustering mIoU under TimeT's protocol for a handful of clips held in memory (training's model
    selection): scaler+PCA fitted on these clips, each clip clustered per pixel at its masks' size."""
    pca = fit_standard_pca([f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in features], pca_dim)
    reduce = lambda f: pca.transform(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    scores = []
    for i, (f, m) in enumerate(zip(features, masks)):
        size = (m.shape[-2], m.shape[-1])
        k = classes_present(m)
        if k == 0:
            continue
        ids = cluster_groups([reduce(f)], [k], [i], size=size, pixels=True, seed=seed,
                             settings=settings)[0]
        scores.append(match_group(ids, m, num_classes, k).miou)
    return float(np.nanmean(scores)) if scores else float("nan")
