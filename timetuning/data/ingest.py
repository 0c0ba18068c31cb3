"""Raw videos -> training clip shards: find videos, cut clips per video, write shards and a manifest.

A video is a video file (``input_format: videos``) or a folder of JPEG/PNG frames (``input_format: frames``, as
YouTube-VOS and DAVIS ship them), optionally restricted to the IDs of ``video_list`` (file stems / folder names), so
a train/val/test split of one folder stays disjoint. The manifest lists the IDs used (``video_names``): training
refuses to start when an evaluation split it would be scored on shares one of them.

The per-video work (:func:`video_to_clips`) is a pure top-level function, so any executor can map it over videos:
a local process pool (default), or Dask through Prefect's task runner (``pipeline/``). Results are consumed in
sorted video order, so the shards are byte-identical whatever the executor or worker count.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from timetuning.data.sampling import clip_windows, min_frames_needed, sample_clips, video_rng, window_frames
from timetuning.data.shards import ShardWriter, encode_jpeg, sanitize_key
from timetuning.data.video import (
    DecodedVideo,
    VideoError,
    VideoInfo,
    check_geometry,
    decode_video,
    output_size,
    probe_video,
)
from timetuning.infra.config import ShardVideosParams, artifact_params
from timetuning.infra.executors import Mapper, ingest_mapper
from timetuning.infra.files import write_json_atomic

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")

log = logging.getLogger(__name__)



@dataclass
class VideoResult:
    """What one video gave: encoded clip samples, or the reason it was skipped."""

    path: str
    video_id: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    frames_decoded: int = 0
    skipped: str | None = None
    shortened: str | None = None  # set when only the first part of the video was used (the memory bound)
    windows: int = 1  # uniform clips: the windows of at most max_clip_seconds they were drawn from
    span_seconds: float = 0.0  # the longest first-to-last-frame time of its clips
    seconds: float = 0.0  # the decoded length (frames over the sampled frame rate)


@dataclass
class VideoScan:
    """The videos found under a folder, and the folders that could not be looked into (with the reason)."""

    paths: list[Path]
    folders_skipped: list[dict[str, str]]


def scan_videos(root: str | Path, extensions: Iterable[str]) -> VideoScan:
    """Every file under ``root`` (recursively, through folder links) with one of ``extensions``, sorted.

    A folder that cannot be listed (permission denied) or a folder link that leads back to a folder already seen
    (a link loop, or a second link to the same folder) is not entered, and listed with the reason.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"shard_videos.input_dir: {root} is not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise PermissionError(f"shard_videos.input_dir: {root} is not readable (permission denied)")
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    paths: list[Path] = []
    skipped: list[dict[str, str]] = []
    st = root.stat()
    seen = {(st.st_dev, st.st_ino): str(root)}  # every folder entered, by identity: links cannot loop

    def unreadable(err: OSError) -> None:
        skipped.append({"path": str(err.filename), "reason": f"{err.filename}: folder not readable "
                        f"({err.strerror}); the videos inside it were not seen"})

    for folder, subfolders, files in os.walk(root, onerror=unreadable, followlinks=True):
        # a fixed walk order, real folders before links: a folder reached twice is entered by the same path
        subfolders.sort(key=lambda name: (os.path.islink(os.path.join(folder, name)), name))
        for name in list(subfolders):  # pruned in place: os.walk does not enter what is removed here
            sub = os.path.join(folder, name)
            try:
                st = os.stat(sub)
            except OSError as err:
                subfolders.remove(name)
                skipped.append({"path": sub, "reason": f"{sub}: cannot be entered ({err.strerror})"})
                continue
            first = seen.setdefault((st.st_dev, st.st_ino), sub)
            if first != sub:
                subfolders.remove(name)
                kind = "a symbolic link loop" if os.path.commonpath([first, sub]) == first else "a second link"
                skipped.append({"path": sub, "reason": f"{sub}: {kind} to {first}, which is scanned once"})
        paths += [Path(folder) / f for f in files if os.path.splitext(f)[1].lower() in exts]
    skipped.sort(key=lambda item: item["path"])
    return VideoScan(sorted(paths), skipped)


