"""The clustering objective: head + prototypes, FF targets, cross-entropy on the last frame, optimiser groups."""

import math

import pytest
import torch
from torch.nn import functional as F

from timetuning.infra.config import TrainParams
from timetuning.method.loss import (
    EmbeddingQueue,
    TargetStatistics,
    TimeTuningObjective,
    propagated_targets,
    time_tuning_loss,
)
from timetuning.method.sinkhorn import sinkhorn_knopp
from timetuning.models.head import ClusteringHead
from timetuning.train.optimizer import apply_schedules, build_optimizer
from timetuning.train.tuner import TimeTuner, build_objective


def frame0_targets(features: torch.Tensor, first_scores: torch.Tensor, cfg: TrainParams) -> torch.Tensor:
    """The last frame's targets from frame 0's scores ``[B, N, K]``: Sinkhorn, then the Feature-Forwarder."""
    b, n, k = first_scores.shape
    q0 = sinkhorn_knopp(first_scores.reshape(-1, k), cfg.sinkhorn_epsilon, cfg.sinkhorn_iterations)
    return propagated_targets(features, q0.reshape(b, n, k), build_objective(cfg).forwarder)


def test_head_shapes_and_scores_are_cosines():
    head = ClusteringHead(24, num_prototypes=10, hidden_dim=32, bottleneck_dim=16, out_dim=8,
                          generator=torch.Generator().manual_seed(0))
    scores = head(torch.randn(3, 24, 5, 6))
    assert scores.shape == (3, 30, 10)
    assert scores.abs().max() <= 1.0 + 1e-5
    assert torch.allclose(head.prototypes.weight.norm(dim=1), torch.ones(10), atol=1e-6)  # unit at init


def test_prototypes_are_renormalised_after_a_step():
    head = ClusteringHead(8, num_prototypes=6, hidden_dim=16, bottleneck_dim=16, out_dim=4)
    opt = torch.optim.SGD(head.parameters(), lr=10.0)
    head(torch.randn(2, 8, 3, 3)).sum().backward()
    opt.step()
    assert not torch.allclose(head.prototypes.weight.norm(dim=1), torch.ones(6), atol=1e-3)
    head.prototypes.renormalize()
    assert torch.allclose(head.prototypes.weight.norm(dim=1), torch.ones(6), atol=1e-6)


def test_loss_is_cross_entropy_over_temperature():
    scores = torch.tensor([[[1.0, 0.0, -1.0], [0.0, 0.5, 0.0]]])  # [B=1, N=2, K=3]
    targets = torch.tensor([[0, 2]])
    expected = (-F.log_softmax(scores[0, 0] / 0.1, 0)[0] - F.log_softmax(scores[0, 1] / 0.1, 0)[2]) / 2
    assert time_tuning_loss(scores, targets, 0.1).item() == pytest.approx(expected.item(), rel=1e-6)
    confident = F.one_hot(targets, 3).float() * 2 - 1  # cos +1 on the target, -1 elsewhere
    assert time_tuning_loss(confident, targets, 0.1).item() < 1e-8


def test_static_clip_carries_frame0_sinkhorn_labels_unchanged():
    """Identical frames with near-orthogonal patch features: every patch's label survives to the last frame."""
    g = torch.Generator().manual_seed(0)
    b, t, d, h, w, k = 2, 4, 256, 4, 5, 7
    frame = torch.randn(b, d, h, w, generator=g)
    features = frame[:, None].expand(b, t, d, h, w).contiguous()
    first_scores = torch.randn(b, h * w, k, generator=g).clamp(-1, 1)
    cfg = TrainParams()
    targets = frame0_targets(features, first_scores, cfg)
    q0 = sinkhorn_knopp(first_scores.reshape(-1, k), cfg.sinkhorn_epsilon, cfg.sinkhorn_iterations)
    assert targets.shape == (b, h * w)
    assert torch.equal(targets, q0.argmax(1).reshape(b, h * w))


def test_targets_follow_a_translated_frame():
    """Frame t is frame 0 shifted right by t patches: the last frame's labels are frame 0's labels shifted."""
    g = torch.Generator().manual_seed(1)
    b, t, d, h, w, k = 1, 3, 128, 4, 8, 5
    base = torch.randn(b, d, h, w + t, generator=g)
    features = torch.stack([base[..., t - i:t - i + w] for i in range(t)], 1)  # content moves right
    first_scores = torch.randn(b, h * w, k, generator=g).clamp(-1, 1)
    cfg = TrainParams()
    q0 = sinkhorn_knopp(first_scores.reshape(-1, k), cfg.sinkhorn_epsilon, cfg.sinkhorn_iterations)
    labels0 = q0.argmax(1).reshape(h, w)
    last = frame0_targets(features, first_scores, cfg).reshape(h, w)
    assert torch.equal(last[:, t - 1:], labels0[:, :w - (t - 1)])


