"""Params profiles: a partial ``params.yaml`` (e.g. ``profiles/paper.yaml``, the paper's recipe) applied onto the
workspace's ``params.yaml``, so ``dvc repro``, ``dvc exp run`` and the Prefect flow all see ordinary param changes.

Merging walks into the schema's sections (``train.backbone``) and replaces everything else whole: a list, or a
mapping such as ``shard_eval.sets``, comes from the profile as it is written there. The merged params are
validated by the schema before anything is written; ``params.yaml`` keeps its comments and key order.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from ruamel.yaml import YAML

from timetuning.infra.config import Params, ParamsError, validate_params
from timetuning.infra.files import write_text_atomic

PROFILE_DIR = "profiles"


def profile_path(name_or_path: str, repo: str | Path = ".") -> Path:
    """A profile file: a path as given, else ``<repo>/profiles/<name>.yaml``, else the project's own profiles."""
    given = Path(name_or_path)
    candidates = [given, Path(repo) / PROFILE_DIR / f"{name_or_path}.yaml",
                  Path(__file__).resolve().parents[2] / PROFILE_DIR / f"{name_or_path}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    raise ParamsError(f"profile {name_or_path!r}: no such file (looked at {', '.join(str(c) for c in candidates)})")


def read_profile(path: str | Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: a profile is a mapping of params sections")
    return data


def schema_leaves(node: dict[str, Any], source: str, schema: type[BaseModel] = Params,
                  prefix: str = "") -> list[tuple[str, Any]]:
    """A partial params mapping (a profile, a run's overrides) as ``(dotted key, value)`` pairs: the schema's
    sub-sections are walked into, every other value (lists, the mapping of eval sets, scalars) is one leaf. An
    unknown key raises, naming ``source``."""
    leaves: list[tuple[str, Any]] = []
    for key, value in node.items():
        info = schema.model_fields.get(key)
        if info is None:
            raise ParamsError(f"{source}: unknown key {prefix + key!r}")
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(value, dict):
            leaves += schema_leaves(value, source, ann, f"{prefix}{key}.")
        else:
            leaves.append((prefix + key, value))
    return leaves


def merge(base: dict[str, Any], profile: dict[str, Any]) -> None:
    """Write ``profile`` into ``base`` in place: sections are walked into, every other value replaced whole."""
    for dotted, value in schema_leaves(profile, "profile"):
        *sections, key = dotted.split(".")
        node = base
        for name in sections:
            if not isinstance(node.get(name), dict):
                node[name] = {}
            node = node[name]
        if node.get(key) != value:
            _drop_end_of_line_comment(node, key)  # it described the old value
        node[key] = value


def _drop_end_of_line_comment(mapping: Any, key: str) -> None:
    """Remove the comment after ``key: value`` on its line (a round-trip mapping keeps the comment lines below)."""
    items = getattr(getattr(mapping, "ca", None), "items", {})
    tokens = items.get(key)
    if not tokens or len(tokens) < 3 or tokens[2] is None:
        return
    text = tokens[2].value
    if text.lstrip(" ").startswith("#"):
        rest = text.split("\n", 1)[1] if "\n" in text else ""
        tokens[2].value = "\n" + rest


def profiled_params(params: dict[str, Any], profile: dict[str, Any], source: str = "profile") -> Params:
    """``params`` (a plain mapping) with ``profile`` merged in, validated."""
    data = yaml.safe_load(yaml.safe_dump(params))  # a deep copy
    merge(data, profile)
    return validate_params(data, source)


def apply_profile(profile: str | Path, params_path: str | Path = "params.yaml") -> Params:
    """Merge a profile into ``params_path`` (comments kept), after validating the result; return the new params."""
    params_path = Path(params_path)
    round_trip = YAML()
    round_trip.preserve_quotes = True
    round_trip.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    document = round_trip.load(params_path.read_text()) if params_path.is_file() else {}
    profile_data = read_profile(profile)
    result = profiled_params(yaml.safe_load(params_path.read_text()) if params_path.is_file() else {}, profile_data,
                             f"{params_path} + {profile}")
    merge(document, profile_data)
    out = io.StringIO()
    round_trip.dump(document, out)
    write_text_atomic(params_path, out.getvalue())
    return result
