"""Two models on one set: the delta of every protocol with its bootstrap interval, the same delta under each
protocol variant, and a verdict in words that says "robust" only when it is.

A delta is *robust* when its interval excludes zero and every protocol variant gives a delta of the same sign.
Otherwise the verdict names what is missing: the interval includes zero, or which variant disagrees.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from timetuning.eval.bootstrap import paired_delta, resample_weights
from timetuning.eval.scores import Scores


def verdict(main: dict[str, Any], variants: dict[str, dict[str, Any]], scale: float = 100.0,
            unit: str = " points") -> dict[str, Any]:
    """The verdict on one delta (``tuned - baseline``) given its interval and its values under the variants."""
    delta, low, high = main["delta"], main["ci_low"], main["ci_high"]
    sign = int(np.sign(delta)) if np.isfinite(delta) else 0
    excludes_zero = bool(np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0))
    disagree = sorted(name for name, d in variants.items() if int(np.sign(d["delta"])) != sign)
    robust = sign != 0 and excludes_zero and not disagree
    level = round(100 * main.get("confidence", 0.95))
    figure = f"{scale * delta:+.1f}{unit} ({level}% interval {scale * low:+.1f} to {scale * high:+.1f})"
    direction = "helps" if sign > 0 else "hurts" if sign < 0 else "does not change"
    if robust:
        agree = f"all {len(variants)} protocol variants agree in sign" if variants else "no protocol variant applies"
        text = f"time-tuning {direction}: {figure}; robust: the interval excludes zero and {agree}"
    else:
        reasons = []
        if not excludes_zero:
            reasons.append("the interval includes zero")
        if disagree:
            reasons.append("disagreeing variant(s): " + ", ".join(
                f"{name} {scale * variants[name]['delta']:+.1f}" for name in disagree))
        text = f"not robust: {figure} under TimeT's protocol, but " + "; ".join(reasons)
    return {"robust": robust, "direction": direction if robust else "inconclusive", "excludes_zero": excludes_zero,
            "disagreeing_variants": disagree, "text": text}


def compare_models(baseline: dict[str, Scores], tuned: dict[str, Scores],
                   baseline_variants: dict[str, dict[str, Scores]], tuned_variants: dict[str, dict[str, Scores]],
                   videos: int, *, samples: int, confidence: float, seed: int) -> dict[str, Any]:
    """Deltas with intervals for every protocol both models have, their robustness under the variants that
    recompute them, and verdicts. One set of video resamples serves every delta (paired across models)."""
    weights = resample_weights(videos, samples, seed)
    deltas = {name: paired_delta(baseline[name], tuned[name], weights, confidence)
              for name in baseline if name in tuned}
    robustness: dict[str, dict[str, Any]] = {}
    for variant, scores in baseline_variants.items():
        for name, base in scores.items():
            if name in tuned_variants.get(variant, {}) and name in deltas:
                robustness.setdefault(name, {})[variant] = paired_delta(base, tuned_variants[variant][name],
                                                                        weights, confidence)
    verdicts = {}
    for name, main in deltas.items():
        # every score is a fraction (mIoU, J&F, the share of stable patches): the text speaks in points of 100
        verdicts[name] = verdict(main, robustness.get(name, {}))
    return {"deltas": deltas, "robustness": robustness, "verdicts": verdicts, "bootstrap": {
        "unit": "video", "samples": samples, "confidence": confidence, "seed": seed, "videos": videos}}
