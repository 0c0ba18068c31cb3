import numpy as np
import pytest
import torch
from PIL import Image

from timetuning.data.demo_media import (
    CUTOUT_MAX_SIDE,
    OBJECT_CLASSES,
    TEXTURES,
    MediaError,
    cutout,
    package_file,
    texture,
)
from timetuning.infra.config import BackboneParams
from timetuning.models.backbones import build_backbone


def _index(name: str) -> int:
    return [c.name for c in OBJECT_CLASSES].index(name)


@pytest.fixture(scope="module")
def classifier():
    return build_backbone(BackboneParams()).model.eval()


@pytest.mark.parametrize("name, imagenet_classes", [
    ("cat", range(281, 286)),  # the domestic cats
    ("cup", (967, 968)),  # espresso, cup
    ("motorcycle", (665, 670)),  # moped, motor scooter
])
def test_cutouts_are_the_real_objects_their_masks_say(classifier, name, imagenet_classes):
    """An ImageNet classifier (the package weights) still names the object with everything outside its mask grey:
    the mask holds the object."""
    model = classifier
    cut = cutout(_index(name), 0)
    img = cut.rgb.copy()
    img[~cut.mask] = 128
    x = torch.from_numpy(np.array(Image.fromarray(img).resize((224, 224), Image.BICUBIC))).permute(2, 0, 1)
    with torch.no_grad():
        probs = model((x.float()[None] / 255.0 - 0.5) / 0.5).softmax(-1)[0]
    assert int(probs.argmax()) in imagenet_classes and float(probs.max()) > 0.3


def test_every_cutout_is_a_cropped_object_with_its_own_shape():
    for ci, cls in enumerate(OBJECT_CLASSES):
        for s in range(len(cls.sources)):
            cut = cutout(ci, s)
            assert cut.rgb.dtype == np.uint8 and cut.rgb.shape[:2] == cut.mask.shape
            assert max(cut.mask.shape) == CUTOUT_MAX_SIDE
            assert 0.3 < cut.mask.mean() < 0.95, (cls.name, s)  # an object shape, not its whole box
            m = cut.mask  # cropped to the mask: it reaches every border (up to the 2 px margin)
            assert m[:3].any() and m[-3:].any() and m[:, :3].any() and m[:, -3:].any(), (cls.name, s)
            assert cut.rgb[cut.mask].std() > 20  # a real photo, not a flat fill


def test_textures_are_real_photographs_mirror_tiled():
    for name in TEXTURES:
        t = texture(name)
        half = t.shape[0] // 2
        assert t.shape == (1024, 1024) and 0.0 <= t.min() and t.max() <= 1.0 and t.std() > 0.05
        assert np.array_equal(t[:, half:], t[:, :half][:, ::-1]) and np.array_equal(t[half:], t[:half][::-1])


def test_missing_package_file_is_named():
    with pytest.raises(MediaError, match="not installed"):
        package_file("no_such_package_here", "data/x.png")
    with pytest.raises(MediaError, match="missing from the installed 'skimage'"):
        package_file("skimage", "data/not_a_photo.png")
