"""Corrupt checkpoints: a one-line message naming the path, the bad file set aside, training starts fresh."""

import argparse
import logging
import os

import pytest
import torch

from timetuning.data.synthetic import write_clip_shards
from timetuning.infra.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_resume_state,
    save_checkpoint,
    torch_load,
)
from timetuning.infra.config import TrainParams
from timetuning.infra.distributed import DistContext
from timetuning.train.loop import train


def _real_checkpoint(path):
    save_checkpoint(path, {"step": 6, "fingerprint": "abc", "model": {"w": torch.arange(2000.0)}, "log": []})
    return path.read_bytes()


def _corruptions(good: bytes) -> dict[str, bytes]:
    return {"empty": b"", "garbage": os.urandom(4096), "text": b"not a checkpoint\n" * 8,
            "truncated": good[: len(good) // 2], "cut_header": good[:10], "cut_tail": good[:-16]}


class _Hostile:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_damaged_checkpoints_raise_one_line_naming_the_path(tmp_path):
    good = _real_checkpoint(tmp_path / "good.pt")
    assert load_checkpoint(tmp_path / "good.pt")["step"] == 6
    for name, data in _corruptions(good).items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        msg = str(err.value)
        assert msg.startswith(f"{path}: ") and "\n" not in msg, (name, msg)
    assert "empty file" in str(pytest.raises(CheckpointError, load_checkpoint, tmp_path / "empty.pt").value)


def test_foreign_and_hostile_files_are_refused(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list.pt: not a training checkpoint"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"step": 1, "fingerprint": "x", "payload": _Hostile()}, tmp_path / "hostile.pt")
    with pytest.raises(CheckpointError, match=r"hostile.pt: refused: loading it would call posix.system"):
        load_checkpoint(tmp_path / "hostile.pt")


def test_a_command_line_namespace_loads_as_data(tmp_path):
    """DINO's checkpoints keep their arguments as an argparse.Namespace: plain data, allowed; other classes not."""
    torch.save({"args": argparse.Namespace(arch="vit_small", lr=5e-4), "teacher": {"w": torch.ones(2)}},
               tmp_path / "dino.pth")
    assert torch_load(tmp_path / "dino.pth")["args"].arch == "vit_small"
    torch.save({"args": _Hostile()}, tmp_path / "hostile.pth")
    with pytest.raises(CheckpointError, match="refused"):
        torch_load(tmp_path / "hostile.pth")


def test_unusable_last_checkpoint_is_set_aside_and_training_starts_fresh(tmp_path, caplog):
    good = _real_checkpoint(tmp_path / "good.pt")
    last = tmp_path / "checkpoints" / "last.pt"
    last.parent.mkdir()
    assert load_resume_state(last) is None  # no checkpoint: nothing to say
    for n, (name, data) in enumerate(_corruptions(good).items(), start=1):
        last.write_bytes(data)
        with caplog.at_level(logging.WARNING, logger="timetuning.infra.checkpoint"):
            caplog.clear()
            assert load_resume_state(last) is None, name
        aside = last.with_name("last.pt.corrupt" if n == 1 else f"last.pt.corrupt-{n}")
        assert not last.exists() and aside.read_bytes() == data  # kept, byte for byte, under a new name
        (record,) = caplog.records
        assert str(last) in record.getMessage() and f"moved to {aside}" in record.getMessage()
    # another rank than 0 does not rename: it only starts fresh
    last.write_bytes(b"")
    assert load_resume_state(last, may_set_aside=False) is None and last.exists()
    last.write_bytes(good)
    assert load_resume_state(last)["step"] == 6


def test_training_on_a_truncated_last_pt_warns_and_starts_fresh(tmp_path, caplog):
    shards = write_clip_shards(tmp_path / "shards", videos=2, clips_per_video=2, frames=8, width=64, height=64,
                               maxcount=4)
    out = tmp_path / "run"
    params = TrainParams(shards=str(shards), output_dir=str(out), input_size=32, batch_size=2, steps=2,
                         num_prototypes=8, hidden_dim=16, bottleneck_dim=8, projection_dim=8, num_workers=0,
                         checkpoint_every=2, val_set=None, forwarder_topk=4, freeze_backbone_steps=0,
                         backbone={"name": "test_vit", "weights": "none"})
    last = out / "checkpoints" / "last.pt"
    good = _real_checkpoint(tmp_path / "good.pt")
    last.parent.mkdir(parents=True)
    last.write_bytes(good[: len(good) // 3])
    with caplog.at_level(logging.WARNING):
        summary = train(params, 0, DistContext(), progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith(f"{last}: damaged or not a checkpoint ({len(good) // 3} bytes; ")
    assert warnings[0].endswith(f"; moved to {last}.corrupt, training starts fresh")
    assert (last.parent / "last.pt.corrupt").read_bytes() == good[: len(good) // 3]
    assert summary["resumed_from"] == 0 and load_checkpoint(last)["step"] == 2


def test_the_code_fingerprint_covers_exactly_the_train_stages_dvc_deps(tmp_path):
    """The fingerprint and dvc.yaml's train deps are one fact: a change to any file the stage depends on makes a
    finished checkpoint stale, a change elsewhere does not."""
    import shutil

    import yaml

    from timetuning.infra.checkpoint import code_fingerprint
    from timetuning.infra.dvc_yaml import PACKAGES, ROOT

    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]
    deps = {d for d in stage["deps"] if d.endswith(".py")}
    assert "timetuning/method/loss.py" in deps and "stages/train.py" in deps
    others = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.py")} - deps
    assert "timetuning/report/report.py" in others
    before = code_fingerprint(tmp_path)
    assert before == code_fingerprint(tmp_path)  # deterministic
    for name in sorted(deps | {"timetuning/report/report.py", "pipeline/flows.py"}):
        original = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(original + b"\n# edited\n")
        assert (code_fingerprint(tmp_path) != before) == (name in deps), name
        (tmp_path / name).write_bytes(original)
