"""Can the demo set show a difference? The start model's per-dataset clustering against predicting background.

    .venv/bin/python benchmarks/demo_margin.py [--layers final head_conv block-2 ...] [--set demo_data.frames=24]

Runs the real ``demo_data`` stage and the real ``shard_eval`` code on the ``davis_demo`` set of params.yaml (in a
temporary directory), embeds every distinct frame of one split (``--split``, default ``train``: the selection
split, which evaluation never scores; choices made here must not look at ``val``) with the start backbone
(``train.backbone``, one run per ``--layers`` entry) at ``extract_features.input_size``, and scores per-dataset
k-means on the patches, written out plainly here (independent of the evaluation stages):

- patch label = the majority class of its pixels (masks resized to the input size by nearest neighbour);
- PCA protocol: StandardScaler + PCA(50) fitted once on all the split's patches; L2 protocol: L2-normalised
  features, no PCA;
- sklearn KMeans, K = the classes present, 5 restarts, one run per seed; clusters matched to classes by the
  Hungarian algorithm on IoU, unmatched clusters count as background; mIoU over the classes present;
- baseline: background everywhere (its IoU = the background fraction, divided by the classes present).

Prints the generation time, each layer's dimension and fraction of exact zeros, both mIoUs and their margins over
the baseline (x100).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages import demo_data  # noqa: E402
from timetuning.data.eval_shards import shard_eval_set  # noqa: E402
from timetuning.data.shards import clip_frames, decode_image, decode_mask, iter_shards, list_shards  # noqa: E402
from timetuning.data.transforms import eval_transform  # noqa: E402
from timetuning.infra.config import apply_overrides, load_params  # noqa: E402
from timetuning.models.backbones import build_backbone  # noqa: E402


def split_frames(set_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every distinct frame of a split's shards (clips may share frames) with its class mask and video id."""
    seen, frames, masks, videos = set(), [], [], []
    for sample in iter_shards(list_shards(set_dir, split)):
        meta = sample["json"]
        for t, name in enumerate(clip_frames(sample)):
            key = (meta["video_id"], meta["frame_names"][t])
            if key in seen:
                continue
            seen.add(key)
            frames.append(decode_image(sample[name]))
            masks.append(decode_mask(sample[name.replace(".jpg", ".png")]))
            videos.append(meta["video_id"])
    return np.stack(frames), np.stack(masks), videos


def patch_majority(masks: np.ndarray, size: int, grid: int, num_classes: int) -> np.ndarray:
    """Majority class of each patch after a nearest-neighbour resize of the masks to ``size`` x ``size``."""
    t, h, w = masks.shape
    rows, cols = np.arange(size) * h // size, np.arange(size) * w // size
    resized = masks[:, rows][:, :, cols].astype(np.int64)
    step = size // grid
    out = np.empty((t, grid, grid), np.int64)
    for i in range(grid):
        for j in range(grid):
            block = resized[:, i * step:(i + 1) * step, j * step:(j + 1) * step].reshape(t, -1)
            counts = np.stack([(block == c).sum(1) for c in range(num_classes)], 1)
            out[:, i, j] = counts.argmax(1)
    return out.reshape(-1)


def kmeans_miou(features: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """K-means with K = classes present, Hungarian matching on IoU (unmatched clusters -> background)."""
    present = np.unique(labels)
    k = len(present)
    clusters = KMeans(n_clusters=k, n_init=5, random_state=seed).fit_predict(features)
    iou = np.zeros((k, k))
    for a in range(k):
        for b, cls in enumerate(present):
            inter = np.sum((clusters == a) & (labels == cls))
            union = np.sum((clusters == a) | (labels == cls))
            iou[a, b] = inter / union if union else 0.0
    rows, cols = linear_sum_assignment(-iou)
    to_class = np.zeros(k, np.int64)  # unmatched clusters -> background (class 0)
    to_class[rows] = present[cols]
    prediction = to_class[clusters]
    return float(np.mean([np.sum((prediction == c) & (labels == c)) / np.sum((prediction == c) | (labels == c))
                          for c in present]))


def embed(params, layer: str, frames: np.ndarray, size: int) -> np.ndarray:
    backbone = build_backbone(params.train.backbone.model_copy(update={"feature_layer": layer})).eval()
    x = eval_transform(torch.from_numpy(frames).permute(0, 3, 1, 2), size, backbone.mean, backbone.std)
    with torch.no_grad():
        feats = torch.cat([backbone(x[i:i + 16]) for i in range(0, len(x), 16)])
    return feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--layers", nargs="*", default=None, help="feature layers (default: train.backbone's)")
    parser.add_argument("--set", nargs="*", default=[], help="overrides key=value (YAML values)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--split", default="train", help="the split embedded (default: %(default)s, the selection "
                        "split; val is the scored one)")
    parser.add_argument("--keep", default=None, help="keep the generated data in this folder")
    args = parser.parse_args()
    params = load_params(args.params)
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    params = apply_overrides(params, overrides) if overrides else params
    work = Path(args.keep or tempfile.mkdtemp(prefix="demo_margin-"))
    eval_set = params.shard_eval.sets["davis_demo"]
    try:
        params.demo_data.videos_dir = str(work / "videos")
        params.demo_data.davis_dir = str(work / "davis_demo")
        eval_set = eval_set.model_copy(update={"root": str(work / "davis_demo")})
        start = time.perf_counter()
        demo_data.run(params, argparse.Namespace())
        generated = time.perf_counter() - start
        start = time.perf_counter()
        shard_eval_set(eval_set, work / "shards", progress=False)
        sharded = time.perf_counter() - start
        frames, masks, videos = split_frames(work / "shards" / "davis_demo", args.split)
        p = params.demo_data
        print(f"demo_data: {p.num_train_videos} train + {p.num_val_videos} val videos of {p.frames} frames at "
              f"{p.width}x{p.height}, generated in {generated:.1f} s; shard_eval in {sharded:.1f} s")
        per_video = {v: videos.count(v) for v in sorted(set(videos))}
        print(f"{args.split}: {len(frames)} distinct frames, per video {min(per_video.values())}-"
              f"{max(per_video.values())}")
        size = params.extract_features.input_size
        print("| candidate | dim | zeros | PCA mIoU | L2 mIoU | baseline | PCA margin | L2 margin |")
        print("|---|---|---|---|---|---|---|---|")
        for layer in args.layers or [params.train.backbone.feature_layer]:
            feats = embed(params, layer, frames, size)
            grid = int(round(np.sqrt(feats.shape[0] / len(frames))))
            labels = patch_majority(masks, size, grid, p.num_classes)
            present = np.unique(labels)
            baseline = float(np.mean(labels == 0)) / len(present)
            reduced = PCA(50, random_state=0).fit_transform(StandardScaler().fit_transform(feats.astype(np.float64)))
            normed = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
            pca = float(np.mean([kmeans_miou(reduced, labels, s) for s in args.seeds]))
            l2 = float(np.mean([kmeans_miou(normed, labels, s) for s in args.seeds]))
            zeros = float(np.mean(feats == 0))
            print(f"| {layer} | {feats.shape[1]} | {zeros:.2f} | {100 * pca:.1f} | {100 * l2:.1f} | "
                  f"{100 * baseline:.1f} | {100 * (pca - baseline):+.1f} | {100 * (l2 - baseline):+.1f} |",
                  flush=True)
        print(f"(patches: {len(labels)}, background {np.mean(labels == 0):.2f}, classes present {present.tolist()})")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