def scan_frame_folders(root: str | Path) -> VideoScan:
    """Every folder under ``root`` (itself included) that directly holds JPEG/PNG frames: one video each, sorted."""
    scan = scan_videos(root, FRAME_EXTENSIONS)
    return VideoScan(sorted({p.parent for p in scan.paths}), scan.folders_skipped)


def find_videos(root: str | Path, extensions: Iterable[str]) -> list[Path]:
    """Every file under ``root`` (recursively) with one of ``extensions`` (case-insensitive), sorted."""
    return scan_videos(root, extensions).paths


def max_frames_in_memory(info_width: int, info_height: int, params: ShardVideosParams) -> int:
    """How many decoded frames of this geometry fit ``max_decoded_mib``."""
    w, h = output_size(info_width, info_height, params.size, params.crop)
    return max(1, params.max_decoded_mib * 2**20 // (w * h * 3))


def decode_frame_folder(path: str | Path, source_fps: float, fps: float, short_side: int, crop: str = "none",
                        max_aspect_ratio: float = 64.0, max_frames: int | None = None) -> DecodedVideo:
    """A folder of frames (sorted by name, at ``source_fps``) resampled to at most ``fps`` and scaled like a video.

    Frames are taken every ``source_fps / fps`` (never duplicated: uniform clips need distinct frames); at most
    ``max_frames`` of them (the memory bound), and ``cut_at`` says so.
    """
    files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)
    if not files:
        raise VideoError(f"{path}: no frames")
    step = max(1.0, source_fps / fps)
    chosen = [files[int(i)] for i in np.arange(0, len(files), step)]
    cut_at = max_frames if max_frames is not None and len(chosen) > max_frames else None
    frames, size, info = [], None, None
    for f in chosen[:max_frames]:
        try:
            with Image.open(f) as img:
                img = img.convert("RGB")
                if size is None:
                    size = img.size
                    info = VideoInfo(str(path), size[0], size[1], float(source_fps), len(files) / source_fps,
                                     "frames", "rgb24")
                    check_geometry(info, short_side, max_aspect_ratio)
                    scaled = output_size(*size, short_side, "none")
                    out_w, out_h = output_size(*size, short_side, crop)
                elif img.size != size:
                    raise VideoError(f"{f}: frame size {img.size} differs from the folder's first frame {size}")
                img = img.resize(scaled, Image.BICUBIC)
        except OSError as err:
            raise VideoError(f"{f}: unreadable frame ({err})") from None
        left, top = (scaled[0] - out_w) // 2, (scaled[1] - out_h) // 2
        frames.append(np.asarray(img)[top:top + out_h, left:left + out_w])
    out_fps = source_fps / step
    return DecodedVideo(np.stack(frames), np.arange(len(frames)) / out_fps, float(out_fps), info, cut_at)


