"""The `timetuning` Prefect flow: the DVC pipeline, stage by stage, from the Prefect UI.

DVC stays the single source of truth for what is up to date: every stage runs through `dvc repro`, so an
up-to-date stage is a fast success that says so, and flow runs and CLI runs share one cache and one dvc.lock.
A run with parameter overrides becomes a DVC experiment (`dvc exp run -S key=value`), listed by `dvc exp show`
next to CLI experiments. Prefect adds the UI, retries, streamed logs, artifacts and scale-out.
"""

# No `from __future__ import annotations`: a served deployment loads this file by path and pydantic must see
# the real ParamsOverrides type in the flow signature, not a string it cannot resolve there.
import json
import re
from pathlib import Path
from typing import Any, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, create_model

from pipeline.dvc_runner import (DvcResult, StageFailed, pipeline_stages, run_dvc, stage_outputs,
                                 workspace_lock)
from timetuning.config import Params, ParamsError, apply_overrides, load_params

RETRY_DELAY_S = 5.0  # a transient failure (DVC's lock held by a CLI run, a signal) gets a moment to pass


def partial_model(model: type[BaseModel], name: str | None = None) -> type[BaseModel]:
    """The same schema with every field optional (nested sections too): the flow's typed override form."""
    fields: dict[str, Any] = {}
    for key, info in model.model_fields.items():
        if info.exclude:
            continue
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            ann = partial_model(ann)
        fields[key] = (Optional[ann], None)  # noqa: UP045 (pydantic needs a runtime type)
    return create_model(name or f"Partial{model.__name__}", __config__=ConfigDict(extra="forbid"), **fields)


ParamsOverrides = partial_model(Params, "ParamsOverrides")


