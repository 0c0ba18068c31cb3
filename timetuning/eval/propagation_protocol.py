"""The label propagation protocol over a split (J&F, :mod:`timetuning.eval.propagation`): the clips whose
shards carry instance masks, each object's scores kept with its video for the bootstrap.
"""

from __future__ import annotations

import numpy as np

from timetuning.eval.propagation import LabeledClip, evaluate_propagation
from timetuning.eval.protocol_result import ProtocolResult
from timetuning.eval.scores import GroupScores
from timetuning.eval.split_source import SplitSource
from timetuning.infra.config import FitProbesParams


def propagation_protocol(val: SplitSource, p: FitProbesParams, num_examples: int) -> ProtocolResult | None:
    """Semi-supervised video object segmentation (J&F) on the clips whose shards carry instance masks; each
    object's scores are kept with its video, for the bootstrap. None when the split has no instance masks."""
    order: list[int] = []  # the index in the split of each clip offered to the protocol

    def labeled():
        for i, (f, clip) in enumerate(val.clips()):
            if clip.instances is not None and clip.num_frames > 2:
                order.append(i)
                yield LabeledClip(clip.video_id, f.features, clip.instances)

    try:
        result = evaluate_propagation(labeled(), p.propagation, num_examples=num_examples)
    except ValueError:
        if order:  # a real error of a clip that has instance masks
            raise
        return None  # no clip carries instance masks
    index = {v: i for i, v in enumerate(val.videos)}
    video = np.array([index[o.video] for o in result.objects])
    j = np.array([o.j_mean for o in result.objects])
    f = np.array([o.f_mean for o in result.objects])
    scores = {"jf_mean": GroupScores(video, ((j + f) / 2)[None]), "j_mean": GroupScores(video, j[None]),
              "f_mean": GroupScores(video, f[None])}
    seen: dict[str, int] = {}
    examples = {}
    for clip_index, video_id in zip(order, (val.videos[val.clip_video[i]] for i in order)):
        k = seen.get(video_id, 0)
        seen[video_id] = k + 1
        match = [e for e in result.examples if e.video == video_id and e.clip == k]
        if clip_index < num_examples and match:
            examples[f"propagation/{clip_index}"] = match[0].predicted.astype(np.uint8)
    facts = {"propagation_objects": len(result.objects), "propagation_skipped": result.skipped}
    return ProtocolResult(scores, examples=examples, facts=facts)
