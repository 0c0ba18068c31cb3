import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import timm
import torch

from timetuning.data.eval_shards import iter_eval_clips, shard_eval_set
from timetuning.data.synthetic import generate_video, write_davis_sequence
from timetuning.eval.extraction import extract_split, merge_parts, prefetch
from timetuning.eval.feature_store import FeatureSpool, feature_file, iter_feature_clips, read_features
from timetuning.eval.masks import patch_labels
from timetuning.eval.upsampling import resize_nearest
from timetuning.infra.config import BackboneParams, EvalSetParams
from timetuning.models.backbones import build_backbone, dense_features


def test_patch_labels_majority_and_ignore():
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, :2, :2] = [[1, 1], [1, 2]]  # patch (0,0): majority 1
    masks[0, :2, 2:] = 255  # patch (0,1): all ignored
    masks[0, 2:, :2] = [[3, 3], [255, 255]]  # patch (1,0): tie 3 vs ignore -> first max (class 3)
    labels = patch_labels(masks, (2, 2), num_classes=4)
    assert labels.tolist() == [[[1, 255], [3, 0]]]
    with pytest.raises(ValueError, match="not divisible"):
        patch_labels(np.zeros((1, 5, 4), np.uint8), (2, 2), 4)


def test_resize_masks_nearest():
    m = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    assert resize_nearest(m, (2, 2)).tolist() == [[[0, 2], [8, 10]]]
    assert set(np.unique(resize_nearest(m, (8, 8)))) == set(range(16))


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    rng = np.random.default_rng(0)
    names = []
    for i in range(3):
        write_davis_sequence(generate_video(rng, frames=4, width=64, height=48, num_classes=4, objects=3), root,
                             f"s{i}")
        names.append(f"s{i}")
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names))
    out = tmp_path_factory.mktemp("shards")
    shard_eval_set(EvalSetParams(name="d", layout="davis", root=str(root), splits=["val"], short_side=48,
                                 frames_per_clip=2, max_clips_per_video=2), out, progress=False)
    return out / "d"


def test_parquet_round_trip_matches_the_model(tmp_path, eval_set):
    backbone = build_backbone(BackboneParams(name="test_vit", weights="none"))
    path = tmp_path / "f.parquet"
    stats = extract_split(backbone, eval_set, "val", path, input_size=64, dtype="float32", batch_size=3,
                          row_group_size=40, progress=False)
    assert stats["frames"] == 12 and stats["rows"] == 12 * 16 and stats["grid"] == 4
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups >= 2  # bounded row groups
    assert str(pq.read_schema(path).field("feature").type) == f"fixed_size_list<element: float>[{backbone.embed_dim}]"
    cols = read_features(path)
    assert cols["feature"].shape == (192, backbone.embed_dim)
    # the stored vectors are the model's features of the first frame, row-major over the grid
    clip = next(iter_eval_clips(eval_set, "val"))
    expected = dense_features(backbone.eval(), clip.frames, 64)[0].permute(1, 2, 0).reshape(16, -1).numpy()
    np.testing.assert_allclose(cols["feature"][:16], expected, rtol=1e-5, atol=1e-5)
    assert cols["frame"][:20].tolist() == [0] * 16 + [1] * 4 and cols["col"][:5].tolist() == [0, 1, 2, 3, 0]
    assert set(np.unique(cols["label"])) <= {0, 1, 2, 3, 255}


def test_features_record_where_the_weights_came_from(tmp_path, eval_set):
    """A Leopart-style checkpoint's choice (layout, part, prefix, dropped heads) is in each features file's metadata,
    and survives the merge of per-rank parts."""
    weights = tmp_path / "leopart.ckpt"
    state = {f"model.{k}": v for k, v in timm.create_model("test_vit", num_classes=0).state_dict().items()}
    torch.save({"epoch": 1, "state_dict": state | {"prototypes.weight": torch.zeros(3, 8)}}, weights)
    backbone = build_backbone(BackboneParams(name="test_vit", weights=str(weights), mean=(0.485, 0.456, 0.406),
                                             std=(0.229, 0.224, 0.225)))
    parts = [tmp_path / f"part{i}.parquet" for i in range(2)]
    for i, part in enumerate(parts):
        extract_split(backbone, eval_set, "val", part, input_size=32, progress=False, only=range(i * 3, i * 3 + 3))
    recorded = json.loads(feature_file(parts[0]).weights_source)
    assert recorded == {"weights": str(weights), "layout": "leopart", "form": "lightning", "part": "student",
                        "container": "state_dict", "prefix": "model.", "tensors": len(state),
                        "dropped": ["head state_dict/prototypes (1 tensor)"], "detected": True}
    merge_parts(parts, tmp_path / "val.parquet")
    assert json.loads(feature_file(tmp_path / "val.parquet").weights_source) == recorded
    none = build_backbone(BackboneParams(name="test_vit", weights="none"))
    extract_split(none, eval_set, "val", tmp_path / "n.parquet", input_size=32, progress=False)
    assert json.loads(feature_file(tmp_path / "n.parquet").weights_source)["layout"] is None


