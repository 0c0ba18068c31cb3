"""Labeled sets as annotation tools export them (labelme's VOC export, CVAT's Segmentation mask export, a plain
folder of images and masks) go through the shard_eval stage with one params entry and no file moved; every data
error names the file or key and how to fix it."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.evalsets import (
    CVAT_COLOURS,
    ROAD_CLASSES,
    cvat_mask_export,
    labelme_voc_export,
    plain_folder,
    road_label,
)
from timetuning.data.datasets import DatasetError, read_sequences
from timetuning.data.eval_shards import shard_eval_set
from timetuning.data.shards import decode_mask, iter_shard, list_shards
from timetuning.infra.config import EvalSetParams


def _set(root, **kw):
    return EvalSetParams(name="s", layout="voc", root=str(root), short_side=32, **kw)


def _run_stage(tmp_path, monkeypatch, entry: dict, name: str = "road") -> dict:
    """The shard_eval stage on one set given by one params.yaml entry; returns its manifest."""
    from stages.shard_eval import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"val_set": None}, "shard_eval": {
        "output_dir": "out", "on_error": "raise", "sets": {name: entry | {"short_side": 32}}}}))
    assert main(["--params", "params.yaml", "--set", name]) == 0
    return json.loads((tmp_path / "out" / name / "manifest.json").read_text())


def _names(set_dir) -> list[str]:
    return [c["name"] for c in json.loads((set_dir / "labels.json").read_text())["classes"]]


def _masks(set_dir, split) -> dict[str, np.ndarray]:
    return {s["__key__"]: decode_mask(s["f0.png"]) for s in iter_shard(list_shards(set_dir, split)[0])}


def _nearest(label: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(label.astype(np.uint8)).resize((width, height), Image.NEAREST))


def test_a_labelme_voc_export_goes_through_the_stage_as_it_comes(tmp_path, monkeypatch, caplog):
    """labelme2voc's output, untouched: masks from SegmentationClassPNG/ (SegmentationClass/ holds .npy), every
    image of JPEGImages/ as the one split (no ImageSets/), class names from class_names.txt (_background_ shown as
    background); the manifest and the log say what was chosen."""
    root = labelme_voc_export(tmp_path / "export")
    with caplog.at_level("INFO"):
        manifest = _run_stage(tmp_path, monkeypatch, {"layout": "voc", "root": str(root), "splits": ["val"],
                                                      "classes": "class_names.txt"})
    set_dir = tmp_path / "out" / "road"
    assert _names(set_dir) == ROAD_CLASSES and manifest["warnings"] == [] and manifest["skipped"] == []
    assert manifest["splits"] == {"val": 5}
    assert manifest["split_sources"] == {"val": f"every image in {root / 'JPEGImages'} (no split file "
                                                f"{root / 'ImageSets/Segmentation/val.txt'})"}
    assert manifest["notes"] == [
        f"split 'val': every image in {root / 'JPEGImages'} (no split file {root / 'ImageSets/Segmentation/val.txt'})"
        "; to choose the images, list them in shard_eval.sets.road.video_lists.val",
        "masks: SegmentationClassPNG/ (SegmentationClass/ holds no .png: labelme's VOC export); set "
        "shard_eval.sets.road.mask_dir to choose another folder"]
    assert all(note in caplog.text for note in manifest["notes"])
    masks = _masks(set_dir, "val")
    assert sorted(masks) == [f"frame_{t:06d}" for t in range(5)]
    for t in range(5):
        label = road_label(563, 1000, t)
        stored = masks[f"frame_{t:06d}"]
        assert stored.shape == (32, 57)
        # labelme's ids as they are (car = 1, named car), its -1 (__ignore__) as 255
        np.testing.assert_array_equal(stored, _nearest(np.where(label == -1, 255, label), 57, 32))
        assert _names(set_dir)[int(stored[18, int((0.1 + 0.1 * t) * 57) + 4])] == "car"
        assert (stored[:3, :5] == 255).all() and _names(set_dir)[int(stored[-1, 0])] == "track"


def test_labelmes_labels_txt_with_ignore_gives_labelmes_ids(tmp_path):
    """labelme's labels.txt starts with __ignore__ (id -1): used as the class file it gives the ids labelme wrote
    (_background_ = 0), the same shards as class_names.txt; labelme's .npy labels read as the PNGs do."""
    root = labelme_voc_export(tmp_path / "export", frames=2, h=60, w=100)
    by_names = shard_eval_set(_set(root, splits=["val"], classes="class_names.txt"), tmp_path / "a", progress=False)
    by_labels = shard_eval_set(_set(root, splits=["val"], classes=str(tmp_path / "labels.txt")), tmp_path / "b",
                               progress=False)
    from_npy = shard_eval_set(_set(root, splits=["val"], classes=["__ignore__", "_background_", "car", "track"],
                                   mask_dir="SegmentationClass"), tmp_path / "c", progress=False)
    assert _names(tmp_path / "a" / "s") == _names(tmp_path / "b" / "s") == _names(tmp_path / "c" / "s") == \
        ROAD_CLASSES
    assert by_names["classes_seen"] == by_labels["classes_seen"] == from_npy["classes_seen"] == [0, 1, 2]
    a, b, c = (_masks(tmp_path / x / "s", "val") for x in "abc")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a[key], c[key])
        assert set(np.unique(a[key])) == {0, 1, 2, 255}
    (root / "bad.txt").write_text("_background_\ncar\n__ignore__\ntrack\n")
    with pytest.raises(DatasetError, match=r"bad.txt\): __ignore__ at id 2: labelme's ignore label is read only as "
                                           r"the first line .*; move it to the first line or remove it"):
        read_sequences(_set(root, splits=["val"], classes="bad.txt"), "val")


