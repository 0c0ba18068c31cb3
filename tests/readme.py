"""The "Beyond one machine" commands of docs/scale-out.md, as written, for the tests to run word for word.

Each block is marked `<!-- readme-test: NAME -->`. Only the machine-specific words are replaced: the server's URL,
the remote's folder, the pool's name, and `.venv/bin/` (the venv running the tests).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.dvc_repo import dvc_env

README = Path(__file__).resolve().parents[1] / "docs" / "scale-out.md"
SECTION = "## Beyond one machine"


class Steps(dict):
    """Block name -> its command lines; runs them in a checkout with bash."""

    def __init__(self, blocks: dict[str, list[str]], env: dict[str, str]):
        super().__init__(blocks)
        self.env = env

    def run(self, line: str, cwd: Path) -> subprocess.CompletedProcess:
        proc = subprocess.run(["bash", "-c", f"set -euo pipefail; {line}"], cwd=cwd, env=self.env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise AssertionError(f"README command failed ({proc.returncode}) in {cwd}: {line}\n{proc.stdout}\n"
                                 f"{proc.stderr}")
        return proc

    def start(self, line: str, cwd: Path, log: Path) -> subprocess.Popen:
        """A long-running command (a worker), stopped by the caller by its PID."""
        with open(log, "wb") as out:
            # a session of its own: stopped as a group by its leader's PID (tests.tiny_flow.stop)
            return subprocess.Popen(["bash", "-c", line], cwd=cwd, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)


def beyond_one_machine(api_url: str = "", remote: Path | None = None, pool: str = "gpu") -> Steps:
    text = README.read_text()
    section = text[text.index(SECTION):]
    end = section.find("\n## ", 1)
    section = section if end < 0 else section[:end]
    words = {".venv/bin/": f"{Path(sys.executable).parent}/", "http://server:4200/api": api_url,
             "/mnt/shared/dvc-remote": str(remote), "--pool gpu": f"--pool {pool}"}
    blocks = {}
    for name, body in re.findall(r"<!-- readme-test: (\w+) -->\n```bash\n(.*?)```", section, re.S):
        lines = []
        for line in body.strip().splitlines():
            for word, value in words.items():
                line = line.replace(word, value)
            lines.append(line)
        blocks[name] = lines
    env = dvc_env() | {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
                       "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                       "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_HOME": os.environ.get("PREFECT_HOME", "")}
    env = {k: v for k, v in env.items() if v}
    return Steps(blocks, env)
