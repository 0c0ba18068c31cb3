"""Clip samplers (docs/method.md): which frame indices of a video form each training clip.

Every video gets its own random stream derived from (seed, video id), so the clips of a video do not depend on
which worker decodes it or in which order videos are processed.
"""

from __future__ import annotations

import math
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


def window_frames(max_clip_seconds: float | None, fps: float, frames_per_clip: int) -> int | None:
    """Frames in a uniform clip's window: the most whose first and last lie at most ``max_clip_seconds`` apart at
    ``fps`` (never fewer than one clip); None when unbounded."""
    if max_clip_seconds is None:
        return None
    return max(frames_per_clip, math.floor(max_clip_seconds * fps + 1e-9) + 1)


def clip_windows(num_frames: int, window: int | None) -> list[int]:
    """First frames of the windows uniform clips are drawn from: one window (the whole video) when it fits, else
    ``ceil(num_frames / window)`` windows of ``window`` frames, the first at frame 0, the last ending on the last
    frame, the others evenly between (they overlap where the video is not a whole number of windows)."""
    if window is None or num_frames <= window:
        return [0]
    count = math.ceil(num_frames / window)
    return [i * (num_frames - window) // (count - 1) for i in range(count)]


def sample_clips(num_frames: int, *, sampler: str, frames_per_clip: int, stride: int, clips_per_video: int,
                 rng: np.random.Generator, window: int | None = None) -> list[np.ndarray]:
    """Frame indices of ``clips_per_video`` clips; empty when the video is shorter than one clip.

    ``window`` (uniform only) bounds a clip to that many consecutive frames: a longer video's clips are spread over
    :func:`clip_windows`, clip ``c`` of ``n`` in window ``c * len(windows) // n`` (every window once when there are
    at least as many clips), its frames drawn uniformly inside it. A video within one window gets exactly the clips
    of the unbounded sampler (the same draws).
    """
    if num_frames < min_frames_needed(sampler, frames_per_clip, stride):
        return []
    if sampler == "uniform":
        starts = clip_windows(num_frames, window)
        if len(starts) == 1:
            return [sample_uniform(num_frames, frames_per_clip, rng) for _ in range(clips_per_video)]
        return [starts[c * len(starts) // clips_per_video] + sample_uniform(window, frames_per_clip, rng)
                for c in range(clips_per_video)]
    return [sample_dense(num_frames, frames_per_clip, stride, rng) for _ in range(clips_per_video)]