def test_float16_storage_halves_the_file(tmp_path, eval_set):
    backbone = build_backbone(BackboneParams(name="test_vit", weights="none"))
    a = extract_split(backbone, eval_set, "val", tmp_path / "a.parquet", input_size=32, dtype="float16",
                      progress=False)
    b = extract_split(backbone, eval_set, "val", tmp_path / "b.parquet", input_size=32, dtype="float32",
                      progress=False)
    assert a["rows"] == b["rows"]
    assert (tmp_path / "a.parquet").stat().st_size < 0.75 * (tmp_path / "b.parquet").stat().st_size
    x16, x32 = read_features(tmp_path / "a.parquet")["feature"], read_features(tmp_path / "b.parquet")["feature"]
    np.testing.assert_allclose(x16, x32, rtol=1e-2, atol=1e-2)


def test_missing_inputs_are_named(tmp_path, eval_set):
    backbone = build_backbone(BackboneParams(name="test_vit", weights="none"))
    with pytest.raises(FileNotFoundError, match="labels.json"):
        extract_split(backbone, tmp_path, "val", tmp_path / "x.parquet", input_size=32, progress=False)
    with pytest.raises(ValueError, match="not a multiple of the stride"):
        extract_split(backbone, eval_set, "val", tmp_path / "x.parquet", input_size=40, progress=False)
    assert not (tmp_path / "x.parquet").exists()


def test_batches_span_clips_without_changing_the_rows(tmp_path, eval_set):
    """Frames are embedded in full batches across clip boundaries (remainders carried to the next clip): any
    batch size gives the same rows, in the same order."""
    backbone = build_backbone(BackboneParams(name="test_vit", weights="none"))
    ref = extract_split(backbone, eval_set, "val", tmp_path / "b1.parquet", input_size=32, dtype="float32",
                        batch_size=1, progress=False)
    odd = extract_split(backbone, eval_set, "val", tmp_path / "b5.parquet", input_size=32, dtype="float32",
                        batch_size=5, progress=False)
    assert ref["rows"] == odd["rows"] == 12 * 4
    a, b = read_features(tmp_path / "b1.parquet"), read_features(tmp_path / "b5.parquet")
    assert a["clip_id"].tolist() == b["clip_id"].tolist() and a["frame"].tolist() == b["frame"].tolist()
    np.testing.assert_allclose(a["feature"], b["feature"], rtol=1e-4, atol=1e-4)


def test_streamed_clips_equal_the_whole_file_whatever_the_batch(tmp_path, eval_set):
    backbone = build_backbone(BackboneParams(name="test_vit", weights="none"))
    path = tmp_path / "f.parquet"
    extract_split(backbone, eval_set, "val", path, input_size=64, dtype="float32", row_group_size=40, progress=False)
    info = feature_file(path)
    assert (info.grid, info.input_size, info.dim, info.frames) == (4, 64, backbone.embed_dim, 12)
    whole = read_features(path)
    for batch_rows in (7, 16, 10_000):  # clip boundaries inside and across batches
        clips = list(iter_feature_clips(path, batch_rows=batch_rows))
        assert [c.clip_id for c in clips] == list(dict.fromkeys(whole["clip_id"].tolist()))
        flat = np.concatenate([c.features.permute(0, 2, 3, 1).reshape(-1, info.dim).numpy() for c in clips])
        np.testing.assert_array_equal(flat, whole["feature"])


def test_prefetch_keeps_order_and_reraises():
    assert list(prefetch(iter(range(50)), depth=2)) == list(range(50))

    def broken():
        yield 1
        raise OSError("shard truncated")

    with pytest.raises(OSError, match="truncated"):
        list(prefetch(broken()))
    first = next(prefetch(iter(range(10**6)), depth=1))  # an abandoned consumer does not hang the producer
    assert first == 0


def test_the_spool_gives_the_files_clips_on_every_pass_even_interleaved(tmp_path, eval_set):
    backbone = build_backbone(BackboneParams(name="test_vit", weights="none"))
    path = tmp_path / "f.parquet"
    extract_split(backbone, eval_set, "val", path, input_size=64, dtype="float16", row_group_size=40, progress=False)
    expected = list(iter_feature_clips(path))
    spool = FeatureSpool(path, batch_rows=7)
    assert spool.dtype == torch.float16  # stored as the file holds them, converted per clip like the reader does
    first, second = iter(spool), iter(spool)
    for a, b, want in zip(first, second, expected):  # two passes at once: reads are positioned
        for got in (a, b):
            assert (got.clip_id, got.video_id) == (want.clip_id, want.video_id)
            assert got.features.dtype == torch.float32
            torch.testing.assert_close(got.features, want.features, rtol=0, atol=0)
    assert [c.clip_id for c in spool] == [c.clip_id for c in expected]  # and again after both
    spool.close()
