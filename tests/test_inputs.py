"""Missing inputs are found before any work and name the stage to run; the pre-flight of a whole run."""

import os
import shutil
from pathlib import Path

import pytest

from tests.dvc_repo import PROJECT
from timetuning.infra.config import Params, validate_params
from timetuning.run.inputs import (
    MissingInputError,
    StageInput,
    check_stage_inputs,
    load_and_preflight,
    missing_inputs,
    preflight,
    stage_inputs,
    stage_names,
)

ALL = ["demo_data", "shard_videos", "shard_eval@davis_demo", "train", "model_weights",
       "extract_features@davis_demo-start", "extract_features@davis_demo-timetuned", "fit_probes@davis_demo-start",
       "fit_probes@davis_demo-timetuned", "compare@davis_demo", "evaluate"]


def _checkout(path: Path) -> None:
    """What a clone holds before any stage ran: the list folders of splits/ (each a DVC dependency)."""
    shutil.copytree(PROJECT / "splits", path / "splits")


def _missing(params: Params, stage: str) -> str:
    with pytest.raises(MissingInputError) as err:
        check_stage_inputs(params, stage)
    return str(err.value)


def test_a_stage_run_alone_names_the_stage_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a fresh clone: nothing made yet
    _checkout(tmp_path)
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
    _checkout(tmp_path)
    for name in ("JPEGImages/a.jpg", "SegmentationClass/a.png", "ImageSets/Segmentation/train.txt",
                 "ImageSets/Segmentation/val.txt"):  # the layout's files are there (only paths are checked)
        (tmp_path / "voc" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "voc" / name).write_text("a\n")
    params = validate_params({
        "shard_videos": {"input_dir": "/nonexistent/videos"},
        "shard_eval": {"sets": {"mine": {"layout": "voc", "root": "voc", "classes": "names.txt"}}},
        "train": {"val_set": None, "backbone": {"name": "tf_efficientnet_lite0", "weights": "weights/start.pth"}},
    })
    assert _missing(params, "shard_videos") == \
        "shard_videos: /nonexistent/videos not found: set shard_videos.input_dir to an existing folder"
    assert _missing(params, "shard_eval@mine").splitlines() == [  # its list folder only DVC needs: not a problem
        "shard_eval@mine: voc/names.txt not found: set shard_eval.sets.mine.classes to an existing file"]
    assert not (tmp_path / "splits/mine").exists()
    with pytest.raises(MissingInputError, match="names.txt not found"):
        preflight(params, ["shard_eval@mine"], single_item=True)
    assert (tmp_path / "splits/mine").is_dir()  # the pre-flight made it, empty, for DVC's dependency
    assert _missing(params, "train").splitlines() == [
        "train: weights/start.pth not found: set train.backbone.weights to an existing file",
        "train: data/shards/train not found: run the `shard_videos` stage first"]
    module = StageInput("no_such_module_xyz", "demo_data.copy_package_videos", kind="module", fix="pip install it")
    assert not module.present() and module.problem("demo_data") == \
        "demo_data: the no_such_module_xyz package is not installed (demo_data.copy_package_videos): pip install it"
    with pytest.raises(ValueError, match="unknown stage 'shard_eval@nope'"):
        stage_names(params, ["shard_eval@nope"])


