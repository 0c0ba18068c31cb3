"""Where ingest's per-video work runs: one interface, an ordered map ``mapper(fn, items) -> results``.

- ``processes`` (default): a local process pool (``workers`` processes; 1 = in this process).
- ``dask``: the videos fan out over a Dask cluster through Prefect's ``DaskTaskRunner`` (a local cluster of
  ``workers`` processes, or an existing one at ``dask_address``); Prefect and Dask are imported only then. Started
  by the Prefect flow (or anything with ``PREFECT_API_URL`` set) the fan-out reports to that server; under a plain
  `dvc repro` one temporary server on 127.0.0.1 is started for the whole run and handed to the local workers
  (without it, every worker process would start a temporary server of its own).

Results come back in input order, so the shards are byte-identical whichever executor runs them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

Mapper = Callable[[Callable[..., Any], list[Any]], Iterator[Any]]
TEMPORARY_SERVER_START_S = 180  # a temporary Prefect server needs more than its default 20 s on a busy machine


def process_pool_mapper(workers: int) -> Mapper:
    """An ordered map over a local process pool (``workers`` processes; 1 = in this process)."""

    def mapper(fn: Callable[..., Any], items: list[Any]) -> Iterator[Any]:
        if workers <= 1:
            yield from map(fn, items)
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            yield from pool.map(fn, items, chunksize=1)

    return mapper


@contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API to report to: ``PREFECT_API_URL`` when set, else one temporary server on 127.0.0.1 for the
    duration (exported in the environment, so local Dask workers started inside report to it too)."""
    from prefect.settings import PREFECT_API_URL

    if url := PREFECT_API_URL.value():
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=TEMPORARY_SERVER_START_S)
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        from prefect.settings import temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        server.stop()


def dask_mapper(address: str | None, workers: int) -> Mapper:
    """An ordered map over Dask workers via a Prefect flow with a ``DaskTaskRunner``."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect_dask import DaskTaskRunner

    @task(name="video", cache_policy=NO_CACHE, persist_result=False, retries=1)
    def apply(fn: Callable[[Any], Any], item: Any) -> Any:
        return fn(item)

    def mapper(fn: Callable[[Any], Any], items: list[Any]) -> Iterator[Any]:
        with prefect_api():  # before the cluster starts: its local workers inherit the API address
            runner = DaskTaskRunner(address=address) if address else DaskTaskRunner(cluster_kwargs={
                "n_workers": max(1, workers), "threads_per_worker": 1, "processes": True, "dashboard_address": None})

            @flow(name="shard-videos-on-dask", task_runner=runner, log_prints=True)
            def fan_out(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
                futures = apply.map([fn] * len(items), items)
                return [f.result() for f in futures]

            yield from fan_out(fn, items)

    return mapper


def ingest_mapper(executor: str, workers: int, dask_address: str | None = None) -> Mapper:
    """The mapper of ``shard_videos.executor`` (``workers`` 0 = the number of CPU cores)."""
    workers = workers or os.cpu_count() or 1
    if executor == "dask":
        return dask_mapper(dask_address, workers)
    if executor == "processes":
        return process_pool_mapper(workers)
    raise ValueError(f"shard_videos.executor: unknown executor {executor!r} (processes or dask)")
