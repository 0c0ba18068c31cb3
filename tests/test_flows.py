"""The Prefect flow against a real Prefect server on a free loopback port, over a real DVC repo; deployments served
in-process and run by a real process worker; a real local-folder DVC remote."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.dvc_runner import workspace_lock
from pipeline.server import start_server, stop_server, wait_healthy
from tests.dvc_repo import dvc, run
from tests.media import make_video
from tests.tiny_flow import (
    api,
    api_error,
    artifacts,
    free_port,
    logs,
    make_tiny_pipeline,
    stop,
    task_runs,
    wait_flow_run,
)
from timetuning.infra.config import ShardVideosParams, load_params

pytestmark = pytest.mark.slow
PROJECT = Path(__file__).resolve().parents[1]


def test_override_values_survive_the_dvc_exp_run_grammar():
    from hydra.core.override_parser.overrides_parser import OverridesParser  # what `dvc exp run -S` parses with

    from pipeline.overrides import override_value

    parser = OverridesParser.create()
    for value in ["tcp://h:8786", "/data/my videos", "it's", "C:\\dir\\", "1", "null", "", 7, 1e-4, True, None,
                  [1, 2.5], {"davis": {"layout": "davis", "splits": ["val"], "resolution": "480p"}}]:
        assert parser.parse_override(f"k={override_value(value)}").value() == value
    with pytest.raises(ValueError, match="mapping keys"):
        override_value({"a b": 1})


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    proc = start_server(port, home, log_path=home / "server.log")
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(url, timeout=180, proc=proc)
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_HOME: str(home)}):
            yield url
            # deliver queued logs and events while the server still listens (else clients retry for a minute)
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)
    finally:
        stop_server(proc)


@pytest.fixture
def tiny_repo(tmp_path):
    return make_tiny_pipeline(tmp_path / "repo")


def test_flow_runs_stages_through_dvc_and_reports_to_the_server(prefect_api, tiny_repo):
    from pipeline.flows import timetuning

    state = timetuning(repo=str(tiny_repo), return_state=True)
    assert state.is_completed(), state
    summary = state.result()
    assert [s["status"] for s in summary["stages"]] == ["ran", "ran"]
    assert (tiny_repo / "out/b.txt").read_text() == str(2 * 60)
    flow_run_id = str(state.state_details.flow_run_id)

    runs = task_runs(prefect_api, flow_run_id)
    assert sorted(t["name"] for t in runs) == ["evaluate", "train"]
    assert all(t["state"]["type"] == "COMPLETED" for t in runs)
    by_key = artifacts(prefect_api, flow_run_id)
    assert "out/a.txt" in json.dumps(by_key["outputs-train"]["data"])
    assert by_key["progress-train"]["type"] == "progress" and by_key["progress-train"]["data"] == 100.0
    assert "0.65" in json.dumps(by_key["metrics"]["data"]) and "b = 120" in by_key["report"]["data"]
    # the figure is inside the artifact: a relative link would resolve against the UI's address
    assert "](data:image/png;base64,iVBORw0KGgo" in by_key["report"]["data"]
    assert "figures/curve.png" not in by_key["report"]["data"]
    assert any("evaluate: num_example_clips" in m for m in logs(prefect_api, flow_run_id))  # stage output streamed

    again = timetuning(repo=str(tiny_repo))
    assert [s["status"] for s in again["stages"]] == ["up to date", "up to date"]


def _experiments(repo: Path) -> list[str]:
    return sorted(dvc(repo, "exp", "list", "--name-only").stdout.split())


def test_override_run_is_a_dvc_experiment_with_a_task_per_stage(prefect_api, tiny_repo):
    from pipeline.flows import timetuning
    from pipeline.overrides import ParamsOverrides

    run(["git", "add", "-A"], tiny_repo)
    timetuning(repo=str(tiny_repo))
    run(["git", "add", "-A"], tiny_repo)
    run(["git", "commit", "-qm", "baseline results"], tiny_repo)  # metrics and report are git-tracked outputs

    # what the form sends: every field, one changed (and a string that must stay a string)
    form = load_params(tiny_repo / "params.yaml").model_dump(mode="json")
    form["train"]["steps"] = 7
    form["shard_videos"]["dask_address"] = "tcp://10.0.0.5:8786"
    state = timetuning(repo=str(tiny_repo), overrides=form, experiment_name="ui-run", return_state=True)
    summary = state.result()
    assert summary["mode"] == "experiment" and summary["experiment"] == "ui-run" and not summary["reused"]
    assert summary["overrides"] == {"train.steps": 7, "shard_videos.dask_address": "tcp://10.0.0.5:8786"}
    assert summary["ran"] == ["train", "evaluate"]
    flow_run_id = str(state.state_details.flow_run_id)
    assert sorted(t["name"] for t in task_runs(prefect_api, flow_run_id)) == ["evaluate", "train"]
    assert {"outputs-train", "outputs-evaluate", "progress-train", "metrics"} <= set(artifacts(prefect_api,
                                                                                                flow_run_id))
    assert load_params(tiny_repo / "params.yaml").shard_videos.dask_address == "tcp://10.0.0.5:8786"
    assert (tiny_repo / "out/a.txt").read_text() == "7"
    # the experiment carries its metrics: `dvc exp show` has them next to the baseline's
    shown = json.loads(dvc(tiny_repo, "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    assert "ui-run" in text and '"steps": 7' in text
    diff = json.loads(dvc(tiny_repo, "metrics", "diff", "HEAD", "ui-run", "--json").stdout)
    assert diff["reports/metrics.json"]["timetuned.davis_demo.miou"] == {"old": 0.65, "new": 0.544,
                                                                         "diff": pytest.approx(-0.106)}
    assert _experiments(tiny_repo) == ["ui-run"]

    # the workspace holds the experiment (as after `dvc exp run`): the same values again change nothing
    assert timetuning(repo=str(tiny_repo), overrides=form)["mode"] == "repro"
    # back to the baseline, the same override again: the existing experiment is reused, nothing reruns, no duplicate
    run(["git", "checkout", "--", "."], tiny_repo)
    dvc(tiny_repo, "checkout", "--force")
    assert (tiny_repo / "out/a.txt").read_text() == "60"
    again = timetuning(repo=str(tiny_repo), overrides=ParamsOverrides(train={"steps": 7},
                                                                       shard_videos={"dask_address":
                                                                                     "tcp://10.0.0.5:8786"}))
    assert again["reused"] and again["experiment"] == "ui-run" and again["ran"] == []
    assert _experiments(tiny_repo) == ["ui-run"]

    # refused before anything runs, in the project's words
    with pytest.raises(ValueError, match=r"invalid overrides: .*\n  train\.steps: must be > 0, got -1$"):
        timetuning(repo=str(tiny_repo), overrides={"train": {"steps": -1}})
    with pytest.raises(ValueError, match=r"\n  shard_videos\.crop: must be 'center' or 'none', got 'middle'\n  "
                                         r"train\.lr_head: must be > 0, got 0$"):
        timetuning(repo=str(tiny_repo), overrides={"train": {"lr_head": 0}, "shard_videos": {"crop": "middle"}})


def test_failing_stage_fails_the_run_with_its_message_and_keeps_earlier_outputs(prefect_api, tiny_repo):
    from pipeline.flows import timetuning

    timetuning(repo=str(tiny_repo))
    text = (tiny_repo / "params.yaml").read_text().replace("num_example_clips: 3", "num_example_clips: 7")
    (tiny_repo / "params.yaml").write_text(text)
    state = timetuning(repo=str(tiny_repo), retries=0, return_state=True)
    assert state.is_failed()
    flow_run_id = str(state.state_details.flow_run_id)
    # said once in the run's log: the stage's own line, not again in the failure that ends the task and the run
    assert sum(m.count("refusing num_example_clips=7") for m in logs(prefect_api, flow_run_id)) == 1
    with pytest.raises(RuntimeError, match=r"failed with exit code \d+; its output, with the stage's error, is in the "
                                           "log above"):
        state.result()
    assert (tiny_repo / "out/a.txt").read_text() == "60"  # the earlier stage's output is intact


def test_concurrent_runs_on_one_workspace_fail_clearly(prefect_api, tiny_repo):
    from pipeline.flows import timetuning

    with workspace_lock(tiny_repo, timeout=1):
        state = timetuning(repo=str(tiny_repo), lock_timeout=0.5, return_state=True)
    assert state.is_failed()
    with pytest.raises(RuntimeError, match="another timetuning flow run is using the workspace"):
        state.result()


def test_flow_waits_while_a_cli_dvc_run_holds_the_lock(prefect_api, tiny_repo):
    """DVC's "is busy" lock from a concurrent `dvc repro` is waited out, not a failure."""
    from pipeline.flows import timetuning
    from tests.dvc_repo import dvc_env

    cli = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "train"], cwd=tiny_repo,
                           env=dvc_env() | {"TINY_TRAIN_SLEEP": "6"}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)  # the CLI run is inside the stage, holding DVC's lock on its outputs
        assert cli.poll() is None
        state = timetuning(repo=str(tiny_repo), retries=0, return_state=True)
        assert cli.wait(timeout=60) == 0, cli.stdout.read()
    finally:
        stop(cli)
    assert state.is_completed(), state
    summary = state.result()
    assert [s["status"] for s in summary["stages"]] == ["up to date", "ran"]  # the CLI run made train's outputs
    messages = logs(prefect_api, str(state.state_details.flow_run_id))
    assert any("DVC is busy" in m for m in messages)


