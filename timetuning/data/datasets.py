"""Readers for labeled evaluation sets on disk (DAVIS-2017, YouTube-VOS, Pascal VOC and the VOC-like exports of
labelme, CVAT and plain folders) and their shard samples.

Each reader lists *sequences*: a video (or a single image) as frame paths with their mask paths, plus the set's
label map. :func:`sequence_samples` turns a sequence into evaluation clips (frames resized so the short side is
``size``, masks resized with nearest neighbour, class ids checked against the label map). Where masks hold
instance ids (DAVIS-2017 with its semantic files, YouTube-VOS), each frame's instance mask is kept beside its class
mask, for label-propagation benchmarks. Where a set's files lie is :mod:`timetuning.data.layouts`'s part.
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
from timetuning.data.layouts import (
    DatasetError,
    color_map_file,
    image_path,
    image_stems,
    layout_problems,
    set_key,
    split_source,
    voc_image_dir,
    voc_mask_folder,
)
from timetuning.data.shards import encode_jpeg, encode_png, sanitize_key
from timetuning.infra.config import EvalSetParams, check_class_names, check_color_map

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
IGNORE_NAME = "__ignore__"  # labelme's labels.txt: the first line, id -1 (255 in the PNGs labelme writes)
LABELME_BACKGROUND = "_background_"  # labelme's name of id 0, shown as "background"


@dataclass(frozen=True)
class ColorMap:
    """Colour masks: each (r, g, b) colour's class id, and where the colours were given (for messages)."""

    to_class: dict[tuple[int, int, int], int]
    source: str


@dataclass
class Sequence:
    video_id: str
    frames: list[Path]
    masks: list[Path]
    # maps raw mask values to class ids (instance ids -> categories); None = values are class ids
    value_to_class: dict[int, int] | None = None
    instances: bool = False  # raw mask values are instance ids: samples keep them as f<t>.inst.png
    colors: ColorMap | None = None  # masks are colour images: colours map to class ids


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
    key = f"shard_eval.sets.{params.name}.classes"
    if params.classes is None or isinstance(params.classes, list):
        return None if params.classes is None else _labelme_names(list(params.classes), key)
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
    names = _labelme_names(names, f"{key} ({path})")
    try:
        check_class_names(names, f"{key} ({path})")
    except ValueError as err:
        raise DatasetError(str(err)) from None
    return names


def _labelme_names(names: list[str], where: str) -> list[str]:
    """labelme's conventions: a first line ``__ignore__`` (its labels.txt) is id -1, written as 255 = ignore, so it is
    dropped and ``_background_`` is id 0; ``_background_`` at id 0 is shown as ``background``."""
    if names and names[0] == IGNORE_NAME:
        names = names[1:]
    if IGNORE_NAME in names:
        raise DatasetError(f"{where}: {IGNORE_NAME} at id {names.index(IGNORE_NAME)}: labelme's ignore label is read "
                           f"only as the first line (id -1, 255 in masks); move it to the first line or remove it")
    if names and names[0] == LABELME_BACKGROUND and "background" not in names:
        names = ["background", *names[1:]]
    return names


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None


def split_names(params: EvalSetParams, split: str) -> list[str]:
    """The video/image IDs of a split: from ``video_lists[split]`` when given, else the layout's own split file
    (for a voc-layout set without split files, every image: :func:`~timetuning.data.layouts.split_source`)."""
    source = split_source(params, split)
    if source.kind == "all":
        return image_stems(source.path)
    lines = source.path.read_text().splitlines()
    if source.kind == "file":
        return [ln.strip() for ln in lines if ln.strip()]
    ids = [ln.split("#", 1)[0].strip() for ln in lines]
    return list(dict.fromkeys(i for i in ids if i))


def split_note(params: EvalSetParams, split: str) -> str:
    """Where a split's IDs came from, in words (the manifest records it for every split)."""
    source = split_source(params, split)
    return {"list": f"video_lists.{split}: {source.path}", "file": str(source.path)}.get(source.kind, source.note)


