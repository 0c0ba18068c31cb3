"""Missing inputs are found before any work and name the stage to run; the pre-flight of a whole run."""

import os
from pathlib import Path

import pytest

from tests.dvc_repo import PROJECT
from timetuning.infra.config import Params, validate_params
from timetuning.run.inputs import (
    MissingInputError,
    StageInput,
    check_stage_inputs,
    load_and_preflight,
    preflight,
    stage_inputs,
    stage_names,
)

ALL = ["demo_data", "shard_videos", "shard_eval@davis_demo", "train", "model_weights",
       "extract_features@davis_demo-start", "extract_features@davis_demo-timetuned", "fit_probes@davis_demo-start",
       "fit_probes@davis_demo-timetuned", "compare@davis_demo", "evaluate"]


def _missing(params: Params, stage: str) -> str:
    with pytest.raises(MissingInputError) as err:
        check_stage_inputs(params, stage)
    return str(err.value)


def test_a_stage_run_alone_names_the_stage_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty workspace: nothing made yet
    params = Params()
    check_stage_inputs(params, "demo_data")  # needs nothing but installed packages
    assert _missing(params, "shard_videos") == \
        "shard_videos: data/raw/videos not found: run the `demo_data` stage first"
    assert _missing(params, "shard_eval@davis_demo") == \
        "shard_eval@davis_demo: data/raw/davis_demo not found: run the `demo_data` stage first"
    assert _missing(params, "train") == "train: data/shards/train not found: run the `shard_videos` stage first"
    assert _missing(params, "model_weights") == \
        "model_weights: models/timetuned.safetensors not found: run the `train` stage first"
    assert _missing(params, "extract_features@davis_demo-start").splitlines() == [
        "extract_features@davis_demo-start: data/shards/eval/davis_demo/labels.json not found: run the "
        "`shard_eval@davis_demo` stage first",
        "extract_features@davis_demo-start: data/weights/start.json not found: run the `model_weights` stage first"]
    assert _missing(params, "fit_probes@davis_demo-timetuned").splitlines()[1] == \
        "fit_probes@davis_demo-timetuned: data/features/davis_demo/timetuned/train.parquet (and 1 more) not found: " \
        "run the `extract_features@davis_demo-timetuned` stage first"
    assert _missing(params, "compare@davis_demo").splitlines() == [
        f"compare@davis_demo: data/probes/davis_demo/models/{m}/result.json not found: run the "
        f"`fit_probes@davis_demo-{m}` stage first" for m in ("start", "timetuned")]
    assert _missing(params, "evaluate").splitlines()[0] == \
        "evaluate: data/probes/davis_demo/results.json not found: run the `compare@davis_demo` stage first"
    # a folder that exists but holds no shards is as good as missing
    (tmp_path / "data/shards/train").mkdir(parents=True)
    assert _missing(params, "train") == "train: no clips-*.tar in data/shards/train: run the `shard_videos` stage first"
    (tmp_path / "data/shards/train/clips-000000.tar").write_bytes(b"")
    check_stage_inputs(params, "train")


def test_inputs_the_user_provides_name_their_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "voc").mkdir()
    params = validate_params({
        "shard_videos": {"input_dir": "/nonexistent/videos"},
        "shard_eval": {"sets": {"mine": {"layout": "voc", "root": "voc", "classes": "names.txt"}}},
        "train": {"val_set": None, "backbone": {"name": "tf_efficientnet_lite0", "weights": "weights/start.pth"}},
    })
    assert _missing(params, "shard_videos") == \
        "shard_videos: /nonexistent/videos not found: set shard_videos.input_dir to an existing folder"
    assert _missing(params, "shard_eval@mine") == \
        "shard_eval@mine: voc/names.txt not found: set shard_eval.sets.mine.classes to an existing file"
    assert _missing(params, "train").splitlines() == [
        "train: weights/start.pth not found: set train.backbone.weights to an existing file",
        "train: data/shards/train not found: run the `shard_videos` stage first"]
    module = StageInput("no_such_module_xyz", "demo_data.copy_package_videos", kind="module", fix="pip install it")
    assert not module.present() and module.problem("demo_data") == \
        "demo_data: the no_such_module_xyz package is not installed (demo_data.copy_package_videos): pip install it"
    with pytest.raises(ValueError, match="unknown stage 'shard_eval@nope'"):
        stage_names(params, ["shard_eval@nope"])


def test_preflight_counts_what_the_run_itself_makes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = Params()
    # dvc repro evaluate makes everything upstream: nothing needs to exist yet
    assert preflight(params, ["evaluate"]) == ALL
    assert preflight(params, ["train"]) == ["demo_data", "shard_videos", "train"]
    # the repository root can be elsewhere than the working directory (the flow's repo parameter)
    monkeypatch.chdir("/")
    assert preflight(params, ["evaluate"], root=tmp_path) == ALL
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "timetuned.safetensors").write_bytes(b"x")
    # found under root, not under the working directory
    assert preflight(params, ["model_weights"], single_item=True, root=tmp_path) == ["model_weights"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "timetuned.safetensors").unlink()
    # a single stage (dvc repro --single-item, the flow's stage tasks) needs its inputs on disk
    labels = r"^extract_features@davis_demo-start: data/shards/eval/davis_demo/labels.json"
    with pytest.raises(MissingInputError, match=labels):
        preflight(params, ["extract_features"], single_item=True)
    # ... unless an earlier stage of the same run makes them: then only the first stages' own inputs are missing
    with pytest.raises(MissingInputError) as err:
        preflight(params, ["shard_eval", "train", "model_weights", "extract_features"], single_item=True)
    assert [ln.split(":")[0] for ln in str(err.value).splitlines()] == ["shard_eval@davis_demo", "train"]


