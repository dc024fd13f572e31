"""Tasks for the chaos test (``test_chaos``): every shape, generous retries.

Every body appends ``start WF NODE ATTEMPT PID TIME`` when it begins (a replay
after an eviction too) and ``done WF NODE ATTEMPT PID TIME`` just before it
returns, to one side file: the test reads it to kill workers that are busy,
to measure progress, and to prove that no completed task ran again. Each task
does a few milliseconds of simulated work so that kills land mid-task.
"""

from __future__ import annotations

import os
import time

from e2e_tasks import note

from plait import Context, Graph, OneOf, Retry, Shape, task

# Workers are killed every few hundred milliseconds: a task may lose many attempts.
RETRY = Retry(max_attempts=100, initial=0.05, backoff=1.5, maximum=0.5)
WORK = 0.01  # seconds of simulated work per task body


def mark(ctx: Context, log: str, kind: str) -> None:
    note(log, kind, ctx.workflow_id, ctx.node_id, ctx.attempt, os.getpid(), f"{time.time():.6f}")


def work(ctx: Context, log: str) -> None:
    mark(ctx, log, "start")
    time.sleep(WORK)  # wait-ok: simulated work, so that a kill can land mid-task


@task(retry=RETRY)
def inc(ctx: Context, log: str, x: int) -> int:
    work(ctx, log)
    mark(ctx, log, "done")
    return x + 1


@task(retry=RETRY)
def sq(ctx: Context, log: str, x: int) -> int:
    work(ctx, log)
    mark(ctx, log, "done")
    return x * x


@task(retry=RETRY)
def even(ctx: Context, log: str, x: int) -> str:
    work(ctx, log)
    mark(ctx, log, "done")
    return f"{x} is even"


@task(retry=RETRY)
def odd(ctx: Context, log: str, x: int) -> str:
    work(ctx, log)
    mark(ctx, log, "done")
    return f"{x} is odd"


@task(retry=RETRY, promises=[Shape(OneOf(even, odd))])
def branch(ctx: Context, log: str, x: int) -> str:
    """Ends as branch -> even or branch -> odd (decided by the input)."""
    work(ctx, log)
    side = even if x % 2 == 0 else odd
    ctx.then(side, log, x)
    mark(ctx, log, "done")
    return side.name


@task(retry=RETRY)
async def chain(ctx: Context, log: str, x: int, n: int) -> int:
    """An awaiting parent: ``n`` increments, each awaited before the next."""
    mark(ctx, log, "start")
    for _ in range(n):
        x = await ctx.spawn(inc, log, x)
    mark(ctx, log, "done")
    return x


@task(retry=RETRY)
async def fan(ctx: Context, log: str, n: int) -> int:
    """A map of ``n`` squares, gathered."""
    mark(ctx, log, "start")
    total = sum(await ctx.gather([ctx.spawn(sq, log, i) for i in range(n)]))
    mark(ctx, log, "done")
    return total


@task(retry=RETRY)
async def tree(ctx: Context, log: str, depth: int, width: int) -> int:
    """Awaiting parents all the way down: the number of leaves, ``width ** depth``."""
    mark(ctx, log, "start")
    if depth == 0:
        leaves = 1
    else:
        leaves = sum(await ctx.gather([ctx.spawn(tree, log, depth - 1, width)
                                       for _ in range(width)]))
    mark(ctx, log, "done")
    return leaves


def chain_graph(log: str, x: int, n: int) -> Graph:
    """A static chain of ``n`` increments joined by data edges."""
    graph = Graph("chain-graph", static=True)
    node = graph.add(inc, log, x, key="c0")
    for k in range(1, n):
        node = graph.add(inc, log, node, key=f"c{k}")
    return graph
