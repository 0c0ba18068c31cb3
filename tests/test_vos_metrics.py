import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from timetuning.eval.vos_metrics import (
    ObjectScore,
    _hits,
    boundary_f_measure,
    boundary_map,
    boundary_radius,
    region_similarity,
    score_clip,
    summarize,
)


def _band(shape, top, bottom):
    """Full-width horizontal band of rows top..bottom (inclusive): its boundary is two straight lines."""
    m = np.zeros(shape, bool)
    m[top:bottom + 1] = True
    return m


def test_region_similarity_of_a_shifted_band_is_overlap_over_union():
    gt = _band((100, 100), 20, 39)  # 20 rows
    assert region_similarity(gt, _band((100, 100), 22, 41)) == pytest.approx(18 / 22)
    assert region_similarity(gt, gt) == 1.0
    assert region_similarity(gt, np.zeros_like(gt)) == 0.0
    assert region_similarity(np.zeros_like(gt), np.zeros_like(gt)) == 1.0  # DAVIS: both empty scores 1
    void = np.zeros_like(gt)
    void[:, :50] = True  # void pixels count neither in the intersection nor in the union
    assert region_similarity(gt, _band((100, 100), 22, 41), void) == pytest.approx(18 / 22)
    assert region_similarity(gt, gt & ~void) == pytest.approx(0.5)
    assert region_similarity(gt, gt & ~void, void) == 1.0


def test_boundary_map_is_seg2bmap():
    m = np.zeros((5, 5), bool)
    m[1:3, 1:3] = True
    expected = np.zeros((5, 5), bool)
    # half a pixel towards the origin: outside pixels above and left, inside pixels of the last row and column
    for r, c in [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0), (1, 2), (2, 1), (2, 2)]:
        expected[r, c] = True
    assert np.array_equal(boundary_map(m), expected)
    # an object touching the bottom/right border: no boundary along the border itself
    m = np.zeros((4, 4), bool)
    m[2:, 2:] = True
    expected = np.zeros((4, 4), bool)
    for r, c in [(1, 1), (1, 2), (1, 3), (2, 1), (3, 1)]:
        expected[r, c] = True
    assert np.array_equal(boundary_map(m), expected)
    assert not boundary_map(np.ones((4, 6), bool)).any()


def test_boundary_radius_is_the_ceiling_of_0_008_of_the_diagonal():
    assert boundary_radius((100, 100)) == 2  # 0.008 * 141.4 = 1.13
    assert boundary_radius((300, 400)) == 4  # 0.008 * 500 = 4.0 exactly
    assert boundary_radius((480, 854)) == 8  # DAVIS 480p: 0.008 * 979.6 = 7.84
    assert boundary_radius((480, 854), bound_th=3) == 3  # >= 1: a radius in pixels


def test_boundary_f_of_shifted_bands_follows_the_tolerance():
    gt = _band((100, 100), 20, 39)  # radius 2
    assert boundary_f_measure(gt, _band((100, 100), 22, 41)) == 1.0  # both lines 2 px off: all within the disk
    assert boundary_f_measure(gt, _band((100, 100), 23, 42)) == 0.0  # 3 px off: none
    # top line 1 px off (hit), bottom line 6 px off (miss): P = R = 1/2
    assert boundary_f_measure(gt, _band((100, 100), 21, 45)) == pytest.approx(0.5)
    # precision 1, recall 1/2 when the prediction's only boundary line lies on one of the ground truth's
    pred = _band((100, 100), 20, 99)  # touches the bottom: one line only
    assert boundary_f_measure(gt, pred) == pytest.approx(2 * 1 * 0.5 / 1.5)
    big = (300, 400)  # radius 4
    assert boundary_f_measure(_band(big, 50, 99), _band(big, 54, 103)) == 1.0
    assert boundary_f_measure(_band(big, 50, 99), _band(big, 55, 104)) == 0.0


