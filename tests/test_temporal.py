import numpy as np
import pytest

from timetuning.eval.temporal import label_stability, mean_stability, stable_counts


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


def test_stable_counts_are_kept_and_corresponding_pixels():
    labels = np.array([[[1, 1, 0]], [[1, 0, 0]], [[1, 0, 255]]])
    pred = np.array([[[2, 2, 0]], [[2, 1, 0]], [[3, 1, 1]]])
    # pairs (0,1): positions 0 and 2 keep their truth, predictions kept at both; (1,2): positions 0, 1 kept truth
    # (position 2 turns ignore), prediction kept at 1 only
    assert stable_counts(pred, labels).tolist() == [3, 4]
