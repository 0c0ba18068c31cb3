"""Clip-consistent augmentation (docs/method.md): one crop box, flip and photometric draw per clip, all frames alike.

Geometry: short side to ``resize``, RandomResizedCrop to ``size`` (scale 0.4-1, ratio 3/4-4/3) with the same box
for every frame, horizontal flip p=0.5. Photometric, drawn once per clip: ColorJitter(0.8, 0.8, 0.8, 0.2) with
p=0.8 (all four operations, random order), grayscale p=0.2, Gaussian blur p=0.5 (sigma 0.1-2), then the backbone's
mean/std normalisation. Contrast and saturation take one pass each (saturation as a 3x3 colour matrix) and equal
torchvision's to float precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class ClipAugmentation:
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: tuple[float, float] = (0.4, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def crop_box(self, height: int, width: int, g: torch.Generator) -> tuple[int, int, int, int]:
        """A RandomResizedCrop box (top, left, h, w), drawn from ``g``."""
        area = height * width
        for _ in range(10):
            target = area * _uniform(g, *self.scale)
            aspect = math.exp(_uniform(g, math.log(self.ratio[0]), math.log(self.ratio[1])))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=g))
                left = int(torch.randint(0, width - w + 1, (1,), generator=g))
                return top, left, h, w
        side = min(height, width)  # fallback: centre crop
        return (height - side) // 2, (width - side) // 2, side, side

    def __call__(self, frames: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """``frames`` uint8 ``[T, 3, H, W]`` -> normalised float ``[T, 3, size, size]``."""
        _, _, height, width = frames.shape
        top, left, h, w = self.crop_box(height, width, g)
        x = TF.resized_crop(frames, top, left, h, w, [self.size, self.size], antialias=True)
        if _uniform(g) < self.flip_p:
            x = TF.horizontal_flip(x)
        x = x.float() / 255.0
        if _uniform(g) < self.jitter_p:
            x = self._jitter(x, g)
        if _uniform(g) < self.grayscale_p:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if _uniform(g) < self.blur_p:
            x = separable_gaussian_blur(x, _uniform(g, *self.blur_sigma))
        return TF.normalize(x.clamp(0, 1), list(self.mean), list(self.std))

    def _jitter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, c, s, hue = self.jitter
        ops = [
            lambda y: y * _uniform(g, max(0, 1 - b), 1 + b),
            lambda y: adjust_contrast(y, _uniform(g, max(0, 1 - c), 1 + c)),
            lambda y: apply_color_matrix(y, saturation_matrix(_uniform(g, max(0, 1 - s), 1 + s))),
            lambda y: TF.adjust_hue(y, _uniform(g, -hue, hue)),
        ]
        for i in torch.randperm(4, generator=g).tolist():  # all four, in a random order
            x = ops[i](x).clamp(0, 1)
        return x


GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def adjust_contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend each frame ``[N, 3, H, W]`` with its mean grey level (torchvision's adjust_contrast, one pass)."""
    w = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype)
    mean = (x.mean(dim=(-2, -1)) @ w)[:, None, None, None]
    return x * factor + mean * (1 - factor)


def saturation_matrix(factor: float) -> torch.Tensor:
    """3x3 RGB matrix blending each pixel with its grey value (torchvision's adjust_saturation)."""
    grey = torch.tensor(GRAY_WEIGHTS, dtype=torch.float64).expand(3, 3)
    return (factor * torch.eye(3, dtype=torch.float64) + (1 - factor) * grey).float()


def apply_color_matrix(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``matrix @ rgb`` for every pixel of ``[N, 3, H, W]``."""
    return (matrix.to(x.dtype) @ x.flatten(2)).view_as(x)


def separable_gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``[N, C, H, W]`` as two 1-D passes (kernel radius 3 sigma, reflect padding).

    Same result as a 2-D Gaussian kernel at a fraction of the cost (2k instead of k^2 products per pixel).
    """
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = torch.nn.functional.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = torch.nn.functional.conv2d(y, k.view(1, 1, 1, -1))
    y = torch.nn.functional.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def _uniform(g: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def eval_transform(frames: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 ``[T, 3, H, W]`` -> normalised float ``[T, 3, size, size]`` (squashed to a square, as for masks)."""
    x = TF.resize(frames, [size, size], antialias=True).float() / 255.0
    return TF.normalize(x, list(mean), list(std))
