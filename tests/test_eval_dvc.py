"""The evaluation chain under `dvc repro` in a real DVC repo, one chain per evaluation set: a change reruns exactly
what it affects; an image set of real photographs of mixed sizes and a video set of two aspect ratios go through
extract_features -> fit_probes -> evaluate into the report.

The ingest stages really run; the training stage's outputs (a time-tuned export, its log and summary) are written
here and recorded with `dvc commit`, so DVC reproduces exactly the evaluation stages. Both models are a tiny timm ViT
with seeded weights (the time-tuned one perturbed), so every output is deterministic.
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
from tests.evalsets import davis_set, photo_voc_set

pytestmark = pytest.mark.slow

DEMO_CHAIN = ["extract_features@davis_demo", "fit_probes@davis_demo", "evaluate"]


def _eval_params() -> dict:
    params = tiny_params()
    params["train"] = {"backbone": {"name": "test_vit", "weights": "models/start.safetensors"}, "input_size": 64}
    params["extract_features"] = {"input_size": 64, "batch_size": 4, "dtype": "float16", "row_group_size": 16}
    params["fit_probes"] = {"seeds": [0, 1], "kmeans_restarts": 1, "overclustering_k": [6], "linear_epochs": 4,
                            "linear_drop_epoch": 3, "pca_dim": 8, "hummingbird_k": 5, "bootstrap_samples": 100,
                            "dataset_eval_size": 48, "robustness_variants": ["l2_no_pca", "fixed_k"]}
    params["evaluate"] = {"num_example_clips": 2}
    return params


def _write_training_outputs(repo):
    """What the train stage would leave: starting weights, the time-tuned export, model.json, log and summary."""
    models = repo / "models"
    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
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
    (models / "train_summary.json").write_text(json.dumps({"steps": 4, "final_loss": 1.0, "best_step": 4}))


def _edit(repo, change):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    change(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _would_run(repo) -> set[str]:
    return set(ran_stages(dvc(repo, "repro", "--dry").stdout))


def test_per_set_chains_rerun_exactly_what_a_change_affects(tmp_path):
    repo = make_repo(tmp_path / "repo", _eval_params())
    dvc(repo, "repro", "demo_data", "shard_videos", "shard_eval@davis_demo")
    _write_training_outputs(repo)
    dvc(repo, "commit", "-f", "train")
    assert ran_stages(dvc(repo, "repro").stdout) == DEMO_CHAIN

    import pyarrow.parquet as pq

    for model in ("start", "timetuned"):
        for split in ("train", "val"):
            path = repo / "data/features/davis_demo" / model / f"{split}.parquet"
            meta = pq.ParquetFile(path).metadata
            assert meta.num_rows > 0 and meta.num_row_groups >= 2
            assert "halffloat" in str(pq.read_schema(path).field("feature").type)
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    row = metrics["start"]["davis_demo"]
    for key in ("cluster_per_frame", "cluster_per_clip", "cluster_per_dataset", "overcluster_k6", "linear",
                "hummingbird", "temporal_stability_per_frame", "temporal_stability_per_clip"):
        assert 0.0 <= row[key] <= 100.0, key
    assert metrics["delta"]["davis_demo"]["cluster_per_clip"] == pytest.approx(
        metrics["timetuned"]["davis_demo"]["cluster_per_clip"] - row["cluster_per_clip"], abs=1e-3)
    assert metrics["delta_ci_low"]["davis_demo"]["linear"] <= metrics["delta"]["davis_demo"]["linear"] <= \
        metrics["delta_ci_high"]["davis_demo"]["linear"]
    assert set(metrics["delta_robustness"]["davis_demo"]["cluster_per_clip"]) == {"l2_no_pca", "fixed_k"}
    assert ran_stages(dvc(repo, "repro").stdout) == []

    # add a set of real photos (mixed sizes, VOC layout) and a video set of two aspect ratios: only their chains
    photo_voc_set(repo / "data/raw/photos")
    davis_set(repo / "data/raw/wide", {"train": [(72, 128), (96, 128)], "val": [(72, 128), (96, 128)]})

    for name in ("photos", "wide"):  # each set's list folder (a DVC dependency of its shard_eval, lists or none)
        (repo / "splits" / name).mkdir()
        (repo / "splits" / name / "README.md").write_text(f"{name} uses its layout's own split files\n")

    def add_sets(p):
        p["shard_eval"]["sets"]["photos"] = {"layout": "voc", "root": "data/raw/photos", "short_side": 48,
                                            "splits": ["train", "val"]}
        p["shard_eval"]["sets"]["wide"] = {"layout": "davis", "root": "data/raw/wide", "short_side": 48,
                                          "frames_per_clip": 2, "max_clips_per_video": 2, "splits": ["train", "val"]}
    _edit(repo, add_sets)
    new = {f"{stage}@{s}" for stage in ("shard_eval", "extract_features", "fit_probes") for s in ("photos", "wide")}
    assert set(ran_stages(dvc(repo, "repro").stdout)) == new | {"evaluate"}  # not train, not davis_demo's chain

    metrics = json.loads((repo / "reports/metrics.json").read_text())
    for name in ("photos", "wide"):
        assert "linear" in metrics["start"][name] and name in metrics["delta"]
    assert "cluster_per_clip" not in metrics["start"]["photos"]  # no time in an image set
    assert "temporal_stability_per_clip" in metrics["start"]["wide"]
    results = json.loads((repo / "data/probes/photos/results.json").read_text())
    assert results["image_set"] and "temporal_stability_per_frame" in results["models"]["start"]["not_applicable"]
    html = (repo / "reports/report.html").read_text()
    for needle in ("photos: results", "image set", "wide: results", "n/a", "95% interval", "Robustness",
                   "All-background baseline"):
        assert needle in html, needle
    images = re.findall(r'src="(figures/[^"]+\.png)"', html)  # the figures next to the page: it opens offline
    assert len(images) >= 10 and all((repo / "reports" / i).stat().st_size > 1000 for i in images)
    assert "http://" not in html and "https://" not in html

    # edit one set: only its chain and the report run
    _edit(repo, lambda p: p["shard_eval"]["sets"]["photos"].update(short_side=40))
    assert _would_run(repo) == {"shard_eval@photos", "evaluate"}  # what the edit touches directly
    assert ran_stages(dvc(repo, "repro").stdout) == ["shard_eval@photos", "extract_features@photos",
                                                     "fit_probes@photos", "evaluate"]
    # `--dry` lists the stages a change touches directly; their descendants follow when their outputs change
    _edit(repo, lambda p: p["fit_probes"].update(overclustering_k=[5]))  # a probe param: every set's probes
    assert _would_run(repo) == {f"fit_probes@{s}" for s in ("davis_demo", "photos", "wide")}
    _edit(repo, lambda p: p["fit_probes"].update(overclustering_k=[6]))
    lr_head = yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr_head"]
    _edit(repo, lambda p: p["train"].update(lr_head=lr_head / 2))  # a train param: training (then the models' chains)
    assert _would_run(repo) == {"train"}
    _edit(repo, lambda p: p["train"].update(lr_head=lr_head, num_workers=0, log_every=3, checkpoint_every=7))
    _edit(repo, lambda p: p["shard_videos"].update(workers=2, executor="dask"))
    assert _would_run(repo) == set()  # execution-only params change no artifact
