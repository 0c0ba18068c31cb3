"""A rehearsal of the checkpoint comparison (``profiles/compare.yaml``) on the embedded demo, with stand-in files in
the published layouts: five models in one run of the real extraction, probe and report stages.

    .venv/bin/dvc repro train shard_eval@davis_demo          # the demo's start and time-tuned models, eval shards
    .venv/bin/python benchmarks/compare_standins.py --workdir /tmp/compare
    # then open /tmp/compare/reports/report.html

The released TimeT, Leopart and NeCo files are ViT-S/16s that cannot be downloaded here, so the stand-ins are the
demo's own starting backbone (EfficientNet-Lite0, ImageNet, from the PyPI wheel) written the way those projects
write their files: TimeT's flat dict (``feature_extractor.backbone.*`` student, ``teacher.backbone.*`` teacher, its
heads and prototypes), Leopart's Lightning ``.ckpt`` (``state_dict``: ``model.*`` / ``teacher.*``, projection head,
prototypes, trainer state) and NeCo's Lightning ``.ckpt``. Each student is the starting weights with a little
Gaussian noise of its own (so the columns differ a little); each teacher is randomly initialised, so a loader that
took the wrong part would show chance-level numbers in that model's column. The report compares every model with
``start``; its metadata and log say which layout and part each file was read as.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import run_evaluation, run_stage  # noqa: E402
from timetuning.infra.config import load_params  # noqa: E402
from timetuning.models.backbones import build_backbone  # noqa: E402

NOISE = {"timet": 0.02, "leopart": 0.05, "neco": 0.10}  # noise std relative to each tensor's std


def noisy(state: dict[str, torch.Tensor], scale: float, seed: int) -> dict[str, torch.Tensor]:
    """``state`` plus Gaussian noise of ``scale`` times each floating tensor's std (BatchNorm counters untouched)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if v.is_floating_point() and v.numel() > 1 and "running_" not in k:
            v = v + scale * v.std() * torch.randn(v.shape, generator=g)
        out[k] = v.clone()
    return out


def write_standins(params_path: Path, custom: Path) -> dict[str, Path]:
    """The three stand-in files, in TimeT's, Leopart's and NeCo's layouts."""
    backbone_params = load_params(params_path).train.backbone
    torch.manual_seed(0)
    start = build_backbone(backbone_params).model.state_dict()
    random = build_backbone(backbone_params.model_copy(update={"weights": "none"})).model.state_dict()
    head = {"0.weight": torch.randn(64, 192), "0.bias": torch.zeros(64)}
    custom.mkdir(parents=True, exist_ok=True)
    files = {"timet": custom / "TimeT.pth", "leopart": custom / "leopart_standin.ckpt",
             "neco": custom / "neco_standin.ckpt"}
    student = noisy(start, NOISE["timet"], 1)
    torch.save({**{f"feature_extractor.backbone.{k}": v for k, v in student.items()},
                **{f"feature_extractor.head.{k}": v for k, v in head.items()},
                **{f"teacher.backbone.{k}": v for k, v in random.items()},
                "prototypes": torch.randn(200, 64)}, files["timet"])
    for name, seed in (("leopart", 2), ("neco", 3)):
        student = noisy(start, NOISE[name], seed)
        state = {**{f"model.{k}": v for k, v in student.items()}, **{f"teacher.{k}": v for k, v in random.items()},
                 **{f"projection_head.{k}": v for k, v in head.items()}}
        if name == "leopart":
            state["prototypes.weight"] = torch.randn(300, 64)
        torch.save({"state_dict": state, "epoch": 49, "global_step": 12_345, "pytorch-lightning_version": "1.9.0",
                    "optimizer_states": [], "lr_schedulers": []}, files[name])
    return files


def comparison_params(base: Path, files: dict[str, Path], workdir: Path) -> Path:
    params = yaml.safe_load(base.read_text())
    backbone = {k: v for k, v in params["train"]["backbone"].items()}
    ex = params["extract_features"]
    ex["custom_weights_dir"] = str(workdir / "custom")
    ex["output_dir"] = str(workdir / "features")
    ex["weights_dir"] = str(workdir / "weights")
    ex["models"] = {n: m for n, m in ex["models"].items() if m["source"] in ("train_start", "train_result")} | {
        name: {"source": "custom",
               # the stand-ins hold EfficientNet-Lite0's weights, trained with mean = std = 0.5 (the layouts' own
               # normalisation is ImageNet's, as the real ViT-S/16 files: the loader refuses the mix unless it is said)
               "backbone": backbone | {"weights": str(path), "checkpoint_layout": name if name == "neco" else "auto",
                                       "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
        for name, path in files.items()}
    params["fit_probes"]["output_dir"] = str(workdir / "probes")
    params["evaluate"]["output_dir"] = str(workdir / "reports")
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/timetuning-compare")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--eval-set", default="davis_demo")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    base = load_params(Path(args.params))
    needed = [ROOT / base.train.output_dir / "timetuned.safetensors",
              ROOT / base.shard_eval.output_dir / args.eval_set]
    if missing := [str(p) for p in needed if not p.exists()]:
        raise SystemExit(f"error: {', '.join(missing)} not found: run `dvc repro train shard_eval@{args.eval_set}` "
                         "first")
    files = write_standins(Path(args.params), workdir / "custom")
    params = comparison_params(Path(args.params), files, workdir)
    log = workdir / "stages.log"
    log.write_text("")
    started = time.perf_counter()
    run_evaluation(params, log, args.eval_set, list(load_params(params).extract_features.models))
    print(f"model_weights, extract_features, fit_probes, compare: done at {time.perf_counter() - started:.0f} s",
          flush=True)
    run_stage("stages.evaluate", params, log)
    print(f"stages.evaluate: done at {time.perf_counter() - started:.0f} s", flush=True)
    for line in log.read_text().splitlines():
        if "weights" in line and ("layout" in line or "dropped" in line):
            print(line)
    print(f"report: {workdir / 'reports' / 'report.html'}")


if __name__ == "__main__":
    main()