def test_lists_must_lie_in_the_folder_dvc_tracks_for_their_stage(tmp_path, monkeypatch):
    """A list is read only from the one folder of splits/ its stage depends on: a list elsewhere in the repository
    would change without DVC rerunning the stage, so it is refused naming the key; one outside the repository (like
    a set's root) is read as given."""
    monkeypatch.chdir(tmp_path)
    _checkout(tmp_path)
    (tmp_path / "splits/davis_demo/val.txt").write_text("v0\n")
    (tmp_path / "splits/shared.txt").write_text("v0\n")
    (tmp_path / "splits/shard_videos/train.txt").write_text("v1\n")
    elsewhere = tmp_path.parent / f"{tmp_path.name}-lists"
    elsewhere.mkdir()
    (elsewhere / "val.txt").write_text("v0\n")

    def problems(stage: str, **lists: str) -> list[str]:
        data = {"shard_eval": {"sets": {"davis_demo": {"layout": "davis", "root": "data/raw/davis_demo",
                                                       "splits": ["train", "val"], "video_lists": lists}}}}
        if stage == "shard_videos":
            data = {"shard_videos": {"video_list": lists["val"]}}
        return [p for p in missing_inputs(validate_params(data), stage) if "not found: run" not in p]

    assert problems("shard_eval@davis_demo", val="splits/davis_demo/val.txt") == []
    assert problems("shard_eval@davis_demo", val=str(tmp_path / "splits/davis_demo/val.txt")) == []
    assert problems("shard_eval@davis_demo", val=str(elsewhere / "val.txt")) == []
    assert problems("shard_eval@davis_demo", val="splits/shared.txt") == [
        "shard_eval@davis_demo: shard_eval.sets.davis_demo.video_lists.val: splits/shared.txt is read but not "
        "tracked: move it into splits/davis_demo/, the one list folder DVC tracks for this stage, and set "
        "shard_eval.sets.davis_demo.video_lists.val"]
    assert problems("shard_eval@davis_demo", val="splits/shard_videos/train.txt")[0].startswith(
        "shard_eval@davis_demo: shard_eval.sets.davis_demo.video_lists.val: splits/shard_videos/train.txt is read "
        "but not tracked")
    assert problems("shard_eval@davis_demo", val="splits/davis_demo/gone.txt") == [
        "shard_eval@davis_demo: splits/davis_demo/gone.txt not found: write the IDs there (one per line), or set "
        "shard_eval.sets.davis_demo.video_lists.val to an existing file"]
    assert problems("shard_videos", val="splits/shard_videos/train.txt") == []
    assert problems("shard_videos", val="splits/davis_demo/val.txt") == [
        "shard_videos: shard_videos.video_list: splits/davis_demo/val.txt is read but not tracked: move it into "
        "splits/shard_videos/, the one list folder DVC tracks for this stage, and set shard_videos.video_list"]


