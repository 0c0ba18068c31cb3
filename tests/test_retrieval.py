"""The retrieval's neighbour searches against a brute-force numpy reference: exact and faiss find the same
neighbours, ScaNN (the reference's partitioned search) finds most of them with their exact similarities, and is
reproducible."""

import numpy as np
import pytest
import torch

from timetuning.eval.probes import retrieval_votes
from timetuning.eval.retrieval import (
    MIN_PATCHES_PER_LEAF,
    REFERENCE_SCANN,
    ExactSearch,
    FaissSearch,
    ScannSearch,
    ScannSetting,
    bank_search,
)
from timetuning.infra.config import FitProbesParams


def clustered(n: int, dim: int, centres: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).standard_normal((centres, dim))
    x = means[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(bank: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = queries.astype(np.float64) @ bank.T.astype(np.float64)
    rows = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, rows, 1), rows


def recall(rows: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(rows.tolist(), truth.tolist())]))


def test_exact_search_is_the_brute_force_top_k_in_any_chunking():
    bank, queries = clustered(3000, 16, 20, 0), clustered(300, 16, 20, 1)
    want_sims, want_rows = brute_force(bank, queries, 7)
    for chunk_scores in (3000 * 1, 3000 * 64, 2 ** 26):  # one query at a time, 64, all
        sims, rows = ExactSearch(torch.from_numpy(bank), scores_in_memory=chunk_scores).search(
            torch.from_numpy(queries), 7)
        np.testing.assert_array_equal(rows.numpy(), want_rows)
        np.testing.assert_allclose(sims.numpy(), want_sims, rtol=0, atol=1e-5)


def test_faiss_finds_the_exact_neighbours():
    pytest.importorskip("faiss")
    bank, queries = clustered(3000, 16, 20, 0), clustered(300, 16, 20, 1)
    want_sims, want_rows = brute_force(bank, queries, 7)
    sims, rows = FaissSearch(torch.from_numpy(bank)).search(torch.from_numpy(queries), 7)
    assert rows.dtype == torch.int64
    np.testing.assert_allclose(sims.numpy(), want_sims, rtol=0, atol=1e-5)
    assert recall(rows.numpy(), want_rows) == 1.0


@pytest.fixture(scope="module")
def scann_case():
    pytest.importorskip("scann")
    setting = ScannSetting(num_leaves=64, leaves_to_search=8, reorder=60)  # the reference's shape, a smaller tree
    bank, queries = clustered(64 * MIN_PATCHES_PER_LEAF, 24, 40, 0), clustered(2000, 24, 40, 1)
    return setting, bank, queries


def test_scann_finds_most_neighbours_with_their_exact_similarities(scann_case):
    setting, bank, queries = scann_case
    search = bank_search(torch.from_numpy(bank), "scann", 30, seed=0, setting=setting)
    assert isinstance(search, ScannSearch) and "ScaNN: tree of 64 leaves" in search.description
    sims, rows = search.search(torch.from_numpy(queries), 30)
    want_sims, want_rows = brute_force(bank, queries, 30)
    assert recall(rows.numpy(), want_rows) > 0.9
    # the re-ranked similarities are the exact inner products of the rows returned, largest first
    exact = np.einsum("qd,qkd->qk", queries.astype(np.float64), bank[rows.numpy()].astype(np.float64))
    np.testing.assert_allclose(sims.numpy(), exact, rtol=0, atol=1e-5)
    assert (np.diff(sims.numpy(), axis=1) <= 1e-6).all()
    assert (sims.numpy()[:, 0] <= want_sims[:, 0] + 1e-5).all()  # never better than the true nearest


def test_scann_is_reproducible_for_a_seed(scann_case):
    setting, bank, queries = scann_case
    runs = [ScannSearch(torch.from_numpy(bank), 30, seed=3, setting=setting).search(torch.from_numpy(queries), 30)
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0][1].numpy(), runs[1][1].numpy())
    np.testing.assert_array_equal(runs[0][0].numpy(), runs[1][0].numpy())


def test_scann_searches_a_small_bank_exactly_and_says_so():
    bank = torch.from_numpy(clustered(REFERENCE_SCANN.num_leaves * MIN_PATCHES_PER_LEAF - 1, 8, 5, 0))
    search = bank_search(bank, "scann", 30, seed=0)
    assert isinstance(search, ExactSearch)
    assert search.description.startswith("exact: a bank of 51,199 patches is under 100 per leaf")
    assert isinstance(bank_search(bank, "exact", 30, seed=0), ExactSearch)
    with pytest.raises(ValueError, match="hummingbird_search: 'annoy' is not one of scann, exact, faiss"):
        bank_search(bank, "annoy", 30, seed=0)


def test_votes_are_the_softmax_weighted_labels_of_the_searched_neighbours():
    bank = clustered(500, 8, 6, 0)
    labels = np.random.default_rng(2).dirichlet(np.ones(4), 500).astype(np.float32)
    feats = torch.from_numpy(clustered(2 * 9, 8, 6, 1)).reshape(2, 3, 3, 8).permute(0, 3, 1, 2)
    votes = retrieval_votes(torch.from_numpy(bank), torch.from_numpy(labels), feats, k=5, temperature=0.1)
    q = feats.permute(0, 2, 3, 1).reshape(-1, 8).numpy()
    sims, rows = brute_force(bank, q / np.linalg.norm(q, axis=1, keepdims=True), 5)
    w = np.exp((sims - sims[:, :1]) / 0.1)
    want = np.einsum("qk,qkc->qc", w / w.sum(1, keepdims=True), labels[rows])
    np.testing.assert_allclose(votes.permute(0, 2, 3, 1).reshape(-1, 4).numpy(), want, rtol=1e-4, atol=1e-6)


def test_the_search_is_a_validated_param():
    assert FitProbesParams().hummingbird_search == "scann"
    with pytest.raises(ValueError, match="hummingbird_search"):
        FitProbesParams(hummingbird_search="annoy")
