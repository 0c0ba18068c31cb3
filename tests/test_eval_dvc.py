"""The evaluation chain under `dvc repro` in a real DVC repo: extract_features -> fit_probes -> evaluate on tiny data.

The ingest stages really run; the training stage's outputs (a time-tuned export, its log and summary) are written
here and recorded with `dvc commit`, so DVC reproduces exactly the three evaluation stages. Both models are a tiny
timm ViT with seeded weights (the time-tuned one perturbed), so every output is deterministic.
"""

import csv
import json
import re

import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

from tests.dvc_repo import dvc, make_repo, ran_stages, tiny_params

pytestmark = pytest.mark.slow

EVAL_STAGES = ["extract_features", "fit_probes", "evaluate"]


def _eval_params() -> dict:
    params = tiny_params()
    params["train"] = {"backbone": {"name": "test_vit", "weights": "models/start.safetensors"}, "input_size": 64}
    params["extract_features"] = {"input_size": 64, "batch_size": 4, "dtype": "float16", "row_group_size": 16}
    params["fit_probes"] = {"seeds": [0, 1], "kmeans_restarts": 1, "overclustering_k": [6, 12], "linear_epochs": 4,
                            "linear_drop_epoch": 3, "pca_dim": 8, "hummingbird_k": 5}
    params["evaluate"] = {"num_example_clips": 2}
    return params


def _write_training_outputs(repo):
    """What the train stage would leave: starting weights, the time-tuned export, model.json, log and summary."""
    models = repo / "models"
    (models / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    start = timm.create_model("test_vit").state_dict()
    tuned = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in start.items()}
    save_file({k: v.contiguous() for k, v in start.items()}, str(models / "start.safetensors"))
    save_file({k: v.contiguous() for k, v in tuned.items()}, str(models / "timetuned.safetensors"))
    (models / "model.json").write_text(json.dumps({"name": "test_vit", "output_stride": 16, "img_size": 64,
                                                   "mean": [0.5] * 3, "std": [0.5] * 3}))
    with (models / "train_log.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["step", "loss", "lr", "clips_per_s", "val_miou"])
        writer.writeheader()
        for step in range(1, 5):
            writer.writerow({"step": step, "loss": 5.0 - step, "lr": 1e-4, "clips_per_s": 2.0,
                             "val_miou": 0.3 + 0.01 * step if step % 2 == 0 else ""})
    (models / "train_summary.json").write_text(json.dumps({"steps": 4, "final_loss": 1.0}))


def test_eval_chain_repro_metrics_and_offline_report(tmp_path):
    repo = make_repo(tmp_path / "repo", _eval_params())
    dvc(repo, "repro", "demo_data", "shard_videos", "shard_eval@davis_demo")
    _write_training_outputs(repo)
    dvc(repo, "commit", "-f", "train")
    first = dvc(repo, "repro")
    assert ran_stages(first.stdout) == EVAL_STAGES

    # features: one Parquet per model x set x split, float16 vectors, bounded row groups
    import pyarrow.parquet as pq

    for model in ("start", "timetuned"):
        for split in ("train", "val"):
            path = repo / "data/features" / model / "davis_demo" / f"{split}.parquet"
            meta = pq.ParquetFile(path).metadata
            assert meta.num_rows > 0 and meta.num_row_groups >= 2
            assert meta.row_group(0).column(8).compression == "ZSTD"
            assert "halffloat" in str(pq.read_schema(path).field("feature").type)

    metrics = json.loads((repo / "reports/metrics.json").read_text())
    for model in ("start", "timetuned"):
        row = metrics[model]["davis_demo"]
        for key in ("cluster_per_frame", "cluster_per_clip", "cluster_per_dataset", "overcluster_k6",
                    "overcluster_k12", "linear", "hummingbird", "temporal_stability_per_frame",
                    "temporal_stability_per_clip", "temporal_clip_minus_frame_miou"):
            assert key in row, f"{model}: {key} missing from metrics.json"
        for key in ("cluster_per_clip", "linear", "hummingbird", "temporal_stability_per_clip"):
            assert 0.0 <= row[key] <= 1.0, (model, key, row[key])
    assert metrics["start"]["davis_demo"] != metrics["timetuned"]["davis_demo"]  # two different models
    delta = metrics["delta"]["davis_demo"]["cluster_per_clip"]
    assert delta == pytest.approx(metrics["timetuned"]["davis_demo"]["cluster_per_clip"]
                                  - metrics["start"]["davis_demo"]["cluster_per_clip"])
    results = json.loads((repo / "data/probes/results.json").read_text())
    assert len(results["start"]["davis_demo"]["cluster_per_clip"]["per_seed"]) == 2

    html = (repo / "reports/report.html").read_text()
    assert html.count("<table>") >= 3  # training summary, protocols x models, per-class IoU
    for needle in ("start", "timetuned", "Clustering per clip", "Linear probe", "Training", "IoU per class",
                   "linear timetuned"):
        assert needle in html, needle
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) >= 5 and all(len(i) > 1000 for i in images)  # curves, per-class, confusion, 2 clips
    assert "http://" not in html and "https://" not in html  # opens offline
    assert (repo / "reports/plots/davis_demo_per_class_iou.csv").is_file()

    assert ran_stages(dvc(repo, "repro").stdout) == []  # all cached
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["num_example_clips"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert ran_stages(dvc(repo, "repro").stdout) == ["fit_probes", "evaluate"]  # features are reused
    again = json.loads((repo / "reports/metrics.json").read_text())
    assert again["start"] == metrics["start"]  # deterministic for the same params, inputs and seeds
