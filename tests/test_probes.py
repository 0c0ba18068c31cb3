import numpy as np
import torch

from timetuning.masks import soft_patch_labels
from timetuning.metrics import confusion_matrix, mean_iou
from timetuning.probes import MemoryBank, predict_linear_probe, retrieval_votes, train_linear_probe, upsampled_argmax


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


def test_linear_probe_learns_from_a_stream_and_predicts_at_any_size():
    feats, masks, labels = _separable()
    masks[:, 0, :] = 255  # ignored pixels must not matter
    clips = [(feats[i:i + 3], torch.from_numpy(masks[i:i + 3])) for i in range(0, 12, 3)]
    probe = train_linear_probe(lambda: iter(clips), 8, 3, epochs=15, lr=0.05, drop_epoch=12, buffer_size=5)
    pred = predict_linear_probe(probe, feats, masks.shape[-2:])
    assert mean_iou(confusion_matrix(pred, masks, 3, 3)) > 0.85
    wide = predict_linear_probe(probe, feats, (8, 24))  # another aspect ratio: the stored mask size of a frame
    assert wide.shape == (12, 8, 24)


def test_retrieval_votes_with_the_labels_of_the_nearest_bank_patches():
    feats, masks, labels = _separable()
    soft = soft_patch_labels(masks, 4, 3)
    np.testing.assert_allclose(soft.sum(-1), 1.0)
    bank = MemoryBank(total=6 * 16, size=10_000, seed=0)  # the whole of frames 0-5
    bank.add(feats[:6], soft[:6])
    features, bank_labels = bank.tensors()
    assert features.shape == (96, 8)
    votes = retrieval_votes(features, bank_labels, feats[6:], k=5)
    pred = upsampled_argmax(votes, (16, 16))
    assert mean_iou(confusion_matrix(pred, masks[6:], 3, 3)) > 0.9


def test_memory_bank_samples_chosen_patches_across_clips():
    feats, masks, _ = _separable()
    soft = soft_patch_labels(masks, 4, 3)
    bank = MemoryBank(total=12 * 16, size=20, seed=3)
    for i in range(0, 12, 4):  # three clips
        bank.add(feats[i:i + 4], soft[i:i + 4])
    features, labels = bank.tensors()
    assert features.shape == (20, 8) and labels.shape == (20, 3)
    flat = torch.nn.functional.normalize(feats.permute(0, 2, 3, 1).reshape(-1, 8), dim=1)
    torch.testing.assert_close(features, flat[torch.from_numpy(bank.chosen)])


def test_soft_labels_fractions_and_ignore():
    masks = np.array([[[0, 1], [255, 1]]], np.uint8)
    soft = soft_patch_labels(masks, 1, 2)
    np.testing.assert_allclose(soft[0, 0, 0], [1 / 3, 2 / 3])
