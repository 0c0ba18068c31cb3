"""What dvc.yaml says, read in one place: the stages in order (which are per evaluation set), each stage's entry
module, and which project files a stage runs (the transitive imports of its entry module, read from the source).

One source for facts that must not drift apart: the stage names the CLI, the pre-flight and the flow accept; the
code dependencies of every stage in dvc.yaml (so editing any file a stage imports reruns exactly the stages that
import it); the fingerprint of the training code stored in checkpoints. ``python -m timetuning.infra.dvc_yaml`` checks
dvc.yaml's code deps; ``--write`` rewrites them from the imports.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("timetuning", "stages", "pipeline")


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The project file of a dotted module name (``pkg/mod.py`` or ``pkg/mod/__init__.py``), if it is ours."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(path: Path, module: str) -> set[str]:
    """Modules named by the import statements of one file (at any depth: lazy imports run too)."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in [*parts, base] if p)
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return names


@lru_cache(maxsize=None)
def imported_files(module: str, root: Path = ROOT) -> tuple[Path, ...]:
    """Every project file ``module`` runs: itself, the packages on its path and what they import, transitively."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py too
            sub = ".".join(parts[:i])
            path = module_file(sub, root)
            if path is not None and sub not in seen:
                seen[sub] = path
                todo.extend(_imported(path, sub))
    return tuple(sorted(set(seen.values())))


def _stages(dvc_yaml: Path) -> dict:
    import yaml

    if not dvc_yaml.is_file():
        raise FileNotFoundError(f"{dvc_yaml}: no dvc.yaml")
    return yaml.safe_load(dvc_yaml.read_text()).get("stages", {})


def pipeline_stages(dvc_yaml: Path = ROOT / "dvc.yaml") -> list[str]:
    """Stage names in dvc.yaml order (a ``foreach`` group by its group name)."""
    return list(_stages(dvc_yaml))


def per_set_stages(dvc_yaml: Path = ROOT / "dvc.yaml") -> list[str]:
    """The groups run once per evaluation set (``foreach: ${shard_eval.sets}``): ``<group>@<set>``."""
    return [name for name, stage in _stages(dvc_yaml).items() if stage.get("foreach") == "${shard_eval.sets}"]


def per_model_stages(dvc_yaml: Path = ROOT / "dvc.yaml") -> list[str]:
    """The groups run once per evaluation set and model (``matrix: {set: ${shard_eval.sets}, model:
    ${extract_features.models}}``): ``<group>@<set>-<model>``."""
    return [name for name, stage in _stages(dvc_yaml).items()
            if stage.get("matrix") == {"set": "${shard_eval.sets}", "model": "${extract_features.models}"}]


def stage_modules(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, str]:
    """``{stage name: entry module}`` of every ``python -m <module>`` stage command in dvc.yaml."""
    import yaml

    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        cmd = stage.get("do", stage)["cmd"]
        if m := re.search(r"python -m ([\w.]+)", cmd):
            out[name] = m.group(1)
    return out


def code_deps(module: str, root: Path = ROOT) -> list[str]:
    """The dvc.yaml code deps of a stage: its files relative to the project root."""
    return [p.relative_to(root).as_posix() for p in imported_files(module, root)]


def dvc_yaml_problems(dvc_yaml: Path = ROOT / "dvc.yaml") -> list[str]:
    """What dvc.yaml's code deps lack or list beyond the files each stage imports."""
    import yaml

    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    problems = []
    for name, module in stage_modules(dvc_yaml).items():
        listed = {d for d in stages[name].get("do", stages[name]).get("deps", [])
                  if d.endswith(".py") or d.split("/")[0] in PACKAGES}
        needed = set(code_deps(module, dvc_yaml.parent))
        problems += [f"{name}: imports {f} but does not depend on it" for f in sorted(needed - listed)]
        problems += [f"{name}: depends on {f}, which it does not import" for f in sorted(listed - needed)]
    return problems + param_problems(stages) + missing_params(stages, dvc_yaml.parent / "params.yaml")


