"""Ingest scale-out: `shard_videos` fans its per-video work out over a Dask cluster through Prefect's task runner.

Selected by `shard_videos.executor: dask` (address: `shard_videos.dask_address`, or a local cluster of
`shard_videos.workers` processes). The stage still runs under DVC, which still decides whether it must run; only
the per-video decoding moves to Dask workers. Results come back in video order, so the shards are byte-identical
to a local run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings
from prefect_dask import DaskTaskRunner

EPHEMERAL_START_S = 180


@task(name="video", cache_policy=NO_CACHE, persist_result=False, retries=1)
def _apply(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


def dask_mapper(address: str | None, workers: int) -> Callable[[Callable[[Any], Any], list[Any]], Iterator[Any]]:
    """An ordered map over Dask workers via a Prefect flow with a DaskTaskRunner."""
    if address:
        runner = DaskTaskRunner(address=address)
    else:
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": max(1, workers), "threads_per_worker": 1,
                                                "processes": True, "dashboard_address": None})

    @flow(name="shard-videos-on-dask", task_runner=runner, log_prints=True)
    def fan_out(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        futures = _apply.map([fn] * len(items), items)
        return [f.result() for f in futures]

    def mapper(fn: Callable[[Any], Any], items: list[Any]) -> Iterator[Any]:
        if PREFECT_API_URL.value():  # under the flow (or `timetuning serve`): the runs show in its UI
            yield from fan_out(fn, items)
            return
        # a plain `dvc repro`: Prefect starts a temporary server, which takes more than its default 20 s on a
        # busy machine
        with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: EPHEMERAL_START_S}):
            yield from fan_out(fn, items)

    return mapper
