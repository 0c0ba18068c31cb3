"""The paper profile: its recipe, applied as ordinary param changes, and run end to end with a stand-in backbone."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from pipeline.cli import main as cli
from stages import shard_eval, shard_videos
from stages import train as train_stage
from tests.dvc_repo import PROJECT, dvc, make_repo, tiny_params
from tests.evalsets import named_davis_set
from timetuning.infra.config import ParamsError, load_params, validate_params
from timetuning.infra.profiles import merge, profiled_params, read_profile
from timetuning.models.backbones import build_backbone

PAPER = PROJECT / "profiles" / "paper.yaml"


def _paper_params() -> dict:
    data = yaml.safe_load((PROJECT / "params.yaml").read_text())
    merge(data, read_profile(PAPER))
    return data


def test_the_paper_profile_is_the_papers_recipe():
    p = profiled_params(yaml.safe_load((PROJECT / "params.yaml").read_text()), read_profile(PAPER))
    t = p.train
    assert (t.backbone.name, t.backbone.mean, t.backbone.std) == (
        "vit_small_patch16_224.dino", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert (t.input_size, p.shard_videos.size, t.batch_size, t.trainable_blocks) == (224, 224, 128, 2)
    assert (t.lr_backbone, t.lr_head, t.weight_decay_start, t.weight_decay_end) == (1e-5, 1e-4, 0.04, 0.4)
    assert t.grad_clip == 0.0 and t.precision == "fp32"
    assert (t.forwarder_context_frames, t.forwarder_topk, t.forwarder_window_radius, t.forwarder_temperature) == (
        7, 5, 6, 0.1)
    assert (t.sinkhorn_epsilon, t.sinkhorn_iterations, t.student_temperature, t.num_prototypes) == (0.05, 10, 0.1, 200)
    assert (t.hidden_dim, t.bottleneck_dim, t.projection_dim, tuple(t.crop_scale)) == (1024, 512, 256, (0.4, 1.0))
    assert p.shard_videos.input_format == "frames"
    assert p.shard_videos.video_list == "splits/shard_videos/ytvos_train.txt"
    assert p.shard_videos.sampler == "uniform" and p.shard_videos.frames_per_clip == 4
    assert set(p.shard_eval.sets) == {"davis", "ytvos"}  # the demo set is replaced, not kept beside them
    ytvos = p.shard_eval.sets["ytvos"]
    assert ytvos.scored_split == "val" and ytvos.video_lists == {"val": "splits/ytvos/val.txt"}
    assert (t.val_set, t.val_split) == ("davis", "train") and p.shard_eval.sets["davis"].scored_split == "val"


def test_a_profile_key_the_schema_does_not_know_is_refused():
    with pytest.raises(ParamsError, match="unknown key 'train.learning_rate'"):
        profiled_params({}, {"train": {"learning_rate": 1}})


def test_applying_the_profile_is_a_param_change_dvc_sees_and_keeps_comments(tmp_path):
    repo = make_repo(tmp_path / "repo", tiny_params())
    params_file = repo / "params.yaml"
    params_file.write_text("# my notes\n" + params_file.read_text().replace("seed: 0", "seed: 0  # the seed"))
    dvc(repo, "params", "diff")  # nothing changed yet: DVC compares with the commit
    assert cli(["profile", str(PAPER), "--params", str(params_file)]) == 0
    text = params_file.read_text()
    assert text.startswith("# my notes\n") and "seed: 0  # the seed" in text
    applied = load_params(params_file)
    assert applied.train.batch_size == 128 and applied.demo_data.num_train_videos == 2  # untouched keys stay
    diff = json.loads(dvc(repo, "params", "diff", "--json").stdout)["params.yaml"]
    assert diff["train.batch_size"]["new"] == 128 and diff["train.backbone.name"]["new"] == "vit_small_patch16_224.dino"
    assert "train.grad_clip" not in diff or diff["train.grad_clip"]["new"] == 0.0


def _ytvos(root: Path, videos: list[str], frames: int = 8):
    """A YouTube-VOS train folder: JPEG frames, instance masks and meta.json with categories."""
    rng = np.random.default_rng(2)
    meta = {"videos": {}}
    for vid in videos:
        for sub in ("JPEGImages", "Annotations"):
            (root / "train" / sub / vid).mkdir(parents=True)
        for t in range(frames):
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
                root / "train" / "JPEGImages" / vid / f"{5 * t:05d}.jpg")
            mask = np.zeros((48, 64), np.uint8)
            mask[8 + t:30 + t, 10:40] = 1
            Image.fromarray(mask).save(root / "train" / "Annotations" / vid / f"{5 * t:05d}.png")
        meta["videos"][vid] = {"objects": {"1": {"category": "cat" if vid < "m" else "dog", "frames": []}}}
    (root / "train" / "meta.json").write_text(json.dumps(meta))


@pytest.mark.slow
def test_the_paper_profile_runs_end_to_end_with_a_stand_in_backbone(tmp_path):
    """The profile's whole configuration (frame-folder input with a video list, DAVIS + YouTube-VOS sets cut by
    lists, selection on DAVIS train, 224 px, fp32, no clipping, ...) with a tiny ViT in place of DINO ViT-S/16 and
    a few steps: shard_videos, shard_eval and train run, and only the last two blocks of the backbone change."""
    ytvos, davis = tmp_path / "youtube-vos", tmp_path / "DAVIS"
    _ytvos(ytvos, ["a1", "b2", "c3", "x8", "y9"])
    named_davis_set(davis, {"train": ["d0", "d1"], "val": ["d2"]}, frames=6)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "ytvos_train.txt").write_text("a1\nb2\nc3\n")
    (tmp_path / "splits" / "ytvos_val.txt").write_text("x8\ny9\n")
    data = _paper_params()
    sv, sets, t = data["shard_videos"], data["shard_eval"]["sets"], data["train"]
    sv |= {"input_dir": str(ytvos / "train" / "JPEGImages"), "video_list": str(tmp_path / "splits" / "ytvos_train.txt"),
           "output_dir": str(tmp_path / "shards"), "clips_per_video": 2, "workers": 1}
    data["shard_eval"]["output_dir"] = str(tmp_path / "eval")
    sets["davis"]["root"], sets["ytvos"]["root"] = str(davis), str(ytvos)
    sets["ytvos"]["video_lists"] = {"val": str(tmp_path / "splits" / "ytvos_val.txt")}
    # the stand-in: a tiny ViT (same family, normalised as the profile says) and a few small steps
    t["backbone"] |= {"name": "test_vit", "weights": "none"}
    t |= {"shards": str(tmp_path / "shards"), "output_dir": str(tmp_path / "models"), "batch_size": 2, "steps": 3,
          "val_every": 2, "checkpoint_every": 2, "val_clips": 2, "num_workers": 0}
    params = validate_params(data)
    assert params.train.input_size == 224 and params.train.grad_clip == 0 and params.train.precision == "fp32"

    shard_videos.run(params, argparse.Namespace())
    shard_eval.run(params, argparse.Namespace(set=None))
    train_stage.run(params, argparse.Namespace())

    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["video_names"] == ["a1", "b2", "c3"]
    summary = json.loads((tmp_path / "models" / "train_summary.json").read_text())
    assert summary["steps"] == 3 and (summary["val_set"], summary["val_split"]) == ("davis", "train")
    assert summary["val_clips"] == 2 and summary["val_videos"] == 2 and summary["exported"] in ("best", "start")
    torch.manual_seed(params.seed)
    start = build_backbone(params.train.backbone).model.state_dict()
    final = load_file(str(tmp_path / "models" / "timetuned.safetensors"))
    last = torch.load(tmp_path / "models" / "checkpoints" / "last.pt", weights_only=True)["model"]
    trained = {k.removeprefix("backbone.model.") for k in last if k.startswith("backbone.model.")
               and not torch.equal(last[k], start[k.removeprefix("backbone.model.")])}
    depth = sum(1 for k in start if k.endswith(".norm1.weight"))
    assert trained and {k.split(".")[1] for k in trained} == {str(depth - 2), str(depth - 1)}
    assert all(k.startswith("blocks.") for k in trained)  # final norm, earlier blocks, embeddings: untouched
    assert final.keys() == start.keys()
    model = json.loads((tmp_path / "models" / "model.json").read_text())
    assert model["mean"] == [0.485, 0.456, 0.406] and model["std"] == [0.229, 0.224, 0.225]


def test_the_compare_profile_names_five_models_their_layouts_and_the_reference():
    """profiles/compare.yaml on params.yaml and on top of the paper profile: DINO ViT-S/16 as the start and the
    reference, the time-tuned model, and the released TimeT, Leopart and NeCo files with their layouts, all read
    with ImageNet's normalisation from models/custom/."""
    compare = read_profile(PROJECT / "profiles" / "compare.yaml")
    for base in (yaml.safe_load((PROJECT / "params.yaml").read_text()), _paper_params()):
        p = profiled_params(base, compare)
        models = p.extract_features.models
        assert list(models) == ["dino", "timetuned", "timet", "leopart", "neco"]
        assert [m.name for m in models.values()] == list(models)
        assert p.reference_model() == "dino" and p.train.backbone.name == "vit_small_patch16_224.dino"
        layouts = {n: m.backbone.checkpoint_layout for n, m in models.items() if m.source == "custom"}
        assert layouts == {"timet": "timet", "leopart": "leopart", "neco": "neco"}
        for m in models.values():
            b = m.resolve(p.train)
            assert (b.mean, b.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), m.name
            assert m.source != "custom" or Path(b.weights).parent == Path("models/custom")
