"""The Prefect flow against a real Prefect server on a free loopback port, over a real DVC repo."""

import json
import socket
import subprocess
import textwrap
import urllib.request

import pytest

from pipeline.dvc_runner import workspace_lock
from pipeline.serve import start_server, wait_healthy
from tests.dvc_repo import dvc, make_repo, run
from tests.media import make_video
from timetuning.config import ShardVideosParams, load_params

pytestmark = pytest.mark.slow

FIRST = """
import os, time, yaml
from tqdm import tqdm
p = yaml.safe_load(open("params.yaml"))
for _ in tqdm(range(4), desc="first", mininterval=0):
    time.sleep(0.05)
os.makedirs("out", exist_ok=True)
open("out/a.txt", "w").write(str(p["train"]["steps"]))
"""
SECOND = """
import json, os, sys, yaml
p = yaml.safe_load(open("params.yaml"))
n = p["evaluate"]["num_example_clips"]
print("second: num_example_clips", n, flush=True)
if n == 13:
    sys.exit("second: refusing num_example_clips=13")
b = 2 * int(open("out/a.txt").read())
open("out/b.txt", "w").write(str(b))
os.makedirs("reports", exist_ok=True)
json.dump({"start": {"davis_demo": {"miou": 0.25}}, "timetuned": {"davis_demo": {"miou": 0.5}}},
          open("reports/metrics.json", "w"))
open("reports/report.md", "w").write(f"# Tiny report\\n\\nb = {b}\\n")
"""


def test_override_values_survive_the_dvc_exp_run_grammar():
    from hydra.core.override_parser.overrides_parser import OverridesParser  # what `dvc exp run -S` parses with

    from pipeline.flows import override_value

    parser = OverridesParser.create()
    for value in ["tcp://h:8786", "/data/my videos", "it's", "C:\\dir\\", "1", "null", "", 7, 1e-4, True, None,
                  [1, 2.5], {"davis": {"layout": "davis", "splits": ["val"], "resolution": "480p"}}]:
        assert parser.parse_override(f"k={override_value(value)}").value() == value
    with pytest.raises(ValueError, match="mapping keys"):
        override_value({"a b": 1})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    proc = start_server(port, home, log_path=home / "server.log")
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(url, timeout=120, proc=proc)
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_HOME: str(home)}):
            yield url
            # deliver queued logs and events while the server still listens (else clients retry for a minute)
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a server we started, by its PID: terminate, then kill if it lingers."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _api(url: str, path: str, body: dict) -> list:
    req = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _logs(url: str, flow_run_id: str) -> list[str]:
    """The run's log messages as the server has them (queued logs are delivered first)."""
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    return [log["message"] for log in _api(url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}})]


@pytest.fixture
def tiny_repo(tmp_path):
    repo = make_repo(tmp_path / "repo", {})
    (repo / "first.py").write_text(FIRST)
    (repo / "second.py").write_text(SECOND)
    (repo / "dvc.yaml").write_text(textwrap.dedent("""
        stages:
          first:
            cmd: python first.py
            deps: [first.py]
            params: [train.steps]
            outs: [out/a.txt]
          second:
            cmd: python second.py
            deps: [second.py, out/a.txt]
            params: [evaluate.num_example_clips]
            outs: [out/b.txt, reports]
        """))
    (repo / ".gitignore").write_text("/out/\n/reports/\n")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny pipeline"], repo)
    return repo


