import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from timetuning.sinkhorn import sinkhorn_knopp


def test_marginals_are_uniform():
    g = torch.Generator().manual_seed(0)
    scores = torch.nn.functional.normalize(torch.randn(600, 32, generator=g), dim=1) @ \
        torch.nn.functional.normalize(torch.randn(20, 32, generator=g), dim=1).t()
    q = sinkhorn_knopp(scores, epsilon=0.05, iterations=10)
    assert q.shape == (600, 20)
    assert torch.allclose(q.sum(1), torch.ones(600), atol=1e-5)  # each patch: a distribution
    cluster_mass = q.sum(0) / 600
    assert torch.allclose(cluster_mass, torch.full((20,), 1 / 20), atol=2e-3)  # balanced over prototypes


def test_balances_a_degenerate_score_matrix():
    scores = torch.zeros(100, 4)
    scores[:, 0] = 1.0  # every patch prefers prototype 0
    q = sinkhorn_knopp(scores, 0.05, 50)
    assert torch.allclose(q.sum(0), torch.full((4,), 25.0), atol=0.5)


def _worker(rank, world, scores, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    half = scores.shape[0] // world
    q = sinkhorn_knopp(scores[rank * half:(rank + 1) * half], 0.05, 10)
    out[rank] = q
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_equals_single_process(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(200, 10, generator=g)
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, scores, port, out), nprocs=2, join=True)
    full = sinkhorn_knopp(scores, 0.05, 10)
    assert torch.allclose(torch.cat([out[0], out[1]]), full, atol=1e-5)
