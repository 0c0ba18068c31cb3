"""Segmentation metrics from confusion matrices (numpy only, no per-pixel Python loops).

Conventions (docs/evaluation.md): label 255 is ignored everywhere; mIoU averages over the ground-truth classes present
in the target (background included); unsupervised predictions are cluster ids matched to classes either one-to-one
(Hungarian on IoU, unmatched clusters count as background) or many-to-one (each cluster to the class where its
precision is highest).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from timetuning.data.labels import IGNORE_INDEX


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_pred: int, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``[num_classes, num_pred]`` counts of (target class, predicted id) over non-ignored pixels."""
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    target = np.asarray(target).reshape(-1).astype(np.int64)
    if pred.shape != target.shape:
        raise ValueError(f"prediction has {pred.size} pixels, target {target.size}")
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if pred.size and (pred.min() < 0 or pred.max() >= num_pred):
        raise ValueError(f"predicted ids must lie in [0, {num_pred}), got [{pred.min()}, {pred.max()}]")
    if target.size and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"target classes must lie in [0, {num_classes}) or be {ignore_index}, got max {target.max()}")
    counts = np.bincount(target * num_pred + pred, minlength=num_classes * num_pred)
    return counts.reshape(num_classes, num_pred)


def per_class_iou(conf: np.ndarray) -> np.ndarray:
    """IoU per class of a square confusion matrix (classes x classes); NaN where the class never appears."""
    tp = np.diag(conf).astype(np.float64)
    denom = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def mean_iou(conf: np.ndarray) -> float:
    """mIoU over the classes present in the target (rows with pixels)."""
    present = conf.sum(1) > 0
    iou = per_class_iou(conf)
    return float(np.mean(iou[present])) if present.any() else float("nan")


def remap_confusion(conf: np.ndarray, cluster_to_class: np.ndarray) -> np.ndarray:
    """Fold a ``[classes, clusters]`` matrix into ``[classes, classes]`` with a cluster -> class mapping."""
    num_classes = conf.shape[0]
    out = np.zeros((num_classes, num_classes), dtype=conf.dtype)
    np.add.at(out.T, cluster_to_class, conf.T)
    return out


def hungarian_mapping(conf: np.ndarray, background: int = 0) -> np.ndarray:
    """One-to-one cluster -> class mapping maximising total IoU; unmatched clusters go to ``background``."""
    tp = conf.astype(np.float64)
    union = conf.sum(1, keepdims=True) + conf.sum(0, keepdims=True) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, 0.0)
    rows, cols = linear_sum_assignment(iou, maximize=True)  # rows: classes, cols: clusters
    mapping = np.full(conf.shape[1], background, dtype=np.int64)
    mapping[cols] = rows
    return mapping


def greedy_mapping(conf: np.ndarray) -> np.ndarray:
    """Many-to-one: each cluster goes to the class where its precision is highest (empty clusters: class 0)."""
    return conf.argmax(0).astype(np.int64)


MATCHINGS = ("hungarian", "greedy", "none")


def fold_confusion(conf: np.ndarray, matching: str) -> tuple[np.ndarray, np.ndarray]:
    """The one way a ``[classes, clusters]`` confusion becomes ``[classes, classes]``: match the clusters to
    classes (``hungarian``: one-to-one by IoU, unmatched clusters = background; ``greedy``: many-to-one by
    precision; ``none``: the ids are classes already), then fold. Returns the folded matrix and the mapping."""
    if matching == "none":
        return conf, np.arange(conf.shape[1])
    if matching not in MATCHINGS:
        raise ValueError(f"matching must be one of {MATCHINGS}, got {matching!r}")
    mapping = hungarian_mapping(conf) if matching == "hungarian" else greedy_mapping(conf)
    return remap_confusion(conf, mapping), mapping


def hungarian_miou(pred: np.ndarray, target: np.ndarray, num_classes: int, num_clusters: int | None = None,
                   ignore_index: int = IGNORE_INDEX) -> tuple[float, np.ndarray]:
    """mIoU of cluster ids ``pred`` against ``target`` after Hungarian matching; also the per-class IoU."""
    num_clusters = num_clusters or int(max(num_classes, np.max(pred) + 1 if np.size(pred) else 1))
    folded, _ = fold_confusion(confusion_matrix(pred, target, num_clusters, num_classes, ignore_index), "hungarian")
    return mean_iou(folded), per_class_iou(folded)


def overclustering_miou(pred: np.ndarray, target: np.ndarray, num_classes: int, num_clusters: int,
                        ignore_index: int = IGNORE_INDEX) -> tuple[float, np.ndarray]:
    """mIoU after greedy many-to-one matching of ``num_clusters`` clusters to the classes."""
    folded, _ = fold_confusion(confusion_matrix(pred, target, num_clusters, num_classes, ignore_index), "greedy")
    return mean_iou(folded), per_class_iou(folded)