def _paired(video_id: str, frame_dir: Path, mask_dir: Path) -> Sequence:
    if not frame_dir.is_dir():
        raise DatasetError(f"{frame_dir}: frame folder of sequence {video_id!r} not found: add it, or remove "
                           f"{video_id} from the split's file")
    frames = sorted(frame_dir.glob("*.jpg"))
    if not frames:
        raise DatasetError(f"{frame_dir}: no .jpg frames (a davis sequence is a folder of .jpg frames): add them, or "
                           f"remove {video_id} from the split's file")
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
    names = split_names(params, split)
    seqs = [_paired(n, root / "JPEGImages" / params.resolution / n, root / "Annotations" / params.resolution / n)
            for n in names]
    declared = declared_classes(params)
    semantic = davis_semantics(root, declared, f"shard_eval.sets.{params.name}.classes")
    if semantic is not None:
        classes, maps = semantic
        for s in seqs:
            if s.video_id not in maps:
                raise DatasetError(f"{root / 'davis_semantics.json'}: no entry for sequence {s.video_id!r}: add "
                                   f"its instance id -> category map there")
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
    if split not in params.video_lists:
        split_source(params, split)  # names the missing folder and the fix
    elif not meta_path.is_file():
        raise DatasetError(f"{meta_path}: meta.json not found ({set_key(params, 'video_folder')}: {folder}): set "
                           "video_folder to the annotated folder under root that the listed videos are in")
    meta = json.loads(meta_path.read_text())
    classes = ytvos_categories(root)
    class_id = {c: i for i, c in enumerate(classes)}
    videos = meta.get("videos", {})
    if split in params.video_lists:
        vids = split_names(params, split)
        missing = [v for v in vids if v not in videos]
        if missing:
            raise DatasetError(f"{set_key(params, 'video_lists')}.{split}: {len(missing)} listed video(s) not in "
                               f"{meta_path}, e.g. {missing[:5]}: remove them from {params.video_lists[split]}, or "
                               f"set {set_key(params, 'video_folder')} to the folder holding them")
    else:
        vids = sorted(videos)
    seqs = []
    for vid in vids:
        objects = videos[vid].get("objects", {})
        mapping = {0: 0} | {int(k): class_id[str(o["category"])] for k, o in objects.items()}
        mask_dir = root / folder / "Annotations" / vid
        masks = sorted(mask_dir.glob("*.png"))
        if not masks:
            raise DatasetError(f"{mask_dir}: no annotated frames for video {vid!r}: add its masks, or leave the video "
                               f"out of the split (a video list in {set_key(params, 'video_lists')})")
        frames = [root / folder / "JPEGImages" / vid / f"{m.stem}.jpg" for m in masks]
        seqs.append(Sequence(vid, frames, masks, mapping, instances=True))
    return seqs, classes


