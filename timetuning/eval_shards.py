"""Labeled evaluation sets -> evaluation shards (one folder per set: ``<split>-%06d.tar``, labels.json, manifest)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from tqdm import tqdm

from timetuning.config import EvalSetParams
from timetuning.datasets import IGNORE_INDEX, DatasetError, read_sequences, sequence_samples
from timetuning.files import write_json_atomic
from timetuning.shards import ShardWriter

log = logging.getLogger(__name__)


def shard_eval_set(params: EvalSetParams, output_dir: str | Path, on_error: str = "skip", maxcount: int = 256,
                   progress: bool = True) -> dict[str, Any]:
    """Write every split of one labeled set as shards; bad sequences raise or are skipped and reported."""
    out = Path(output_dir) / params.name
    shutil.rmtree(out, ignore_errors=True)
    classes: list[str] | None = None
    instances = bool(params.splits)  # every sequence of every split carries instance ids
    split_counts: dict[str, int] = {}
    skipped: list[dict[str, str]] = []
    shards: list[dict[str, Any]] = []
    for split in params.splits:
        sequences, split_classes = read_sequences(params, split)
        if classes is not None and split_classes != classes:
            raise DatasetError(f"shard_eval.sets[{params.name}]: split {split!r} has different classes")
        classes = split_classes
        instances = instances and all(seq.instances for seq in sequences)
        count = 0
        with ShardWriter(out, prefix=split, maxcount=maxcount) as writer:
            for seq in tqdm(sequences, desc=f"{params.name}/{split}", unit="seq", disable=not progress):
                try:
                    samples = list(sequence_samples(seq, params, split, len(classes)))
                except DatasetError as err:
                    if on_error == "raise":
                        raise
                    log.warning("skipped sequence %s: %s", seq.video_id, err)
                    skipped.append({"split": split, "video_id": seq.video_id, "reason": str(err)})
                    continue
                for sample in samples:
                    if params.max_samples is not None and count >= params.max_samples:
                        break
                    writer.write(sample)
                    count += 1
        if count == 0:
            raise DatasetError(f"shard_eval.sets[{params.name}]: split {split!r} produced no samples "
                               f"({len(skipped)} sequence(s) skipped)")
        split_counts[split] = count
        shards += [vars(r) | {"split": split} for r in writer.records]
    labels = {"classes": [{"id": i, "name": n} for i, n in enumerate(classes or [])],
              "ignore_index": IGNORE_INDEX, "layout": params.layout, "splits": split_counts,
              "instances": instances}
    write_json_atomic(out / "labels.json", labels)
    manifest = {"set": params.model_dump(mode="json"), "splits": split_counts, "skipped": skipped, "shards": shards}
    write_json_atomic(out / "manifest.json", manifest)
    return manifest
