"""Supervised read-outs of frozen features over a split: the linear probe (trained on the set's train split,
streamed each epoch) and Hummingbird dense retrieval (a memory bank of train patches), both scored per pixel at
each val frame's stored mask size.
"""

from __future__ import annotations

import tempfile
from itertools import zip_longest

import numpy as np
import torch

from timetuning.data.eval_shards import iter_eval_clips
from timetuning.eval.masks import soft_patch_labels
from timetuning.eval.metrics import confusion_matrix
from timetuning.eval.probes import (
    MemoryBank,
    predict_linear_probe,
    retrieval_votes,
    train_linear_probes,
    upsampled_argmax,
)
from timetuning.eval.protocol_result import ProtocolResult
from timetuning.eval.retrieval import bank_search
from timetuning.eval.scores import ConfusionScores
from timetuning.eval.split_source import SplitSource, compute_device
from timetuning.eval.upsampling import resize_nearest
from timetuning.infra.config import FitProbesParams


def linear_protocol(train: SplitSource, val: SplitSource, num_classes: int, p: FitProbesParams,
                    num_examples: int) -> ProtocolResult:
    """The linear probe per seed: trained on ``train`` (streamed each epoch), scored per pixel at each val frame's
    stored mask size."""
    size = (p.linear_train_size,) * 2
    with tempfile.TemporaryFile(prefix="linear-targets-") as targets:
        # the train masks at training size, decoded once and read back each epoch: memory flat in the split's size
        written = []  # (clip id, frames) in file order
        for clip in iter_eval_clips(train.set_dir, train.split, frames=False):
            targets.write(np.ascontiguousarray(resize_nearest(clip.masks, size), np.uint8).data)
            written.append((clip.clip_id, clip.num_frames))

        def stream():
            targets.seek(0)
            for f, shard_clip in zip_longest(train.feature_clips(), written):
                clip_id, frames = shard_clip or (None, 0)
                train.check(f, clip_id, frames)
                masks = torch.empty((frames, *size), dtype=torch.uint8)
                targets.readinto(masks.numpy().data)
                yield f.features, masks

        probes = train_linear_probes(stream, train.info.dim, num_classes, seeds=p.seeds, epochs=p.linear_epochs,
                                     lr=p.linear_lr, drop_epoch=p.linear_drop_epoch, device=compute_device())
    confusion = np.zeros((len(p.seeds), len(val.videos), num_classes, num_classes), np.int64)
    examples: dict[str, np.ndarray] = {}
    for i, (f, clip) in enumerate(val.clips()):
        for s, probe in enumerate(probes):
            pred = predict_linear_probe(probe, f.features, clip.masks.shape[-2:])
            confusion[s, val.clip_video[i]] += confusion_matrix(pred, clip.masks, num_classes, num_classes)
            if s == 0 and i < num_examples:
                examples[f"linear/{i}"] = pred
    return ProtocolResult({"linear": ConfusionScores(confusion, "none")}, examples=examples)


def retrieval_protocol(train: SplitSource, val: SplitSource, num_classes: int, p: FitProbesParams,
                       num_examples: int) -> ProtocolResult:
    """Hummingbird retrieval; one run per seed when the memory bank is a sample of the train patches, each bank
    searched the ``hummingbird_search`` way (the facts say how)."""
    total = train.info.rows
    seeds = p.seeds if total > p.hummingbird_memory else p.seeds[:1]
    confusion = np.zeros((len(seeds), len(val.videos), num_classes, num_classes), np.int64)
    examples: dict[str, np.ndarray] = {}
    size = train.info.input_size
    searches: list[str] = []  # how each seed's bank was searched
    for s, seed in enumerate(seeds):
        bank = MemoryBank(total, p.hummingbird_memory, seed)
        for f, clip in train.clips():
            bank.add(f.features, soft_patch_labels(resize_nearest(clip.masks, (size, size)), train.info.grid,
                                                   num_classes))
        features, labels = (t.to(compute_device()) for t in bank.tensors())
        search = bank_search(features, p.hummingbird_search, min(p.hummingbird_k, len(features)), seed)
        searches.append(search.description)
        for i, (f, clip) in enumerate(val.clips()):
            votes = retrieval_votes(features, labels, f.features.to(features.device), k=p.hummingbird_k,
                                    temperature=p.hummingbird_temperature, search=search).cpu()
            pred = upsampled_argmax(votes, clip.masks.shape[-2:])
            confusion[s, val.clip_video[i]] += confusion_matrix(pred, clip.masks, num_classes, num_classes)
            if s == 0 and i < num_examples:
                examples[f"retrieval/{i}"] = pred
        del bank, features, labels, search  # the next seed's bank is filled with this one gone
    return ProtocolResult({"hummingbird": ConfusionScores(confusion, "none")}, examples=examples,
                          facts={"hummingbird_search": sorted(set(searches))})
