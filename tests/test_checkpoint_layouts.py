"""Stand-in checkpoints in each published layout (TimeT, Leopart, NeCo, DINO, timm/DINOv2, this project's): a tiny
ViT student and teacher with different weights, written with the real nesting, key names, heads and trainer extras,
loaded through build_backbone (what the stages use): the intended part's tensors and features come out, never the
other part's."""

from __future__ import annotations

import argparse
import json
import logging
import typing

import pytest
import timm
import torch
from safetensors.torch import save_file

from timetuning.infra.checkpoint import export_backbone, save_checkpoint
from timetuning.infra.config import CHECKPOINT_LAYOUTS, BackboneParams, ModelParams, TrainParams
from timetuning.models.backbones import DenseBackbone, build_backbone
from timetuning.models.checkpoint_layouts import LAYOUTS, STUDENT, TEACHER
from timetuning.models.weights import WeightsError

NAME = "test_vit"  # timm's tiny ViT (6 blocks, dim 64) that the other backbone tests use
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}  # what every one of these families uses


def _backbone_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in timm.create_model(NAME, num_classes=0).state_dict().items()}


@pytest.fixture(scope="module")
def parts() -> dict[str, dict[str, torch.Tensor]]:
    return {STUDENT: _backbone_state(1), TEACHER: _backbone_state(2)}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))


def _under(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def _lightning(state_dict: dict[str, torch.Tensor]) -> dict[str, typing.Any]:
    """What PyTorch Lightning's ModelCheckpoint writes around a module's state_dict."""
    return {"epoch": 49, "global_step": 12500, "pytorch-lightning_version": "1.5.10", "state_dict": state_dict,
            "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 49}}}}, "callbacks": {},
            "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4,
                                                                                              "params": [0]}]}],
            "lr_schedulers": [{"last_epoch": 49}], "hyper_parameters": {"arch": "vit-small", "lr_backbone": 1e-5}}


def _heads(*names: str) -> dict[str, torch.Tensor]:
    return {n: torch.randn(3, 64) for n in names}


def _load(path, **params) -> DenseBackbone:
    return build_backbone(BackboneParams(name=NAME, weights=str(path), **IMAGENET, **params))


def _assert_is(backbone: DenseBackbone, parts, part: str, images) -> None:
    """The backbone's tensors are ``part``'s, and so are its features (which differ from the other part's)."""
    loaded = backbone.model.state_dict()
    for k, v in parts[part].items():
        assert torch.equal(loaded[k], v), k
    other = TEACHER if part == STUDENT else STUDENT
    reference = {}
    for name in (part, other):
        model = timm.create_model(NAME, num_classes=0, dynamic_img_size=True)
        model.load_state_dict(parts[name])
        reference[name] = DenseBackbone(model, NAME, **IMAGENET).eval()(images)
    got = backbone.eval()(images)
    assert torch.allclose(got, reference[part], atol=1e-6)
    assert not torch.allclose(got, reference[other], atol=1e-3)


# --------------------------------------------------------------------------- writers of the published layouts
def write_timet(path, parts, clean: bool = False, teacher: bool = True) -> None:
    """TimeT.pth: a flat dict; repo Timetuning: feature_extractor.backbone.*, TimeT_clean: feature_extractor.model.*;
    heads feature_extractor.head.*, mlp_head.*, prototypes; some files carry teacher.backbone.*."""
    body = "model" if clean else "backbone"
    state = _under(f"feature_extractor.{body}.", parts[STUDENT]) | _heads(
        "feature_extractor.head.0.weight", "feature_extractor.head.2.weight", "mlp_head.0.weight", "prototypes")
    if teacher:
        state |= _under(f"teacher.{body}.", parts[TEACHER]) | _heads("teacher.head.0.weight")
    torch.save(state, path)


def write_leopart(path, parts, teacher: bool = True) -> None:
    """Leopart's Lightning .ckpt: state_dict with model.* (student), teacher.*, projection_head.*, prototypes."""
    state = _under("model.", parts[STUDENT]) | _heads("projection_head.0.weight", "projection_head.0.bias",
                                                      "prototypes.weight")
    if teacher:
        state |= _under("teacher.", parts[TEACHER])
    torch.save(_lightning(state), path)


def write_neco_lightning(path, parts) -> None:
    torch.save(_lightning(_under("model.", parts[STUDENT]) | _under("teacher.", parts[TEACHER])), path)