def test_preflight_finds_links_dvc_cannot_hash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    (videos / "ok.mp4").write_bytes(b"x")
    (videos / "sub" / "up").symlink_to("..")  # a folder loop: DVC copes with it
    params = validate_params({"shard_videos": {"input_dir": str(videos)}})
    preflight(params, ["shard_videos"])
    relative = validate_params({"shard_videos": {"input_dir": "videos"}})
    (videos / "sub" / "self.mp4").symlink_to("self.mp4")
    (videos / "gone.mp4").symlink_to("nowhere.mp4")
    with pytest.raises(MissingInputError) as err:
        preflight(params, ["shard_videos"])
    assert str(err.value).splitlines() == [
        f"shard_videos: {videos}/{name} is a broken or looping link (shard_videos.input_dir): DVC cannot hash the "
        "folder holding it; remove or fix the link" for name in ("gone.mp4", "sub/self.mp4")]
    monkeypatch.chdir("/")
    with pytest.raises(MissingInputError) as err:
        preflight(relative, ["shard_videos"], root=tmp_path)
    assert str(err.value).splitlines()[0].startswith("shard_videos: videos/gone.mp4 is a broken or looping link")


def test_load_and_preflight_refuses_bad_params_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("train:\n  crop_scale: [0.9, 0.4]\n")
    with pytest.raises(ValueError, match=r"train\.crop_scale: \(0\.9, 0\.4\) must be \(min, max\)"):
        load_and_preflight(tmp_path)


@pytest.mark.parametrize("stage", ["shard_videos", "train"])
def test_stage_entry_points_stop_before_any_work(stage, tmp_path, monkeypatch, capsys):
    import importlib

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("shard_eval:\n  output_dir: data/shards/eval\n")
    module = importlib.import_module(f"stages.{stage}")
    assert module.main(["--params", "params.yaml"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    upstream = {"shard_videos": "demo_data", "train": "shard_videos"}[stage]
    assert len(err) == 1 and err[0].startswith(f"error: {stage}: ") and f"run the `{upstream}` stage first" in err[0]
    assert sorted(os.listdir(tmp_path)) == ["params.yaml"]  # nothing written, nothing removed


def test_every_input_is_a_dvc_dependency_made_by_the_stage_named():
    """The table of inputs and dvc.yaml say the same: each input is a dep of its stage and an out of its maker."""
    from dvc.repo import Repo

    params = validate_params(__import__("yaml").safe_load((PROJECT / "params.yaml").read_text()))
    with Repo(str(PROJECT)) as repo:
        stages = {s.addressing: s for s in repo.index.stages}

    def under(path: str, entries) -> bool:
        path = os.path.normpath(path)
        return any(path == e or path.startswith(e + os.sep) for e in (os.path.normpath(x.def_path) for x in entries))

    for stage in ALL:
        for item in stage_inputs(params, stage):
            if item.kind == "module":
                continue
            assert under(item.path, stages[stage].deps), (stage, item.path)
            if item.made_by:
                assert under(item.path, stages[item.made_by].outs), (item.made_by, item.path)


def test_cli_repro_refuses_before_dvc_starts(tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("fit_probes:\n  linear_drop_epoch: 30\n")
    assert main(["repro", "fit_probes"]) == 1
    err = capsys.readouterr().err
    assert "fit_probes.linear_drop_epoch: 30 must be below linear_epochs (25)" in err
    assert "nothing was run" in err and not Path(tmp_path / ".dvc").exists()


def test_per_model_stage_names_are_typed_by_set_and_model():
    """``<group>@<set>-<model>`` names one model on one set, ``<group>@<set>`` all models on it (handed to DVC as
    their own names), the group every set and model; a name that is neither says what the stages are."""
    from timetuning.run.inputs import dvc_targets, split_stage

    params = validate_params({"shard_eval": {"sets": {"a-b": {"layout": "davis", "root": "x"},
                                                      "a": {"layout": "davis", "root": "y"}}, },
                              "train": {"val_set": None},
                              "extract_features": {"models": {"b_c": {"source": "train_start"},
                                                              "d": {"source": "train_result"}}}})
    assert split_stage(params, "fit_probes@a-b-d") == ("fit_probes", "a-b", "d")
    assert split_stage(params, "fit_probes@a-b_c") == ("fit_probes", "a", "b_c")
    assert split_stage(params, "compare@a-b") == ("compare", "a-b", "")
    assert stage_names(params, ["fit_probes@a", "compare"]) == ["fit_probes@a-b_c", "fit_probes@a-d", "compare@a-b",
                                                                "compare@a"]
    assert stage_names(params, ["extract_features"]) == [f"extract_features@{s}-{m}" for s in ("a-b", "a")
                                                        for m in ("b_c", "d")]
    assert dvc_targets(params, ["fit_probes@a", "fit_probes", "compare@a", "evaluate"]) == [
        "fit_probes@a-b_c", "fit_probes@a-d", "fit_probes", "compare@a", "evaluate"]
    with pytest.raises(ValueError, match=r"unknown stage 'fit_probes@a-e': fit_probes@<set>-<model> needs a set"):
        stage_names(params, ["fit_probes@a-e"])
    with pytest.raises(ValueError, match=r"unknown stage 'compare@a-d'"):
        stage_names(params, ["compare@a-d"])
