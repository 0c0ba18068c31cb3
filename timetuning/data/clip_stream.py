"""The training clip stream: every batch is a pure function of (seed, step), so a resumed run sees exactly the
batches an uninterrupted run would have seen.

All clips of the shards are indexed once (:mod:`timetuning.data.shard_index`). Pass (epoch) ``e`` over the data is a
permutation of all clips drawn from ``(seed, e)``; the global batch of step ``s`` is positions ``[s*G, (s+1)*G)``
of the concatenated passes (``G`` = batch size x world size), and rank ``r`` takes the ``r``-th slice of it. Each
clip's augmentation draws from a generator seeded by ``(seed, position)``. Hence:

- resuming at step ``s`` starts at position ``s*G``: nothing to replay, no shuffle buffer to lose;
- the clips do not depend on the number of loader workers;
- one process with batch ``G`` sees the same augmented clips as ``G/B`` DDP ranks with batch ``B``.

Unlike a per-epoch loader there is no epoch boundary: a batch may span two passes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from timetuning.data.shard_index import SampleRef, index_shards, read_sample
from timetuning.data.shards import clip_frames, decode_image, list_shards
from timetuning.data.transforms import ClipAugmentation
from timetuning.infra.distributed import DistContext

PERMUTATION_STREAM, AUGMENTATION_STREAM = 1, 2


def mixed_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (NumPy's SeedSequence mixing: nearby inputs give unrelated seeds)."""
    words = np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint32)
    return int(words[0]) << 31 | int(words[1]) >> 1


class ClipDataset(Dataset):
    """Global sample position -> augmented clip ``[T, 3, size, size]``."""

    def __init__(self, clips: list[SampleRef], aug: ClipAugmentation, seed: int):
        if not clips:
            raise ValueError("no clips to train on")
        self.clips, self.aug, self.seed = clips, aug, seed
        self._order: tuple[int, torch.Tensor] | None = None  # the current pass's permutation (one per worker)

    def order(self, epoch: int) -> torch.Tensor:
        """The permutation of all clips for pass ``epoch``."""
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(mixed_seed(self.seed, PERMUTATION_STREAM, epoch))
            self._order = (epoch, torch.randperm(len(self.clips), generator=g))
        return self._order[1]

    def clip_at(self, position: int) -> SampleRef:
        epoch, offset = divmod(position, len(self.clips))
        return self.clips[int(self.order(epoch)[offset])]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, position: int) -> torch.Tensor:
        ref = self.clip_at(position)
        names = clip_frames(dict.fromkeys(ref.extensions()))
        if len(names) < 2:
            raise ValueError(f"{ref.shard}: sample {ref.key} has {len(names)} frame(s), need >= 2")
        sample = read_sample(ref, names)
        frames = np.stack([decode_image(sample[n]) for n in names])
        clip = torch.from_numpy(frames).permute(0, 3, 1, 2)  # decoded arrays are fresh copies, safe to hand over
        g = torch.Generator().manual_seed(mixed_seed(self.seed, AUGMENTATION_STREAM, position))
        return self.aug(clip, g)


class StepBatches(Sampler[list[int]]):
    """This rank's sample positions for each step in ``[start_step, end_step)``."""

    def __init__(self, start_step: int, end_step: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.start_step, self.end_step = start_step, end_step
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.batch_size * self.world_size
        for step in range(self.start_step, self.end_step):
            first = step * global_batch + self.rank * self.batch_size
            yield list(range(first, first + self.batch_size))

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)


def loader_workers(requested: int, device: torch.device) -> int:
    """DataLoader workers: as requested, or (-1) none on CPU, where a worker only steals cores from compute."""
    if requested >= 0:
        return requested
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def training_clips(shard_dir: str | Path) -> list[SampleRef]:
    """Every clip of the training shards, in shard order."""
    urls = list_shards(shard_dir, "clips")
    if not urls:
        raise FileNotFoundError(f"train.shards: no clips-*.tar shards in {shard_dir} (run the shard_videos stage)")
    return index_shards(urls)


def clip_batches(clips: list[SampleRef], aug: ClipAugmentation, seed: int, batch_size: int, ctx: DistContext,
                 start_step: int, end_step: int, workers: int = 0) -> DataLoader:
    """The batches ``[batch_size, T, 3, size, size]`` of this rank for steps ``start_step .. end_step - 1``."""
    return DataLoader(ClipDataset(clips, aug, seed),
                      batch_sampler=StepBatches(start_step, end_step, batch_size, ctx.rank, ctx.world_size),
                      num_workers=workers, pin_memory=ctx.device.type == "cuda", persistent_workers=False)
