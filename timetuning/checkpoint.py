"""Training checkpoints: written atomically, loaded with ``weights_only=True``, tied to the params that made them."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from timetuning.files import atomic_path


# train params that never change the weights or the selection (validation cadence does: it picks the export)
EXECUTION_ONLY = ("num_workers", "log_every", "checkpoint_every", "progress_seconds", "output_dir")


def params_fingerprint(section: dict[str, Any], seed: int) -> str:
    """Hash of the settings that define a run (a resume must never continue a run made with other params)."""
    relevant = {k: v for k, v in section.items() if k not in EXECUTION_ONLY}
    blob = json.dumps({"train": relevant, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


TRAINING_MODULES = ("backbones", "forwarder", "sinkhorn", "head", "loss", "transforms", "schedules", "training",
                    "clip_stream", "shard_index", "validation")


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


def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random states (torch, CUDA, NumPy, Python) in a form ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
