"""The training clip stream: a function of (seed, step), whatever the workers, resume point or number of ranks."""

import pytest
import torch

from timetuning.data.clip_stream import ClipDataset, StepBatches, clip_batches, mixed_seed, training_clips
from timetuning.data.shard_index import index_shard, read_sample
from timetuning.data.shards import iter_shard, list_shards
from timetuning.data.synthetic import write_clip_shards
from timetuning.data.transforms import ClipAugmentation
from timetuning.infra.distributed import DistContext


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_clip_shards(tmp_path_factory.mktemp("clips"), videos=3, clips_per_video=3, frames=6, width=40,
                             height=32, maxcount=4)


@pytest.fixture(scope="module")
def aug():
    return ClipAugmentation(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _batches(shards, aug, start, end, batch=2, workers=0, rank=0, world=1, seed=0):
    ctx = DistContext(rank=rank, world_size=world)
    return list(clip_batches(training_clips(shards), aug, seed, batch, ctx, start, end, workers))


def test_index_reads_the_same_members_as_streaming(shards):
    for shard in list_shards(shards, "clips"):
        streamed = list(iter_shard(shard))
        indexed = [read_sample(ref) for ref in index_shard(shard)]
        assert [s["__key__"] for s in streamed] == [s["__key__"] for s in indexed]
        for a, b in zip(streamed, indexed):
            assert {k: v for k, v in a.items() if k != "__shard__"} == {k: v for k, v in b.items() if k != "__shard__"}


def test_every_pass_is_a_permutation_of_all_clips_and_passes_differ(shards, aug):
    data = ClipDataset(training_clips(shards), aug, seed=0)
    n = len(data)
    assert n == 9
    first = [data.clip_at(i).key for i in range(n)]
    second = [data.clip_at(n + i).key for i in range(n)]
    assert sorted(first) == sorted(second) == sorted(r.key for r in data.clips)
    assert first != second


def test_resumed_stream_equals_the_tail_of_the_uninterrupted_one(shards, aug):
    full = _batches(shards, aug, 0, 7)  # 7 steps x 2 clips: crosses a pass boundary (9 clips)
    tail = _batches(shards, aug, 4, 7)
    assert len(full) == 7 and all(torch.equal(a, b) for a, b in zip(full[4:], tail))


def test_loader_workers_do_not_change_the_clips(shards, aug):
    alone = _batches(shards, aug, 0, 3)
    with_workers = _batches(shards, aug, 0, 3, workers=2)
    assert all(torch.equal(a, b) for a, b in zip(alone, with_workers))


def test_ranks_split_the_global_batch_of_one_process(shards, aug):
    single = _batches(shards, aug, 0, 3, batch=4)
    rank0 = _batches(shards, aug, 0, 3, batch=2, rank=0, world=2)
    rank1 = _batches(shards, aug, 0, 3, batch=2, rank=1, world=2)
    for s, a, b in zip(single, rank0, rank1):
        assert torch.equal(s, torch.cat([a, b]))


def test_seed_changes_order_and_augmentation(shards, aug):
    a, b = _batches(shards, aug, 0, 1, seed=0)[0], _batches(shards, aug, 0, 1, seed=1)[0]
    assert not torch.equal(a, b)
    assert mixed_seed(0, 1, 5) != mixed_seed(0, 1, 6) and 0 <= mixed_seed(2**40, 3) < 2**63


def test_step_batches_positions():
    assert list(StepBatches(2, 4, 3, rank=1, world_size=2)) == [[15, 16, 17], [21, 22, 23]]
    assert len(StepBatches(5, 5, 3)) == 0


def test_missing_shards_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.shards: no clips-"):
        training_clips(tmp_path)
