"""Nearest-neighbour search of the Hummingbird memory bank (cosine similarity: bank and queries are L2-normalised,
so the inner product is the cosine), by one of three searches:

- ``scann``, as open-hummingbird-eval searches by default (its ``nn_method="scann"``): a k-means tree of 512
  leaves over the bank, the 32 leaves nearest a query searched with asymmetric-hashing scores (2 dimensions per
  block, anisotropic quantization threshold 0.2), and the best 120 candidates re-ranked by their exact inner
  product, of which the top k are kept. The reference's call reads ``score_ah(2, ...,
  dimensions_per_block=4)``; ScaNN's builder lets the positional 2 win, so 2 is what it ran with and what this
  runs. One departure, for reproducibility: the tree's centres start from seeded k-means++ (ScaNN's random
  initialisation takes no seed, and two builds on the same bank gave different neighbours), the seed being the
  bank's. A bank of fewer than ``MIN_PATCHES_PER_LEAF`` patches per leaf is searched exactly instead (said so
  in the results): a tree of 512 leaves over it would be mostly empty leaves, and exact search of it is cheap.
- ``exact``: every bank patch scored, one matrix product per chunk of queries (torch; on the GPU when there is
  one).
- ``faiss``: exact too, faiss's flat inner-product index (on a GPU when faiss has one, as the reference's faiss path
  is); same neighbours as ``exact`` up to the order of equal scores.

Every search returns, per query, the k largest similarities (exact inner products, largest first) and their bank
rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SEARCHES = ("scann", "exact", "faiss")


@dataclass(frozen=True)
class ScannSetting:
    """The partitioned search's settings (defaults: open-hummingbird-eval's)."""

    num_leaves: int = 512
    leaves_to_search: int = 32
    dimensions_per_block: int = 2
    quantization_threshold: float = 0.2
    reorder: int = 120

    def describe(self) -> str:
        return (f"ScaNN: tree of {self.num_leaves} leaves (seeded k-means++), {self.leaves_to_search} searched, "
                f"asymmetric hashing ({self.dimensions_per_block} dims per block, anisotropic threshold "
                f"{self.quantization_threshold}), top {self.reorder} re-ranked exactly")


REFERENCE_SCANN = ScannSetting()
MIN_PATCHES_PER_LEAF = 100


class BankSearch:
    """The k nearest bank rows of a batch of queries."""

    description: str

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``queries [Q, D]`` (normalised) -> similarities ``[Q, k]`` (largest first) and bank rows ``[Q, k]``."""
        raise NotImplementedError


class ExactSearch(BankSearch):
    """Every bank row scored, in chunks of at most ``scores_in_memory`` query x bank similarities (256 MiB: a
    100,000-patch bank takes 671 queries at a time; 64 MiB chunks of 167 were 1.28x slower), whatever its size."""

    description = "exact: every bank patch scored (torch)"

    def __init__(self, bank: torch.Tensor, scores_in_memory: int = 2 ** 26):
        self.bank, self.scores_in_memory = bank, scores_in_memory

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        queries = queries.to(self.bank.device)
        chunk = max(1, self.scores_in_memory // max(self.bank.shape[0], 1))
        tops, rows = [], []
        for i in range(0, queries.shape[0], chunk):
            top, row = (queries[i:i + chunk] @ self.bank.t()).topk(k, dim=1)
            tops.append(top)
            rows.append(row)
        return torch.cat(tops), torch.cat(rows)


class FaissSearch(BankSearch):
    """faiss's exact inner-product index (``IndexFlatIP``), moved to the GPU when faiss sees one."""

    def __init__(self, bank: torch.Tensor):
        import faiss

        index = faiss.IndexFlatIP(bank.shape[1])
        self.gpu = faiss.get_num_gpus() > 0 if hasattr(faiss, "get_num_gpus") else False
        if self.gpu:  # pragma: no cover - needs faiss-gpu and a GPU
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(np.ascontiguousarray(bank.cpu().numpy(), np.float32))
        self.index = index
        self.description = f"faiss: exact inner-product index (IndexFlatIP, {'GPU' if self.gpu else 'CPU'})"

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        sims, rows = self.index.search(np.ascontiguousarray(queries.cpu().numpy(), np.float32), k)
        return torch.from_numpy(sims), torch.from_numpy(rows.astype(np.int64))


class ScannSearch(BankSearch):
    """ScaNN's partitioned search with exact re-ranking (:class:`ScannSetting`), its tree seeded by ``seed``."""

    def __init__(self, bank: torch.Tensor, k: int, seed: int, setting: ScannSetting = REFERENCE_SCANN):
        from scann.scann_ops.py import scann_ops_pybind

        data = np.ascontiguousarray(bank.cpu().numpy(), np.float32)
        builder = scann_ops_pybind.builder(data, k, "dot_product").tree(
            num_leaves=setting.num_leaves, num_leaves_to_search=setting.leaves_to_search,
            training_sample_size=len(data), random_init=False).score_ah(
            setting.dimensions_per_block, anisotropic_quantization_threshold=setting.quantization_threshold).reorder(
            setting.reorder)
        config = builder.create_config()
        if "partitioning {" not in config:  # pragma: no cover - a ScaNN whose config text changed
            raise RuntimeError("ScaNN's config has no partitioning block to seed")
        config = config.replace("partitioning {", f"partitioning {{\n        clustering_seed: {seed}", 1)
        self.searcher = scann_ops_pybind.create_searcher(data, config)
        self.description = setting.describe()

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows, sims = self.searcher.search_batched_parallel(np.ascontiguousarray(queries.cpu().numpy(), np.float32),
                                                           final_num_neighbors=k)
        return torch.from_numpy(np.asarray(sims, np.float32)), torch.from_numpy(np.asarray(rows, np.int64))


def bank_search(bank: torch.Tensor, mode: str, k: int, seed: int,
                setting: ScannSetting = REFERENCE_SCANN) -> BankSearch:
    """The search ``mode`` (one of :data:`SEARCHES`) over ``bank [N, D]`` (normalised rows); ``scann`` searches a
    bank of fewer than ``MIN_PATCHES_PER_LEAF`` patches per leaf exactly, and says so in its description."""
    if mode == "exact":
        return ExactSearch(bank)
    if mode == "faiss":
        return FaissSearch(bank)
    if mode != "scann":
        raise ValueError(f"hummingbird_search: {mode!r} is not one of {', '.join(SEARCHES)}")
    if bank.shape[0] < setting.num_leaves * MIN_PATCHES_PER_LEAF:
        exact = ExactSearch(bank)
        exact.description = (f"exact: a bank of {bank.shape[0]:,} patches is under {MIN_PATCHES_PER_LEAF} per "
                             f"leaf of ScaNN's {setting.num_leaves}-leaf tree, so every patch is scored")
        return exact
    return ScannSearch(bank, k, seed, setting)
