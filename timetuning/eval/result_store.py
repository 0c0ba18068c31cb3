"""One model's evaluation on one set, on disk: the per-video statistics of every protocol and variant
(``scores.npz``) and what results.json says of the model (``result.json``), so the comparison with the reference
model (deltas, bootstrap intervals, robustness) is recomputed from them without the features.

The arrays go into a zip with fixed timestamps: the same statistics give the same bytes, so DVC stops a cascade
where a rerun changed nothing.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from timetuning.eval.scores import ConfusionScores, DifferenceScores, GroupScores, RatioScores, Scores
from timetuning.infra.files import atomic_path, write_json_atomic

FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest date: no wall clock in the bytes


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` as an ``.npz`` (readable by :func:`numpy.load`), byte-identical for the same arrays."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def _encode(scores: Scores, key: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    if isinstance(scores, GroupScores):
        arrays[f"{key}.video"], arrays[f"{key}.miou"] = scores.video, scores.miou
        return {"type": "group"}
    if isinstance(scores, ConfusionScores):
        arrays[f"{key}.confusion"] = scores.confusion
        return {"type": "confusion", "matching": scores.matching}
    if isinstance(scores, RatioScores):
        arrays[f"{key}.counts"] = scores.counts
        return {"type": "ratio"}
    if isinstance(scores, DifferenceScores):
        return {"type": "difference", "first": _encode(scores.first, f"{key}.first", arrays),
                "second": _encode(scores.second, f"{key}.second", arrays)}
    raise TypeError(f"{key}: cannot store {type(scores).__name__}")


def _decode(spec: dict[str, Any], key: str, arrays: Any) -> Scores:
    kind = spec["type"]
    if kind == "group":
        return GroupScores(arrays[f"{key}.video"], arrays[f"{key}.miou"])
    if kind == "confusion":
        return ConfusionScores(arrays[f"{key}.confusion"], spec["matching"])
    if kind == "ratio":
        return RatioScores(arrays[f"{key}.counts"])
    if kind == "difference":
        return DifferenceScores(_decode(spec["first"], f"{key}.first", arrays),
                                _decode(spec["second"], f"{key}.second", arrays))
    raise ValueError(f"{key}: unknown kind of scores {kind!r}")


def save_scores(folder: Path, scores: dict[str, Scores], variant_scores: dict[str, dict[str, Scores]],
                document: dict[str, Any]) -> None:
    """``result.json`` (``document`` plus how to read the statistics) and ``scores.npz`` in ``folder``."""
    arrays: dict[str, np.ndarray] = {}
    layout = {"protocols": {name: _encode(s, f"protocols/{name}", arrays) for name, s in scores.items()},
              "variants": {v: {name: _encode(s, f"variants/{v}/{name}", arrays) for name, s in per.items()}
                           for v, per in variant_scores.items()}}
    save_arrays(folder / "scores.npz", arrays)
    write_json_atomic(folder / "result.json", {**document, "scores": layout})


def load_scores(folder: Path) -> tuple[dict[str, Scores], dict[str, dict[str, Scores]], dict[str, Any]]:
    """What :func:`save_scores` wrote: the statistics per protocol, per variant, and the document."""
    document = json.loads((folder / "result.json").read_text())
    layout = document.pop("scores")
    with np.load(folder / "scores.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    scores = {name: _decode(spec, f"protocols/{name}", arrays) for name, spec in layout["protocols"].items()}
    variants = {v: {name: _decode(spec, f"variants/{v}/{name}", arrays) for name, spec in per.items()}
                for v, per in layout["variants"].items()}
    return scores, variants, document


def load_examples(path: Path, clips: int) -> dict[str, np.ndarray]:
    """The example predictions (``<kind>__<clip index>``) of the first ``clips`` clips (none without the file):
    fit_probes keeps those of the first EXAMPLE_CLIPS, so how many the report shows is the report's alone."""
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files if int(k.rpartition("__")[2]) < clips}
