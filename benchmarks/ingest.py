"""Ingest speed: `shard_videos` against ffmpeg alone decoding + scaling the same videos to the same size.

Prints frames/s for both, side by side in one run, at 1 and 2 workers, and their ratio (target >= 0.8); the two
sides alternate for ``--rounds`` rounds and medians are reported, since other processes share the cores.
ffmpeg alone: `ffmpeg -i X -vf fps=F,scale=W:H -f null -`, the same videos split over the same number of processes.

    .venv/bin/python benchmarks/ingest.py [--videos 8] [--seconds 6] [--fps 15] [--size 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timetuning.data.ingest import find_videos, shard_videos  # noqa: E402
from timetuning.data.video import output_size, probe_video  # noqa: E402
from timetuning.infra.config import ShardVideosParams  # noqa: E402


def make_videos(directory: Path, count: int, seconds: float) -> None:
    for i in range(count):
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc2=size=640x360:rate=30:duration={seconds}", "-vf", f"hue=h={i * 40}",
                        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                        str(directory / f"v{i:02d}.mp4")], check=True)


def ffmpeg_alone(paths: list[Path], fps: float, size: int, workers: int) -> float:
    def one(path: Path) -> None:
        info = probe_video(path)
        w, h = output_size(info.width, info.height, size, "none")
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1", "-i", str(path),
                        "-vf", f"fps={fps},scale={w}:{h}", "-f", "null", "-"], check=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:  # threads only wait on ffmpeg processes
        list(pool.map(one, paths))
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per side; medians are reported")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "videos"
        src.mkdir()
        make_videos(src, args.videos, args.seconds)
        paths = find_videos(src, [".mp4"])
        print(f"{len(paths)} videos, 640x360 @30 fps, {args.seconds:g} s each -> fps={args.fps:g}, "
              f"short side {args.size}")
        print(f"{'workers':>7} {'ffmpeg alone f/s':>17} {'shard_videos f/s':>17} {'ratio':>6} {'per-worker f/s':>15}")
        for workers in (1, 2):
            params = ShardVideosParams(input_dir=str(src), output_dir=f"{tmp}/out{workers}", fps=args.fps,
                                       size=args.size, clips_per_video=8, workers=workers)
            t_ff, t_sv = [], []
            for _ in range(args.rounds):  # alternate, so load from other processes hits both sides alike
                t_ff.append(ffmpeg_alone(paths, args.fps, args.size, workers))
                start = time.perf_counter()
                manifest = shard_videos(params, seed=0, progress=False)
                t_sv.append(time.perf_counter() - start)
            frames = manifest["frames_decoded"]
            ff, sv = statistics.median(t_ff), statistics.median(t_sv)
            print(f"{workers:>7} {frames / ff:>17.0f} {frames / sv:>17.0f} {ff / sv:>6.2f} "
                  f"{frames / sv / workers:>15.0f}")

if __name__ == "__main__":
    main()
