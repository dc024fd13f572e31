"""Tiny task modules for the SDK and supervisor tests (imported by worker processes too)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from plait.context import Context
from plait.graph import Graph
from plait.protocol.promises import MaxNodes, NoNewNodes
from plait.task import Retry, task

if os.environ.get("PLAIT_TEST_BREAK_IMPORT"):
    raise ImportError("tasks_sample was told to fail on import (crash-loop test)")


class Point(BaseModel):
    x: int
    y: int


@task
def add(ctx: Context, a: int, b: int) -> int:
    return a + b


@task(name="sample.double", retry=Retry(max_attempts=5, initial=0.5, non_retryable=[KeyError]),
      queue="math", timeout=30.0)
def double(ctx: Context, n: int) -> int:
    return 2 * n


@task(promises=[NoNewNodes()])
def leaf(ctx: Context, label: str = "x") -> str:
    return label


@task
def move(ctx: Context, p: Point, dx: int = 1) -> Point:
    return Point(x=p.x + dx, y=p.y)


@task
def stamp(ctx: Context, when: datetime) -> datetime:
    return when


@task
def pid(ctx: Context) -> int:
    return os.getpid()


@task
def block(ctx: Context, path: str) -> None:
    """Write this worker's pid to ``path``, then run until killed."""
    Path(path).write_text(str(os.getpid()))
    while True:
        time.sleep(0.05)  # wait-ok: the task itself runs until killed


@task
def spin(ctx: Context, path: str) -> None:
    """A long loop that checks in with its Context (so it notices a cancel)."""
    Path(path).write_text(str(os.getpid()))
    while True:
        ctx.heartbeat()
        time.sleep(0.01)  # wait-ok: the task itself loops until cancelled


@task
def stubborn(ctx: Context, path: str) -> None:
    """Ignores cooperative cancellation and SIGTERM: only SIGKILL stops it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(path).write_text(str(os.getpid()))
    while True:
        time.sleep(0.05)  # wait-ok: the task itself runs until killed


@task
def stubborn_parent(ctx: Context, path: str) -> None:
    """Like stubborn, with a subprocess of its own: "<worker pid> <child pid>"."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    work = "import time; time.sleep(600)"  # wait-ok: its work is to run until killed
    child = subprocess.Popen([sys.executable, "-c", work], start_new_session=False)
    Path(path).write_text(f"{os.getpid()} {child.pid}")
    while True:
        time.sleep(0.05)  # wait-ok: the task itself runs until killed


def _hold(path: str, gate: str) -> None:
    Path(path).write_text(str(os.getpid()))
    while not Path(gate).exists():
        time.sleep(0.01)  # wait-ok: the task itself holds until the test opens the gate


@task
def gated(ctx: Context, path: str, gate: str) -> int:
    """Write this worker's pid to ``path``, then run until the file ``gate`` exists."""
    _hold(path, gate)
    return os.getpid()


@task
def gated_fan_out(ctx: Context, path: str, gate: str, n: int) -> int:
    """``gated``, then spawn ``n`` children and await them (a parent that starts waiting
    while its worker may hold the next attempt)."""
    _hold(path, gate)
    return sum(ctx.gather(ctx.map(double, range(n))))


@task
def big(ctx: Context, n: int) -> str:
    """A result of ``n`` bytes from an argument of a few."""
    return "x" * n


@task
def boom(ctx: Context) -> int:
    return 1 // 0


@task
async def cancels_itself(ctx: Context) -> int:
    """Awaits a job it cancelled: a CancelledError plait did not cause."""
    job = asyncio.ensure_future(asyncio.sleep(60))  # wait-ok: cancelled before it runs
    job.cancel()
    await job
    return os.getpid()


@task
def exits(ctx: Context) -> int:
    raise SystemExit(3)


@task(promises=[MaxNodes(10)])
async def fan_out(ctx: Context, n: int) -> int:
    """Spawns ``n`` children and awaits them all (an awaiting parent)."""
    handles = ctx.map(double, range(n))
    values = await ctx.gather(handles)
    return sum(values)


@task
def fan_out_sync(ctx: Context, n: int) -> int:
    handles = ctx.map(double, range(n))
    return sum(ctx.gather(handles))


@task
def chain(ctx: Context, a: int) -> int:
    first = ctx.spawn(add, a, 1)
    second = ctx.spawn(add, first, 10)  # a data edge: second consumes first's output
    return int(second.result())


@task
def follow_up(ctx: Context, values: list[Any]) -> int:
    ctx.set_state({"seen": len(values)})
    ctx.then(leaf, "after")
    return len(values)


def not_a_task(x: int) -> int:
    return x


def seed_001() -> Graph:
    """Seed 001's pre-determined workflow: start -> (1, 2) -> end."""
    g = Graph("seed_001")
    start = g.add(leaf, "start", key="start")
    one = g.add(add, 1, 0, key="1", after=[start])
    two = g.add(add, 2, 0, key="2", after=[start])
    g.add(add, one, two, key="end")
    return g


diamond = seed_001()


# --- durability ---------------------------------------------------------------------------


def note(path: str, what: str) -> None:
    with open(path, "a") as f:
        f.write(what + "\n")


@task
def guarded(ctx: Context, path: str) -> int:
    """Awaits a child inside the user's own error handling (eviction must get through)."""
    h = ctx.spawn(add, 1, 2)
    try:
        value = int(h.result())
    except Exception:  # noqa: BLE001 - what eviction must get through
        note(path, "swallowed")
        return -1
    finally:
        note(path, "finally")
    note(path, "after")
    return value


@task
async def guarded_async(ctx: Context, path: str) -> int:
    h = ctx.spawn(add, 1, 2)
    try:
        value = int(await h)
    except Exception:  # noqa: BLE001 - what eviction must get through
        note(path, "swallowed")
        return -1
    finally:
        note(path, "finally")
    note(path, "after")
    return value


@task
async def nap(ctx: Context, seconds: float) -> str:
    """A recorded draw, a durable sleep, then a signal's payload."""
    r = ctx.random()
    await ctx.sleep(seconds)
    payload = await ctx.signal("go")
    return f"{payload}:{r}"


@task
def nap_sync(ctx: Context, seconds: float) -> str:
    r = ctx.random()
    ctx.sleep(seconds).result()
    payload = ctx.signal("go").result()
    return f"{payload}:{r}"


@task(heartbeat_timeout=2.0)
def beats(ctx: Context, n: int) -> Any:
    """Heartbeats ``n`` times with details and sets a state; returns where it resumed from."""
    start = ctx.heartbeat_details
    ctx.set_state({"phase": "beating"})
    for i in range(n):
        ctx.heartbeat({"i": i})
    return start


@task(cache=True, version="2", schedule_to_start=5.0, heartbeat_timeout=2.0)
def cached_square(ctx: Context, n: int) -> int:
    return n * n


@task
def draw(ctx: Context) -> float:
    return ctx.random()
