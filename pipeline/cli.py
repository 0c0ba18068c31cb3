"""The ``timetuning`` command: run one stage, the whole pipeline, apply a params profile, serve the Prefect flow, or
deploy it to a pool.

It lives in `pipeline/` (not in the library) because it starts stages and flows.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

from timetuning.infra.dvc_yaml import pipeline_stages

STAGES = pipeline_stages()  # dvc.yaml's
# commands whose options go whole to their module's main (argparse's REMAINDER drops leading --flags)
PASSTHROUGH = {"serve": "pipeline.serve", "deploy": "pipeline.deploy"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="timetuning", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stage", help="run one stage's entry point directly (no DVC caching)")
    st.add_argument("name", choices=STAGES)
    st.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the stage")
    rp = sub.add_parser("repro", help="run the pipeline through DVC (dvc repro), after checking params and inputs")
    rp.add_argument("stages", nargs="*", help="stages to run (default: all; shard_eval or shard_eval@<set>; "
                    "fit_probes, fit_probes@<set> or fit_probes@<set>-<model>)")
    rp.add_argument("-s", "--single-item", action="store_true", help="run only these stages, not what they need")
    rp.add_argument("-f", "--force", action="store_true", help="rerun even if DVC says the stages are up to date")
    pr = sub.add_parser("profile", help="merge a params profile (profiles/<name>.yaml or a file) into params.yaml")
    pr.add_argument("name", help="profile name (e.g. paper) or path of a profile file")
    pr.add_argument("--params", default="params.yaml", help="the params file to update (default: %(default)s)")
    sub.add_parser("serve", help="start a Prefect server on 127.0.0.1 and serve the flow (see serve --help)")
    sub.add_parser("deploy", help="register the flow on a Prefect work pool for workers (see deploy --help)")
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] and args[0] in PASSTHROUGH:
        return int(importlib.import_module(PASSTHROUGH[args[0]]).main(args[1:]) or 0)
    ns = parser.parse_args(args)
    if ns.command == "stage":
        module = importlib.import_module(f"stages.{ns.name}")
        return int(module.main(ns.args) or 0)
    if ns.command == "profile":
        return profile(ns.name, ns.params)
    return repro(ns.stages, ns.single_item, ns.force)


def profile(name: str, params_file: str = "params.yaml") -> int:
    """Merge a profile into params.yaml (validated first; comments kept): DVC and the flow see param changes."""
    from timetuning.infra.config import ParamsError
    from timetuning.infra.profiles import apply_profile, profile_path

    try:
        path = profile_path(name)
        apply_profile(path, params_file)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{params_file}: applied {path}; `timetuning repro` (or `dvc repro`, `dvc exp run`) now runs with it")
    return 0


def repro(stages: list[str], single_item: bool = False, force: bool = False) -> int:
    """`dvc repro`, once params.yaml is valid and every input the run needs is there.

    DVC removes a stage's outputs before running it; checking first means a typo in params.yaml or a missing
    input never costs the results already made.
    """
    from timetuning.infra.config import ParamsError
    from timetuning.run.inputs import MissingInputError, dvc_targets, load_and_preflight

    try:
        params, _ = load_and_preflight(".", stages or None, single_item)
    except (ParamsError, MissingInputError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        print("nothing was run (dvc repro not started)", file=sys.stderr)
        return 1
    flags = [*(["--single-item"] if single_item else []), *(["--force"] if force else [])]
    return subprocess.call([sys.executable, "-m", "dvc", "repro", *flags, *dvc_targets(params, stages)])


if __name__ == "__main__":
    sys.exit(main())