def dinov2_named(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A backbone as DINOv2's own code (the hub files, NeCo's releases) names it: with its masked-training token."""
    return state | {"mask_token": torch.zeros(1, 64)}


def write_dino_training(path, parts) -> None:
    """DINO's checkpoint.pth: student (DDP: module.backbone.*, module.head.*), teacher (backbone.*, head.*), the
    optimiser, the epoch, the command line (argparse.Namespace) and the loss's centre."""
    dino_head = ("mlp.0.weight", "mlp.0.bias", "last_layer.weight_g", "last_layer.weight_v")
    torch.save({
        "student": _under("module.backbone.", parts[STUDENT]) | _heads(*(f"module.head.{k}" for k in dino_head)),
        "teacher": _under("backbone.", parts[TEACHER]) | _heads(*(f"head.{k}" for k in dino_head)),
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]}, "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=65536), "fp16_scaler": None,
        "dino_loss": {"center": torch.zeros(1, 65536)}}, path)


# --------------------------------------------------------------------------- each layout loads its intended part
def test_the_layouts_registry_is_the_configs(parts):
    assert list(CHECKPOINT_LAYOUTS) == ["auto", *LAYOUTS]
    assert typing.get_args(BackboneParams.model_fields["checkpoint_layout"].annotation) == CHECKPOINT_LAYOUTS
    assert {n: lay.default_part for n, lay in LAYOUTS.items() if n not in ("timm", "timetuning")} == {
        "timet": STUDENT, "leopart": STUDENT, "neco": STUDENT, "dino": TEACHER}


@pytest.mark.parametrize("clean", [False, True], ids=["Timetuning", "TimeT_clean"])
def test_timet_loads_the_student_not_the_teacher_registered_after_it(tmp_path, parts, images, caplog, clean):
    """The authors' README strips two key parts with strict=False, where teacher.backbone.* would overwrite the
    student: the student is what they evaluate, and what loads."""
    path = tmp_path / "TimeT.pth"
    write_timet(path, parts, clean=clean)
    with caplog.at_level(logging.INFO, logger="timetuning.models"):
        backbone = _load(path)
    _assert_is(backbone, parts, STUDENT, images)
    source = backbone.weights_source
    body = "model" if clean else "backbone"
    assert (source.layout, source.part, source.prefix, source.container, source.detected) == (
        "timet", STUDENT, f"feature_extractor.{body}.", None, True)
    assert source.tensors == len(parts[STUDENT])
    line = next(r.message for r in caplog.records if "dropped on purpose" in r.message)
    assert "head feature_extractor.head (2 tensors)" in line and "head mlp_head (1 tensor)" in line
    assert "head prototypes (1 tensor)" in line and f"the teacher: teacher.{body}. (" in line
    _assert_is(_load(path, checkpoint_part="teacher"), parts, TEACHER, images)


def test_timet_without_a_teacher(tmp_path, parts, images):
    path = tmp_path / "TimeT.pth"
    write_timet(path, parts, teacher=False)
    _assert_is(_load(path, checkpoint_layout="timet"), parts, STUDENT, images)
    with pytest.raises(WeightsError, match=r"timet \(flat\) file without a teacher \(asked by backbone"):
        _load(path, checkpoint_part="teacher")


def test_leopart_lightning_checkpoint_loads_the_student(tmp_path, parts, images):
    path = tmp_path / "leopart_vits16.ckpt"
    write_leopart(path, parts)
    backbone = _load(path)
    _assert_is(backbone, parts, STUDENT, images)
    source = backbone.weights_source
    assert (source.layout, source.form, source.container, source.prefix) == ("leopart", "lightning", "state_dict",
                                                                            "model.")
    assert sorted(source.dropped) == ["head state_dict/projection_head (2 tensors)",
                                      "head state_dict/prototypes (1 tensor)",
                                      f"the teacher: state_dict/teacher. ({len(parts[TEACHER])} tensors)"]
    _assert_is(_load(path, checkpoint_part="teacher"), parts, TEACHER, images)


def test_neco_lightning_and_released_files(tmp_path, parts, images):
    ckpt = tmp_path / "neco_last.ckpt"
    write_neco_lightning(ckpt, parts)
    backbone = _load(ckpt)
    _assert_is(backbone, parts, STUDENT, images)
    assert (backbone.weights_source.layout, backbone.weights_source.part) == ("neco", STUDENT)
    _assert_is(_load(ckpt, checkpoint_part="teacher"), parts, TEACHER, images)
    # the released files: one bare backbone each, with DINOv2's key names
    for part, name in ((STUDENT, "vits14_neco_model.ckpt"), (TEACHER, "vits14_neco_teacher.ckpt")):
        torch.save(dinov2_named(parts[part]), tmp_path / name)
        named = _load(tmp_path / name, checkpoint_layout="neco")
        _assert_is(named, parts, part, images)
        source = named.weights_source
        assert (source.layout, source.form, source.part, source.detected) == ("neco", "released", "backbone", False)
        assert "mask_token (DINOv2's masked-training token)" in source.dropped
        told = _load(tmp_path / name)  # a bare state dict, as far as the keys tell
        _assert_is(told, parts, part, images)
        assert (told.weights_source.layout, told.weights_source.detected) == ("timm", True)
    with pytest.raises(WeightsError, match="holds one backbone, not a student and a teacher"):
        _load(tmp_path / "vits14_neco_teacher.ckpt", checkpoint_layout="neco", checkpoint_part="teacher")


