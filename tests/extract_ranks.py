"""Run by tests/test_extract_distributed.py under torchrun: one rank of a distributed feature extraction."""

import sys

from tests.evalsets import MeanColour
from timetuning.eval.extraction import extract_split_distributed
from timetuning.infra.distributed import cleanup, init_distributed

if __name__ == "__main__":
    set_dir, out = sys.argv[1:3]
    ctx = init_distributed()
    extract_split_distributed(MeanColour(), set_dir, "val", out, ctx=ctx, input_size=64, row_group_size=150,
                              batch_size=3, progress=False)
    cleanup(ctx)