def test_gradient_reaches_only_the_last_frame_and_the_head():
    head = ClusteringHead(16, num_prototypes=6, hidden_dim=16, bottleneck_dim=16, out_dim=8)
    feats = torch.randn(2, 3, 16, 4, 4, requires_grad=True)
    with torch.no_grad():
        first = head(feats[:, 0])
    targets = frame0_targets(feats, first, TrainParams())
    loss = time_tuning_loss(head(feats[:, -1]), targets, 0.1)
    loss.backward()
    assert math.isfinite(loss.item())
    assert feats.grad[:, :-1].abs().sum() == 0 and feats.grad[:, -1].abs().sum() > 0
    assert head.prototypes.weight.grad is not None and head.prototypes.weight.grad.abs().sum() > 0


def test_adamw_groups_and_per_iteration_cosine_schedules():
    p = TrainParams(steps=10, lr_backbone=1e-5, lr_head=1e-4, weight_decay_start=0.04, weight_decay_end=0.4,
                    backbone={"name": "test_vit", "weights": "none"}, hidden_dim=16, bottleneck_dim=16,
                    projection_dim=8, num_prototypes=4)
    backbone = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    frozen = torch.nn.Linear(4, 4).requires_grad_(False)
    tuner = TimeTuner(torch.nn.Sequential(backbone, frozen), ClusteringHead(4, 4, 16, 16, 8), build_objective(p))
    opt = build_optimizer(tuner, p)
    trained = {id(q) for g in opt.param_groups for q in g["params"]}
    assert all(id(q) not in trained for q in frozen.parameters())
    for g in opt.param_groups:
        assert all(q.ndim >= 2 for q in g["params"]) == g["apply_wd"]  # no decay on biases / 1-D params
    first = apply_schedules(opt, 0, p)
    assert first == pytest.approx({"lr_backbone": 1e-5, "lr_head": 1e-4, "weight_decay": 0.04})
    mid = apply_schedules(opt, 5, p)
    assert mid["lr_head"] == pytest.approx(5e-5) and mid["weight_decay"] == pytest.approx(0.22)
    last = apply_schedules(opt, 10, p)
    assert last["lr_backbone"] == pytest.approx(0.0, abs=1e-15) and last["weight_decay"] == pytest.approx(0.4)
    assert all(g["weight_decay"] == (0.4 if g["apply_wd"] else 0.0) for g in opt.param_groups)


def test_method_defaults_are_the_papers_constants():
    """The method's constants are the paper's by default; the optimisation defaults are the demo's (params.yaml:
    10x learning rates, clipped), the paper's are in profiles/paper.yaml (tests/test_profiles.py)."""
    p = TrainParams()
    assert (p.sinkhorn_epsilon, p.sinkhorn_iterations, p.student_temperature, p.forwarder_temperature) == (
        0.05, 10, 0.1, 0.1)
    assert (p.forwarder_topk, p.forwarder_window_radius, p.forwarder_context_frames, p.num_prototypes) == (5, 6, 7, 200)
    assert (p.hidden_dim, p.bottleneck_dim, p.projection_dim, p.trainable_blocks) == (1024, 512, 256, 2)
    assert (p.weight_decay_start, p.weight_decay_end) == (0.04, 0.4)