def test_boundary_match_uses_a_disk_not_a_square():
    gt = np.zeros((100, 100), bool)
    pred = np.zeros((100, 100), bool)
    gt[50, 50] = True  # boundary: the 2x2 block rows 49-50, cols 49-50
    pred[52, 52] = True  # boundary: rows 51-52, cols 51-52
    # radius 2: only pred (51, 51) lies within 2 of gt (50, 50); (51, 52) is sqrt(5) away. P = R = 1/4
    assert boundary_f_measure(gt, pred) == pytest.approx(0.25)


def test_boundary_hits_equal_a_dense_disk_dilation():
    rng = np.random.default_rng(3)
    for radius in (0, 1, 2, 5, 8):
        yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
        disk = yy * yy + xx * xx <= radius * radius
        for _ in range(3):
            a, b = rng.random((2, 60, 90)) < rng.uniform(0.002, 0.05)
            dense = int(np.count_nonzero(ndimage.binary_dilation(b, structure=disk) & a))
            assert _hits(a, b, radius) == dense
    assert _hits(np.ones((5, 5), bool), np.zeros((5, 5), bool), 3) == 0


def test_empty_masks_follow_the_davis_conventions():
    empty, gt = np.zeros((40, 40), bool), _band((40, 40), 10, 20)
    assert boundary_f_measure(empty, empty) == 1.0
    assert boundary_f_measure(gt, empty) == 0.0  # P = 1, R = 0
    assert boundary_f_measure(empty, gt) == 0.0  # P = 0, R = 1
    void = np.zeros((40, 40), bool)
    void[5:30] = True  # the whole object lies in void: nothing left on either side
    assert boundary_f_measure(gt, empty, void) == 1.0


def test_score_clip_skips_the_first_and_last_frame_and_takes_objects_from_frame_0():
    gt = np.zeros((5, 100, 100), np.uint8)
    gt[:, 20:40] = 1
    gt[:, 60:70] = 2
    gt[0, 90:] = 255  # void in the first frame is not an object
    gt[1:, 80:85] = 3  # appears after the first frame: not an object of this clip (DAVIS takes frame 0's)
    pred = gt.copy()
    pred[1, 20:40] = 0  # object 1 lost in frame 1
    pred[2, 20:22] = 0
    pred[2, 22:42] = 1  # 2 rows off in frame 2: J = 18/22, F = 1
    pred[4] = 0  # the last frame is not scored
    scores = score_clip(gt, pred, "v", 0)
    assert [s.object_id for s in scores] == [1, 2]
    assert np.allclose(scores[0].j, [0.0, 18 / 22, 1.0]) and np.allclose(scores[0].f, [0.0, 1.0, 1.0])
    assert np.allclose(scores[1].j, 1.0) and np.allclose(scores[1].f, 1.0)
    last = score_clip(gt, pred, "v", 0, score_last_frame=True)
    assert last[0].j.shape == (4,) and last[0].j[-1] == 0.0
    with pytest.raises(ValueError, match="video 'w' clip 1: 2 frame"):
        score_clip(gt[:2], pred[:2], "w", 1)


def test_summary_is_the_mean_over_objects_of_per_object_means():
    objs = [ObjectScore("a", 1, np.array([1.0, 0.0]), np.array([1.0, 1.0])),  # J 0.5, F 1
            ObjectScore("a", 2, np.array([1.0, 1.0]), np.array([0.0, 0.0])),  # J 1, F 0
            ObjectScore("b", 1, np.array([0.0, 0.0, 0.6]), np.array([0.4, 0.4, 0.4]))]  # J 0.2, F 0.4
    s = summarize(objs)
    assert s.j_mean == pytest.approx((0.5 + 1 + 0.2) / 3)
    assert s.f_mean == pytest.approx(1.4 / 3)
    assert s.jf_mean == pytest.approx((1.7 / 3 + 1.4 / 3) / 2)
    assert s.j_recall == pytest.approx((0.5 + 1 + 1 / 3) / 3)
    assert s.num_objects == 3 and s.num_videos == 2
    assert s.per_video["a"]["j_mean"] == pytest.approx(0.75) and s.per_video["b"]["f_mean"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="no objects"):
        summarize([])


