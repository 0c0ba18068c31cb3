"""The time-tuning recipe, varied one thing at a time on the embedded default, judged on the selection split only.

    .venv/bin/python benchmarks/ablation.py                       # every variant (~4-9 min each on 2 cores)
    .venv/bin/python benchmarks/ablation.py --only start-recipe queue-3200 --workdir /tmp/ablation
    .venv/bin/python benchmarks/ablation.py --list                # the variants and what each changes
    .venv/bin/python benchmarks/ablation.py --table-only --train-seeds 0 1 2   # the table of what has run

Every variant is ``params.yaml`` as it was before the ablation (``PRE_ABLATION``: the backbone trains from step
0) with a few ``train`` keys changed; ``head-warmup-50`` is today's ``params.yaml``. It runs the real training stage
(``python -m stages.train``) in a fresh process on the demo shards that ``dvc repro shard_videos
shard_eval@davis_demo`` made, so the numbers are those the stage logs: the selection score (per-clip clustering
mIoU of ``train.val_clips`` clips of ``davis_demo``'s *train* split, x100, at step 0 and every ``val_every``
steps) and the training diagnostics of ``models/train_log.csv``. Nothing here reads the val split that
evaluation scores: this table may choose the recipe, the val split may not.

A finished variant is not trained again (the stage resumes its own finished run), so an interrupted ablation
continues where it stopped. The table gives, per variant, the best trained step's gain over the start and the
diagnostics where training ended: prototypes that are the target of at least one patch, the targets' perplexity,
the student's agreement with its targets (means over the last ``val_every`` steps), the Feature-Forwarder's J&F
on the selection clips, and the mean cosine of the features to the starting ones. A figure
(``<workdir>/ablation.png``) draws every selection curve, and every validation's selection change against how far
the features had moved, with their rank correlation.
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
# the recipe the ablation started from: params.yaml before the ablation chose freeze_backbone_steps 50 (so the
# table stays the same run after run); every variant is this plus its own changes
PRE_ABLATION: dict[str, Any] = {"freeze_backbone_steps": 0}
# name -> the train keys it changes; a first-round variant changes one thing
VARIANTS: dict[str, dict[str, Any]] = {
    "pre-ablation": {},
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
    # second round: around the one single change that did not lose (the head learns first)
    "head-warmup-100": {"freeze_backbone_steps": 100},
    "head-warmup-50+lr-x0.3": {"freeze_backbone_steps": 50, "lr_backbone": 3e-5, "lr_head": 3e-4},
    "head-warmup-50+K-50": {"freeze_backbone_steps": 50, "num_prototypes": 50},
}
DIAGNOSTICS = ("prototypes_used", "target_perplexity", "agreement")


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied key by key (nested mappings merged, other values replaced)."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def run_label(name: str, seed: int | None) -> str:
    """A run's folder name: the variant, and the training seed when one is given."""
    return name if seed is None else f"{name}@seed={seed}"


