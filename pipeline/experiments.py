"""A flow run with overrides as a DVC experiment, recorded with DVC's own commands.

The overrides are written into ``params.yaml`` by DVC's own `-S` code (comments and order kept), the stages run one
by one through `dvc repro` (each its own Prefect task with log, outputs and progress), and `dvc exp save` records
the result, so it is listed by `dvc exp show` next to experiments started from the command line. An identical
override (same baseline commit, same params) reuses the existing experiment (`dvc exp apply`) instead of
recording a duplicate.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from pipeline.dvc_runner import run_dvc
from pipeline.overrides import override_value


def write_overrides(repo: Path, overrides: dict[str, Any]) -> None:
    """Apply dotted overrides to ``repo/params.yaml`` exactly as `dvc exp run -S key=value` does."""
    from dvc.utils.hydra import apply_overrides

    apply_overrides(repo / "params.yaml", [f"{k}={override_value(v)}" for k, v in overrides.items()])


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def experiment_refs(repo: Path) -> dict[str, str]:
    """Experiments of the current baseline commit (HEAD): name -> commit."""
    head = _git(repo, "rev-parse", "HEAD").strip()
    prefix = f"refs/exps/{head[:2]}/{head[2:]}/"
    out = _git(repo, "for-each-ref", "--format=%(refname) %(objectname)", prefix)
    return {ref[len(prefix):]: sha for ref, sha in (line.split() for line in out.splitlines())}


def identical_experiment(repo: Path) -> str | None:
    """The name of an experiment of HEAD whose params.yaml equals the workspace's, if any."""
    current = yaml.safe_load((repo / "params.yaml").read_text())
    for name, sha in sorted(experiment_refs(repo).items()):
        try:
            theirs = yaml.safe_load(_git(repo, "show", f"{sha}:params.yaml"))
        except subprocess.CalledProcessError:
            continue
        if theirs == current:
            return name
    return None


def apply_experiment(repo: Path, name: str) -> None:
    """Bring experiment ``name``'s params, dvc.lock, metrics and cached outputs into the workspace."""
    run_dvc(repo, ["exp", "apply", name])


def save_experiment(repo: Path, name: str | None) -> str:
    """`dvc exp save`: record the workspace (params, dvc.lock, git-tracked metrics) as an experiment."""
    args = ["exp", "save", *(["--name", name] if name else [])]
    result = run_dvc(repo, args)
    saved = [ln.split(":", 1)[1].strip() for ln in result.lines if "Experiment has been saved as:" in ln]
    return saved[-1] if saved else (name or "")