def test_objective_equals_a_plain_reference_on_nine_frames():
    """The whole objective, recomputed step by step from the tests' own references: Sinkhorn on frame 0's scores
    (loops), the Feature-Forwarder carrying them over 9 frames (loops over frames and patches, context frame 0 + 7
    previous), argmax, cross-entropy of the last frame's scores over the student temperature. Distinct constants, so
    a swapped temperature or epsilon cannot pass."""
    from tests.test_forwarder import reference_propagation
    from tests.test_sinkhorn import reference_sinkhorn

    g = torch.Generator().manual_seed(7)
    b, t, d, h, w, k = 2, 9, 12, 3, 4, 6
    feats = torch.randn(b, 1, d, h, w, generator=g) + 0.7 * torch.randn(b, t, d, h, w, generator=g)
    cfg = TrainParams(sinkhorn_epsilon=0.07, sinkhorn_iterations=4, student_temperature=0.2,
                      forwarder_temperature=0.05, forwarder_topk=3, forwarder_window_radius=1,
                      forwarder_context_frames=7)
    head = ClusteringHead(d, num_prototypes=k, hidden_dim=16, bottleneck_dim=16, out_dim=8, generator=g)
    with torch.no_grad():
        first = head(feats[:, 0])  # [B, N, K]
        last = head(feats[:, -1])
    q0 = torch.tensor(reference_sinkhorn(first.reshape(-1, k).tolist(), 0.07, 4)).reshape(b, h * w, k)
    want = []
    for i in range(b):
        labels = reference_propagation(feats[i], q0[i].t().reshape(k, h, w), temperature=0.05, topk=3, radius=1,
                                       context_frames=7)
        targets = labels[-1].reshape(k, -1).argmax(0)
        want.append(F.cross_entropy(last[i].double() / 0.2, targets, reduction="none"))
    expected = torch.cat(want).mean()
    got = time_tuning_loss(last, frame0_targets(feats, first, cfg), cfg.student_temperature)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def _unit(*shape, generator):
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def test_the_queue_balances_with_past_embeddings_rescored_as_a_plain_fifo_does():
    """Five steps of 2 clips x 3 patches, a queue of 8 embeddings that starts filling at step 1: written out by
    hand, the queue is a list (newest first) that steps >= 1 extend at the front and cut to 8; a step uses it only
    when it holds 8, scoring the queued embeddings against the prototypes of *that* step; Sinkhorn (the loop
    reference) runs over batch + queue rows and the batch's rows are the assignment."""
    from tests.test_sinkhorn import reference_sinkhorn

    g = torch.Generator().manual_seed(3)
    k, e, eps, iters = 4, 5, 0.1, 3
    objective = TimeTuningObjective(sinkhorn_epsilon=eps, sinkhorn_iterations=iters,
                                    queue=EmbeddingQueue(8, e, start_step=1))
    fifo: list[list[float]] = []
    used = []
    for step in range(5):
        prototypes = torch.nn.Module()
        weight = _unit(k, e, generator=g)  # the prototypes move between steps: stale scores would differ
        prototypes.forward = lambda x, w=weight: F.normalize(x, dim=-1) @ w.t()
        batch = _unit(2, 1, 3, e, generator=g)  # [B, F=1, N, E]
        got = objective.first_frame_assignment(batch, prototypes, step)
        rows = (batch.reshape(-1, e) @ weight.t()).tolist()
        full = len(fifo) == 8
        queue_rows = (torch.tensor(fifo) @ weight.t()).tolist() if full else []
        want = torch.tensor(reference_sinkhorn(rows + queue_rows, eps, iters)[:6]).reshape(2, 3, k)
        assert torch.allclose(got, want.float(), atol=1e-5), step
        used.append(full)
        if step >= 1:
            fifo = (batch.reshape(-1, e).tolist() + fifo)[:8]
    assert used == [False, False, False, True, True]  # filled by steps 1 and 2 (6 + 6 >= 8), used from step 3


def test_sinkhorn_over_all_frames_balances_every_frame_and_keeps_frame_0():
    """``sinkhorn_frames="all"`` (TimeT_clean): one Sinkhorn over the patches of all frames of all clips (the loop
    reference), frame 0's rows carried forward; it differs from balancing frame 0 alone."""
    from tests.test_sinkhorn import reference_sinkhorn

    g = torch.Generator().manual_seed(4)
    b, t, n, k, e = 2, 3, 4, 5, 6
    weight = _unit(k, e, generator=g)
    prototypes = torch.nn.Module()
    prototypes.forward = lambda x: F.normalize(x, dim=-1) @ weight.t()
    embeddings = _unit(b, t, n, e, generator=g)
    every = TimeTuningObjective(sinkhorn_epsilon=0.05, sinkhorn_iterations=5, sinkhorn_frames="all")
    assert every.sinkhorn_frame_index(t) == [0, 1, 2]
    got = every.first_frame_assignment(embeddings, prototypes, 0)
    q = torch.tensor(reference_sinkhorn((embeddings.reshape(-1, e) @ weight.t()).tolist(), 0.05, 5))
    assert torch.allclose(got, q.reshape(b, t, n, k)[:, 0].float(), atol=1e-5)
    first = TimeTuningObjective(sinkhorn_epsilon=0.05, sinkhorn_iterations=5)
    assert first.sinkhorn_frame_index(t) == [0]
    alone = first.first_frame_assignment(embeddings[:, :1], prototypes, 0)
    assert not torch.allclose(alone, got, atol=1e-3)


def test_target_statistics_count_prototypes_perplexity_and_agreement():
    """Targets of 6 patches over K=4: prototypes 0 (x3), 2 (x2), 3 (x1) -> 3 used; perplexity exp(H) of the
    shares (1/2, 1/3, 1/6); the student's argmax matches 4 of them."""
    targets = torch.tensor([[0, 0, 0, 2, 2, 3]])
    student = F.one_hot(torch.tensor([[0, 0, 1, 2, 1, 3]]), 4).float()  # argmax 0 0 1 2 1 3
    stats = TargetStatistics.of(targets, student)
    summary = TargetStatistics.summary(stats.as_tensor() * 2)  # two ranks with the same step add up
    entropy = -(0.5 * math.log(0.5) + math.log(1 / 3) / 3 + math.log(1 / 6) / 6)
    assert summary == pytest.approx({"prototypes_used": 3, "target_perplexity": math.exp(entropy),
                                     "agreement": 4 / 6})
