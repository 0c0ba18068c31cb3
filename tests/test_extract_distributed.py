"""extract_features under torchrun: ranks embed disjoint blocks of clips into part files, rank 0 merges them into
the file one process writes (byte for byte)."""

import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.dvc_repo import PROJECT, dvc_env
from tests.evalsets import MeanColour, davis_set
from timetuning.config import EvalSetParams
from timetuning.eval_shards import read_labels, shard_eval_set
from timetuning.features import extract_split, rank_share


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


@pytest.mark.slow
def test_two_ranks_write_the_file_one_process_writes(tmp_path):
    root = davis_set(tmp_path / "davis", {"val": [(72, 128), (96, 128), (128, 96)]})
    params = EvalSetParams(name="ranks", layout="davis", root=str(root), splits=["val"], short_side=48, frames_per_clip=2,
                           max_clips_per_video=3)
    shard_eval_set(params, tmp_path / "shards", progress=False)
    set_dir = tmp_path / "shards" / "ranks"
    assert read_labels(set_dir)["splits"]["val"] >= 5  # an odd number of clips would do too: blocks differ by one
    one = tmp_path / "one" / "val.parquet"
    extract_split(MeanColour(), set_dir, "val", one, input_size=64, row_group_size=150, batch_size=3,
                  progress=False)
    two = tmp_path / "two" / "val.parquet"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "tests/extract_ranks.py", str(set_dir), str(two)]
    proc = subprocess.run(cmd, cwd=PROJECT, env=dvc_env() | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert pq.ParquetFile(one).metadata.num_row_groups > 2  # row groups cut across the ranks' blocks
    assert two.read_bytes() == one.read_bytes()
    assert sorted(p.name for p in two.parent.iterdir()) == ["val.parquet"]  # the parts are gone