def video_to_clips(path: str, video_id: str, params: ShardVideosParams, seed: int) -> VideoResult:
    """Decode one video (one ffmpeg process, or its frame folder), sample its clips and encode them as samples."""
    result = VideoResult(path=path, video_id=video_id)
    try:
        if params.input_format == "frames":
            first = next(p for p in sorted(Path(path).iterdir()) if p.suffix.lower() in FRAME_EXTENSIONS)
            with Image.open(first) as img:
                max_frames = max_frames_in_memory(*img.size, params)
            video = decode_frame_folder(path, params.frames_fps, params.fps, params.size, params.crop,
                                        params.max_aspect_ratio, max_frames)
            info = video.info
        else:
            info = probe_video(path)
            check_geometry(info, params.size, params.max_aspect_ratio)
            max_frames = max_frames_in_memory(info.width, info.height, params)
            video = decode_video(path, params.fps, params.size, params.crop, info=info, max_frames=max_frames)
    except (VideoError, OSError) as err:
        result.skipped = str(err)
        return result
    result.frames_decoded = video.num_frames
    if video.cut_at is not None:
        result.shortened = (f"{path}: only the first {video.cut_at} frames ({video.cut_at / params.fps:.1f} s at "
                            f"{params.fps:g} fps) were used: shard_videos.max_decoded_mib = {params.max_decoded_mib}")
    window = window_frames(params.max_clip_seconds, video.fps, params.frames_per_clip) \
        if params.sampler == "uniform" else None
    clips = sample_clips(video.num_frames, sampler=params.sampler, frames_per_clip=params.frames_per_clip,
                         stride=params.stride, clips_per_video=params.clips_per_video,
                         rng=video_rng(seed, video_id), window=window)
    result.windows = len(clip_windows(video.num_frames, window))
    result.seconds = round(video.num_frames / video.fps, 6)
    if not clips:
        need = min_frames_needed(params.sampler, params.frames_per_clip, params.stride)
        result.skipped = (f"{path}: too short: {video.num_frames} frames at {params.fps:g} fps, "
                          f"a {params.sampler} clip needs {need}")
        return result
    h, w = video.frames.shape[1:3]
    for c, indices in enumerate(clips):
        key = f"{video_id}__c{c:03d}"
        sample: dict[str, Any] = {"__key__": key}
        try:
            for t, i in enumerate(indices):
                sample[f"f{t}.jpg"] = encode_jpeg(video.frames[i], params.jpeg_quality)
        except (OSError, ValueError) as err:  # the encoder's own limits; geometry checks should keep us inside
            result.samples, result.skipped = [], f"{path}: {w}x{h} frames could not be encoded as JPEG ({err})"
            return result
        sample["json"] = json.dumps({
            "video_id": video_id, "source": path, "clip_index": c,
            "frame_indices": [int(i) for i in indices],
            "timestamps": [round(float(video.timestamps[i]), 6) for i in indices],
            "fps": video.fps, "source_size": [info.width, info.height], "size": [int(w), int(h)],
        }, sort_keys=True).encode()
        result.samples.append(sample)
        span = float(video.timestamps[indices[-1]] - video.timestamps[indices[0]])
        result.span_seconds = max(result.span_seconds, round(span, 6))
    return result


def _video_to_clips_star(args: tuple) -> VideoResult:
    return video_to_clips(*args)


def video_name(path: Path) -> str:
    """The ID a video list names: the file stem, or the frame folder's name (YouTube-VOS/DAVIS video ids)."""
    return path.name if path.is_dir() else path.stem


