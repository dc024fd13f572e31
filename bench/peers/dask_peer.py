"""Dask distributed: ``LocalCluster`` with 2 worker processes (1 thread each).

Idioms: ``client.submit(...).result()`` per hop for the chain, ``client.map``
then a ``submit`` over the futures for map-reduce, and a task that opens a
``worker_client()`` to submit its children for the dynamic fan-out. The
scheduler lives in this process (LocalCluster's default), so the cluster's
memory is this process plus its nannies and workers. Nothing is persisted.
"""

from __future__ import annotations

import random
import time
from typing import Any

from benchlib import Engine, NotApplicable, main


def hello() -> str:
    return "hello"


def inc(x: int) -> int:
    return x + 1


def item(x: int) -> int:
    return x


def total(values: list[int]) -> int:
    return sum(values)


def fan_child(i: int) -> int:
    return i


def fan_count(values: list[int]) -> int:
    return len(values)


def fan_decider(seed: int, most: int) -> int:
    from distributed import worker_client

    n = random.Random(seed).randint(0, most)  # inlined: workers do not import benchlib
    with worker_client() as client:
        children = client.map(fan_child, range(n), pure=False)
        return int(client.submit(fan_count, children, pure=False).result())


class Dask(Engine):
    def __init__(self) -> None:
        super().__init__(name="dask", durable="no: the scheduler's state is in memory; a "
                         "crash loses every running graph")
        self.cluster: Any = None
        self.client: Any = None

    def version(self) -> str:
        import distributed

        return f"distributed {distributed.__version__}"

    def start(self) -> None:
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                    host="127.0.0.1", dashboard_address=None)
        self.client = Client(self.cluster)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def hello(self) -> Any:
        return self.client.submit(hello, pure=False).result()

    def chain(self, hops: int) -> list[float]:
        x, laps = 0, []
        for _ in range(hops):
            started = time.perf_counter()
            x = self.client.submit(inc, x, pure=False).result()
            laps.append(time.perf_counter() - started)
        assert x == hops
        return laps

    def run_map_reduce(self, n: int) -> int:
        mapped = self.client.map(item, range(n), pure=False)
        return self.client.submit(total, mapped, pure=False).result()

    def run_fanout(self, seed: int, most: int) -> int:
        return self.client.submit(fan_decider, seed, most, pure=False).result()

    def steps(self, n: int) -> float:
        raise NotApplicable("Dask records nothing durably")


if __name__ == "__main__":
    main(Dask, __file__)
