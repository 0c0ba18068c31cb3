"""`timetuning deploy --pool NAME`: register the flow as a deployment on a Prefect work pool, for workers.

    timetuning deploy --pool gpu [--api-url http://server:4200/api]
    # on each machine that runs the pipeline, inside its checkout of this repository:
    TIMETUNING_REPO=$PWD prefect worker start --pool gpu

The pool is created (type `process`) if it does not exist. The deployment loads the flow by module path
(`pipeline.flows.timetuning`), so a worker needs this project installed and a checkout of the repository, which
each run finds through ``$TIMETUNING_REPO`` (or the `--repo` given here, when it is the same path on every worker).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

DEPLOYMENT = "timetuning"
DESCRIPTION = ("Time-tuning pipeline through DVC. The overrides form shows params.yaml as it was when this "
               "deployment was registered; change values to run a DVC experiment, pick stages, run.")


def build_deployment(params_path: Path, repo: str | None = None, name: str = DEPLOYMENT,
                     work_pool_name: str | None = None, description: str = DESCRIPTION):
    """The flow as a Prefect deployment whose form is the whole params schema, prefilled from ``params_path``."""
    from prefect.deployments.runner import EntrypointType

    from pipeline.flows import timetuning
    from pipeline.overrides import form_schema
    from timetuning.infra.config import load_params

    parameters: dict[str, Any] = {"overrides": load_params(params_path).model_dump(mode="json")}
    if repo:
        parameters["repo"] = repo
    deployment = timetuning.to_deployment(name=name, parameters=parameters, description=description,
                                          entrypoint_type=EntrypointType.MODULE_PATH,
                                          work_pool_name=work_pool_name)
    deployment._parameter_openapi_schema = type(deployment._parameter_openapi_schema).model_validate(
        form_schema(deployment._parameter_openapi_schema.model_dump(exclude_unset=True)))
    return deployment


def ensure_process_pool(pool: str) -> None:
    """Create work pool ``pool`` of type `process` unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template()))
            print(f"created work pool {pool!r} (type process)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="timetuning deploy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", required=True, help="work pool name (created as a process pool if missing)")
    ap.add_argument("--api-url", default=None, help="the Prefect API (default: PREFECT_API_URL)")
    ap.add_argument("--params", default="params.yaml", help="params file that prefills the run form")
    ap.add_argument("--repo", default=None,
                    help="the checkout's path on the workers, if it is the same on all (else $TIMETUNING_REPO)")
    ap.add_argument("--name", default=DEPLOYMENT, help=f"deployment name (default: {DEPLOYMENT})")
    args = ap.parse_args(argv)
    if args.api_url:
        os.environ["PREFECT_API_URL"] = args.api_url
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print("error: no Prefect server: pass --api-url http://host:4200/api or set PREFECT_API_URL", file=sys.stderr)
        return 2
    ensure_process_pool(args.pool)
    deployment = build_deployment(Path(args.params), args.repo, args.name, args.pool)
    deployment_id = deployment.apply(work_pool_name=args.pool)
    print(f"deployment 'timetuning/{args.name}' ({deployment_id}) on work pool {args.pool!r}; start workers with:\n"
          f"  TIMETUNING_REPO=/path/to/checkout prefect worker start --pool {args.pool}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
