"""Random access into WebDataset shards: where each sample's members lie, read from the tar headers only.

Training draws clips in a global random order and validation picks clips spread over videos; both need a sample
without streaming a whole shard. Indexing reads each 512-byte header and seeks past the data, so it costs
little even for many gigabytes of shards. Member names are checked as when streaming (no path tricks).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timetuning.data.shards import ShardError, check_member_name


@dataclass(frozen=True)
class SampleRef:
    """One sample of a shard: its key and, per member extension, the byte range of the member's data."""

    shard: str
    key: str
    members: tuple[tuple[str, int, int], ...]  # (extension, offset, size)

    def extensions(self) -> list[str]:
        return [ext for ext, _, _ in self.members]


def index_shard(path: str | Path) -> list[SampleRef]:
    """The samples of one shard in order (members of a sample are consecutive, as WebDataset writes them)."""
    refs: list[SampleRef] = []
    key, members = None, []
    with tarfile.open(path, "r:") as tar:  # uncompressed tars only: offsets must be file offsets
        for member in tar:
            if not member.isfile():
                raise ShardError(f"{path}: member {member.name!r} is not a regular file")
            member_key, ext = check_member_name(path, member.name)
            if member_key != key and members:
                refs.append(SampleRef(str(path), key, tuple(members)))
                members = []
            key = member_key
            members.append((ext, member.offset_data, member.size))
    if members:
        refs.append(SampleRef(str(path), key, tuple(members)))
    return refs


def index_shards(paths: Iterable[str | Path]) -> list[SampleRef]:
    return [ref for p in paths for ref in index_shard(p)]


def read_sample(ref: SampleRef, extensions: Iterable[str] | None = None) -> dict[str, Any]:
    """The sample's members (all, or only ``extensions``) as bytes; ``json`` members parsed."""
    wanted = None if extensions is None else set(extensions)
    sample: dict[str, Any] = {"__key__": ref.key, "__shard__": ref.shard}
    with open(ref.shard, "rb") as f:
        for ext, offset, size in ref.members:
            if wanted is not None and ext not in wanted:
                continue
            f.seek(offset)
            data = f.read(size)
            if len(data) != size:
                raise ShardError(f"{ref.shard}: member {ref.key}.{ext} is truncated")
            sample[ext] = json.loads(data) if ext == "json" else data
    return sample
