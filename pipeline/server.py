"""A Prefect server owned by the process that starts it: bound to one address, its UI calling the API there, and
gone when its owner dies, even by SIGKILL.

    python -m pipeline.server --host 127.0.0.1 --port 4200 --owner PID   # what start_server runs

The child watches its owner (its parent): when the owner is gone, it stops itself (SIGTERM, then exit), so a killed
`timetuning serve` never leaves a server orphaned on its port.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

OWNER_POLL_S = 0.5
STOP_GRACE_S = 10.0


def server_env(home: Path | None = None, host: str = "127.0.0.1", port: int = 4200) -> dict[str, str]:
    """The environment for the server: analytics off, and the UI calls the API at ``host:port`` (not Prefect's
    default 4200, which would show another server's data, or none)."""
    env = dict(os.environ)
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", PREFECT_SERVER_API_HOST=host,
               PREFECT_SERVER_API_PORT=str(port), PREFECT_UI_API_URL=f"http://{url_host(host)}:{port}/api")
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    return env


def url_host(host: str) -> str:
    """``host`` as it goes in a URL (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port`` (another server, or an orphan of a killed one)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.settimeout(1.0)
        return s.connect_ex((host.strip("[]"), port)) == 0


def start_server(port: int, home: Path | None = None, log_path: Path | None = None,
                 host: str = "127.0.0.1") -> subprocess.Popen:
    """Start a Prefect server on ``host:port`` that dies with this process; fail if the port is taken."""
    if port_in_use(host, port):
        raise RuntimeError(f"port {port} on {host} is already in use (another Prefect server, or one left by a "
                           f"killed `timetuning serve`): stop that process or pick another --port")
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    cmd = [sys.executable, "-m", "pipeline.server", "--host", host, "--port", str(port), "--owner", str(os.getpid())]
    project = str(Path(__file__).resolve().parents[1])
    env = server_env(home, host, port)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project, env.get("PYTHONPATH", "")) if p)
    # its own session: a Ctrl-C in the terminal reaches `serve`, which stops the server in order
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Stop a server started here, by its PID: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def wait_healthy(api_url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``<api_url>/health`` until it answers 200; fail early if ``proc`` (the server) exits."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
                if r.status == 200:
                    if proc is not None and proc.poll() is not None:  # something else answered
                        raise RuntimeError(f"the Prefect server exited with code {proc.returncode}")
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no answer from {api_url}/health within {timeout:g} s")


def _watch_owner(owner: int) -> None:
    """Stop this server when ``owner`` is gone (reparented: our parent id changes)."""
    while os.getppid() == owner:
        time.sleep(OWNER_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down cleanly on SIGTERM
    time.sleep(STOP_GRACE_S)
    os._exit(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.server", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=4200)
    ap.add_argument("--owner", type=int, required=True, help="PID of the process that owns this server")
    args = ap.parse_args(argv)
    if os.getppid() != args.owner:
        return 1  # the owner died before we started
    threading.Thread(target=_watch_owner, args=(args.owner,), daemon=True).start()
    from prefect.cli import app

    sys.argv = ["prefect", "server", "start", "--host", args.host, "--port", str(args.port)]
    app()  # reads sys.argv
    return 0


if __name__ == "__main__":
    sys.exit(main())
