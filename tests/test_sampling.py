import numpy as np
import pytest

from timetuning.data.sampling import clip_windows, min_frames_needed, sample_clips, video_rng, window_frames


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


def test_a_bounded_uniform_clip_stays_inside_one_window_of_the_video():
    """An 80 s video at 8 fps (640 frames) with clips of at most 10 s: windows of 81 frames (0 to 10 s apart),
    ceil(640 / 81) = 8 of them, at 0, 79, 159, ... (i * 559 // 7) up to 559, the last ending on frame 639; clip c of
    8 lies in window c, its 4 frames drawn uniformly inside it."""
    assert window_frames(10.0, 8.0, 4) == 81
    assert window_frames(0.3, 8.0, 4) == 4  # never fewer frames than one clip
    assert window_frames(None, 8.0, 4) is None
    starts = clip_windows(640, 81)
    assert starts == [0, 79, 159, 239, 319, 399, 479, 559]
    clips = sample_clips(640, sampler="uniform", frames_per_clip=4, stride=1, clips_per_video=8,
                         rng=video_rng(0, "long"), window=81)
    reference = video_rng(0, "long")  # the same draws, written out: window start + 4 distinct of its 81 frames
    for c, (clip, start) in enumerate(zip(clips, starts)):
        expected = start + np.sort(reference.choice(81, size=4, replace=False))
        assert clip.tolist() == expected.tolist(), c
        assert start <= clip.min() and clip.max() <= start + 80 and (clip.max() - clip.min()) / 8.0 <= 10.0
    # fewer clips than windows: spread over them (clip c in window c * 8 // 3); more: every window, in order
    three = sample_clips(640, sampler="uniform", frames_per_clip=4, stride=1, clips_per_video=3,
                         rng=video_rng(0, "long"), window=81)
    assert [c * 8 // 3 for c in range(3)] == [0, 2, 5]
    assert [c.min() >= s and c.max() <= s + 80 for c, s in zip(three, [0, 159, 399])] == [True] * 3
    twenty = sample_clips(640, sampler="uniform", frames_per_clip=4, stride=1, clips_per_video=20,
                          rng=video_rng(0, "long"), window=81)
    assert [c * 8 // 20 for c in range(20)] == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 5, 5, 6, 6, 6, 7, 7]
    assert all(starts[c * 8 // 20] <= clip.min() and clip.max() <= starts[c * 8 // 20] + 80
               for c, clip in enumerate(twenty))


def test_a_video_within_the_bound_gets_the_unbounded_clips():
    """21 frames and a window of 21 (or more): one window, the same draws as without a bound, so shards of short
    videos (the demo's, at most 10 s) do not change; 22 frames: two windows, at 0 and 1."""
    free = sample_clips(21, sampler="uniform", frames_per_clip=4, stride=1, clips_per_video=5, rng=video_rng(3, "v"))
    for window in (21, 30):
        bounded = sample_clips(21, sampler="uniform", frames_per_clip=4, stride=1, clips_per_video=5,
                               rng=video_rng(3, "v"), window=window)
        assert [c.tolist() for c in bounded] == [c.tolist() for c in free]
    assert clip_windows(21, 21) == [0] and clip_windows(22, 21) == [0, 1] and clip_windows(21, 9) == [0, 6, 12]
    dense = sample_clips(40, sampler="dense", frames_per_clip=4, stride=3, clips_per_video=3, rng=video_rng(0, "d"),
                         window=5)  # the dense sampler's span is its stride's: no window
    assert all(np.all(np.diff(c) == 3) for c in dense)
