"""The `timetuning` Prefect flow: the DVC pipeline, stage by stage, from the Prefect UI or a worker.

DVC stays the single source of truth for what is up to date: every stage runs through `dvc repro`, so an
up-to-date stage is a fast success that says so, and flow runs and CLI runs share one cache and one dvc.lock.
A run with parameter overrides writes them into params.yaml as `dvc exp run -S` does, runs the same stage tasks,
and is recorded with `dvc exp save`, so it is listed by `dvc exp show` next to CLI experiments. With a default DVC
remote, stages pull what they miss and each stage's outputs are pushed when it ends. Prefect adds the UI, retries,
streamed logs, artifacts and scale-out (workers).
"""

# No `from __future__ import annotations`: a served deployment loads this file by path and pydantic must see
# the real ParamsOverrides type in the flow signature, not a string it cannot resolve there.
import base64
import json
import re
from pathlib import Path
from typing import Any, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from pipeline.dvc_runner import DvcResult, StageFailed, run_dvc, run_dvc_when_free, stage_outputs, workspace_lock
from pipeline.experiments import apply_experiment, identical_experiment, save_experiment, write_overrides
from pipeline.overrides import ParamsOverrides, changed_overrides, dotted_overrides
from pipeline.workspace import check_tools, default_remote, resolve_repo, set_aside
from timetuning.infra.config import Params, ParamsError, apply_overrides, load_params
from timetuning.infra.dvc_yaml import pipeline_stages
from timetuning.run.inputs import PIPELINE, MissingInputError, dvc_targets, preflight

RETRY_DELAY_S = 5.0  # a transient failure (a signal, a resource limit) gets a moment to pass
MAX_EMBEDDED_FIGURE = 2 << 20  # bytes; larger pictures stay links in the report artifact


def resumable_state(params: Params) -> dict[str, Path]:
    """Per stage, the folder it resumes from on a rerun; a forced run sets it aside and starts fresh."""
    return {"train": Path(params.train.output_dir) / "checkpoints"}


def _retry_transient(task, task_run, state) -> bool:
    """Retry only failures that can pass (a signal, a resource limit), not a stage's own error."""
    try:
        state.result()
    except StageFailed as err:
        return err.transient
    except Exception:  # noqa: BLE001
        return False
    return False


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) from stage names like ``shard_eval@davis``."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


class _Stream:
    """Stage output to the run's log, line by line; tqdm bars to one progress artifact per stage instead."""

    def __init__(self, logger, stage: str):
        self.logger, self.stage = logger, stage
        self.progress_id = None
        self.last = -1.0

    def line(self, line: str) -> None:
        self.logger.info("%s", line)

    def progress(self, pct: float) -> None:
        if pct == self.last:
            return
        self.last = pct
        if self.progress_id is None:
            self.progress_id = create_progress_artifact(pct, key=artifact_key("progress", self.stage),
                                                        description=f"{self.stage}: progress of the stage")
        else:
            update_progress_artifact(self.progress_id, pct)

    def done(self) -> None:
        if self.progress_id is not None and self.last < 100:
            update_progress_artifact(self.progress_id, 100.0)


@task(name="stage", task_run_name="{stage}", cache_policy=NO_CACHE, persist_result=False,
      retry_condition_fn=_retry_transient)
def run_stage_task(repo: str, stage: str, force: bool = False, wait_s: float = 600.0, remote: str | None = None,
                   fresh: str | None = None) -> dict[str, Any]:
    """`dvc repro --single-item <stage>`: DVC runs it, or says it is up to date; then its outputs go to the remote.

    fresh: a resumable-state folder to set aside first (a forced train retrains from step 0).
    """
    logger = get_run_logger()
    root = Path(repo)
    if fresh and (moved := set_aside(root / fresh)):
        logger.info("%s: forced, so it starts fresh: moved its resumable state %s to %s", stage, fresh,
                    moved.relative_to(root))
    stream = _Stream(logger, stage)
    args = ["repro", "--single-item", *(["--force"] if force else []), *(["--pull"] if remote else []), stage]
    result = run_dvc_when_free(root, args, wait_s, stream.line, stream.progress)
    stream.done()
    status = _status(result)
    outputs = stage_outputs(root, stage)
    pushed = _push(root, stage, remote, logger) if remote else ""
    if outputs:
        create_table_artifact(outputs, key=artifact_key("outputs", stage),
                              description=f"{stage}: outputs and their DVC hashes ({status}{pushed and '; '}"
                                          f"{pushed})")
    logger.info("%s: %s", stage, status)
    return {"stage": stage, "status": status, "ran": result.ran, "outputs": outputs, "push": pushed}


def _push(root: Path, stage: str, remote: str, logger) -> str:
    """Push the stage's outputs (and the run-cache entry that lets other machines restore it) to the remote."""
    try:
        run_dvc(root, ["push", "--run-cache", stage])
    except StageFailed as err:
        logger.error("%s: `dvc push` to the DVC remote %r failed; the results are kept here in %s (push them later "
                     "with `dvc push`):\n%s", stage, remote, root, err.tail)
        return f"push to {remote} failed"
    return f"pushed to {remote}"


def _status(result: DvcResult) -> str:
    if result.ran:
        return "ran"
    if result.restored and not result.up_to_date:
        return "up to date (restored from the DVC cache)"
    return "up to date"


