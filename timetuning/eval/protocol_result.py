"""What every evaluation protocol returns, and what one model's evaluation is: the merge of them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from timetuning.eval.scores import Scores


@dataclass
class ProtocolResult:
    """Per-video statistics under TimeT's protocol (``scores``: protocol -> statistics) and under each robustness
    variant (``variant_scores``: variant -> protocol -> statistics), example predictions for the report's pictures
    (``"<kind>/<clip index>"`` -> maps), facts worth reporting, and the protocols that do not apply (with why)."""

    scores: dict[str, Scores] = field(default_factory=dict)
    variant_scores: dict[str, dict[str, Scores]] = field(default_factory=dict)
    examples: dict[str, np.ndarray] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)

    def merge(self, other: ProtocolResult) -> ProtocolResult:
        """Both results in one (``other`` wins where both name the same protocol, example or fact)."""
        variants = {v: dict(s) for v, s in self.variant_scores.items()}
        for variant, scores in other.variant_scores.items():
            variants.setdefault(variant, {}).update(scores)
        return ProtocolResult({**self.scores, **other.scores}, variants, {**self.examples, **other.examples},
                              {**self.facts, **other.facts}, {**self.not_applicable, **other.not_applicable})
