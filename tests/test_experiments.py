"""DVC experiments that keep what did not change and carry their metrics, and results shared through a DVC remote
(the "Beyond one machine" commands of docs/scale-out.md, run as written), on a real DVC repo with a local-folder
remote."""

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.dvc_repo import PROJECT, dvc, ran_stages, run
from tests.readme import beyond_one_machine
from tests.tiny_flow import make_tiny_pipeline

pytestmark = pytest.mark.slow


def test_the_pipeline_keeps_runcache_and_git_tracks_what_people_read(tmp_path):
    """dvc.yaml's flags: no persistent output (it would switch DVC's run-cache off for its stage), and every
    uncached metrics/plots/report file is tracked by git under the project's .gitignore, so commits and
    experiments carry it; the cached outputs stay ignored."""
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    uncached, cached = [], []
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                path, flags = next(iter(out.items())) if isinstance(out, dict) else (out, {})
                assert not (flags or {}).get("persist"), f"{name}: {path} is persistent: no run-cache for {name}"
                (uncached if (flags or {}).get("cache") is False else cached).append(path)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    resolve = lambda p: p.replace("${train.output_dir}", params["train"]["output_dir"]).replace(  # noqa: E731
        "${evaluate.output_dir}", params["evaluate"]["output_dir"])
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    (repo / ".gitignore").write_text((PROJECT / ".gitignore").read_text())
    for path in uncached:
        assert "$" not in resolve(path), path
        ignored = run(["git", "check-ignore", "-q", "--no-index", resolve(path) + "/x.json"], repo, check=False)
        assert ignored.returncode == 1, f"{path} is cache: false but git-ignored: no commit would hold it"
    assert {"models/model.json", "models/train_summary.json", "models/train_log.csv", "reports/metrics.json"} <= {
        resolve(p) for p in uncached}
    # the page is git's (a real file in every cache type: a symlinked cache file has no .html name to open as a
    # page); its large pictures are DVC's
    assert "reports/report.html" in {resolve(p) for p in uncached}
    assert "reports/figures" in {resolve(p) for p in cached}


def _queue_done(repo: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = dvc(repo, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            return
        time.sleep(2)
    raise AssertionError(f"queue not done after {timeout:g} s:\n{status}")


def test_queued_experiments_reuse_train_carry_metrics_and_travel_through_a_remote(tmp_path):
    origin = tmp_path / "origin.git"
    repo = make_tiny_pipeline(tmp_path / "a")
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], repo)
    run(["git", "push", "-q", "-u", "origin", "HEAD"], repo)
    assert ran_stages(dvc(repo, "repro").stdout) == ["train", "evaluate"]
    steps = beyond_one_machine(remote=tmp_path / "dvc-remote")
    for line in steps["remote"] + steps["share"]:  # results committed and pushed; experiments come next
        steps.run(line, repo)

    # two probe-only experiments through the queue: train is not rerun in either
    for n in (4, 5):
        dvc(repo, "exp", "run", "--queue", "-S", f"evaluate.num_example_clips={n}")
    dvc(repo, "queue", "start")
    _queue_done(repo, 240)
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    experiments = {e["revs"][0]["name"]: e["revs"][0] for e in shown[1]["experiments"]}
    assert len(experiments) == 2
    for name, exp in experiments.items():
        log = dvc(repo, "queue", "logs", name).stdout
        assert "Running stage 'evaluate'" in log and "Running stage 'train'" not in log, log
        metrics = exp["data"]["metrics"]["reports/metrics.json"]["data"]
        n = exp["data"]["params"]["params.yaml"]["data"]["evaluate"]["num_example_clips"]
        assert metrics["timetuned"]["davis_demo"]["miou"] == pytest.approx(0.5 + 0.12 + n / 100)
    first, second = sorted(experiments, key=lambda e: experiments[e]["data"]["params"]["params.yaml"]["data"][
        "evaluate"]["num_example_clips"])
    diff = json.loads(dvc(repo, "metrics", "diff", first, second, "--json").stdout)
    assert diff["reports/metrics.json"]["timetuned.davis_demo.miou"]["diff"] == pytest.approx(0.01)

    # share the experiments (docs/scale-out.md, word for word), then a fresh clone gets everything without running
    # anything
    steps.run(steps["share"][-1], repo)  # `dvc exp push origin`
    clone = tmp_path / "b"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    out = [steps.run(line, clone).stdout for line in steps["clone"]]
    assert "Data and pipelines are up to date." in out[1] and "Running stage" not in out[1]
    assert (clone / "out/b.txt").read_text() == "120"
    assert first in out[3] and second in out[3] and "0.66" in out[3]  # `dvc exp show`: A's experiments, metrics
