"""The whole pipeline under `dvc repro` in a real DVC repo: demo data -> shards -> train -> features -> probes ->
report; the report opens offline with its tables and pictures; `dvc metrics` sees the numbers."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.dvc_repo import dvc, dvc_env, make_repo, ran_stages, tiny_full_params

pytestmark = pytest.mark.slow

# what follows train: the per-model evaluation stages, the comparison and the report
EVALUATION = {f"{stage}@davis_demo-{m}" for stage in ("extract_features", "fit_probes") for m in ("start", "timetuned")
              } | {"compare@davis_demo", "evaluate"}


def test_full_pipeline_repro_report_and_metrics(tmp_path):
    repo = make_repo(tmp_path / "repo", tiny_full_params())
    first = dvc(repo, "repro")
    assert set(ran_stages(first.stdout)) == {"demo_data", "shard_videos", "shard_eval@davis_demo", "train",
                                             "model_weights", *EVALUATION}

    metrics = json.loads((repo / "reports/metrics.json").read_text())
    for model in ("start", "timetuned"):
        row = metrics[model]["davis_demo"]
        for key in ("cluster_per_frame", "cluster_per_clip", "cluster_per_dataset", "overcluster_k8", "linear",
                    "hummingbird", "temporal_stability_per_clip", "temporal_clip_minus_frame_miou"):
            assert key in row, key
        assert 0.0 <= row["linear"] <= 100.0
    assert "cluster_per_clip" in metrics["delta"]["davis_demo"]

    html = (repo / "reports/report.html").read_text()
    assert html.count("<table>") >= 2 and "Clustering per clip" in html and "Linear probe" in html
    images = re.findall(r'src="(figures/[^"]+\.png)"', html)  # the figures next to the page: it opens offline
    assert len(images) >= 4 and all((repo / "reports" / i).stat().st_size > 1000 for i in images)
    assert "http://" not in html and "https://" not in html
    md = (repo / "reports/report.md").read_text()
    for link in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (repo / "reports" / link).is_file()

    shown = dvc(repo, "metrics", "show", "--json")
    assert "cluster_per_clip" in shown.stdout
    assert ran_stages(dvc(repo, "repro").stdout) == []  # everything cached

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["fit_probes"]["overclustering_k"] = [6]
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    ran = ran_stages(dvc(repo, "repro").stdout)
    assert set(ran[:2]) == {"fit_probes@davis_demo-start", "fit_probes@davis_demo-timetuned"}
    assert ran[2:] == ["compare@davis_demo", "evaluate"]
    assert "overcluster_k6" in json.loads((repo / "reports/metrics.json").read_text())["start"]["davis_demo"]


def test_readme_multi_gpu_recipe_works_in_a_script(tmp_path, monkeypatch):
    """The torchrun lines of docs/scale-out.md, word for word but for the process count (2 gloo ranks on CPU) and the
    venv: train runs as DDP, `dvc commit --force` records it without asking, and `dvc repro` runs only what follows;
    then extract_features under torchrun writes the very files one process wrote (nothing left to rerun).
    Every process runs one thread, as torchrun's are: CPU kernels round differently with other thread counts."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    readme = (Path(__file__).resolve().parents[1] / "docs" / "scale-out.md").read_text()
    venv = f"{Path(sys.executable).parent}/"
    recipes = {}
    for stage in ("train", "extract_features"):
        lines = [ln for ln in readme.splitlines() if ln.startswith(".venv/bin/torchrun --standalone")
                 and "dvc commit" in ln and f"-m stages.{stage} " in ln]
        assert len(lines) == 1, (stage, lines)
        recipes[stage] = lines[0].replace("--nproc_per_node=4", "--nproc_per_node=2").replace(".venv/bin/", venv)
    line = recipes["train"]
    params = tiny_full_params()
    params["fit_probes"]["robustness_variants"] = []  # the probes are not what this test is about
    repo = make_repo(tmp_path / "repo", params)
    dvc(repo, "repro", "shard_videos", "shard_eval@davis_demo")

    proc = subprocess.run(["bash", "-c", f"set -euo pipefail; {line}"], cwd=repo, env=dvc_env(), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)  # no terminal: DVC cannot ask for confirmation
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((repo / "models/train_summary.json").read_text())["world_size"] == 2
    assert set(ran_stages(proc.stdout)) == {"model_weights", *EVALUATION}
    assert (repo / "reports/metrics.json").is_file()
    assert ran_stages(dvc(repo, "repro").stdout) == []  # train's DDP outputs are what dvc.lock records

    lock = (repo / "dvc.lock").read_text()
    proc = subprocess.run(["bash", "-c", f"set -euo pipefail; {recipes['extract_features']}"], cwd=repo,
                          env=dvc_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (repo / "dvc.lock").read_text() == lock  # 2 ranks wrote the bytes one process wrote
    assert ran_stages(dvc(repo, "repro").stdout) == []


def test_the_report_opens_as_a_page_with_a_symlink_cache(tmp_path):
    """Under `cache.type symlink` (DVC links every cached output to a cache file without an extension, which
    Chromium shows as text), reports/report.html is still a real file and opens as the page, its pictures (cached,
    so links) shown. The evaluate stage alone runs through DVC, on hand-made probe results of the demo set."""
    from tests.browser import CHROMIUM, sync_playwright_or_skip
    from tests.dvc_repo import tiny_params
    from tests.test_report import _doc

    sync_playwright = sync_playwright_or_skip()
    repo = make_repo(tmp_path / "repo", tiny_params())
    dvc(repo, "config", "cache.type", "symlink")
    dvc(repo, "repro", "shard_eval@davis_demo")
    doc = _doc()
    doc["set"] = "davis_demo"
    (repo / "data/probes/davis_demo").mkdir(parents=True)
    (repo / "data/probes/davis_demo/results.json").write_text(json.dumps(doc))
    (repo / "models").mkdir(exist_ok=True)
    (repo / "models/train_log.csv").write_text("step,loss\n1,1.0\n2,0.9\n")
    (repo / "models/train_summary.json").write_text(json.dumps({"steps": 2, "final_loss": 0.9}))
    assert ran_stages(dvc(repo, "repro", "--single-item", "evaluate").stdout) == ["evaluate"]

    figures = sorted((repo / "reports/figures").iterdir())
    assert figures and all(f.is_symlink() and f.suffix == ".png" for f in figures)  # the cache type is in force
    assert not Path(next(iter(figures)).resolve()).suffix  # ... and links to files without a name to go by
    page_file = repo / "reports/report.html"
    assert page_file.is_file() and not page_file.is_symlink()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(page_file.as_uri())
        assert page.title() == "timetuning evaluation report"
        assert page.locator("table").count() >= 3 and page.locator("h2").count() >= 3
        assert page.locator("pre").count() == 0  # not its source as text
        images = page.locator("img").all()
        assert len(images) >= 2 and all(i.evaluate("i => i.complete && i.naturalWidth > 0") for i in images)
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert "up to date" in dvc(repo, "status", "evaluate").stdout  # the git-tracked page is what dvc.lock says
