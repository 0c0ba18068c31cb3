"""Every evaluation protocol for one model on one labeled set, streamed from its features and its shards.

The protocols and their choices (docs/evaluation.md; TimeT's reference unless said otherwise):
- clustering per frame, per clip and per dataset (:mod:`timetuning.eval.clustering`): scaler + PCA fitted once on the
  scored split, pixels of bilinearly upsampled features clustered at a square evaluation size, K = classes present
  in the group, Hungarian matching, mIoU over the classes present; robustness variants change one choice each;
- overclustering: per dataset, K fixed, many-to-one matching by precision;
- linear probe and Hummingbird retrieval (:mod:`timetuning.eval.probes`), fitted on the set's train split and scored per
  pixel at each frame's stored mask size;
- temporal stability of the per-frame and per-clip cluster maps (:mod:`timetuning.eval.temporal`).
Each returns a :class:`~timetuning.eval.protocol_result.ProtocolResult` of per-video statistics
(:mod:`timetuning.eval.scores`), so a model's numbers and the bootstrap interval of a difference between models come
from the same data. Only one chunk of clips is in memory at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from timetuning.eval.cluster_protocols import dataset_protocols, fit_split_pca, group_protocols
from timetuning.eval.clustering import (
    TIMET,
    VARIANTS,
)
from timetuning.eval.probe_protocols import linear_protocol, retrieval_protocol
from timetuning.eval.progress import EvalProgress
from timetuning.eval.propagation_protocol import propagation_protocol
from timetuning.eval.protocol_result import ProtocolResult
from timetuning.eval.scores import DifferenceScores
from timetuning.eval.split_source import SplitSource
from timetuning.infra.config import FitProbesParams


def evaluate_model(val: SplitSource, train: SplitSource | None, num_classes: int, p: FitProbesParams,
                   num_examples: int = 3, progress: EvalProgress | None = None) -> ProtocolResult:
    """Every protocol for one model on one set (scored on ``val``; probes fitted on ``train`` when given);
    ``progress`` is told which protocol runs and of every clip read."""
    variants = [TIMET] + [VARIANTS[name] for name in p.robustness_variants]
    step = _progress_steps(val, train, p, progress)
    step("standardise + PCA", 0)
    pca = fit_split_pca(val, p.pca_dim)
    step("clustering per frame/clip", len(val.clip_frames))
    result = group_protocols(val, pca, num_classes, p, variants, num_examples)
    step("clustering per dataset", len(val.clip_frames), passes=2)
    result = result.merge(dataset_protocols(val, pca, num_classes, p, variants, num_examples))
    result.variant_scores = {v.name: result.variant_scores.get(v.name, {}) for v in variants[1:]}
    if "cluster_per_clip" in result.scores:
        result.scores["temporal_clip_minus_frame_miou"] = DifferenceScores(result.scores["cluster_per_clip"],
                                                                           result.scores["cluster_per_frame"])
    if not val.has_time:
        why = "single-frame clips (an image set): no time"
        for key in ("cluster_per_clip", "temporal_stability_per_frame", "temporal_stability_per_clip",
                    "temporal_clip_minus_frame_miou"):
            result.not_applicable[key] = why
    if train is not None:
        step("linear probe", len(train.clip_frames), passes=p.linear_epochs, unit="epoch")
        result = result.merge(linear_protocol(train, val, num_classes, p, num_examples))
        step("retrieval (Hummingbird)", len(train.clip_frames) + len(val.clip_frames))
        result = result.merge(retrieval_protocol(train, val, num_classes, p, num_examples))
    else:
        for key in ("linear", "hummingbird"):
            result.not_applicable[key] = "the set has no train split to fit on"
    if val.has_time:
        step("label propagation", len(val.clip_frames))
    propagation = propagation_protocol(val, p, num_examples) if val.has_time else None
    if propagation is None:
        for key in ("jf_mean", "j_mean", "f_mean"):
            result.not_applicable[key] = "no instance masks (label propagation needs a DAVIS-style " \
                "instance-annotated set)" if val.has_time else "single-frame clips (an image set): nothing to propagate"
    else:
        result = result.merge(propagation)
    result.facts.update(pca_dim=pca.dim, pca_explained_variance=float(pca.explained_variance_ratio.sum()),
                        frames=val.num_frames, clips=len(val.clip_frames), videos=len(val.videos),
                        grid=val.info.grid, feature_dim=val.info.dim, input_size=val.info.input_size,
                        weights_source=json.loads(val.info.weights_source) if val.info.weights_source else None)
    return result


def _progress_steps(val: SplitSource, train: SplitSource | None, p: FitProbesParams,
                    progress: EvalProgress | None) -> Callable[..., None]:
    """``step(protocol, clips, passes=1, unit="clip")``: tells ``progress`` (if any) that a protocol begins, after
    hooking it to every clip the sources read."""
    if progress is None:
        return lambda *args, **kwargs: None
    progress.protocols = 3 + (2 if train is not None else 0) + (1 if val.has_time else 0)
    for source in (val, train):
        if source is not None:
            source.on_clip = progress.clip_read
    return progress.start_protocol
