"""Model selection during training: held-out clips that evaluation never scores, and their clustering mIoU.

What may select the exported step is ``train.val_split`` of the labeled set ``train.val_set``; the params schema
already refuses the split that evaluation scores for that set. Before training starts, :func:`validation_data`
also checks by video ID, wherever IDs exist, that

- no validation video appears in a split that evaluation scores (of any evaluation set already sharded), and
- no training video appears in such a split either,

and refuses otherwise, naming both sides. Training video IDs are the file stems (or frame-folder names) recorded
by ``shard_videos``; evaluation video IDs are the sequence names (DAVIS) or video ids (YouTube-VOS).

The validation clips are ``train.val_clips`` clips spread over the videos of the split (one clip of each video in
turn; when there are more videos than clips, videos evenly spaced in sorted order), fixed for the whole run.
Their score is the per-clip clustering mIoU of the backbone's dense features under the evaluation's protocol (TimeT's:
scaler+PCA fitted on these clips, K = classes present per clip, upsampled features clustered per pixel).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from timetuning.data.eval_shards import read_labels
from timetuning.data.shard_index import SampleRef, index_shards, read_sample
from timetuning.data.shards import clip_frames, decode_image, decode_mask, list_shards, sanitize_key
from timetuning.eval.clustering import KMeansSettings, clip_clustering_miou
from timetuning.eval.propagation import propagate_masks
from timetuning.eval.upsampling import resize_nearest
from timetuning.eval.vos_metrics import object_ids, score_clip, summarize
from timetuning.infra.config import Params, PropagationParams
from timetuning.method.loss import ForwarderSettings
from timetuning.models.backbones import DenseBackbone, dense_features

log = logging.getLogger(__name__)


class DataLeakError(ValueError):
    """Selection or training data overlaps data that evaluation scores; the message names both sides."""


@dataclass
class ValidationData:
    """The fixed validation clips of a run."""

    set_name: str
    split: str
    set_dir: Path
    num_classes: int
    clips: list[SampleRef]
    videos: list[str]

    def describe(self) -> dict[str, Any]:
        return {"val_set": self.set_name, "val_split": self.split, "val_clips": len(self.clips),
                "val_videos": len(set(self.videos))}


def clips_by_video(set_dir: str | Path, split: str) -> dict[str, list[SampleRef]]:
    """The clips of one split grouped by video id (clips in shard order), from the samples' JSON only."""
    shards = list_shards(set_dir, split)
    if not shards:
        raise FileNotFoundError(f"{set_dir}: no {split}-*.tar shards (run the shard_eval stage)")
    groups: dict[str, list[SampleRef]] = {}
    for ref in index_shards(shards):
        video = str(read_sample(ref, ["json"])["json"]["video_id"])
        groups.setdefault(video, []).append(ref)
    return groups


def spread_over_videos(groups: dict[str, list[SampleRef]], count: int) -> list[SampleRef]:
    """``count`` clips: round r takes clip r of every video that has one; the last, partial round takes videos
    evenly spaced over the sorted list, so a small budget still covers the whole split."""
    videos = sorted(groups)
    chosen: list[SampleRef] = []
    round_index = 0
    while len(chosen) < count:
        candidates = [v for v in videos if len(groups[v]) > round_index]
        if not candidates:
            break
        room = count - len(chosen)
        if room < len(candidates):
            picks = np.unique(np.linspace(0, len(candidates) - 1, room).round().astype(int))
            candidates = [candidates[i] for i in picks]
        chosen += [groups[v][round_index] for v in candidates]
        round_index += 1
    return chosen


def training_video_ids(shard_dir: str | Path) -> set[str]:
    """Video IDs (file stems / frame-folder names) of the training shards, from their manifest."""
    path = Path(shard_dir) / "manifest.json"
    if not path.is_file():
        return set()
    manifest = json.loads(path.read_text())
    return {sanitize_key(v) for v in manifest.get("video_names", [])}


def _overlap_message(a: str, b: str, shared: set[str]) -> str:
    listed = ", ".join(sorted(shared)[:5]) + (" ..." if len(shared) > 5 else "")
    return f"{a} and {b} share {len(shared)} video(s): {listed}"


