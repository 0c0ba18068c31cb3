import numpy as np
import pytest

from timetuning.data.sampling import min_frames_needed, sample_clips, video_rng


def test_uniform_clips_are_distinct_sorted_and_in_range():
    clips = sample_clips(50, sampler="uniform", frames_per_clip=4, stride=1, clips_per_video=20, rng=video_rng(0, "v"))
    assert len(clips) == 20
    for c in clips:
        assert len(set(c.tolist())) == 4 and np.all(np.diff(c) > 0) and c.min() >= 0 and c.max() < 50
    # over many clips the frames cover the whole video, not just its start
    assert max(c.max() for c in clips) > 40 and min(c.min() for c in clips) < 10


def test_dense_clips_have_the_stride():
    clips = sample_clips(30, sampler="dense", frames_per_clip=4, stride=3, clips_per_video=10, rng=video_rng(0, "v"))
    for c in clips:
        assert np.all(np.diff(c) == 3) and c.max() < 30


def test_too_short_gives_no_clip():
    assert min_frames_needed("dense", 4, 3) == 10
    assert sample_clips(9, sampler="dense", frames_per_clip=4, stride=3, clips_per_video=2, rng=video_rng(0, "v")) == []
    assert sample_clips(3, sampler="uniform", frames_per_clip=4, stride=1, clips_per_video=2,
                        rng=video_rng(0, "v")) == []
    with pytest.raises(ValueError, match="unknown sampler"):
        min_frames_needed("random", 4, 1)


def test_clips_depend_only_on_seed_and_video_id():
    a = sample_clips(100, sampler="uniform", frames_per_clip=4, stride=1, clips_per_video=3, rng=video_rng(7, "x"))
    b = sample_clips(100, sampler="uniform", frames_per_clip=4, stride=1, clips_per_video=3, rng=video_rng(7, "x"))
    c = sample_clips(100, sampler="uniform", frames_per_clip=4, stride=1, clips_per_video=3, rng=video_rng(7, "y"))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
