"""Sinkhorn-Knopp against hand-computed cases (where epsilon and the iterations matter) and a plain loop reference."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from timetuning.method.sinkhorn import sinkhorn_knopp


def reference_sinkhorn(scores: list[list[float]], epsilon: float, iterations: int) -> list[list[float]]:
    """SwAV's algorithm written out with loops: Q = exp(scores / eps)^T (K x N), normalised to total mass 1, then
    ``iterations`` rounds of (every prototype row to mass 1/K, every patch column to mass 1/N); returns N x K with
    each patch's row summing to 1."""
    n, k = len(scores), len(scores[0])
    q = [[math.exp(scores[i][j] / epsilon) for i in range(n)] for j in range(k)]
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        for j in range(k):
            row_mass = sum(q[j])
            q[j] = [v / row_mass / k for v in q[j]]
        for i in range(n):
            column_mass = sum(q[j][i] for j in range(k))
            for j in range(k):
                q[j][i] = q[j][i] / column_mass / n
    return [[q[j][i] * n for j in range(k)] for i in range(n)]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("epsilon", [0.05, 0.1])
def test_balanced_two_by_two_is_a_sigmoid_of_score_over_epsilon(epsilon):
    """Scores [[a, 0], [0, a]] are already balanced, so the assignment is softmax(scores / eps) per patch:
    q = sigmoid(a / eps) on the diagonal (a = 0.1: 0.8808 for eps 0.05, 0.7311 for eps 0.1)."""
    q = sinkhorn_knopp(torch.tensor([[0.1, 0.0], [0.0, 0.1]]), epsilon=epsilon, iterations=10)
    p = sigmoid(0.1 / epsilon)
    assert torch.allclose(q, torch.tensor([[p, 1 - p], [1 - p, p]]), atol=1e-6)


@pytest.mark.parametrize("epsilon", [0.05, 0.2])
def test_unbalanced_two_by_two_converges_to_the_closed_form(epsilon):
    """Both patches prefer prototype 0. A doubly-stochastic 2x2 plan is [[x, 1-x], [1-x, x]] (rows of 1) and
    scaling rows and columns keeps the cross ratio of exp(S / eps), so x / (1 - x) = exp((s00 + s11 - s01 - s10) /
    (2 eps)): x = sigmoid(0.2 / (2 eps)) for these scores, whatever their row preferences."""
    scores = torch.tensor([[0.5, 0.2], [0.4, 0.3]])  # cross term 0.5 + 0.3 - 0.2 - 0.4 = 0.2
    q = sinkhorn_knopp(scores, epsilon=epsilon, iterations=200)
    x = sigmoid(0.2 / (2 * epsilon))
    assert torch.allclose(q, torch.tensor([[x, 1 - x], [1 - x, x]]), atol=1e-5)
    assert q[1, 0] < 0.5  # balancing overrides patch 1's own preference for prototype 0


@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_equals_the_loop_reference_on_a_non_square_case(iterations):
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(7, 3, generator=g) * 2 - 1
    want = torch.tensor(reference_sinkhorn(scores.tolist(), 0.05, iterations))
    got = sinkhorn_knopp(scores, epsilon=0.05, iterations=iterations)
    assert torch.allclose(got, want, atol=1e-5)
    fewer = torch.tensor(reference_sinkhorn(scores.tolist(), 0.05, 1))
    if iterations > 1:  # the iteration count is honoured, not a fixed number of rounds
        assert (got - fewer).abs().max() > 1e-3


def test_marginals_are_uniform():
    g = torch.Generator().manual_seed(0)
    scores = torch.nn.functional.normalize(torch.randn(600, 32, generator=g), dim=1) @ \
        torch.nn.functional.normalize(torch.randn(20, 32, generator=g), dim=1).t()
    q = sinkhorn_knopp(scores, epsilon=0.05, iterations=10)
    assert q.shape == (600, 20)
    assert torch.allclose(q.sum(1), torch.ones(600), atol=1e-5)  # each patch: a distribution
    assert torch.allclose(q.sum(0) / 600, torch.full((20,), 1 / 20), atol=2e-3)  # balanced over prototypes


def test_large_scores_do_not_overflow():
    """exp(1 / 0.01) overflows float32; the max-shift keeps the result finite and equal to the reference."""
    scores = torch.tensor([[1.0, -1.0, 0.2], [0.3, 0.9, -0.5], [-0.2, 0.1, 0.95], [0.6, 0.5, 0.4]])
    q = sinkhorn_knopp(scores, epsilon=0.01, iterations=5)
    assert torch.isfinite(q).all()
    want = torch.tensor(reference_sinkhorn((scores - scores.max()).tolist(), 0.01, 5))
    assert torch.allclose(q, want, atol=1e-5)


def _worker(rank, world, scores, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    half = scores.shape[0] // world
    out[rank] = sinkhorn_knopp(scores[rank * half:(rank + 1) * half], 0.05, 10)
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_equals_single_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scores = torch.rand(200, 10, generator=torch.Generator().manual_seed(1))
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, scores, port, out), nprocs=2, join=True)
    assert torch.allclose(torch.cat([out[0], out[1]]), sinkhorn_knopp(scores, 0.05, 10), atol=1e-5)