def validation_data(params: Params) -> ValidationData | None:
    """The run's validation clips, after checking that neither they nor the training videos are ever scored.

    ``None`` when validation is off (``train.val_set: null``) or its shards do not exist yet (logged).
    Raises :class:`DataLeakError` on any overlap with a scored split.
    """
    p, eval_params = params.train, params.shard_eval
    out = Path(eval_params.output_dir)
    scored: dict[str, set[str]] = {}
    for name, eval_set in eval_params.sets.items():
        split = eval_set.scored_split
        if list_shards(out / name, split):
            scored[f"shard_eval.sets.{name} split {split!r} (scored by evaluation)"] = {
                sanitize_key(v) for v in clips_by_video(out / name, split)}
        else:
            log.info("no shards of %s/%s yet: its videos are not checked against training", name, split)
    train_ids = training_video_ids(p.shards)
    for where, ids in scored.items():
        if shared := train_ids & ids:
            raise DataLeakError(_overlap_message(f"the training videos (train.shards {p.shards})", where, shared)
                                + ". Time-tune on other videos (shard_videos.video_list) or score other ones.")
    if p.val_set is None:
        return None
    set_dir = out / p.val_set
    if not list_shards(set_dir, p.val_split):
        log.warning("validation skipped: no %s-*.tar shards in %s (run shard_eval); the last step is exported",
                    p.val_split, set_dir)
        return None
    groups = clips_by_video(set_dir, p.val_split)
    val_ids = {sanitize_key(v) for v in groups}
    for where, ids in scored.items():
        if shared := val_ids & ids:
            raise DataLeakError(_overlap_message(f"the validation split (train.val_set {p.val_set!r}, val_split "
                                                 f"{p.val_split!r})", where, shared)
                                + ". Select on videos that evaluation never scores.")
    clips = spread_over_videos(groups, p.val_clips)
    video_of = {ref: video for video, refs in groups.items() for ref in refs}
    videos = [video_of[ref] for ref in clips]
    return ValidationData(p.val_set, p.val_split, set_dir, len(read_labels(set_dir)["classes"]), clips, videos)


@dataclass(frozen=True)
class ValidationScores:
    """What one validation measures on the selection clips (fractions in [0, 1]).

    ``miou`` selects the exported step; the others tell why it moves: ``forwarder_jf`` is the J&F of each clip's
    last frame when the Feature-Forwarder (the training's constants) carries the first frame's ground truth with
    the current features, i.e. whether the correspondences behind the targets still hold; ``feature_cosine`` is
    the mean cosine between the current and the starting backbone's features, patch by patch (1 = unmoved).
    """

    miou: float
    forwarder_jf: float
    feature_cosine: float


@torch.no_grad()
def clip_features(backbone: DenseBackbone, data: ValidationData, input_size: int,
                  device: torch.device) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """The backbone's features ``[T, D, g, g]`` of every validation clip and its class masks ``[T, S, S]`` at the
    features' evaluation size ``S = input_size``."""
    was_training = backbone.training
    backbone.eval()
    feats, masks = [], []
    for ref in data.clips:
        sample = read_sample(ref)
        names = clip_frames(sample)
        frames = np.stack([decode_image(sample[n]) for n in names])
        feats.append(dense_features(backbone, frames, input_size, device=device))
        clip_masks = np.stack([decode_mask(sample[n.replace(".jpg", ".png")]) for n in names])
        masks.append(resize_nearest(clip_masks, (input_size, input_size)))
    backbone.train(was_training)
    return feats, masks


def forwarder_jf(features: list[torch.Tensor], masks: list[np.ndarray], forwarder: ForwarderSettings) -> float:
    """J&F of the last frame of every clip whose first frame shows a class: its mask propagated from the first
    frame's by the Feature-Forwarder (bilinear upsampling, no rescaling), scored as DAVIS scores an object."""
    settings = PropagationParams(topk=forwarder.topk, window_radius=forwarder.window_radius,
                                 context_frames=forwarder.context_frames, temperature=forwarder.temperature,
                                 upsampling="bilinear", rescale_per_object=False, score_last_frame=True)
    objects = []
    for i, (clip_feats, clip_masks) in enumerate(zip(features, masks)):
        if not object_ids(clip_masks[0]):
            continue
        predicted = propagate_masks(clip_feats, clip_masks[0], settings)
        ends = [0, clip_masks.shape[0] - 1]
        objects += score_clip(clip_masks[ends], predicted[ends], str(i), score_last_frame=True)
    return summarize(objects).jf_mean if objects else float("nan")


def feature_cosine(features: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """Mean over every patch of the cosine between ``features`` and ``reference`` (lists of ``[T, D, h, w]``)."""
    cosines = [torch.nn.functional.cosine_similarity(f, r, dim=1).flatten() for f, r in zip(features, reference)]
    return float(torch.cat(cosines).mean())


def validate(backbone: DenseBackbone, data: ValidationData, input_size: int, device: torch.device,
             forwarder: ForwarderSettings = ForwarderSettings(), reference: list[torch.Tensor] | None = None,
             seed: int = 0) -> tuple[ValidationScores, list[torch.Tensor]]:
    """The scores of the backbone on the validation clips and its features there.

    ``miou`` is the per-clip clustering mIoU under the evaluation's protocol; ``reference`` are the starting
    backbone's features (None: these are, and their cosine is 1).
    """
    feats, masks = clip_features(backbone, data, input_size, device)
    miou = clip_clustering_miou(feats, masks, data.num_classes, seed=seed, settings=KMeansSettings(restarts=3))
    cosine = 1.0 if reference is None else feature_cosine(feats, reference)
    return ValidationScores(miou, forwarder_jf(feats, masks, forwarder), cosine), feats
