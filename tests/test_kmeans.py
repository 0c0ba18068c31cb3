import numpy as np
import pytest
import torch

from timetuning.eval.kmeans import batched_kmeans, squared_distances


def _blobs(seed, centres, n_per, spread=0.05):
    rng = np.random.default_rng(seed)
    centres = np.asarray(centres, np.float32)
    labels = np.repeat(np.arange(len(centres)), n_per)
    points = centres[labels] + rng.normal(0, spread, (labels.size, centres.shape[1]))
    return torch.from_numpy(points.astype(np.float32)), labels


def _partition_equal(a, b):
    """Same partition up to renaming of the clusters."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def _assign(points, centroids, k):
    return squared_distances(points[None], centroids[None, :k])[0].argmin(-1)


def test_separated_blobs_of_different_problems_in_one_batch():
    a, la = _blobs(0, [[0, 0], [5, 5], [0, 5]], 20)  # 60 points, 3 clusters
    b, lb = _blobs(1, [[10, 0], [-10, 0]], 15)  # 30 points, 2 clusters
    points = torch.zeros(2, 60, 2)
    points[0], points[1, :30] = a, b
    valid = torch.zeros(2, 60, dtype=torch.bool)
    valid[0], valid[1, :30] = True, True
    res = batched_kmeans(points, valid, torch.tensor([3, 2]), iterations=50, restarts=3, seeds=[7, 8])
    assert res.k.tolist() == [3, 2]
    assert _partition_equal(_assign(a, res.centroids[0], 3).numpy(), la)
    assert _partition_equal(_assign(b, res.centroids[1], 2).numpy(), lb)
    assert (res.centroids[1, 2] == 0).all()  # the unused slot stays empty


def test_result_is_a_lloyd_fixed_point_and_inertia_is_its_cost():
    """Brute force: each centroid is the mean of the points nearest to it, and the inertia is the sum of the
    squared distances to the nearest centroid (a random, unstructured set: many iterations needed)."""
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(200, 5)).astype(np.float32))
    res = batched_kmeans(x[None], torch.ones(1, 200, dtype=torch.bool), torch.tensor([6]), iterations=300,
                         restarts=2, seeds=[0])
    c = res.centroids[0].double()
    d2 = ((x.double()[:, None, :] - c[None]) ** 2).sum(-1)
    nearest = d2.argmin(1)
    for j in range(6):
        members = x.double()[nearest == j]
        assert len(members) > 0
        torch.testing.assert_close(c[j], members.mean(0), rtol=1e-4, atol=1e-4)
    assert res.inertia[0].item() == pytest.approx(d2.min(1).values.sum().item(), rel=1e-4)


def test_best_of_restarts_is_kept_and_seeded():
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.normal(size=(120, 3)).astype(np.float32))[None]
    valid = torch.ones(1, 120, dtype=torch.bool)
    singles = [batched_kmeans(x, valid, torch.tensor([5]), restarts=1, seeds=[s]).inertia.item() for s in range(4)]
    # restarts r of a seed are the initialisations (seed, 0..r-1): 4 restarts keep the best of them
    four = batched_kmeans(x, valid, torch.tensor([5]), restarts=4, seeds=[11])
    again = batched_kmeans(x, valid, torch.tensor([5]), restarts=4, seeds=[11])
    assert torch.equal(four.centroids, again.centroids)
    one_each = [batched_kmeans(x, valid, torch.tensor([5]), restarts=r, seeds=[11]).inertia.item() for r in (1, 2, 3)]
    # (float32 sums of ~100: the same run's inertia rounds differently beside 1, 2 or 3 other runs)
    assert four.inertia.item() <= min(one_each) * (1 + 1e-6)
    assert all(b <= a * (1 + 1e-6) for a, b in zip(one_each, one_each[1:]))
    assert len(set(round(s, 4) for s in singles)) > 1  # different seeds really give different runs


def test_a_problem_does_not_depend_on_its_batch_mates():
    a, _ = _blobs(5, [[0, 0], [3, 3], [0, 3]], 10, spread=1.0)
    alone = batched_kmeans(a[None], torch.ones(1, 30, dtype=torch.bool), torch.tensor([3]), seeds=[42])
    other, _ = _blobs(6, [[9, 9]], 40, spread=2.0)
    points = torch.zeros(2, 40, 2)
    points[0, :30], points[1] = a, other
    valid = torch.zeros(2, 40, dtype=torch.bool)
    valid[0, :30], valid[1] = True, True
    batched = batched_kmeans(points, valid, torch.tensor([3, 4]), seeds=[42, 1])
    torch.testing.assert_close(batched.centroids[0, :3], alone.centroids[0])


def test_k_is_capped_by_the_points_and_empty_clusters_are_relocated():
    x = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [4.0, 0.0]]])
    res = batched_kmeans(x, torch.ones(1, 4, dtype=torch.bool), torch.tensor([9]), seeds=[0])
    assert res.k.tolist() == [4]
    # three identical points and one apart: every point sits on a centroid, both locations are centroids
    assert res.inertia.item() == pytest.approx(0.0)
    assert {tuple(c) for c in res.centroids[0].tolist()} == {(0.0, 0.0), (4.0, 0.0)}