def _random_instance_video(rng, frames, shape, num_objects):
    """Smooth random blobs: every object present in every frame, moving and deforming a little."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros((frames, *shape), np.uint8)
    centres = rng.uniform([0.2 * shape[0], 0.2 * shape[1]], [0.8 * shape[0], 0.8 * shape[1]], (num_objects, 2))
    radii = rng.uniform(0.08, 0.2, num_objects) * min(shape)
    for t in range(frames):
        for k in range(num_objects):
            cy, cx = centres[k] + rng.normal(0, 2.0, 2) * t
            wobble = 1 + 0.25 * np.sin(rng.uniform(0, 6.3) + np.arctan2(yy - cy, xx - cx) * rng.integers(2, 5))
            out[t][(yy - cy) ** 2 + (xx - cx) ** 2 <= (radii[k] * wobble) ** 2] = k + 1
        for k in range(num_objects):  # keep every object visible (occluded ones get a small seed patch)
            if not (out[t] == k + 1).any():
                cy, cx = np.clip(centres[k], 2, np.array(shape) - 3).astype(int)
                out[t, cy - 2:cy + 3, cx - 2:cx + 3] = k + 1
    return out


def _corrupt(rng, masks):
    pred = masks.copy()
    for t in range(pred.shape[0]):
        noise = rng.random(pred.shape[1:]) < 0.02
        pred[t][noise] = rng.integers(0, masks.max() + 1, noise.sum())
        pred[t] = np.roll(pred[t], rng.integers(-4, 5, 2), axis=(0, 1))
    return pred


def test_agrees_with_the_vos_benchmark_package_on_random_masks(tmp_path):
    vos_benchmark = pytest.importorskip("vos_benchmark.benchmark")
    rng = np.random.default_rng(0)
    ours = []
    for v, (shape, n_obj) in enumerate([((48, 64), 2), ((61, 83), 3), ((90, 70), 1)]):
        gt = _random_instance_video(rng, 6, shape, n_obj)
        pred = _corrupt(rng, gt)
        for kind, arr in (("gt", gt), ("pred", pred)):
            folder = tmp_path / kind / f"video{v}"
            folder.mkdir(parents=True)
            for t, frame in enumerate(arr):
                Image.fromarray(frame).save(folder / f"{t:05d}.png")
        ours += score_clip(gt, pred, f"video{v}")
    jf, j, f, per_object = vos_benchmark.benchmark([str(tmp_path / "gt")], [str(tmp_path / "pred")],
                                                   num_processes=1, verbose=False)
    summary = summarize(ours)
    assert 0.2 < summary.j_mean < 0.95 and 0.2 < summary.f_mean < 0.95  # a non-trivial case
    assert summary.jf_mean * 100 == pytest.approx(jf[0], abs=1e-9)
    assert summary.j_mean * 100 == pytest.approx(j[0], abs=1e-9)
    assert summary.f_mean * 100 == pytest.approx(f[0], abs=1e-9)
    for obj in ours:  # and object by object
        iou, boundary = per_object[0][obj.video]
        assert obj.j_mean * 100 == pytest.approx(iou[obj.object_id], abs=1e-9)
        assert obj.f_mean * 100 == pytest.approx(boundary[obj.object_id], abs=1e-9)


def test_per_frame_agreement_with_the_vos_benchmark_evaluator():
    evaluator = pytest.importorskip("vos_benchmark.evaluator")
    rng = np.random.default_rng(1)
    gt = _random_instance_video(rng, 8, (120, 160), 3)
    pred = _corrupt(rng, gt)
    ev = evaluator.Evaluator()
    for t in range(1, 7):
        ev.feed_frame(pred[t], gt[t])
    for obj in score_clip(gt, pred, "v"):
        assert np.allclose(obj.j, ev.object_iou[obj.object_id], atol=1e-12)
        assert np.allclose(obj.f, ev.boundary_f[obj.object_id], atol=1e-12)
