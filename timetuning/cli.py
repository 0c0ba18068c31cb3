"""The ``timetuning`` command: run one stage, the whole pipeline, apply a params profile, or serve the flow."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

STAGES = ("demo_data", "shard_videos", "shard_eval", "train", "extract_features", "fit_probes", "evaluate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="timetuning", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stage", help="run one stage's entry point directly (no DVC caching)")
    st.add_argument("name", choices=STAGES)
    st.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the stage")
    sub.add_parser("repro", help="run the whole pipeline through DVC (dvc repro)")
    pr = sub.add_parser("profile", help="merge a params profile (profiles/<name>.yaml or a file) into params.yaml")
    pr.add_argument("name", help="profile name (e.g. paper) or path of a profile file")
    pr.add_argument("--params", default="params.yaml", help="the params file to update (default: %(default)s)")
    sv = sub.add_parser("serve", help="start a Prefect server on 127.0.0.1 and serve the flow")
    sv.add_argument("args", nargs=argparse.REMAINDER)
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["serve"]:  # its options go to pipeline.serve whole (argparse's REMAINDER drops leading --flags)
        return int(importlib.import_module("pipeline.serve").main(args[1:]) or 0)
    ns = parser.parse_args(args)

    if ns.command == "stage":
        module = importlib.import_module(f"stages.{ns.name}")
        return int(module.main(ns.args) or 0)
    if ns.command == "profile":
        from timetuning.config import ParamsError
        from timetuning.profiles import apply_profile, profile_path

        try:
            path = profile_path(ns.name)
            apply_profile(path, ns.params)
        except ParamsError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"{ns.params}: applied {path}; `dvc repro` (or `dvc exp run`) now runs with it")
        return 0
    if ns.command == "repro":
        return subprocess.call([sys.executable, "-m", "dvc", "repro"])
    module = importlib.import_module("pipeline.serve")
    return int(module.main(ns.args) or 0)


if __name__ == "__main__":
    sys.exit(main())
