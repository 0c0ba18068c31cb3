"""Training checkpoints: written atomically, loaded with ``weights_only=True``, tied to the params that made them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from timetuning.files import atomic_path


def params_fingerprint(section: dict[str, Any], seed: int) -> str:
    """Hash of the settings that define a run (a resume must never continue a run made with other params)."""
    relevant = {k: v for k, v in section.items() if k not in ("num_workers", "log_every", "checkpoint_every",
                                                               "val_every", "output_dir")}
    blob = json.dumps({"train": relevant, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


TRAINING_MODULES = ("backbones", "forwarder", "sinkhorn", "head", "loss", "transforms", "schedules", "training")


def code_fingerprint() -> str:
    """Hash of the training code (the modules the ``train`` DVC stage depends on).

    Stored in every checkpoint: DVC reruns the stage after a code change with the same params, and a *finished*
    checkpoint made by other code must then not be taken as the result (an unfinished one may still resume).
    """
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in TRAINING_MODULES:
        digest.update((package / f"{name}.py").read_bytes())
    return digest.hexdigest()[:16]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary name, then rename: a kill never leaves a torn checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from untrusted files)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def export_backbone(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A plain timm state dict as safetensors, loadable by ``timm.create_model(..., pretrained_cfg_overlay=...)``."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