def test_dino_training_checkpoint_loads_the_teacher(tmp_path, parts, images):
    path = tmp_path / "checkpoint.pth"
    write_dino_training(path, parts)
    backbone = _load(path)
    _assert_is(backbone, parts, TEACHER, images)
    source = backbone.weights_source
    assert (source.layout, source.form, source.container, source.prefix) == ("dino", "training", "teacher",
                                                                            "backbone.")
    assert {"head teacher/head (4 tensors)", "head student/module.head (4 tensors)"} <= set(source.dropped)
    student = _load(path, checkpoint_part="student")
    _assert_is(student, parts, STUDENT, images)
    assert (student.weights_source.container, student.weights_source.prefix) == ("student", "module.backbone.")


def test_dino_released_backbone_is_the_teacher(tmp_path, parts, images):
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(parts[TEACHER], path)
    named = _load(path, checkpoint_layout="dino")
    _assert_is(named, parts, TEACHER, images)
    assert (named.weights_source.form, named.weights_source.part) == ("pretrain", TEACHER)
    assert _load(path).weights_source.layout == "timm"  # bare keys: as far as they tell, a plain backbone
    with pytest.raises(WeightsError, match=r"dino \(pretrain\) file holds only the teacher"):
        _load(path, checkpoint_layout="dino", checkpoint_part="student")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_bare_state_dicts(tmp_path, parts, images, suffix):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(parts[STUDENT], str(path))
    else:
        torch.save(parts[STUDENT], path)
    backbone = _load(path)
    _assert_is(backbone, parts, STUDENT, images)
    source = backbone.weights_source
    assert (source.layout, source.form, source.part, source.prefix, source.dropped) == ("timm", "bare", "backbone",
                                                                                     "", ())


def test_timm_wrapped_state_dicts(tmp_path, parts, images):
    """timm's train.py checkpoints (state_dict, with module. under DDP) and DeiT/MAE releases (model)."""
    train_ckpt = tmp_path / "checkpoint-10.pth.tar"
    torch.save({"epoch": 10, "arch": NAME, "state_dict": _under("module.", parts[STUDENT]), "optimizer": {},
                "version": 2, "args": argparse.Namespace(model=NAME)}, train_ckpt)
    deit = tmp_path / "deit_small.pth"
    torch.save({"model": parts[TEACHER], "epoch": 300}, deit)
    first = _load(train_ckpt)
    _assert_is(first, parts, STUDENT, images)
    assert (first.weights_source.form, first.weights_source.prefix) == ("state_dict", "module.")
    second = _load(deit)
    _assert_is(second, parts, TEACHER, images)
    assert (second.weights_source.form, second.weights_source.container) == ("model", "model")


def test_timetuning_export_and_training_checkpoint(tmp_path, parts, images):
    """What train writes: timetuned.safetensors (backbone.model.state_dict() with its classifier, metadata naming
    the run) and checkpoints/last.pt (the TimeTuner's state dict under model)."""
    from timetuning.train.tuner import build_tuner

    classifier = {k: v for k, v in timm.create_model(NAME).state_dict().items() if k.startswith("head.")}
    export = tmp_path / "timetuned.safetensors"
    export_backbone(export, parts[STUDENT] | classifier, {"name": NAME, "mean": json.dumps(IMAGENET["mean"]),
                                                          "std": json.dumps(IMAGENET["std"]),
                                                          "fingerprint": "0123abcd", "step": "25"})
    backbone = _load(export)
    _assert_is(backbone, parts, STUDENT, images)
    assert (backbone.weights_source.layout, backbone.weights_source.form) == ("timetuning", "export")
    p = TrainParams(backbone={"name": NAME, "weights": "none"}, num_prototypes=4, hidden_dim=8, bottleneck_dim=8,
                    projection_dim=8)
    tuner = build_tuner(p, 0, torch.device("cpu"))
    tuner.backbone.model.load_state_dict(parts[TEACHER], strict=False)
    last = tmp_path / "last.pt"
    save_checkpoint(last, {"step": 25, "model": tuner.state_dict(), "optimizer": {}, "fingerprint": "0123abcd",
                           "code": "ffff", "log": [], "selected_weights": None})
    resumed = _load(last)
    _assert_is(resumed, parts, TEACHER, images)
    source = resumed.weights_source
    assert (source.layout, source.form, source.container, source.prefix) == ("timetuning", "checkpoint", "model",
                                                                            "backbone.model.")
    assert source.dropped == ("head model/head (9 tensors)",)
    # train_result is the export, whatever layout the training started from
    started = p.model_copy(update={"backbone": BackboneParams(name=NAME, weights="TimeT.pth",
                                                              checkpoint_layout="timet")})
    resolved = ModelParams(name="timetuned", source="train_result").resolve(started)
    assert (resolved.checkpoint_layout, resolved.weights) == ("timetuning", "models/timetuned.safetensors")


