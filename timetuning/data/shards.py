"""WebDataset shards: crash-safe, byte-reproducible writing and safe reading.

A sample is a dict ``{"__key__": key, "<ext>": bytes, ...}``; members are stored as ``<key>.<ext>``. Shards are
named ``<prefix>-%06d.tar`` and written under a temporary name that is renamed only once the shard is complete,
so a killed run never leaves a partial shard under a final name. Tar member times, owners and modes are fixed,
so the same samples always give the same bytes (and the same DVC hash).
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image

from timetuning.infra.files import atomic_path, remove_stale_temporaries, sha256_file

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
FIXED_MTIME = 0.0


class ShardError(ValueError):
    """A shard that cannot be trusted; the message names the shard and the member."""


def sanitize_key(text: str) -> str:
    """A WebDataset-safe key: dots and path separators would split keys, so keep [A-Za-z0-9_-] only."""
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return key or "_"


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 2-D (mask) or HxWx3 array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_image(data: bytes, mode: str = "RGB") -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert(mode) if mode else img)


def decode_mask(data: bytes) -> np.ndarray:
    """Class-id mask as stored: single channel uint8 (palette indices are kept as they are)."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("L", "P"):
            raise ShardError(f"mask has mode {img.mode!r}, expected a single-channel class-id image")
        return np.array(img)


@dataclass
class ShardRecord:
    name: str
    samples: int
    bytes: int
    sha256: str


@dataclass
class ShardWriter:
    """Write samples into ``<directory>/<prefix>-%06d.tar``, starting a new shard at ``maxcount``/``maxsize``."""

    directory: Path
    prefix: str = "shard"
    maxcount: int = 256
    maxsize: int = 256 * 1024 * 1024
    records: list[ShardRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.directory)
        self._ctx = None
        self._writer: wds.TarWriter | None = None
        self._count = 0
        self._size = 0

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.records):06d}.tar"
        self._name = name
        self._ctx = atomic_path(self.directory / name)
        self._tmp = self._ctx.__enter__()
        self._file = open(self._tmp, "wb")
        self._writer = wds.TarWriter(self._file, mtime=FIXED_MTIME, user="timetuning", group="timetuning",
                                     mode=0o0444)
        self._count = self._size = 0

    def _close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._file.close()
        self._ctx.__exit__(None, None, None)
        path = self.directory / self._name
        self.records.append(ShardRecord(self._name, self._count, path.stat().st_size, sha256_file(path)))
        self._writer = None

    def write(self, sample: dict[str, Any]) -> None:
        key = sample["__key__"]
        if not KEY_PATTERN.match(key):
            raise ShardError(f"sample key {key!r} must match {KEY_PATTERN.pattern}")
        size = sum(len(v) for k, v in sample.items() if k != "__key__" and isinstance(v, (bytes, str)))
        if self._writer is not None and (self._count >= self.maxcount or self._size + size > self.maxsize):
            self._close()
        if self._writer is None:
            self._open()
        self._writer.write(sample)
        self._count += 1
        self._size += size

    def abort(self) -> None:
        """Drop the shard being written (its temporary file is removed)."""
        if self._writer is not None:
            self._writer.close()
            self._file.close()
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
            self._writer = None

    def close(self) -> list[ShardRecord]:
        self._close()
        return self.records

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def check_member_name(shard: str | Path, name: str) -> tuple[str, str]:
    """Split a member name into (key, ext); refuse names that could escape a directory or split keys oddly."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or "/" in name or "\\" in name or name.startswith("."):
        raise ShardError(f"{shard}: unsafe member name {name!r}")
    key, _, ext = name.partition(".")
    if not ext or not KEY_PATTERN.match(key):
        raise ShardError(f"{shard}: member {name!r} is not <key>.<ext>")
    return key, ext


def iter_shard(path: str | Path) -> Iterator[dict[str, Any]]:
    """Samples of one shard, members grouped by key, with every member name checked (regular files only)."""
    sample: dict[str, Any] | None = None
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                raise ShardError(f"{path}: member {member.name!r} is not a regular file")
            key, ext = check_member_name(path, member.name)
            if sample is not None and sample["__key__"] != key:
                yield sample
                sample = None
            if sample is None:
                sample = {"__key__": key, "__shard__": str(path)}
            data = tar.extractfile(member).read()
            sample[ext] = json.loads(data) if ext == "json" else data
    if sample is not None:
        yield sample


def safe_extract(path: str | Path, destination: str | Path) -> list[Path]:
    """Extract a shard's members into ``destination``; no member may land outside it."""
    destination = Path(destination).resolve()
    destination.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                raise ShardError(f"{path}: member {member.name!r} is not a regular file")
            check_member_name(path, member.name)
            target = (destination / member.name).resolve()
            if destination not in target.parents:
                raise ShardError(f"{path}: member {member.name!r} escapes {destination}")
            target.write_bytes(tar.extractfile(member).read())
            written.append(target)
    return written


def list_shards(directory: str | Path, prefix: str) -> list[Path]:
    """The complete shards ``<prefix>-*.tar`` of a directory, in order (temporaries never match)."""
    return sorted(Path(directory).glob(f"{prefix}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"))


def iter_shards(paths: Iterable[str | Path]) -> Iterator[dict[str, Any]]:
    for p in paths:
        yield from iter_shard(p)


def clip_frames(sample: dict[str, Any]) -> list[str]:
    """The frame member extensions of a clip sample in time order: ``f0.jpg, f1.jpg, ...``."""
    exts = [k for k in sample if re.fullmatch(r"f\d+\.jpg", k)]
    return sorted(exts, key=lambda k: int(k[1:].split(".")[0]))
