"""Clip samplers (docs/method.md): which frame indices of a video form each training clip.

Every video gets its own random stream derived from (seed, video id), so the clips of a video do not depend on
which worker decodes it or in which order videos are processed.
"""

from __future__ import annotations

import zlib

import numpy as np


def video_rng(seed: int, video_id: str) -> np.random.Generator:
    """A random generator private to one video: same seed + id -> same clips, whatever the worker count."""
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(video_id.encode("utf-8"))])


def min_frames_needed(sampler: str, frames_per_clip: int, stride: int) -> int:
    """The fewest decoded frames a video needs to yield one clip."""
    if sampler == "uniform":
        return frames_per_clip
    if sampler == "dense":
        return (frames_per_clip - 1) * stride + 1
    raise ValueError(f"unknown sampler {sampler!r} (expected 'uniform' or 'dense')")


def sample_uniform(num_frames: int, frames_per_clip: int, rng: np.random.Generator) -> np.ndarray:
    """``frames_per_clip`` distinct frames drawn over the whole video, sorted in time."""
    return np.sort(rng.choice(num_frames, size=frames_per_clip, replace=False))


def sample_dense(num_frames: int, frames_per_clip: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """``frames_per_clip`` frames ``stride`` apart, starting at a random frame."""
    span = (frames_per_clip - 1) * stride
    start = int(rng.integers(0, num_frames - span))
    return start + stride * np.arange(frames_per_clip)


def sample_clips(num_frames: int, *, sampler: str, frames_per_clip: int, stride: int, clips_per_video: int,
                 rng: np.random.Generator) -> list[np.ndarray]:
    """Frame indices of ``clips_per_video`` clips; empty when the video is shorter than one clip."""
    if num_frames < min_frames_needed(sampler, frames_per_clip, stride):
        return []
    if sampler == "uniform":
        return [sample_uniform(num_frames, frames_per_clip, rng) for _ in range(clips_per_video)]
    return [sample_dense(num_frames, frames_per_clip, stride, rng) for _ in range(clips_per_video)]
