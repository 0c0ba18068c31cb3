"""Ground-truth masks seen from the patch grid: the majority label of each patch and each patch's class fractions.

Masks hold class ids with ``IGNORE_INDEX`` (255) for pixels that are not scored.
"""

from __future__ import annotations

import numpy as np

from timetuning.data.labels import IGNORE_INDEX


def patch_labels(masks: np.ndarray, grid: tuple[int, int], num_classes: int,
                 ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Majority label per patch: masks ``[T, H, W]`` (H, W divisible by the grid) -> ``[T, gh, gw]``; a patch whose
    pixels are mostly ignored is ``ignore_index``."""
    t, h, w = masks.shape
    gh, gw = grid
    if h % gh or w % gw:
        raise ValueError(f"mask size {h}x{w} is not divisible into a {gh}x{gw} grid")
    blocks = masks.reshape(t, gh, h // gh, gw, w // gw).transpose(0, 1, 3, 2, 4).reshape(t * gh * gw, -1)
    codes = np.where(blocks == ignore_index, num_classes, blocks).astype(np.int64)
    index = np.arange(codes.shape[0])[:, None] * (num_classes + 1) + codes
    counts = np.bincount(index.reshape(-1), minlength=codes.shape[0] * (num_classes + 1))
    label = counts.reshape(codes.shape[0], num_classes + 1).argmax(1)
    label[label == num_classes] = ignore_index
    return label.reshape(t, gh, gw).astype(np.int16)


def soft_patch_labels(masks: np.ndarray, grid: int, num_classes: int,
                      ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Fraction of each class's pixels per patch: masks ``[F, S, S]`` -> ``[F, grid, grid, C]`` (ignore dropped;
    a patch with no scored pixel is all zeros)."""
    f, s, _ = masks.shape
    cell = s // grid
    onehot = np.zeros((f, s, s, num_classes), np.float32)
    valid = masks != ignore_index
    idx = np.where(valid, masks, 0).astype(np.int64)
    np.put_along_axis(onehot, idx[..., None], valid[..., None].astype(np.float32), axis=-1)
    pooled = onehot[:, : grid * cell, : grid * cell].reshape(f, grid, cell, grid, cell, num_classes).sum((2, 4))
    total = pooled.sum(-1, keepdims=True)
    return np.divide(pooled, total, out=np.zeros_like(pooled), where=total > 0)
