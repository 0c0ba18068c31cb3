"""`dvc repro` of the ingest stages in a real DVC repo: runs, caches, and reruns only what a param change touches."""

import json

import pytest
import yaml

from tests.dvc_repo import dvc, make_repo, ran_stages, tiny_params

pytestmark = pytest.mark.slow


def test_dvc_repro_ingest_caches_and_reruns_only_what_changed(tmp_path):
    repo = make_repo(tmp_path / "repo", tiny_params())
    first = dvc(repo, "repro", "shard_videos", "shard_eval")
    assert set(ran_stages(first.stdout)) == {"demo_data", "shard_videos", "shard_eval@davis_demo"}
    manifest = json.loads((repo / "data/shards/train/manifest.json").read_text())
    assert manifest["clips_written"] == 4 and manifest["videos_skipped"] == []
    labels = json.loads((repo / "data/shards/eval/davis_demo/labels.json").read_text())
    assert labels["splits"] == {"train": 4, "val": 2}

    second = dvc(repo, "repro", "shard_videos", "shard_eval")
    assert ran_stages(second.stdout) == []

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["shard_videos"]["fps"] = 9
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = dvc(repo, "repro", "shard_videos", "shard_eval")
    assert ran_stages(third.stdout) == ["shard_videos"]
    assert json.loads((repo / "data/shards/train/manifest.json").read_text())["params"]["fps"] == 9


def test_invalid_param_fails_the_stage_naming_the_key(tmp_path):
    repo = make_repo(tmp_path / "repo", tiny_params())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["shard_videos"]["frames_per_clip"] = 0
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    proc = dvc(repo, "repro", "shard_videos", check=False)
    assert proc.returncode != 0
    assert "shard_videos.frames_per_clip" in proc.stdout + proc.stderr
