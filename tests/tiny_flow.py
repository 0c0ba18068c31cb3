"""A two-stage pipeline that runs in a second (shaped like ours: `train` resumes from models/checkpoints, `evaluate`
writes metrics, a markdown report with a figure), and helpers to talk to a real Prefect server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.dvc_repo import make_repo, run

TRAIN = """
import os, sys, time, yaml
from tqdm import tqdm
p = yaml.safe_load(open("params.yaml"))
steps = p["train"]["steps"]
time.sleep(float(os.environ.get("TINY_TRAIN_SLEEP", "0")))
os.makedirs("models/checkpoints", exist_ok=True)
last = "models/checkpoints/last.txt"
done = int(open(last).read()) if os.path.exists(last) else 0
print(f"train: resuming from step {done}" if done else "train: starting from step 0", flush=True)
for _ in tqdm(range(4), desc="train", mininterval=0):
    time.sleep(0.05)
open(last, "w").write(str(steps))
os.makedirs("out", exist_ok=True)
open("out/a.txt", "w").write(str(steps))
"""
EVALUATE = """
import json, os, sys, yaml
from PIL import Image
p = yaml.safe_load(open("params.yaml"))
n = p["evaluate"]["num_example_clips"]
print("evaluate: num_example_clips", n, flush=True)
if n == 7:  # a valid value (at most EXAMPLE_CLIPS) that this stand-in refuses
    sys.exit("evaluate: refusing num_example_clips=7")
b = 2 * int(open("out/a.txt").read())
open("out/b.txt", "w").write(str(b))
os.makedirs("reports/figures", exist_ok=True)
tuned = round(0.5 + b / 1000 + n / 100, 6)
json.dump({"start": {"davis_demo": {"miou": 0.25}}, "timetuned": {"davis_demo": {"miou": tuned}}},
          open("reports/metrics.json", "w"))
Image.new("RGB", (24, 16), (200, 30, 30)).save("reports/figures/curve.png")
open("reports/report.md", "w").write(f"# Tiny report\\n\\nb = {b}\\n\\n![curve](figures/curve.png)\\n")
"""
DVC_YAML = """
stages:
  train:
    cmd: python train.py
    deps: [train.py]
    params: [train.steps]
    outs: [out/a.txt]
  evaluate:
    cmd: python evaluate.py
    deps: [evaluate.py, out/a.txt]
    params: [evaluate.num_example_clips]
    outs:
      - out/b.txt
      - reports/report.md:
          cache: false
      - reports/figures
    metrics:
      - reports/metrics.json:
          cache: false
"""


def make_tiny_pipeline(path: Path) -> Path:
    """A git + DVC repo with the two-stage pipeline, committed."""
    repo = make_repo(path, {"train": {"steps": 60}})  # the tests count on 60, whatever the schema default
    (repo / "train.py").write_text(TRAIN)
    (repo / "evaluate.py").write_text(EVALUATE)
    (repo / "dvc.yaml").write_text(textwrap.dedent(DVC_YAML))
    with open(repo / ".gitignore", "a") as f:
        f.write("/out/\n")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny pipeline"], repo)
    return repo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, group: bool = False) -> None:
    """Stop a process we started, by its PID (``group``: the session it leads, for `bash -c` commands):
    terminate, then kill if it lingers."""
    def send(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig) if group else os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass

    if proc.poll() is not None and not group:
        return
    send(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(timeout=10)


def api(url: str, path: str, body: dict | None = None, method: str = "POST", tries: int = 6):
    """One REST call; a 503 (Prefect's answer while its SQLite database is locked by another writer) is retried
    with back-off, as Prefect's own client does."""
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(tries):
        req = urllib.request.Request(f"{url}{path}", data=data, headers={"Content-Type": "application/json"},
                                     method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as err:
            if err.code != 503 or attempt == tries - 1:
                raise
            time.sleep(0.5 * 2 ** attempt)


def api_error(url: str, path: str, body: dict) -> tuple[int, str]:
    """Status and body of a request the server refuses."""
    try:
        api(url, path, body)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    raise AssertionError(f"{path} accepted {body}")


def logs(url: str, flow_run_id: str) -> list[str]:
    """The run's log messages as the server has them (queued logs of this process delivered first)."""
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    return [log["message"] for log in api(url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}})]


def wait_flow_run(url: str, flow_run_id: str, timeout: float, alive: subprocess.Popen | None = None) -> dict:
    """Poll a flow run until it is final; return it."""
    deadline = time.time() + timeout
    while time.time() < deadline and (alive is None or alive.poll() is None):
        flow_run = api(url, f"/flow_runs/{flow_run_id}", method="GET")
        if flow_run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return flow_run
        time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} not final after {timeout:g} s")


def task_runs(url: str, flow_run_id: str) -> list[dict]:
    return api(url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})


def artifacts(url: str, flow_run_id: str) -> dict[str, dict]:
    return {a["key"]: a for a in api(url, "/artifacts/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
            if a["key"]}
