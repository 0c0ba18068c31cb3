"""How patch grids map to pixels: nearest-neighbour resizing of label maps (masks, cluster maps) and bilinear
sampling of feature or score maps at chosen pixels, both with PyTorch's ``interpolate`` conventions
(``mode="nearest"``; ``mode="bilinear", align_corners=False``), so a sampled pixel equals the pixel of the full
upsampled map without building it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source index of each of ``dst`` output positions (``floor(i * src / dst)``, PyTorch's nearest)."""
    return np.minimum((np.arange(dst) * src) // dst, src - 1)


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of label maps ``[..., H, W]`` to ``size = (h, w)``."""
    h, w = labels.shape[-2:]
    rows, cols = nearest_indices(h, size[0]), nearest_indices(w, size[1])
    return labels[..., rows, :][..., cols]


def bilinear_weights(src: int, dst: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For output ``positions`` along one axis: the two source indices and the weight of the second."""
    scale = src / dst
    real = ((positions.double() + 0.5) * scale - 0.5).clamp(min=0)
    low = real.floor().long().clamp(max=src - 1)
    high = (low + 1).clamp(max=src - 1)
    return low, high, (real - low.double()).float()


def bilinear_sample(maps: torch.Tensor, frames: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
                    size: tuple[int, int]) -> torch.Tensor:
    """Values ``[P, C]`` of ``maps [F, C, g_h, g_w]`` bilinearly upsampled to ``size``, at pixels
    ``(frames[p], ys[p], xs[p])``: identical to ``F.interpolate(maps, size, mode="bilinear")[frames, :, ys, xs]``."""
    f, c, gh, gw = maps.shape
    y0, y1, wy = bilinear_weights(gh, size[0], ys)
    x0, x1, wx = bilinear_weights(gw, size[1], xs)
    flat = maps.permute(0, 2, 3, 1).reshape(-1, c)
    base = frames.long() * (gh * gw)

    def at(y, x):
        return flat.index_select(0, base + y * gw + x)

    top = torch.lerp(at(y0, x0), at(y0, x1), wx[:, None])
    bottom = torch.lerp(at(y1, x0), at(y1, x1), wx[:, None])
    return torch.lerp(top, bottom, wy[:, None])


@lru_cache(maxsize=64)
def bilinear_matrix(src: int, dst: int) -> torch.Tensor:
    """``[dst, src]`` matrix of bilinear upsampling along one axis (``align_corners=False``): row ``i`` holds the
    two weights of output position ``i``."""
    low, high, w = bilinear_weights(src, dst, torch.arange(dst))
    m = torch.zeros(dst, src)
    rows = torch.arange(dst)
    m.index_put_((rows, low), 1 - w, accumulate=True)
    m.index_put_((rows, high), w, accumulate=True)
    return m


def bilinear_upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[..., g_h, g_w] -> [..., h, w]``: ``F.interpolate(mode="bilinear", align_corners=False)`` as two small
    matrix products (separable weights), which also back-propagate several times faster on CPU."""
    rows = bilinear_matrix(maps.shape[-2], size[0]).to(maps)
    cols = bilinear_matrix(maps.shape[-1], size[1]).to(maps)
    return rows @ maps @ cols.t()
