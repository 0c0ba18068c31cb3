"""Video probing and decoding with ffmpeg: one ffmpeg process per video, frames piped as rawvideo.

Decoding a whole video in one process matters: starting ffmpeg costs ~0.25 s, so decoding clip by clip would
spend more time starting processes than decoding.

Geometry is the *displayed* one: rotation metadata (phone footage) and non-square pixels (anamorphic video) are
applied, so frames are stored upright at the proportions a player shows. Frames are read from the pipe into a
buffer bounded by ``max_frames``, so memory stays bounded whatever the input's length.
"""

from __future__ import annotations

import errno
import math
import os
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import ffmpeg
import numpy as np


class VideoError(Exception):
    """A video that cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int  # displayed width: after rotation and the sample aspect ratio
    height: int  # displayed height
    fps: float  # average frame rate reported by the container
    duration: float  # seconds (0.0 if unknown)
    codec: str
    pix_fmt: str
    rotation: int = 0  # degrees from the container's display matrix (ffmpeg turns the frames upright)
    coded_size: tuple[int, int] = (0, 0)  # (W, H) as stored in the stream

    @property
    def aspect_ratio(self) -> float:
        """Long side over short side of the displayed frame (>= 1)."""
        return max(self.width, self.height) / min(self.width, self.height)


@dataclass(frozen=True)
class DecodedVideo:
    frames: np.ndarray  # [N, H, W, 3] uint8 RGB
    timestamps: np.ndarray  # [N] seconds of each output frame
    fps: float  # output frame rate (the resampling rate)
    info: VideoInfo
    cut_at: int | None = None  # decoding stopped after this many frames (the memory bound), else None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def _last_line(stderr: bytes | None, url: str = "") -> str:
    """ffmpeg's last error line, without the input's URL it starts with (the message names the path already)."""
    lines = [ln.strip() for ln in (stderr or b"").decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1].replace(f"{url}: ", "") if lines else "no error output"


def ffmpeg_url(path: str | Path) -> str:
    """``file:`` + absolute path: a name such as ``clip:1.mp4`` must not be taken for an ffmpeg protocol."""
    return "file:" + os.path.abspath(path)


def check_readable(path: str | Path) -> None:
    """Fail fast, with a reason, on files ffmpeg would only report vaguely about."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise VideoError(f"{path}: symbolic link loop") from None
        if path.is_symlink():
            raise VideoError(f"{path}: broken symbolic link (to {os.readlink(path)})") from None
        if err.errno == errno.EACCES:
            raise VideoError(f"{path}: permission denied (a folder on its path is not searchable)") from None
        raise VideoError(f"{path}: not a file ({err.strerror})") from None
    if not path.is_file():
        raise VideoError(f"{path}: not a file")
    if not os.access(path, os.R_OK):
        raise VideoError(f"{path}: permission denied (not readable)")
    if st.st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")


def _rotation(stream: dict[str, Any]) -> int:
    """Display rotation in degrees: the display-matrix side data (ffmpeg >= 5) or the old ``rotate`` tag."""
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            return int(float(side["rotation"]))
    return int(float((stream.get("tags") or {}).get("rotate", 0) or 0))


def _sample_aspect(stream: dict[str, Any]) -> Fraction:
    try:
        num, den = (int(x) for x in str(stream.get("sample_aspect_ratio", "1:1")).split(":"))
    except ValueError:
        return Fraction(1)
    return Fraction(num, den) if num > 0 and den > 0 else Fraction(1)  # 0:1 / N/A = unknown = square


def probe_video(path: str | Path) -> VideoInfo:
    """Read the first video stream's displayed geometry, rate and duration with ffprobe."""
    check_readable(path)
    try:
        meta = ffmpeg.probe(ffmpeg_url(path))
    except ffmpeg.Error as err:
        raise VideoError(f"{path}: not a readable video ({_last_line(err.stderr, ffmpeg_url(path))})") from None
    # a cover picture of an audio file is a one-image "video" stream: not a video
    streams = [s for s in meta.get("streams", []) if s.get("codec_type") == "video"
               and not (s.get("disposition") or {}).get("attached_pic")]
    if not streams:
        kinds = sorted({"a cover picture" if (s.get("disposition") or {}).get("attached_pic")
                        else str(s.get("codec_type")) for s in meta.get("streams", [])})
        raise VideoError(f"{path}: no video stream" + (f" (only {' and '.join(kinds)})" if kinds else ""))
    s = streams[0]
    coded_w, coded_h = int(s.get("width") or 0), int(s.get("height") or 0)
    if coded_w <= 0 or coded_h <= 0:
        raise VideoError(f"{path}: video stream has no size")
    rotation = _rotation(s)
    width, height = max(1, round(coded_w * _sample_aspect(s))), coded_h
    if rotation % 180:  # +-90 / 270: ffmpeg transposes the frames, so the displayed size is swapped
        width, height = height, width
    rate = s.get("avg_frame_rate") or s.get("r_frame_rate") or "0/1"
    try:
        fps = float(Fraction(rate)) if rate not in ("0/0", "") else 0.0
    except (ValueError, ZeroDivisionError):
        fps = 0.0
    try:
        duration = float(s.get("duration") or meta.get("format", {}).get("duration") or 0.0)
    except ValueError:
        duration = 0.0
    return VideoInfo(str(path), width, height, fps, duration if math.isfinite(duration) else 0.0,
                     str(s.get("codec_name", "?")), str(s.get("pix_fmt", "?")), rotation, (coded_w, coded_h))