def test_forced_train_starts_fresh_and_says_so(prefect_api, tiny_repo):
    from pipeline.flows import timetuning

    timetuning(repo=str(tiny_repo))
    state = timetuning(repo=str(tiny_repo), stages=["train"], return_state=True)
    assert state.result()["stages"][0]["status"] == "up to date"
    state = timetuning(repo=str(tiny_repo), stages=["train"], force=True, return_state=True)
    assert state.result()["stages"][0]["status"] == "ran"
    messages = logs(prefect_api, str(state.state_details.flow_run_id))
    assert any("train: starting from step 0" in m for m in messages)  # not resumed from the finished checkpoint
    assert any("moved its resumable state models/checkpoints to models/checkpoints.previous" in m for m in messages)
    assert (tiny_repo / "models/checkpoints.previous/last.txt").read_text() == "60"  # set aside, not deleted
    # unforced, a stage that must rerun resumes from its checkpoint
    (tiny_repo / "params.yaml").write_text((tiny_repo / "params.yaml").read_text().replace("steps: 60", "steps: 61"))
    state = timetuning(repo=str(tiny_repo), stages=["train"], return_state=True)
    assert any("train: resuming from step 60" in m for m in logs(prefect_api, str(state.state_details.flow_run_id)))


def test_a_machine_without_the_checkout_or_ffmpeg_fails_at_start_naming_it(prefect_api, tiny_repo, tmp_path,
                                                                          monkeypatch):
    from pipeline.flows import timetuning

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TIMETUNING_REPO", raising=False)
    state = timetuning(return_state=True)
    with pytest.raises(RuntimeError, match=rf"no timetuning checkout at {tmp_path} .*TIMETUNING_REPO"):
        state.result()
    monkeypatch.setenv("TIMETUNING_REPO", str(tiny_repo))
    bin_dir = tmp_path / "bin"  # a PATH with git but no ffmpeg
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git"))
    monkeypatch.setenv("PATH", str(bin_dir))
    state = timetuning(return_state=True)
    with pytest.raises(RuntimeError, match="not on PATH: ffmpeg"):
        state.result()
    assert not (tiny_repo / "out").exists()  # nothing ran


