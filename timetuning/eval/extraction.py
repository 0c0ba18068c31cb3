"""Embedding evaluation clips into feature files (:mod:`timetuning.eval.feature_store`).

One process streams a split's clips through the backbone in full batches (the next clips decoded in a background
thread). Under torchrun each rank embeds a contiguous block of clips, cut where a whole number of batches ends, into
a part file, and rank 0 merges the parts in rank order: the file is byte for byte the one a single process writes.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from queue import Full, Queue
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from timetuning.data.eval_shards import EvalClip, clip_lengths, iter_eval_clips, read_labels
from timetuning.data.transforms import eval_transform
from timetuning.eval.masks import patch_labels
from timetuning.eval.upsampling import resize_nearest
from timetuning.infra.distributed import DistContext, all_gather_object, barrier
from timetuning.infra.files import atomic_path

if TYPE_CHECKING:  # timm (~200 MB resident) is imported only where features are extracted, not where read
    from timetuning.models.backbones import DenseBackbone

from timetuning.eval.feature_store import RowGroupWriter, clip_batches, feature_file, feature_schema

T = TypeVar("T")


def prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` in a background thread, at most ``depth`` ahead (JPEG/PNG decoding and resizing release
    the GIL, so the next clips are prepared while the model runs); exceptions are re-raised in the caller."""
    queue: Queue = Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(exc)

    thread = threading.Thread(target=produce, daemon=True, name="prefetch-clips")
    thread.start()
    try:
        while True:
            item = queue.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _prepared_clips(set_dir: Path, split: str, size: int, mean, std, only: range | None = None
                    ) -> Iterator[tuple[EvalClip, torch.Tensor]]:
    """Clips with their frames resized to ``size`` x ``size`` and normalised (done in the prefetch thread)."""
    for clip in iter_eval_clips(set_dir, split, only=only):
        images = torch.from_numpy(np.ascontiguousarray(clip.frames)).permute(0, 3, 1, 2)
        yield clip, eval_transform(images, size, mean, std)


def extract_split(backbone: DenseBackbone, set_dir: str | Path, split: str, out_path: str | Path, *,
                  input_size: int, dtype: str = "float16", batch_size: int = 16, row_group_size: int = 65536,
                  device: str = "cpu", progress: bool = True, only: range | None = None) -> dict:
    """Stream one split's clips (``only``: those at these positions) through the backbone into a Parquet file;
    return counts and timing.

    Frames are embedded in full batches across clip boundaries (a remainder waits for the next clip), so any batch
    size gives the same rows."""
    from timetuning.models.backbones import forward_dense

    set_dir = Path(set_dir)
    labels = read_labels(set_dir)
    num_classes = len(labels["classes"])
    np_dtype = np.float16 if dtype == "float16" else np.float32
    if input_size % backbone.stride:
        raise ValueError(f"extract_features.input_size {input_size} is not a multiple of the stride {backbone.stride}")
    grid = input_size // backbone.stride
    backbone.eval().to(device)
    source = getattr(backbone, "weights_source", None)
    schema = feature_schema(int(backbone.embed_dim), dtype, grid, input_size,
                            source.to_json() if source is not None else None)
    rows = frames_done = 0
    seconds = 0.0
    pending: list[tuple[EvalClip, torch.Tensor]] = []  # clips whose frames are not all embedded yet, in order
    computed: list[torch.Tensor] = []  # features of the leading frames of ``pending``
    num_computed = 0

    def forward(limit: int) -> None:
        nonlocal seconds, num_computed
        images = torch.cat([x for _, x in pending])[num_computed:num_computed + limit]
        start = time.perf_counter()
        computed.append(forward_dense(backbone, images, batch_size, device))  # [F, D, g, g]
        seconds += time.perf_counter() - start
        num_computed += images.shape[0]

    def finish_clips(writer: RowGroupWriter) -> None:
        nonlocal rows, frames_done, num_computed
        while pending and pending[0][0].num_frames <= num_computed:
            clip, _ = pending.pop(0)
            t = clip.num_frames
            feats = torch.cat(computed)
            computed[:] = [feats[t:]]
            num_computed -= t
            batch = clip_rows(clip, feats[:t], set_dir.name, split, grid, num_classes, np_dtype, input_size, schema)
            writer.write(batch)  # bounded memory: full row groups are flushed
            rows += batch.num_rows
            frames_done += t

    with atomic_path(out_path) as tmp:
        writer = RowGroupWriter(tmp, schema, row_group_size)
        try:
            clips = prefetch(_prepared_clips(set_dir, split, input_size, backbone.mean, backbone.std, only), depth=2)
            total = len(only) if only is not None else labels["splits"].get(split)
            for item in tqdm(clips, total=total, desc=f"{set_dir.name}/{split}", unit="clip", disable=not progress):
                pending.append(item)
                waiting = sum(c.num_frames for c, _ in pending) - num_computed
                if waiting >= batch_size:  # only full batches; the remainder waits for the next clip
                    forward(waiting - waiting % batch_size)
                    finish_clips(writer)
            waiting = sum(c.num_frames for c, _ in pending) - num_computed
            if waiting:
                forward(waiting)
                finish_clips(writer)
            if rows == 0 and only is None:  # (a rank's share of a small split may be empty)
                raise FileNotFoundError(f"{set_dir}: split {split!r} has no clips")
        finally:
            writer.close()
    return {"rows": rows, "frames": frames_done, "grid": grid, "dim": int(backbone.embed_dim),
            "forward_seconds": seconds, "frames_per_second": frames_done / seconds if seconds else 0.0}


