"""Supervised read-outs of frozen dense features: a linear probe and dense nearest-neighbour retrieval.

Linear probe (docs/evaluation.md; TimeT/Leopart's ``LinearFinetune``): a 1x1 convolution (a linear layer on patch
tokens) to the classes, trained with cross-entropy (ignore 255) on logits bilinearly upsampled to square training masks
(``train_size``, 100 in the reference; upsampling logits equals upsampling features before a 1x1 conv), SGD lr 0.01,
momentum 0.9, weight decay 1e-4, x0.1 at ``drop_epoch``. Training streams the features: each epoch is one pass over
the split through a seeded shuffle buffer, so memory does not grow with the split.

Hummingbird retrieval (open-hummingbird-eval): a memory bank of train patch features (a seeded random sample) with
soft patch labels (class fractions of their pixels); each query patch takes the softmax(cos / 0.02)-weighted labels
of its k nearest neighbours (k = 30), found by the reference's ScaNN search or exactly
(:mod:`timetuning.eval.retrieval`); the votes are upsampled and the argmax is the prediction.

Both predict at any output size: the scoring code asks for each frame's stored mask size.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from timetuning.data.labels import IGNORE_INDEX
from timetuning.eval.kmeans import argmin_along
from timetuning.eval.retrieval import BankSearch, ExactSearch
from timetuning.eval.upsampling import bilinear_upsample


class ShuffleBuffers:
    """One shuffle buffer per generator over the same stream of ``(features, masks)`` clips: each time the buffers
    hold ``buffer_size`` frames, each draws a random minibatch (its own generator), and the rest is drawn when the
    stream ends. All buffers fill alike, so their batches come at the same steps with the same sizes.

    A frame is copied once into a slot of two preallocated tensors, shared by every buffer that holds it and freed
    when the last one has drawn it; the lowest free slot is taken first, so the pages in use stay about as many as
    the frames the buffers hold together (~1.8x ``buffer_size`` for three buffers), whatever the stream's length,
    and no clip is kept alive by one of its frames."""

    def __init__(self, batch_size: int, buffer_size: int, generators: Sequence[torch.Generator]):
        self.batch_size, self.buffer_size, self.generators = batch_size, buffer_size, list(generators)
        self.buffers: list[list[int]] = [[] for _ in self.generators]  # slots, in order of arrival
        self.holders: list[int] = []  # per slot: how many buffers hold its frame
        self.free: list[int] = []  # a heap of free slots
        self.feats: torch.Tensor | None = None  # [slots, D, g, g]
        self.masks: torch.Tensor | None = None  # [slots, s, s]

    def _slots(self, n: int, features: torch.Tensor, masks: torch.Tensor) -> list[int]:
        if self.feats is None:
            capacity = len(self.generators) * self.buffer_size + n
            self.feats = torch.empty((capacity, *features.shape[1:]), dtype=features.dtype)
            self.masks = torch.empty((capacity, *masks.shape[1:]), dtype=masks.dtype)
        slots = [heapq.heappop(self.free) for _ in range(min(n, len(self.free)))]
        fresh = n - len(slots)
        slots += range(len(self.holders), len(self.holders) + fresh)
        self.holders += [0] * fresh
        if len(self.holders) > len(self.feats):  # a clip longer than the first: room for it (rare)
            grow = len(self.holders) - len(self.feats)
            self.feats = torch.cat([self.feats, self.feats.new_empty((grow, *self.feats.shape[1:]))])
            self.masks = torch.cat([self.masks, self.masks.new_empty((grow, *self.masks.shape[1:]))])
        return slots

    def _draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        picks = []
        for buffer, generator in zip(self.buffers, self.generators):
            pick = torch.randperm(len(buffer), generator=generator)[:self.batch_size].tolist()
            chosen = set(pick)
            picks.append([buffer[i] for i in pick])
            buffer[:] = [s for i, s in enumerate(buffer) if i not in chosen]
        index = torch.tensor(picks)  # [S, B]
        batch = self.feats[index], self.masks[index]  # copies, so the slots can be reused
        for slot in index.flatten().tolist():
            self.holders[slot] -= 1
            if not self.holders[slot]:
                heapq.heappush(self.free, slot)
        return batch

    def add(self, features: torch.Tensor, masks: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Add one clip (``features [T, D, g, g]``, ``masks [T, s, s]``) and yield the batches now due, each
        ``([S, B, D, g, g], [S, B, s, s])`` with one row per buffer, drawn as they are taken (one batch in memory,
        not all of a full buffer's): take them all before the next call. The clip is in the buffers on return."""
        slots = self._slots(len(features), features, masks)
        index = torch.tensor(slots)
        self.feats[index] = features
        self.masks[index] = masks
        for slot in slots:
            self.holders[slot] = len(self.buffers)
        for buffer in self.buffers:
            buffer.extend(slots)
        return self._drain(self.buffer_size)

    def rest(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches left when the stream ends, drawn as they are taken."""
        return self._drain(1)

    def _drain(self, level: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while len(self.buffers[0]) >= level:
            yield self._draw()


def train_linear_probes(stream: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], dim: int,
                        num_classes: int, *, seeds: Sequence[int] = (0,), epochs: int = 25, lr: float = 0.01,
                        drop_epoch: int = 20, batch_size: int = 16, buffer_size: int = 512,
                        device: str | torch.device = "cpu") -> list[nn.Conv2d]:
    """Fit one 1x1 conv per seed on clips from ``stream()`` (called once per epoch for all seeds): features
    ``[T, D, g, g]`` and square training masks ``[T, s, s]``.

    The probes train side by side as one stacked parameter: probe ``s`` starts from ``nn.Conv2d``'s initialisation
    under ``torch.manual_seed(seeds[s])``, draws its batches through its own shuffle buffer seeded ``seeds[s]`` (all
    buffers fill alike, so their batches come at the same steps with the same sizes) and its loss is its own batch's
    mean cross-entropy: SGD, momentum and weight decay act per element, so each probe takes the steps it would take
    alone, while the split is read once per epoch."""
    convs = []
    for seed in seeds:
        torch.manual_seed(seed)
        convs.append(nn.Conv2d(dim, num_classes, kernel_size=1))
    weight = torch.stack([c.weight.detach().reshape(num_classes, dim) for c in convs]).to(device).requires_grad_()
    bias = torch.stack([c.bias.detach() for c in convs]).to(device).requires_grad_()
    opt = torch.optim.SGD([weight, bias], lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[drop_epoch], gamma=0.1)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x = batch[0].to(device).float()  # [S, B, D, g, g]
        y = batch[1].to(device).long()  # [S, B, s, s]
        low = (weight[:, None] @ x.flatten(3)).unflatten(-1, x.shape[-2:]) + bias[:, None, :, None, None]
        logits = bilinear_upsample(low, y.shape[-2:])
        nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(0, 1), ignore_index=IGNORE_INDEX, reduction="none")
        labeled = (y != IGNORE_INDEX).flatten(1).sum(1)
        loss = (nll.reshape(len(seeds), -1).sum(1) / labeled).sum()  # each probe's mean over its labeled pixels
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(epochs):
        buffers = ShuffleBuffers(batch_size, buffer_size, generators)
        for f, m in stream():
            for batch in buffers.add(f, m):
                step(batch)
        for batch in buffers.rest():
            step(batch)
        sched.step()
    probes = []
    for s, conv in enumerate(convs):
        conv.weight.data = weight[s].detach().cpu().reshape(num_classes, dim, 1, 1).clone()
        conv.bias.data = bias[s].detach().cpu().clone()
        probes.append(conv)
    return probes


def train_linear_probe(stream: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], dim: int,
                       num_classes: int, *, seed: int = 0, **kwargs) -> nn.Conv2d:
    """One probe (:func:`train_linear_probes` with one seed)."""
    return train_linear_probes(stream, dim, num_classes, seeds=[seed], **kwargs)[0]


@torch.no_grad()
def predict_linear_probe(probe: nn.Conv2d, features: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Classes ``[T, h, w]`` of ``features [T, D, g, g]`` at output ``size``."""
    return upsampled_argmax(probe(features.float()), size)


class MemoryBank:
    """A seeded random sample of at most ``size`` train patches (those with a labeled pixel) and their soft labels.

    ``total`` is the number of patches the stream will offer, so the sample is chosen up front and one pass
    fills it, in place: the bank is allocated once (no list of pieces to concatenate at the end)."""

    def __init__(self, total: int, size: int, seed: int):
        rng = np.random.default_rng(seed)
        self.chosen = np.sort(rng.choice(total, size, replace=False)) if size < total else np.arange(total)
        self.offset = 0
        self.filled = 0
        self.features: torch.Tensor | None = None  # [len(chosen), D], rows [:filled] in use
        self.labels: torch.Tensor | None = None  # [len(chosen), C]

    def add(self, features: torch.Tensor, soft_labels: np.ndarray) -> None:
        """One clip: ``features [T, D, g, g]``, ``soft_labels [T, g, g, C]``."""
        n = soft_labels.shape[0] * soft_labels.shape[1] * soft_labels.shape[2]
        lo, hi = np.searchsorted(self.chosen, [self.offset, self.offset + n])
        local = self.chosen[lo:hi] - self.offset
        self.offset += n
        labels = torch.from_numpy(soft_labels.reshape(n, -1)[local])
        keep = labels.sum(1) > 0
        x = features.permute(0, 2, 3, 1).reshape(n, -1)[torch.from_numpy(local)][keep]
        if self.features is None:
            self.features = torch.empty(len(self.chosen), x.shape[1])
            self.labels = torch.empty(len(self.chosen), labels.shape[1])
        rows = slice(self.filled, self.filled + len(x))
        self.features[rows] = F.normalize(x.float(), dim=1)
        self.labels[rows] = labels[keep].float()
        self.filled += len(x)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.filled:
            raise ValueError("retrieval: no labeled train patch for the memory bank")
        return self.features[:self.filled], self.labels[:self.filled]


@torch.no_grad()
def retrieval_votes(bank: torch.Tensor, bank_labels: torch.Tensor, features: torch.Tensor, *, k: int = 30,
                    temperature: float = 0.02, search: BankSearch | None = None) -> torch.Tensor:
    """Soft class votes ``[T, C, g, g]`` of the query patches ``features [T, D, g, g]`` from their k nearest
    (cosine) bank patches, weighted by softmax(similarity / temperature). ``search`` finds the neighbours
    (:mod:`timetuning.eval.retrieval`; default: exact search of ``bank``)."""
    t, d, gh, gw = features.shape
    q = F.normalize(features.permute(0, 2, 3, 1).reshape(-1, d).float(), dim=1)
    k = min(k, bank.shape[0])
    top, idx = (search or ExactSearch(bank)).search(q, k)
    weights = torch.softmax(top.to(bank_labels.device) / temperature, dim=1)
    votes = torch.einsum("qk,qkc->qc", weights, bank_labels[idx.to(bank_labels.device)])
    return votes.reshape(t, gh, gw, -1).permute(0, 3, 1, 2)


def upsampled_argmax(scores: torch.Tensor, size: tuple[int, int], block: int = 8) -> np.ndarray:
    """Classes ``[T, h, w]``: ``scores [T, C, g, g]`` bilinearly upsampled to ``size``, then the argmax (the first
    of equal ones), ``block`` frames at a time."""
    out = np.empty((scores.shape[0], *size), np.uint8)
    for start in range(0, scores.shape[0], block):
        up = F.interpolate(scores[start:start + block], size=size, mode="bilinear", align_corners=False)
        out[start:start + block] = argmin_along(up.neg_(), 1).numpy()
    return out
