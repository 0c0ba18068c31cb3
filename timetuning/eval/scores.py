"""Per-video statistics of an evaluation protocol, from which its value follows for any weighting of the videos.

Every metric is a function of statistics kept per video and per seed: the point estimate weights each video once;
a bootstrap resample (:mod:`timetuning.eval.bootstrap`) weights each video by how often it was drawn. Three kinds:

- :class:`GroupScores`: a score per group (a frame or a clip) averaged over groups (per-frame / per-clip clustering);
- :class:`ConfusionScores`: a confusion matrix per video, summed, then matched and turned into mIoU (per-dataset
  clustering and overclustering: classes x clusters with Hungarian or many-to-one matching; linear probe and
  retrieval: classes x classes);
- :class:`RatioScores`: a (numerator, denominator) pair per video, summed (temporal stability).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from timetuning.eval.metrics import fold_confusion, mean_iou, per_class_iou


def _weights(weights: np.ndarray | None, videos: int) -> np.ndarray:
    return np.ones(videos) if weights is None else np.asarray(weights, dtype=np.float64)


@dataclass
class GroupScores:
    video: np.ndarray  # [G] video index of each group
    miou: np.ndarray  # [S, G] per seed; NaN for a group without scored pixels

    def per_seed(self, weights: np.ndarray | None = None) -> np.ndarray:
        videos = int(self.video.max()) + 1 if self.video.size else 0
        return self.resampled(_weights(weights, videos)[None])[0]

    def resampled(self, weights: np.ndarray) -> np.ndarray:
        """``[B, S]`` values for ``B`` video weightings ``[B, V]``."""
        w = weights[:, self.video]  # [B, G]
        scored = ~np.isnan(self.miou)  # [S, G]
        total = w @ scored.T
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (w @ np.nan_to_num(self.miou).T) / total, np.nan)


@dataclass
class ConfusionScores:
    confusion: np.ndarray  # [S, V, C, K] per seed and video: classes x predicted ids
    matching: str  # "hungarian" | "greedy" | "none" (predictions are classes already)

    def _match(self, conf: np.ndarray) -> np.ndarray:
        return fold_confusion(conf, self.matching)[0]

    def folded(self) -> list[np.ndarray]:
        """Per seed: the ``[C, C]`` confusion of the point estimate after matching."""
        return [self._match(c) for c in self.confusion.sum(1)]

    def per_seed(self, weights: np.ndarray | None = None) -> np.ndarray:
        return self.resampled(_weights(weights, self.confusion.shape[1])[None])[0]

    def resampled(self, weights: np.ndarray) -> np.ndarray:
        """``[B, S]`` values for ``B`` video weightings ``[B, V]`` (one matrix product, then a match each)."""
        s, v, c, k = self.confusion.shape
        summed = (weights @ self.confusion.transpose(1, 0, 2, 3).reshape(v, -1)).reshape(-1, s, c, k)
        return np.array([[mean_iou(self._match(conf)) for conf in row] for row in summed])

    def per_class(self) -> np.ndarray:
        """Per-class IoU of the point estimate, mean over seeds (NaN where a class never appears)."""
        with np.errstate(invalid="ignore"):
            return np.nanmean(np.stack([per_class_iou(c) for c in self.folded()]), axis=0)


@dataclass
class RatioScores:
    counts: np.ndarray  # [S, V, 2] per seed and video: (numerator, denominator)

    def per_seed(self, weights: np.ndarray | None = None) -> np.ndarray:
        return self.resampled(_weights(weights, self.counts.shape[1])[None])[0]

    def resampled(self, weights: np.ndarray) -> np.ndarray:
        """``[B, S]`` values for ``B`` video weightings ``[B, V]``."""
        num = weights @ self.counts[..., 0].T
        den = weights @ self.counts[..., 1].T
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / den, np.nan)


@dataclass
class DifferenceScores:
    """One protocol minus another on the same videos (e.g. per-clip minus per-frame clustering)."""

    first: GroupScores | ConfusionScores | RatioScores
    second: GroupScores | ConfusionScores | RatioScores

    def per_seed(self, weights: np.ndarray | None = None) -> np.ndarray:
        return self.first.per_seed(weights) - self.second.per_seed(weights)

    def resampled(self, weights: np.ndarray) -> np.ndarray:
        return self.first.resampled(weights) - self.second.resampled(weights)


Scores = GroupScores | ConfusionScores | RatioScores | DifferenceScores


def summary(scores: Scores) -> dict:
    """Mean and standard deviation over seeds (and the per-seed values) of the point estimate."""
    values = scores.per_seed()
    out = {"mean": float(np.nanmean(values)) if np.isfinite(values).any() else None,
           "std": float(np.nanstd(values)) if np.isfinite(values).any() else None,
           "per_seed": [None if np.isnan(v) else float(v) for v in values]}
    if isinstance(scores, ConfusionScores):
        out["per_class_iou"] = [None if np.isnan(v) else float(v) for v in scores.per_class()]
        out["confusion"] = np.sum(scores.folded(), axis=0).astype(np.int64).tolist()  # summed over seeds
    return out