def test_preflight_counts_what_the_run_itself_makes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _checkout(tmp_path)
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
    _checkout(tmp_path)
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
    _checkout(tmp_path)
    (tmp_path / "params.yaml").write_text("shard_eval:\n  output_dir: data/shards/eval\n")
    module = importlib.import_module(f"stages.{stage}")
    assert module.main(["--params", "params.yaml"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    upstream = {"shard_videos": "demo_data", "train": "shard_videos"}[stage]
    assert len(err) == 1 and err[0].startswith(f"error: {stage}: ") and f"run the `{upstream}` stage first" in err[0]
    assert sorted(os.listdir(tmp_path)) == ["params.yaml", "splits"]  # nothing written, nothing removed


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


def test_preflight_checks_each_sets_layout(tmp_path, monkeypatch, capsys):
    """Before DVC runs anything, each set's own files are checked against its layout (paths only): the image and
    mask folders, each split's file or the every-image fallback; each problem one line naming the set key and the
    fix. A labelme export as it comes and a CVAT export pass."""
    import yaml

    from pipeline.cli import main
    from tests.evalsets import cvat_mask_export, davis_set, labelme_voc_export

    monkeypatch.chdir(tmp_path)
    labelme = labelme_voc_export(tmp_path / "data" / "labelme", frames=1, h=40, w=60)
    cvat = cvat_mask_export(tmp_path / "data" / "cvat", frames=1)
    davis_set(tmp_path / "data" / "davis", {"val": [(32, 48)]}, frames=2)
    good = {"labelme": {"layout": "voc", "root": "data/labelme", "splits": ["val"], "classes": "class_names.txt"},
            "cvat": {"layout": "voc", "root": "data/cvat", "splits": ["default"]}}
    params = validate_params({"shard_eval": {"sets": good}, "train": {"val_set": None}})
    assert preflight(params, ["shard_eval"], single_item=True) == ["shard_eval@labelme", "shard_eval@cvat"]
    bad = {
        "two": good["labelme"] | {"splits": ["train", "val"]},  # no split files: only a lone split is every image
        "cvat_val": good["cvat"] | {"splits": ["val"]},  # CVAT names its split default
        "masks": good["labelme"] | {"mask_dir": "Masks"},
        "hd": {"layout": "davis", "root": "data/davis", "resolution": "1080p", "splits": ["val"]},
        "lists": {"layout": "davis", "root": "data/davis", "splits": ["val"],
                  "video_lists": {"val": "splits/lists/v.txt"}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"shard_eval": {"sets": good | bad},
                                                          "train": {"val_set": None}}, sort_keys=False))
    with pytest.raises(MissingInputError) as err:
        load_and_preflight(".", ["shard_eval"], single_item=True)
    split_file = "data/labelme/ImageSets/Segmentation/{0}.txt: split file not found (shard_eval.sets.two.splits): " \
                 "add it (one ID per line), or list the IDs in shard_eval.sets.two.video_lists: {{{0}: " \
                 "splits/two/<file>.txt}}; every image is used only by a set with one split and no split files (this " \
                 "set has 2 splits: ['train', 'val'])"
    assert str(err.value).splitlines() == [
        f"shard_eval@two: {split_file.format('train')}",
        f"shard_eval@two: {split_file.format('val')}",
        "shard_eval@cvat_val: data/cvat/ImageSets/Segmentation/val.txt: split file not found "
        "(shard_eval.sets.cvat_val.splits): add it (one ID per line), or list the IDs in "
        "shard_eval.sets.cvat_val.video_lists: {val: splits/cvat_val/<file>.txt}; data/cvat/ImageSets/Segmentation has "
        "default.txt: to use it, set shard_eval.sets.cvat_val.splits to [default]",
        "shard_eval@masks: data/labelme/Masks: mask folder not found (shard_eval.sets.masks.mask_dir): set "
        "shard_eval.sets.masks.mask_dir to the folder of masks under data/labelme (default SegmentationClass, or "
        "labelme's SegmentationClassPNG)",
        "shard_eval@hd: data/davis/JPEGImages/1080p: folder not found (shard_eval.sets.hd.resolution: 1080p): a davis "
        "set has JPEGImages/<resolution>/<sequence>/; set resolution to the folder under data/davis/JPEGImages or "
        "root to the DAVIS folder",
        "shard_eval@hd: data/davis/Annotations/1080p: folder not found (shard_eval.sets.hd.resolution: 1080p): a "
        "davis set has Annotations/<resolution>/<sequence>/; set resolution to the folder under "
        "data/davis/Annotations or root to the DAVIS folder",
        "shard_eval@lists: splits/lists/v.txt not found: write the IDs there (one per line), or set "
        "shard_eval.sets.lists.video_lists.val to an existing file"]
    # the CLI refuses before DVC starts, with the same lines
    assert main(["repro", "shard_eval"]) == 1
    out = capsys.readouterr().err
    assert "shard_eval@masks: data/labelme/Masks: mask folder not found" in out and "nothing was run" in out
    assert labelme.is_dir() and cvat.is_dir()


def _cli(args: list[str], cwd: Path):
    import subprocess
    import sys

    from tests.dvc_repo import dvc_env

    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=dvc_env(), capture_output=True,
                          text=True, timeout=120)


def test_a_failing_stage_and_a_refused_run_say_their_error_once(tmp_path):
    """On the command line each problem is one `error:` line, said once: no log record repeating it (a stage under
    DVC, `timetuning stage` and a flow's log all show what the stage prints)."""
    (tmp_path / "params.yaml").write_text("evaluate:\n  num_example_clips: 2\n")
    stage = _cli(["stage", "evaluate"], tmp_path)
    assert stage.returncode == 1
    problem = "evaluate: data/probes/davis_demo/results.json not found: run the `compare@davis_demo` stage first"
    assert (stage.stdout + stage.stderr).count(problem) == 1, stage.stderr
    assert stage.stderr.startswith(f"error: {problem}") and "ERROR" not in stage.stderr

    (tmp_path / "params.yaml").write_text("train:\n  lr_head: 0\n")
    for args in (["stage", "train"], ["repro"]):
        proc = _cli(args, tmp_path)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1 and out.count("train.lr_head") == 1, (args, out)
        assert [line for line in out.splitlines() if "error" in line.lower()] == [
            "error: params.yaml: 1 invalid parameter(s)"], (args, out)


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
