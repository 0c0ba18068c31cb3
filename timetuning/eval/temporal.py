"""Temporal consistency of dense predictions (no reference codebase measures it; this project adds it).

``label_stability``: over consecutive frames, among patch positions whose ground-truth class is the same in both
frames (correspondence from the ground-truth masks: the same position keeping its label is taken to be the same
surface), the fraction whose *predicted* class is also unchanged. 1.0 = no flicker. The other measure,
per-clip minus per-frame clustering mIoU, is computed by the probes stage from the clustering results.
"""

from __future__ import annotations

import numpy as np

from timetuning.data.labels import IGNORE_INDEX


def stable_counts(predictions: np.ndarray, labels: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(patches whose prediction is kept, patches whose ground truth is kept) over consecutive frames."""
    same_gt = (labels[1:] == labels[:-1]) & (labels[1:] != ignore_index) & (labels[:-1] != ignore_index)
    kept = predictions[1:] == predictions[:-1]
    return np.array([int(kept[same_gt].sum()), int(same_gt.sum())])


def label_stability(predictions: np.ndarray, labels: np.ndarray, ignore_index: int = IGNORE_INDEX) -> float:
    """``predictions`` and ``labels`` ``[T, h, w]`` of one clip -> fraction of stable predictions (NaN if none)."""
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ in shape")
    return mean_stability([(predictions, labels)], ignore_index)


def mean_stability(clips: list[tuple[np.ndarray, np.ndarray]], ignore_index: int = IGNORE_INDEX) -> float:
    """Patch-weighted stability over many clips (NaN if no ground truth is kept anywhere)."""
    kept = total = 0
    for pred, lab in clips:
        k, n = stable_counts(pred, lab, ignore_index)
        kept, total = kept + k, total + n
    return kept / total if total else float("nan")
