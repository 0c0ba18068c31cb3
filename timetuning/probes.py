"""Supervised read-outs of frozen dense features: a linear probe and dense nearest-neighbour retrieval.

Linear probe (METHOD.md; TimeT/Leopart's ``LinearFinetune``): a 1x1 convolution (a linear layer on patch tokens) to
the classes, trained with cross-entropy (ignore 255) on logits bilinearly upsampled to square training masks
(``train_size``, 100 in the reference; upsampling logits equals upsampling features before a 1x1 conv), SGD lr 0.01,
momentum 0.9, weight decay 1e-4, x0.1 at ``drop_epoch``. Training streams the features: each epoch is one pass over
the split through a seeded shuffle buffer, so memory does not grow with the split.

Hummingbird retrieval (open-hummingbird-eval): a memory bank of train patch features (a seeded random sample) with
soft patch labels (class fractions of their pixels); each query patch takes the softmax(cos / 0.02)-weighted labels
of its k nearest neighbours (k = 30); the votes are upsampled and the argmax is the prediction.

Both predict at any output size: the scoring code asks for each frame's stored mask size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from timetuning.metrics import IGNORE_INDEX


def _shuffled_batches(stream: Iterable[tuple[torch.Tensor, torch.Tensor]], batch_size: int, buffer_size: int,
                      generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches of frames drawn at random from a buffer filled by a stream of ``(features, masks)`` clips."""
    feats: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []

    def draw(n: int):
        pick = torch.randperm(len(feats), generator=generator)[:n].tolist()
        keep = sorted(set(range(len(feats))) - set(pick))
        batch = torch.stack([feats[i] for i in pick]), torch.stack([masks[i] for i in pick])
        feats[:], masks[:] = [feats[i] for i in keep], [masks[i] for i in keep]
        return batch

    for f, m in stream:
        feats.extend(f.unbind(0))
        masks.extend(m.unbind(0))
        while len(feats) >= buffer_size:
            yield draw(batch_size)
    while feats:
        yield draw(batch_size)


def train_linear_probe(stream: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], dim: int,
                       num_classes: int, *, epochs: int = 25, lr: float = 0.01, drop_epoch: int = 20,
                       batch_size: int = 16, buffer_size: int = 512, seed: int = 0,
                       device: str | torch.device = "cpu") -> nn.Conv2d:
    """Fit a 1x1 conv on clips from ``stream()`` (called once per epoch): features ``[T, D, g, g]`` and square
    training masks ``[T, s, s]``."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = nn.Conv2d(dim, num_classes, kernel_size=1).to(device)
    opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[drop_epoch], gamma=0.1)
    for _ in range(epochs):
        for x, y in _shuffled_batches(stream(), batch_size, buffer_size, generator):
            logits = F.interpolate(probe(x.to(device).float()), size=y.shape[-2:], mode="bilinear",
                                   align_corners=False)
            loss = F.cross_entropy(logits, y.to(device).long(), ignore_index=IGNORE_INDEX)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return probe.cpu()


@torch.no_grad()
def predict_linear_probe(probe: nn.Conv2d, features: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Classes ``[T, h, w]`` of ``features [T, D, g, g]`` at output ``size``."""
    logits = F.interpolate(probe(features.float()), size=size, mode="bilinear", align_corners=False)
    return logits.argmax(1).numpy().astype(np.uint8)


class MemoryBank:
    """A seeded random sample of at most ``size`` train patches (those with a labeled pixel) and their soft labels.

    ``total`` is the number of patches the stream will offer, so the sample is chosen up front and one pass
    fills it."""

    def __init__(self, total: int, size: int, seed: int):
        rng = np.random.default_rng(seed)
        self.chosen = np.sort(rng.choice(total, size, replace=False)) if size < total else np.arange(total)
        self.offset = 0
        self.features: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def add(self, features: torch.Tensor, soft_labels: np.ndarray) -> None:
        """One clip: ``features [T, D, g, g]``, ``soft_labels [T, g, g, C]``."""
        n = soft_labels.shape[0] * soft_labels.shape[1] * soft_labels.shape[2]
        lo, hi = np.searchsorted(self.chosen, [self.offset, self.offset + n])
        local = self.chosen[lo:hi] - self.offset
        self.offset += n
        labels = torch.from_numpy(soft_labels.reshape(n, -1)[local])
        keep = labels.sum(1) > 0
        x = features.permute(0, 2, 3, 1).reshape(n, -1)[torch.from_numpy(local)]
        self.features.append(F.normalize(x[keep].float(), dim=1))
        self.labels.append(labels[keep])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.features or sum(len(f) for f in self.features) == 0:
            raise ValueError("retrieval: no labeled train patch for the memory bank")
        return torch.cat(self.features), torch.cat(self.labels).float()


@torch.no_grad()
def retrieval_votes(bank: torch.Tensor, bank_labels: torch.Tensor, features: torch.Tensor, *, k: int = 30,
                    temperature: float = 0.02, chunk: int = 1024) -> torch.Tensor:
    """Soft class votes ``[T, C, g, g]`` of the query patches ``features [T, D, g, g]`` from their k nearest
    (cosine) bank patches, weighted by softmax(similarity / temperature)."""
    t, d, gh, gw = features.shape
    q = F.normalize(features.permute(0, 2, 3, 1).reshape(-1, d).float(), dim=1)
    k = min(k, bank.shape[0])
    votes = []
    for i in range(0, q.shape[0], chunk):
        top, idx = (q[i:i + chunk] @ bank.t()).topk(k, dim=1)
        weights = torch.softmax(top / temperature, dim=1)
        votes.append(torch.einsum("qk,qkc->qc", weights, bank_labels[idx]))
    return torch.cat(votes).reshape(t, gh, gw, -1).permute(0, 3, 1, 2)


def upsampled_argmax(scores: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Classes ``[T, h, w]``: ``scores [T, C, g, g]`` bilinearly upsampled to ``size``, then the argmax."""
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False).argmax(1).numpy().astype(np.uint8)
