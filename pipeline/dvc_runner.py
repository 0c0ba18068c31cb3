"""Running DVC commands for the flows: streamed logs, stage outcomes, output hashes, one DVC process per workspace."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from filelock import FileLock, Timeout

RAN = re.compile(r"^Running stage '([^']+)'")
SKIPPED = re.compile(r"^Stage '([^']+)' didn't change, skipping")
RESTORED = re.compile(r"^Stage '([^']+)' is cached - skipping run, checking out outputs")
PERCENT = re.compile(r"(\d{1,3})%\|")
# DVC's repo lock and its read/write lock on stage paths: another `dvc` command (a CLI run) holds them
BUSY = ("Unable to acquire lock", "is busy, it is being blocked by")
TRANSIENT = (*BUSY, "Too many open files", "Connection reset", "Temporary failure",
             "Resource temporarily unavailable")
BUSY_POLL_S = (1.0, 10.0)  # first and longest wait between tries while DVC is busy


class StageFailed(RuntimeError):
    """A DVC command failed; ``tail`` holds the end of its output (the stage's own error).

    The message carries the tail unless the output was streamed (``streamed``: every line is in the run's log
    already), so that a flow run's log says the stage's error once, not again in the failure."""

    def __init__(self, command: str, code: int, tail: str, streamed: bool = False):
        said = "; its output, with the stage's error, is in the log above" if streamed else f":\n{tail}"
        super().__init__(f"`{command}` failed with exit code {code}{said}")
        self.command, self.code, self.tail, self.streamed = command, code, tail, streamed

    @property
    def busy(self) -> bool:
        """DVC refused because another DVC process holds its lock: worth waiting for, not a stage error."""
        return any(b in self.tail for b in BUSY)

    @property
    def transient(self) -> bool:
        """Killed by a signal, or a known passing condition (a lock, a resource limit): worth a retry."""
        return self.code < 0 or self.code in (137, 143) or any(t in self.tail for t in TRANSIENT)


@dataclass
class DvcResult:
    """What one DVC command did: the stages it ran, found up to date, or restored from the cache; its output."""

    command: list[str]
    ran: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def dvc_command(*args: str) -> list[str]:
    """``dvc <args>`` with this interpreter's DVC (the venv's), whatever is on PATH."""
    return [sys.executable, "-m", "dvc", *args]


def stage_env() -> dict[str, str]:
    """Environment for stage commands: `python` in dvc.yaml resolves to this interpreter, the project importable."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    project = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project), env.get("PYTHONPATH", "")) if p)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    from prefect.settings import PREFECT_API_URL

    if api_url := PREFECT_API_URL.value():  # a stage's own flows (Dask ingest) report to the same server
        env["PREFECT_API_URL"] = api_url
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_dvc(repo: Path, args: list[str], on_line: Callable[[str], None] | None = None,
            on_progress: Callable[[float], None] | None = None) -> DvcResult:
    """Run ``dvc <args>`` in ``repo``, streaming every output line (tqdm's \\r updates included) to ``on_line``."""
    cmd = dvc_command(*args)
    result = DvcResult(cmd)
    proc = subprocess.Popen(cmd, cwd=repo, env=stage_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            bufsize=0)
    assert proc.stdout is not None
    for line in _lines(proc.stdout):
        if m := PERCENT.search(line):
            if on_progress:
                on_progress(float(m.group(1)))
            continue  # progress bars become a progress artifact, not log spam
        result.lines.append(line)
        if on_line and line.strip():
            on_line(line)
        for pattern, bucket in ((RAN, result.ran), (SKIPPED, result.up_to_date), (RESTORED, result.restored)):
            if m := pattern.match(line):
                bucket.append(m.group(1))
    code = proc.wait()
    if code != 0:
        raise StageFailed("dvc " + " ".join(args), code, "\n".join(result.lines[-40:]), streamed=on_line is not None)
    return result


def run_dvc_when_free(repo: Path, args: list[str], wait_s: float, on_line: Callable[[str], None] | None = None,
                      on_progress: Callable[[float], None] | None = None) -> DvcResult:
    """:func:`run_dvc`, waiting up to ``wait_s`` seconds while another DVC process (a CLI run) holds DVC's locks."""
    deadline = time.monotonic() + wait_s
    pause = BUSY_POLL_S[0]
    while True:
        try:
            return run_dvc(repo, args, on_line, on_progress)
        except StageFailed as err:
            if not err.busy or time.monotonic() + pause > deadline:
                if err.busy:
                    raise StageFailed(err.command, err.code, f"{err.tail}\nDVC stayed busy for {wait_s:g} s (another "
                                      "dvc command holds its lock); let it finish, or raise the flow's "
                                      "lock_timeout.") from None  # not all of it was streamed: said in full
                raise
            if on_line:
                on_line(f"DVC is busy (another dvc command holds its lock); trying again in {pause:g} s")
            time.sleep(pause)
            pause = min(2 * pause, BUSY_POLL_S[1])


def _lines(stream) -> Iterator[str]:
    buf = b""
    while chunk := stream.read(4096):
        buf += chunk
        *parts, buf = re.split(rb"[\r\n]", buf)
        for p in parts:
            yield p.decode("utf-8", "replace")
    if buf:
        yield buf.decode("utf-8", "replace")


def stage_outputs(repo: Path, stage: str) -> list[dict[str, str]]:
    """Outputs of ``stage`` (or of every item of a foreach group) with their hashes, from dvc.lock."""
    lock = repo / "dvc.lock"
    if not lock.is_file():
        return []
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    rows = []
    for name, entry in stages.items():
        if name == stage or name.startswith(f"{stage}@"):
            for out in entry.get("outs", []):
                rows.append({"stage": name, "path": out["path"], "hash": out.get("md5") or out.get("hash", ""),
                             "size": str(out.get("size", "")), "files": str(out.get("nfiles", 1))})
    return rows


@contextmanager
def workspace_lock(repo: Path, timeout: float) -> Iterator[None]:
    """One flow run per workspace at a time: others wait up to ``timeout`` s, then fail with a clear message."""
    path = repo / ".dvc" / "tmp" / "timetuning-flow.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise RuntimeError(f"another timetuning flow run is using the workspace {repo} (lock {path}); waited "
                           f"{timeout:g} s. Let it finish, or raise the flow's lock_timeout.") from None
    try:
        yield
    finally:
        lock.release()