def test_missing_inputs_stop_the_run_before_dvc_touches_anything(prefect_api, tmp_path):
    """The real pipeline: a run of later stages in an empty workspace names the stage to run first."""
    from pipeline.flows import timetuning
    from tests.dvc_repo import make_repo, tiny_params

    repo = make_repo(tmp_path / "repo", tiny_params())
    state = timetuning(stages=["extract_features", "fit_probes"], repo=str(repo), return_state=True)
    with pytest.raises(ValueError, match=r"nothing was run: extract_features@davis_demo-start: data/shards/eval/"
                                         r"davis_demo/labels.json not found: run the `shard_eval@davis_demo` stage"):
        state.result()
    assert not (repo / "data").exists() and not (repo / "dvc.lock").exists()


def test_ingest_fans_out_on_a_local_dask_cluster(prefect_api, tmp_path):
    from timetuning.data.ingest import shard_videos
    from timetuning.data.shards import list_shards
    from timetuning.infra.executors import dask_mapper

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


def _schema_field(schema: dict, *path: str) -> dict:
    node = schema["properties"]["overrides"]
    for key in path:
        node = schema["definitions"][node["$ref"].split("/")[-1]] if "$ref" in node else node
        node = node["properties"][key]
    return node


def test_served_deployment_has_a_form_and_runs_from_the_api(prefect_api, tiny_repo, tmp_path):
    """`timetuning serve --api-url ...`: the form shows params.yaml with descriptions and limits, refuses a value
    out of limits, and a run started like the UI's Run button completes."""
    env = dict(os.environ, PREFECT_API_URL=prefect_api, PREFECT_HOME=str(tmp_path / "serve-home"),
               PREFECT_RUNNER_POLL_FREQUENCY="1")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", "--api-url", prefect_api,
                                 "--repo", str(tiny_repo)], cwd=PROJECT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        deployments: list = []
        while not deployments and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            deployments = api(prefect_api, "/deployments/filter", {"deployments": {"name": {"any_": ["timetuning"]}}})
        assert deployments, log.read_text()
        deployment = deployments[0]
        assert deployment["parameters"]["repo"] == str(tiny_repo.resolve())
        # the form: current values as defaults, descriptions, the schema's limits; no "None" toggles
        assert deployment["parameters"]["overrides"]["train"]["steps"] == 60
        schema = deployment["parameter_openapi_schema"]
        steps = _schema_field(schema, "train", "steps")
        # an integer's "> 0" is ">= 1": the server's refusal reads "0 is less than the minimum of 1"
        assert steps["type"] == "integer" and steps["minimum"] == 1 and "exclusiveMinimum" not in steps
        assert steps["description"] == "Training steps. Must be >= 1."
        lr = _schema_field(schema, "train", "lr_head")
        assert lr["exclusiveMinimum"] == 0 and lr["description"].endswith(" Must be > 0.")
        assert _schema_field(schema, "fit_probes", "confidence")["description"].endswith(" Must be > 0.5 and < 1.")
        assert _schema_field(schema, "shard_videos", "jpeg_quality")["description"].endswith(
            " Must be between 1 and 100.")
        assert _schema_field(schema, "train", "crop_scale")["description"].endswith(
            " Each item must be between 0 and 1.")
        assert _schema_field(schema, "fit_probes", "cluster_eval_size")["description"].endswith(
            " Must be >= 8, or empty.")
        assert _schema_field(schema, "shard_videos", "crop")["description"].endswith(" Must be one of center, none.")
        assert sorted(_schema_field(schema, "train", "precision")["enum"]) == ["auto", "bf16", "fp16", "fp32"]
        assert "anyOf" not in steps
        assert "step 0" in schema["properties"]["force"]["description"]
        # a value out of limits is refused before any run starts
        bad = json.loads(json.dumps(deployment["parameters"]))
        bad["overrides"]["train"]["steps"] = 0
        code, body = api_error(prefect_api, f"/deployments/{deployment['id']}/create_flow_run", {"parameters": bad})
        assert code in (409, 422) and "steps" in body
        flow_run = api(prefect_api, f"/deployments/{deployment['id']}/create_flow_run", {})
        final = wait_flow_run(prefect_api, flow_run["id"], 120, alive=proc)
        assert final["state"]["type"] == "COMPLETED", log.read_text()
        assert (tiny_repo / "out/b.txt").read_text() == "120"
    finally:
        stop(proc)


