"""Cost of the label-propagation protocol (propagation + DAVIS J&F scoring) at DAVIS-val size.

    .venv/bin/python benchmarks/propagation.py [--videos 30] [--frames 67] [--grid 14 14] [--mask 224 224]
                                               [--dim 384] [--objects 3] [--device cpu]

Synthetic clips: a random circular feature scene moving one patch per frame with feature noise, and the matching
instance masks (``--objects`` rectangles). Prints, per frame, the seconds of propagation (features -> masks at the
mask resolution) and of scoring (J and F of every object), the totals, and J&F as a sanity check. DAVIS-2017 val is
30 videos, 1,999 frames; DINO's setting is ``--grid 30 53 --mask 480 854`` (ViT-S/16 at 480p).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timetuning.eval.propagation import propagate_masks  # noqa: E402
from timetuning.eval.vos_metrics import score_clip, summarize  # noqa: E402
from timetuning.infra.config import PropagationParams  # noqa: E402


def synthetic_clip(rng: np.random.Generator, frames: int, grid: tuple[int, int], mask: tuple[int, int], dim: int,
                   objects: int) -> tuple[torch.Tensor, np.ndarray]:
    h, w = grid
    scene = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((dim, h, w), np.float32)), dim=0)
    feats = torch.stack([torch.roll(scene, t, dims=2) for t in range(frames)])
    feats += 0.3 * torch.from_numpy(rng.standard_normal(feats.shape, np.float32)) / dim ** 0.5
    ids = np.zeros(mask, np.uint8)
    for k in range(objects):
        y0, x0 = rng.integers(0, mask[0] // 2), rng.integers(0, mask[1] // 2)
        ids[y0: y0 + mask[0] // 3, x0: x0 + mask[1] // 4] = k + 1
    step = mask[1] / w  # one patch of the scene, in pixels
    masks = np.stack([np.roll(ids, int(round(t * step)), axis=1) for t in range(frames)])
    return feats.half(), masks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=30)
    ap.add_argument("--frames", type=int, default=67)
    ap.add_argument("--grid", type=int, nargs=2, default=(14, 14))
    ap.add_argument("--mask", type=int, nargs=2, default=(224, 224))
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--objects", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    params = PropagationParams()
    propagate_s = score_s = 0.0
    objects = []
    for v in range(args.videos):
        feats, masks = synthetic_clip(rng, args.frames, tuple(args.grid), tuple(args.mask), args.dim, args.objects)
        start = time.perf_counter()
        predicted = propagate_masks(feats.to(args.device), masks[0], params)
        mid = time.perf_counter()
        objects += score_clip(masks, predicted, f"v{v}")
        propagate_s += mid - start
        score_s += time.perf_counter() - mid
    frames = args.videos * args.frames
    summary = summarize(objects)
    print(f"{args.videos} videos x {args.frames} frames = {frames} frames; grid {args.grid[0]}x{args.grid[1]} x "
          f"{args.dim}, masks {args.mask[0]}x{args.mask[1]}, {args.objects} objects, {args.device}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"propagation: {propagate_s:.1f} s ({1e3 * propagate_s / frames:.1f} ms/frame)")
    print(f"scoring:     {score_s:.1f} s ({1e3 * score_s / frames:.1f} ms/frame)")
    print(f"J&F {summary.jf_mean:.3f}  J {summary.j_mean:.3f}  F {summary.f_mean:.3f}")


if __name__ == "__main__":
    main()
