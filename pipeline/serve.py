"""Serve the `timetuning` flow: a Prefect server on 127.0.0.1 and the flow as a deployment to run from the UI.

    timetuning serve [--port 4200] [--repo .]     # then open http://127.0.0.1:4200, Deployments -> timetuning -> Run

Analytics and telemetry are off. With --api-url the flow is served against an existing Prefect API instead.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def server_env(home: Path | None = None) -> dict[str, str]:
    """The environment for `prefect server start`: loopback only, analytics off, optional PREFECT_HOME."""
    env = dict(os.environ)
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", PREFECT_SERVER_API_HOST="127.0.0.1")
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    return env


def start_server(port: int, home: Path | None = None, log_path: Path | None = None) -> subprocess.Popen:
    """`prefect server start` bound to 127.0.0.1 (a process of its own session, so it can be stopped by PID)."""
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=server_env(home), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_healthy(api_url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``<api_url>/health`` until it answers 200; fail early if ``proc`` (the server) exits."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no answer from {api_url}/health within {timeout:g} s")


def main(argv: list[str] | None = None) -> int:
    """`timetuning serve`: start the server (unless --api-url), serve the flow until Ctrl-C, stop the server."""
    ap = argparse.ArgumentParser(prog="timetuning serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=4200)
    ap.add_argument("--repo", default=".", help="the pipeline's repository root (default: .)")
    ap.add_argument("--api-url", default=None, help="serve against this Prefect API instead of starting a server")
    args = ap.parse_args(argv)
    proc = None
    api_url = args.api_url or f"http://127.0.0.1:{args.port}/api"
    if args.api_url is None:
        proc = start_server(args.port)
        wait_healthy(api_url, proc=proc)
        print(f"Prefect UI: http://127.0.0.1:{args.port}")
    os.environ.update(PREFECT_API_URL=api_url, PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    from pipeline.flows import timetuning

    try:
        timetuning.serve(name="timetuning", parameters={"repo": str(Path(args.repo).resolve())},
                         description="Time-tuning pipeline through DVC: edit overrides, pick stages, run.")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
