"""Seed 001's pre-determined workflow, registered whole before anything runs.

Nodes ``start``, ``1``, ``2``, ``end``; edges ``start -> 1``, ``start -> 2``,
``2 -> end`` (runs-after only: no data flows). ``static=True`` promises that no
node will add nodes or edges, so ``plait graph`` shows the final DAG from the
first moment, with nothing provisional.

    plait submit examples.static:pipeline --wait
"""

from __future__ import annotations

from plait import Context, Graph, task


@task
def start(ctx: Context) -> str:
    return f"started {ctx.workflow_id}"


@task
def step(ctx: Context, n: int) -> int:
    return n * 10


@task
def end(ctx: Context) -> str:
    return "end"


pipeline = Graph("seed-001", static=True)
_start = pipeline.add(start, key="start")
pipeline.add(step, 1, key="1", after=[_start])
_two = pipeline.add(step, 2, key="2", after=[_start])
pipeline.add(end, key="end", after=[_two])