def test_deployment_on_a_work_pool_runs_on_a_process_worker_and_pushes_to_the_remote(prefect_api, tiny_repo,
                                                                                      tmp_path):
    """docs/scale-out.md "Beyond one machine": `timetuning deploy --pool`, `prefect worker start --pool` in a checkout
    with a DVC remote; a run goes to the worker, runs the pipeline, and its outputs are in the remote."""
    from tests.readme import beyond_one_machine

    origin = tmp_path / "origin.git"
    run(["git", "clone", "-q", "--bare", str(tiny_repo), str(origin)], tmp_path)
    checkout = tmp_path / "worker-checkout"
    run(["git", "clone", "-q", str(origin), str(checkout)], tmp_path)
    remote = tmp_path / "dvc-remote"
    steps = beyond_one_machine(api_url=prefect_api, remote=remote, pool="tiny-pool")
    for cmd in steps["remote"]:  # `dvc remote add -d ...` and committing it
        steps.run(cmd, checkout)
    steps.run(steps["deploy"][0], checkout)
    worker = steps.start(steps["worker"][0], checkout, tmp_path / "worker.log")
    try:
        deployment = api(prefect_api, "/deployments/filter", {"deployments": {"name": {"any_": ["timetuning"]}},
                                                               "work_pools": {"name": {"any_": ["tiny-pool"]}}})[0]
        assert deployment["work_pool_name"] == "tiny-pool" and "repo" not in deployment["parameters"]
        flow_run = api(prefect_api, f"/deployments/{deployment['id']}/create_flow_run", {})
        final = wait_flow_run(prefect_api, flow_run["id"], 180, alive=worker)
        assert final["state"]["type"] == "COMPLETED", (tmp_path / "worker.log").read_text()
        assert (checkout / "out/b.txt").read_text() == "120"  # ran in the worker's checkout
        lock = yaml.safe_load((checkout / "dvc.lock").read_text())
        for stage in lock["stages"].values():
            for out in stage["outs"]:
                if out["path"] not in ("reports/report.md", "reports/metrics.json"):  # git-tracked, not cached
                    md5 = out["md5"].removesuffix(".dir")
                    assert list((remote / "files" / "md5" / md5[:2]).glob(md5[2:] + "*")), out["path"]
        assert list((remote / "runs").rglob("*")), "the run-cache entries are pushed too"

        # the remote unreachable: the run says so and keeps the local results
        run([sys.executable, "-m", "dvc", "remote", "modify", "shared", "url", str(tiny_repo / "dvc.yaml" / "x")],
            checkout)
        (checkout / "out/b.txt").unlink()
        flow_run = api(prefect_api, f"/deployments/{deployment['id']}/create_flow_run", {})
        final = wait_flow_run(prefect_api, flow_run["id"], 180, alive=worker)
        assert final["state"]["type"] == "FAILED"
        assert "could not be pushed to the DVC remote 'shared'" in final["state"]["message"]
        assert (checkout / "out/b.txt").read_text() == "120"
    finally:
        stop(worker, group=True)