def read_video_list(path: str | Path) -> list[str]:
    """Video IDs, one per line (blank lines and ``#`` comments ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shard_videos.video_list: {path} not found")
    ids = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    return [i for i in ids if i]


def select_listed(paths: list[Path], list_path: str | Path) -> list[Path]:
    """The videos whose names are in the list file; every listed ID must exist exactly once."""
    wanted = read_video_list(list_path)
    by_name: dict[str, list[Path]] = {}
    for p in paths:
        by_name.setdefault(video_name(p), []).append(p)
    missing = [i for i in wanted if i not in by_name]
    if missing:
        raise FileNotFoundError(f"shard_videos.video_list {list_path}: {len(missing)} listed video(s) not found "
                                f"under the input folder, e.g. {missing[:5]}")
    ambiguous = [i for i in wanted if len(by_name[i]) > 1]
    if ambiguous:
        raise ValueError(f"shard_videos.video_list {list_path}: video(s) {ambiguous[:5]} name several files "
                         f"({[str(p) for p in by_name[ambiguous[0]]]})")
    return sorted(by_name[i][0] for i in dict.fromkeys(wanted))


def video_ids(paths: list[Path], root: Path) -> list[str]:
    """Unique, stable ids from paths relative to ``root``."""
    ids, seen = [], set()
    for p in paths:
        base = sanitize_key(str(p.relative_to(root).with_suffix("")).replace(os.sep, "_"))
        vid, n = base, 1
        while vid in seen:
            n += 1
            vid = f"{base}_{n}"
        seen.add(vid)
        ids.append(vid)
    return ids


def shard_videos(params: ShardVideosParams, seed: int, mapper: Mapper | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Turn every video under ``params.input_dir`` into clip shards in ``params.output_dir``; return the manifest.

    Bad videos are skipped and listed with their reason; fails only if no clip at all could be written.
    """
    root = Path(params.input_dir)
    frames = params.input_format == "frames"
    scan = scan_frame_folders(root) if frames else scan_videos(root, params.extensions)
    paths = scan.paths
    for item in scan.folders_skipped:
        log.info("skipped %s", item["reason"])  # the stage lists every skip at its end
    if not paths:
        unseen = f"; not entered: {'; '.join(s['reason'] for s in scan.folders_skipped[:3])}" \
            if scan.folders_skipped else ""
        what = f"folders of {FRAME_EXTENSIONS} frames" if frames else f"videos with extensions {params.extensions}"
        raise FileNotFoundError(f"shard_videos.input_dir: no {what} under {root}{unseen}")
    if params.video_list:
        paths = select_listed(paths, params.video_list)
    if mapper is None:  # the executor params.yaml names; a local pool never larger than the number of videos
        workers = min(params.workers or os.cpu_count() or 1, len(paths))
        mapper = ingest_mapper(params.executor, workers, params.dask_address)
    jobs = [(str(p), vid, params, seed) for p, vid in zip(paths, video_ids(paths, root))]
    out_dir = Path(params.output_dir)
    # a rerun replaces the previous shards entirely; the manifest goes first, so a killed run never leaves one
    # that describes shards of an earlier run
    (out_dir / "manifest.json").unlink(missing_ok=True)
    for old in out_dir.glob("clips-*.tar"):
        old.unlink()
    skipped, shortened, frames_decoded, clips, used, spans = [], [], 0, 0, [], []
    with ShardWriter(out_dir, prefix="clips", maxcount=params.maxcount, maxsize=params.maxsize) as writer:
        bar = tqdm(mapper(_video_to_clips_star, jobs), total=len(jobs), desc="shard_videos", unit="video",
                   disable=not progress)
        for result in bar:
            if result.skipped:
                log.info("skipped %s", result.skipped)
                skipped.append({"path": result.path, "reason": result.skipped})
                continue
            if result.shortened:
                log.info("shortened %s", result.shortened)
                shortened.append({"path": result.path, "reason": result.shortened})
            frames_decoded += result.frames_decoded
            used.append(video_name(Path(result.path)))
            spans.append({"video_id": result.video_id, "seconds": result.seconds,
                          "windows": result.windows, "span_seconds": result.span_seconds})
            for sample in result.samples:
                writer.write(sample)
                clips += 1
            bar.set_postfix(clips=clips, skipped=len(skipped))
        if clips == 0:
            reasons = "; ".join(s["reason"] for s in skipped[:5])
            raise RuntimeError(f"shard_videos: no clip written from {len(paths)} video(s) under {root}: {reasons}")
    manifest = {
        "input_dir": str(root), "videos_seen": len(paths), "videos_used": len(paths) - len(skipped),
        "video_names": sorted(used),
        "videos_skipped": skipped, "videos_shortened": shortened, "folders_skipped": scan.folders_skipped,
        "clips_written": clips, "frames_decoded": frames_decoded,
        # uniform clips: the bound on a clip's span, and per video the windows its clips came from and the longest
        # span one of them has (first to last frame)
        "max_clip_seconds": params.max_clip_seconds if params.sampler == "uniform" else None,
        "clip_spans": sorted(spans, key=lambda item: item["video_id"]),
        "shards": [vars(r) for r in writer.records], "params": artifact_params(params), "seed": seed,
    }
    write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest
