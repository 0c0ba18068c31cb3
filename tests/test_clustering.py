import numpy as np
import pytest
import torch
from torch.nn import functional as F

from timetuning.eval.clustering import (
    KMeansSettings,
    assign_clusters,
    classes_present,
    cluster_groups,
    group_pca,
    match_group,
)

FAST = KMeansSettings(iterations=50, restarts=2, points_per_centroid=256)


def test_pixel_assignment_equals_clustering_the_upsampled_features():
    """The identity the protocol rests on: argmin over upsampled scores = nearest centroid of each pixel of the
    bilinearly upsampled feature map (brute force)."""
    torch.manual_seed(0)
    maps = torch.randn(2, 6, 3, 4)
    cents = torch.randn(5, 6)
    ids = assign_clusters(maps, cents, 4, (12, 15), pixels=True)
    up = F.interpolate(maps, size=(12, 15), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    brute = ((up[..., None, :] - cents[:4]) ** 2).sum(-1).argmin(-1)
    assert np.array_equal(ids, brute.numpy())
    # patch level: cluster the patches, then the cluster map is upsampled by nearest neighbour
    patch = assign_clusters(maps, cents, 4, (6, 8), pixels=False)
    brute_patch = ((maps.permute(0, 2, 3, 1)[..., None, :] - cents[:4]) ** 2).sum(-1).argmin(-1)
    assert np.array_equal(patch, brute_patch.numpy().repeat(2, 1).repeat(2, 2))


def test_k_is_the_number_of_classes_present_in_the_group():
    frame = np.array([[0, 0, 2], [2, 255, 0]])  # class 1 of {0,1,2} is absent, 255 is not a class
    assert classes_present(frame) == 2
    assert classes_present(np.full((2, 2), 255)) == 0


def test_a_two_region_frame_is_segmented_exactly_at_pixel_level():
    """A 2x2 patch grid whose left column is one surface and right column another: with K = 2 present classes the
    upsampled-pixel clustering splits the frame down the middle, and after Hungarian matching the mIoU is 1."""
    maps = torch.zeros(1, 2, 2, 2)
    maps[0, 0, :, 0] = 1.0  # left patches: (1, 0)
    maps[0, 1, :, 1] = 1.0  # right patches: (0, 1)
    mask = np.zeros((1, 8, 8), np.uint8)
    mask[0, :, 4:] = 3  # right half is class 3
    ids = cluster_groups([maps], [classes_present(mask)], [0], size=(8, 8), pixels=True, seed=0, settings=FAST)[0]
    score = match_group(ids, mask, num_classes=4, num_clusters=2)
    assert score.miou == pytest.approx(1.0)
    assert sorted(score.mapping.tolist()) == [0, 3]


def test_unmatched_clusters_count_as_background():
    ids = np.array([[0, 1, 2, 2]])
    mask = np.array([[1, 1, 0, 0]])  # cluster 0 and 1 split class 1; only one of them can match it
    score = match_group(ids, mask, num_classes=2, num_clusters=3)
    # class 1 matched to one half (IoU 0.5 for it); the other half is background: bg IoU = 2 / 3
    assert score.miou == pytest.approx((0.5 + 2 / 3) / 2)


def test_groups_do_not_depend_on_their_batch_mates_and_seeds_matter():
    torch.manual_seed(1)
    a, b = torch.randn(2, 5, 4, 4), torch.randn(3, 5, 4, 4)
    alone = cluster_groups([a], [3], [7], size=(8, 8), pixels=True, seed=0, settings=FAST)[0]
    together = cluster_groups([b, a], [4, 3], [3, 7], size=(8, 8), pixels=True, seed=0, settings=FAST)[1]
    assert np.array_equal(alone, together)
    other_seed = cluster_groups([a], [3], [7], size=(8, 8), pixels=True, seed=1, settings=FAST)[0]
    assert other_seed.shape == alone.shape


def test_group_pca_is_fitted_on_the_group_alone():
    torch.manual_seed(2)
    x = torch.randn(2, 30, 3, 3)
    z = group_pca(x, dim=4)
    assert z.shape == (2, 4, 3, 3)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    torch.testing.assert_close(flat.mean(0), torch.zeros(4), atol=1e-5, rtol=0)  # centred on the group
    var = flat.var(0, unbiased=False)
    assert bool((var[:-1] >= var[1:] - 1e-5).all())  # components by decreasing variance
    assert group_pca(x, dim=50).shape[1] == 18  # capped by the group's 18 patches
