"""Deterministic labeled synthetic videos: the embedded default data.

Each video shows objects of several semantic classes moving over a textured background that pans. Classes differ
by *shape and texture* (colour is drawn per object instance, so it says nothing about the class), objects occlude
each other in a fixed depth order, and every frame has a class-index mask. Videos are written twice: as real
encoded video files (H.264 through ffmpeg) for the unlabeled training set, and as JPEG frames + palette PNG masks
in the DAVIS-2017 folder layout for evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np
from PIL import Image

from timetuning.shards import ShardWriter, encode_jpeg

# (shape, texture) per foreground class; class 0 is the background
CLASS_DESIGNS: tuple[tuple[str, str], ...] = (
    ("disc", "stripes"),
    ("square", "checker"),
    ("triangle", "dots"),
    ("ring", "noise"),
    ("cross", "diagonal"),
    ("diamond", "waves"),
)
CLASS_NAMES: tuple[str, ...] = ("background",) + tuple(f"{s}_{t}" for s, t in CLASS_DESIGNS)


def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS annotations (bit-reversal colour map, as in PASCAL VOC)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


@dataclass
class SyntheticVideo:
    frames: np.ndarray  # [T, H, W, 3] uint8
    masks: np.ndarray  # [T, H, W] uint8 class ids


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in object coordinates (u, v in [-1, 1] over the object's box)."""
    r = np.hypot(u, v)
    if shape == "disc":
        return r <= 1.0
    if shape == "square":
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    if shape == "triangle":
        return (v <= 0.8) & (v >= -0.9 + 1.7 * np.abs(u))
    if shape == "ring":
        return (r <= 1.0) & (r >= 0.5)
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: str, u: np.ndarray, v: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """A [0, 1] modulation pattern in object coordinates, so the texture moves with the object."""
    if texture == "stripes":
        return (np.sin(u * 9.0) > 0).astype(np.float32)
    if texture == "checker":
        return ((np.floor(u * 3) + np.floor(v * 3)) % 2).astype(np.float32)
    if texture == "dots":
        return ((np.sin(u * 12) * np.sin(v * 12)) > 0.5).astype(np.float32)
    if texture == "noise":
        return noise
    if texture == "diagonal":
        return (np.sin((u + v) * 8.0) > 0).astype(np.float32)
    if texture == "waves":
        return 0.5 + 0.5 * np.sin(u * 6 + 3 * np.sin(v * 4))
    raise ValueError(f"unknown texture {texture!r}")


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A large smooth-noise + grid texture to pan across (twice the frame in each direction)."""
    big_h, big_w = height * 2, width * 2
    coarse = rng.random((big_h // 16 + 2, big_w // 16 + 2, 3)).astype(np.float32)
    img = np.array(Image.fromarray((coarse * 255).astype(np.uint8)).resize((big_w, big_h), Image.BICUBIC),
                   dtype=np.float32) / 255.0
    yy, xx = np.mgrid[0:big_h, 0:big_w]
    grid = ((yy % 23 < 2) | (xx % 29 < 2)).astype(np.float32)[..., None]
    base = rng.uniform(0.25, 0.6, size=3).astype(np.float32)
    return np.clip(0.5 * base + 0.4 * img - 0.15 * grid, 0, 1)


def generate_video(rng: np.random.Generator, *, frames: int, width: int, height: int, num_classes: int,
                   objects: int) -> SyntheticVideo:
    """One labeled video: ``objects`` objects of classes 1..num_classes-1 moving over a panning background."""
    if num_classes - 1 > len(CLASS_DESIGNS):
        raise ValueError(f"demo_data.num_classes: at most {len(CLASS_DESIGNS) + 1} classes, got {num_classes}")
    bg = _background(rng, height, width)
    pan_start = rng.uniform(0, [bg.shape[0] - height, bg.shape[1] - width])
    pan_velocity = rng.uniform(-1.5, 1.5, size=2)
    # each class appears at least once when there are enough objects; the rest is random
    classes = list(rng.permutation(np.arange(1, num_classes)))[:objects]
    classes += list(rng.integers(1, num_classes, size=max(0, objects - len(classes))))
    size_lo, size_hi = 0.14 * min(height, width), 0.3 * min(height, width)
    obj = []
    for c in classes:
        radius = rng.uniform(size_lo, size_hi)
        obj.append(dict(
            cls=int(c), radius=radius,
            pos=rng.uniform([radius, radius], [height - radius, width - radius]),
            vel=rng.uniform(-3.0, 3.0, size=2),
            angle=rng.uniform(0, 2 * np.pi), spin=rng.uniform(-0.08, 0.08),
            colour=rng.uniform(0.2, 1.0, size=3).astype(np.float32),
            noise=rng.random((64, 64)).astype(np.float32),
        ))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out_frames = np.empty((frames, height, width, 3), np.uint8)
    out_masks = np.zeros((frames, height, width), np.uint8)
    for t in range(frames):
        oy, ox = np.clip(pan_start + t * pan_velocity, 0, [bg.shape[0] - height, bg.shape[1] - width]).astype(int)
        img = bg[oy:oy + height, ox:ox + width].copy()
        mask = np.zeros((height, width), np.uint8)
        for o in obj:  # later objects are in front: occlusion by depth order
            pos = o["pos"] + t * o["vel"]
            for d, lim in enumerate((height, width)):  # bounce off the borders
                span = 2 * (lim - 2 * o["radius"])
                p = (pos[d] - o["radius"]) % span
                pos[d] = o["radius"] + (p if p <= span / 2 else span - p)
            a = o["angle"] + t * o["spin"]
            dy, dx = (yy - pos[0]) / o["radius"], (xx - pos[1]) / o["radius"]
            u, v = np.cos(a) * dx + np.sin(a) * dy, -np.sin(a) * dx + np.cos(a) * dy
            shape, texture = CLASS_DESIGNS[o["cls"] - 1]
            inside = _shape_mask(shape, u, v)
            ni = np.clip(((u + 1) * 32).astype(int), 0, 63), np.clip(((v + 1) * 32).astype(int), 0, 63)
            pattern = _texture(texture, u, v, o["noise"][ni[1], ni[0]])
            shade = o["colour"] * (0.35 + 0.65 * pattern[..., None])
            img[inside] = shade[inside]
            mask[inside] = o["cls"]
        out_frames[t] = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        out_masks[t] = mask
    return SyntheticVideo(out_frames, out_masks)


def write_video_file(frames: np.ndarray, path: str | Path, fps: int) -> None:
    """Encode frames as H.264 (yuv420p, bit-exact single thread, so the same frames give the same bytes)."""
    t, h, w, _ = frames.shape
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    (
        ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", framerate=fps)
        .output(str(path), vcodec="libx264", pix_fmt="yuv420p", crf=18, preset="veryfast",
                **{"threads": 1, "fflags": "+bitexact", "flags:v": "+bitexact", "map_metadata": -1})
        .global_args("-nostdin", "-loglevel", "error")
        .overwrite_output()
        .run(input=np.ascontiguousarray(frames).tobytes(), capture_stdout=True, capture_stderr=True)
    )


def write_davis_sequence(video: SyntheticVideo, root: str | Path, name: str, resolution: str = "480p") -> None:
    """Frames as ``JPEGImages/<res>/<name>/%05d.jpg`` and palette masks as ``Annotations/<res>/<name>/%05d.png``."""
    root = Path(root)
    img_dir = root / "JPEGImages" / resolution / name
    ann_dir = root / "Annotations" / resolution / name
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    palette = davis_palette()
    for t in range(video.frames.shape[0]):
        Image.fromarray(video.frames[t]).save(img_dir / f"{t:05d}.jpg", quality=95)
        mask = Image.fromarray(video.masks[t], mode="P")
        mask.putpalette(palette)
        mask.save(ann_dir / f"{t:05d}.png")


def write_clip_shards(out: str | Path, *, videos: int, clips_per_video: int, frames: int, width: int, height: int,
                      maxcount: int, frames_per_clip: int = 4, seed: int = 0) -> Path:
    """Training clip shards cut straight from synthetic videos (the shard_videos contract, no video files):
    for tests and benchmarks that need clips without running ffmpeg."""
    rng = np.random.default_rng(seed)
    with ShardWriter(Path(out), prefix="clips", maxcount=maxcount) as writer:
        for v in range(videos):
            video = generate_video(rng, frames=frames, width=width, height=height, num_classes=4, objects=3)
            for c in range(clips_per_video):
                idx = sorted(int(i) for i in rng.choice(frames, frames_per_clip, replace=False))
                sample = {"__key__": f"v{v}__c{c:03d}", "json": json.dumps({"frame_indices": idx})}
                for t, i in enumerate(idx):
                    sample[f"f{t}.jpg"] = encode_jpeg(video.frames[i], 90)
                writer.write(sample)
    return Path(out)
