"""The Feature-Forwarder against a plain reference (loops over frames and patches) and hand-computable clips."""

import math

import torch

from timetuning.method.forwarder import propagate_assignments, propagate_step, window_mask


def reference_propagation(features: torch.Tensor, first: torch.Tensor, temperature: float, topk: int, radius: int,
                          context_frames: int) -> list[torch.Tensor]:
    """docs/method.md written out plainly: for each frame t >= 1 and each target patch, score every source patch of the
    context (frame 0 + the ``context_frames`` frames before t) inside the window, keep the top-k over all of them
    jointly, weight them by exp(similarity / temperature) normalised to 1, and average their labels."""
    t_len, _, h, w = features.shape
    f = features.double()
    f = f / f.norm(dim=1, keepdim=True)
    labels = [first.double()]
    for t in range(1, t_len):
        context = [0] + list(range(max(1, t - context_frames), t))
        out = torch.zeros_like(labels[0])
        for i in range(h):
            for j in range(w):
                candidates = []
                for c in context:
                    for si in range(h):
                        for sj in range(w):
                            if abs(si - i) <= radius and abs(sj - j) <= radius:
                                similarity = float(f[t, :, i, j] @ f[c, :, si, sj])
                                candidates.append((similarity, c, si, sj))
                candidates.sort(key=lambda item: -item[0])
                kept = candidates[:topk]
                weights = [math.exp(s / temperature) for s, *_ in kept]
                for weight, (_, c, si, sj) in zip(weights, kept):
                    out[:, i, j] += weight / sum(weights) * labels[c][:, si, sj]
        labels.append(out)
    return labels


def _video_like(t, d, h, w, noise=0.6, seed=0):
    """Frames of one scene with per-frame noise: every frame competes for every target patch."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, h, w, generator=g)
    return torch.stack([base + noise * torch.randn(d, h, w, generator=g) for _ in range(t)])


def _soft_labels(k, h, w, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(k, h, w, generator=g), 0)


def test_equals_the_plain_reference_on_ten_frames_where_the_context_queue_evicts():
    t, d, h, w, k = 10, 16, 5, 6, 4
    feats = _video_like(t, d, h, w)
    q0 = _soft_labels(k, h, w)
    got = propagate_assignments(feats[None], q0[None], temperature=0.1, topk=5, window_radius=2, context_frames=7)
    want = reference_propagation(feats, q0, temperature=0.1, topk=5, radius=2, context_frames=7)
    assert got.shape == (1, t, k, h, w)
    for frame in range(t):
        assert torch.allclose(got[0, frame].double(), want[frame], atol=2e-5), frame
    # the comparison can tell a wrong context length apart: the reference with 6 previous frames differs at t = 8, 9
    shorter = reference_propagation(feats, q0, temperature=0.1, topk=5, radius=2, context_frames=6)
    assert (shorter[9] - want[9]).abs().max() > 1e-3


def test_context_is_frame_zero_plus_seven_context_frames():
    """Clip A: frame 8 shows exactly frame 1 (other frames unrelated); at a near-zero temperature it copies frame 1's
    labels, because frame 1 is still among the 7 previous frames. Clip B: frame 9 shows frame 1, but by then frame 1
    has left the queue, so frame 9 cannot copy it. (Window 1 and top-3 make frame 1's labels differ from frame 0's.)"""
    t, d, h, w, k = 10, 64, 4, 4, 5
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, t, d, h, w, generator=g)
    feats[0, 8] = feats[0, 1]
    feats[1, 9] = feats[1, 1]
    q0 = torch.stack([_soft_labels(k, h, w, seed=4), _soft_labels(k, h, w, seed=5)])
    q = propagate_assignments(feats, q0, temperature=0.01, topk=3, window_radius=1, context_frames=7)
    assert (q[0, 1] - q0[0]).abs().max() > 0.1
    assert torch.allclose(q[0, 8], q[0, 1], atol=1e-6)
    assert (q[1, 9] - q[1, 1]).abs().max() > 0.1


def test_frame_zero_is_always_in_the_context():
    """Frame 9 shows exactly frame 0 (others unrelated): it copies frame 0's (Sinkhorn) labels, 9 frames later."""
    t, d, h, w, k = 10, 64, 3, 4, 5
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(t, d, h, w, generator=g)
    feats[9] = feats[0]
    q0 = _soft_labels(k, h, w, seed=6)
    q = propagate_assignments(feats[None], q0[None], temperature=0.01, topk=1, window_radius=0, context_frames=7)[0]
    assert torch.allclose(q[9], q0, atol=1e-6)