def test_a_cvat_segmentation_mask_export_maps_colours_to_classes(tmp_path, monkeypatch):
    """CVAT's RGB masks become class ids through its labelmap.txt, read from the set's root by itself; its split
    file is ImageSets/Segmentation/default.txt."""
    root = cvat_mask_export(tmp_path / "cvat")
    manifest = _run_stage(tmp_path, monkeypatch, {"layout": "voc", "root": str(root), "splits": ["default"]})
    set_dir = tmp_path / "out" / "road"
    assert _names(set_dir) == list(CVAT_COLOURS) and manifest["splits"] == {"default": 4}
    assert manifest["split_sources"] == {"default": str(root / "ImageSets/Segmentation/default.txt")}
    masks = _masks(set_dir, "default")
    for t in range(4):
        expected = _nearest(np.clip(road_label(60, 96, t), 0, 2), 51, 32)
        np.testing.assert_array_equal(masks[f"frame_{t:06d}"], expected)
        assert set(np.unique(expected)) == {0, 1, 2}
    # classes orders them: car is then id 2; colours given in params instead of the file do the same
    reordered = {"layout": "voc", "root": str(root), "splits": ["default"], "classes": ["background", "track", "car"]}
    _run_stage(tmp_path, monkeypatch, reordered)
    swapped = np.array([0, 2, 1, 255], np.uint8)
    assert _names(set_dir) == ["background", "track", "car"]
    assert all(np.array_equal(m, swapped[np.minimum(masks[k], 3)]) for k, m in _masks(set_dir, "default").items())
    (root / "labelmap.txt").unlink()
    _run_stage(tmp_path, monkeypatch, {"layout": "voc", "root": str(root), "splits": ["default"],
                                       "color_map": {n: list(c) for n, c in CVAT_COLOURS.items()}})
    assert all(np.array_equal(m, masks[k]) for k, m in _masks(set_dir, "default").items())


def test_an_unknown_colour_names_the_file_the_colour_and_the_fix(tmp_path):
    root = cvat_mask_export(tmp_path / "cvat", frames=2)
    path = root / "SegmentationClass" / "frame_000001.png"
    rgb = np.array(Image.open(path))
    rgb[:5, :4] = (10, 20, 30)
    Image.fromarray(rgb).save(path)
    with pytest.raises(DatasetError) as err:
        shard_eval_set(_set(root, splits=["default"]), tmp_path / "o", on_error="raise", progress=False)
    assert str(err.value) == (
        f"{path}: colour(s) (10, 20, 30) at 20 pixel(s) not in the colour map {root / 'labelmap.txt'}: add a class "
        "line for each (e.g. <name>:10,20,30:: in labelmap.txt, or <name>: [10, 20, 30] in shard_eval.sets.s."
        "color_map), or repaint those pixels")
    manifest = shard_eval_set(_set(root, splits=["default"]), tmp_path / "o", progress=False)
    assert [s["video_id"] for s in manifest["skipped"]] == ["frame_000001"] and manifest["splits"] == {"default": 1}
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\ncar 250 50 83\n")
    with pytest.raises(DatasetError, match=r"labelmap.txt:3: 'car 250 50 83' is not name:r,g,b \(CVAT's labelmap.txt "
                                           r"has lines like car:250,50,83::\); fix the line"):
        read_sequences(_set(root, splits=["default"]), "default")


def test_colour_masks_without_a_colour_map_say_how_to_give_one(tmp_path):
    root = cvat_mask_export(tmp_path / "cvat", frames=1)
    (root / "labelmap.txt").unlink()
    with pytest.raises(DatasetError) as err:
        shard_eval_set(_set(root, splits=["default"], classes=ROAD_CLASSES), tmp_path / "o", on_error="raise",
                       progress=False)
    assert str(err.value) == (
        f"{root / 'SegmentationClass/frame_000000.png'}: mask mode 'RGB' (a colour mask), expected a palette or "
        "grayscale PNG; set shard_eval.sets.s.color_map to the export's labelmap.txt (CVAT writes one; labelmap.txt "
        "at the set's root is read by itself) or to {name: [r, g, b]}, or export palette/grayscale masks whose values "
        "are class ids")


