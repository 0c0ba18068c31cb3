"""The time-tuning recipe, varied one thing at a time on the embedded default, judged on the selection split only.

    .venv/bin/python benchmarks/ablation.py                       # every variant (~4-9 min each on 2 cores)
    .venv/bin/python benchmarks/ablation.py --only start-recipe queue-3200 --workdir /tmp/ablation
    .venv/bin/python benchmarks/ablation.py --list                # the variants and what each changes

Every variant is ``params.yaml`` with a few ``train`` keys changed. It runs the real training stage
(``python -m stages.train``) in a fresh process on the demo shards that ``dvc repro shard_videos
shard_eval@davis_demo`` made, so the numbers are those the stage logs: the selection score (per-clip clustering
mIoU of ``train.val_clips`` clips of ``davis_demo``'s *train* split, x100, at step 0 and every ``val_every``
steps) and the training diagnostics of ``models/train_log.csv``. Nothing here reads the val split that
evaluation scores: this table may choose the recipe, the val split may not.

A finished variant is not trained again (the stage resumes its own finished run), so an interrupted ablation
continues where it stopped. The table ends with, per variant, the best trained step's gain over the start and the
diagnostics at that step: prototypes that are the target of at least one patch, the targets' perplexity, the
student's agreement with its targets (means over the steps since the previous validation), the
Feature-Forwarder's J&F on the selection clips, and the mean cosine of the features to the starting ones.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]

PAPER_LR = {"lr_backbone": 1e-5, "lr_head": 1e-4, "grad_clip": 0.0}
MOBILENET = {"backbone": {"name": "mobilenetv2_100", "weights": "package:mobilenetv2", "output_stride": 16,
                          "feature_layer": "block-2"}}
# name -> the train keys it changes (the first is params.yaml as it is); a variant changes one thing
VARIANTS: dict[str, dict[str, Any]] = {
    "params.yaml": {},
    "paper-lr": PAPER_LR,
    "lr-x0.3": {"lr_backbone": 3e-5, "lr_head": 3e-4},
    "lr-x3": {"lr_backbone": 3e-4, "lr_head": 3e-3},
    "backbone-lr-x0.1": {"lr_backbone": 1e-5},
    "K-20": {"num_prototypes": 20},
    "K-50": {"num_prototypes": 50},
    "queue-1600": {"queue_size": 1600, "queue_start_step": 50},
    "queue-6400": {"queue_size": 6400, "queue_start_step": 50},
    "sinkhorn-all-frames": {"sinkhorn_frames": "all"},
    "freeze-prototypes-25": {"freeze_prototypes_steps": 25},
    "head-warmup-50": {"freeze_backbone_steps": 50},
    "batch-16": {"batch_size": 16},
    "steps-400": {"steps": 400},
    "trainable-blocks-1": {"trainable_blocks": 1},
    "layer-block-1": {"backbone": {"feature_layer": "block-1"}},
    "mobilenetv2": MOBILENET,
}
DIAGNOSTICS = ("prototypes_used", "target_perplexity", "agreement")


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied key by key (nested mappings merged, other values replaced)."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def variant_params(name: str, changes: dict[str, Any], workdir: Path, base: Path) -> Path:
    """The variant's params file: ``base`` with its ``train`` changes and its own output folder."""
    params = yaml.safe_load(base.read_text())
    params["train"] = merged(params["train"], changes) | {"output_dir": str(workdir / name / "models")}
    path = workdir / name / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_variant(name: str, params: Path, workdir: Path) -> float:
    """Train one variant in a fresh process (its log in ``<workdir>/<name>/train.log``); seconds taken."""
    start = time.perf_counter()
    with open(workdir / name / "train.log", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "stages.train", "--params", str(params)], cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"error: variant {name!r} failed (exit {proc.returncode}); see {workdir / name}/train.log")
    return time.perf_counter() - start


def read_log(path: Path) -> list[dict[str, float | None]]:
    with open(path) as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


def curve_and_diagnostics(rows: list[dict[str, float | None]]) -> dict[str, Any]:
    """Selection curve (x100), the best trained step and its gain, and the diagnostics at that step."""
    validated = [r for r in rows if r.get("val_miou") is not None]
    curve = [(int(r["step"]), 100 * r["val_miou"]) for r in validated]
    trained = [c for c in curve if c[0] > 0]
    best_step, best = max(trained, key=lambda c: (c[1], -c[0])) if trained else (0, curve[0][1])
    at_best = next(r for r in validated if int(r["step"]) == best_step)
    previous = max((s for s, _ in curve if s < best_step), default=0)
    window = [r for r in rows if previous < r["step"] <= best_step and r.get("loss") is not None]
    means = {k: sum(r[k] for r in window) / len(window) if window else None for k in DIAGNOSTICS}
    return {"curve": curve, "best_step": best_step, "gain": best - curve[0][1], **means,
            "forwarder_jf": at_best.get("forwarder_jf"), "feature_cosine": at_best.get("feature_cosine"),
            "start_forwarder_jf": validated[0].get("forwarder_jf")}


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print("\n| variant | changes | selection mIoU x100 at step 0, 25, 50, ... | best trained step vs start | "
          "prototypes used | perplexity | agreement | FF J&F x100 (start) | cosine to start |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        curve = " ".join(f"{v:.1f}" for _, v in r["curve"])
        changes = ", ".join(f"{k}={v}" for k, v in flatten(VARIANTS[name]).items()) or "-"
        jf = f"{fmt(100 * r['forwarder_jf'] if r['forwarder_jf'] is not None else None, '.1f')} " \
             f"({fmt(100 * r['start_forwarder_jf'] if r['start_forwarder_jf'] is not None else None, '.1f')})"
        print(f"| {name} | {changes} | {curve} | {r['gain']:+.1f} (step {r['best_step']}) | "
              f"{fmt(r['prototypes_used'], '.0f')} | {fmt(r['target_perplexity'], '.1f')} | "
              f"{fmt(r['agreement'], '.2f')} | {jf} | {fmt(r['feature_cosine'], '.3f')} |")


def flatten(changes: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in changes.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help="variants to run (default: all)")
    parser.add_argument("--workdir", default="/tmp/timetuning-ablation", help="where the variants' runs go")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"), help="the base params (default: %(default)s)")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    args = parser.parse_args()
    if args.list:
        for name, changes in VARIANTS.items():
            print(f"{name}: {json.dumps(flatten(changes)) if changes else 'params.yaml as it is'}")
        return
    names = args.only or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: unknown variant(s) {unknown}; --list shows them")
    base = yaml.safe_load(Path(args.params).read_text())
    needed = [ROOT / base["train"]["shards"], ROOT / base["shard_eval"]["output_dir"] / base["train"]["val_set"]]
    if missing := [str(p) for p in needed if not p.is_dir()]:
        raise SystemExit(f"error: {', '.join(missing)} not found: run `dvc repro shard_videos "
                         f"shard_eval@{base['train']['val_set']}` first")
    workdir = Path(args.workdir)
    results = {}
    for name in names:
        params = variant_params(name, VARIANTS[name], workdir, Path(args.params))
        seconds = run_variant(name, params, workdir)
        results[name] = curve_and_diagnostics(read_log(workdir / name / "models" / "train_log.csv"))
        r = results[name]
        print(f"{name}: {seconds:.0f} s; selection {' '.join(f'{v:.1f}' for _, v in r['curve'])}; best trained "
              f"step {r['best_step']} {r['gain']:+.1f}", flush=True)
    print_table(results)


if __name__ == "__main__":
    main()
