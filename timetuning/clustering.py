"""Unsupervised clustering protocols on dense features (METHOD.md).

Features are standardised, reduced by PCA (50 dims by default) and clustered with k-means (several restarts, fixed
seed). Three scopes: per frame, per clip, per dataset — one k-means (and one matching) per group. Overclustering uses
more clusters than classes with greedy many-to-one matching.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from timetuning.metrics import (confusion_matrix, greedy_mapping, hungarian_mapping, mean_iou, per_class_iou,
                                remap_confusion)


def reduce_features(features: np.ndarray, pca_dim: int, seed: int) -> np.ndarray:
    """Standardise, then PCA to ``min(pca_dim, n_samples, n_features)`` dimensions."""
    x = StandardScaler().fit_transform(np.asarray(features, dtype=np.float32))
    dim = min(pca_dim, x.shape[0], x.shape[1])
    return PCA(n_components=dim, random_state=seed).fit_transform(x).astype(np.float32)


def kmeans(features: np.ndarray, k: int, seed: int, restarts: int = 5) -> np.ndarray:
    """Cluster ids of k-means with ``restarts`` initialisations (mini-batch beyond 50k points)."""
    k = max(1, min(k, features.shape[0]))
    if features.shape[0] > 50_000:
        model = MiniBatchKMeans(n_clusters=k, n_init=restarts, random_state=seed, batch_size=4096)
    else:
        model = KMeans(n_clusters=k, n_init=restarts, random_state=seed)
    return model.fit_predict(features).astype(np.int64)


@dataclass
class ClusteringResult:
    miou: float
    per_class_iou: np.ndarray  # [num_classes], from the summed folded confusion over groups
    confusion: np.ndarray  # [num_classes, num_classes] after matching, summed over groups
    predictions: np.ndarray  # matched class per patch (same order as the input)


def cluster_and_match(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, num_classes: int,
                      num_clusters: int, seed: int, pca_dim: int = 50, restarts: int = 5,
                      matching: str = "hungarian", ignore_index: int = 255) -> ClusteringResult:
    """Cluster each group (frame, clip or dataset) separately and match its clusters to classes.

    ``features`` ``[N, D]``, ``labels`` ``[N]`` (patch classes, ``ignore_index`` ignored), ``groups`` ``[N]``.
    The reported mIoU averages the per-group mIoUs (the per-frame / per-clip protocols); per-class IoU and the
    confusion matrix are accumulated over all groups.
    """
    if matching not in ("hungarian", "greedy"):
        raise ValueError(f"matching must be 'hungarian' or 'greedy', got {matching!r}")
    predictions = np.zeros(labels.shape[0], dtype=np.int64)
    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    scores = []
    for group in np.unique(groups):
        idx = np.flatnonzero(groups == group)
        x = reduce_features(features[idx], pca_dim, seed)
        ids = kmeans(x, num_clusters, seed, restarts)
        conf = confusion_matrix(ids, labels[idx], num_clusters, num_classes, ignore_index)
        mapping = hungarian_mapping(conf) if matching == "hungarian" else greedy_mapping(conf)
        folded = remap_confusion(conf, mapping)
        if folded.sum() > 0:
            scores.append(mean_iou(folded))
        total += folded
        predictions[idx] = mapping[ids]
    return ClusteringResult(float(np.mean(scores)) if scores else float("nan"), per_class_iou(total), total,
                            predictions)