def test_a_plain_folder_of_images_and_masks(tmp_path, monkeypatch):
    root = plain_folder(tmp_path / "shots")
    manifest = _run_stage(tmp_path, monkeypatch, {"layout": "voc", "root": str(root), "image_dir": "images",
                                                  "mask_dir": "masks", "splits": ["val"], "classes": ROAD_CLASSES})
    assert manifest["splits"] == {"val": 3} and _names(tmp_path / "out" / "road") == ROAD_CLASSES
    assert manifest["notes"][0].startswith(f"split 'val': every image in {root / 'images'} (no split file")
    for t, mask in enumerate(_masks(tmp_path / "out" / "road", "val").values()):
        label = road_label(48, 80, t)
        np.testing.assert_array_equal(mask, _nearest(np.where(label == -1, 255, label), 53, 32))


def test_split_file_errors_name_the_file_and_the_fix(tmp_path):
    labelme = labelme_voc_export(tmp_path / "export", frames=1, h=40, w=60)
    with pytest.raises(DatasetError) as err:
        read_sequences(_set(labelme, splits=["train", "val"], classes="class_names.txt"), "train")
    assert str(err.value).splitlines() == [
        f"{labelme / 'ImageSets/Segmentation'}/{split}.txt: split file not found (shard_eval.sets.s.splits): add it "
        f"(one ID per line), or list the IDs in shard_eval.sets.s.video_lists: {{{split}: splits/s/<file>.txt}}; every "
        "image is used only by a set with one split and no split files (this set has 2 splits: ['train', 'val'])"
        for split in ("train", "val")]
    cvat = cvat_mask_export(tmp_path / "cvat", frames=1)
    with pytest.raises(DatasetError) as err:
        read_sequences(_set(cvat, splits=["val"]), "val")
    assert str(err.value) == (
        f"{cvat / 'ImageSets/Segmentation/val.txt'}: split file not found (shard_eval.sets.s.splits): add it (one ID "
        "per line), or list the IDs in shard_eval.sets.s.video_lists: {val: splits/s/<file>.txt}; "
        f"{cvat / 'ImageSets/Segmentation'} has default.txt: to use it, set shard_eval.sets.s.splits to [default]")
    with pytest.raises(DatasetError, match=r"video_lists.val: .*nope.txt not found: write the IDs of the split there"):
        read_sequences(_set(cvat, splits=["val"], video_lists={"val": str(tmp_path / "nope.txt")}), "val")


def test_mask_errors_name_the_file_and_the_fix(tmp_path):
    root = plain_folder(tmp_path / "shots")
    params = _set(root, image_dir="images", mask_dir="masks", splits=["val"], classes=ROAD_CLASSES)
    (root / "masks" / "shot1.png").unlink()
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "masks" / "shot2.png")
    manifest = shard_eval_set(params, tmp_path / "o", progress=False)
    assert {s["video_id"]: s["reason"] for s in manifest["skipped"]} == {
        "shot1": f"{root / 'images/shot1.png'}: frame has no mask ({root / 'masks/shot1.png'} not found): masks are "
                 f"read from {root / 'masks'}: add the mask there, set shard_eval.sets.s.mask_dir to the folder "
                 "holding the masks, or leave the image out of the split",
        "shot2": f"{root / 'masks/shot2.png'}: mask size (12, 10) differs from frame size (80, 48) (shot2.png): a "
                 "mask is paired with the image of the same file name and must have its size; re-export the mask at "
                 "the image's size"}
    with pytest.raises(DatasetError) as err:
        shard_eval_set(_set(root, image_dir="images", mask_dir="masks", splits=["val"], classes=["background", "car"]),
                       tmp_path / "o", on_error="raise", progress=False)
    assert str(err.value) == (
        f"{root / 'masks/shot0.png'}: unknown class index/palette value(s) [2] (the set has 2 classes, ids 0-1; its "
        "class list: shard_eval.sets.s.classes): name every id in shard_eval.sets.s.classes (id 0 first; 255 = "
        "ignore), or fix the mask")
    with pytest.raises(DatasetError) as err:
        read_sequences(_set(root, image_dir="photos", mask_dir="labels", splits=["val"]), "val")
    assert str(err.value).splitlines() == [
        f"{root / 'photos'}: image folder not found (shard_eval.sets.s.image_dir): set shard_eval.sets.s.image_dir to "
        f"the folder of images under {root} (default JPEGImages)",
        f"{root / 'labels'}: mask folder not found (shard_eval.sets.s.mask_dir): set shard_eval.sets.s.mask_dir to "
        f"the folder of masks under {root} (default SegmentationClass, or labelme's SegmentationClassPNG)"]
