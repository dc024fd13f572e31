"""Ray: a local ``ray.init(num_cpus=2)`` on 127.0.0.1, no dashboard.

Idioms: ``ray.get(inc.remote(x))`` per hop for the chain, one remote call per
item and a ``total.remote(*refs)`` for map-reduce, and a remote task that
launches its children and ``ray.get``s a count over them for the dynamic
fan-out. ``ray.init`` starts GCS, the raylet and the workers as descendants of
this (driver) process, which the memory figure includes. Task state lives in
memory (lineage reconstruction re-runs lost objects, but a driver or GCS crash
loses the job).
"""

from __future__ import annotations

import random
import time
from typing import Any

import ray
from benchlib import Engine, NotApplicable, main


@ray.remote
def hello() -> str:
    return "hello"


@ray.remote
def inc(x: int) -> int:
    return x + 1


@ray.remote
def item(x: int) -> int:
    return x


@ray.remote
def total(*values: int) -> int:
    return sum(values)


@ray.remote
def fan_child(i: int) -> int:
    return i


@ray.remote
def fan_count(*values: int) -> int:
    return len(values)


@ray.remote
def fan_decider(seed: int, most: int) -> int:
    n = random.Random(seed).randint(0, most)  # inlined: workers do not import benchlib
    children = [fan_child.remote(i) for i in range(n)]
    return int(ray.get(fan_count.remote(*children)))


class Ray(Engine):
    def __init__(self) -> None:
        super().__init__(name="ray", durable="no: the object store and task table are in "
                         "memory; lost objects are rebuilt from lineage, but a driver or "
                         "GCS crash loses the job")

    def version(self) -> str:
        return f"ray {ray.__version__}"

    def start(self) -> None:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1", configure_logging=False)

    def stop(self) -> None:
        ray.shutdown()

    def hello(self) -> Any:
        return ray.get(hello.remote())

    def chain(self, hops: int) -> list[float]:
        x, laps = 0, []
        for _ in range(hops):
            started = time.perf_counter()
            x = ray.get(inc.remote(x))
            laps.append(time.perf_counter() - started)
        assert x == hops
        return laps

    def run_map_reduce(self, n: int) -> int:
        refs = [item.remote(i) for i in range(n)]
        return ray.get(total.remote(*refs))

    def run_fanout(self, seed: int, most: int) -> int:
        return ray.get(fan_decider.remote(seed, most))

    def steps(self, n: int) -> float:
        raise NotApplicable("Ray records no durable workflow steps (ray.workflow was removed)")


if __name__ == "__main__":
    main(Ray, __file__)
