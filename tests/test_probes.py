import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from timetuning.eval.masks import soft_patch_labels
from timetuning.eval.metrics import confusion_matrix, mean_iou
from timetuning.eval.probes import (
    MemoryBank,
    ShuffleBuffers,
    predict_linear_probe,
    retrieval_votes,
    train_linear_probe,
    train_linear_probes,
    upsampled_argmax,
)


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


def _plain_shuffle(clips, generator, batch_size, buffer_size):
    """Brute-force reference of one shuffle buffer: a list of frames; whenever it holds ``buffer_size`` frames a
    random batch (``randperm`` of the list, its first ``batch_size``) leaves it, and at the end the rest does."""
    frames, batches = [], []

    def draw():
        pick = torch.randperm(len(frames), generator=generator)[:batch_size].tolist()
        batches.append((torch.stack([frames[i][0] for i in pick]), torch.stack([frames[i][1] for i in pick])))
        frames[:] = [fr for i, fr in enumerate(frames) if i not in pick]

    for f, m in clips:
        frames.extend(zip(f, m))
        while len(frames) >= buffer_size:
            draw()
    while frames:
        draw()
    return batches


def test_shuffle_buffers_draw_what_one_plain_buffer_per_seed_draws_and_reuse_their_slots():
    rng = np.random.default_rng(0)
    lengths = [3] * 20 + [9] + [1, 2, 5] * 30  # a clip longer than the first, so the store must grow once
    clips = [(torch.from_numpy(rng.normal(size=(t, 2, 3, 3)).astype(np.float32)),
              torch.from_numpy(rng.integers(0, 255, (t, 4, 4)).astype(np.uint8))) for t in lengths]
    seeds, batch_size, buffer_size = [5, 6, 7], 4, 16
    buffers = ShuffleBuffers(batch_size, buffer_size, [torch.Generator().manual_seed(s) for s in seeds])
    drawn = [b for f, m in clips for b in buffers.add(f, m)] + list(buffers.rest())
    for s, seed in enumerate(seeds):
        plain = _plain_shuffle(clips, torch.Generator().manual_seed(seed), batch_size, buffer_size)
        assert len(plain) == len(drawn)
        for (x, y), (px, py) in zip(drawn, plain):
            torch.testing.assert_close(x[s], px, rtol=0, atol=0)
            torch.testing.assert_close(y[s], py, rtol=0, atol=0)
    # of 309 frames: slots are reused, the store did not grow with the stream
    assert len(buffers.holders) <= len(seeds) * buffer_size + 9
    assert sorted(buffers.free) == list(range(len(buffers.holders)))  # every frame drawn by every buffer, freed


def _probe_alone(clips, dim, classes, seed, epochs, lr, drop_epoch, batch_size, buffer_size):
    """Brute-force reference: one probe, the textbook way (conv, F.interpolate, mean cross-entropy, SGD)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = nn.Conv2d(dim, classes, kernel_size=1)
    opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[drop_epoch], gamma=0.1)
    for _ in range(epochs):
        for x, y in _plain_shuffle(clips, generator, batch_size, buffer_size):
            logits = F.interpolate(probe(x.float()), size=y.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, y.long(), ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return probe


def test_probes_trained_side_by_side_take_the_steps_each_takes_alone():
    feats, masks, _ = _separable(frames=14, seed=3)
    masks[:, :2, :] = 255
    clips = [(feats[i:i + 4], torch.from_numpy(masks[i:i + 4])) for i in range(0, 14, 4)]
    args = dict(epochs=4, lr=0.05, drop_epoch=2, batch_size=3, buffer_size=5)
    together = train_linear_probes(lambda: iter(clips), 8, 3, seeds=[3, 11], **args)
    for seed, probe in zip([3, 11], together):
        alone = _probe_alone(clips, 8, 3, seed, **args)
        torch.testing.assert_close(probe.weight, alone.weight, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(probe.bias, alone.bias, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(together[0].weight, together[1].weight)


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