def read_color_map(params: EvalSetParams) -> tuple[dict[str, tuple[int, int, int]], str] | None:
    """A voc-layout set's colours (class name -> (r, g, b)) and where they were given: ``color_map`` in params,
    the file it names, or CVAT's ``labelmap.txt`` at root (``name:r,g,b:parts:actions`` lines, ``#`` comments);
    None when the set has no colours (its masks hold class ids)."""
    if isinstance(params.color_map, dict):
        return {n: tuple(int(c) for c in rgb) for n, rgb in params.color_map.items()}, set_key(params, "color_map")
    path = color_map_file(params)
    if path is None:
        return None
    key = set_key(params, "color_map")
    if not path.is_file():
        raise DatasetError(f"{path}: colour map not found ({key}): set {key} to CVAT's labelmap.txt (a relative path "
                           "is read from root) or to {name: [r, g, b]}")
    colors: dict[str, tuple[int, int, int]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, rest = line.partition(":")
        channels = rest.split(":", 1)[0].split(",")
        try:
            rgb = tuple(int(c) for c in channels)
        except ValueError:
            rgb = ()
        if not name.strip() or len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise DatasetError(f"{path}:{number}: {line.strip()!r} is not name:r,g,b (CVAT's labelmap.txt has lines "
                               f"like car:250,50,83::); fix the line, or give the colours in {key}")
        if name.strip() in colors:
            raise DatasetError(f"{path}:{number}: class {name.strip()!r} named twice; keep one line per class")
        colors[name.strip()] = rgb  # type: ignore[assignment]
    try:
        check_color_map(colors, f"{key} ({path})")
    except ValueError as err:
        raise DatasetError(str(err)) from None
    return colors, str(path)


def voc_sequences(params: EvalSetParams, split: str) -> tuple[list[Sequence], list[str]]:
    """Pascal VOC: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``, ``ImageSets/Segmentation/<split>.txt``.

    Also the exports of annotation tools: ``image_dir``/``mask_dir`` name other folders (images .jpg/.jpeg/.png,
    masks <stem>.png or labelme's <stem>.npy; labelme's ``SegmentationClassPNG`` is found by itself), a set with one
    split and no split files uses every image, and colour masks map to classes through a colour map
    (:func:`read_color_map`): the classes are its names in its order unless ``classes`` orders them.
    """
    images, masks = voc_image_dir(params), voc_mask_folder(params)
    ids = split_names(params, split)
    declared = declared_classes(params)
    colors, color_map = read_color_map(params), None
    if colors is not None:
        named, source = colors
        if declared is None:
            declared = list(named)
            try:
                check_class_names(declared, f"{set_key(params, 'classes')} (the names of {source})")
            except ValueError as err:
                raise DatasetError(str(err)) from None
        missing = [n for n in named if n not in declared]
        if missing:
            raise DatasetError(f"{source}: classes {missing[:5]} are not in {set_key(params, 'classes')} "
                               f"{declared}: add them there, or remove classes to take the colour map's names")
        color_map = ColorMap({rgb: declared.index(n) for n, rgb in named.items()}, source)
    seqs = [Sequence(i, [image_path(images, i)], [masks.path / f"{i}{masks.suffix}"], colors=color_map)
            for i in ids]
    return seqs, declared or list(VOC_CLASSES)


READERS = {"davis": davis_sequences, "ytvos": ytvos_sequences, "voc": voc_sequences}


def read_sequences(params: EvalSetParams, split: str) -> tuple[list[Sequence], list[str]]:
    """The sequences and class names of one split of a labeled set."""
    if not Path(params.root).is_dir():
        raise DatasetError(f"{set_key(params, 'root')}: {params.root} is not a directory: set it to the folder of "
                           "the set")
    problems = layout_problems(params)
    if problems:
        raise DatasetError("\n".join(problems))
    return READERS[params.layout](params, split)


def _resized(img: Image.Image, size: int, resample: int) -> Image.Image:
    w, h = img.size
    scale = size / min(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)


def _mask_fix(seq: Sequence, params: EvalSetParams) -> str:
    """Where a frame's mask is looked for, and the option that moves it (for a missing mask)."""
    if params.layout == "voc":
        key = set_key(params, "mask_dir")
        return f"masks are read from {seq.masks[0].parent}: add the mask there, set {key} to the folder holding " \
               f"the masks, or leave the image out of the split"
    return "add the mask, or leave the sequence out of the split"


def read_mask(path: Path, seq: Sequence, params: EvalSetParams) -> np.ndarray:
    """A mask's raw values [H, W] int32: palette indices or grey levels, labelme's .npy labels (-1 -> 255 =
    ignore), or colours mapped to class ids by the sequence's colour map."""
    key = set_key(params)
    if path.suffix == ".npy":
        try:
            raw = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DatasetError(f"{path}: not a readable .npy mask ({err})") from None
        if raw.ndim != 2 or not np.issubdtype(raw.dtype, np.integer):
            raise DatasetError(f"{path}: a .npy mask must be a 2-D integer array (labelme's labels), got {raw.dtype} "
                               f"{raw.shape}; point {key}.mask_dir at the PNG masks instead")
        raw = raw.astype(np.int64)
        if raw.size and (raw.min() < -1 or raw.max() > IGNORE_INDEX):
            raise DatasetError(f"{path}: .npy labels {raw.min()}..{raw.max()} outside -1 (ignore)..{IGNORE_INDEX - 1}"
                               f"; fix the labels, or point {key}.mask_dir at the PNG masks")
        return np.where(raw == -1, IGNORE_INDEX, raw).astype(np.int32)
    img = open_image(path, "mask")
    if seq.colors is not None:
        rgb = np.asarray(img.convert("RGB"), np.int32)
        packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        values, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
        known = {(r << 16) | (g << 8) | b: c for (r, g, b), c in seq.colors.to_class.items()}
        unknown = [(int(v), int(n)) for v, n in zip(values, counts) if int(v) not in known]
        if unknown:
            listed = ", ".join(f"({v >> 16}, {(v >> 8) & 255}, {v & 255}) at {n} pixel(s)" for v, n in unknown[:3])
            first = unknown[0][0]
            raise DatasetError(f"{path}: colour(s) {listed} not in the colour map {seq.colors.source}: add a class "
                               f"line for each (e.g. <name>:{first >> 16},{(first >> 8) & 255},{first & 255}:: in "
                               f"labelmap.txt, or <name>: [{first >> 16}, {(first >> 8) & 255}, {first & 255}] in "
                               f"{key}.color_map), or repaint those pixels")
        return np.array([known[int(v)] for v in values], np.int32)[inverse.reshape(packed.shape)]
    if img.mode in ("P", "L", "I;16", "I;16B", "I;16L", "I"):
        return np.array(img).astype(np.int32)
    if params.layout == "voc":
        fix = (f"set {key}.color_map to the export's labelmap.txt (CVAT writes one; labelmap.txt at the set's root is "
               f"read by itself) or to {{name: [r, g, b]}}, or export palette/grayscale masks whose values are class "
               "ids")
    else:
        fix = f"a {params.layout} set's masks are palette or grayscale PNGs whose values are ids: convert them"
    raise DatasetError(f"{path}: mask mode {img.mode!r} (a colour mask), expected a palette or grayscale PNG; {fix}")


def load_annotated_frame(seq: Sequence, index: int, params: EvalSetParams, num_classes: int,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame ``index`` of a sequence (RGB), its class-id mask and its raw mask (e.g. instance ids) at short side
    ``params.short_side``, validated; raises :class:`DatasetError` naming the file and the fix."""
    frame_path, mask_path = seq.frames[index], seq.masks[index]
    if not frame_path.is_file():
        raise DatasetError(f"{frame_path}: frame not found: add the image, or leave {seq.video_id!r} out of the split")
    if not mask_path.is_file():
        raise DatasetError(f"{frame_path}: frame has no mask ({mask_path} not found): {_mask_fix(seq, params)}")
    frame = open_image(frame_path, "frame").convert("RGB")
    raw = read_mask(mask_path, seq, params)
    if raw.shape != (frame.size[1], frame.size[0]):
        raise DatasetError(f"{mask_path}: mask size {raw.shape[::-1]} differs from frame size {frame.size} "
                           f"({frame_path.name}): a mask is paired with the image of the same file name and must have "
                           "its size; re-export the mask at the image's size")
    if seq.value_to_class is not None:
        lut = np.full(256, -1, np.int32)
        lut[IGNORE_INDEX] = IGNORE_INDEX
        for value, cls in seq.value_to_class.items():
            lut[value] = cls
        mask = lut[np.clip(raw, 0, 255)]
        mask[raw > 255] = -1
    else:
        mask = raw
    bad = np.unique(mask[(mask != IGNORE_INDEX) & ((mask < 0) | (mask >= num_classes))])
    if bad.size:
        values = sorted(set(raw[np.isin(mask, bad)].tolist()))[:5]
        classes_key = set_key(params, "classes")
        if seq.value_to_class is not None:
            fix = (f"these instance ids of {seq.video_id!r} have no category in the layout's semantic file "
                   "(davis_semantics.json, meta.json): add them there, or fix the mask")
        else:
            fix = f"name every id in {classes_key} (id 0 first; 255 = ignore), or fix the mask"
        raise DatasetError(f"{mask_path}: unknown class index/palette value(s) {values} (the set has {num_classes} "
                           f"classes, ids 0-{num_classes - 1}; its class list: {classes_key}): {fix}")
    size = params.short_side
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
            frame, mask, raw = load_annotated_frame(seq, i, params, num_classes)
            if seen is not None:
                seen |= np.bincount(mask.ravel(), minlength=256).astype(bool)
            if size is not None and size != frame.shape[:2]:
                raise DatasetError(f"{seq.frames[i]}: frame size differs from the other frames of {seq.video_id!r}: "
                                   "a sequence's frames must share one size; re-export it at one size")
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
