import numpy as np
import pytest

from timetuning.clustering import cluster_and_match, kmeans, reduce_features


def _blobs(n_per=60, classes=3, dim=20, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, dim))
    labels = np.repeat(np.arange(classes), n_per)
    return centres[labels] + rng.normal(0, spread, (labels.size, dim)), labels


def test_separable_features_reach_full_miou_in_every_scope():
    x, y = _blobs()
    for groups in (np.zeros_like(y), np.arange(y.size) % 3):  # one dataset-wide group, or three mixed groups
        result = cluster_and_match(x, y, groups, num_classes=3, num_clusters=3, seed=0)
        assert result.miou == pytest.approx(1.0)
        assert np.array_equal(result.predictions, y)


def test_random_features_score_low_and_ignore_is_respected():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 10))
    y = rng.integers(0, 3, 300)
    y[:50] = 255
    result = cluster_and_match(x, y, np.zeros(300, int), num_classes=3, num_clusters=3, seed=0)
    assert result.miou < 0.45 and result.confusion.sum() == 250


def test_overclustering_greedy_matching():
    x, y = _blobs(classes=3)
    result = cluster_and_match(x, y, np.zeros_like(y), num_classes=3, num_clusters=9, seed=0, matching="greedy")
    assert result.miou == pytest.approx(1.0)


def test_seeded_and_bounded():
    x, _ = _blobs()
    a = kmeans(reduce_features(x, 5, 0), 3, seed=4)
    b = kmeans(reduce_features(x, 5, 0), 3, seed=4)
    assert np.array_equal(a, b)
    assert kmeans(x[:2], 5, seed=0).max() <= 1  # k capped by the number of points
    assert reduce_features(x, 50, 0).shape == (180, 20)
