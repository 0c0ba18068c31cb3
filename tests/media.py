"""Test media made with the real ffmpeg CLI (lavfi sources): good, odd, and broken videos."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_video(path: Path, *, size: str = "96x64", rate: int = 10, seconds: float = 2.0,
               pix_fmt: str = "yuv420p", codec: str = "libx264", extra_vf: str | None = None,
               vfr: bool = False, frames: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    vf = extra_vf or "null"
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
           "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}", "-vf", vf]
    if vfr:
        cmd += ["-fps_mode", "vfr"]
    if frames is not None:
        cmd += ["-frames:v", str(frames)]
    cmd += ["-c:v", codec, "-pix_fmt", pix_fmt, str(path)]
    subprocess.run(cmd, check=True)
    return path


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def make_phone_video(path: Path, upright: Path) -> Path:
    """Phone footage: ``upright``'s frames stored turned 90 degrees clockwise, with the rotation in the metadata."""
    stored = path.with_name(f".stored-{path.name}.mp4")
    _ffmpeg("-i", str(upright), "-vf", "transpose=1", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(stored))
    _ffmpeg("-i", str(stored), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(path))  # display matrix
    stored.unlink()
    return path


def make_audio(path: Path, cover_art: bool = False) -> Path:
    """A 1 s sine tone; with ``cover_art`` a one-picture attached video stream, as music files carry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cover_art:
        _ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(path))
        return path
    _ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-f", "lavfi", "-i", "color=c=red:s=64x64:d=0.1",
            "-map", "0", "-map", "1", "-frames:v", "1", "-c:a", "aac", "-c:v", "mjpeg",
            "-disposition:v:0", "attached_pic", str(path))
    return path
