"""Tasks the end-to-end tests run through real supervisors and workers.

Each appends what it does to a side file (``log``), one line per event, so that
a test can count executions across processes and restarts: ``start NAME NODE
ATTEMPT PID PPID`` and ``done NAME NODE ATTEMPT PID PPID`` (the parent of a
worker is its supervisor). ``gated`` blocks until the
test creates the ``gate`` file, which lets a test act while a task is mid-run.
"""

from __future__ import annotations

import gc
import os
import time

from plait import Context, OnlyNodes, Retry, task
from plait.testing import proc_stat

GATE_TIMEOUT = 90.0


def supervisor_pid() -> int:
    """The supervisor running this worker: the parent of the zygote that forked it."""
    stat = proc_stat(os.getppid())
    assert stat is not None, "the zygote is gone"
    return stat[1]


def note(log: str, *words: object) -> None:
    # One short write in append mode: lines from concurrent workers do not interleave.
    with open(log, "a", encoding="utf-8") as f:
        f.write(" ".join(str(w) for w in words) + "\n")


def lines(log: str, kind: str, name: str | None = None) -> list[list[str]]:
    """The side file's lines of ``kind`` ("start"/"done"), optionally for one name."""
    try:
        with open(log, encoding="utf-8") as f:
            rows = [line.split() for line in f if line.strip()]
    except FileNotFoundError:
        return []
    return [r for r in rows if r[0] == kind and (name is None or r[1] == name)]


@task
def record(ctx: Context, log: str, name: str) -> str:
    note(log, "start", name, ctx.node_id, ctx.attempt, os.getpid(), supervisor_pid())
    note(log, "done", name, ctx.node_id, ctx.attempt, os.getpid(), supervisor_pid())
    return name


@task(retry=Retry(max_attempts=3, initial=0.2))
def gated(ctx: Context, log: str, gate: str, name: str) -> str:
    note(log, "start", name, ctx.node_id, ctx.attempt, os.getpid(), supervisor_pid())
    deadline = time.monotonic() + GATE_TIMEOUT
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test never opened {gate}")
        ctx.heartbeat()  # a cancellation point
        time.sleep(0.02)  # wait-ok: the task polls a file the test creates
    note(log, "done", name, ctx.node_id, ctx.attempt, os.getpid(), supervisor_pid())
    return name


@task
async def chain(ctx: Context, log: str, gate: str) -> list[str]:
    """a, then b (gated), then c; each awaited before the next is spawned."""
    a = await ctx.spawn(record, log, "a")
    b = await ctx.spawn(gated, log, gate, "b")
    c = await ctx.spawn(record, log, "c")
    return [a, b, c]


@task
def square(ctx: Context, x: int) -> int:
    return x * x


@task
async def fan(ctx: Context, log: str, gate: str, n: int) -> int:
    """A gated first step, then ``n`` squares: many events after the gate opens."""
    await ctx.spawn(gated, log, gate, "first")
    return sum(await ctx.gather(ctx.map(square, range(n))))


@task(retry=Retry(max_attempts=1))
def boom(ctx: Context, message: str) -> str:
    raise ValueError(message)


@task
async def here_and_there(ctx: Context) -> list[int]:
    """Runs here and spawns a task that only another supervisor serves; the
    supervisors' pids."""
    theirs = await ctx.spawn("elsewhere")
    return [supervisor_pid(), theirs]


@task(promises=[OnlyNodes(record)])
async def sneaky(ctx: Context, log: str) -> str:
    await ctx.spawn(record, log, "allowed")
    await ctx.spawn(square, 2)
    return "never"


def pay(log: str, name: str, amount: int) -> dict[str, int]:
    """A step's side effect: one line per execution."""
    note(log, "paid", name, amount)
    return {"paid": amount}


@task(retry=Retry(max_attempts=3, initial=0.2))
def checkout(ctx: Context, log: str, gate: str, name: str) -> list[int]:
    """Two durable steps, then held at the gate (where the test kills its worker),
    then a third step."""
    note(log, "start", name, ctx.node_id, ctx.attempt, os.getpid(), supervisor_pid())
    first = ctx.step(pay, log, name, 1).result()
    second = ctx.step(pay, log, name, 2).result()
    note(log, "committed", name, ctx.attempt)  # both steps are durable now
    deadline = time.monotonic() + GATE_TIMEOUT
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test never opened {gate}")
        time.sleep(0.02)  # wait-ok: the task polls a file the test creates
    third = ctx.step(pay, log, name, 3).result()
    return [first["paid"], second["paid"], third["paid"]]


@task
def gc_threshold(ctx: Context) -> list[int]:
    """The cycle collector's thresholds in the worker that runs it."""
    return list(gc.get_threshold())
