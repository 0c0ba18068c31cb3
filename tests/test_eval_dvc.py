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

MODELS = ("start", "timetuned")


def chain(*sets: str, models=MODELS) -> set[str]:
    """The per-set, per-model evaluation stages of ``sets`` (and what follows them: the comparison per set)."""
    return {f"{stage}@{s}-{m}" for s in sets for m in models for stage in ("extract_features", "fit_probes")} | \
        {f"compare@{s}" for s in sets}


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
    ran = ran_stages(dvc(repo, "repro").stdout)
    assert set(ran) == {"model_weights", *chain("davis_demo"), "evaluate"} and len(ran) == len(set(ran))
    assert ran[0] == "model_weights" and ran[-2:] == ["compare@davis_demo", "evaluate"]

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
    new = {"shard_eval@photos", "shard_eval@wide", *chain("photos", "wide")}
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
    ran = ran_stages(dvc(repo, "repro").stdout)
    assert set(ran) == {"shard_eval@photos", *chain("photos"), "evaluate"} and ran[0] == "shard_eval@photos"
    # `--dry` lists the stages a change touches directly; their descendants follow when their outputs change
    _edit(repo, lambda p: p["fit_probes"].update(overclustering_k=[5]))  # a probe param: every set's probes
    assert _would_run(repo) == {f"fit_probes@{s}-{m}" for s in ("davis_demo", "photos", "wide") for m in MODELS}
    _edit(repo, lambda p: p["fit_probes"].update(overclustering_k=[6], bootstrap_samples=200))  # the comparison's
    assert _would_run(repo) == {f"compare@{s}" for s in ("davis_demo", "photos", "wide")}
    _edit(repo, lambda p: p["fit_probes"].update(bootstrap_samples=100))
    lr_head = yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr_head"]
    _edit(repo, lambda p: p["train"].update(lr_head=lr_head / 2))  # a train param: training (then the models' chains)
    assert _would_run(repo) == {"train"}
    _edit(repo, lambda p: p["train"].update(lr_head=lr_head, num_workers=0, log_every=3, checkpoint_every=7))
    _edit(repo, lambda p: p["shard_videos"].update(workers=2, executor="dask"))
    _edit(repo, lambda p: p["fit_probes"].update(progress_seconds=0.5))
    assert _would_run(repo) == set()  # execution-only params change no artifact


def _status(repo) -> dict:
    return json.loads(dvc(repo, "status", "--json").stdout or "{}")


