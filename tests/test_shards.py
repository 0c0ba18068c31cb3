import io
import tarfile

import numpy as np
import pytest
import webdataset as wds

from timetuning.data.shards import (
    ShardError,
    ShardWriter,
    clip_frames,
    decode_image,
    decode_mask,
    encode_jpeg,
    encode_png,
    iter_shard,
    list_shards,
    safe_extract,
    sanitize_key,
)


def _samples(n):
    rng = np.random.default_rng(0)
    for i in range(n):
        frame = rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)
        yield {"__key__": f"vid{i}__c000", "f0.jpg": encode_jpeg(frame, 90), "f1.jpg": encode_jpeg(frame, 90),
               "f0.png": encode_png((frame[..., 0] % 4).astype(np.uint8)), "json": b'{"i": %d}' % i}


def test_writer_splits_by_maxcount_and_is_byte_reproducible(tmp_path):
    for out in ("a", "b"):
        with ShardWriter(tmp_path / out, prefix="clips", maxcount=3) as w:
            for s in _samples(7):
                w.write(s)
    shards_a, shards_b = list_shards(tmp_path / "a", "clips"), list_shards(tmp_path / "b", "clips")
    assert [p.name for p in shards_a] == ["clips-000000.tar", "clips-000001.tar", "clips-000002.tar"]
    assert [r.samples for r in w.records] == [3, 3, 1]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(shards_a, shards_b))


def test_webdataset_reads_what_we_write(tmp_path):
    with ShardWriter(tmp_path, prefix="clips", maxcount=10) as w:
        for s in _samples(4):
            w.write(s)
    ds = wds.WebDataset([str(p) for p in list_shards(tmp_path, "clips")], shardshuffle=False).decode("rgb8")
    items = list(ds)
    assert len(items) == 4 and items[0]["f0.jpg"].shape == (16, 24, 3)
    ours = list(iter_shard(list_shards(tmp_path, "clips")[0]))
    assert ours[2]["json"] == {"i": 2} and clip_frames(ours[2]) == ["f0.jpg", "f1.jpg"]
    assert decode_image(ours[0]["f0.jpg"]).shape == (16, 24, 3)
    assert decode_mask(ours[0]["f0.png"]).max() <= 3


def test_killed_writer_leaves_no_partial_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, prefix="clips", maxcount=2) as w:
            for i, s in enumerate(_samples(5)):
                if i == 3:
                    raise RuntimeError("killed mid-shard")
                w.write(s)
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["clips-000000.tar"]  # complete shard only
    # a leftover temporary from a hard kill is removed by the next writer
    (tmp_path / ".clips-000001.tar.x.tmp").write_bytes(b"partial")
    ShardWriter(tmp_path, prefix="clips").close()
    assert not list(tmp_path.glob(".*.tmp"))


def _evil_tar(path, name, payload=b"x", kind=tarfile.REGTYPE):
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = len(payload) if kind == tarfile.REGTYPE else 0
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
        tar.addfile(info, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("name,kind", [("../escape.json", tarfile.REGTYPE), ("/abs.json", tarfile.REGTYPE),
                                       ("dir/x.json", tarfile.REGTYPE), ("link.json", tarfile.SYMTYPE)])
def test_untrusted_members_never_escape(tmp_path, name, kind):
    shard = tmp_path / "evil.tar"
    _evil_tar(shard, name, kind=kind)
    dest = tmp_path / "dest"
    with pytest.raises(ShardError, match="evil.tar"):
        safe_extract(shard, dest)
    with pytest.raises(ShardError):
        list(iter_shard(shard))
    assert not (tmp_path / "escape.json").exists()


def test_safe_extract_writes_inside(tmp_path):
    with ShardWriter(tmp_path / "s", prefix="x") as w:
        w.write(next(_samples(1)))
    files = safe_extract(list_shards(tmp_path / "s", "x")[0], tmp_path / "out")
    assert {f.name for f in files} == {"vid0__c000.f0.jpg", "vid0__c000.f1.jpg", "vid0__c000.f0.png",
                                       "vid0__c000.json"}


def test_keys_are_sanitised_and_checked(tmp_path):
    assert sanitize_key("cats/video.01 (copy)") == "cats_video_01_copy"
    with pytest.raises(ShardError, match="must match"):
        ShardWriter(tmp_path).write({"__key__": "a.b", "json": b"{}"})