def _embed_figures(markdown: str, folder: Path) -> str:
    """Inline the report's pictures as data URIs: relative links would resolve against the UI's address."""
    kinds = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}

    def inline(m: re.Match) -> str:
        path = folder / m.group(2)
        kind = kinds.get(path.suffix.lower())
        if kind is None or not path.is_file() or path.stat().st_size > MAX_EMBEDDED_FIGURE:
            return m.group(0)
        return f"{m.group(1)}data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()})"

    return re.sub(r"(!\[[^\]]*\]\()([^)\s:]+)\)", inline, markdown)


def _publish_reports(repo: Path, params: Params) -> None:
    """Metrics table and the markdown report (pictures embedded) as artifacts for people."""
    reports = repo / params.evaluate.output_dir
    metrics_path = reports / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        rows = []  # one row per model (and per delta block) and set: the flat numbers, x100
        for block, sets in metrics.items():
            for set_name, values in (sets.items() if isinstance(sets, dict) else ()):
                numbers = {k: f"{v:.4g}" for k, v in values.items() if isinstance(v, (int, float))} \
                    if isinstance(values, dict) else {}
                if numbers:
                    rows.append({"model": block, "set": set_name, **numbers})
        create_table_artifact(rows, key="metrics", description="reports/metrics.json (x100; delta = time-tuned "
                                                               "minus start, with its interval bounds)")
    report = reports / "report.md"
    if report.is_file():
        create_markdown_artifact(_embed_figures(report.read_text(), reports), key="report",
                                 description="reports/report.md")


# the flow validates its overrides itself, with the project's wording ("train.steps: must be > 0, got -1"), not
# Prefect's; a run from the deployment's form is checked by the server against the same limits first
@flow(name="timetuning", log_prints=True, validate_parameters=False)
def timetuning(overrides: Optional[ParamsOverrides] = None, stages: Optional[list[str]] = None,  # noqa: UP045
               force: bool = False, repo: Optional[str] = None, retries: int = 1,  # noqa: UP045
               lock_timeout: float = 600.0, experiment_name: Optional[str] = None) -> dict[str, Any]:  # noqa: UP045
    """Run the time-tuning pipeline through DVC, stage by stage.

    Args:
        overrides: Parameters for this run (the form shows params.yaml; only values you change count). Changed
            values make the run a DVC experiment, listed by `dvc exp show`; an identical one is reused.
        stages: Stages to run, in dvc.yaml order (default: all); a group name such as shard_eval covers its sets.
        force: Rerun the stages even if DVC says they are up to date. A forced train starts fresh from step 0:
            its resumable checkpoint folder is set aside (models/checkpoints.previous) instead of resumed.
        repo: The pipeline's checkout (default: $TIMETUNING_REPO, else the working directory).
        retries: Retries per stage for transient failures only (killed by a signal, a resource limit).
        lock_timeout: Seconds to wait for another flow run or dvc command on the same checkout before failing.
        experiment_name: Name of the DVC experiment when values are overridden (default: DVC picks one).
    """
    logger = get_run_logger()
    root = resolve_repo(repo)
    check_tools()
    base = load_params(root / "params.yaml")
    try:
        flat = changed_overrides(base, dotted_overrides(overrides))
        params = apply_overrides(base, flat) if flat else base
    except ParamsError as err:
        raise ValueError(f"invalid overrides: {err}") from None
    known = pipeline_stages(root / "dvc.yaml")
    chosen = stages or known
    unknown = [s for s in chosen if s.split("@")[0] not in known]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {known}")
    state = resumable_state(params)
    with workspace_lock(root, lock_timeout):
        remote = default_remote(root)
        if remote:
            logger.info("DVC remote %r: stages pull what they miss and push what they produce", remote)
        elif set(known) == set(PIPELINE):  # this project's pipeline: every input must be on disk or made by an
            try:  # earlier stage of the run, checked before DVC removes any output
                preflight(params, chosen, single_item=True, root=root)
            except MissingInputError as err:
                raise ValueError(f"nothing was run: {err}") from None
        same = None
        if flat:
            logger.info("overrides %s: this run is a DVC experiment", flat)
            write_overrides(root, flat)
            if same := identical_experiment(root):
                logger.info("experiment %r has exactly these params: reusing its results", same)
                apply_experiment(root, same)
        if set(known) == set(PIPELINE):  # `fit_probes@<set>`: that set's per-model stages (DVC has no such name)
            chosen = dvc_targets(params, chosen)
        stage_task = run_stage_task.with_options(retries=retries, retry_delay_seconds=RETRY_DELAY_S)
        results = [stage_task(str(root), stage, force, lock_timeout, remote,
                              str(state[stage.split("@")[0]]) if force and stage.split("@")[0] in state else None)
                   for stage in chosen]
        summary: dict[str, Any] = {"mode": "repro", "stages": results}
        if flat:
            ran = [s for r in results for s in r["ran"]]
            exp = same if same and not ran else save_experiment(root, experiment_name)
            logger.info("DVC experiment %r (%s)", exp, "reused" if exp == same else "recorded")
            summary.update(mode="experiment", experiment=exp, reused=exp == same, overrides=flat, ran=ran,
                           up_to_date=[r["stage"] for r in results if not r["ran"]])
        _publish_reports(root, params)
    failed_pushes = [r["stage"] for r in results if r["push"].endswith("failed")]
    if failed_pushes:
        raise RuntimeError(f"the results of {failed_pushes} are in {root} but could not be pushed to the DVC remote "
                           f"{remote!r} (see the log); push them later with `dvc push`")
    return summary
