import torch

from timetuning.forwarder import propagate_assignments, propagate_step, window_mask


def _features_with_identity(h, w, d=64, seed=0):
    """Random unit features, one per grid position: a patch matches only itself."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(d, h, w, generator=g), dim=0)


def test_propagates_a_known_translation_exactly():
    h, w, k = 8, 10, 5
    base = _features_with_identity(h, w + 3)
    # the scene moves one patch right per frame: frame t, column j shows what frame 0 had at column j - t
    frames = torch.stack([base[:, :, 3 - t: 3 - t + w] for t in range(3)])  # [T, D, h, w]
    labels = torch.randint(0, k, (h, w), generator=torch.Generator().manual_seed(1))
    q0 = torch.nn.functional.one_hot(labels, k).permute(2, 0, 1).float()
    q = propagate_assignments(frames[None], q0[None], temperature=0.01, topk=1, window_radius=2)
    assert q.shape == (1, 3, k, h, w)
    for t in range(1, 3):
        got = q[0, t].argmax(0)
        # frame t column j shows what frame 0 had at column j - t
        assert torch.equal(got[:, t:], labels[:, : w - t])


def test_patch_outside_the_window_never_contributes():
    h, w, k = 6, 6, 2
    feats = torch.zeros(1, 2, 4, h, w)
    feats[:, :, 0] = 1.0  # every patch identical: only the window decides who may contribute
    q0 = torch.zeros(1, k, h, w)
    q0[0, 0] = 1.0
    q0[0, :, 0, 0] = torch.tensor([0.0, 1.0])  # the one patch of class 1 sits in a corner
    q = propagate_assignments(feats, q0, temperature=0.1, topk=36, window_radius=1)
    far = q[0, 1, 1, 3:, 3:]  # patches more than 1 row/col away from the corner
    assert torch.all(far == 0)
    assert q[0, 1, 1, 0, 0] > 0 and q[0, 1, 1, 1, 1] > 0


def test_topk_is_joint_over_context_frames_and_rows_sum_to_one():
    n, d, k = 4, 8, 3
    g = torch.Generator().manual_seed(0)
    target = torch.nn.functional.normalize(torch.randn(1, n, d, generator=g), dim=-1)
    sources = torch.stack([target[0] * 0 + torch.randn(n, d, generator=g), target[0]], 0)[None]
    sources = torch.nn.functional.normalize(sources, dim=-1)
    qs = torch.softmax(torch.randn(1, 2, n, k, generator=g), -1)
    out = propagate_step(target, sources, qs, window_mask(2, 2, 5), temperature=0.001, topk=1)
    # with a near-zero temperature and top-1 the best match is the identical patch in the second context frame
    assert torch.allclose(out[0], qs[0, 1], atol=1e-4)
    assert torch.allclose(out.sum(-1), torch.ones(1, n), atol=1e-5)


def test_window_mask():
    m = window_mask(3, 4, 1)
    assert m.shape == (12, 12) and m[0, 0] and m[0, 5] and not m[0, 2] and not m[0, 8]
