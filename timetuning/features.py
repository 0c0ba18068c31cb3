"""Dense patch features of evaluation clips -> Parquet, streamed in bounded memory.

One row per patch: dataset, split, clip id, video id, frame index, patch row/col, the patch label (majority class
of its pixels; ``ignore_index`` when most of its pixels are ignored) and the feature vector as a FixedSizeList
(float16 by default). Frames are resized to a square ``input_size`` (masks alike, nearest neighbour) so every
model sees the same grid; the full-resolution masks stay in the evaluation shards for pixel-level scoring.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Full, Queue
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from timetuning.backbones import DenseBackbone
from timetuning.files import atomic_path
from timetuning.metrics import IGNORE_INDEX
from timetuning.shards import clip_frames, decode_image, decode_mask, iter_shards, list_shards
from timetuning.transforms import eval_transform

T = TypeVar("T")


@dataclass
class EvalClip:
    clip_id: str
    video_id: str
    frames: np.ndarray  # [T, H, W, 3] uint8
    masks: np.ndarray  # [T, H, W] uint8


def read_labels(set_dir: str | Path) -> dict:
    path = Path(set_dir) / "labels.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels.json of the evaluation set not found (run the shard_eval stage)")
    return json.loads(path.read_text())


def iter_eval_clips(set_dir: str | Path, split: str, limit: int | None = None) -> Iterator[EvalClip]:
    """Clips of one split of an evaluation set, in shard order."""
    shards = list_shards(set_dir, split)
    if not shards:
        raise FileNotFoundError(f"{set_dir}: no {split}-*.tar shards")
    for i, sample in enumerate(iter_shards(shards)):
        if limit is not None and i >= limit:
            return
        names = clip_frames(sample)
        frames = np.stack([decode_image(sample[n]) for n in names])
        masks = np.stack([decode_mask(sample[n.replace(".jpg", ".png")]) for n in names])
        yield EvalClip(sample["__key__"], sample["json"]["video_id"], frames, masks)


def prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` in a background thread, at most ``depth`` ahead (JPEG/PNG decoding releases the GIL,
    so the next clips decode while the model runs); exceptions are re-raised in the caller."""
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


