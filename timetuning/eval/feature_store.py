"""Dense patch features of evaluation clips as Parquet, written and read in bounded memory.

One row per patch, in clip -> frame -> row -> col order: dataset, split, clip id, video id, frame index, patch
row/col, the patch label (majority class of its pixels; ``ignore_index`` when most are ignored) and the feature
vector as a FixedSizeList (float16 by default). Every frame is resized to a square ``input_size`` (as TimeT and
Leopart evaluate), so frames of any size and orientation share one patch grid and batch together; the masks stay at
their stored size in the evaluation shards, where the probes score them. The file's schema metadata records the
grid, the input size, the feature dimension and where the backbone's weights came from (``weights_source``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

if TYPE_CHECKING:  # timm (~200 MB resident) is imported only where features are extracted, not where read
    pass



def feature_schema(dim: int, dtype: str, grid: int, input_size: int, weights_source: str | None = None
                   ) -> pa.Schema:
    """The features' schema; ``weights_source`` (JSON: which file, layout, part and prefix gave the backbone's
    weights, :class:`~timetuning.models.checkpoint_layouts.WeightsSource`) is kept in the metadata when given."""
    value = pa.float16() if dtype == "float16" else pa.float32()
    metadata = {"grid": str(grid), "input_size": str(input_size), "dim": str(dim)}
    if weights_source is not None:
        metadata["weights_source"] = weights_source
    return pa.schema([
        ("dataset", pa.string()), ("split", pa.string()), ("clip_id", pa.string()), ("video_id", pa.string()),
        ("frame", pa.int16()), ("row", pa.int16()), ("col", pa.int16()), ("label", pa.int16()),
        ("feature", pa.list_(value, dim)),
    ], metadata=metadata)


class RowGroupWriter:
    """Clip rows into a Parquet file in full row groups: batches are buffered until ``row_group_size`` rows, so
    memory is bounded by one row group and the file's layout depends only on the rows, not on who wrote them."""

    def __init__(self, path: str | Path, schema: pa.Schema, row_group_size: int):
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")
        self.row_group_size = row_group_size
        self.buffer: list[pa.RecordBatch] = []
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self.buffer.append(batch)
        self.rows += batch.num_rows
        if sum(b.num_rows for b in self.buffer) >= self.row_group_size:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.writer.write_table(pa.Table.from_batches(self.buffer), row_group_size=self.row_group_size)
            self.buffer = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


STREAM_ROWS = 8192  # rows a streaming reader decodes at a time


READ_BUFFER = 1 << 20  # bytes it reads from the file at a time


def open_stream(path: str | Path) -> pq.ParquetFile:
    """A Parquet file opened for streaming in bounded memory: read through a ``READ_BUFFER`` buffer, not a whole
    column chunk at a time (pyarrow's default pre-buffers it: reading 65,536-row batches of 384-dim features that way
    raised the peak RSS by ~430 MiB, 8,192-row batches through the buffer by ~85 MiB)."""
    return pq.ParquetFile(path, buffer_size=READ_BUFFER, pre_buffer=False)


def clip_tables(path: str | Path, columns: list[str] | None = None,
                batch_rows: int = STREAM_ROWS) -> Iterator[pa.Table]:
    """The rows of a features file one whole clip at a time (``columns`` only), streamed ``batch_rows`` rows at a
    time: the one place where clip boundaries are found, by Arrow's compute on the clip ids (no per-row Python
    object is made)."""
    import pyarrow.compute as pc

    columns = None if columns is None else list(dict.fromkeys(["clip_id", *columns]))
    carry: pa.Table | None = None
    for batch in open_stream(path).iter_batches(batch_rows, columns=columns):
        table = pa.Table.from_batches([batch])
        table = table if carry is None else pa.concat_tables([carry, table])
        ids = table.column("clip_id").combine_chunks()
        changes = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).to_numpy(zero_copy_only=False)
        starts = [0] + (np.flatnonzero(changes) + 1).tolist()
        for a, b in zip(starts[:-1], starts[1:]):  # every clip but the last is complete
            yield table.slice(a, b - a)
        carry = table.slice(starts[-1])
    if carry is not None and carry.num_rows:
        yield carry


def clip_batches(path: str | Path, batch_rows: int = STREAM_ROWS) -> Iterator[pa.RecordBatch]:
    """The rows of a features file one clip at a time, as record batches (its own dtype, no conversion)."""
    for table in clip_tables(path, None, batch_rows):
        yield from table.combine_chunks().to_batches()


