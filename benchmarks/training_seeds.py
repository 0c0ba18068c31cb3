"""The recipe of params.yaml trained with several training seeds and scored on the val split: deltas with their
intervals per seed, and the spread over seeds.

    .venv/bin/python benchmarks/training_seeds.py                      # train.seed 0, 1, 2 (~6-8 min each)
    .venv/bin/python benchmarks/training_seeds.py --seeds 0 1 2 3 --set train.steps=300 --workdir /tmp/seeds

For every seed it runs the real stages in fresh processes, each with its own output folders: ``train`` (with
``train.seed``), ``model_weights``, ``extract_features@davis_demo-<model>`` and ``fit_probes@davis_demo-<model>``
(the start model and the seed's time-tuned model) and ``compare@davis_demo``, on the demo shards that
``dvc repro shard_videos shard_eval@davis_demo`` made. It prints each seed's selection (which step was exported)
and, per protocol, each seed's delta (time-tuned minus start, x100) with its 95% paired-bootstrap interval over
videos, the mean and standard deviation of the deltas
over seeds, and whether they agree.

The bootstrap resamples videos with both models fixed: it says how much the delta depends on which videos are
scored, not how much it depends on the training run. The spread over training seeds is that second part; a delta
inside it is not a gain. Nothing here chooses anything: run it once the recipe has been chosen on the selection
split (``benchmarks/ablation.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import run_evaluation, run_stage  # noqa: E402

PROTOCOLS = ("cluster_per_frame", "cluster_per_clip", "cluster_per_dataset", "overcluster_k20", "overcluster_k40",
             "linear", "hummingbird", "jf_mean", "temporal_stability_per_frame", "temporal_stability_per_clip")


def set_key(params: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = params
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def seed_params(base: Path, seed: int, overrides: dict[str, Any], out: Path) -> Path:
    params = yaml.safe_load(base.read_text())
    for key, value in overrides.items():
        set_key(params, key, value)
    set_key(params, "train.seed", seed)
    set_key(params, "train.output_dir", str(out / "models"))
    set_key(params, "extract_features.output_dir", str(out / "features"))
    set_key(params, "extract_features.weights_dir", str(out / "weights"))
    set_key(params, "fit_probes.output_dir", str(out / "probes"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def seed_run(base: Path, seed: int, overrides: dict[str, Any], workdir: Path, eval_set: str) -> dict[str, Any]:
    out = workdir / f"seed-{seed}"
    params = seed_params(base, seed, overrides, out)
    log = out / "stages.log"
    started = time.perf_counter()
    if not (out / "probes" / eval_set / "results.json").is_file():  # a finished seed is not run again
        log.write_text("")
        run_stage("stages.train", params, log)
        run_evaluation(params, log, eval_set, list(yaml.safe_load(params.read_text())["extract_features"]["models"]))
    summary = json.loads((out / "models" / "train_summary.json").read_text())
    results = json.loads((out / "probes" / eval_set / "results.json").read_text())
    return {"seconds": time.perf_counter() - started, "summary": summary,
            "deltas": results["comparisons"]["timetuned"]["deltas"]}


def agreement(deltas: list[dict[str, float]]) -> str:
    if all(d["ci_low"] > 0 for d in deltas):
        return "gain on every seed (every interval above 0)"
    if all(d["ci_high"] < 0 for d in deltas):
        return "loss on every seed (every interval below 0)"
    if all(d["delta"] == 0 for d in deltas):
        return "no change (the start model was exported)"
    return "not a gain: the seeds disagree or an interval includes 0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="params overrides (YAML values)")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--eval-set", default="davis_demo")
    parser.add_argument("--workdir", default="/tmp/timetuning-seeds")
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    runs = {}
    for seed in args.seeds:
        runs[seed] = seed_run(Path(args.params), seed, overrides, Path(args.workdir), args.eval_set)
        s = runs[seed]["summary"]
        print(f"seed {seed}: {runs[seed]['seconds']:.0f} s; selection {100 * s['val_miou_start']:.1f} at step 0, "
              f"best {100 * s['val_miou_best']:.1f} at step {s['best_step']}; exported {s['exported']}", flush=True)
    print(f"\n| protocol ({args.eval_set} val, x100) | " + " | ".join(f"seed {s}" for s in args.seeds)
          + " | mean | std over seeds | seeds agree? |")
    print("|---|" + "---|" * (len(args.seeds) + 3))
    for protocol in PROTOCOLS:
        per_seed = [runs[s]["deltas"].get(protocol) for s in args.seeds]
        if any(d is None for d in per_seed):
            continue
        scale = 100.0  # mIoU and stability are fractions in results.json
        cells = [f"{scale * d['delta']:+.1f} [{scale * d['ci_low']:+.1f}, {scale * d['ci_high']:+.1f}]"
                 for d in per_seed]
        values = np.array([scale * d["delta"] for d in per_seed])
        print(f"| {protocol} | " + " | ".join(cells) + f" | {values.mean():+.1f} | {values.std(ddof=1):.1f} | "
              f"{agreement(per_seed)} |")


if __name__ == "__main__":
    main()
