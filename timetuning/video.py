"""Video probing and decoding with ffmpeg-python: one ffmpeg process per video, frames piped as rawvideo.

Decoding a whole video in one process matters: starting ffmpeg costs ~0.25 s, so decoding clip by clip would
spend more time starting processes than decoding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg
import numpy as np


class VideoError(Exception):
    """A video that cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int
    height: int
    fps: float  # average frame rate reported by the container
    duration: float  # seconds (0.0 if unknown)
    codec: str
    pix_fmt: str


@dataclass(frozen=True)
class DecodedVideo:
    frames: np.ndarray  # [N, H, W, 3] uint8 RGB
    timestamps: np.ndarray  # [N] seconds of each output frame
    fps: float  # output frame rate (the resampling rate)
    info: VideoInfo

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def _last_line(stderr: bytes | None) -> str:
    lines = [ln.strip() for ln in (stderr or b"").decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "no error output"


def check_readable(path: str | Path) -> None:
    """Fail fast, with a reason, on files ffmpeg would only report vaguely about."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: not a file")
    if not os.access(path, os.R_OK):
        raise VideoError(f"{path}: permission denied (not readable)")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")


def probe_video(path: str | Path) -> VideoInfo:
    """Read the first video stream's geometry, rate and duration with ffprobe."""
    check_readable(path)
    try:
        meta = ffmpeg.probe(str(path))
    except ffmpeg.Error as err:
        raise VideoError(f"{path}: not a readable video ({_last_line(err.stderr)})") from None
    streams = [s for s in meta.get("streams", []) if s.get("codec_type") == "video"]
    if not streams:
        raise VideoError(f"{path}: no video stream")
    s = streams[0]
    width, height = int(s.get("width") or 0), int(s.get("height") or 0)
    if width <= 0 or height <= 0:
        raise VideoError(f"{path}: video stream has no size")
    rate = s.get("avg_frame_rate") or s.get("r_frame_rate") or "0/1"
    try:
        fps = float(Fraction(rate)) if rate not in ("0/0", "") else 0.0
    except (ValueError, ZeroDivisionError):
        fps = 0.0
    duration = float(s.get("duration") or meta.get("format", {}).get("duration") or 0.0)
    return VideoInfo(str(path), width, height, fps, duration, str(s.get("codec_name", "?")), str(s.get("pix_fmt", "?")))


def output_size(width: int, height: int, short_side: int, crop: str) -> tuple[int, int]:
    """(W, H) after scaling the short side to ``short_side`` (long side rounded to even) and cropping."""
    if crop == "center":
        return short_side, short_side
    if width <= height:
        long_side = round(height * short_side / width / 2) * 2
        return short_side, max(long_side, short_side)
    long_side = round(width * short_side / height / 2) * 2
    return max(long_side, short_side), short_side


def decode_video(path: str | Path, fps: float, short_side: int, crop: str = "none",
                 info: VideoInfo | None = None) -> DecodedVideo:
    """Decode ``path`` resampled to ``fps`` with the short side scaled to ``short_side``.

    Variable-frame-rate input is handled by ffmpeg's fps filter (it emits frames on a constant grid). A video that
    is truncated part-way decodes to the frames before the damage.
    """
    info = info or probe_video(path)
    out_w, out_h = output_size(info.width, info.height, short_side, crop)
    # one decoder thread: parallelism comes from decoding several videos at once (one process each)
    stream = ffmpeg.input(str(path), threads=1).video.filter("fps", fps=fps)
    if crop == "center":
        # scale so the short side fits, then take the centre square
        scale_w, scale_h = output_size(info.width, info.height, short_side, "none")
        stream = stream.filter("scale", scale_w, scale_h).filter("crop", out_w, out_h)
    else:
        stream = stream.filter("scale", out_w, out_h)
    # converting inside the scale filter saves a second swscale pass for the rgb24 output
    stream = stream.filter("setsar", 1).filter("format", "rgb24")
    try:
        out, err = (
            stream.output("pipe:", format="rawvideo", pix_fmt="rgb24")
            .global_args("-nostdin", "-loglevel", "error", "-filter_complex_threads", "1")
            .run(capture_stdout=True, capture_stderr=True)
        )
    except ffmpeg.Error as e:
        out, err = e.stdout or b"", e.stderr
        if len(out) < out_w * out_h * 3:
            raise VideoError(f"{path}: decoding failed ({_last_line(err)})") from None
    frame_bytes = out_w * out_h * 3
    n = len(out) // frame_bytes
    if n == 0:
        raise VideoError(f"{path}: no frames decoded ({_last_line(err)})")
    frames = np.frombuffer(out, dtype=np.uint8, count=n * frame_bytes).reshape(n, out_h, out_w, 3)
    timestamps = np.arange(n, dtype=np.float64) / fps
    return DecodedVideo(frames=frames, timestamps=timestamps, fps=float(fps), info=info)
