"""What every stage entry point shares: argument parsing, params loading, seeding, error reporting."""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from timetuning.infra.config import Params, ParamsError, load_params

log = logging.getLogger("timetuning")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (if imported) torch; deterministic algorithms stay opt-in per stage."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="path of params.yaml (default: %(default)s)")
    return parser


def set_parser(description: str) -> argparse.ArgumentParser:
    """The parser of a per-set stage (``stage@<set>`` in dvc.yaml): ``--set NAME`` is required."""
    parser = stage_parser(description)
    parser.add_argument("--set", required=True, help="the evaluation set (a key of shard_eval.sets)")
    return parser


def set_model_parser(description: str) -> argparse.ArgumentParser:
    """The parser of a per-set, per-model stage (``stage@<set>-<model>``): ``--set`` and ``--model`` are required."""
    parser = set_parser(description)
    parser.add_argument("--model", required=True, help="the model (a key of extract_features.models)")
    return parser


def run_stage(main: Callable[[Params, argparse.Namespace], Any], description: str,
              parser: argparse.ArgumentParser | None = None, argv: list[str] | None = None) -> int:
    """Parse args, load + validate params, seed, run ``main``; turn known errors into a clean exit 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = parser or stage_parser(description)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        seed_everything(params.seed)
        main(params, args)
    # OSError: what the environment refuses (permissions, a full disk) is told in one line, not a traceback
    # said once, as one `error:` line (no log record of it besides: DVC, the CLI and a flow's log show it once)
    except (ParamsError, OSError, ValueError, RuntimeError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    return 0
