"""Time per training step: time-tuning (data loading, FF, Sinkhorn, head, loss included) against a bare timm
forward + backward + AdamW of the same backbone, trainable blocks, batch and resolution, in one run.

    .venv/bin/python benchmarks/train_step.py [--backbone tf_efficientnet_lite0] [--batch 8] [--size 112] [--steps 8]

Prints ms/step for both, their ratio (target <= 1.15) and clips/s. On a CUDA GPU it also prints model FLOPs
utilisation (backbone FLOPs of forward + backward of the trainable part, from torch's FLOP counter).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import clip_shards  # noqa: E402
from timetuning.data.clip_stream import clip_batches, loader_workers, training_clips  # noqa: E402
from timetuning.data.transforms import ClipAugmentation  # noqa: E402
from timetuning.infra.config import BackboneParams, TrainParams  # noqa: E402
from timetuning.infra.distributed import DistContext  # noqa: E402
from timetuning.models.backbones import build_backbone  # noqa: E402
from timetuning.models.head import ClusteringHead  # noqa: E402
from timetuning.train.optimizer import build_optimizer  # noqa: E402
from timetuning.train.tuner import TimeTuner, build_objective  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(steps: dict, rounds: int, per_round: int, device: torch.device) -> dict[str, float]:
    """Median seconds per step of each variant, timed in alternating rounds (machine noise hits all alike)."""
    for step in steps.values():  # warm-up
        step()
        step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            sync(device)
            times[name].append((time.perf_counter() - start) / per_round)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--weights", default=None, help="default: package weights for lite0, else none")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--steps", type=int, default=3, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=-1, help="loader workers (-1: auto, 0 on CPU)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    weights = args.weights or ("package:efficientnet_lite0" if args.backbone == "tf_efficientnet_lite0" else "none")
    bp = BackboneParams(name=args.backbone, weights=weights)
    p = TrainParams(backbone=bp, batch_size=args.batch, input_size=args.size, num_workers=args.workers,
                    steps=10_000)
    amp = torch.bfloat16 if device.type == "cuda" else None

    # bare timm: forward + backward + AdamW on the same trainable blocks, ready-made tensors (no data loading)
    bare = build_backbone(bp, trainable_blocks=p.trainable_blocks).to(device).train()
    opt = torch.optim.AdamW([q for q in bare.parameters() if q.requires_grad], lr=1e-5)
    x = torch.randn(args.batch * args.frames, 3, args.size, args.size, device=device)

    def bare_step() -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = bare(x).float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with tempfile.TemporaryDirectory() as tmp:
        shards = clip_shards(Path(tmp) / "shards", size=args.size + args.size // 4)
        backbone = build_backbone(bp, trainable_blocks=p.trainable_blocks)
        # the backbone alone autocasts (bf16 on a GPU); head, Sinkhorn and the Feature-Forwarder stay fp32
        tuner = TimeTuner(backbone, ClusteringHead(backbone.embed_dim), build_objective(p), amp).to(device).train()
        optimizer = build_optimizer(tuner, p)
        aug = ClipAugmentation(args.size, backbone.mean, backbone.std)
        batches = iter(clip_batches(training_clips(shards), aug, 0, args.batch, DistContext(device=device), 0,
                                    10_000, loader_workers(args.workers, device)))

        fixed = next(batches).to(device)

        def tt_step(clips: torch.Tensor | None = None) -> None:
            clips = next(batches).to(device, non_blocking=True) if clips is None else clips
            loss = tuner(clips)[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tuner.head.prototypes.renormalize()

        t = interleaved({"bare": bare_step, "tt": tt_step, "tt_model": lambda: tt_step(fixed)},
                        rounds=args.rounds, per_round=args.steps, device=device)
    t_bare, t_tt, t_model = t["bare"], t["tt"], t["tt_model"]
    print(f"{args.backbone} ({weights}), batch {args.batch} clips x {args.frames} frames at {args.size} px, "
          f"{device.type}, {torch.get_num_threads()} threads, loader workers {args.workers}")
    print(f"bare timm fwd+bwd+AdamW : {1000 * t_bare:8.1f} ms/step  {args.batch / t_bare:6.2f} clips/s")
    print(f"time-tuning, model only : {1000 * t_model:8.1f} ms/step  {args.batch / t_model:6.2f} clips/s  "
          f"(FF + Sinkhorn + head + loss, ready batch)")
    print(f"time-tuning step        : {1000 * t_tt:8.1f} ms/step  {args.batch / t_tt:6.2f} clips/s  "
          f"(data loading + augmentation included)")
    print(f"ratio model only / bare : {t_model / t_bare:.3f}")
    print(f"ratio time-tuning / bare: {t_tt / t_bare:.3f}  (target <= 1.15)")
    if device.type == "cuda":
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            bare_step()
        flops = counter.get_total_flops()
        peak = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
        name = torch.cuda.get_device_name()
        peak_flops = next((v for k, v in peak.items() if k in name), None)
        print(f"model FLOPs/step {flops / 1e12:.3f} TFLOP; achieved {flops / t_tt / 1e12:.1f} TFLOP/s"
              + (f", MFU {flops / t_tt / peak_flops:.1%} of bf16 dense peak" if peak_flops else ""))


if __name__ == "__main__":
    main()
