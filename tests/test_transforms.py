import torch
from torchvision.transforms.v2 import functional as TF

from timetuning.data.transforms import (
    ClipAugmentation,
    adjust_contrast,
    apply_color_matrix,
    eval_transform,
    saturation_matrix,
    separable_gaussian_blur,
)
from timetuning.train.schedules import cosine


def _clip():
    g = torch.Generator().manual_seed(0)
    frame = torch.randint(0, 255, (3, 60, 80), generator=g, dtype=torch.uint8)
    return torch.stack([frame] * 4)  # four identical frames


def test_every_frame_of_a_clip_gets_the_same_augmentation():
    aug = ClipAugmentation(size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    for seed in range(8):
        out = aug(_clip(), torch.Generator().manual_seed(seed))
        assert out.shape == (4, 3, 32, 32)
        assert all(torch.allclose(out[0], out[t]) for t in range(1, 4))


def test_augmentation_is_random_across_clips_and_reproducible_per_seed():
    aug = ClipAugmentation(size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    a = aug(_clip(), torch.Generator().manual_seed(1))
    b = aug(_clip(), torch.Generator().manual_seed(1))
    c = aug(_clip(), torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_crop_box_respects_scale_and_ratio():
    aug = ClipAugmentation(size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        top, left, h, w = aug.crop_box(100, 120, g)
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 120
        assert 0.39 * 12000 <= h * w <= 12000


def test_eval_transform_and_cosine():
    x = eval_transform(_clip(), 16, (0.5,) * 3, (0.5,) * 3)
    assert x.shape == (4, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert cosine(0, 10, 1.0, 0.0) == 1.0 and cosine(10, 10, 1.0, 0.0) == 0.0
    assert abs(cosine(5, 10, 0.04, 0.4) - 0.22) < 1e-9


def test_separable_blur_equals_the_2d_gaussian():
    x = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    for sigma in (0.3, 1.0, 2.0):
        radius = max(1, int(torch.tensor(3 * sigma).ceil()))
        ref = TF.gaussian_blur(x, [2 * radius + 1] * 2, [sigma, sigma])
        assert torch.allclose(separable_gaussian_blur(x, sigma), ref, atol=1e-5)


def test_one_pass_contrast_and_saturation_equal_torchvision():
    x = torch.rand(4, 3, 24, 32, generator=torch.Generator().manual_seed(3))
    for factor in (0.2, 1.0, 1.8):
        assert torch.allclose(adjust_contrast(x, factor).clamp(0, 1), TF.adjust_contrast(x, factor), atol=1e-6)
        assert torch.allclose(apply_color_matrix(x, saturation_matrix(factor)).clamp(0, 1),
                              TF.adjust_saturation(x, factor), atol=1e-6)
