"""Celery 5 with Redis (127.0.0.1:6379, database 13, flushed before and after).

The cluster is ``celery -A celery_peer worker -c 2`` (prefork: the main process
and 2 pool processes); Redis is the machine's own shared server, so its memory
is not counted. Idioms: ``task.delay(x).get()`` per hop for the chain, a
``chord(group(...), total.s())`` for map-reduce, and a task that replaces
itself with a chord of its children for the dynamic fan-out. Gossip, mingle
and worker heartbeats are off (the usual setting for a single worker; mingle
alone waits a second at start for other workers that do not exist).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import Engine, NotApplicable, log, main
from celery import Celery, chord, group

REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/13")
app = Celery("bench", broker=REDIS, backend=REDIS)
app.conf.update(result_expires=600, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)


@app.task(name="bench.hello")
def hello() -> str:
    return "hello"


@app.task(name="bench.inc")
def inc(x: int) -> int:
    return x + 1


@app.task(name="bench.item")
def item(x: int) -> int:
    return x


@app.task(name="bench.total")
def total(values: list[int]) -> int:
    return sum(values)


@app.task(name="bench.fan_child")
def fan_child(i: int) -> int:
    return i


@app.task(name="bench.fan_count")
def fan_count(values: list[int]) -> int:
    return len(values)


@app.task(bind=True, name="bench.fan_decider")
def fan_decider(self: Any, seed: int, most: int) -> Any:
    n = random.Random(seed).randint(0, most)
    if n == 0:
        return 0
    # The native dynamic idiom: this task's result becomes the chord's.
    return self.replace(chord(group(fan_child.s(i) for i in range(n)), fan_count.s()))


def _flush() -> None:
    app.backend.client.flushdb()


class CeleryEngine(Engine):
    def __init__(self) -> None:
        super().__init__(name="celery", durable="no: task messages sit in Redis (with "
                         "acks_late a lost task is redelivered), but a chain's or chord's "
                         "progress is no resumable workflow",
                         notes=["Redis (shared, already running) is not counted in memory"])
        self.worker: subprocess.Popen[bytes] | None = None

    def version(self) -> str:
        import celery
        import redis

        return f"celery {celery.__version__}, redis-py {redis.__version__}"

    def start(self) -> None:
        _flush()
        here = Path(__file__).resolve().parent
        celery_bin = Path(sys.executable).with_name("celery")
        self.worker = subprocess.Popen(
            [str(celery_bin), "-A", "celery_peer", "worker", "-c", "2", "-P", "prefork",
             "-l", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=here, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            start_new_session=True)

    def stop(self) -> None:
        if self.worker is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.worker.pid, signal.SIGTERM)
            try:
                self.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log("celery worker ignored SIGTERM for 30 s: killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait(timeout=30)
            self.worker = None
        _flush()

    def cluster_pids(self) -> list[int]:
        return [self.worker.pid] if self.worker is not None else []

    def hello(self) -> Any:
        return hello.delay().get(timeout=120)

    def chain(self, hops: int) -> list[float]:
        x, laps = 0, []
        for _ in range(hops):
            started = time.perf_counter()
            x = inc.delay(x).get(timeout=60)
            laps.append(time.perf_counter() - started)
        assert x == hops
        return laps

    def run_map_reduce(self, n: int) -> int:
        result = chord(group(item.s(i) for i in range(n)), total.s()).apply_async()
        return result.get(timeout=1800)

    def run_fanout(self, seed: int, most: int) -> int:
        return fan_decider.delay(seed, most).get(timeout=600)

    def steps(self, n: int) -> float:
        raise NotApplicable("Celery keeps no durable record of a workflow's steps")


if __name__ == "__main__":
    main(CeleryEngine, __file__)