def patch_labels(masks: np.ndarray, grid: tuple[int, int], num_classes: int,
                 ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Majority label per patch: masks ``[T, H, W]`` (H, W divisible by the grid) -> ``[T, gh, gw]``."""
    t, h, w = masks.shape
    gh, gw = grid
    if h % gh or w % gw:
        raise ValueError(f"mask size {h}x{w} is not divisible into a {gh}x{gw} grid")
    blocks = masks.reshape(t, gh, h // gh, gw, w // gw).transpose(0, 1, 3, 2, 4).reshape(t * gh * gw, -1)
    codes = np.where(blocks == ignore_index, num_classes, blocks).astype(np.int64)
    index = np.arange(codes.shape[0])[:, None] * (num_classes + 1) + codes
    counts = np.bincount(index.reshape(-1), minlength=codes.shape[0] * (num_classes + 1))
    label = counts.reshape(codes.shape[0], num_classes + 1).argmax(1)
    label[label == num_classes] = ignore_index
    return label.reshape(t, gh, gw).astype(np.int16)


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of ``[T, H, W]`` masks to ``size`` x ``size``."""
    t, h, w = masks.shape
    rows = (np.arange(size) * h // size).clip(0, h - 1)
    cols = (np.arange(size) * w // size).clip(0, w - 1)
    return masks[:, rows][:, :, cols]


@torch.no_grad()
def dense_features(backbone: DenseBackbone, frames: np.ndarray, size: int, batch_size: int = 16,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """Features ``[T, D, size/stride, size/stride]`` of uint8 frames ``[T, H, W, 3]``."""
    x = eval_transform(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2), size, backbone.mean,
                       backbone.std)
    out = [backbone(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out)


def feature_schema(dim: int, dtype: str) -> pa.Schema:
    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema([
        ("dataset", pa.string()), ("split", pa.string()), ("clip_id", pa.string()), ("video_id", pa.string()),
        ("frame", pa.int16()), ("row", pa.int16()), ("col", pa.int16()), ("label", pa.int16()),
        ("feature", pa.list_(value, dim)),
    ])


def extract_split(backbone: DenseBackbone, set_dir: str | Path, split: str, out_path: str | Path, *,
                  input_size: int, dtype: str = "float16", batch_size: int = 16, row_group_size: int = 65536,
                  device: str = "cpu", progress: bool = True) -> dict:
    """Stream one split's clips through the backbone into a Parquet file; return counts and timing."""
    labels = read_labels(set_dir)
    num_classes = len(labels["classes"])
    dataset = Path(set_dir).name
    np_dtype = np.float16 if dtype == "float16" else np.float32
    stride = backbone.stride
    if input_size % stride:
        raise ValueError(f"extract_features.input_size {input_size} is not a multiple of the stride {stride}")
    grid = input_size // stride
    backbone.eval().to(device)
    rows = frames_done = 0
    seconds = 0.0
    writer = None
    buffer: list[pa.RecordBatch] = []
    buffered = 0
    total = labels["splits"].get(split)
    pending: list[EvalClip] = []  # clips whose frames are not all written yet, in order
    computed: list[torch.Tensor] = []  # features of the leading frames of ``pending``
    num_computed = 0

    def forward(limit: int) -> None:
        """One forward of the next ``limit`` not-yet-embedded frames of the pending clips (full batches)."""
        nonlocal seconds, num_computed
        frames = np.concatenate([c.frames for c in pending])[num_computed:num_computed + limit]
        start = time.perf_counter()
        computed.append(dense_features(backbone, frames, input_size, batch_size, device))  # [F, D, g, g]
        seconds += time.perf_counter() - start
        num_computed += frames.shape[0]

    def write_finished_clips() -> None:
        """Rows of every leading clip whose frames all have features; full row groups are flushed."""
        nonlocal rows, frames_done, writer, buffer, buffered, num_computed
        while pending and pending[0].frames.shape[0] <= num_computed:
            clip = pending.pop(0)
            t = clip.frames.shape[0]
            feats = torch.cat(computed) if len(computed) > 1 else computed[0]
            computed[:] = [feats[t:]]
            num_computed -= t
            batch = _clip_rows(clip, feats[:t], dataset, split, grid, num_classes, np_dtype, dtype, input_size)
            if writer is None:
                writer = pq.ParquetWriter(tmp, batch.schema, compression="zstd")
            buffer.append(batch)
            buffered += batch.num_rows
            if buffered >= row_group_size:  # bounded memory: flush full row groups as we go
                writer.write_table(pa.Table.from_batches(buffer), row_group_size=row_group_size)
                buffer, buffered = [], 0
            rows += batch.num_rows
            frames_done += t

    with atomic_path(out_path) as tmp:
        try:
            clips = prefetch(iter_eval_clips(set_dir, split), depth=2)
            for clip in tqdm(clips, total=total, desc=f"{dataset}/{split}", unit="clip", disable=not progress):
                pending.append(clip)
                waiting = sum(c.frames.shape[0] for c in pending) - num_computed
                if waiting >= batch_size:  # only full batches, the remainder waits for the next clip
                    forward(waiting - waiting % batch_size)
                    write_finished_clips()
            waiting = sum(c.frames.shape[0] for c in pending) - num_computed
            if waiting:
                forward(waiting)
                write_finished_clips()
            if writer is None:
                raise FileNotFoundError(f"{set_dir}: split {split!r} has no clips")
            if buffer:
                writer.write_table(pa.Table.from_batches(buffer), row_group_size=row_group_size)
        finally:
            if writer is not None:
                writer.close()
    return {"rows": rows, "frames": frames_done, "grid": grid, "dim": int(backbone.embed_dim),
            "forward_seconds": seconds, "frames_per_second": frames_done / seconds if seconds else 0.0}


def _clip_rows(clip: EvalClip, feats: torch.Tensor, dataset: str, split: str, grid: int, num_classes: int,
               np_dtype: type, dtype: str, input_size: int) -> pa.RecordBatch:
    """The Parquet rows (one per patch) of one clip's features ``[T, D, g, g]``."""
    t, d = feats.shape[:2]
    plabels = patch_labels(resize_masks(clip.masks, input_size), (grid, grid), num_classes)
    n = t * grid * grid
    vectors = feats.permute(0, 2, 3, 1).reshape(n, d).numpy().astype(np_dtype)
    tt, rr, cc = np.meshgrid(np.arange(t), np.arange(grid), np.arange(grid), indexing="ij")
    return pa.RecordBatch.from_arrays([
        pa.array([dataset] * n), pa.array([split] * n), pa.array([clip.clip_id] * n),
        pa.array([clip.video_id] * n), pa.array(tt.reshape(-1).astype(np.int16)),
        pa.array(rr.reshape(-1).astype(np.int16)), pa.array(cc.reshape(-1).astype(np.int16)),
        pa.array(plabels.reshape(-1)), pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), d),
    ], schema=feature_schema(d, dtype))


def read_features(path: str | Path, columns: list[str] | None = None) -> dict[str, np.ndarray]:
    """A features Parquet file as numpy arrays (``feature`` as ``[N, D]`` float32)."""
    table = pq.read_table(path, columns=columns)
    out = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if name == "feature":
            out[name] = col.values.to_numpy(zero_copy_only=False).reshape(len(col), -1).astype(np.float32)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out
