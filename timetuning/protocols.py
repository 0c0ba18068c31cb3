"""All evaluation protocols for one model on one labeled set: clustering (per frame / clip / dataset),
overclustering, linear probe, Hummingbird retrieval and temporal consistency.

Clustering protocols score patches (patch label = majority class of its pixels); the linear probe and retrieval
score pixels at the feature-extraction resolution. Every k-means protocol runs over several seeds; the mean and the
standard deviation are reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from timetuning.clustering import cluster_and_match
from timetuning.config import FitProbesParams
from timetuning.features import iter_eval_clips, read_features, resize_masks
from timetuning.metrics import mean_iou, per_class_iou
from timetuning.probes import (hummingbird_predict, pixel_confusion, predict_linear_probe, soft_patch_labels,
                               train_linear_probe)
from timetuning.temporal import mean_stability


@dataclass
class FeatureSplit:
    """One split's patch features in extraction order (clip -> frame -> row -> col) and its masks."""

    features: np.ndarray  # [N, D] float32
    labels: np.ndarray  # [N] int64 patch labels (255 ignore)
    frame_ids: np.ndarray  # [N] global frame index
    clip_ids: np.ndarray  # [N] clip index
    grid: int
    masks: np.ndarray  # [F, S, S] uint8 masks at the extraction resolution
    clip_names: list[str]

    @property
    def num_frames(self) -> int:
        return int(self.frame_ids.max()) + 1

    def grids(self) -> torch.Tensor:
        """Features as ``[F, D, g, g]``."""
        f, g = self.num_frames, self.grid
        return torch.from_numpy(self.features.reshape(f, g, g, -1)).permute(0, 3, 1, 2).contiguous()


def load_split(parquet: str | Path, set_dir: str | Path, split: str, input_size: int) -> FeatureSplit:
    cols = read_features(parquet, ["clip_id", "frame", "row", "label", "feature"])
    n = cols["feature"].shape[0]
    grid = int(cols["row"].max()) + 1
    frame_ids = np.arange(n) // (grid * grid)
    names, clip_ids = np.unique(cols["clip_id"], return_inverse=True)
    order = list(dict.fromkeys(cols["clip_id"].tolist()))  # clips in extraction order
    remap = {name: i for i, name in enumerate(order)}
    clip_ids = np.array([remap[c] for c in names])[clip_ids]
    masks = np.concatenate([resize_masks(c.masks, input_size) for c in iter_eval_clips(set_dir, split)])
    if masks.shape[0] * grid * grid != n:
        raise ValueError(f"{parquet}: {n} patches do not match {masks.shape[0]} frames of {set_dir}/{split}")
    return FeatureSplit(cols["feature"], cols["label"].astype(np.int64), frame_ids, clip_ids, grid, masks, order)


def _mean_std(values: list[float]) -> dict[str, Any]:
    arr = np.array(values, dtype=np.float64)
    return {"mean": float(np.nanmean(arr)), "std": float(np.nanstd(arr)), "per_seed": [float(v) for v in arr]}


def run_protocols(val: FeatureSplit, train: FeatureSplit | None, num_classes: int, p: FitProbesParams,
                  num_examples: int = 3) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every protocol on one model x set; returns (metrics, example predictions for pictures)."""
    results: dict[str, Any] = {}
    examples: dict[str, np.ndarray] = {}
    g = val.grid
    frame_shape = (val.num_frames, g, g)
    scopes = {"per_frame": val.frame_ids, "per_clip": val.clip_ids, "per_dataset": np.zeros_like(val.frame_ids)}
    detail: dict[str, Any] = {}
    for scope, groups in scopes.items():
        scores, last = [], None
        for seed in p.seeds:
            last = cluster_and_match(val.features, val.labels, groups, num_classes=num_classes,
                                     num_clusters=num_classes, seed=seed, pca_dim=p.pca_dim,
                                     restarts=p.kmeans_restarts)
            scores.append(last.miou)
        results[f"cluster_{scope}"] = _mean_std(scores)
        detail[scope] = last
    results["cluster_per_dataset"]["per_class_iou"] = _nan_to_none(detail["per_dataset"].per_class_iou)
    results["cluster_per_dataset"]["confusion"] = detail["per_dataset"].confusion.tolist()

    labels_grid = val.labels.reshape(frame_shape)
    frames_of_clip = [np.unique(val.frame_ids[val.clip_ids == c]) for c in range(int(val.clip_ids.max()) + 1)]
    for scope in ("per_frame", "per_clip"):
        pred = detail[scope].predictions.reshape(frame_shape)
        results[f"temporal_stability_{scope}"] = mean_stability(
            [(pred[f], labels_grid[f]) for f in frames_of_clip if len(f) > 1])
    results["temporal_clip_minus_frame_miou"] = (results["cluster_per_clip"]["mean"]
                                                 - results["cluster_per_frame"]["mean"])
    examples["cluster_per_clip"] = detail["per_clip"].predictions.reshape(frame_shape).astype(np.uint8)

    max_k = max(num_classes, val.features.shape[0] // 4)
    for k in p.overclustering_k:
        k_eff = min(k, max_k)
        scores = [cluster_and_match(val.features, val.labels, scopes["per_dataset"], num_classes=num_classes,
                                    num_clusters=k_eff, seed=s, pca_dim=p.pca_dim, restarts=p.kmeans_restarts,
                                    matching="greedy").miou for s in p.seeds]
        results[f"overcluster_k{k}"] = _mean_std(scores) | {"k_used": k_eff}

    if train is not None:
        probe = train_linear_probe(train.grids(), torch.from_numpy(train.masks), num_classes,
                                   epochs=p.linear_epochs, lr=p.linear_lr, drop_epoch=p.linear_drop_epoch,
                                   seed=p.seeds[0])
        pred = predict_linear_probe(probe, val.grids(), val.masks.shape[-2:])
        conf = pixel_confusion(pred, val.masks, num_classes)
        results["linear"] = {"miou": mean_iou(conf), "per_class_iou": _nan_to_none(per_class_iou(conf)),
                             "confusion": conf.tolist()}
        examples["linear"] = pred

        rng = np.random.default_rng(p.seeds[0])
        soft = soft_patch_labels(train.masks, train.grid, num_classes).reshape(-1, num_classes)
        keep = soft.sum(1) > 0
        idx = np.flatnonzero(keep)
        if idx.size > p.hummingbird_memory:
            idx = np.sort(rng.choice(idx, p.hummingbird_memory, replace=False))
        pred = hummingbird_predict(train.features[idx], soft[idx], val.features, g, val.masks.shape[-1],
                                   k=p.hummingbird_k, temperature=p.hummingbird_temperature)
        conf = pixel_confusion(pred, val.masks, num_classes)
        results["hummingbird"] = {"miou": mean_iou(conf), "per_class_iou": _nan_to_none(per_class_iou(conf)),
                                  "memory": int(idx.size)}
    keep_frames = np.concatenate(frames_of_clip[:num_examples]) if frames_of_clip else np.array([], int)
    examples = {k: v[keep_frames] for k, v in examples.items()}
    examples["frames_of_clip"] = np.array([len(f) for f in frames_of_clip[:num_examples]])
    return results, examples


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]
