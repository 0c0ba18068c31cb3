"""Dense backbones: any timm model as a map ``images [B,3,H,W] -> features [B,D,H/s,W/s]``.

ViTs (DINO ViT-S/16, ViT-S/8, DINOv2 with registers, ViT-B, ...) give their last-layer patch tokens after the final
norm with CLS/register tokens removed; convolutional networks give their last feature map at a chosen output stride
(dilated last stages, so a CNN sees the same 14x14 grid at 224 px as a ViT-S/16).

Which map is "the features" (``BackboneParams.feature_layer``; ``+`` joins several):
- ``final``: ``forward_features`` (ViT: last-layer patch tokens after the final norm, the method's choice; CNN:
  the map after the last 1x1 conv and its norm + activation, for EfficientNet-Lite ReLU6 outputs, mostly zeros);
- ``head_conv`` (CNN): the output of the last 1x1 conv (``conv_head``), before its norm and activation;
- ``head_preact`` (CNN): ``conv_head`` followed by its batch norm (``bn2``), before the activation;
- ``block-N``: the output of ``blocks[-N]`` (ViT: its patch tokens after the final norm, as DINO's
  ``get_intermediate_layers``); maps finer than the output grid are average-pooled onto it;
- ``A+B``: the parts concatenated along channels, each L2-normalised per position first, so that neither part
  outweighs the other by its scale.
Blocks after the deepest block a layer reads are neither run nor trained: ``trainable_blocks`` counts back from
that block (the blocks that feed the features), plus the head layers the features pass through.

Starting weights and their normalisation: :mod:`timetuning.models.weights`.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from timetuning.data.transforms import eval_transform
from timetuning.infra.config import BackboneParams
from timetuning.models.checkpoint_layouts import WeightsSource
from timetuning.models.weights import check_weights_spec, config_normalisation, load_weights

log = logging.getLogger(__name__)


CNN_HEAD_LAYERS = ("head_conv", "head_preact")


def _is_vit(model: nn.Module) -> bool:
    return hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")


def parse_feature_layer(spec: str) -> list[str]:
    """The parts of a ``feature_layer`` spec (``"block-2+head_conv"`` -> ``["block-2", "head_conv"]``)."""
    parts = spec.split("+")
    for part in parts:
        if not (part == "final" or part in CNN_HEAD_LAYERS or re.fullmatch(r"block-[1-9][0-9]*", part)):
            raise ValueError(f"backbone.feature_layer: unknown layer {part!r} in {spec!r} (use final, head_conv, "
                             f"head_preact or block-N, joined by '+')")
    if len(set(parts)) != len(parts):
        raise ValueError(f"backbone.feature_layer: {spec!r} names a layer twice")
    return parts


class DenseBackbone(nn.Module):
    """A timm model seen as a dense feature extractor (the whole timm model is kept, so exports load in timm)."""

    def __init__(self, model: nn.Module, name: str, feature_layer: str = "final",
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None):
        super().__init__()
        self.model = model
        self.name = name
        self.is_vit = _is_vit(model)
        self.feature_layer = feature_layer
        self.layers = parse_feature_layer(feature_layer)
        config_mean, config_std = config_normalisation(model)
        self.mean: tuple[float, ...] = tuple(mean) if mean is not None else config_mean
        self.std: tuple[float, ...] = tuple(std) if std is not None else config_std
        if self.is_vit:
            self.stride = int(model.patch_embed.patch_size[0])
        else:
            self.stride = int(getattr(model, "_timetuning_output_stride", 32))
        self._check_layers()
        self.embed_dim = self._feature_dim()
        self.weights_source: WeightsSource | None = None  # where the weights came from (build_backbone sets it)

    # ------------------------------------------------------------------ which map is returned
    def _check_layers(self) -> None:
        if self.layers == ["final"]:
            return
        where = f"backbone.feature_layer={self.feature_layer!r}"
        if self.is_vit and any(p in CNN_HEAD_LAYERS for p in self.layers):
            raise ValueError(f"{where}: {', '.join(CNN_HEAD_LAYERS)} exist for convolutional backbones only, "
                             f"not the ViT {self.name!r}")
        if not self.is_vit:
            needed = ("conv_stem", "bn1", "blocks", "conv_head", "bn2")
            missing = [n for n in needed if not isinstance(getattr(self.model, n, None), nn.Module)]
            if missing:
                raise ValueError(f"{where}: {self.name!r} lacks {missing}; layers other than 'final' need an "
                                 f"EfficientNet-style network (conv_stem, bn1, blocks, conv_head, bn2)")
        count = len(self.blocks())
        for part in self.layers:
            if part.startswith("block-") and int(part[6:]) > count:
                raise ValueError(f"{where}: {self.name!r} has {count} blocks, so {part!r} does not exist")

    def deepest_block(self) -> int:
        """Index of the last block the features depend on (later blocks are not run)."""
        count = len(self.blocks())
        return max(count - int(p[6:]) if p.startswith("block-") else count - 1 for p in self.layers)

    def _feature_dim(self) -> int:
        if self.layers == ["final"]:
            return int(self.model.embed_dim if self.is_vit else self.model.num_features)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            dim = int(self(torch.zeros(1, 3, 2 * self.stride, 2 * self.stride)).shape[1])
        self.train(was_training)
        return dim

    def _parts(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The requested maps, each ``[B, C, h, w]`` at its own resolution."""
        m, count = self.model, len(self.blocks())
        wanted = set(self.layers)
        if self.is_vit:
            out = {}
            if "final" in wanted:
                out["final"] = self._vit_tokens(m.forward_features(images), images)
            block_parts = [p for p in self.layers if p.startswith("block-")]
            if block_parts:
                maps = m.forward_intermediates(images, indices=[count - int(p[6:]) for p in block_parts], norm=True,
                                               output_fmt="NCHW", intermediates_only=True, stop_early=True)
                out.update(zip(block_parts, maps))
            return out
        if wanted == {"final"}:
            return {"final": m.forward_features(images)}
        out = {}
        x = m.bn1(m.conv_stem(images))
        for i, block in enumerate(m.blocks[: self.deepest_block() + 1]):
            x = block(x)
            if f"block-{count - i}" in wanted:
                out[f"block-{count - i}"] = x
        if wanted & {"final", *CNN_HEAD_LAYERS}:
            head = m.conv_head(x)
            out["head_conv"] = head
            if "final" in wanted:
                out["final"] = m.bn2(head)
            if "head_preact" in wanted:  # bn2's affine normalisation with its frozen statistics, no activation
                bn = m.bn2
                out["head_preact"] = F.batch_norm(head, bn.running_mean, bn.running_var, bn.weight, bn.bias, False,
                                                  0.0, bn.eps)
        return out

    def _vit_tokens(self, feats: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        tokens = feats[:, self.model.num_prefix_tokens:]
        b, n, d = tokens.shape
        h, w = images.shape[-2] // self.stride, images.shape[-1] // self.stride
        if h * w != n:
            raise ValueError(f"{self.name}: {n} patch tokens do not form a {h}x{w} grid for input "
                             f"{tuple(images.shape)}")
        return tokens.transpose(1, 2).reshape(b, d, h, w)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw dense features ``[B, D, H/stride, W/stride]`` of the chosen layer (parts of a concatenation are
        L2-normalised per position)."""
        parts = self._parts(images)
        if self.layers == ["final"]:
            return parts["final"]
        grid = (images.shape[-2] // self.stride, images.shape[-1] // self.stride)
        maps = [parts[p] if parts[p].shape[-2:] == grid else F.adaptive_avg_pool2d(parts[p], grid)
                for p in self.layers]
        if len(maps) == 1:
            return maps[0]
        return torch.cat([F.normalize(x, dim=1) for x in maps], dim=1)

    # ------------------------------------------------------------------ which parameters train
    def blocks(self) -> list[nn.Module]:
        """The network's stages in order (transformer blocks, or CNN stages)."""
        blocks = getattr(self.model, "blocks", None) or getattr(self.model, "stages", None)
        if blocks is None:
            raise ValueError(f"{self.name}: no .blocks or .stages to choose trainable blocks from")
        return list(blocks)

    def head_modules(self) -> list[nn.Module]:
        """Layers after the last block that the features pass through (final norm, CNN 1x1 conv head)."""
        if self.is_vit:  # the final norm shapes "final" and, as in DINO, the intermediate blocks' tokens
            names: tuple[str, ...] = ("norm", "fc_norm")
        else:
            names = ()
            if "final" in self.layers:
                names += ("conv_head", "bn2", "norm_pre", "head_hidden")
            elif "head_preact" in self.layers:
                names += ("conv_head", "bn2")
            elif "head_conv" in self.layers:
                names += ("conv_head",)
        return [m for n in names if isinstance(m := getattr(self.model, n, None), nn.Module)]

    def set_trainable_blocks(self, count: int) -> list[nn.Parameter]:
        """Freeze everything except the ``count`` blocks ending at the deepest block the features read, and a CNN's
        head layers the features pass through; return the trainable parameters. Blocks after the feature layer stay
        frozen: they do not change the features. A ViT's final norm stays frozen (the paper trains the last two
        blocks and nothing else of the backbone)."""
        self.requires_grad_(False)
        if count > 0:
            last = self.deepest_block()
            for module in self.blocks()[max(0, last + 1 - count): last + 1] + ([] if self.is_vit else
                                                                               self.head_modules()):
                module.requires_grad_(True)
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> DenseBackbone:
        """BatchNorm statistics stay frozen: fine-tuning batches are small and clip-correlated."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self


def forward_dense(backbone: DenseBackbone, images: torch.Tensor, batch_size: int = 16,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Features ``[N, D, h, w]`` (float32, on the CPU) of normalised images ``[N, 3, H, W]``, in batches."""
    out = [backbone(images[i:i + batch_size].to(device)).float().cpu() for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


def dense_features(backbone: DenseBackbone, frames: np.ndarray, size: int, batch_size: int = 16,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """Features ``[T, D, size/stride, size/stride]`` of uint8 frames ``[T, H, W, 3]`` squashed to ``size``."""
    x = eval_transform(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2), size, backbone.mean,
                       backbone.std)
    return forward_dense(backbone, x, batch_size, device)


def create_timm_model(name: str, pretrained: bool = False, output_stride: int = 16) -> nn.Module:
    """A timm model ready for dense use: ViTs accept any input size, CNNs dilate to ``output_stride``."""
    try:
        return timm.create_model(name, pretrained=pretrained, dynamic_img_size=True)
    except TypeError:  # not a ViT: convolutional models take output_stride instead
        model = timm.create_model(name, pretrained=pretrained, output_stride=output_stride)
        model._timetuning_output_stride = output_stride
        return model


def build_backbone(params: BackboneParams, trainable_blocks: int = 0) -> DenseBackbone:
    """Create the timm model, load its starting weights, and freeze all but the last ``trainable_blocks``."""
    check_weights_spec(params)
    model = create_timm_model(params.name, pretrained=params.weights == "hub", output_stride=params.output_stride)
    source = load_weights(model, params)
    backbone = DenseBackbone(model, params.name, params.feature_layer, params.mean, params.std)
    backbone.weights_source = source  # which tensors of which file: recorded in the features' metadata
    backbone.set_trainable_blocks(trainable_blocks)
    return backbone
