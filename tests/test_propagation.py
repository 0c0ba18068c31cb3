import math

import numpy as np
import pytest
import torch
from PIL import Image

from timetuning.eval.propagation import (
    LabeledClip,
    evaluate_propagation,
    first_frame_labels,
    labels_to_mask,
    propagate_labels,
    propagate_masks,
)
from timetuning.infra.config import PropagationParams


def _unit(v):
    return torch.nn.functional.normalize(torch.as_tensor(v, dtype=torch.float32), dim=0)


def _random_scene(d, h, w, seed=0):
    """Random unit features, one per grid position: a patch matches only itself."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(d, h, w, generator=g), dim=0)


def _blocks(patch_mask, p):
    """A patch-level id map blown up to pixels: every patch becomes a p x p block."""
    return np.kron(np.asarray(patch_mask), np.ones((p, p), np.uint8)).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- a brute-force DINO
def _reference_propagation(feats, first, topk, radius, context, temperature):
    """DINO's label propagation written out patch by patch (float64): context = frame 0 + the last n frames."""
    t_all, _, h, w = feats.shape
    f = torch.nn.functional.normalize(feats.double(), dim=1)
    labels = [first.double()]
    for t in range(1, t_all):
        context_ids = [0, *range(max(1, t - context), t)]
        new = torch.zeros_like(labels[0])
        for i in range(h):
            for j in range(w):
                cands = []
                for c in context_ids:
                    for a in range(h):
                        for b in range(w):
                            if abs(a - i) <= radius and abs(b - j) <= radius:
                                affinity = math.exp(float(f[t, :, i, j] @ f[c, :, a, b]) / temperature)
                                cands.append((affinity, labels[c][:, a, b]))
                cands.sort(key=lambda x: -x[0])
                kept = cands[:topk]
                total = sum(a for a, _ in kept)
                new[:, i, j] = sum(a / total * lab for a, lab in kept)
        labels.append(new)
    return torch.stack(labels)


@pytest.mark.parametrize("topk,radius,context,temperature", [(5, 1, 2, 0.1), (3, 0, 0, 0.5), (100, 5, 7, 0.07),
                                                             (2, 2, 1, 0.2)])
def test_matches_a_brute_force_dino_propagation(topk, radius, context, temperature):
    t, d, h, w = 6, 8, 3, 4
    g = torch.Generator().manual_seed(topk + radius)
    feats = torch.randn(t, d, h, w, generator=g)
    mask = torch.randint(0, 3, (h, w), generator=g).numpy().astype(np.uint8)
    first, ids = first_frame_labels(mask, (h, w))
    params = PropagationParams(topk=topk, window_radius=radius, context_frames=context, temperature=temperature)
    got = propagate_labels(feats, first, params)
    want = _reference_propagation(feats, first, topk, radius, context, temperature)
    assert got.shape == (t, len(ids), h, w)
    assert torch.allclose(got.double(), want, atol=1e-5)


# ------------------------------------------------------------------------------------------- hand-built cases
def _line_world(num_cols, dim=32):
    """A 1-row world: background vector per column (all alike, each closest to itself) and an object vector
    orthogonal to every background."""
    eye = torch.eye(dim)
    common = eye[0]
    backgrounds = [_unit(common + 0.3 * eye[1 + c]) for c in range(num_cols)]
    return backgrounds, eye[-1]


def _line_frames(object_cols, num_cols=12):
    """Frames ``[T, D, 1, num_cols]``: the static background, the object at ``object_cols[t]`` (None = absent)."""
    backgrounds, obj = _line_world(num_cols)
    frames = []
    for col in object_cols:
        cols = [obj if c == col else backgrounds[c] for c in range(num_cols)]
        frames.append(torch.stack(cols, 1)[:, None, :])
    return torch.stack(frames)


def _object_share(feats, object_col0, params):
    first = np.zeros((1, feats.shape[-1]), np.uint8)
    first[0, object_col0] = 1
    labels, ids = first_frame_labels(first, (1, feats.shape[-1]))
    assert ids == [0, 1]
    return propagate_labels(feats, labels, params)[:, 1, 0]  # [T, cols]: the object channel


def test_window_radius_bounds_how_far_a_label_can_jump():
    params = PropagationParams(window_radius=2, topk=1)
    found = _object_share(_line_frames([1, 3]), 1, params)
    assert found[1, 3] == pytest.approx(1.0) and found[1].sum() == pytest.approx(1.0)
    lost = _object_share(_line_frames([1, 4]), 1, params)  # 3 columns away: outside the window
    assert lost[1].abs().sum() == 0
    wider = _object_share(_line_frames([1, 4]), 1, PropagationParams(window_radius=3, topk=1))
    assert wider[1, 4] == pytest.approx(1.0)


