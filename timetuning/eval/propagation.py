"""Semi-supervised video object segmentation by label propagation with frozen dense features (J&F protocol).

The standard benchmark for dense video features (DINO, CRW, STC), here as in DINO's DAVIS-2017 evaluation
(facebookresearch/dino ``eval_video_segmentation.py``): the first frame's instance mask is given; it is brought to
the patch grid by nearest neighbour and one-hot encoded; every later frame's soft labels are a weighted average of
the soft labels of a context -- the first frame plus the ``context_frames`` most recent predicted frames -- where each
target patch keeps its ``topk`` most similar source patches (cosine of L2-normalised features, jointly over all
context frames, only sources within ``window_radius`` rows and columns), weighted by ``exp(cosine / temperature)``
normalised to sum 1. That is exactly one step of the Feature-Forwarder (``timetuning/method/forwarder.py``), with
one-hot instance labels in place of Sinkhorn cluster assignments, so the method's own machinery does the propagation.
Predictions are upsampled to the mask resolution (bilinear, then DINO's per-object min-max rescaling), and the
argmax gives the instance id. Scores: :mod:`timetuning.eval.vos_metrics`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from timetuning.eval.vos_metrics import ObjectScore, VosSummary, object_ids, score_clip, scores_by_video, summarize
from timetuning.infra.config import PropagationParams
from timetuning.method.forwarder import propagate_assignments


def first_frame_labels(first_mask: np.ndarray, grid: tuple[int, int],
                       device: torch.device | None = None) -> tuple[torch.Tensor, list[int]]:
    """One-hot patch labels ``[K, h, w]`` of the first frame and the instance id of each channel (0 first).

    The mask goes to the patch grid by nearest neighbour (DINO: PIL ``NEAREST``, which is torch's
    ``nearest-exact``); a void (255) patch gets no label at all, so it carries nothing forward. An object too small
    to cover a sampled pixel keeps an all-zero channel and is never predicted (as in DINO).
    """
    mask = torch.as_tensor(np.asarray(first_mask).astype(np.int64), device=device)
    small = F.interpolate(mask[None, None].float(), size=tuple(grid), mode="nearest-exact")[0, 0].long()
    ids = [0, *object_ids(np.asarray(first_mask))]
    return torch.stack([small == i for i in ids]).float(), ids


def propagate_labels(features: torch.Tensor, first_labels: torch.Tensor,
                     params: PropagationParams | None = None) -> torch.Tensor:
    """Soft patch labels of every frame ``[T, K, h, w]`` (frame 0 = ``first_labels``) from features ``[T, D, h, w]``.

    The Feature-Forwarder keeps frame 0 and the latest ``context_frames`` frames.
    """
    p = params or PropagationParams()
    return propagate_assignments(features[None].float(), first_labels[None].float(), temperature=p.temperature,
                                 topk=p.topk, window_radius=p.window_radius, context_frames=p.context_frames)[0]


def labels_to_mask(soft: torch.Tensor, ids: list[int], size: tuple[int, int],
                   params: PropagationParams | None = None) -> np.ndarray:
    """Instance mask ``[H, W]`` from soft patch labels ``[K, h, w]``: upsample, (rescale), argmax, map to ids."""
    p = params or PropagationParams()
    if p.upsampling == "bilinear":
        up = F.interpolate(soft[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
    else:
        up = F.interpolate(soft[None], size=tuple(size), mode="nearest-exact")[0]
    if p.rescale_per_object:  # DINO's norm_mask: each object's map to [0, 1] (a constant map is left alone)
        low = up.amin(dim=(1, 2), keepdim=True)
        high = up.amax(dim=(1, 2), keepdim=True)
        stretch = (high > 0) & (high > low)
        up = torch.where(stretch, (up - low) / torch.where(stretch, high - low, 1.0), up)
    channel = up.max(dim=0).indices.cpu().numpy()  # first maximum: a tie goes to the background; ~10x argmax(0)
    return np.asarray(ids)[channel]


@torch.no_grad()
def propagate_masks(features: torch.Tensor | np.ndarray, first_mask: np.ndarray,
                    params: PropagationParams | None = None) -> np.ndarray:
    """Instance masks ``[T, H, W]`` of a clip from its features ``[T, D, h, w]`` and its first frame's mask ``[H, W]``.

    Frame 0 of the result is ``first_mask`` itself; the others hold ids from ``first_mask`` (0 = background).
    The masks must show the same field of view as the feature grid (any resolution, any aspect of the grid).
    """
    features = torch.as_tensor(features)
    first_mask = np.asarray(first_mask)
    if features.ndim != 4 or features.shape[0] < 1:
        raise ValueError(f"features must be [T, D, h, w] with T >= 1, got shape {tuple(features.shape)}")
    if first_mask.ndim != 2:
        raise ValueError(f"first_mask must be [H, W], got shape {first_mask.shape}")
    labels, ids = first_frame_labels(first_mask, features.shape[-2:], features.device)
    soft = propagate_labels(features, labels, params)
    out = np.empty((features.shape[0], *first_mask.shape), dtype=np.result_type(first_mask.dtype, np.uint8))
    out[0] = first_mask
    for t in range(1, features.shape[0]):
        out[t] = labels_to_mask(soft[t], ids, first_mask.shape, params)
    return out


class LabeledClip(NamedTuple):
    """One clip to propagate through: its video, features ``[T, D, h, w]`` and instance masks ``[T, H, W]``."""

    video: str
    features: torch.Tensor | np.ndarray
    masks: np.ndarray


@dataclass
class PropagationExample:
    """A propagated clip kept for pictures: ground truth and prediction, both ``[T, H, W]`` instance ids."""

    video: str
    clip: int
    masks: np.ndarray
    predicted: np.ndarray


@dataclass
class PropagationResult:
    """J&F over all objects, the per-object scores (for a bootstrap over videos) and example predictions."""

    summary: VosSummary
    objects: list[ObjectScore]
    examples: list[PropagationExample] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # clips not scored, with the reason

    def by_video(self) -> dict[str, list[ObjectScore]]:
        return scores_by_video(self.objects)


def evaluate_propagation(clips: Iterable[LabeledClip | tuple], params: PropagationParams | None = None, *,
                         num_examples: int = 3, device: str | torch.device | None = None) -> PropagationResult:
    """The propagation protocol: propagate each clip's first-frame mask, score J and F as DAVIS-2017 does.

    Each clip is one propagation from its own first frame (several clips of one video score separately, numbered
    in input order). A clip whose first frame has no object is skipped and listed. The examples are the first
    clip of each of the first ``num_examples`` videos.
    """
    p = params or PropagationParams()
    objects: list[ObjectScore] = []
    examples: list[PropagationExample] = []
    skipped: list[str] = []
    clip_counts: dict[str, int] = {}
    for video, features, masks in clips:
        clip = clip_counts.get(video, 0)
        clip_counts[video] = clip + 1
        masks = np.asarray(masks)
        name = f"video {video!r} clip {clip}"
        if masks.ndim != 3 or np.ndim(features) != 4 or masks.shape[0] != features.shape[0]:
            raise ValueError(f"{name}: features {tuple(features.shape)} and masks {masks.shape} must be "
                             f"[T, D, h, w] and [T, H, W] with the same T")
        if not object_ids(masks[0]):
            skipped.append(f"{name}: no object in the first frame")
            continue
        feats = torch.as_tensor(features)
        predicted = propagate_masks(feats.to(device) if device is not None else feats, masks[0], p)
        objects += score_clip(masks, predicted, video, clip, score_last_frame=p.score_last_frame)
        if clip == 0 and len(examples) < num_examples:
            examples.append(PropagationExample(video, clip, masks, predicted))
    return PropagationResult(summary=summarize(objects), objects=objects, examples=examples, skipped=skipped)