def dotted_overrides(overrides: BaseModel | dict | None) -> dict[str, Any]:
    """Set fields of a partial params object as ``{"section.key": value}``.

    Nested sections (``train.backbone``) are walked into; lists and mappings (``shard_eval.sets``) stay whole.
    A plain dict with dotted keys is taken as it is.
    """
    if overrides is None:
        return {}
    if isinstance(overrides, dict) and all("." in k for k in overrides):
        return dict(overrides)
    data = overrides.model_dump(exclude_none=True) if isinstance(overrides, BaseModel) else dict(overrides)
    flat: dict[str, Any] = {}

    def walk(schema: type[BaseModel], node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            info = schema.model_fields.get(key)
            if info is None:
                raise ValueError(f"overrides: unknown key {prefix + key!r}")
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(value, dict):
                walk(ann, value, f"{prefix}{key}.")
            else:
                flat[prefix + key] = value

    walk(Params, data, "")
    return flat


def override_value(value: Any) -> str:
    """``value`` in the override grammar of ``dvc exp run -S`` (Hydra's): strings quoted, so ``tcp://h:1`` or
    ``/data/x`` stay strings; lists and mappings nested; mapping keys must be plain identifiers."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        quoted = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)  # Hydra escapes \ only before '
        return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, quoted) + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        bad = [k for k in value if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", str(k))]
        if bad:
            raise ValueError(f"overrides: mapping keys {bad} cannot be passed to `dvc exp run -S`; use plain names")
        return "{" + ", ".join(f"{k}: {override_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"overrides: cannot pass a {type(value).__name__} to `dvc exp run -S`")


def _retry_transient(task, task_run, state) -> bool:
    """Retry only failures that can pass (a signal, a lock, a resource limit), not a stage's own error."""
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
def run_stage_task(repo: str, stage: str, force: bool = False) -> dict[str, Any]:
    """`dvc repro --single-item <stage>`: DVC runs it, or says it is up to date."""
    logger = get_run_logger()
    stream = _Stream(logger, stage)
    args = ["repro", "--single-item", *(["--force"] if force else []), stage]
    result = run_dvc(Path(repo), args, stream.line, stream.progress)
    stream.done()
    status = _status(result)
    outputs = stage_outputs(Path(repo), stage)
    if outputs:
        create_table_artifact(outputs, key=artifact_key("outputs", stage),
                              description=f"{stage}: outputs and their DVC hashes ({status})")
    logger.info("%s: %s", stage, status)
    return {"stage": stage, "status": status, "ran": result.ran, "outputs": outputs}


@task(name="experiment", cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=_retry_transient)
def run_experiment_task(repo: str, overrides: dict[str, Any], stages: list[str], force: bool,
                        name: str | None) -> dict[str, Any]:
    """`dvc exp run -S key=value ...`: the overridden run, as a DVC experiment."""
    logger = get_run_logger()
    stream = _Stream(logger, "experiment")
    args = ["exp", "run", *(["--force"] if force else []), *(["--name", name] if name else [])]
    for key, value in overrides.items():
        args += ["-S", f"{key}={override_value(value)}"]
    args += stages
    result = run_dvc(Path(repo), args, stream.line, stream.progress)
    stream.done()
    exp_name = next((ln.split(":", 1)[1].strip() for ln in result.lines if ln.startswith("Ran experiment")), "")
    rows = [{"stage": s, "status": "ran"} for s in result.ran] + \
           [{"stage": s, "status": "up to date"} for s in result.up_to_date + result.restored]
    create_table_artifact(rows, key="experiment-stages", description=f"stages of experiment {exp_name}")
    return {"experiment": exp_name, "ran": result.ran, "up_to_date": result.up_to_date + result.restored,
            "overrides": overrides}


def _status(result: DvcResult) -> str:
    if result.ran:
        return "ran"
    if result.restored and not result.up_to_date:
        return "up to date (restored from the DVC cache)"
    return "up to date"


def _publish_reports(repo: Path, params: Params) -> None:
    """Metrics table and the markdown report as artifacts for people."""
    reports = repo / params.evaluate.output_dir
    metrics_path = reports / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        rows = []
        for model, sets in metrics.items():
            for set_name, protocols in sets.items():
                rows.append({"model": model, "set": set_name,
                             **{k: f"{v:.4f}" for k, v in protocols.items() if isinstance(v, (int, float))}})
        create_table_artifact(rows, key="metrics", description="reports/metrics.json (time-tuned vs start)")
    report = reports / "report.md"
    if report.is_file():
        create_markdown_artifact(report.read_text(), key="report", description="reports/report.md")


@flow(name="timetuning", log_prints=True)
def timetuning(overrides: Optional[ParamsOverrides] = None, stages: Optional[list[str]] = None,  # noqa: UP045
               force: bool = False, repo: str = ".", retries: int = 1, lock_timeout: float = 600.0,
               experiment_name: Optional[str] = None) -> dict[str, Any]:  # noqa: UP045
    """Run the pipeline through DVC.

    overrides: parameters to change for this run (any subset of params.yaml); makes the run a DVC experiment.
    stages: which stages to run (default: all, in dvc.yaml order). force: rerun even if up to date.
    repo: the pipeline's repository root. retries: retries per stage for transient failures.
    """
    logger = get_run_logger()
    root = Path(repo).resolve()
    base = load_params(root / "params.yaml")
    flat = dotted_overrides(overrides)
    try:
        params = apply_overrides(base, flat) if flat else base
    except ParamsError as err:
        raise ValueError(f"invalid overrides: {err}") from None
    known = pipeline_stages(root)
    chosen = stages or known
    unknown = [s for s in chosen if s.split("@")[0] not in known]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {known}")
    with workspace_lock(root, lock_timeout):
        if flat:
            logger.info("overrides %s: running as a DVC experiment", flat)
            result = run_experiment_task.with_options(retries=retries, retry_delay_seconds=RETRY_DELAY_S)(
                str(root), flat, list(stages or []), force, experiment_name)
            summary = {"mode": "experiment", **result}
        else:
            results = []
            for stage in chosen:
                results.append(run_stage_task.with_options(retries=retries, retry_delay_seconds=RETRY_DELAY_S)(str(root), stage, force))
            summary = {"mode": "repro", "stages": results}
        _publish_reports(root, params)
    return summary
