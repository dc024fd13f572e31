"""Prefect 3: flows in this process against its ephemeral API server on SQLite.

The "cluster" is Prefect's temporary server (a uvicorn subprocess on
127.0.0.1, started and stopped explicitly, its SQLite database under a
throw-away PREFECT_HOME) plus this process, where flows and their tasks run
(the default thread-pool task runner). Idioms: a flow calling a task per hop
for the chain and the durable steps (the latter with ``persist_result=True``),
``task.map`` and a task over the futures for map-reduce, and a flow whose
deciding task's result sets the size of a ``map`` for the dynamic fan-out.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from typing import Any

# Prefect reads its settings at import time: isolate its home (and database) first.
_HOME = tempfile.mkdtemp(prefix="prefect-bench-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _HOME
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")

import random  # noqa: E402

from benchlib import Engine, main  # noqa: E402
from prefect import flow, task  # noqa: E402


@task
def hello_task() -> str:
    return "hello"


@flow
def hello_flow() -> str:
    return hello_task()


@task
def inc(x: int) -> int:
    return x + 1


@flow
def chain_flow(hops: int) -> list[float]:
    x, laps = 0, []
    for _ in range(hops):
        started = time.perf_counter()
        x = inc(x)
        laps.append(time.perf_counter() - started)
    assert x == hops
    return laps


@task
def item(x: int) -> int:
    return x


@task
def total(values: list[int]) -> int:
    return sum(values)


@flow
def map_reduce_flow(n: int) -> int:
    return total(item.map(range(n)))


@task
def decide(seed: int, most: int) -> int:
    return random.Random(seed).randint(0, most)


@task
def fan_count(values: list[int]) -> int:
    return len(values)


@flow
def fanout_flow(seed: int, most: int) -> int:
    return fan_count(item.map(range(decide(seed, most))))


@task(persist_result=True)
def step(i: int) -> int:
    return i


@flow
def steps_flow(n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        step(i)
    return (time.perf_counter() - started) / max(n, 1)


class Prefect(Engine):
    def __init__(self) -> None:
        super().__init__(name="prefect", durable="partly: flow and task run states reach its "
                         "database (SQLite) as events; with persisted results a new run can "
                         "skip finished tasks, but nothing resumes a crashed flow run")
        self.max_map = 2_000  # ~100 tasks/s: 10,000 would take minutes per run
        self.server: Any = None

    def version(self) -> str:
        from importlib.metadata import version

        return f"prefect {version('prefect')}, fastapi {version('fastapi')}"

    def start(self) -> None:
        from prefect.server.api.server import SubprocessASGIServer

        self.server = SubprocessASGIServer()  # the one ephemeral mode uses (port None)
        self.server.start(timeout=120)  # its first start migrates a new database: slow

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def cluster_pids(self) -> list[int]:
        return [os.getpid()]

    def hello(self) -> Any:
        return hello_flow()

    def chain(self, hops: int) -> list[float]:
        return chain_flow(hops)

    def run_map_reduce(self, n: int) -> int:
        return map_reduce_flow(n)

    def run_fanout(self, seed: int, most: int) -> int:
        return fanout_flow(seed, most)

    def steps(self, n: int) -> float:
        return float(steps_flow(n))


if __name__ == "__main__":
    main(Prefect, __file__)
