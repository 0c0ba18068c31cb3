"""Where a labeled set's files lie in its layout: image and mask folders, split files, class and colour files.

Path checks only (no decoding), so the pre-flight of a run (:mod:`timetuning.run.inputs`) finds a set that does not
fit its layout before DVC starts, with the same words the readers (:mod:`timetuning.data.datasets`) use. Every
message names the file or key and what to change.

The voc layout also takes the exports annotation tools write: labelme's VOC export (``SegmentationClassPNG/``
beside ``SegmentationClass/*.npy``, no ``ImageSets/``), CVAT's Segmentation mask export (RGB masks,
``labelmap.txt``, ``ImageSets/Segmentation/default.txt``) and a plain folder of images and masks
(``image_dir``/``mask_dir``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from timetuning.infra.config import EvalSetParams

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VOC_SPLIT_DIR = Path("ImageSets") / "Segmentation"
LABELME_MASK_DIR = "SegmentationClassPNG"  # labelme2voc: SegmentationClass/ holds .npy, this folder the PNGs
CVAT_LABELMAP = "labelmap.txt"


class DatasetError(ValueError):
    """A labeled set that does not match its layout; the message names the file or key and how to fix it."""


def set_key(params: EvalSetParams, field: str = "") -> str:
    """The params key of the set (``shard_eval.sets.<name>``), or of one of its fields."""
    return f"shard_eval.sets.{params.name}" + (f".{field}" if field else "")


def _any(folder: Path, pattern: str) -> bool:
    return folder.is_dir() and next(folder.glob(pattern), None) is not None


def voc_image_dir(params: EvalSetParams, base: Path = Path(".")) -> Path:
    """The image folder of a voc-layout set: ``image_dir`` under root, else ``JPEGImages``."""
    return base / params.root / (params.image_dir or "JPEGImages")


@dataclass(frozen=True)
class MaskFolder:
    path: Path
    suffix: str  # ".png" or ".npy" (labelme's integer labels)
    note: str = ""  # how it was chosen, when not by the option or the layout's default


def voc_mask_folder(params: EvalSetParams, base: Path = Path(".")) -> MaskFolder:
    """The mask folder of a voc-layout set and its masks' suffix.

    ``mask_dir`` when given (PNG masks when it holds any, else .npy when it holds those). Otherwise
    ``SegmentationClass`` when it holds PNGs; labelme's VOC export keeps .npy arrays there and the PNGs in
    ``SegmentationClassPNG``, which is taken then; a ``SegmentationClass`` of .npy alone is read as such.
    """
    root = base / params.root
    if params.mask_dir:
        folder = root / params.mask_dir
        suffix = ".npy" if not _any(folder, "*.png") and _any(folder, "*.npy") else ".png"
        return MaskFolder(folder, suffix)
    default = root / "SegmentationClass"
    if _any(default, "*.png"):
        return MaskFolder(default, ".png")
    labelme = root / LABELME_MASK_DIR
    if _any(labelme, "*.png"):
        return MaskFolder(labelme, ".png", f"{LABELME_MASK_DIR}/ (SegmentationClass/ holds no .png: labelme's "
                                           f"VOC export)")
    if _any(default, "*.npy"):
        return MaskFolder(default, ".npy", "SegmentationClass/*.npy (labelme's integer labels, -1 = ignore)")
    return MaskFolder(default, ".png")


def image_path(folder: Path, stem: str) -> Path:
    """The image named ``stem`` in ``folder`` (.jpg first, then .jpeg, .png); the .jpg path when there is none."""
    for suffix in IMAGE_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return folder / f"{stem}.jpg"


def image_stems(folder: Path) -> list[str]:
    """The stems of every image in ``folder``, sorted."""
    return sorted({p.stem for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES})


@dataclass(frozen=True)
class SplitSource:
    """Where a split's IDs come from: a ``video_lists`` file, the layout's split file, or every image."""

    kind: str  # "list", "file" or "all"
    path: Path  # the list or split file; for "all", the image folder
    note: str = ""  # for "all": why, in words (the manifest and the stage's log say it)


def layout_split_file(params: EvalSetParams, split: str, base: Path = Path(".")) -> Path:
    """The layout's own split file of ``split`` (the ytvos layout has none: its folder's meta.json)."""
    root = base / params.root
    if params.layout == "davis":
        return root / "ImageSets" / "2017" / f"{split}.txt"
    if params.layout == "ytvos":
        return root / split / "meta.json"
    return root / VOC_SPLIT_DIR / f"{split}.txt"


def split_source(params: EvalSetParams, split: str, base: Path = Path(".")) -> SplitSource:
    """Where ``split`` is read from; raises :class:`DatasetError` (naming the file and the fix) when nowhere.

    A voc-layout set with one split and no split files at all (no ``ImageSets/Segmentation/*.txt``: labelme's
    export, a plain folder) uses every image of its image folder for that split.
    """
    listed = params.video_lists.get(split)
    if listed is not None:
        path = base / listed
        if not path.is_file():
            raise DatasetError(f"{set_key(params, 'video_lists')}.{split}: {listed} not found: write the IDs of the "
                              f"split there (one per line), or remove {split} from video_lists to use the "
                              "layout's own split")
        return SplitSource("list", path)
    path = layout_split_file(params, split, base)
    if path.is_file():
        return SplitSource("file", path)
    lists = f"video_lists: {{{split}: splits/{params.name}/<file>.txt}}"
    if params.layout == "ytvos":
        raise DatasetError(f"{path}: meta.json not found ({set_key(params, 'splits')}): a ytvos split is a folder "
                          f"<split>/ holding JPEGImages/, Annotations/ and meta.json; name an existing folder in "
                          f"splits, or cut the split from {params.video_folder}/ with {lists}")
    others = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
    if params.layout == "voc" and not others and len(params.splits) == 1:
        images = voc_image_dir(params, base)
        return SplitSource("all", images, f"every image in {images} (no split file {path})")
    key = set_key(params, "splits")
    message = f"{path}: split file not found ({key}): add it (one ID per line), or list the IDs in " \
              f"{set_key(params)}.{lists}"
    if len(others) == 1:
        message += f"; {path.parent} has {others[0]}.txt: to use it, set {key} to [{others[0]}]"
    elif others:
        message += f"; {path.parent} has {', '.join(f'{o}.txt' for o in others[:5])}: name those splits in {key}"
    if params.layout == "voc" and not others:
        message += f"; every image is used only by a set with one split and no split files (this set has " \
                   f"{len(params.splits)} splits: {params.splits})"
    raise DatasetError(message)


def color_map_file(params: EvalSetParams, base: Path = Path(".")) -> Path | None:
    """The colour file of a voc-layout set: ``color_map`` when it names a file, else CVAT's labelmap.txt at root
    when present; None when the colours are given in params or there are none."""
    if isinstance(params.color_map, str):
        return base / params.root / params.color_map
    if params.color_map is None and params.layout == "voc":
        path = base / params.root / CVAT_LABELMAP
        return path if path.is_file() else None
    return None


def layout_problems(params: EvalSetParams, base: Path = Path(".")) -> list[str]:
    """Each way the set's files do not fit its layout, one line each (an existing root is assumed): its folders and
    each split's file (the class and colour files are the stage's named inputs). Paths only; what is inside the
    files is checked when sharding."""
    root = base / params.root
    problems: list[str] = []
    if params.layout == "voc":
        images = voc_image_dir(params, base)
        key = set_key(params, "image_dir")
        if not images.is_dir():
            problems.append(f"{images}: image folder not found ({key}): set {key} to the folder of images under "
                            f"{params.root} (default JPEGImages)")
        elif not any(p.suffix.lower() in IMAGE_SUFFIXES for p in images.iterdir()):
            problems.append(f"{images}: no .jpg/.jpeg/.png images ({key}): set {key} to the folder holding them")
        masks = voc_mask_folder(params, base)
        key = set_key(params, "mask_dir")
        if not masks.path.is_dir():
            problems.append(f"{masks.path}: mask folder not found ({key}): set {key} to the folder of masks under "
                            f"{params.root} (default SegmentationClass, or labelme's {LABELME_MASK_DIR})")
        elif not _any(masks.path, f"*{masks.suffix}"):
            problems.append(f"{masks.path}: no .png or .npy masks ({key}): set {key} to the folder holding them")
    elif params.layout == "davis":
        for folder in ("JPEGImages", "Annotations"):
            path = root / folder / params.resolution
            if not path.is_dir():
                problems.append(f"{path}: folder not found ({set_key(params, 'resolution')}: {params.resolution}): "
                                f"a davis set has {folder}/<resolution>/<sequence>/; set resolution to the folder "
                                f"under {root / folder} or root to the DAVIS folder")
    for split in params.splits:
        try:
            split_source(params, split, base)
        except DatasetError as err:
            problems.append(str(err))
    return problems