def test_context_is_the_first_frame_and_the_last_n_frames():
    # the object steps 2 columns per frame (radius 2), vanishes for frames 3-4 and reappears in frame 5 where it
    # was in frame 2: only a context that still holds frame 2 recognises it; frame 0's object is too far
    cols = [2, 4, 6, None, None, 6]
    feats = _line_frames(cols)
    share = {n: _object_share(feats, 2, PropagationParams(window_radius=2, topk=1, context_frames=n))
             for n in (0, 1, 2, 3)}
    assert share[0][1, 4] == pytest.approx(1.0)  # frame 1 sees frame 0's object 2 columns away
    assert share[0][2].abs().sum() == 0  # frame 2 sees frame 0 only: 4 columns away, lost
    assert share[1][2, 6] == pytest.approx(1.0)  # with the last frame in context it is tracked
    assert share[2][5].abs().sum() == 0  # frame 5 sees frames 0, 3, 4: no object in reach
    assert share[3][5, 6] == pytest.approx(1.0)  # frame 5 sees frames 0, 2, 3, 4: frame 2 still holds it
    assert share[3][3].abs().sum() == 0 and share[3][4].abs().sum() == 0  # absent frames stay background


def test_topk_keeps_the_k_most_similar_sources_weighted_by_exp_cosine_over_temperature():
    eye = torch.eye(6)
    u = _unit(0.9 * eye[0] + math.sqrt(1 - 0.81) * eye[1])  # cosine 0.9 with the target
    v = _unit(0.8 * eye[0] + 0.6 * eye[2])  # 0.8
    w = _unit(0.1 * eye[0] + math.sqrt(0.99) * eye[3])  # 0.1
    frame0 = torch.stack([u, v, w], 1)[:, None, :]
    frame1 = torch.stack([eye[0], v, w], 1)[:, None, :]
    feats = torch.stack([frame0, frame1])
    first = np.array([[1, 2, 0]], np.uint8)  # channels: ids 0, 1, 2
    labels, ids = first_frame_labels(first, (1, 3))
    assert ids == [0, 1, 2]

    def target(topk, temperature=0.1):
        p = PropagationParams(topk=topk, temperature=temperature, window_radius=5)
        return propagate_labels(feats, labels, p)[1, :, 0, 0].double()

    e9, e8, e1 = math.exp(9), math.exp(8), math.exp(1)
    assert torch.allclose(target(1), torch.tensor([0.0, 1.0, 0.0], dtype=torch.double), atol=1e-6)
    assert torch.allclose(target(2), torch.tensor([0.0, e9, e8], dtype=torch.double) / (e9 + e8), atol=1e-6)
    assert torch.allclose(target(3), torch.tensor([e1, e9, e8], dtype=torch.double) / (e1 + e9 + e8), atol=1e-6)
    sigma = 1 / (1 + math.exp(-0.1 / 0.05))  # temperature 0.05: the same two sources, sharper weights
    assert torch.allclose(target(2, 0.05), torch.tensor([0.0, sigma, 1 - sigma], dtype=torch.double), atol=1e-6)


def test_first_frame_goes_to_the_grid_by_pil_nearest_with_void_unlabelled():
    rng = np.random.default_rng(0)
    mask = rng.choice(np.array([0, 3, 7, 255], np.uint8), size=(37, 53))
    labels, ids = first_frame_labels(mask, (5, 7))
    assert ids == [0, 3, 7]
    pil = np.array(Image.fromarray(mask).resize((7, 5), Image.NEAREST))  # what DINO does
    for c, i in enumerate(ids):
        assert torch.equal(labels[c], torch.from_numpy(pil == i).float())
    assert torch.equal(labels.sum(0) == 0, torch.from_numpy(pil == 255))  # void patches carry no label


def test_upsampling_modes_on_a_one_patch_object():
    soft = torch.zeros(2, 3, 3)
    soft[0] = 1.0
    soft[:, 1, 1] = torch.tensor([0.0, 1.0])  # object in the centre patch; 4 px per patch
    block = np.zeros((12, 12), np.int64)
    block[4:8, 4:8] = 5
    ids = [0, 5]
    nearest = labels_to_mask(soft, ids, (12, 12), PropagationParams(upsampling="nearest"))
    assert np.array_equal(nearest, block)
    # bilinear: the object's value at a pixel is a(y) a(x) with a = 0.625 or 0.875 inside the block, so the four
    # corners (0.39) lose to the background (0.61) ...
    plain = labels_to_mask(soft, ids, (12, 12), PropagationParams(rescale_per_object=False))
    corners = block.copy()
    corners[[4, 4, 7, 7], [4, 7, 4, 7]] = 0
    assert np.array_equal(plain, corners)
    # ... unless each map is min-max rescaled first (DINO's norm_mask): 0.39 / 0.766 beats (0.766 - 0.39) / 0.766
    assert np.array_equal(labels_to_mask(soft, ids, (12, 12), PropagationParams()), block)
    # where nothing carries a label (void everywhere) every map is 0: the tie goes to the background
    assert not labels_to_mask(torch.zeros(2, 3, 3), ids, (12, 12), PropagationParams()).any()


