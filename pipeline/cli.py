"""The ``timetuning`` command: run one stage, the whole pipeline, serve the Prefect flow, or deploy it to a pool.

It lives in `pipeline/` (not in the library) because it starts stages and flows.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

STAGES = ("demo_data", "shard_videos", "shard_eval", "train", "extract_features", "fit_probes", "evaluate")
# commands whose options go whole to their module's main (argparse's REMAINDER drops leading --flags)
PASSTHROUGH = {"serve": "pipeline.serve", "deploy": "pipeline.deploy"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="timetuning", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stage", help="run one stage's entry point directly (no DVC caching)")
    st.add_argument("name", choices=STAGES)
    st.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the stage")
    sub.add_parser("repro", help="run the whole pipeline through DVC (dvc repro)")
    sub.add_parser("serve", help="start a Prefect server on 127.0.0.1 and serve the flow (see serve --help)")
    sub.add_parser("deploy", help="register the flow on a Prefect work pool for workers (see deploy --help)")
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] and args[0] in PASSTHROUGH:
        return int(importlib.import_module(PASSTHROUGH[args[0]]).main(args[1:]) or 0)
    ns = parser.parse_args(args)
    if ns.command == "stage":
        module = importlib.import_module(f"stages.{ns.name}")
        return int(module.main(ns.args) or 0)
    return subprocess.call([sys.executable, "-m", "dvc", "repro"])


if __name__ == "__main__":
    sys.exit(main())
