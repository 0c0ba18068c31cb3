"""Temporal consistency of dense predictions (no reference codebase measures it; this project adds it).

``label_stability``: over consecutive frames, among patch positions whose ground-truth class is the same in both
frames (correspondence from the ground-truth masks: the same position keeping its label is taken to be the same
surface), the fraction whose *predicted* class is also unchanged. 1.0 = no flicker. The other measure,
per-clip minus per-frame clustering mIoU, is computed by the probes stage from the clustering results.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255


def label_stability(predictions: np.ndarray, labels: np.ndarray, ignore_index: int = IGNORE_INDEX) -> float:
    """``predictions`` and ``labels`` ``[T, h, w]`` of one clip -> fraction of stable predictions (NaN if none)."""
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ in shape")
    same_gt = (labels[1:] == labels[:-1]) & (labels[1:] != ignore_index) & (labels[:-1] != ignore_index)
    if not same_gt.any():
        return float("nan")
    kept = predictions[1:] == predictions[:-1]
    return float(kept[same_gt].mean())


def mean_stability(clips: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Pixel-weighted stability over many clips."""
    kept = total = 0
    for pred, lab in clips:
        same_gt = (lab[1:] == lab[:-1]) & (lab[1:] != IGNORE_INDEX) & (lab[:-1] != IGNORE_INDEX)
        kept += int((pred[1:] == pred[:-1])[same_gt].sum())
        total += int(same_gt.sum())
    return kept / total if total else float("nan")
