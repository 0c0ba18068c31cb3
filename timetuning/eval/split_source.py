"""One split of one labeled set as one model saw it: its features file and the set's shards, read together
one chunk of clips at a time (the memory of every protocol is bounded by a chunk, not by the split).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path

import torch
from tqdm import tqdm

from timetuning.data.eval_shards import EvalClip, iter_eval_clips
from timetuning.eval.feature_store import STREAM_ROWS, FeatureClip, FeatureSpool

CHUNK_FRAMES = 16  # frames of features (and their masks) in memory at a time: bounds the peak memory (a 64-frame
# chunk of per-frame k-means problems on 384-dim features took ~850 MiB; 16 frames ~250 MiB, and it is no slower)


@dataclass
class SplitSource:
    """One split of one set as one model saw it: its features file and the set's shards (for the masks). The
    features are decoded once, into a :class:`~timetuning.eval.feature_store.FeatureSpool` that every pass reads."""

    features: Path
    set_dir: Path
    split: str
    videos: list[str] = field(default_factory=list)  # video ids in order of first appearance
    clip_video: list[int] = field(default_factory=list)  # video index of each clip
    clip_frames: list[int] = field(default_factory=list)  # frames of each clip
    batch_rows: int = STREAM_ROWS  # Parquet rows read at a time
    on_clip: Callable[[], None] | None = field(default=None, repr=False)  # told of every clip read (progress)

    def __post_init__(self) -> None:
        self.spool = FeatureSpool(self.features, self.batch_rows)
        self.info = self.spool.info
        index: dict[str, int] = {}
        for _, video_id, _, frames in self.spool.clips:
            self.clip_video.append(index.setdefault(video_id, len(index)))
            self.clip_frames.append(frames)
        self.videos = list(index)

    def feature_clips(self) -> Iterator[FeatureClip]:
        """The features of every clip, in order (from the spool: no Parquet decoding after the first)."""
        return iter(self.spool)

    def close(self) -> None:
        self.spool.close()

    @property
    def num_frames(self) -> int:
        return int(sum(self.clip_frames))

    @property
    def has_time(self) -> bool:
        """Whether any clip has more than one frame (image sets have none)."""
        return max(self.clip_frames, default=1) > 1

    def clips(self, frames: bool = False) -> Iterator[tuple[FeatureClip, EvalClip]]:
        """Features and masks of every clip, in order, checked to belong together."""
        pairs = zip_longest(self.feature_clips(), iter_eval_clips(self.set_dir, self.split, frames=frames))
        for feats, clip in pairs:
            self.check(feats, getattr(clip, "clip_id", None), getattr(clip, "num_frames", 0))
            yield feats, clip

    def check(self, feats: FeatureClip | None, clip_id: str | None, frames: int) -> None:
        """Raise unless ``feats`` are the features of the shards' clip ``clip_id`` of ``frames`` frames (a stale
        extraction, or one of another set or split)."""
        if feats is None or clip_id is None or (feats.clip_id, feats.features.shape[0]) != (clip_id, frames):
            raise ValueError(f"{self.features} does not match the shards of {self.set_dir}/{self.split} "
                             f"(clip {getattr(feats, 'clip_id', None)} vs {clip_id}): rerun extract_features")
        if self.on_clip is not None:  # every protocol checks each clip it reads: where a progress line counts them
            self.on_clip()

    def chunks(self, desc: str, frames: bool = False) -> Iterator[list[tuple[int, FeatureClip, EvalClip]]]:
        """Consecutive clips (with their clip index) of about ``CHUNK_FRAMES`` frames."""
        chunk: list[tuple[int, FeatureClip, EvalClip]] = []
        bar = tqdm(total=len(self.clip_frames), desc=desc, unit="clip", leave=False)
        for i, (feats, clip) in enumerate(self.clips(frames)):
            chunk.append((i, feats, clip))
            if sum(c.num_frames for _, _, c in chunk) >= CHUNK_FRAMES:
                bar.update(len(chunk))
                yield chunk
                chunk = []
        if chunk:
            bar.update(len(chunk))
            yield chunk
        bar.close()


def compute_device() -> torch.device:
    """Where the linear probe trains and the retrieval searches: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