def variant_params(name: str, changes: dict[str, Any], workdir: Path, base: Path, seed: int | None = None) -> Path:
    """The variant's params file: ``base`` with its ``train`` changes (and ``train.seed``) and its own output
    folder."""
    params = yaml.safe_load(base.read_text())
    label = run_label(name, seed)
    recipe = merged(merged(params["train"], PRE_ABLATION), changes)
    params["train"] = recipe | {"output_dir": str(workdir / label / "models")}
    if seed is not None:
        params["train"]["seed"] = seed
    path = workdir / label / "params.yaml"
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
    """Selection curve (x100), the best trained step and its gain, and the diagnostics where training ended (the
    per-step ones averaged over the steps since the previous validation)."""
    validated = [r for r in rows if r.get("val_miou") is not None]
    curve = [(int(r["step"]), 100 * r["val_miou"]) for r in validated]
    trained = [c for c in curve if c[0] > 0]
    best_step, best = max(trained, key=lambda c: (c[1], -c[0])) if trained else (0, curve[0][1])
    last = validated[-1]
    previous = curve[-2][0] if len(curve) > 1 else 0
    window = [r for r in rows if previous < r["step"] <= last["step"] and r.get("loss") is not None]
    means = {k: sum(r[k] for r in window) / len(window) if window else None for k in DIAGNOSTICS}
    return {"curve": curve, "best_step": best_step, "gain": best - curve[0][1], **means,
            "forwarder_jf": last.get("forwarder_jf"), "feature_cosine": last.get("feature_cosine"),
            "start_forwarder_jf": validated[0].get("forwarder_jf")}


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print("\n| variant | changes | selection mIoU x100 at step 0, 25, 50, ... | best trained step vs start | "
          "at the end: prototypes used | perplexity | agreement | FF J&F x100 (start) | cosine to start |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        curve = " ".join(f"{v:.1f}" for _, v in r["curve"])
        changes = ", ".join(f"{k}={v}" for k, v in flatten(VARIANTS[name.split("@")[0]]).items()) or "-"
        jf = f"{fmt(100 * r['forwarder_jf'] if r['forwarder_jf'] is not None else None, '.1f')} " \
             f"({fmt(100 * r['start_forwarder_jf'] if r['start_forwarder_jf'] is not None else None, '.1f')})"
        print(f"| {name} | {changes} | {curve} | {r['gain']:+.1f} (step {r['best_step']}) | "
              f"{fmt(r['prototypes_used'], '.0f')} | {fmt(r['target_perplexity'], '.1f')} | "
              f"{fmt(r['agreement'], '.2f')} | {jf} | {fmt(r['feature_cosine'], '.3f')} |")


def print_seed_summary(results: dict[str, dict[str, Any]], names: list[str], seeds: list[int], base_seed: int) -> None:
    """Per variant, the selection curve averaged over the training seeds and its best trained step's gain."""
    import numpy as np

    print(f"\n| variant | mean selection x100 over training seeds {seeds} | best step of the mean vs start | "
          "per seed: best trained step vs start |")
    print("|---|---|---|---|")
    for name in names:
        runs = [results[run_label(name, None if s == base_seed else s)] for s in seeds]
        steps = [step for step, _ in runs[0]["curve"]]
        mean = np.mean([[v for _, v in r["curve"]] for r in runs], axis=0)
        best = int(np.argmax(mean[1:])) + 1
        gains = ", ".join(f"{r['gain']:+.1f}" for r in runs)
        print(f"| {name} | {' '.join(f'{v:.1f}' for v in mean)} | {mean[best] - mean[0]:+.1f} (step {steps[best]}) "
              f"| {gains} |")


def drift_and_selection(logs: dict[str, list[dict[str, float | None]]]) -> tuple[list[float], list[float]]:
    """Every validation of every variant after step 0: (1 - cosine of the features to the start, selection
    change from the start x100)."""
    drift, change = [], []
    for rows in logs.values():
        validated = [r for r in rows if r.get("val_miou") is not None]
        for r in validated[1:]:
            if r.get("feature_cosine") is not None:
                drift.append(1 - r["feature_cosine"])
                change.append(100 * (r["val_miou"] - validated[0]["val_miou"]))
    return drift, change


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rho (ranks by argsort; ties are not averaged)."""
    import numpy as np

    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def plot(results: dict[str, dict[str, Any]], logs: dict[str, list[dict[str, float | None]]], path: Path) -> None:
    """Left: every variant's selection curve; right: the selection change against how far the features moved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5.2), gridspec_kw={"width_ratios": [1.35, 1]})
    variants = list(dict.fromkeys(label.split("@")[0] for label in results))
    colours = [plt.get_cmap("tab20")(i) for i in range(20)] + [plt.get_cmap("Dark2")(i) for i in range(8)]
    for label, r in results.items():
        name, seeded = label.split("@")[0], "@" in label
        steps, values = zip(*r["curve"])
        # the change from the run's own step 0: training seeds start from different k-means draws
        left.plot(steps, [v - values[0] for v in values], marker="." if not seeded else None,
                  color=colours[variants.index(name) % len(colours)], ls=":" if seeded else "-",
                  lw=2.4 if name == "head-warmup-50" and not seeded else 1.0, label=None if seeded else name)
    left.axhline(0, color="gray", ls="--", lw=0.8)
    left.set(title="selection score (davis_demo train, per-clip clustering mIoU) minus step 0, x100; "
             "dotted: other training seeds", xlabel="step", ylabel="change from step 0 (x100)")
    left.title.set_fontsize(9)
    left.legend(fontsize=7, ncol=1, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    drift, change = drift_and_selection(logs)
    right.scatter(drift, change, s=12)
    right.axhline(0, color="gray", lw=0.8)
    rho = rank_correlation(drift, change)
    right.set(title=f"every validation: selection change vs drift (Spearman {rho:.2f})",
              xlabel="1 - mean cosine of the features to the start", ylabel="selection change from step 0 (x100)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    parser.add_argument("--train-seeds", nargs="*", type=int, default=None, metavar="SEED",
                        help="train every variant with each of these train.seed values (default: params.yaml's) and "
                        "add a table of the selection curves averaged over them")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument("--table-only", action="store_true",
                        help="train nothing: the table and figure of the runs already in --workdir")
    args = parser.parse_args()
    if args.list:
        for name, changes in VARIANTS.items():
            print(f"{name}: {json.dumps(flatten(changes)) if changes else 'the recipe before the ablation'}")
        return
    names = args.only or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: unknown variant(s) {unknown}; --list shows them")
    base = yaml.safe_load(Path(args.params).read_text())
    needed = [ROOT / base["train"]["shards"], ROOT / base["shard_eval"]["output_dir"] / base["train"]["val_set"]]
    if not args.table_only and (missing := [str(p) for p in needed if not p.is_dir()]):
        raise SystemExit(f"error: {', '.join(missing)} not found: run `dvc repro shard_videos "
                         f"shard_eval@{base['train']['val_set']}` first")
    workdir = Path(args.workdir)
    base_seed = base["train"].get("seed")
    base_seed = base["seed"] if base_seed is None else base_seed
    results, logs = {}, {}
    for name in names:
        # the base params' own seed is the variant's own run (same folder): it is not trained twice
        for seed in [None if s == base_seed else s for s in args.train_seeds or [None]]:
            label = run_label(name, seed)
            if args.table_only:
                if not (workdir / label / "models" / "train_log.csv").is_file():
                    continue
                seconds = 0.0
            else:
                params = variant_params(name, VARIANTS[name], workdir, Path(args.params), seed)
                seconds = run_variant(label, params, workdir)
            logs[label] = read_log(workdir / label / "models" / "train_log.csv")
            results[label] = r = curve_and_diagnostics(logs[label])
            print(f"{label}: {seconds:.0f} s; selection {' '.join(f'{v:.1f}' for _, v in r['curve'])}; best "
                  f"trained step {r['best_step']} {r['gain']:+.1f}", flush=True)
    print_table(results)
    if args.train_seeds and len(args.train_seeds) > 1:
        seeded = [n for n in names if all(run_label(n, None if s == base_seed else s) in results
                                          for s in args.train_seeds)]
        print_seed_summary(results, seeded, args.train_seeds, base_seed)
    drift, change = drift_and_selection(logs)
    if len(drift) > 2:
        print(f"\nselection change vs feature drift over {len(drift)} validations: Spearman "
              f"{rank_correlation(drift, change):.2f}")
        plot(results, logs, workdir / "ablation.png")
        print(f"figure: {workdir / 'ablation.png'}")


if __name__ == "__main__":
    main()
