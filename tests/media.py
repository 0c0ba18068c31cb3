"""Test media made with the real ffmpeg CLI (lavfi sources): good, odd, and broken videos."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_video(path: Path, *, size: str = "96x64", rate: int = 10, seconds: float = 2.0,
               pix_fmt: str = "yuv420p", codec: str = "libx264", extra_vf: str | None = None,
               vfr: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    vf = extra_vf or "null"
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
           "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}", "-vf", vf]
    if vfr:
        cmd += ["-fps_mode", "vfr"]
    cmd += ["-c:v", codec, "-pix_fmt", pix_fmt, str(path)]
    subprocess.run(cmd, check=True)
    return path
