"""Tasks for the durable-execution tests (``test_e2e_durable``), run by real workers.

Like :mod:`e2e_tasks`, they append to a side file (``log``) so that a test can
count executions across processes, evictions and restarts: ``run NAME NODE
ATTEMPT`` each time a body starts (a replay too), ``done NAME NODE ATTEMPT``
when it returns, ``cancelled NAME NODE ATTEMPT`` when it saw a cancellation.
"""

from __future__ import annotations

import os
import time

from e2e_tasks import GATE_TIMEOUT, note

from plait import Context, Graph, WorkflowCancelled, task


def lines(log: str, kind: str, name: str | None = None) -> list[list[str]]:
    """The side file's lines of ``kind``, optionally for one name."""
    try:
        with open(log, encoding="utf-8") as f:
            rows = [line.split() for line in f if line.strip()]
    except FileNotFoundError:
        return []
    return [r for r in rows if r[0] == kind and (name is None or r[1] == name)]


@task
def stamp(ctx: Context, log: str, name: str) -> str:
    note(log, "run", name, ctx.node_id, ctx.attempt)
    note(log, "done", name, ctx.node_id, ctx.attempt)
    return name


@task
def held(ctx: Context, log: str, gate: str, name: str) -> str:
    """Runs until the test creates ``gate``; notes a cancellation it is told of."""
    note(log, "run", name, ctx.node_id, ctx.attempt)
    deadline = time.monotonic() + GATE_TIMEOUT
    try:
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the test never opened {gate}")
            ctx.heartbeat()  # a cancellation point
            time.sleep(0.02)  # wait-ok: the task polls a file the test creates
    except WorkflowCancelled:
        note(log, "cancelled", name, ctx.node_id, ctx.attempt)  # the task's clean-up
        raise
    note(log, "done", name, ctx.node_id, ctx.attempt)
    return name


def two_steps(log: str, gate: str) -> Graph:
    """``first`` (held at the gate) -> ``second``."""
    graph = Graph("two-steps")
    first = graph.add(held, log, gate, "first", key="first")
    graph.add(stamp, log, "second", key="second", after=[first])
    return graph


@task
async def parent(ctx: Context, log: str, name: str) -> str:
    """Spawns a child and returns what it said (for restarts by lineage)."""
    note(log, "run", name, ctx.node_id, ctx.attempt)
    said = await ctx.spawn(stamp, log, f"{name}-child")
    return f"{name}:{said}"


def three_steps(log: str) -> Graph:
    """``one`` -> ``two`` (which creates a child) -> ``three``."""
    graph = Graph("three-steps")
    one = graph.add(stamp, log, "one", key="one")
    two = graph.add(parent, log, "two", key="two", after=[one])
    graph.add(stamp, log, "three", key="three", after=[two])
    return graph


@task
async def sequential(ctx: Context, log: str, n: int) -> list[str]:
    """Awaits ``n`` children one after another (each await may evict this task)."""
    note(log, "run", "sequential", ctx.node_id, ctx.attempt)
    out = [await ctx.spawn(stamp, log, f"step{i}") for i in range(n)]
    note(log, "done", "sequential", ctx.node_id, ctx.attempt)
    return out


def _declined(log: str) -> int:
    note(log, "run", "declined", "-", 0)
    raise LookupError("card declined")


@task
async def pays_or_notes(ctx: Context, log: str) -> str:
    """A step that fails and is caught, then an await that may evict this task: the
    replay takes the same path without running the step again."""
    note(log, "run", "pays_or_notes", ctx.node_id, ctx.attempt)
    try:
        await ctx.step(_declined, log)
        paid = "paid"
    except LookupError as exc:
        paid = f"not paid ({exc})"
    receipt = await ctx.spawn(stamp, log, "receipt")
    return f"{paid}, {receipt}"


@task
async def napper(ctx: Context, log: str, seconds: float) -> float:
    """Sleeps durably; returns how long Flow's clock says it slept."""
    note(log, "run", "napper", ctx.node_id, ctx.attempt)
    before = ctx.random()  # recorded: the same on the replay after the sleep
    await ctx.sleep(seconds)
    note(log, "done", "napper", ctx.node_id, ctx.attempt)
    return before


def _flagged(path: str) -> bool:
    return os.path.exists(path)


@task
async def fickle(ctx: Context, flag: str) -> str:
    """Diverges on replay once ``flag`` exists: it draws ``now()`` where it drew
    ``random()`` (an outside fact the history does not record)."""
    if _flagged(flag):
        ctx.now()  # the divergent line: the test looks for it
    else:
        ctx.random()
    await ctx.signal("go")
    return "unreachable after a divergence"


@task
async def fickle_spawn(ctx: Context, flag: str) -> int:
    """Diverges on replay once ``flag`` exists: it spawns another input at seq 1."""
    x = 3 if _flagged(flag) else 2
    child = ctx.spawn(triple, x)  # the divergent line: the test looks for it
    await ctx.signal("go")
    return int(await child)


@task
def triple(ctx: Context, x: int) -> int:
    return 3 * x


@task(cache=True, version="1")
def costly(ctx: Context, log: str, x: int) -> int:
    note(log, "run", "costly", ctx.node_id, ctx.attempt)
    return x * 10


@task
async def uses_costly(ctx: Context, log: str, x: int) -> int:
    return int(await ctx.spawn(costly, log, x)) + 1


@task
async def reporter(ctx: Context, steps: int) -> int:
    """Publishes its progress with set_state, then waits for ``finish``."""
    for i in range(steps):
        ctx.set_state({"done": i + 1, "of": steps})
    ctx.set_state({"waiting": "finish"})
    extra = await ctx.signal("finish")
    return steps + int(extra or 0)


__all__ = ["costly", "fickle", "fickle_spawn", "held", "lines", "napper", "parent",
           "reporter", "sequential", "stamp", "three_steps", "triple",
           "two_steps", "uses_costly"]