def test_a_changed_or_added_model_reruns_only_its_own_stages_and_the_comparison(tmp_path):
    """Changing the time-tuned weights, adding a model, changing a param only that model reads: the other models'
    extraction and probes stay up to date (dvc status) and are not rerun; results.json is recomputed from the
    saved statistics. A report-only param reruns only the report."""
    params = _eval_params()
    params["fit_probes"]["progress_seconds"] = 0.2  # execution only: a progress line in the log every 0.2 s
    repo = make_repo(tmp_path / "repo", params)
    dvc(repo, "repro", "demo_data", "shard_videos", "shard_eval@davis_demo")
    _write_training_outputs(repo)
    dvc(repo, "commit", "-f", "train")
    dvc(repo, "repro")
    before = json.loads((repo / "data/probes/davis_demo/results.json").read_text())
    start_files = {p: p.read_bytes() for p in (repo / "data/probes/davis_demo/models/start").iterdir()}
    assert _status(repo) == {}

    # another time-tuned export: only model_weights sees it; start's stages stay up to date
    tuned = {k: v * 1.1 if v.is_floating_point() else v for k, v in
             __import__("safetensors.torch", fromlist=["load_file"]).load_file(
                 str(repo / "models/timetuned.safetensors")).items()}
    save_file(tuned, str(repo / "models/timetuned.safetensors"))
    dvc(repo, "commit", "-f", "train")
    status = dvc(repo, "status").stdout
    print("dvc status after a new time-tuned export:\n" + status)
    assert set(_status(repo)) == {"model_weights"}
    proc = dvc(repo, "repro")
    assert ran_stages(proc.stdout) == ["model_weights", "extract_features@davis_demo-timetuned",
                                       "fit_probes@davis_demo-timetuned", "compare@davis_demo", "evaluate"]
    progress = re.findall(r"timetuning\.eval\.progress: (.*)", proc.stdout + proc.stderr)
    print("progress lines:\n" + "\n".join(progress))
    assert progress[0] == "fit_probes@davis_demo-timetuned: standardise + PCA (step 1 of 6), 0 s elapsed"
    # each protocol's first line comes at its start; the timer's lines between them depend on the machine's speed
    assert any(re.fullmatch(r"fit_probes@davis_demo-timetuned: linear probe, epoch 1/4 \(step 4 of 6\), "
                            r"\d+ s elapsed", line) for line in progress), progress
    assert all(re.fullmatch(r"fit_probes@davis_demo-timetuned: [a-zA-Z +/()]+(, (epoch [1-4]/4|clip \d+/\d+))? "
                            r"\(step [1-6] of 6\), \d+ s elapsed", line) for line in progress), progress
    after = json.loads((repo / "data/probes/davis_demo/results.json").read_text())
    assert after["models"]["start"] == before["models"]["start"]  # reused, not recomputed
    assert after["models"]["timetuned"] != before["models"]["timetuned"]
    assert {p: p.read_bytes() for p in (repo / "data/probes/davis_demo/models/start").iterdir()} == start_files

    # a third model (a custom checkpoint): only its own stages, the comparison and the report
    torch.manual_seed(1)
    third = {k: v + 0.1 * torch.randn_like(v) if v.is_floating_point() else v for k, v in tuned.items()}
    save_file({k: v.contiguous() for k, v in third.items()}, str(repo / "models/custom/third.safetensors"))
    custom = {"source": "custom", "backbone": {"name": "test_vit", "weights": "models/custom/third.safetensors",
                                               "mean": [0.5] * 3, "std": [0.5] * 3}}
    _edit(repo, lambda p: p["extract_features"]["models"].update(third=custom))
    assert set(_status(repo)) == {"model_weights", "compare@davis_demo", "evaluate"} | {
        f"{stage}@davis_demo-third" for stage in ("extract_features", "fit_probes")}  # new stages: never run
    ran = ran_stages(dvc(repo, "repro").stdout)
    assert set(ran) == {"model_weights", "extract_features@davis_demo-third", "fit_probes@davis_demo-third",
                        "compare@davis_demo", "evaluate"}
    results = json.loads((repo / "data/probes/davis_demo/results.json").read_text())
    assert set(results["models"]) == {"start", "timetuned", "third"} and set(results["comparisons"]) == {
        "timetuned", "third"}
    assert results["comparisons"]["timetuned"] == after["comparisons"]["timetuned"]  # the same bootstrap draws

    # a param only the third model reads
    _edit(repo, lambda p: p["extract_features"]["models"]["third"]["backbone"].update(std=[0.25] * 3))
    changed = _status(repo)
    assert set(changed) == {"model_weights", "extract_features@davis_demo-third", "compare@davis_demo", "evaluate"}
    assert set(ran_stages(dvc(repo, "repro").stdout)) == {
        "model_weights", "extract_features@davis_demo-third", "fit_probes@davis_demo-third", "compare@davis_demo",
        "evaluate"}

    # which clips the report pictures: the report alone (fit_probes kept the predictions of the first clips)
    figures = sorted(p.name for p in (repo / "reports/figures").glob("davis_demo_clip*.png"))
    assert figures == ["davis_demo_clip0.png", "davis_demo_clip1.png"]
    _edit(repo, lambda p: p["evaluate"].update(num_example_clips=1))  # the tiny set scores 2 clips
    status = dvc(repo, "status").stdout
    print("dvc status after evaluate.num_example_clips 2 -> 1:\n" + status)
    assert set(_status(repo)) == {"evaluate"}
    assert ran_stages(dvc(repo, "repro").stdout) == ["evaluate"]
    figures = sorted(p.name for p in (repo / "reports/figures").glob("davis_demo_clip*.png"))
    assert figures == ["davis_demo_clip0.png"]
