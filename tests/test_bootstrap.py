import numpy as np
import pytest

from timetuning.eval.bootstrap import paired_delta, resample_weights
from timetuning.eval.comparison import compare_models, verdict
from timetuning.eval.scores import ConfusionScores, GroupScores, RatioScores


def test_resamples_draw_whole_videos_with_replacement():
    w = resample_weights(videos=5, samples=2000, seed=0)
    assert w.shape == (2000, 5) and (w.sum(1) == 5).all()
    assert np.allclose(w.mean(0), 1.0, atol=0.1)
    assert np.array_equal(w, resample_weights(5, 2000, 0))


def test_interval_of_a_mean_difference_matches_the_normal_theory():
    """Per-video differences with a known spread: the bootstrap interval of their mean is the normal interval
    mean +- 1.96 sd / sqrt(n) (to sampling error), and the point delta is the plain difference of means."""
    rng = np.random.default_rng(1)
    n = 400
    base = rng.uniform(0.3, 0.5, n)
    tuned = base + rng.normal(0.02, 0.05, n)
    a = GroupScores(np.arange(n), base[None])
    b = GroupScores(np.arange(n), tuned[None])
    out = paired_delta(a, b, resample_weights(n, 4000, 2))
    diff = tuned - base
    half = 1.96 * diff.std() / np.sqrt(n)
    assert out["delta"] == pytest.approx(diff.mean())
    assert out["ci_low"] == pytest.approx(diff.mean() - half, abs=0.15 * half)
    assert out["ci_high"] == pytest.approx(diff.mean() + half, abs=0.15 * half)


def test_groups_of_one_video_move_together():
    """Frames of the same video are resampled together: a video with many frames weighs by its frames."""
    scores = GroupScores(np.array([0, 0, 0, 1]), np.array([[1.0, 1.0, 1.0, 0.0]]))
    assert scores.per_seed()[0] == pytest.approx(0.75)
    assert scores.per_seed(np.array([0.0, 2.0]))[0] == 0.0  # only video 1 drawn, twice
    assert scores.per_seed(np.array([2.0, 0.0]))[0] == 1.0


def test_confusion_scores_sum_videos_then_match():
    # video 0: class 1 pixels all in cluster 1; video 1: the same class in cluster 0 (per-dataset clusters are
    # matched once over the summed videos)
    conf = np.zeros((1, 2, 2, 2))
    conf[0, 0] = [[10, 0], [0, 10]]
    conf[0, 1] = [[0, 10], [10, 0]]
    scores = ConfusionScores(conf, "hungarian")
    assert scores.per_seed(np.array([1.0, 0.0]))[0] == pytest.approx(1.0)
    assert scores.per_seed(np.array([1.0, 1.0]))[0] == pytest.approx(1 / 3)  # half of each class right: IoU 1/3
    ratio = RatioScores(np.array([[[3, 4], [0, 4]]]))
    assert ratio.per_seed()[0] == pytest.approx(3 / 8) and ratio.per_seed(np.array([1, 0]))[0] == 0.75


def test_seed_std_is_the_spread_of_the_per_seed_difference():
    a = GroupScores(np.arange(3), np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]]))
    b = GroupScores(np.arange(3), np.array([[0.2, 0.3, 0.4], [0.4, 0.5, 0.6]]))
    out = paired_delta(a, b, resample_weights(3, 200, 0))
    assert out["delta"] == pytest.approx(0.2) and out["seed_std"] == pytest.approx(0.1)


MAIN = {"delta": 0.03, "ci_low": 0.01, "ci_high": 0.05, "confidence": 0.95}


def test_verdict_is_robust_only_when_the_interval_excludes_zero_and_variants_agree():
    agree = {"l2_no_pca": {"delta": 0.01}, "fixed_k": {"delta": 0.02}}
    v = verdict(MAIN, agree)
    assert v["robust"] and v["direction"] == "helps" and "robust" in v["text"] and "+3.0 points" in v["text"]
    v = verdict(MAIN, {**agree, "patch_level": {"delta": -0.004}})
    assert not v["robust"] and v["disagreeing_variants"] == ["patch_level"] and "patch_level -0.4" in v["text"]
    v = verdict({**MAIN, "ci_low": -0.01}, agree)
    assert not v["robust"] and "interval includes zero" in v["text"]
    v = verdict({"delta": -0.03, "ci_low": -0.05, "ci_high": -0.01}, {"l2_no_pca": {"delta": -0.02}})
    assert v["robust"] and v["direction"] == "hurts"


def test_every_verdict_speaks_in_points_of_100_temporal_stability_included():
    """Temporal stability is a share of patches, like mIoU a fraction: its verdict reads -2.5 points, not -0.0."""
    stable = {"temporal_stability_per_frame": RatioScores(np.array([[[90, 100], [85, 100], [88, 100]]]))}
    less = {"temporal_stability_per_frame": RatioScores(np.array([[[87, 100], [83, 100], [85, 100]]]))}
    out = compare_models(stable, less, {}, {}, 3, samples=200, confidence=0.95, seed=0)
    text = out["verdicts"]["temporal_stability_per_frame"]["text"]
    assert out["deltas"]["temporal_stability_per_frame"]["delta"] == pytest.approx(-8 / 300)
    assert "-2.7 points" in text, text
