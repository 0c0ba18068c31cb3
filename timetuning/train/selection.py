"""Which step is exported: the best validation, where the starting weights win only when strictly
better than every trained step, and the warning when they do."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from timetuning.models.backbones import DenseBackbone

log = logging.getLogger(__name__)


@dataclass
class BestValidation:
    """The best validation so far: its mIoU and step (-1: none yet)."""

    miou: float = -1.0
    step: int = -1


def beats(miou: float, step: int, best: BestValidation) -> bool:
    """Whether validation mIoU ``miou`` at ``step`` becomes the exported candidate. The starting weights (step 0) win
    only when strictly better than every trained step: a trained step takes over on a tie."""
    if best.step < 0:
        return True
    if best.step == 0 and step > 0:
        return miou >= best.miou
    return miou > best.miou


def selection_warning(best_step: int, steps: int) -> str | None:
    if best_step != 0:
        return None
    return (f"no trained step beat the starting weights on validation: the exported model IS the starting backbone "
            f"(best step 0 of {steps}); time-tuning did not improve it on the validation clips")


def trainable_weights(backbone: DenseBackbone) -> dict[str, torch.Tensor]:
    """The backbone's trainable tensors (the rest never changes): with the starting weights, a whole backbone."""
    return {k: v.detach().clone() for k, v in backbone.model.named_parameters() if v.requires_grad}
