"""`timetuning serve` as a user meets it: on a free loopback port, its UI calling that port, a run launched from the
deployment's form in a real headless Chromium (Playwright), a taken port refused, and a SIGKILLed serve leaving no
server behind. One serve (one server) for the module; the kill comes last."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.server import port_in_use
from tests.browser import CHROMIUM, sync_playwright_or_skip
from tests.tiny_flow import api, artifacts, free_port, make_tiny_pipeline, stop, task_runs, wait_flow_run

pytestmark = pytest.mark.slow
PROJECT = Path(__file__).resolve().parents[1]


def _serve_cmd(port: int, repo: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "serve", "--port", str(port), "--repo", str(repo)]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    repo = make_tiny_pipeline(tmp / "repo")
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(tmp / "prefect-home"), PREFECT_RUNNER_POLL_FREQUENCY="1")
    env.pop("PREFECT_API_URL", None)
    log = tmp / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(_serve_cmd(port, repo), cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.time() + 240
        deployments: list = []
        while not deployments and time.time() < deadline and proc.poll() is None:
            time.sleep(1)
            try:
                deployments = api(url, "/deployments/filter", {"deployments": {"name": {"any_": ["timetuning"]}}})
            except OSError:
                pass
        assert deployments, log.read_text()
        yield {"proc": proc, "port": port, "url": url, "repo": repo, "deployment": deployments[0], "log": log,
               "tmp": tmp}
    finally:
        stop(proc)


def test_the_ui_calls_the_api_on_the_served_port(served):
    with urllib.request.urlopen(f"http://127.0.0.1:{served['port']}/ui-settings", timeout=10) as r:
        import json

        assert json.loads(r.read())["api_url"] == served["url"]


def test_a_run_from_the_form_in_a_real_browser(served):
    sync_playwright = sync_playwright_or_skip()
    base = f"http://127.0.0.1:{served['port']}"
    deployment = served["deployment"]
    shots = served["tmp"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(f"{base}/deployments/deployment/{deployment['id']}/run")
        field = page.locator("xpath=//*[contains(text(), 'Num Example Clips')]/ancestor::*[.//input][1]//input")
        field.wait_for(timeout=60_000)
        assert field.input_value() == "3"  # the current params.yaml value, not "None"
        assert page.get_by_text("Example clips drawn in the report").count() >= 1  # the schema's description
        field.fill("4")
        page.screenshot(path=str(shots / "form.png"), full_page=True)
        page.get_by_role("button", name="Submit").click()
        runs: list = []
        deadline = time.time() + 180  # generous: a busy 2-core machine can take a minute to create the run
        while not runs and time.time() < deadline:  # the UI goes back to the deployment's runs
            time.sleep(1)
            runs = api(served["url"], "/flow_runs/filter",
                       {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}})
        assert len(runs) == 1
        flow_run_id = runs[0]["id"]
        final = wait_flow_run(served["url"], flow_run_id, 240, alive=served["proc"])
        assert final["state"]["type"] == "COMPLETED", served["log"].read_text()
        assert final["parameters"]["overrides"]["evaluate"]["num_example_clips"] == 4

        assert sorted(t["name"] for t in task_runs(served["url"], flow_run_id)) == ["evaluate", "train"]
        by_key = artifacts(served["url"], flow_run_id)
        assert {"outputs-train", "outputs-evaluate", "metrics", "report"} <= set(by_key)
        page.goto(f"{base}/runs/flow-run/{flow_run_id}")
        page.wait_for_timeout(3000)
        page.screenshot(path=str(shots / "run.png"), full_page=True)
        page.goto(f"{base}/artifacts/artifact/{by_key['report']['id']}")
        image = page.locator("img[src^='data:image/png']").first
        image.wait_for(timeout=60_000)
        assert image.evaluate("img => img.complete && img.naturalWidth") == 24  # rendered, not a broken link
        page.screenshot(path=str(shots / "report.png"), full_page=True)
        browser.close()
    assert (served["repo"] / "out/b.txt").read_text() == "120"
    assert "num_example_clips: 4" in (served["repo"] / "params.yaml").read_text()  # a DVC experiment's params


def test_the_form_states_each_limit_and_refuses_a_value_out_of_it(served):
    """The run form as a person meets it: a field's description ends with its limits in words (Prefect's form
    shows descriptions, not the schema's minimum), and a value out of them is refused before any run exists.
    Screenshots: the test's folder (and $TIMETUNING_SCREENSHOTS when set)."""
    sync_playwright = sync_playwright_or_skip()
    base = f"http://127.0.0.1:{served['port']}"
    deployment = served["deployment"]
    shots = [served["tmp"], *([Path(os.environ["TIMETUNING_SCREENSHOTS"])] if "TIMETUNING_SCREENSHOTS" in os.environ
                              else [])]
    before = api(served["url"], "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}})
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.goto(f"{base}/deployments/deployment/{deployment['id']}/run")
        field = page.locator("xpath=//*[contains(text(), 'Lr Head')]/ancestor::*[.//input][1]")
        field.locator("input").first.wait_for(timeout=60_000)
        assert "Learning rate of the head and prototypes. Must be > 0." in field.inner_text()
        quality = page.locator("xpath=//*[contains(text(), 'Jpeg Quality')]/ancestor::*[.//input][1]")
        assert "Must be between 1 and 100." in quality.inner_text()
        field.locator("input").first.fill("0")
        field.scroll_into_view_if_needed()
        for folder in shots:
            page.screenshot(path=str(folder / "form_limits.png"))
        page.get_by_role("button", name="Submit").click()
        toast = page.get_by_text("Error creating flow run").first
        toast.wait_for(timeout=60_000)
        field.scroll_into_view_if_needed()
        for folder in shots:
            page.screenshot(path=str(folder / "form_refused.png"))
        refusal = toast.inner_text()
        browser.close()
    after = api(served["url"], "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}})
    assert len(after) == len(before)  # refused: no run was created
    # the server's words (JSON Schema's), naming the field whose description states the limit in ours
    assert "overrides.train.lr_head" in refusal and "minimum of 0" in refusal


def test_serve_refuses_a_port_in_use(served, tmp_path):
    proc = subprocess.run(_serve_cmd(served["port"], served["repo"]), cwd=PROJECT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert f"port {served['port']} on 127.0.0.1 is already in use" in proc.stderr


def test_a_killed_serve_takes_its_server_with_it(served):
    """Runs last: SIGKILL `serve`; its server must go too and free the port (no orphan to attach to)."""
    children = Path(f"/proc/{served['proc'].pid}/task/{served['proc'].pid}/children").read_text().split()
    servers = [int(c) for c in children
               if "pipeline.server" in Path(f"/proc/{c}/cmdline").read_text().replace("\0", " ")]
    assert len(servers) == 1
    served["proc"].send_signal(signal.SIGKILL)
    served["proc"].wait(timeout=10)
    deadline = time.time() + 30
    while time.time() < deadline and (Path(f"/proc/{servers[0]}").exists() or port_in_use("127.0.0.1",
                                                                                             served["port"])):
        time.sleep(0.5)
    assert not port_in_use("127.0.0.1", served["port"])
    assert not Path(f"/proc/{servers[0]}").exists() or "zombie" in Path(f"/proc/{servers[0]}/status").read_text()