# --------------------------------------------------------------------------- strict about the backbone
def test_a_missing_tensor_is_named(tmp_path, parts):
    path = tmp_path / "leopart.ckpt"
    write_leopart(path, {STUDENT: {k: v for k, v in parts[STUDENT].items() if k != "blocks.1.attn.qkv.weight"},
                         TEACHER: parts[TEACHER]})
    with pytest.raises(WeightsError, match=r"under state_dict/model\. lacks 'test_vit''s tensor\(s\) 1: "
                                           r"blocks\.1\.attn\.qkv\.weight"):
        _load(path)


def test_a_wrong_shape_is_named(tmp_path, parts):
    path = tmp_path / "leopart.ckpt"
    write_leopart(path, {STUDENT: parts[STUDENT] | {"pos_embed": torch.zeros(1, 5, 64)}, TEACHER: parts[TEACHER]})
    with pytest.raises(WeightsError, match=r"wrong shape .*state_dict/model\.pos_embed \(1, 5, 64\) "
                                           r"\(model \(1, 101, 64\)\)"):
        _load(path)


def test_a_leftover_backbone_tensor_is_named(tmp_path, parts):
    """A deeper checkpoint than the model: its extra block is the part's, and named."""
    path = tmp_path / "TimeT.pth"
    extra = parts[STUDENT] | {"blocks.6.attn.qkv.weight": torch.zeros(192, 64)}
    write_timet(path, {STUDENT: extra, TEACHER: parts[TEACHER]})
    with pytest.raises(WeightsError, match=r"student tensors that 'test_vit' has no place for \(1: "
                                           r"feature_extractor\.backbone\.blocks\.6\.attn\.qkv\.weight\)"):
        _load(path)


def test_a_backbone_copy_outside_the_layout_is_refused(tmp_path, parts):
    """An EMA copy that no layout knows: auto finds no layout (and says where the tensors are); naming the layout
    still refuses to drop backbone-like tensors silently."""
    path = tmp_path / "TimeT.pth"
    write_timet(path, parts, teacher=False)
    torch.save(torch.load(path) | _under("model_ema.", parts[TEACHER]), path)
    with pytest.raises(WeightsError, match=r"fit none of the checkpoint layouts .*'model_ema\.' \(78 tensors\)"):
        _load(path)
    with pytest.raises(WeightsError, match=r"named like 'test_vit''s lie outside the student .*model_ema\.cls_token"):
        _load(path, checkpoint_layout="timet")


def test_an_unknown_layout_names_the_prefixes_found(tmp_path, parts):
    path = tmp_path / "mystery.pth"
    torch.save({"weights": _under("net.encoder.", parts[STUDENT]) | _heads("net.decoder.weight"), "iteration": 3},
               path)
    with pytest.raises(WeightsError) as err:
        _load(path)
    message = str(err.value)
    assert str(path) in message and "fit none of the checkpoint layouts" in message
    assert "'weights/net.encoder.' (78 tensors)" in message and "'weights/net.decoder' (1)" in message
    assert "backbone.checkpoint_layout" in message
    with pytest.raises(WeightsError, match=r"not in the dino layout .*'weights/net\.encoder\.'"):
        _load(path, checkpoint_layout="dino")


def test_a_file_fitting_two_layouts_is_ambiguous(tmp_path, parts):
    path = tmp_path / "both.ckpt"
    write_leopart(path, parts)
    torch.save(torch.load(path, weights_only=True) | _under("feature_extractor.backbone.", parts[STUDENT]), path)
    with pytest.raises(WeightsError, match=r"fit several checkpoint layouts \(timet \(flat\), leopart \(lightning\)\)"):
        _load(path)
    _load(path, checkpoint_layout="leopart")


def test_a_layout_or_part_for_weights_that_are_not_a_file_is_refused():
    with pytest.raises(ValueError, match="checkpoint_part: 'teacher' applies to a .pth/.safetensors weights file"):
        BackboneParams(name=NAME, weights="hub", checkpoint_part="teacher")
    with pytest.raises(ValueError, match="checkpoint_layout"):
        BackboneParams(name=NAME, weights="x.pth", checkpoint_layout="mocov3")
