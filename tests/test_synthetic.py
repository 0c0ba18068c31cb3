import numpy as np

from timetuning.synthetic import CLASS_DESIGNS, generate_video, write_video_file
from timetuning.video import decode_video


def _video(seed):
    return generate_video(np.random.default_rng(seed), frames=6, width=64, height=48, num_classes=4, objects=3)


def test_deterministic_and_labeled():
    a, b = _video(1), _video(1)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.frames, _video(2).frames)
    assert a.frames.shape == (6, 48, 64, 3) and a.masks.shape == (6, 48, 64)
    assert set(np.unique(a.masks)) == {0, 1, 2, 3}  # background + every class with 3 objects


def test_objects_move_and_background_pans():
    v = _video(3)
    assert not np.array_equal(v.masks[0], v.masks[-1])
    bg = v.masks[0] == 0
    both_bg = bg & (v.masks[-1] == 0)
    assert np.abs(v.frames[0][both_bg].astype(int) - v.frames[-1][both_bg].astype(int)).mean() > 2


def test_classes_differ_by_shape_and_texture_not_only_colour():
    shapes = [s for s, _ in CLASS_DESIGNS]
    textures = [t for _, t in CLASS_DESIGNS]
    assert len(set(shapes)) == len(shapes) and len(set(textures)) == len(textures)


def test_encoded_video_round_trips_and_is_reproducible(tmp_path):
    v = _video(4)
    write_video_file(v.frames, tmp_path / "a.mp4", fps=6)
    write_video_file(v.frames, tmp_path / "b.mp4", fps=6)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    decoded = decode_video(tmp_path / "a.mp4", fps=6, short_side=48)
    assert decoded.num_frames == 6
    assert np.abs(decoded.frames.astype(int) - v.frames.astype(int)).mean() < 12  # lossy but faithful
