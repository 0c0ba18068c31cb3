"""Supervised read-outs of frozen dense features: a linear probe and dense nearest-neighbour retrieval.

Linear probe (METHOD.md): a 1x1 convolution (a linear layer on patch tokens) to the classes, logits bilinearly
upsampled to the mask resolution, cross-entropy with ignore 255; SGD lr 0.01, momentum 0.9, weight decay 1e-4,
x0.1 at ``drop_epoch``. Hummingbird retrieval: a memory bank of train patch features with soft patch labels; each
query patch takes softmax(cos / 0.02)-weighted labels of its k nearest neighbours, upsampled, argmax.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from timetuning.metrics import IGNORE_INDEX, confusion_matrix


def soft_patch_labels(masks: np.ndarray, grid: int, num_classes: int) -> np.ndarray:
    """Fraction of each class's pixels per patch: masks ``[F, S, S]`` -> ``[F, grid, grid, C]`` (ignore dropped)."""
    f, s, _ = masks.shape
    cell = s // grid
    onehot = np.zeros((f, s, s, num_classes), np.float32)
    valid = masks != IGNORE_INDEX
    idx = np.where(valid, masks, 0).astype(np.int64)
    np.put_along_axis(onehot, idx[..., None], valid[..., None].astype(np.float32), axis=-1)
    pooled = onehot[:, : grid * cell, : grid * cell].reshape(f, grid, cell, grid, cell, num_classes).sum((2, 4))
    total = pooled.sum(-1, keepdims=True)
    return np.divide(pooled, total, out=np.zeros_like(pooled), where=total > 0)


def train_linear_probe(features: torch.Tensor, masks: torch.Tensor, num_classes: int, *, epochs: int = 25,
                       lr: float = 0.01, drop_epoch: int = 20, batch_size: int = 16, seed: int = 0) -> nn.Conv2d:
    """Fit a 1x1 conv on ``features [F, D, g, g]`` against ``masks [F, S, S]`` (upsampled logits, ignore 255)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = nn.Conv2d(features.shape[1], num_classes, kernel_size=1)
    opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[drop_epoch], gamma=0.1)
    x_all = features.float()
    for _ in range(epochs):
        order = torch.randperm(x_all.shape[0], generator=g)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            logits = F.interpolate(probe(x_all[idx]), size=masks.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, masks[idx].long(), ignore_index=IGNORE_INDEX)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return probe


@torch.no_grad()
def predict_linear_probe(probe: nn.Conv2d, features: torch.Tensor, size: tuple[int, int],
                         batch_size: int = 32) -> np.ndarray:
    out = []
    for i in range(0, features.shape[0], batch_size):
        logits = F.interpolate(probe(features[i:i + batch_size].float()), size=size, mode="bilinear",
                               align_corners=False)
        out.append(logits.argmax(1).numpy().astype(np.uint8))
    return np.concatenate(out)


@torch.no_grad()
def hummingbird_predict(bank_features: np.ndarray, bank_labels: np.ndarray, query: np.ndarray, grid: int,
                        size: int, *, k: int = 30, temperature: float = 0.02, chunk: int = 2048) -> np.ndarray:
    """Dense NN retrieval: ``bank [M, D]`` with soft labels ``[M, C]``; ``query [F*g*g, D]`` -> pixel classes."""
    bank = F.normalize(torch.from_numpy(bank_features).float(), dim=1)
    labels = torch.from_numpy(bank_labels).float()
    q = F.normalize(torch.from_numpy(query).float(), dim=1)
    k = min(k, bank.shape[0])
    votes = []
    for i in range(0, q.shape[0], chunk):
        sim = q[i:i + chunk] @ bank.t()
        top, idx = sim.topk(k, dim=1)
        weights = torch.softmax(top / temperature, dim=1)
        votes.append((weights.unsqueeze(-1) * labels[idx]).sum(1))
    v = torch.cat(votes)  # [F*g*g, C]
    frames = v.shape[0] // (grid * grid)
    v = v.reshape(frames, grid, grid, -1).permute(0, 3, 1, 2)
    up = F.interpolate(v, size=(size, size), mode="bilinear", align_corners=False)
    return up.argmax(1).numpy().astype(np.uint8)


def pixel_confusion(pred: np.ndarray, masks: np.ndarray, num_classes: int) -> np.ndarray:
    """``[C, C]`` confusion of class predictions against masks (ignore 255)."""
    return confusion_matrix(pred, masks, num_classes, num_classes)
