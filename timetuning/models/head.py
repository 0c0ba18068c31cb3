"""Projection head and learned prototypes of the spatio-temporal clustering objective."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ProjectionHead(nn.Module):
    """Linear(D,1024)-GELU-Linear(1024,1024)-GELU-Linear(1024,512)-GELU-Linear(512,256) on patch tokens."""

    def __init__(self, in_dim: int, hidden_dim: int = 1024, bottleneck_dim: int = 512, out_dim: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim), nn.GELU(),
            nn.Linear(bottleneck_dim, out_dim),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp(tokens)


class Prototypes(nn.Module):
    """``K`` learned unit vectors; scores are cosine similarities to them."""

    def __init__(self, num_prototypes: int, dim: int, generator: torch.Generator | None = None):
        super().__init__()
        weight = torch.randn(num_prototypes, dim, generator=generator)
        self.weight = nn.Parameter(F.normalize(weight, dim=1))

    @torch.no_grad()
    def renormalize(self) -> None:
        """Project back onto the unit sphere (after every optimiser step)."""
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarities ``[..., K]`` of embeddings ``[..., E]`` (normalised here) to the prototypes."""
        return F.normalize(embeddings, dim=-1) @ F.normalize(self.weight, dim=1).t()


class ClusteringHead(nn.Module):
    """Head + prototypes: dense features ``[B, D, h, w]`` -> prototype scores ``[B, h*w, K]``."""

    def __init__(self, in_dim: int, num_prototypes: int = 200, hidden_dim: int = 1024, bottleneck_dim: int = 512,
                 out_dim: int = 256, generator: torch.Generator | None = None):
        super().__init__()
        self.projection = ProjectionHead(in_dim, hidden_dim, bottleneck_dim, out_dim)
        self.prototypes = Prototypes(num_prototypes, out_dim, generator)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """L2-normalised projections ``[B, h*w, E]`` of dense features ``[B, D, h, w]`` (what a queue keeps: they
        can be scored again against later prototypes)."""
        return F.normalize(self.projection(features.flatten(2).transpose(1, 2)), dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.prototypes(self.embed(features))
