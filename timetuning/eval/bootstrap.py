"""Confidence for a difference between two models: a paired bootstrap over videos.

Frames of one video are not independent evidence, so the unit resampled is the video (an image of an image set is
its own video): each resample draws as many videos as the split has, with replacement, and both models are scored on
the same draw (paired). The interval is the percentile interval of the resampled differences of the seed-averaged
metric. Per-dataset protocols are re-matched on every resample (the clusters stay as fitted).
"""

from __future__ import annotations

import numpy as np

from timetuning.eval.scores import Scores


def resample_weights(videos: int, samples: int, seed: int) -> np.ndarray:
    """``[samples, videos]``: how often each video is drawn in each resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(videos, np.full(videos, 1.0 / videos), size=samples).astype(np.float64)


def _seed_mean(values: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.where(np.isfinite(values), values, np.nan), axis=-1)


def paired_delta(baseline: Scores, tuned: Scores, weights: np.ndarray, confidence: float = 0.95) -> dict:
    """``tuned - baseline`` (seed means), its bootstrap interval over the video weightings ``weights [B, V]``, and
    the standard deviation over seeds of the per-seed difference."""
    base_seeds, tuned_seeds = baseline.per_seed(), tuned.per_seed()
    point = float(_seed_mean(tuned_seeds) - _seed_mean(base_seeds))
    diffs = _seed_mean(tuned.resampled(weights)) - _seed_mean(baseline.resampled(weights))
    diffs = diffs[np.isfinite(diffs)]
    alpha = (1.0 - confidence) / 2
    low, high = (np.quantile(diffs, [alpha, 1 - alpha]) if diffs.size else (np.nan, np.nan))
    n = min(len(base_seeds), len(tuned_seeds))
    seed_diff = tuned_seeds[:n] - base_seeds[:n]
    return {"delta": point, "ci_low": float(low), "ci_high": float(high), "confidence": confidence,
            "samples": int(weights.shape[0]),
            "seed_std": float(np.nanstd(seed_diff)) if np.isfinite(seed_diff).any() else None}