# ------------------------------------------------------------------------------------------- whole clips, J and F
def _translating_clip(frames=6, h=6, w=10, p=8, d=24):
    """A circular scene moving one patch to the right per frame; features follow it exactly."""
    scene = _random_scene(d, h, w)
    objects = np.zeros((h, w), np.uint8)
    objects[:, 1] = 2  # a full-height band: no corners for the upsampling to round
    objects[:, 3:5] = 7
    feats = torch.stack([torch.roll(scene, t, dims=2) for t in range(frames)])
    masks = np.stack([_blocks(np.roll(objects, t, axis=1), p) for t in range(frames)])
    return feats, masks


def test_translating_objects_with_matching_features_score_j_f_one():
    feats, masks = _translating_clip()
    pred = propagate_masks(feats, masks[0])  # DINO's defaults: bilinear, rescaled
    assert pred.dtype == np.uint8 and np.array_equal(pred, masks)
    result = evaluate_propagation([LabeledClip("walk", feats.half(), masks)])
    assert result.summary.jf_mean == 1.0 and result.summary.j_mean == 1.0 and result.summary.f_mean == 1.0
    assert [(o.object_id, len(o.j)) for o in result.objects] == [(2, 4), (7, 4)]  # frames 1-4 scored


def test_rectangles_with_matching_features_are_exact_with_nearest_upsampling():
    feats, _ = _translating_clip()
    rect = np.zeros((6, 10), np.uint8)
    rect[1:4, 2:4] = 1
    masks = np.stack([_blocks(np.roll(rect, t, axis=1), 8) for t in range(6)])
    pred = propagate_masks(feats, masks[0], PropagationParams(upsampling="nearest"))
    assert np.array_equal(pred, masks)


def test_static_features_and_a_moving_mask_give_the_j_and_f_of_the_shift():
    # the features say nothing moves, the ground truth band moves down 1 px per frame: the prediction stays put
    t, grid = 5, 10
    feats = _random_scene(16, grid, grid)[None].repeat(t, 1, 1, 1)
    masks = np.zeros((t, 100, 100), np.uint8)
    for i in range(t):
        masks[i, 20 + i: 40 + i] = 1  # 20 rows; frame 0's band is patch-aligned
    result = evaluate_propagation([LabeledClip("still", feats, masks)])
    (obj,) = result.objects
    # frames 1-3 (DAVIS skips the last): shifts of 1, 2, 3 px; J = (20 - s) / (20 + s); the 100 x 100 image's
    # boundary tolerance is ceil(0.008 * 141.4) = 2 px, so F = 1, 1, 0
    assert np.allclose(obj.j, [19 / 21, 18 / 22, 17 / 23]) and np.allclose(obj.f, [1, 1, 0])
    assert result.summary.j_mean == pytest.approx((19 / 21 + 18 / 22 + 17 / 23) / 3)
    assert result.summary.f_mean == pytest.approx(2 / 3)
    assert np.array_equal(result.examples[0].predicted, np.repeat(masks[:1], t, 0))


def test_protocol_numbers_clips_keeps_examples_and_skips_clips_without_objects():
    feats, masks = _translating_clip(frames=4)
    empty = np.zeros_like(masks)
    clips = [("a", feats, masks), ("a", feats, masks), ("b", feats, empty), ("c", feats, masks)]
    result = evaluate_propagation(clips, num_examples=5)
    assert [(o.video, o.clip) for o in result.objects] == [("a", 0), ("a", 0), ("a", 1), ("a", 1), ("c", 0),
                                                            ("c", 0)]
    assert result.skipped == ["video 'b' clip 0: no object in the first frame"]
    assert [(e.video, e.clip) for e in result.examples] == [("a", 0), ("c", 0)]
    assert list(result.by_video()) == ["a", "c"] and result.summary.per_video["a"]["num_objects"] == 4
    with pytest.raises(ValueError, match="video 'x' clip 0: features .* masks"):
        evaluate_propagation([("x", feats[:3], masks)])
    with pytest.raises(ValueError, match="video 'y' clip 0: 2 frame"):
        evaluate_propagation([("y", feats[:2], masks[:2])])