def rank_share(lengths: Sequence[int], rank: int, world_size: int, batch_size: int = 1) -> range:
    """Rank ``rank``'s contiguous block of the clips of ``lengths`` frames each (blocks in rank order cover every
    clip once). Blocks are cut only at clip boundaries that fall on a multiple of ``batch_size`` frames, the ones
    nearest to an even split, so each rank embeds exactly the batches one process embeds and the features are bit
    for bit the same (batched kernels round differently with other batch mates); where the clip lengths leave
    too few such boundaries, some ranks get nothing."""
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # frame offset of each clip boundary
    candidates = np.flatnonzero(starts % batch_size == 0)  # always holds 0

    def cut(r: int) -> int:
        if r >= world_size:
            return len(lengths)
        target = r * starts[-1] / world_size
        return int(candidates[np.argmin(np.abs(starts[candidates] - target))])

    return range(cut(rank), max(cut(rank), cut(rank + 1)))


def part_path(out_path: str | Path, rank: int, world_size: int) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}.part{rank:04d}-of-{world_size:04d}{out_path.suffix}")


def _leftover_names(out_path: Path) -> re.Pattern:
    """The names, beside ``out_path``, of its part files on any number of ranks (:func:`part_path`) and of the
    temporaries :func:`~timetuning.infra.files.atomic_path` writes for it or for one of its parts."""
    part = rf"{re.escape(out_path.stem)}\.part\d+-of-\d+{re.escape(out_path.suffix)}"
    return re.compile(rf"(?:{part}|\.(?:{re.escape(out_path.name)}|{part})\.[^.]+\.tmp)")


