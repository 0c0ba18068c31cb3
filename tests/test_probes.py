import numpy as np
import torch

from timetuning.metrics import mean_iou
from timetuning.probes import (hummingbird_predict, pixel_confusion, predict_linear_probe, soft_patch_labels,
                               train_linear_probe)


def _separable(frames=12, grid=4, size=16, dim=8, seed=0):
    """Features whose first channels encode the patch class: a linear read-out exists."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, (frames, grid, grid))
    feats = rng.normal(0, 0.1, (frames, dim, grid, grid)).astype(np.float32)
    for c in range(3):
        feats[:, c][labels == c] += 3.0
    cell = size // grid
    masks = np.repeat(np.repeat(labels, cell, 1), cell, 2).astype(np.uint8)
    return torch.from_numpy(feats), masks, labels


def test_linear_probe_learns_a_separable_problem():
    feats, masks, _ = _separable()
    masks[:, 0, :] = 255  # ignored pixels must not matter
    probe = train_linear_probe(feats, torch.from_numpy(masks), 3, epochs=15, lr=0.05, drop_epoch=12)
    pred = predict_linear_probe(probe, feats, masks.shape[-2:])
    assert mean_iou(pixel_confusion(pred, masks, 3)) > 0.85


def test_hummingbird_retrieves_labels_of_nearest_patches():
    feats, masks, labels = _separable()
    bank = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).numpy()
    soft = soft_patch_labels(masks, 4, 3).reshape(-1, 3)
    np.testing.assert_allclose(soft.sum(1), 1.0)
    pred = hummingbird_predict(bank[:96], soft[:96], bank[96:], grid=4, size=16, k=5)
    assert mean_iou(pixel_confusion(pred, masks[6:], 3)) > 0.9


def test_soft_labels_fractions_and_ignore():
    masks = np.array([[[0, 1], [255, 1]]], np.uint8)
    soft = soft_patch_labels(masks, 1, 2)
    np.testing.assert_allclose(soft[0, 0, 0], [1 / 3, 2 / 3])

