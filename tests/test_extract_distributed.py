"""extract_features under torchrun: ranks embed disjoint blocks of clips into part files, rank 0 merges them into
the file one process writes (byte for byte); part files and temporaries a killed run left are removed first."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.dvc_repo import PROJECT, dvc_env
from tests.evalsets import MeanColour, davis_set
from timetuning.data.eval_shards import read_labels, shard_eval_set
from timetuning.eval.extraction import extract_split, extract_split_distributed, part_path, rank_share
from timetuning.infra.config import EvalSetParams
from timetuning.infra.distributed import DistContext


def test_rank_shares_cover_every_clip_once_cut_on_whole_batches():
    rng = np.random.default_rng(0)
    for lengths in ([], [4], [4] * 5, [4] * 64, rng.integers(1, 9, 40).tolist()):
        for world in (1, 2, 3, 8):
            shares = [rank_share(lengths, r, world, batch_size=8) for r in range(world)]
            assert [i for share in shares for i in share] == list(range(len(lengths)))
    starts = np.cumsum([0] + [4] * 64)  # 256 frames: 4 ranks take 64 frames each, cut on batches of 16
    assert [starts[rank_share([4] * 64, r, 4, 16).start] for r in range(4)] == [0, 64, 128, 192]
    two_frame = [2] * 45  # 90 frames in batches of 3: whole batches end at frames 0, 6, 12, ... only
    assert [2 * rank_share(two_frame, r, 3, 3).start for r in range(3)] == [0, 30, 60]
    assert [len(rank_share([2, 2], r, 2, 8)) for r in range(2)] == [0, 2]  # no whole batch to cut at: one rank


def eval_shards(tmp_path: Path) -> Path:
    """A small evaluation set of 3 videos (split ``val``), sharded."""
    root = davis_set(tmp_path / "davis", {"val": [(72, 128), (96, 128), (128, 96)]})
    params = EvalSetParams(name="ranks", layout="davis", root=str(root), splits=["val"], short_side=48,
                           frames_per_clip=2, max_clips_per_video=3)
    shard_eval_set(params, tmp_path / "shards", progress=False)
    return tmp_path / "shards" / "ranks"


def plant_leftovers(out: Path) -> tuple[list[Path], list[Path]]:
    """Files a killed 3-rank extraction of ``out`` (split ``val``) left beside it: its parts and temporaries of the
    file and of a part; and look-alikes of other splits, of another set and of other files, which must survive."""
    stale = [part_path(out, r, 3) for r in range(3)] + [
        out.with_name(f".{out.name}.k1ll_ed9.tmp"), out.with_name(f".{part_path(out, 1, 3).name}.x7_q2abc.tmp")]
    other_set = out.parent.parent.parent / "other" / out.parent.name
    keep = [out.with_name("test.part0000-of-0003.parquet"), out.with_name(".test.parquet.k1ll_ed9.tmp"),
            out.with_name("val2.part0000-of-0003.parquet"), out.with_name(".val2.parquet.k1ll_ed9.tmp"),
            out.with_name("val.part0000-of-0003.json"), out.with_name(".index.json.k1ll_ed9.tmp"),
            other_set / "val.part0000-of-0003.parquet", other_set / ".val.parquet.k1ll_ed9.tmp"]
    for path in stale + keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left by a killed run")  # not Parquet: reading any of them would fail
    return stale, keep


def assert_only_leftovers_removed(out: Path, stale: list[Path], keep: list[Path]) -> None:
    assert not [p for p in stale if p.exists()]
    assert all(p.read_bytes() == b"left by a killed run" for p in keep)
    beside = sorted([out.name] + [p.name for p in keep if p.parent == out.parent])
    assert sorted(p.name for p in out.parent.iterdir()) == beside  # this run's parts are gone too


def test_one_process_removes_the_leftovers_of_a_killed_run(tmp_path):
    set_dir = eval_shards(tmp_path)
    kwargs = dict(input_size=64, row_group_size=150, batch_size=3, progress=False)
    clean = tmp_path / "clean" / "ranks" / "mean" / "val.parquet"
    extract_split(MeanColour(), set_dir, "val", clean, **kwargs)
    out = tmp_path / "out" / "ranks" / "mean" / "val.parquet"
    stale, keep = plant_leftovers(out)
    extract_split_distributed(MeanColour(), set_dir, "val", out, ctx=DistContext(), **kwargs)
    assert_only_leftovers_removed(out, stale, keep)
    assert out.read_bytes() == clean.read_bytes()


@pytest.mark.slow
def test_two_ranks_write_the_file_one_process_writes(tmp_path):
    set_dir = eval_shards(tmp_path)
    assert read_labels(set_dir)["splits"]["val"] >= 5  # an odd number of clips would do too: blocks differ by one
    one = tmp_path / "one" / "val.parquet"
    extract_split(MeanColour(), set_dir, "val", one, input_size=64, row_group_size=150, batch_size=3,
                  progress=False)
    two = tmp_path / "two" / "ranks" / "mean" / "val.parquet"
    stale, keep = plant_leftovers(two)  # of a killed run on 3 ranks
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "tests/extract_ranks.py", str(set_dir), str(two)]
    proc = subprocess.run(cmd, cwd=PROJECT, env=dvc_env() | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert pq.ParquetFile(one).metadata.num_row_groups > 2  # row groups cut across the ranks' blocks
    assert two.read_bytes() == one.read_bytes()
    assert_only_leftovers_removed(two, stale, keep)
