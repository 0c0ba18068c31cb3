"""Readers for labeled evaluation sets on disk (DAVIS-2017, YouTube-VOS, Pascal VOC) and their shard samples.

Each reader lists *sequences*: a video (or a single image) as frame paths with their mask paths, plus the set's
label map. :func:`sequence_samples` turns a sequence into evaluation clips (frames resized so the short side is
``size``, masks resized with nearest neighbour, class ids checked against the label map). Where masks hold
instance ids (DAVIS-2017 with its semantic files, YouTube-VOS), each frame's instance mask is kept beside its class
mask, for label-propagation benchmarks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from timetuning.data.labels import IGNORE_INDEX
from timetuning.data.shards import encode_jpeg, encode_png, sanitize_key
from timetuning.infra.config import EvalSetParams, check_class_names

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


class DatasetError(ValueError):
    """A labeled set that does not match its layout; the message names the file and what is wrong."""


@dataclass
class Sequence:
    video_id: str
    frames: list[Path]
    masks: list[Path]
    # maps raw mask values to class ids (instance ids -> categories); None = values are class ids
    value_to_class: dict[int, int] | None = None
    instances: bool = False  # raw mask values are instance ids: samples keep them as f<t>.inst.png


def open_image(path: Path, what: str = "image") -> Image.Image:
    """Open and fully decode an image; a damaged or foreign file raises :class:`DatasetError` naming it."""
    try:
        img = Image.open(path)
        img.load()  # decode now (and close the file): a truncated file fails here, not inside a later conversion
        return img
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # UnidentifiedImageError (not an image at all) is an OSError; a truncated JPEG is one too
        unidentified = isinstance(err, Image.UnidentifiedImageError)
        reason = "not an image file" if unidentified else str(err) or type(err).__name__
        raise DatasetError(f"{path}: not a readable {what} ({reason})") from None


def declared_classes(params: EvalSetParams) -> list[str] | None:
    """The set's ``classes`` option as a list of names (read from its file if it names one); None if not given."""
    if params.classes is None or isinstance(params.classes, list):
        return None if params.classes is None else list(params.classes)
    key = f"shard_eval.sets.{params.name}.classes"
    path = Path(params.root) / params.classes
    if not path.is_file():
        raise DatasetError(f"{key}: {path} not found (a relative path is read from the set's root)")
    try:
        text = path.read_text(encoding="utf-8")
        names = json.loads(text) if path.suffix.lower() == ".json" else \
            [ln.strip() for ln in text.splitlines() if ln.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{key}: {path}: not a class list ({err})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{key}: {path}: expected a JSON list of names, got {type(names).__name__}")
    try:
        check_class_names(names, f"{key} ({path})")
    except ValueError as err:
        raise DatasetError(str(err)) from None
    return names


def _read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{path}: split file not found")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None


def split_names(params: EvalSetParams, split: str, layout_file: Path) -> list[str]:
    """The video/image IDs of a split: from ``video_lists[split]`` when given, else the layout's own split file."""
    listed = params.video_lists.get(split)
    if listed is None:
        return _read_split(layout_file)
    path = Path(listed)
    if not path.is_file():
        raise DatasetError(f"shard_eval.sets[{params.name}].video_lists.{split}: {path} not found")
    ids = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    return list(dict.fromkeys(i for i in ids if i))


def _paired(video_id: str, frame_dir: Path, mask_dir: Path) -> Sequence:
    if not frame_dir.is_dir():
        raise DatasetError(f"{frame_dir}: frame folder of sequence {video_id!r} not found")
    frames = sorted(frame_dir.glob("*.jpg"))
    if not frames:
        raise DatasetError(f"{frame_dir}: no .jpg frames")
    masks = [mask_dir / f"{f.stem}.png" for f in frames]
    return Sequence(video_id, frames, masks)


def davis_semantics(root: Path, declared: list[str] | None = None, key: str = "classes",
                    ) -> tuple[list[str], dict[str, dict[int, int]]] | None:
    """DAVIS-2017's semantic files: ``davis_semantics.json`` (sequence -> {instance id: category}) and, optionally,
    ``categories.json`` (category -> {"id": ..., "super_category": ...}). Returns the class names (``declared``
    when given, which must name every category; else background first, then categories by id; without
    categories.json, the categories named, sorted) and each sequence's instance id -> class id map; None when the
    root has no davis_semantics.json."""
    path = root / "davis_semantics.json"
    if not path.is_file():
        return None
    semantics = _read_json(path)
    if not isinstance(semantics, dict) or not all(isinstance(v, dict) for v in semantics.values()):
        raise DatasetError(f"{path}: expected {{sequence: {{instance id: category}}}}")
    named = {str(c) for objects in semantics.values() for c in objects.values()}
    cat_path = root / "categories.json"
    if declared is not None:
        missing = sorted(named - set(declared))
        if missing:
            raise DatasetError(f"{key}: {declared} lacks the categories {missing[:5]} of {path}")
        ordered = declared[1:]
    elif cat_path.is_file():
        categories = _read_json(cat_path)
        try:
            ordered = sorted(categories, key=lambda c: int(categories[c]["id"]))
        except (TypeError, KeyError, ValueError):
            raise DatasetError(f"{cat_path}: expected {{category: {{\"id\": int, ...}}}}") from None
        unknown = sorted(named - set(ordered))
        if unknown:
            raise DatasetError(f"{path}: categories {unknown[:5]} are not in {cat_path}")
    else:
        ordered = sorted(named)
    classes = (declared[:1] if declared is not None else ["background"]) + ordered
    class_id = {c: i for i, c in enumerate(classes)}
    try:
        maps = {seq: {0: 0} | {int(k): class_id[str(c)] for k, c in objects.items()}
                for seq, objects in semantics.items()}
    except ValueError:
        raise DatasetError(f"{path}: instance ids must be integers") from None
    bad = sorted({k for m in maps.values() for k in m if not 0 <= k < IGNORE_INDEX})
    if bad:
        raise DatasetError(f"{path}: instance ids {bad[:5]} outside 1..{IGNORE_INDEX - 1}")
    return classes, maps


def davis_sequences(params: EvalSetParams, split: str) -> tuple[list[Sequence], list[str]]:
    """DAVIS-2017: ``JPEGImages/<res>/<seq>/*.jpg``, ``Annotations/<res>/<seq>/*.png``, ``ImageSets/2017/<split>.txt``.

    With DAVIS-2017's semantic files at the root (:func:`davis_semantics`), palette indices are instance ids and
    each sequence's instances map to their categories (ids in the ``classes`` option's order when it is given).
    Without them, palette indices are class ids: class names come from the ``classes`` option, else from
    ``classes.json`` at the root when present (semantic annotations); otherwise the indices found are the classes.
    """
    root = Path(params.root)
    names = split_names(params, split, root / "ImageSets" / "2017" / f"{split}.txt")
    seqs = [_paired(n, root / "JPEGImages" / params.resolution / n, root / "Annotations" / params.resolution / n)
            for n in names]
    declared = declared_classes(params)
    semantic = davis_semantics(root, declared, f"shard_eval.sets.{params.name}.classes")
    if semantic is not None:
        classes, maps = semantic
        for s in seqs:
            if s.video_id not in maps:
                raise DatasetError(f"{root / 'davis_semantics.json'}: no entry for sequence {s.video_id!r}")
            s.value_to_class, s.instances = maps[s.video_id], True
        return seqs, classes
    classes_file = root / "classes.json"
    if declared is not None:
        classes = declared
    elif classes_file.is_file():
        classes = [str(c) for c in json.loads(classes_file.read_text())]
    else:
        found: set[int] = set()
        for s in seqs:
            for m in s.masks:
                try:
                    found |= set(np.unique(np.array(open_image(m, "mask"))).tolist())
                except DatasetError:
                    pass  # missing or damaged: reported (or skipped) with its sequence when it is sharded
        found.discard(IGNORE_INDEX)
        classes = ["background"] + [f"object_{i}" for i in range(1, max(found | {0}) + 1)]
    return seqs, classes


def ytvos_categories(root: Path) -> list[str]:
    """All categories named in any split's meta.json, sorted, background first."""
    cats: set[str] = set()
    for meta_path in sorted(root.glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        for video in meta.get("videos", {}).values():
            cats |= {str(o["category"]) for o in video.get("objects", {}).values() if "category" in o}
    return ["background"] + sorted(cats)


def ytvos_sequences(params: EvalSetParams, split: str) -> tuple[list[Sequence], list[str]]:
    """YouTube-VOS: ``<split>/JPEGImages/<vid>/*.jpg``, ``<split>/Annotations/<vid>/*.png``, ``<split>/meta.json``.

    Masks hold per-video instance ids; meta.json maps them to categories. Only annotated frames are used. A split
    given in ``video_lists`` takes the listed videos from the ``video_folder`` folder instead (YouTube-VOS only
    annotates its train folder publicly, so held-out splits are cut from it).
    """
    root = Path(params.root)
    folder = params.video_folder if split in params.video_lists else split
    meta_path = root / folder / "meta.json"
    if not meta_path.is_file():
        raise DatasetError(f"{meta_path}: meta.json not found")
    meta = json.loads(meta_path.read_text())
    classes = ytvos_categories(root)
    class_id = {c: i for i, c in enumerate(classes)}
    videos = meta.get("videos", {})
    if split in params.video_lists:
        vids = split_names(params, split, meta_path)
        missing = [v for v in vids if v not in videos]
        if missing:
            raise DatasetError(f"shard_eval.sets[{params.name}].video_lists.{split}: {len(missing)} listed video(s) "
                               f"not in {meta_path}, e.g. {missing[:5]}")
    else:
        vids = sorted(videos)
    seqs = []
    for vid in vids:
        objects = videos[vid].get("objects", {})
        mapping = {0: 0} | {int(k): class_id[str(o["category"])] for k, o in objects.items()}
        mask_dir = root / folder / "Annotations" / vid
        masks = sorted(mask_dir.glob("*.png"))
        if not masks:
            raise DatasetError(f"{mask_dir}: no annotated frames for video {vid!r}")
        frames = [root / folder / "JPEGImages" / vid / f"{m.stem}.jpg" for m in masks]
        seqs.append(Sequence(vid, frames, masks, mapping, instances=True))
    return seqs, classes


def voc_sequences(params: EvalSetParams, split: str) -> tuple[list[Sequence], list[str]]:
    """Pascal VOC: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``, ``ImageSets/Segmentation/<split>.txt``."""
    root = Path(params.root)
    ids = split_names(params, split, root / "ImageSets" / "Segmentation" / f"{split}.txt")
    seqs = [Sequence(i, [root / "JPEGImages" / f"{i}.jpg"], [root / "SegmentationClass" / f"{i}.png"]) for i in ids]
    return seqs, declared_classes(params) or list(VOC_CLASSES)


READERS = {"davis": davis_sequences, "ytvos": ytvos_sequences, "voc": voc_sequences}


def read_sequences(params: EvalSetParams, split: str) -> tuple[list[Sequence], list[str]]:
    """The sequences and class names of one split of a labeled set."""
    if not Path(params.root).is_dir():
        raise DatasetError(f"shard_eval.sets[{params.name}].root: {params.root} is not a directory")
    return READERS[params.layout](params, split)


def _resized(img: Image.Image, size: int, resample: int) -> Image.Image:
    w, h = img.size
    scale = size / min(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)


def load_annotated_frame(frame_path: Path, mask_path: Path, size: int, num_classes: int,
                         value_to_class: dict[int, int] | None, classes_key: str = "classes",
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A frame (RGB), its class-id mask and its raw mask (e.g. instance ids) at short side ``size``, validated;
    raises :class:`DatasetError`."""
    if not frame_path.is_file():
        raise DatasetError(f"{frame_path}: frame not found")
    if not mask_path.is_file():
        raise DatasetError(f"{frame_path}: frame has no mask ({mask_path} not found)")
    frame = open_image(frame_path, "frame").convert("RGB")
    mask_img = open_image(mask_path, "mask")
    if mask_img.mode not in ("P", "L"):
        raise DatasetError(f"{mask_path}: mask mode {mask_img.mode!r}, expected a palette or grayscale PNG")
    if mask_img.size != frame.size:
        raise DatasetError(f"{mask_path}: mask size {mask_img.size} differs from frame size {frame.size}")
    raw = np.array(mask_img)
    if value_to_class is not None:
        lut = np.full(256, -1, np.int32)
        lut[IGNORE_INDEX] = IGNORE_INDEX
        for value, cls in value_to_class.items():
            lut[value] = cls
        mask = lut[raw]
    else:
        mask = raw.astype(np.int32)
    bad = np.unique(mask[(mask != IGNORE_INDEX) & ((mask < 0) | (mask >= num_classes))])
    if bad.size:
        values = sorted(set(raw[np.isin(mask, bad)].tolist()))[:5]
        raise DatasetError(f"{mask_path}: unknown class index/palette value(s) {values} (the set has {num_classes} "
                           f"classes, ids 0-{num_classes - 1}; its class list: {classes_key})")
    frame = _resized(frame, size, Image.BILINEAR)
    mask_out = _resized(Image.fromarray(mask.astype(np.uint8)), size, Image.NEAREST)
    raw_out = _resized(Image.fromarray(raw.astype(np.uint8)), size, Image.NEAREST)
    return np.asarray(frame), np.asarray(mask_out), np.asarray(raw_out)


def clip_starts(num_frames: int, length: int, stride: int, max_clips: int) -> list[int]:
    """Start indices of up to ``max_clips`` clips spread evenly over the sequence."""
    span = (length - 1) * stride + 1
    if num_frames < span:
        return []
    last = num_frames - span
    count = min(max_clips, last + 1)
    return sorted({int(round(s)) for s in np.linspace(0, last, count)})


def sequence_samples(seq: Sequence, params: EvalSetParams, split: str, num_classes: int,
                     seen: np.ndarray | None = None) -> Iterator[dict[str, Any]]:
    """Shard samples of one sequence: clips of ``frames_per_clip`` frames (1 for image sets).

    ``seen``: a [256] bool array; the class ids found in the masks are set to True.
    """
    length = 1 if params.layout == "voc" else params.frames_per_clip
    base = sanitize_key(seq.video_id)
    for c, start in enumerate(clip_starts(len(seq.frames), length, params.frame_stride, params.max_clips_per_video)):
        idx = [start + i * params.frame_stride for i in range(length)]
        sample: dict[str, Any] = {"__key__": base if params.layout == "voc" else f"{base}__c{c:03d}"}
        size = None
        for t, i in enumerate(idx):
            frame, mask, raw = load_annotated_frame(seq.frames[i], seq.masks[i], params.short_side, num_classes,
                                                    seq.value_to_class, f"shard_eval.sets.{params.name}.classes")
            if seen is not None:
                seen |= np.bincount(mask.ravel(), minlength=256).astype(bool)
            if size is not None and size != frame.shape[:2]:
                raise DatasetError(f"{seq.frames[i]}: frame size differs from the other frames of {seq.video_id!r}")
            size = frame.shape[:2]
            sample[f"f{t}.jpg"] = encode_jpeg(frame, 95)
            sample[f"f{t}.png"] = encode_png(mask)
            if seq.instances:  # lossless instance ids beside the class mask
                sample[f"f{t}.inst.png"] = encode_png(raw)
        sample["json"] = json.dumps({
            "set": params.name, "split": split, "video_id": seq.video_id,
            "frame_names": [seq.frames[i].name for i in idx], "size": [int(size[1]), int(size[0])],
        }, sort_keys=True).encode()
        yield sample
