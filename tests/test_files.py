import json

import pytest

from timetuning.infra.files import atomic_path, remove_stale_temporaries, sha256_file, write_json_atomic


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "shard.tar"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_json_is_stable_and_complete(tmp_path):
    p = tmp_path / "m.json"
    write_json_atomic(p, {"b": 1, "a": [1, 2]})
    first = p.read_bytes()
    write_json_atomic(p, {"a": [1, 2], "b": 1})
    assert p.read_bytes() == first
    assert json.loads(first) == {"a": [1, 2], "b": 1}
    assert len(sha256_file(p)) == 64


def test_remove_stale_temporaries(tmp_path):
    (tmp_path / ".x.tar.abc.tmp").write_bytes(b"1")
    (tmp_path / "keep.tar").write_bytes(b"1")
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".x.tar.abc.tmp"]
    assert (tmp_path / "keep.tar").exists()
