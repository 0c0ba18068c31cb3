import numpy as np
import torch
from torch.nn import functional as F

from timetuning.eval.upsampling import bilinear_sample, bilinear_upsample, nearest_indices, resize_nearest


def test_bilinear_sample_equals_interpolate_at_every_pixel():
    maps = torch.randn(3, 5, 4, 6)
    for size in ((4, 6), (10, 13), (32, 48), (3, 2)):
        full = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        f, y, x = torch.meshgrid(torch.arange(3), torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
        got = bilinear_sample(maps, f.flatten(), y.flatten(), x.flatten(), size)
        torch.testing.assert_close(got, full.permute(0, 2, 3, 1).reshape(-1, 5), rtol=1e-5, atol=1e-5)


def test_nearest_matches_torch_and_a_hand_example():
    m = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    assert resize_nearest(m, (2, 2)).tolist() == [[[0, 2], [8, 10]]]
    assert resize_nearest(m, (4, 2)).tolist() == [[[0, 2], [4, 6], [8, 10], [12, 14]]]
    for src, dst in ((14, 224), (14, 100), (10, 7), (7, 10)):
        ref = F.interpolate(torch.arange(src).float()[None, None, :, None], size=(dst, 1), mode="nearest")
        assert nearest_indices(src, dst).tolist() == ref.flatten().long().tolist()


def test_bilinear_upsample_by_matrices_equals_interpolate():
    torch.manual_seed(3)
    maps = torch.randn(2, 3, 5, 7, 4)
    for size in [(16, 9), (5, 4), (33, 100)]:
        expected = torch.nn.functional.interpolate(maps.flatten(0, 1), size=size, mode="bilinear",
                                                   align_corners=False).reshape(2, 3, 5, *size)
        torch.testing.assert_close(bilinear_upsample(maps, size), expected, rtol=1e-5, atol=1e-5)
