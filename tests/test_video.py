import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.media import make_video
from timetuning.video import VideoError, decode_video, output_size, probe_video


def test_probe_and_decode_resamples_and_scales(tmp_path):
    path = make_video(tmp_path / "a.mp4", size="160x120", rate=25, seconds=2.0)
    info = probe_video(path)
    assert (info.width, info.height) == (160, 120) and info.fps == pytest.approx(25)
    video = decode_video(path, fps=5, short_side=48)
    assert video.frames.shape == (10, 48, 64, 3)
    np.testing.assert_allclose(video.timestamps, np.arange(10) / 5)
    assert video.frames.std() > 10  # real picture content, not a blank buffer


def test_center_crop_and_odd_sizes(tmp_path):
    path = make_video(tmp_path / "odd.mkv", size="99x75", codec="ffv1", pix_fmt="yuv444p")
    assert output_size(99, 75, 32, "none") == (42, 32)
    video = decode_video(path, fps=4, short_side=32, crop="center")
    assert video.frames.shape[1:] == (32, 32, 3)
    video = decode_video(path, fps=4, short_side=32)
    assert video.frames.shape[1:] == (32, 42, 3)


def test_grayscale_and_portrait_video(tmp_path):
    path = make_video(tmp_path / "gray.avi", size="64x96", codec="ffv1", pix_fmt="gray")
    video = decode_video(path, fps=4, short_side=32)
    assert video.frames.shape[1:] == (48, 32, 3)
    assert np.array_equal(video.frames[..., 0], video.frames[..., 1])  # gray -> equal RGB channels


def test_variable_frame_rate_lands_on_a_constant_grid(tmp_path):
    # drop irregular frames so the stored timestamps are uneven (VFR)
    path = make_video(tmp_path / "vfr.mp4", rate=30, seconds=2.0, vfr=True,
                      extra_vf="select='not(eq(mod(n\\,7)\\,3))*not(eq(mod(n\\,5)\\,1))'")
    video = decode_video(path, fps=10, short_side=32)
    assert abs(video.num_frames - 20) <= 1


def test_bad_files_raise_clear_errors(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="empty file"):
        probe_video(empty)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 10)
    with pytest.raises(VideoError, match="notes.mp4: not a readable video"):
        probe_video(text)
    with pytest.raises(VideoError, match="not a file"):
        probe_video(tmp_path / "missing.webm")


def test_truncated_video_fails_or_decodes_a_prefix(tmp_path):
    path = make_video(tmp_path / "t.mp4", seconds=3.0)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    try:
        video = decode_video(cut, fps=10, short_side=32)
    except VideoError as err:
        assert "cut.mp4" in str(err)
    else:
        assert 0 < video.num_frames < 30


def _probe_as_nobody(path) -> str:
    """probe_video in a forked child that dropped root (root reads files whatever their permission bits)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody, report the error message (or "ok") through the pipe
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                probe_video(path)
                msg = "ok"
            except VideoError as err:
                msg = str(err)
            os.write(write, msg.encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        return f.read()


def test_unreadable_file(tmp_path):
    if os.geteuid() != 0:
        path = make_video(tmp_path / "secret.mp4")
        path.chmod(0)
        with pytest.raises(VideoError, match="permission denied"):
            probe_video(path)
        return
    shared = Path(tempfile.mkdtemp(prefix="tt-perm-"))  # /tmp: reachable by nobody, unlike pytest's tmp_path
    try:
        shared.chmod(0o755)
        path = make_video(shared / "secret.mp4")
        path.chmod(0o644)
        assert _probe_as_nobody(path) == "ok"  # the same user can read it while the bits allow
        path.chmod(0)
        assert "permission denied" in _probe_as_nobody(path)
    finally:
        shutil.rmtree(shared)
