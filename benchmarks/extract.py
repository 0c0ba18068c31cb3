"""Feature extraction speed and memory: `extract_features` against a bare timm forward of the same model and batch.

    .venv/bin/python benchmarks/extract.py [--backbone tf_efficientnet_lite0] [--size 224] [--batch 16]

Prints frames/s of the bare forward (ready tensors) and of the streamed extraction (shard decoding, resizing,
patch labels, Parquet writing included), their ratio (target >= 0.9), and the peak memory of the extraction at two
dataset sizes measured in fresh processes (it must not grow with the dataset).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import eval_shards  # noqa: E402
from timetuning.eval.extraction import extract_split  # noqa: E402
from timetuning.infra.config import BackboneParams  # noqa: E402
from timetuning.models.backbones import build_backbone  # noqa: E402


def bare_forward(backbone, frames: int, size: int, batch: int) -> float:
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        backbone(x)  # warm-up
        start = time.perf_counter()
        done = 0
        while done < frames:
            backbone(x)
            done += batch
    return done / (time.perf_counter() - start)


def child(set_dir: str, out: str, size: int, batch: int, backbone_name: str, weights: str) -> None:
    """Run one extraction and print its stats and this process's peak RSS (MiB) as JSON."""
    backbone = build_backbone(BackboneParams(name=backbone_name, weights=weights))
    start = time.perf_counter()
    stats = extract_split(backbone, set_dir, "val", out, input_size=size, batch_size=batch, progress=False)
    stats["wall_seconds"] = time.perf_counter() - start
    stats["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(stats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sequences", type=int, default=6, help="small set; the large one has 4x as many")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    weights = args.weights or ("package:efficientnet_lite0" if args.backbone == "tf_efficientnet_lite0" else "none")
    if args.child:
        child(args.child[0], args.child[1], args.size, args.batch, args.backbone, weights)
        return
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for label, n in (("small", args.sequences), ("large", 4 * args.sequences)):
            set_dir = eval_shards(Path(tmp) / label, n)
            out = subprocess.run([sys.executable, __file__, "--backbone", args.backbone, "--weights", weights,
                                  "--size", str(args.size), "--batch", str(args.batch), "--child", str(set_dir),
                                  str(Path(tmp) / f"{label}.parquet")], capture_output=True, text=True, check=True)
            runs[label] = json.loads(out.stdout.strip().splitlines()[-1])
        backbone = build_backbone(BackboneParams(name=args.backbone, weights=weights)).eval()
        small_dir = Path(tmp) / "small" / "eval" / "bench"
        frames = runs["small"]["frames"]
        bare_runs, extract_runs, forward_runs = [], [], []
        for r in range(args.rounds):  # alternate the two, so machine noise hits both alike
            bare_runs.append(bare_forward(backbone, frames, args.size, args.batch))
            start = time.perf_counter()
            stats = extract_split(backbone, small_dir, "val", Path(tmp) / f"r{r}.parquet", input_size=args.size,
                                  batch_size=args.batch, progress=False)
            extract_runs.append(stats["frames"] / (time.perf_counter() - start))
            forward_runs.append(stats["frames_per_second"])
        bare = sorted(bare_runs)[len(bare_runs) // 2]
        end_to_end = sorted(extract_runs)[len(extract_runs) // 2]
        forward = sorted(forward_runs)[len(forward_runs) // 2]
    print(f"{args.backbone} at {args.size} px (median of {args.rounds} alternating rounds), batch {args.batch}, "
          f"{torch.get_num_threads()} threads")
    print(f"bare timm forward        : {bare:7.1f} frames/s")
    print(f"extract_features (all in): {end_to_end:7.1f} frames/s  ratio {end_to_end / bare:.3f} (target >= 0.9)")
    print(f"  model forward inside   : {forward:7.1f} frames/s")
    for label, r in runs.items():
        print(f"peak RSS {label:5s}: {r['peak_rss_mib']:7.0f} MiB for {r['frames']:4d} frames, {r['rows']} patch rows")


if __name__ == "__main__":
    main()
