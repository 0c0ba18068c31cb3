"""Training checkpoints: written atomically, loaded with ``weights_only=True``, tied to the params that made them."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from timetuning.infra.dvc_yaml import ROOT, code_deps
from timetuning.infra.files import atomic_path

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the path and what is wrong."""


# train params that never change the weights or the selection (validation cadence does: it picks the export)
EXECUTION_ONLY = ("num_workers", "log_every", "checkpoint_every", "progress_seconds", "output_dir")


def params_fingerprint(section: dict[str, Any], seed: int) -> str:
    """Hash of the settings that define a run (a resume must never continue a run made with other params)."""
    relevant = {k: v for k, v in section.items() if k not in EXECUTION_ONLY}
    blob = json.dumps({"train": relevant, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def code_fingerprint(root: Path = ROOT) -> str:
    """Hash of the training code: the files the ``train`` DVC stage runs (its dvc.yaml code deps, from the imports).

    Stored in every checkpoint: DVC reruns the stage after a code change with the same params, and a *finished*
    checkpoint made by other code must then not be taken as the result (an unfinished one may still resume).
    Each file's root-relative path and bytes, in sorted order: the same on every machine and checkout.
    """
    digest = hashlib.sha256()
    for name in sorted(code_deps("stages.train", root)):
        digest.update(name.encode() + b"\0")
        digest.update((root / name).read_bytes())
    return digest.hexdigest()[:16]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary name, then rename: a kill never leaves a torn checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True`` (no arbitrary code from untrusted files).

    Raises :class:`CheckpointError` naming the path for anything that is not one of ours: empty, truncated,
    garbage, a pickle that needs code to load, or a file holding something other than a checkpoint.
    """
    state = torch_load(path)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "fingerprint" not in state:
        raise CheckpointError(f"{path}: not a training checkpoint (no step/fingerprint entries)")
    return state


def torch_load(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` on CPU; a damaged or refused file raises :class:`CheckpointError`."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    try:
        # DINO's training checkpoints keep their command line as an argparse.Namespace: plain data, allowed
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    # what torch's readers raise on damaged bytes: a garbled pickle (KeyError, UnpicklingError), a cut zip
    # (RuntimeError), an early end (EOFError), ...
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, TypeError, AttributeError,
            IndexError, OSError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        text = str(err).strip()
        if m := re.search(r"GLOBAL (\S+)", text):  # a pickle calling a function: weights_only refused it
            raise CheckpointError(f"{path}: refused: loading it would call {m.group(1)} (checkpoints load with "
                                  "weights_only=True)") from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        # torch's weights_only message buries the cause (e.g. "Unsupported operand 33") under boilerplate
        detail = next((ln for ln in lines if ln.startswith("Unsupported")), lines[0] if lines else "")
        detail = detail.split(". ")[0][:120]
        reason = f"{type(err).__name__}: {detail}" if detail else type(err).__name__
        raise CheckpointError(f"{path}: damaged or not a checkpoint ({size} bytes; {reason})") from None
    return state


def set_aside(path: Path) -> Path:
    """Rename ``path`` to a free ``<name>.corrupt[-N]`` beside it (kept for inspection, never read again)."""
    target, n = path.with_name(f"{path.name}.corrupt"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{n}")
    os.replace(path, target)
    return target


def load_resume_state(path: str | Path, may_set_aside: bool = True) -> dict[str, Any] | None:
    """The checkpoint at ``path`` to resume from; None when there is none, or when it is unusable.

    An unusable file is renamed aside (``last.pt.corrupt``) with a one-line warning, so this run and the next ones
    start fresh instead of failing on it. Only one process (``may_set_aside``, rank 0) renames.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return load_checkpoint(path)
    except CheckpointError as err:
        if not may_set_aside:
            log.warning("%s; training starts fresh", err)
            return None
        try:
            moved = set_aside(path)
        except OSError as move_err:
            raise CheckpointError(f"{err}; it could not be moved aside ({move_err.strerror}): delete {path} "
                                  "and rerun") from None
        log.warning("%s; moved to %s, training starts fresh", err, moved)
        return None


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