def output_size(width: int, height: int, short_side: int, crop: str) -> tuple[int, int]:
    """(W, H) after scaling the short side to ``short_side`` (long side rounded to even) and cropping."""
    if crop == "center":
        return short_side, short_side
    if width <= height:
        long_side = round(height * short_side / width / 2) * 2
        return short_side, max(long_side, short_side)
    long_side = round(width * short_side / height / 2) * 2
    return max(long_side, short_side), short_side


def check_geometry(info: VideoInfo, short_side: int, max_aspect_ratio: float) -> None:
    """Refuse frames too elongated to be useful: scaling their short side up would make huge frames."""
    if info.aspect_ratio > max_aspect_ratio:
        w, h = output_size(info.width, info.height, short_side, "none")
        raise VideoError(f"{info.path}: aspect ratio {info.aspect_ratio:.4g}:1 ({info.width}x{info.height}) is "
                         f"beyond shard_videos.max_aspect_ratio {max_aspect_ratio:g}:1 (frames would be {w}x{h})")


def _read_frames(pipe: IO[bytes], shape: tuple[int, int, int], expected: int, max_frames: int | None,
                 ) -> tuple[np.ndarray, bool]:
    """Frames from a rawvideo pipe into one growing buffer; stop at ``max_frames``. Returns (frames, was_cut)."""
    frame_bytes = shape[0] * shape[1] * shape[2]
    # the container's duration is a hint, not a promise (a bogus one must not allocate): grow by doubling
    capacity = max(1, min(expected, 4096, max_frames or 4096))
    buf = np.empty((capacity, *shape), np.uint8)
    n = 0
    while True:
        if n == buf.shape[0]:
            if max_frames is not None and n >= max_frames:
                return buf[:n], bool(pipe.read(1))  # one more byte = the video goes on past the bound
            grown = np.empty((min(2 * n, max_frames) if max_frames else 2 * n, *shape), np.uint8)
            grown[:n] = buf[:n]
            buf = grown
        view = memoryview(buf[n]).cast("B")
        got = 0
        while got < frame_bytes:
            k = pipe.readinto(view[got:])
            if not k:
                return buf[:n], False  # end of stream (a partial last frame is dropped)
            got += k
        n += 1


def decode_video(path: str | Path, fps: float, short_side: int, crop: str = "none",
                 info: VideoInfo | None = None, max_frames: int | None = None) -> DecodedVideo:
    """Decode ``path`` resampled to ``fps`` with the short side scaled to ``short_side``.

    Variable-frame-rate input is handled by ffmpeg's fps filter (it emits frames on a constant grid). A video that
    is truncated part-way decodes to the frames before the damage. With ``max_frames``, decoding stops there
    (``cut_at`` says so): memory is bounded by ``max_frames`` frames whatever the video's length.
    """
    info = info or probe_video(path)
    out_w, out_h = output_size(info.width, info.height, short_side, crop)
    # one decoder thread: parallelism comes from decoding several videos at once (one process each)
    stream = ffmpeg.input(ffmpeg_url(path), threads=1).video.filter("fps", fps=fps)
    if crop == "center":
        # scale so the short side fits, then take the centre square
        scale_w, scale_h = output_size(info.width, info.height, short_side, "none")
        stream = stream.filter("scale", scale_w, scale_h).filter("crop", out_w, out_h)
    else:
        stream = stream.filter("scale", out_w, out_h)
    # converting inside the scale filter saves a second swscale pass for the rgb24 output
    stream = stream.filter("setsar", 1).filter("format", "rgb24")
    cmd = (stream.output("pipe:", format="rawvideo", pix_fmt="rgb24")
           .global_args("-nostdin", "-loglevel", "error", "-filter_complex_threads", "1").compile())
    expected = int(info.duration * fps) + 2 if info.duration > 0 else 64
    with tempfile.TemporaryFile() as err_file:  # a file, not a pipe: a chatty ffmpeg can never block on it
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err_file)
        assert proc.stdout is not None
        cut = True  # until the whole stream was read: an exception or the bound stops ffmpeg
        try:
            frames, cut = _read_frames(proc.stdout, (out_h, out_w, 3), expected, max_frames)
        finally:
            if cut:
                proc.kill()  # the rest of the video is not wanted
            proc.stdout.close()
            code = proc.wait()
        err_file.seek(max(0, err_file.seek(0, os.SEEK_END) - 4096))
        err = err_file.read()
    n = frames.shape[0]
    if n == 0:
        what = "decoding failed" if code else "no frames decoded"
        raise VideoError(f"{path}: {what} ({_last_line(err, ffmpeg_url(path))})")
    timestamps = np.arange(n, dtype=np.float64) / fps
    return DecodedVideo(frames=frames, timestamps=timestamps, fps=float(fps), info=info, cut_at=n if cut else None)
