"""DBOS Transact on SQLite: the library in this process, its state in a temp file.

DBOS has no separate cluster: workflows and steps run in the application
process, and every workflow start and step result is written to the system
database (SQLite here) before the code goes on, so the memory figure is this
process. Idioms: a workflow calling ``@DBOS.step`` functions one after the
other for the chain and the durable steps (timed inside the workflow), and a
queue (``DBOS.register_queue``, polled every 10 ms instead of the default
second) onto which a workflow enqueues one step per item, for map-reduce and
the dynamic fan-out.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import Engine, main
from dbos import DBOS, DBOSConfig

QUEUE = "bench"
POLL = 0.01


@DBOS.step()
def hello_step() -> str:
    return "hello"


@DBOS.workflow()
def hello_wf() -> str:
    return hello_step()


@DBOS.step()
def inc(x: int) -> int:
    return x + 1


@DBOS.workflow()
def chain_wf(hops: int) -> list[float]:
    x, laps = 0, []
    for _ in range(hops):
        started = time.perf_counter()
        x = inc(x)
        laps.append(time.perf_counter() - started)
    assert x == hops
    return laps


@DBOS.step()
def item(x: int) -> int:
    return x


@DBOS.step()
def total(values: list[int]) -> int:
    return sum(values)


@DBOS.workflow()
def map_reduce_wf(n: int) -> int:
    queue = DBOS.retrieve_queue(QUEUE)
    handles = [queue.enqueue(item, i) for i in range(n)]
    return total([h.get_result(polling_interval_sec=POLL) for h in handles])


@DBOS.step()
def decide(seed: int, most: int) -> int:
    return random.Random(seed).randint(0, most)


@DBOS.step()
def fan_count(values: list[int]) -> int:
    return len(values)


@DBOS.workflow()
def fanout_wf(seed: int, most: int) -> int:
    queue = DBOS.retrieve_queue(QUEUE)
    handles = [queue.enqueue(item, i) for i in range(decide(seed, most))]
    return fan_count([h.get_result(polling_interval_sec=POLL) for h in handles])


@DBOS.step()
def step(i: int) -> int:
    return i


@DBOS.workflow()
def steps_wf(n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        step(i)
    return (time.perf_counter() - started) / max(n, 1)


class Dbos(Engine):
    def __init__(self) -> None:
        super().__init__(name="dbos", durable="yes: workflow inputs and every step's result "
                         "in the system database (SQLite); an interrupted workflow resumes "
                         "from its last completed step")
        self.max_map, self.max_fan_seeds = 1_000, 2  # ~15 tasks/s on SQLite here
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def version(self) -> str:
        from importlib.metadata import version

        return f"dbos {version('dbos')} (SQLite)"

    def start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="dbos-bench-")
        url = f"sqlite:///{Path(self._tmp.name) / 'dbos.sqlite'}"
        config: DBOSConfig = {"name": "plait-bench", "system_database_url": url,
                              "log_level": "WARNING"}
        DBOS(config=config)
        DBOS.launch()
        DBOS.register_queue(QUEUE, polling_interval_sec=POLL)

    def stop(self) -> None:
        DBOS.destroy()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def hello(self) -> Any:
        return hello_wf()

    def chain(self, hops: int) -> list[float]:
        return chain_wf(hops)

    def run_map_reduce(self, n: int) -> int:
        return map_reduce_wf(n)

    def run_fanout(self, seed: int, most: int) -> int:
        return fanout_wf(seed, most)

    def steps(self, n: int) -> float:
        return steps_wf(n)


if __name__ == "__main__":
    main(Dbos, __file__)