def remove_leftovers(out_path: str | Path) -> list[Path]:
    """Delete what a killed extraction of ``out_path`` (or one on another number of ranks) left beside it: its part
    files and temporaries; never ``out_path`` itself nor another split's or set's files. Returns what was removed."""
    out_path = Path(out_path)
    if not out_path.parent.is_dir():
        return []
    pattern = _leftover_names(out_path)
    removed = sorted(p for p in out_path.parent.iterdir() if p.is_file() and pattern.fullmatch(p.name))
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def merge_parts(parts: list[Path], out_path: str | Path, row_group_size: int = 65536) -> int:
    """Concatenate Parquet part files, in order, into ``out_path`` (written under a temporary name, then renamed),
    clip by clip through the same :class:`RowGroupWriter`, so the row groups, and the file, are those one process
    writes. The parts are removed afterwards. Returns the rows written."""
    stored = pq.read_schema(parts[0])
    info = feature_file(parts[0])  # the writer's schema (Parquet readers rename the list's child field)
    dtype = "float16" if stored.field("feature").type.value_type == pa.float16() else "float32"
    schema = feature_schema(info.dim, dtype, info.grid, info.input_size, info.weights_source)
    rows = 0
    with atomic_path(out_path) as tmp:
        writer = RowGroupWriter(tmp, schema, row_group_size)
        try:
            for part in parts:
                if not pq.read_schema(part).equals(stored, check_metadata=True):
                    raise ValueError(f"{part}: its schema differs from {parts[0]}'s: the parts are not one extraction")
                for batch in clip_batches(part):
                    writer.write(batch.cast(schema))
                    rows += batch.num_rows
        finally:
            writer.close()
    for part in parts:
        part.unlink()
    return rows


def extract_split_distributed(backbone: DenseBackbone, set_dir: str | Path, split: str, out_path: str | Path, *,
                              ctx: DistContext, row_group_size: int = 65536, **kwargs) -> dict:
    """:func:`extract_split` over the ranks of a torchrun job: each rank embeds its contiguous block of clips into
    its own part file; after a barrier rank 0 merges the parts in rank order into ``out_path``, so the rows, their
    order and the row groups are those of one process. Every rank returns the split's totals. First rank 0 removes
    the part files and temporaries a killed run left (:func:`remove_leftovers`), and no rank starts before it is done.
    """
    if ctx.is_main:
        remove_leftovers(out_path)
    barrier(ctx)  # no rank writes its part before the leftovers are gone
    if not ctx.distributed:
        return extract_split(backbone, set_dir, split, out_path, row_group_size=row_group_size, **kwargs)
    share = rank_share(clip_lengths(set_dir, split), ctx.rank, ctx.world_size, kwargs.get("batch_size", 16))
    mine = part_path(out_path, ctx.rank, ctx.world_size)
    stats = extract_split(backbone, set_dir, split, mine, row_group_size=row_group_size, only=share, **kwargs)
    everyone = all_gather_object(ctx, stats)
    if ctx.is_main:
        if sum(s["rows"] for s in everyone) == 0:
            raise FileNotFoundError(f"{set_dir}: split {split!r} has no clips")
        merge_parts([part_path(out_path, r, ctx.world_size) for r in range(ctx.world_size)], out_path,
                    row_group_size)
    barrier(ctx)
    seconds = max(s["forward_seconds"] for s in everyone)
    frames = sum(s["frames"] for s in everyone)
    return {**stats, "rows": sum(s["rows"] for s in everyone), "frames": frames, "forward_seconds": seconds,
            "frames_per_second": frames / seconds if seconds else 0.0}


def clip_rows(clip: EvalClip, feats: torch.Tensor, dataset: str, split: str, grid: int, num_classes: int,
              np_dtype: type, input_size: int, schema: pa.Schema) -> pa.RecordBatch:
    """The Parquet rows (one per patch) of one clip's features ``[T, D, g, g]``."""
    t, d = feats.shape[:2]
    square = resize_nearest(clip.masks, (input_size, input_size))  # the masks as the model saw the frames
    plabels = patch_labels(square, (grid, grid), num_classes)
    n = t * grid * grid
    vectors = feats.permute(0, 2, 3, 1).reshape(n, d).numpy().astype(np_dtype)
    tt, rr, cc = np.meshgrid(np.arange(t), np.arange(grid), np.arange(grid), indexing="ij")
    return pa.RecordBatch.from_arrays([
        pa.array([dataset] * n), pa.array([split] * n), pa.array([clip.clip_id] * n),
        pa.array([clip.video_id] * n), pa.array(tt.reshape(-1).astype(np.int16)),
        pa.array(rr.reshape(-1).astype(np.int16)), pa.array(cc.reshape(-1).astype(np.int16)),
        pa.array(plabels.reshape(-1)), pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), d),
    ], schema=schema)