def test_flow_runs_stages_through_dvc_and_reports_to_the_server(prefect_api, tiny_repo):
    from pipeline.flows import timetuning

    state = timetuning(repo=str(tiny_repo), return_state=True)
    assert state.is_completed(), state
    summary = state.result()
    assert [s["status"] for s in summary["stages"]] == ["ran", "ran"]
    assert (tiny_repo / "out/b.txt").read_text() == str(2 * 60)
    flow_run_id = str(state.state_details.flow_run_id)

    task_runs = _api(prefect_api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    assert sorted(t["name"] for t in task_runs) == ["first", "second"]
    assert all(t["state"]["type"] == "COMPLETED" for t in task_runs)
    artifacts = _api(prefect_api, "/artifacts/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    outputs = [a for a in artifacts if a["key"] == "outputs-first"]
    assert outputs and "out/a.txt" in json.dumps(outputs[0]["data"])
    by_key = {a["key"]: a for a in artifacts}
    assert by_key["progress-first"]["type"] == "progress" and by_key["progress-first"]["data"] == 100.0
    assert "0.5000" in json.dumps(by_key["metrics"]["data"]) and "b = 120" in by_key["report"]["data"]
    assert any("second: num_example_clips" in m for m in _logs(prefect_api, flow_run_id))  # stage output streamed

    again = timetuning(repo=str(tiny_repo))
    assert [s["status"] for s in again["stages"]] == ["up to date", "up to date"]


def test_override_run_is_a_dvc_experiment(prefect_api, tiny_repo):
    from pipeline.flows import ParamsOverrides, timetuning

    overrides = ParamsOverrides(train={"steps": 7}, shard_videos={"dask_address": "tcp://10.0.0.5:8786"})
    summary = timetuning(repo=str(tiny_repo), overrides=overrides, experiment_name="ui-run")
    assert summary["mode"] == "experiment"
    assert summary["overrides"] == {"train.steps": 7, "shard_videos.dask_address": "tcp://10.0.0.5:8786"}
    assert load_params(tiny_repo / "params.yaml").shard_videos.dask_address == "tcp://10.0.0.5:8786"
    assert (tiny_repo / "out/a.txt").read_text() == "7"
    shown = json.loads(dvc(tiny_repo, "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    assert "ui-run" in text and '"steps": 7' in text
    # the workspace's params.yaml carries the experiment, as after a CLI `dvc exp run -S`
    assert "steps: 7" in (tiny_repo / "params.yaml").read_text()

    with pytest.raises(ValueError, match=r"(?s)invalid overrides.*train\.steps"):
        timetuning(repo=str(tiny_repo), overrides=ParamsOverrides(train={"steps": -1}))


def test_failing_stage_fails_the_run_with_its_message_and_keeps_earlier_outputs(prefect_api, tiny_repo):
    from pipeline.flows import timetuning

    timetuning(repo=str(tiny_repo))
    text = (tiny_repo / "params.yaml").read_text().replace("num_example_clips: 3", "num_example_clips: 13")
    (tiny_repo / "params.yaml").write_text(text)
    state = timetuning(repo=str(tiny_repo), retries=0, return_state=True)
    assert state.is_failed()
    flow_run_id = str(state.state_details.flow_run_id)
    assert any("refusing num_example_clips=13" in m for m in _logs(prefect_api, flow_run_id))
    assert (tiny_repo / "out/a.txt").read_text() == "60"  # the earlier stage's output is intact


def test_concurrent_runs_on_one_workspace_fail_clearly(prefect_api, tiny_repo):
    from pipeline.flows import timetuning

    with workspace_lock(tiny_repo, timeout=1):
        state = timetuning(repo=str(tiny_repo), lock_timeout=0.5, return_state=True)
    assert state.is_failed()
    with pytest.raises(RuntimeError, match="another timetuning flow run is using the workspace"):
        state.result()


def test_ingest_fans_out_on_a_local_dask_cluster(prefect_api, tmp_path):
    from pipeline.dask_ingest import dask_mapper
    from timetuning.ingest import shard_videos
    from timetuning.shards import list_shards

    videos = tmp_path / "videos"
    for i in range(3):
        make_video(videos / f"v{i}.mp4", size="64x48", seconds=1.5)
    common = dict(input_dir=str(videos), fps=5, size=32, clips_per_video=2, maxcount=3)
    local = shard_videos(ShardVideosParams(output_dir=str(tmp_path / "local"), workers=1, **common), 0,
                         progress=False)
    on_dask = shard_videos(ShardVideosParams(output_dir=str(tmp_path / "dask"), executor="dask", workers=2,
                                             **common), 0, mapper=dask_mapper(None, 2), progress=False)
    assert on_dask["clips_written"] == local["clips_written"] == 6
    a, b = list_shards(tmp_path / "local", "clips"), list_shards(tmp_path / "dask", "clips")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]  # same shards as a local run


def test_serve_publishes_a_deployment_that_runs_from_the_api(prefect_api, tiny_repo, tmp_path):
    """`timetuning serve --api-url ...`: the deployment appears, and a run started like the UI's Run button completes."""
    import os
    import sys
    import time
    from pathlib import Path

    env = dict(os.environ, PREFECT_API_URL=prefect_api, PREFECT_HOME=str(tmp_path / "serve-home"),
               PREFECT_RUNNER_POLL_FREQUENCY="1")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "timetuning.cli", "serve", "--api-url", prefect_api,
                                 "--repo", str(tiny_repo)], cwd=Path(__file__).parents[1], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        deployments: list = []
        while not deployments and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            deployments = _api(prefect_api, "/deployments/filter", {"deployments": {"name": {"any_": ["timetuning"]}}})
        assert deployments, log.read_text()
        assert deployments[0]["parameters"]["repo"] == str(tiny_repo.resolve())
        run_ = _api(prefect_api, f"/deployments/{deployments[0]['id']}/create_flow_run", {})
        state = None
        while time.time() < deadline and state not in ("COMPLETED", "FAILED", "CRASHED"):
            time.sleep(1)
            state = _api(prefect_api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [run_["id"]]}}})[0][
                "state"]["type"]
        assert state == "COMPLETED", log.read_text()
        assert (tiny_repo / "out/b.txt").read_text() == "120"
    finally:
        _stop(proc)