def test_propagates_a_known_translation_exactly():
    h, w, k = 8, 10, 5
    base = torch.nn.functional.normalize(torch.randn(64, h, w + 3, generator=torch.Generator().manual_seed(0)), dim=0)
    # the scene moves one patch right per frame: frame t, column j shows what frame 0 had at column j - t
    frames = torch.stack([base[:, :, 3 - t: 3 - t + w] for t in range(3)])  # [T, D, h, w]
    labels = torch.randint(0, k, (h, w), generator=torch.Generator().manual_seed(1))
    q0 = torch.nn.functional.one_hot(labels, k).permute(2, 0, 1).float()
    q = propagate_assignments(frames[None], q0[None], temperature=0.01, topk=1, window_radius=2)
    assert q.shape == (1, 3, k, h, w)
    for t in range(1, 3):
        assert torch.equal(q[0, t].argmax(0)[:, t:], labels[:, : w - t])


def test_window_radius_is_inclusive():
    """Identical features everywhere: only the window decides who contributes. Radius 1 reaches exactly one row and
    column away (so the corner's label reaches (1, 1) but never (2, 2))."""
    h, w, k = 6, 6, 2
    feats = torch.zeros(1, 2, 4, h, w)
    feats[:, :, 0] = 1.0
    q0 = torch.zeros(1, k, h, w)
    q0[0, 0] = 1.0
    q0[0, :, 0, 0] = torch.tensor([0.0, 1.0])  # the one patch of class 1 sits in a corner
    q = propagate_assignments(feats, q0, temperature=0.1, topk=36, window_radius=1)
    # (1, 1) averages its 9 window neighbours equally (identical features): the corner is one of them
    assert torch.isclose(q[0, 1, 1, 1, 1], torch.tensor(1 / 9))
    assert q[0, 1, 1, 0, 1] == q[0, 1, 1, 1, 0] == torch.tensor(1 / 6)  # edge patches: 6 neighbours
    assert torch.all(q[0, 1, 1, 2:, :] == 0) and torch.all(q[0, 1, 1, :, 2:] == 0)


def test_topk_is_joint_over_context_frames():
    """One target patch, two context frames. Frame A holds the two best matches (cos 0.9, 0.8), frame B only a worse
    one (0.5). Joint top-2 keeps both of frame A; a per-frame top-2 would mix in frame B's label."""
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # [N=2, D]: patch 0 is the one checked

    def unit(c):  # a unit vector with cosine c to the target
        return torch.tensor([c, math.sqrt(1 - c * c), 0.0])

    a = torch.stack([unit(0.9), unit(0.8)])
    b = torch.stack([unit(0.5), unit(0.4)])
    sources = torch.stack([a, b])[None]  # [B=1, C=2, N=2, D]
    labels = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])[None]
    window = torch.ones(2, 2, dtype=torch.bool)  # every target sees both source positions
    out = propagate_step(target[None], sources, labels, window, temperature=0.1, topk=2)[0, 0]
    e9, e8 = math.exp(9.0), math.exp(8.0)
    assert torch.allclose(out, torch.tensor([e9 / (e9 + e8), e8 / (e9 + e8), 0.0]), atol=1e-6)


def test_temperature_sharpens_the_weights():
    """Two candidates with cosines 0.9 and 0.8: weights exp(0.9/T), exp(0.8/T) normalised, for T = 0.1 and 0.2."""
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # patch 0 is the one checked
    sources = torch.tensor([[[[0.9, math.sqrt(1 - 0.81)], [0.8, 0.6]]]])
    labels = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    window = torch.ones(2, 2, dtype=torch.bool)
    for temperature in (0.1, 0.2):
        out = propagate_step(target, sources, labels, window, temperature=temperature, topk=2)[0, 0]
        p = 1 / (1 + math.exp(-0.1 / temperature))
        assert torch.allclose(out, torch.tensor([p, 1 - p]), atol=1e-6), temperature


def test_window_mask():
    m = window_mask(3, 4, 1)
    assert m.shape == (12, 12) and m[0, 0] and m[0, 5] and not m[0, 2] and not m[0, 8]
