import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.media import make_audio, make_phone_video, make_video
from timetuning.data.video import VideoError, check_geometry, decode_video, output_size, probe_video


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


def test_rotation_metadata_gives_upright_frames_at_the_displayed_size(tmp_path):
    upright = make_video(tmp_path / "upright.mp4", size="64x96", codec="libx264")  # portrait, as filmed
    phone = make_phone_video(tmp_path / "phone.mov", upright)  # stored 96x64, displayed 64x96
    info = probe_video(phone)
    assert (info.width, info.height, info.coded_size) == (64, 96, (96, 64)) and abs(info.rotation) == 90
    video = decode_video(phone, fps=5, short_side=32)
    assert video.frames.shape[1:] == (48, 32, 3)  # portrait, not squashed into 48x32 landscape
    reference = decode_video(upright, fps=5, short_side=32).frames.astype(float)
    assert video.num_frames == reference.shape[0]
    same = np.abs(video.frames - reference).mean()
    upside_down = np.abs(video.frames[:, ::-1, ::-1] - reference).mean()
    assert same < 6 < upside_down / 4, (same, upside_down)  # the picture itself is upright (codec noise only)


def test_non_square_pixels_are_stored_at_the_displayed_aspect(tmp_path):
    wide = make_video(tmp_path / "wide.mkv", size="128x64", codec="ffv1", pix_fmt="yuv444p")
    anamorphic = make_video(tmp_path / "anamorphic.mkv", size="128x64", codec="ffv1", pix_fmt="yuv444p",
                            extra_vf="scale=64:64,setsar=2/1")  # stored 64x64, pixels twice as wide as tall
    info = probe_video(anamorphic)
    assert (info.width, info.height) == (128, 64)
    a = decode_video(anamorphic, fps=5, short_side=32).frames.astype(float)
    assert a.shape[1:] == (32, 64, 3)
    assert np.abs(a - decode_video(wide, fps=5, short_side=32).frames).mean() < 8


def test_extreme_aspect_ratio_is_refused_before_decoding(tmp_path):
    strip = make_video(tmp_path / "strip.mp4", size="8000x8", seconds=0.5)
    info = probe_video(strip)
    with pytest.raises(VideoError, match=r"strip.mp4: aspect ratio 1000:1 \(8000x8\) is beyond "
                                         r"shard_videos.max_aspect_ratio 4:1 \(frames would be 128000x128\)"):
        check_geometry(info, 128, 4.0)
    check_geometry(probe_video(make_video(tmp_path / "tall.mp4", size="36x64")), 128, 4.0)  # 9:16 portrait is fine
    check_geometry(probe_video(make_video(tmp_path / "ultra.mp4", size="128x36")), 128, 4.0)  # 32:9 too


def test_max_frames_bounds_what_is_held_in_memory(tmp_path):
    path = make_video(tmp_path / "long.mp4", rate=10, seconds=3.0)
    whole = decode_video(path, fps=10, short_side=32)
    assert whole.num_frames == 30 and whole.cut_at is None
    cut = decode_video(path, fps=10, short_side=32, max_frames=7)
    assert cut.frames.shape[0] == 7 and cut.cut_at == 7
    assert np.array_equal(cut.frames, whole.frames[:7])  # the same first frames, the rest never decoded
    assert decode_video(path, fps=10, short_side=32, max_frames=30).cut_at is None  # exactly all: not cut


def test_audio_only_and_cover_art_are_not_videos(tmp_path):
    with pytest.raises(VideoError, match=r"song.mp4: no video stream \(only audio\)"):
        probe_video(make_audio(tmp_path / "song.mp4"))
    with pytest.raises(VideoError, match=r"album.mp4: no video stream \(only a cover picture and audio\)"):
        probe_video(make_audio(tmp_path / "album.mp4", cover_art=True))


def test_names_with_unicode_spaces_and_colons(tmp_path):
    for name in ("vidéo ü 名前 with space.mp4", "clip:1.mp4", "-dash.mp4"):
        path = make_video(tmp_path / "src.mp4", seconds=1.0).rename(tmp_path / name)
        assert decode_video(path, fps=5, short_side=32).num_frames == 5, name


def test_link_loops_and_broken_links_are_named(tmp_path):
    (tmp_path / "loop.mp4").symlink_to("loop.mp4")
    with pytest.raises(VideoError, match=r"loop.mp4: symbolic link loop"):
        probe_video(tmp_path / "loop.mp4")
    (tmp_path / "gone.mp4").symlink_to("nowhere.mp4")
    with pytest.raises(VideoError, match=r"gone.mp4: broken symbolic link \(to nowhere.mp4\)"):
        probe_video(tmp_path / "gone.mp4")
