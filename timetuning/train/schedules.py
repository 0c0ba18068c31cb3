"""Per-iteration cosine schedules for learning rate and weight decay."""

from __future__ import annotations

import math


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Value at ``step`` of a cosine from ``start`` (step 0) to ``end`` (step ``total``)."""
    if total <= 0:
        return end
    progress = min(max(step / total, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))
