"""A random map: ``A -> M* -> B``, with zero or more copies of M.

``A`` promises ``Shape(Repeat(M))``: whatever it creates is some number of M
nodes, and ``B`` (A's successor) waits until all of them are done. Before A
runs, the view shows a provisional placeholder (zero or more M) between A and B.

    plait submit examples.random_map:workflow --wait      # 0..5 copies, at random
"""

from __future__ import annotations

from plait import Context, Graph, Repeat, Shape, task


@task
def fan_out(ctx: Context, copies: int | None = None) -> int:
    """A: decide how many copies of M to run (at random unless told), and create them."""
    n = copies if copies is not None else int(ctx.random() * 6)
    ctx.map(mapped, range(n))
    return n


@task
def mapped(ctx: Context, i: int) -> int:
    """M: one copy's work."""
    return i * i


@task
def fan_in(ctx: Context, copies: int) -> str:
    """B: runs once every M is done."""
    return f"A -> M x{copies} -> B"


def build(copies: int | None = None) -> Graph:
    """The workflow, with a fixed number of copies if given (tests use it)."""
    graph = Graph("random-map")
    a = graph.add(fan_out, copies, key="A", promises=[Shape(Repeat(mapped))])
    graph.add(fan_in, a, key="B")
    return graph


workflow = build()
