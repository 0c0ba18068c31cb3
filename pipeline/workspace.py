"""Where a flow run works: the repository checkout it was given (or its worker's), what that machine must have,
and the DVC remote it shares results through.

A worker (`prefect worker start --pool NAME`) runs flow runs in a temporary folder; the run finds the checkout in
its ``repo`` parameter, else in ``$TIMETUNING_REPO``, else in the working directory, and fails at once naming what
is missing (no checkout there, no ffmpeg, no git) instead of failing half-way.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO_ENV = "TIMETUNING_REPO"
REQUIRED_TOOLS = {"git": "git (DVC needs it)", "ffmpeg": "ffmpeg (decodes the videos; apt-get install ffmpeg)"}


class WorkspaceError(RuntimeError):
    """The machine running the flow cannot run the pipeline; the message says what is missing and what to do."""


def resolve_repo(repo: str | None) -> Path:
    """The pipeline checkout: ``repo``, else ``$TIMETUNING_REPO``, else the working directory."""
    chosen = repo or os.environ.get(REPO_ENV) or "."
    root = Path(chosen).expanduser().resolve()
    where = "repo parameter" if repo else (f"${REPO_ENV}" if os.environ.get(REPO_ENV) else "working directory")
    if not (root / "dvc.yaml").is_file() or not (root / "params.yaml").is_file():
        raise WorkspaceError(
            f"no timetuning checkout at {root} (from the {where}) on {socket.gethostname()}: dvc.yaml or params.yaml "
            f"is missing. Check the repository out on this machine and start the worker inside it with "
            f"{REPO_ENV}=$PWD (or pass the flow's repo parameter).")
    if not (root / ".dvc").is_dir():
        raise WorkspaceError(f"{root} is not a DVC repository (no .dvc folder): run `dvc init` there, or check out "
                             f"the timetuning repository")
    return root


def check_tools() -> None:
    """Fail naming every tool the pipeline needs that is not on this machine's PATH."""
    missing = [why for tool, why in REQUIRED_TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise WorkspaceError(f"{socket.gethostname()} cannot run the pipeline: not on PATH: {', '.join(missing)}")


def default_remote(repo: Path) -> str | None:
    """The name of the repository's default DVC remote (`dvc remote add -d`), or None."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "config", "core.remote"], cwd=repo, capture_output=True,
                          text=True)
    name = proc.stdout.strip()
    return name if proc.returncode == 0 and name else None


def set_aside(path: Path) -> Path | None:
    """Move ``path`` to ``<path>.previous`` (replacing an older one); return the new place, or None if absent."""
    if not path.exists():
        return None
    target = path.with_name(path.name + ".previous")
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    path.rename(target)
    return target
