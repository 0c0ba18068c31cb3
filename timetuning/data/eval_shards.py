"""Evaluation shards: labeled sets written as ``<set>/<split>-%06d.tar`` (+ labels.json, manifest.json), and read
back as clips.

A sample is one clip of a sequence: frames ``f{t}.jpg`` at the set's stored size (short side ``size``, aspect ratio
kept, so clips of different videos may differ in size), class-id masks ``f{t}.png`` at the same size (255 = ignore)
and, where the layout has them, instance-id masks ``f{t}.inst.png``.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from timetuning.data.datasets import VOC_CLASSES, DatasetError, read_sequences, sequence_samples, split_note
from timetuning.data.labels import IGNORE_INDEX
from timetuning.data.layouts import split_source, voc_mask_folder
from timetuning.data.shard_index import index_shards, read_sample
from timetuning.data.shards import ShardWriter, clip_frames, decode_image, decode_mask, iter_shards, list_shards
from timetuning.infra.config import EvalSetParams
from timetuning.infra.files import write_json_atomic

log = logging.getLogger(__name__)


def shard_eval_set(params: EvalSetParams, output_dir: str | Path, on_error: str = "skip", maxcount: int = 256,
                   progress: bool = True) -> dict[str, Any]:
    """Write every split of one labeled set as shards; bad sequences raise or are skipped and reported.

    The manifest lists the skipped sequences with the file and reason, warns about classes that no mask of the
    sharded frames holds (a class list that does not fit the set, e.g. Pascal's 21 names on a set of your own),
    says where each split's IDs came from (``split_sources``) and, in ``notes``, what was chosen for the set
    rather than named (every image as the split, labelme's mask folder).
    """
    out = Path(output_dir) / params.name
    # every split's listing and class list first: a set that does not fit its layout fails before the previous
    # shards are removed
    listed = {split: read_sequences(params, split) for split in params.splits}
    classes = listed[params.splits[0]][1]
    for split, (_, split_classes) in listed.items():
        if split_classes != classes:
            raise DatasetError(f"shard_eval.sets.{params.name}: split {split!r} has classes {split_classes}, split "
                               f"{params.splits[0]!r} {classes}: give the set's class list in "
                               f"shard_eval.sets.{params.name}.classes")
    notes = layout_notes(params)  # the stage logs them
    shutil.rmtree(out, ignore_errors=True)
    split_counts: dict[str, int] = {}
    skipped: list[dict[str, str]] = []
    shards: list[dict[str, Any]] = []
    seen = np.zeros(256, bool)  # class ids found in the masks written
    # instance masks are kept (f<t>.inst.png) when every sequence's masks hold instance ids
    instances = all(seq.instances for sequences, _ in listed.values() for seq in sequences)
    for split, (sequences, _) in listed.items():
        count = 0
        with ShardWriter(out, prefix=split, maxcount=maxcount) as writer:
            for seq in tqdm(sequences, desc=f"{params.name}/{split}", unit="seq", disable=not progress):
                seq_seen = np.zeros(256, bool)
                try:
                    samples = list(sequence_samples(seq, params, split, len(classes), seq_seen))
                except DatasetError as err:
                    if on_error == "raise":
                        raise
                    log.info("skipped sequence %s: %s", seq.video_id, err)  # the stage lists them at its end
                    skipped.append({"split": split, "video_id": seq.video_id, "reason": str(err)})
                    continue
                seen |= seq_seen
                for sample in samples:
                    if params.max_samples is not None and count >= params.max_samples:
                        break
                    writer.write(sample)
                    count += 1
        if count == 0:
            example = f"; e.g. {skipped[-1]['reason']}" if skipped else ""
            raise DatasetError(f"shard_eval.sets.{params.name}: split {split!r} produced no samples "
                               f"({len(skipped)} sequence(s) skipped{example})")
        split_counts[split] = count
        shards += [vars(r) | {"split": split} for r in writer.records]
    warnings = unseen_class_warnings(params, classes, seen)
    for warning in warnings:
        log.info("%s: %s", params.name, warning)
    labels = {"classes": [{"id": i, "name": n} for i, n in enumerate(classes)],
              "ignore_index": IGNORE_INDEX, "layout": params.layout, "splits": split_counts,
              "instances": instances}
    write_json_atomic(out / "labels.json", labels)
    manifest = {"set": params.model_dump(mode="json"), "splits": split_counts, "skipped": skipped, "shards": shards,
                "classes_seen": [i for i in range(len(classes)) if seen[i]], "warnings": warnings,
                "split_sources": {split: split_note(params, split) for split in params.splits}, "notes": notes}
    write_json_atomic(out / "manifest.json", manifest)
    return manifest


def layout_notes(params: EvalSetParams) -> list[str]:
    """What the set's layout chose by itself, in words: a split made of every image (no split file), labelme's
    mask folder found beside its .npy labels."""
    notes = []
    for split in params.splits:
        source = split_source(params, split)
        if source.kind == "all":
            notes.append(f"split {split!r}: {source.note}; to choose the images, list them in "
                         f"shard_eval.sets.{params.name}.video_lists.{split}")
    if params.layout == "voc" and (masks := voc_mask_folder(params)).note:
        notes.append(f"masks: {masks.note}; set shard_eval.sets.{params.name}.mask_dir to choose another folder")
    return notes


def unseen_class_warnings(params: EvalSetParams, classes: list[str], seen: np.ndarray) -> list[str]:
    """Classes of the set's list that no written mask holds: a class list that may not fit the set."""
    unseen = [i for i in range(len(classes)) if not seen[i]]
    if not unseen:
        return []
    names = ", ".join(f"{i}={classes[i]}" for i in unseen[:8]) + (" ..." if len(unseen) > 8 else "")
    key = f"shard_eval.sets.{params.name}.classes"
    if params.layout == "voc" and params.classes is None and classes == list(VOC_CLASSES):
        return [f"{len(unseen)} of Pascal VOC's {len(classes)} classes appear in no mask ({names}); if this set "
                f"is not Pascal VOC, give its class names in {key}"]
    return [f"{len(unseen)} of the {len(classes)} classes appear in no mask ({names}); check {key} "
            "(K for clustering is the number of classes)"]


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class EvalClip:
    clip_id: str
    video_id: str
    frames: np.ndarray | None  # [T, H, W, 3] uint8 (None when only masks were read)
    masks: np.ndarray  # [T, H, W] uint8 class ids
    instances: np.ndarray | None = None  # [T, H, W] uint8 instance ids, where the layout has them

    @property
    def num_frames(self) -> int:
        return int(self.masks.shape[0])


def read_labels(set_dir: str | Path) -> dict:
    """A set's ``labels.json``: class ids and names, the ignore index, the layout and samples per split."""
    path = Path(set_dir) / "labels.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels.json of the evaluation set not found (run the shard_eval stage)")
    return json.loads(path.read_text())


def clip_lengths(set_dir: str | Path, split: str) -> list[int]:
    """Frames of each clip of a split, in shard order, from the tar headers (no member's data is read)."""
    return [len(clip_frames(dict.fromkeys(ref.extensions()))) for ref in index_shards(list_shards(set_dir, split))]


def iter_eval_clips(set_dir: str | Path, split: str, limit: int | None = None, frames: bool = True,
                    only: range | None = None) -> Iterator[EvalClip]:
    """Clips of one split of an evaluation set, in shard order (``frames=False`` skips decoding the images;
    ``only``: the clips at these positions, found by the tar headers; no other clip is read)."""
    shards = list_shards(set_dir, split)
    if not shards:
        raise FileNotFoundError(f"{set_dir}: no {split}-*.tar shards (run the shard_eval stage)")
    if only is None:
        samples = enumerate(iter_shards(shards))
    else:  # the tar headers say where those clips lie: only their members are read
        refs = index_shards(shards)
        samples = ((i, read_sample(refs[i])) for i in only if i < len(refs))
    for i, sample in samples:
        if limit is not None and i >= limit:
            return
        names = clip_frames(sample)
        images = np.stack([decode_image(sample[n]) for n in names]) if frames else None
        masks = np.stack([decode_mask(sample[n.replace(".jpg", ".png")]) for n in names])
        inst_names = [n.replace(".jpg", ".inst.png") for n in names]
        instances = np.stack([decode_mask(sample[n]) for n in inst_names]) if inst_names[0] in sample else None
        yield EvalClip(sample["__key__"], sample["json"]["video_id"], images, masks, instances)
