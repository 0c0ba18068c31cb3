"""Standardise + PCA, fitted once on a whole evaluated split from streamed chunks (TimeT's reference fits
scikit-learn's StandardScaler and a 50-dim faiss PCA once on all features of the evaluated set).

The fit accumulates the sum and the (shifted) second moments of the features chunk by chunk, so memory does not grow
with the split. Standardising then projecting equals projecting onto the eigenvectors of the correlation matrix;
components are sorted by explained variance and their signs fixed (largest-magnitude loading positive), so the
same features always give the same projection. Zero-variance features get scale 1, as in scikit-learn.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class StandardPCA:
    mean: torch.Tensor  # [D]
    scale: torch.Tensor  # [D]
    components: torch.Tensor  # [D, d] (columns)
    explained_variance_ratio: torch.Tensor  # [d]

    @property
    def dim(self) -> int:
        return int(self.components.shape[1])

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """``[..., D] -> [..., d]``: standardise, then project."""
        x = (features.float() - self.mean) / self.scale
        return x @ self.components


class MomentAccumulator:
    """Running count, sum and second moments of ``[N, D]`` chunks (float64 totals, float32 products)."""

    def __init__(self) -> None:
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None

    def add(self, chunk: torch.Tensor | np.ndarray) -> None:
        x = torch.as_tensor(chunk).float()
        if x.numel() == 0:
            return
        if self.shift is None:  # moments about the first chunk's mean: no catastrophic cancellation
            self.shift = x.mean(0)
            self.sum = torch.zeros(x.shape[1], dtype=torch.float64)
            self.outer = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
        x = x - self.shift
        self.count += x.shape[0]
        self.sum += x.sum(0).double()
        self.outer += (x.t() @ x).double()

    def mean_and_covariance(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.count == 0:
            raise ValueError("no features to fit a PCA on")
        m = self.sum / self.count
        cov = self.outer / self.count - torch.outer(m, m)  # population covariance, as StandardScaler uses
        return m + self.shift.double(), cov


def fit_standard_pca(chunks: Iterable[torch.Tensor | np.ndarray], dim: int) -> StandardPCA:
    """Fit the scaler and a ``dim``-component PCA on all rows of ``chunks`` (capped at the rank available)."""
    acc = MomentAccumulator()
    for chunk in chunks:
        acc.add(chunk)
    return pca_from_moments(acc, dim)


def pca_from_moments(acc: MomentAccumulator, dim: int) -> StandardPCA:
    mean, cov = acc.mean_and_covariance()
    var = cov.diagonal().clamp(min=0)
    scale = torch.where(var > 1e-12 * var.max().clamp(min=1e-30), var.sqrt(), torch.ones_like(var))
    corr = cov / torch.outer(scale, scale)
    values, vectors = torch.linalg.eigh(corr)  # ascending
    values, vectors = values.flip(0), vectors.flip(1)
    d = max(1, min(dim, acc.count, cov.shape[0]))
    values, vectors = values[:d].clamp(min=0), vectors[:, :d]
    signs = torch.sign(vectors.gather(0, vectors.abs().argmax(0, keepdim=True)))
    vectors = vectors * torch.where(signs == 0, torch.ones_like(signs), signs)
    total = corr.diagonal().sum().clamp(min=1e-30)
    return StandardPCA(mean.float(), scale.float(), vectors.float().contiguous(), (values / total).float())
