import numpy as np
import pytest

from timetuning.clustering import cluster_and_match
from timetuning.temporal import label_stability, mean_stability


def _clip_labels(frames=3, size=2):
    labels = np.zeros((frames, size, size), int)
    labels[:, 0, 0] = 1
    return labels


def test_steady_and_flickering_predictions():
    labels = _clip_labels()
    steady = labels.copy()
    flicker = labels.copy()
    flicker[1] = 1 - flicker[1]
    assert label_stability(steady, labels) == 1.0
    assert label_stability(flicker, labels) == 0.0
    assert mean_stability([(steady, labels), (flicker, labels)]) == 0.5


def test_known_fraction_counts_only_patches_whose_ground_truth_stays():
    labels = np.zeros((2, 2, 2), int)
    labels[1, 1, 1] = 1  # this patch changes class: not a correspondence, never counted
    pred = np.zeros((2, 2, 2), int)
    pred[1, 0, 0] = 3  # one of the three corresponding patches flickers
    pred[1, 1, 1] = 7
    assert label_stability(pred, labels) == pytest.approx(2 / 3)


def test_ignore_pixels_are_never_correspondences():
    labels = _clip_labels()
    labels[1] = 255
    assert np.isnan(label_stability(labels.copy(), labels))  # every frame pair touches the ignored frame
    labels = _clip_labels(frames=2)
    labels[1, 1, 1] = 255
    pred = labels.copy()
    pred[1, 1, 1] = 9  # the ignored patch may do anything
    assert label_stability(pred, labels) == 1.0


def test_mean_stability_weights_clips_by_patches():
    small = _clip_labels(frames=2, size=1)  # 1 correspondence, flickers
    big = _clip_labels(frames=2, size=3)  # 9 correspondences, steady
    flicker = small.copy()
    flicker[1] = 5
    assert mean_stability([(flicker, small), (big.copy(), big)]) == pytest.approx(9 / 10)
    assert np.isnan(mean_stability([]))
    with pytest.raises(ValueError, match="differ in shape"):
        label_stability(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


def test_clip_clustering_is_at_least_as_stable_as_frame_clustering():
    """Per-frame k-means sees each frame alone; a frame missing a class gets its clusters matched afresh, so its
    patches can change class between frames where the per-clip clustering keeps them."""
    rng = np.random.default_rng(0)
    frames, grid, dim = 4, 6, 8
    labels = np.zeros((frames, grid, grid), int)
    labels[:, :, 3:] = 1
    labels[:, 4:, :2] = 2
    centres = rng.normal(0, 3, (3, dim))
    drift = rng.normal(0, 1.0, (frames, 1, 1, dim))  # each frame's features shifted: harder for per-frame
    feats = centres[labels] + drift + rng.normal(0, 0.4, (frames, grid, grid, dim))
    x, y = feats.reshape(-1, dim), labels.reshape(-1)
    frame_ids = np.repeat(np.arange(frames), grid * grid)
    clip = cluster_and_match(x, y, np.zeros_like(y), num_classes=3, num_clusters=3, seed=0)
    per_frame = cluster_and_match(x, y, frame_ids, num_classes=3, num_clusters=3, seed=0)
    clip_stability = label_stability(clip.predictions.reshape(labels.shape), labels)
    frame_stability = label_stability(per_frame.predictions.reshape(labels.shape), labels)
    assert clip_stability == pytest.approx(1.0)
    assert frame_stability <= clip_stability
