"""Every evaluation protocol for one model on one labeled set, streamed from its features and its shards.

The protocols and their choices (README "Evaluation protocols"; TimeT's reference unless said otherwise):
- clustering per frame, per clip and per dataset (:mod:`timetuning.clustering`): scaler + PCA fitted once on the
  scored split, pixels of bilinearly upsampled features clustered at a square evaluation size, K = classes present
  in the group, Hungarian matching, mIoU over the classes present; robustness variants change one choice each;
- overclustering: per dataset, K fixed, many-to-one matching by precision;
- linear probe and Hummingbird retrieval (:mod:`timetuning.probes`), fitted on the set's train split and scored per
  pixel at each frame's stored mask size;
- temporal stability of the per-frame and per-clip cluster maps (:mod:`timetuning.temporal`).
Each returns per-video statistics (:mod:`timetuning.scores`), so a model's numbers and the bootstrap interval of a
difference between models come from the same data. Only one chunk of clips is in memory at a time.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from timetuning.clustering import (TIMET, VARIANTS, ClusterVariant, KMeansSettings, assign_clusters,
                                   classes_present, cluster_groups, group_pca, match_group, sample_points)
from timetuning.config import FitProbesParams
from timetuning.eval_shards import EvalClip, iter_eval_clips
from timetuning.features import STREAM_ROWS, FeatureClip, feature_file, iter_feature_clips, open_stream
from timetuning.kmeans import batched_kmeans
from timetuning.masks import soft_patch_labels
from timetuning.metrics import confusion_matrix, hungarian_mapping
from timetuning.pca import StandardPCA, fit_standard_pca
from timetuning.probes import (MemoryBank, predict_linear_probe, retrieval_votes, train_linear_probes,
                               upsampled_argmax)
from timetuning.propagation import LabeledClip, evaluate_propagation
from timetuning.scores import ConfusionScores, DifferenceScores, GroupScores, RatioScores, Scores
from timetuning.temporal import stable_counts
from timetuning.upsampling import resize_nearest

CHUNK_FRAMES = 16  # frames of features (and their masks) in memory at a time: bounds the peak memory (a 64-frame
# chunk of per-frame k-means problems on 384-dim features took ~850 MiB; 16 frames ~250 MiB, and it is no slower)


@dataclass
class SplitSource:
    """One split of one set as one model saw it: its features file and the set's shards (for the masks)."""

    features: Path
    set_dir: Path
    split: str
    videos: list[str] = field(default_factory=list)  # video ids in order of first appearance
    clip_video: list[int] = field(default_factory=list)  # video index of each clip
    clip_frames: list[int] = field(default_factory=list)  # frames of each clip
    batch_rows: int = STREAM_ROWS  # Parquet rows read at a time

    def __post_init__(self) -> None:
        self.info = feature_file(self.features)
        import pyarrow.compute as pc

        index: dict[str, int] = {}
        rows: list[int] = []  # rows of each clip
        last = None
        batches = open_stream(self.features).iter_batches(self.batch_rows, columns=["clip_id", "video_id"])
        for batch in batches:  # clip boundaries by Arrow's compute, so no per-row Python object is ever made
            clips, videos = batch.column(0), batch.column(1)
            changes = pc.not_equal(clips.slice(1), clips.slice(0, len(clips) - 1))
            starts = [0] + (np.flatnonzero(changes.to_numpy(zero_copy_only=False)) + 1).tolist()
            if last is not None and clips[0].as_py() == last:  # the batch goes on with the previous clip
                rows[-1] += (starts[1] if len(starts) > 1 else len(clips))
                starts = starts[1:]
            for a, b in zip(starts, starts[1:] + [len(clips)]):
                self.clip_video.append(index.setdefault(videos[a].as_py(), len(index)))
                rows.append(b - a)
            last = clips[len(clips) - 1].as_py()
        per_frame = self.info.grid ** 2
        self.clip_frames = [r // per_frame for r in rows]
        self.videos = list(index)

    @property
    def num_frames(self) -> int:
        return int(sum(self.clip_frames))

    @property
    def has_time(self) -> bool:
        """Whether any clip has more than one frame (image sets have none)."""
        return max(self.clip_frames, default=1) > 1

    def clips(self, frames: bool = False) -> Iterator[tuple[FeatureClip, EvalClip]]:
        """Features and masks of every clip, in order, checked to belong together."""
        pairs = zip_longest(iter_feature_clips(self.features), iter_eval_clips(self.set_dir, self.split, frames=frames))
        for feats, clip in pairs:
            self.check(feats, getattr(clip, "clip_id", None), getattr(clip, "num_frames", 0))
            yield feats, clip

    def check(self, feats: FeatureClip | None, clip_id: str | None, frames: int) -> None:
        """Raise unless ``feats`` are the features of the shards' clip ``clip_id`` of ``frames`` frames (a stale
        extraction, or one of another set or split)."""
        if feats is None or clip_id is None or (feats.clip_id, feats.features.shape[0]) != (clip_id, frames):
            raise ValueError(f"{self.features} does not match the shards of {self.set_dir}/{self.split} "
                             f"(clip {getattr(feats, 'clip_id', None)} vs {clip_id}): rerun extract_features")

    def chunks(self, desc: str, frames: bool = False) -> Iterator[list[tuple[int, FeatureClip, EvalClip]]]:
        """Consecutive clips (with their clip index) of about ``CHUNK_FRAMES`` frames."""
        chunk: list[tuple[int, FeatureClip, EvalClip]] = []
        bar = tqdm(total=len(self.clip_frames), desc=desc, unit="clip", leave=False)
        for i, (feats, clip) in enumerate(self.clips(frames)):
            chunk.append((i, feats, clip))
            if sum(c.num_frames for _, _, c in chunk) >= CHUNK_FRAMES:
                bar.update(len(chunk))
                yield chunk
                chunk = []
        if chunk:
            bar.update(len(chunk))
            yield chunk
        bar.close()


def compute_device() -> torch.device:
    """Where the linear probe trains and the retrieval searches: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def settings_of(p: FitProbesParams) -> KMeansSettings:
    return KMeansSettings(p.kmeans_iterations, p.kmeans_restarts, p.kmeans_points_per_centroid)


def fit_split_pca(source: SplitSource, dim: int) -> StandardPCA:
    """The scaler + PCA of the split (TimeT fits them once on the evaluated set)."""
    return fit_standard_pca((f.features.permute(0, 2, 3, 1).reshape(-1, f.features.shape[1])
                             for f in iter_feature_clips(source.features)), dim)


def feature_maps(kind: str, features: torch.Tensor, pca: StandardPCA) -> torch.Tensor:
    """``[T, D, g, g]`` -> the maps a variant clusters (``pca_per_group`` maps are made per group)."""
    if kind == "l2":
        return F.normalize(features.float(), dim=1)
    return pca.transform(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------- per frame / clip
@dataclass
class GroupResult:
    scores: dict[tuple[str, str], GroupScores]  # (variant, scope) -> scores
    stability: dict[str, RatioScores]  # scope -> temporal stability (TimeT variant)
    examples: dict[str, np.ndarray]  # "cluster_per_clip/<clip index>" -> matched cluster maps


def group_protocols(source: SplitSource, pca: StandardPCA, num_classes: int, p: FitProbesParams,
                    variants: list[ClusterVariant], num_examples: int) -> GroupResult:
    """Per-frame and per-clip clustering (one k-means and matching per group) for every variant and seed."""
    size = (p.cluster_eval_size or source.info.input_size,) * 2
    scopes = ["per_frame", "per_clip"] if source.has_time else ["per_frame"]
    settings, seeds = settings_of(p), p.seeds
    video_of_frame = np.repeat(source.clip_video, source.clip_frames)
    group_video = {"per_frame": video_of_frame, "per_clip": np.asarray(source.clip_video)}
    mious = {(v.name, s): np.full((len(seeds), len(group_video[s])), np.nan) for v in variants for s in scopes}
    stable = {s: np.zeros((len(seeds), len(source.videos), 2)) for s in scopes}
    examples: dict[str, np.ndarray] = {}
    frame_offsets = np.concatenate([[0], np.cumsum(source.clip_frames)])
    for chunk in source.chunks("clustering per frame/clip"):
        masks = {i: resize_nearest(c.masks, size) for i, _, c in chunk}
        reduced = {i: feature_maps("pca", f.features, pca) for i, f, _ in chunk}
        normalised = {i: feature_maps("l2", f.features, pca) for i, f, _ in chunk} \
            if any(v.features == "l2" for v in variants) else {}
        for variant in variants:
            for scope in scopes:
                groups = []  # (key, clip index, frame slice within the clip, maps, masks)
                for i, f, _ in chunk:
                    spans = [slice(t, t + 1) for t in range(f.features.shape[0])] if scope == "per_frame" \
                        else [slice(0, f.features.shape[0])]
                    for span in spans:
                        key = frame_offsets[i] + span.start if scope == "per_frame" else i
                        if variant.features == "pca_per_group":
                            maps = group_pca(f.features[span], p.pca_dim)
                        else:
                            maps = (normalised if variant.features == "l2" else reduced)[i][span]
                        groups.append((int(key), i, span, maps, masks[i][span]))
                ks = [classes_present(m) if variant.k_rule == "present" else num_classes for *_, m in groups]
                live = [g for g, k in zip(groups, ks) if k > 0]  # a group with no scored pixel has no score
                live_k = [k for k in ks if k > 0]
                if not live:
                    continue
                for s, seed in enumerate(seeds):
                    ids = cluster_groups([g[3] for g in live], live_k, [g[0] for g in live], size=size,
                                         pixels=variant.pixels, seed=seed, settings=settings)
                    predictions: dict[int, list[np.ndarray]] = {}
                    for (key, i, span, _, m), k, cluster_ids in zip(live, live_k, ids):
                        score = match_group(cluster_ids, m, num_classes, k)
                        mious[(variant.name, scope)][s, key] = score.miou
                        predictions.setdefault(i, []).append(score.mapping[cluster_ids])
                    if variant is not TIMET:
                        continue
                    for i, preds in predictions.items():
                        pred = np.concatenate(preds)
                        if scope in ("per_frame", "per_clip") and source.has_time and len(pred) == len(masks[i]):
                            stable[scope][s, source.clip_video[i]] += stable_counts(pred, masks[i])
                        if s == 0 and i < num_examples and (scope == "per_clip" or not source.has_time):
                            examples[f"cluster/{i}"] = pred.astype(np.uint8)
    scores = {key: GroupScores(group_video[key[1]], value) for key, value in mious.items()}
    stability = {s: RatioScores(v) for s, v in stable.items()} if source.has_time else {}
    return GroupResult(scores, stability, examples)


# ---------------------------------------------------------------------------------------------- per dataset
@dataclass
class DatasetConfig:
    name: str  # variant name or "overcluster_k<K>"
    variant: ClusterVariant
    k: int | None  # None: classes present in the split
    matching: str


def dataset_protocols(source: SplitSource, pca: StandardPCA, num_classes: int, p: FitProbesParams,
                      variants: list[ClusterVariant], num_examples: int
                      ) -> tuple[dict[str, ConfusionScores], dict[str, Any], dict[str, np.ndarray]]:
    """One k-means over the whole split per config and seed: the TimeT protocol, its variants (``pca_per_group``
    is the TimeT protocol itself at this scope) and overclustering."""
    size = (p.dataset_eval_size,) * 2
    settings = settings_of(p)
    configs = [DatasetConfig(v.name, v, None if v.k_rule == "present" else num_classes, "hungarian")
               for v in variants if v.features != "pca_per_group"]
    configs += [DatasetConfig(f"overcluster_k{k}", TIMET, k, "greedy") for k in p.overclustering_k]
    frames, grid = source.num_frames, source.info.grid
    totals = {True: frames * size[0] * size[1], False: frames * grid * grid}  # pixels / patches
    k_bound = max([num_classes] + list(p.overclustering_k))
    orders = {(seed, pixels): np.random.default_rng([seed, 7]).choice(
        totals[pixels], min(totals[pixels], k_bound * settings.points_per_centroid), replace=False)
        for seed in p.seeds for pixels in (True, False)}
    kinds = {(c.variant.features, c.variant.pixels) for c in configs}
    dims = {"pca": pca.dim, "l2": source.info.dim}
    samples = {(seed, kind, pixels): torch.zeros(len(orders[(seed, pixels)]), dims[kind])
               for seed in p.seeds for kind, pixels in kinds}
    class_pixels = np.zeros(num_classes, np.int64)
    offset = 0
    for chunk in source.chunks("clustering per dataset: sampling"):
        feats = torch.cat([f.features for _, f, _ in chunk])
        class_pixels += np.bincount(np.concatenate([resize_nearest(c.masks, size).ravel() for *_, c in chunk]),
                                    minlength=256)[:num_classes]
        n = feats.shape[0]
        maps = {kind: feature_maps(kind, feats, pca) for kind in {k for k, _ in kinds}}
        for (seed, kind, pixels), store in samples.items():
            order = orders[(seed, pixels)]
            per_frame = totals[pixels] // frames
            lo, hi = offset * per_frame, (offset + n) * per_frame
            where = np.flatnonzero((order >= lo) & (order < hi))
            store[torch.from_numpy(where)] = sample_points(maps[kind], order[where] - lo, size, pixels)
        offset += n
    present = int((class_pixels > 0).sum())
    centroids = {}
    for c in configs:
        k = c.k if c.k is not None else max(present, 1)
        for seed in p.seeds:
            n = min(totals[c.variant.pixels], k * settings.points_per_centroid)
            points = samples[(seed, c.variant.features, c.variant.pixels)][:n]
            res = batched_kmeans(points[None], torch.ones(1, n, dtype=torch.bool), torch.tensor([k]),
                                 iterations=settings.iterations, restarts=settings.restarts, seeds=[seed])
            centroids[(c.name, seed)] = (res.centroids[0], int(res.k[0]))
    confusion = {c.name: np.zeros((len(p.seeds), len(source.videos), num_classes,
                                   max(centroids[(c.name, s)][1] for s in p.seeds)), np.int64) for c in configs}
    example_ids: dict[int, np.ndarray] = {}
    for chunk in source.chunks("clustering per dataset: assigning"):
        feats = torch.cat([f.features for _, f, _ in chunk])
        maps = {kind: feature_maps(kind, feats, pca) for kind in {k for k, _ in kinds}}
        masks = [resize_nearest(c.masks, size) for *_, c in chunk]
        for c in configs:
            for s, seed in enumerate(p.seeds):
                cents, k = centroids[(c.name, seed)]
                ids = assign_clusters(maps[c.variant.features], cents, k, size, c.variant.pixels)
                start = 0
                for (i, f, _), m in zip(chunk, masks):
                    t = f.features.shape[0]
                    width = confusion[c.name].shape[-1]
                    confusion[c.name][s, source.clip_video[i]] += confusion_matrix(ids[start:start + t], m, width,
                                                                                   num_classes)
                    if c.variant is TIMET and c.k is None and s == 0 and i < num_examples:
                        example_ids[i] = ids[start:start + t]
                    start += t
    scores = {c.name: ConfusionScores(confusion[c.name], c.matching) for c in configs}
    if "pca_per_group" in {v.name for v in variants}:
        scores["pca_per_group"] = scores[TIMET.name]
    timet = scores[TIMET.name]
    mapping = hungarian_mapping(timet.confusion[0].sum(0))
    examples = {f"dataset/{i}": mapping[ids].astype(np.uint8) for i, ids in example_ids.items()}
    with np.errstate(invalid="ignore"):
        baseline = float(class_pixels[0] / class_pixels.sum() / max(present, 1)) if class_pixels.sum() else None
    facts = {"classes_present": present, "all_background_miou": baseline,
             "k_used": {c.name: centroids[(c.name, p.seeds[0])][1] for c in configs}}
    return scores, facts, examples


# ---------------------------------------------------------------------------------------------- probes
def linear_protocol(train: SplitSource, val: SplitSource, num_classes: int, p: FitProbesParams,
                    num_examples: int) -> tuple[ConfusionScores, dict[str, np.ndarray]]:
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
            for f, shard_clip in zip_longest(iter_feature_clips(train.features), written):
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
    return ConfusionScores(confusion, "none"), examples


def retrieval_protocol(train: SplitSource, val: SplitSource, num_classes: int, p: FitProbesParams,
                       num_examples: int) -> tuple[ConfusionScores, dict[str, np.ndarray]]:
    """Hummingbird retrieval; one run per seed when the memory bank is a sample of the train patches."""
    total = train.info.rows
    seeds = p.seeds if total > p.hummingbird_memory else p.seeds[:1]
    confusion = np.zeros((len(seeds), len(val.videos), num_classes, num_classes), np.int64)
    examples: dict[str, np.ndarray] = {}
    size = train.info.input_size
    for s, seed in enumerate(seeds):
        bank = MemoryBank(total, p.hummingbird_memory, seed)
        for f, clip in train.clips():
            bank.add(f.features, soft_patch_labels(resize_nearest(clip.masks, (size, size)), train.info.grid,
                                                   num_classes))
        features, labels = (t.to(compute_device()) for t in bank.tensors())
        for i, (f, clip) in enumerate(val.clips()):
            votes = retrieval_votes(features, labels, f.features.to(features.device), k=p.hummingbird_k,
                                    temperature=p.hummingbird_temperature).cpu()
            pred = upsampled_argmax(votes, clip.masks.shape[-2:])
            confusion[s, val.clip_video[i]] += confusion_matrix(pred, clip.masks, num_classes, num_classes)
            if s == 0 and i < num_examples:
                examples[f"retrieval/{i}"] = pred
        del bank, features, labels  # the next seed's bank is filled with this one gone
    return ConfusionScores(confusion, "none"), examples


def propagation_protocol(val: SplitSource, p: FitProbesParams, num_examples: int
                         ) -> tuple[dict[str, GroupScores], dict[str, np.ndarray], dict[str, Any]] | None:
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
    return scores, examples, facts


# ---------------------------------------------------------------------------------------------- one model
@dataclass
class ModelEvaluation:
    scores: dict[str, Scores]  # protocol -> per-video statistics (TimeT variant)
    variant_scores: dict[str, dict[str, Scores]]  # variant -> protocol -> statistics
    not_applicable: dict[str, str]  # protocol -> why
    facts: dict[str, Any]
    examples: dict[str, np.ndarray]


def evaluate_model(val: SplitSource, train: SplitSource | None, num_classes: int, p: FitProbesParams,
                   num_examples: int = 3) -> ModelEvaluation:
    """Every protocol for one model on one set (scored on ``val``; probes fitted on ``train`` when given)."""
    variants = [TIMET] + [VARIANTS[name] for name in p.robustness_variants]
    pca = fit_split_pca(val, p.pca_dim)
    groups = group_protocols(val, pca, num_classes, p, variants, num_examples)
    dataset, facts, dataset_examples = dataset_protocols(val, pca, num_classes, p, variants, num_examples)
    scores: dict[str, Scores] = {}
    variant_scores: dict[str, dict[str, Scores]] = {v.name: {} for v in variants[1:]}
    for (variant, scope), value in groups.scores.items():
        (scores if variant == TIMET.name else variant_scores[variant])[f"cluster_{scope}"] = value
    for name, value in dataset.items():
        if name.startswith("overcluster_k"):
            scores[name] = value
        else:
            (scores if name == TIMET.name else variant_scores[name])["cluster_per_dataset"] = value
    for scope, value in groups.stability.items():
        scores[f"temporal_stability_{scope}"] = value
    if "cluster_per_clip" in scores:
        scores["temporal_clip_minus_frame_miou"] = DifferenceScores(scores["cluster_per_clip"],
                                                                    scores["cluster_per_frame"])
    not_applicable: dict[str, str] = {}
    if not val.has_time:
        why = "single-frame clips (an image set): no time"
        for key in ("cluster_per_clip", "temporal_stability_per_frame", "temporal_stability_per_clip",
                    "temporal_clip_minus_frame_miou"):
            not_applicable[key] = why
    examples = {**groups.examples, **dataset_examples}
    if train is not None:
        scores["linear"], ex = linear_protocol(train, val, num_classes, p, num_examples)
        examples.update(ex)
        scores["hummingbird"], ex = retrieval_protocol(train, val, num_classes, p, num_examples)
        examples.update(ex)
    else:
        for key in ("linear", "hummingbird"):
            not_applicable[key] = "the set has no train split to fit on"
    propagation = propagation_protocol(val, p, num_examples) if val.has_time else None
    if propagation is None:
        for key in ("jf_mean", "j_mean", "f_mean"):
            not_applicable[key] = "no instance masks (label propagation needs a DAVIS-style instance-annotated set)" \
                if val.has_time else "single-frame clips (an image set): nothing to propagate"
    else:
        prop_scores, ex, prop_facts = propagation
        scores.update(prop_scores)
        examples.update(ex)
        facts.update(prop_facts)
    facts.update(pca_dim=pca.dim, pca_explained_variance=float(pca.explained_variance_ratio.sum()),
                 frames=val.num_frames, clips=len(val.clip_frames), videos=len(val.videos),
                 grid=val.info.grid, feature_dim=val.info.dim, input_size=val.info.input_size)
    return ModelEvaluation(scores, variant_scores, not_applicable, facts, examples)