def missing_params(stages: dict, params_yaml: Path) -> list[str]:
    """Keys dvc.yaml's stages track that params.yaml lacks: DVC refuses to run such a stage ("Parameters ... are
    missing from 'params.yaml'"), so the schema's default is not enough for a key that dvc.yaml names."""
    import yaml

    if not params_yaml.is_file():
        return []
    values = yaml.safe_load(params_yaml.read_text()) or {}
    problems = []
    for name, stage in stages.items():
        for key in stage.get("do", stage).get("params", []):
            if not isinstance(key, str) or "${" in key:
                continue
            node = values
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    problems.append(f"{name}: params.yaml has no {key}")
                    break
                node = node[part]
    return problems


def delegated_fields() -> dict[str, dict[str, str]]:
    """Fields of a stage's own params section that another stage reads instead: ``section -> {field: stage}``
    (the per-model probes leave the comparison's keys to compare@<set>; the model fingerprints read the custom
    checkpoints' folder for the extractions)."""
    from timetuning.infra.config import COMPARISON_FIELDS

    return {"extract_features": {"custom_weights_dir": "model_weights"},
            "fit_probes": dict.fromkeys(COMPARISON_FIELDS, "compare")}


def param_problems(stages: dict) -> list[str]:
    """Where a stage lists its own section's params key by key, the keys must be exactly the section's artifact
    fields (a new field left out would change the stage's output without DVC rerunning it), but those another stage
    reads instead (:func:`delegated_fields`), which that stage must list."""
    from timetuning.infra.config import Params, artifact_fields

    problems = []
    listed_by = {name: [p for p in stage.get("do", stage).get("params", []) if isinstance(p, str)]
                 for name, stage in stages.items()}
    for name, listed in listed_by.items():
        section = Params.model_fields.get(name)
        if section is None or name in listed:  # no section of its own, or the whole section is tracked
            continue
        delegated = delegated_fields().get(name, {})
        own = {p.split(".")[1] for p in listed if p.startswith(f"{name}.")}
        fields = set(artifact_fields(section.annotation)) - set(delegated)
        problems += [f"{name}: params do not list {name}.{f}" for f in sorted(fields - own)]
        problems += [f"{name}: params list {name}.{f}, which is not an artifact field of {name}"
                     for f in sorted(own - fields - set(delegated))]
        problems += [f"{name}: params list {name}.{f}, which {delegated[f]} reads instead"
                     for f in sorted(own & set(delegated))]
        for field, other in sorted(delegated.items()):
            theirs = listed_by.get(other, [])
            if f"{name}.{field}" not in theirs and name not in theirs:
                problems.append(f"{other}: params do not list {name}.{field} (a key {name} leaves to {other})")
    return problems


def write_dvc_yaml(dvc_yaml: Path = ROOT / "dvc.yaml") -> None:
    """Rewrite each stage's code deps (the ``- <package>/...py`` lines) from the imports; data deps stay."""
    text = dvc_yaml.read_text()
    for name, module in stage_modules(dvc_yaml).items():
        header = re.search(rf"^  {re.escape(name)}:\n", text, re.M)
        block_end = re.search(r"^  \S", text[header.end():], re.M)
        end = header.end() + (block_end.start() if block_end else len(text) - header.end())
        block = text[header.end():end]
        deps = re.search(r"^( +)deps:\n((?:\1  - .*\n)+)", block, re.M)
        indent = deps.group(1) + "  "
        data = [ln for ln in deps.group(2).splitlines() if not re.match(
            rf"{indent}- (?:{'|'.join(PACKAGES)})/\S+\.py\s*$", ln)]
        code = [f"{indent}- {f}" for f in code_deps(module, dvc_yaml.parent)]
        new = block[:deps.start(2)] + "\n".join(code + data) + "\n" + block[deps.end(2):]
        text = text[:header.end()] + new + text[end:]
    dvc_yaml.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps from the imports")
    args = parser.parse_args(argv)
    if args.write:
        write_dvc_yaml()
    problems = dvc_yaml_problems()
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