@dataclass
class FeatureFile:
    path: Path
    rows: int
    dim: int
    grid: int
    input_size: int
    weights_source: str | None = None  # JSON of the backbone's WeightsSource, where the extraction recorded it

    @property
    def frames(self) -> int:
        return self.rows // (self.grid * self.grid)


def feature_file(path: str | Path) -> FeatureFile:
    """Size and geometry of a features file, from its Parquet metadata (no data read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: features not found (run the extract_features stage)")
    meta = pq.ParquetFile(path).schema_arrow.metadata or {}
    if b"grid" not in meta:
        raise ValueError(f"{path}: not a features file of this version (no grid in its metadata); rerun "
                         "extract_features")
    source = meta.get(b"weights_source")
    return FeatureFile(path, pq.ParquetFile(path).metadata.num_rows, int(meta[b"dim"]), int(meta[b"grid"]),
                       int(meta[b"input_size"]), source.decode() if source is not None else None)


@dataclass
class FeatureClip:
    clip_id: str
    video_id: str
    features: torch.Tensor  # [T, D, g, g] float32


def iter_feature_clips(path: str | Path, batch_rows: int = STREAM_ROWS,
                       dtype: torch.dtype | None = torch.float32) -> Iterator[FeatureClip]:
    """The clips of a features file in order, streamed ``batch_rows`` rows at a time, as ``dtype`` (None: the
    file's own)."""
    info = feature_file(path)
    for table in clip_tables(info.path, ["video_id", "feature"], batch_rows):
        values = table.column("feature").combine_chunks().values.to_numpy(zero_copy_only=False)
        t = len(values) // (info.grid * info.grid * info.dim)
        grid = values.reshape(t, info.grid, info.grid, info.dim)
        x = torch.from_numpy(np.ascontiguousarray(grid.transpose(0, 3, 1, 2)))
        yield FeatureClip(table.column("clip_id")[0].as_py(), table.column("video_id")[0].as_py(),
                          x if dtype is None else x.to(dtype))


class FeatureSpool:
    """A features file decoded once into an anonymous temporary file of raw values (the file's own dtype, already
    laid out ``[T, D, g, g]``), read back clip by clip as often as the protocols need: the same clips as
    :func:`iter_feature_clips`, without decompressing, decoding and transposing the Parquet again on every pass
    (the protocols read the train split 28 times and the val split ~8 times per model; see docs/benchmarks.md for
    what a pass costs either way).

    Memory stays one clip: reads are positioned (``os.preadv``), so passes may interleave; the values live in the
    file (the OS page cache, not the process), 2 bytes per value for float16 (300 MB for 2,000 frames of 14x14
    384-dim patches), and the file is gone when the spool is closed or collected."""

    def __init__(self, path: str | Path, batch_rows: int = STREAM_ROWS):
        self.info = feature_file(path)
        self.clips: list[tuple[str, str, int, int]] = []  # clip id, video id, first byte, frames
        self.dtype = torch.float16
        self.file = tempfile.TemporaryFile(prefix="features-")
        offset = 0
        for clip in iter_feature_clips(self.info.path, batch_rows, dtype=None):
            self.dtype = clip.features.dtype
            values = clip.features.numpy()  # [T, D, g, g], as the protocols take them
            self.file.write(values.data)
            self.clips.append((clip.clip_id, clip.video_id, offset, values.shape[0]))
            offset += values.nbytes
        self.file.flush()

    def __iter__(self) -> Iterator[FeatureClip]:
        fd = self.file.fileno()
        g, d = self.info.grid, self.info.dim
        for clip_id, video_id, offset, frames in self.clips:
            values = torch.empty((frames, d, g, g), dtype=self.dtype)
            view = values.numpy().data.cast("B")
            if os.preadv(fd, [view], offset) != len(view):
                raise OSError(f"{self.info.path}: its decoded copy was cut short (temporary disk full?)")
            yield FeatureClip(clip_id, video_id, values.float())

    def close(self) -> None:
        self.file.close()


def read_features(path: str | Path, columns: list[str] | None = None) -> dict[str, np.ndarray]:
    """A whole (small) features file as numpy arrays (``feature`` as ``[N, D]`` float32)."""
    table = pq.read_table(path, columns=columns)
    out = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if name == "feature":
            out[name] = col.values.to_numpy(zero_copy_only=False).reshape(len(col), -1).astype(np.float32)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out
