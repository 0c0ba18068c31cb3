"""Unsupervised segmentation protocols over a split (TimeT's reference unless said otherwise; the method and
its choices: docs/evaluation.md): clustering per frame and per clip (one k-means and Hungarian matching per group)
with the temporal stability of their maps, and per dataset (one k-means over the split) with overclustering; the
scaler + PCA fitted once on the scored split; every robustness variant changes one choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from timetuning.eval.clustering import (
    TIMET,
    ClusterVariant,
    KMeansSettings,
    assign_clusters,
    classes_present,
    cluster_groups,
    group_pca,
    match_group,
    sample_points,
)
from timetuning.eval.kmeans import batched_kmeans
from timetuning.eval.metrics import confusion_matrix, hungarian_mapping
from timetuning.eval.pca import StandardPCA, fit_standard_pca
from timetuning.eval.protocol_result import ProtocolResult
from timetuning.eval.scores import ConfusionScores, GroupScores, RatioScores
from timetuning.eval.split_source import SplitSource
from timetuning.eval.temporal import stable_counts
from timetuning.eval.upsampling import resize_nearest
from timetuning.infra.config import FitProbesParams


def settings_of(p: FitProbesParams) -> KMeansSettings:
    return KMeansSettings(p.kmeans_iterations, p.kmeans_restarts, p.kmeans_points_per_centroid)


def fit_split_pca(source: SplitSource, dim: int) -> StandardPCA:
    """The scaler + PCA of the split (TimeT fits them once on the evaluated set)."""
    return fit_standard_pca((f.features.permute(0, 2, 3, 1).reshape(-1, f.features.shape[1])
                             for f in source.feature_clips()), dim)


def feature_maps(kind: str, features: torch.Tensor, pca: StandardPCA) -> torch.Tensor:
    """``[T, D, g, g]`` -> the maps a variant clusters (``pca_per_group`` maps are made per group)."""
    if kind == "l2":
        return F.normalize(features.float(), dim=1)
    return pca.transform(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


def group_protocols(source: SplitSource, pca: StandardPCA, num_classes: int, p: FitProbesParams,
                    variants: list[ClusterVariant], num_examples: int) -> ProtocolResult:
    """Per-frame and per-clip clustering (one k-means and matching per group) for every variant and seed."""
    size = (p.cluster_eval_size or source.info.input_size,) * 2
    scopes = ["per_frame", "per_clip"] if source.has_time else ["per_frame"]
    settings, seeds = settings_of(p), p.seeds
    video_of_frame = np.repeat(source.clip_video, source.clip_frames)
    group_video = {"per_frame": video_of_frame, "per_clip": np.asarray(source.clip_video)}
    mious = {(v.name, s): np.full((len(seeds), len(group_video[s])), np.nan) for v in variants for s in scopes}
    stable = {s: np.zeros((len(seeds), len(source.videos), 2)) for s in scopes}
    examples: dict[str, np.ndarray] = {}
    frame_offsets = np.concatenate([[0], np.cumsum(source.clip_frames)])
    for chunk in source.chunks("clustering per frame/clip"):
        masks = {i: resize_nearest(c.masks, size) for i, _, c in chunk}
        reduced = {i: feature_maps("pca", f.features, pca) for i, f, _ in chunk}
        normalised = {i: feature_maps("l2", f.features, pca) for i, f, _ in chunk} \
            if any(v.features == "l2" for v in variants) else {}
        for variant in variants:
            for scope in scopes:
                groups = []  # (key, clip index, frame slice within the clip, maps, masks)
                for i, f, _ in chunk:
                    spans = [slice(t, t + 1) for t in range(f.features.shape[0])] if scope == "per_frame" \
                        else [slice(0, f.features.shape[0])]
                    for span in spans:
                        key = frame_offsets[i] + span.start if scope == "per_frame" else i
                        if variant.features == "pca_per_group":
                            maps = group_pca(f.features[span], p.pca_dim)
                        else:
                            maps = (normalised if variant.features == "l2" else reduced)[i][span]
                        groups.append((int(key), i, span, maps, masks[i][span]))
                ks = [classes_present(m) if variant.k_rule == "present" else num_classes for *_, m in groups]
                live = [g for g, k in zip(groups, ks) if k > 0]  # a group with no scored pixel has no score
                live_k = [k for k in ks if k > 0]
                if not live:
                    continue
                for s, seed in enumerate(seeds):
                    ids = cluster_groups([g[3] for g in live], live_k, [g[0] for g in live], size=size,
                                         pixels=variant.pixels, seed=seed, settings=settings)
                    predictions: dict[int, list[np.ndarray]] = {}
                    for (key, i, span, _, m), k, cluster_ids in zip(live, live_k, ids):
                        score = match_group(cluster_ids, m, num_classes, k)
                        mious[(variant.name, scope)][s, key] = score.miou
                        predictions.setdefault(i, []).append(score.mapping[cluster_ids])
                    if variant is not TIMET:
                        continue
                    for i, preds in predictions.items():
                        pred = np.concatenate(preds)
                        if scope in ("per_frame", "per_clip") and source.has_time and len(pred) == len(masks[i]):
                            stable[scope][s, source.clip_video[i]] += stable_counts(pred, masks[i])
                        if s == 0 and i < num_examples and (scope == "per_clip" or not source.has_time):
                            examples[f"cluster/{i}"] = pred.astype(np.uint8)
    result = ProtocolResult(examples=examples)
    for (variant, scope), value in mious.items():
        scores = result.scores if variant == TIMET.name else result.variant_scores.setdefault(variant, {})
        scores[f"cluster_{scope}"] = GroupScores(group_video[scope], value)
    if source.has_time:
        for scope, counts in stable.items():
            result.scores[f"temporal_stability_{scope}"] = RatioScores(counts)
    return result


@dataclass
class DatasetConfig:
    name: str  # variant name or "overcluster_k<K>"
    variant: ClusterVariant
    k: int | None  # None: classes present in the split
    matching: str


def dataset_protocols(source: SplitSource, pca: StandardPCA, num_classes: int, p: FitProbesParams,
                      variants: list[ClusterVariant], num_examples: int) -> ProtocolResult:
    """One k-means over the whole split per config and seed: the TimeT protocol, its variants (``pca_per_group``
    is the TimeT protocol itself at this scope) and overclustering."""
    size = (p.dataset_eval_size,) * 2
    settings = settings_of(p)
    configs = [DatasetConfig(v.name, v, None if v.k_rule == "present" else num_classes, "hungarian")
               for v in variants if v.features != "pca_per_group"]
    configs += [DatasetConfig(f"overcluster_k{k}", TIMET, k, "greedy") for k in p.overclustering_k]
    frames, grid = source.num_frames, source.info.grid
    totals = {True: frames * size[0] * size[1], False: frames * grid * grid}  # pixels / patches
    k_bound = max([num_classes] + list(p.overclustering_k))
    orders = {(seed, pixels): np.random.default_rng([seed, 7]).choice(
        totals[pixels], min(totals[pixels], k_bound * settings.points_per_centroid), replace=False)
        for seed in p.seeds for pixels in (True, False)}
    kinds = {(c.variant.features, c.variant.pixels) for c in configs}
    dims = {"pca": pca.dim, "l2": source.info.dim}
    samples = {(seed, kind, pixels): torch.zeros(len(orders[(seed, pixels)]), dims[kind])
               for seed in p.seeds for kind, pixels in kinds}
    class_pixels = np.zeros(num_classes, np.int64)
    offset = 0
    for chunk in source.chunks("clustering per dataset: sampling"):
        feats = torch.cat([f.features for _, f, _ in chunk])
        class_pixels += np.bincount(np.concatenate([resize_nearest(c.masks, size).ravel() for *_, c in chunk]),
                                    minlength=256)[:num_classes]
        n = feats.shape[0]
        maps = {kind: feature_maps(kind, feats, pca) for kind in {k for k, _ in kinds}}
        for (seed, kind, pixels), store in samples.items():
            order = orders[(seed, pixels)]
            per_frame = totals[pixels] // frames
            lo, hi = offset * per_frame, (offset + n) * per_frame
            where = np.flatnonzero((order >= lo) & (order < hi))
            store[torch.from_numpy(where)] = sample_points(maps[kind], order[where] - lo, size, pixels)
        offset += n
    present = int((class_pixels > 0).sum())
    centroids = {}
    for c in configs:
        k = c.k if c.k is not None else max(present, 1)
        for seed in p.seeds:
            n = min(totals[c.variant.pixels], k * settings.points_per_centroid)
            points = samples[(seed, c.variant.features, c.variant.pixels)][:n]
            res = batched_kmeans(points[None], torch.ones(1, n, dtype=torch.bool), torch.tensor([k]),
                                 iterations=settings.iterations, restarts=settings.restarts, seeds=[seed])
            centroids[(c.name, seed)] = (res.centroids[0], int(res.k[0]))
    confusion = {c.name: np.zeros((len(p.seeds), len(source.videos), num_classes,
                                   max(centroids[(c.name, s)][1] for s in p.seeds)), np.int64) for c in configs}
    example_ids: dict[int, np.ndarray] = {}
    for chunk in source.chunks("clustering per dataset: assigning"):
        feats = torch.cat([f.features for _, f, _ in chunk])
        maps = {kind: feature_maps(kind, feats, pca) for kind in {k for k, _ in kinds}}
        masks = [resize_nearest(c.masks, size) for *_, c in chunk]
        for c in configs:
            for s, seed in enumerate(p.seeds):
                cents, k = centroids[(c.name, seed)]
                ids = assign_clusters(maps[c.variant.features], cents, k, size, c.variant.pixels)
                start = 0
                for (i, f, _), m in zip(chunk, masks):
                    t = f.features.shape[0]
                    width = confusion[c.name].shape[-1]
                    confusion[c.name][s, source.clip_video[i]] += confusion_matrix(ids[start:start + t], m, width,
                                                                                   num_classes)
                    if c.variant is TIMET and c.k is None and s == 0 and i < num_examples:
                        example_ids[i] = ids[start:start + t]
                    start += t
    scores = {c.name: ConfusionScores(confusion[c.name], c.matching) for c in configs}
    if "pca_per_group" in {v.name for v in variants}:
        scores["pca_per_group"] = scores[TIMET.name]
    timet = scores[TIMET.name]
    mapping = hungarian_mapping(timet.confusion[0].sum(0))
    examples = {f"dataset/{i}": mapping[ids].astype(np.uint8) for i, ids in example_ids.items()}
    with np.errstate(invalid="ignore"):
        baseline = float(class_pixels[0] / class_pixels.sum() / max(present, 1)) if class_pixels.sum() else None
    facts = {"classes_present": present, "all_background_miou": baseline,
             "k_used": {c.name: centroids[(c.name, p.seeds[0])][1] for c in configs}}
    result = ProtocolResult(examples=examples, facts=facts)
    for name, value in scores.items():
        if name.startswith("overcluster_k") or name == TIMET.name:
            result.scores["cluster_per_dataset" if name == TIMET.name else name] = value
        else:
            result.variant_scores[name] = {"cluster_per_dataset": value}
    return result
