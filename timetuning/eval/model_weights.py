"""Which weights each evaluated model reads, fingerprinted: one small JSON file per model (its resolved backbone and
the SHA-256 of its local weights file), written by the ``model_weights`` stage.

Each ``extract_features@<set>-<model>`` stage depends on its own model's file only, so a changed checkpoint (the
time-tuned export, one ``source: custom`` file) reruns that model's stages and nothing else: the files of the other
models come out byte-identical and DVC stops there. (dvc.yaml's templates cannot name a different weights file for
each model of one stage group, which is why the fingerprint is a stage of its own.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timetuning.infra.config import ModelParams, TrainParams
from timetuning.infra.files import sha256_file


def weights_record(model: ModelParams, train: TrainParams, root: Path = Path(".")) -> dict[str, Any]:
    """What one model's features are made from: its source, its resolved backbone and, for weights read from a local
    file, that file's path, size and SHA-256 (hub and package weights are named by their spec alone)."""
    spec = model.resolve(train)
    record: dict[str, Any] = {"model": model.name, "source": model.source, "backbone": spec.model_dump(mode="json")}
    weights = spec.weights
    if weights not in ("hub", "none") and not weights.startswith("package:"):
        path = root / weights
        if not path.is_file():
            raise FileNotFoundError(f"model {model.name}: weights file {weights} not found")
        record["weights_file"] = {"path": weights, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return record
