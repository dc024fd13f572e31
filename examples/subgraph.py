"""Seed 001's subgraph promise: ``A -> X -> B`` where X is ``N -> M`` or ``J -> K``.

``X`` promises ``Shape(OneOf(Seq(N, M), Seq(J, K)))``; before it runs, the view
shows both alternatives between X and B, provisionally. ``prefer`` picks one
("NM" or "JK"); left out, the recorded ``ctx.random()`` does.

    plait submit examples.subgraph:workflow --wait
"""

from __future__ import annotations

from plait import Context, Graph, OneOf, Seq, Shape, task


@task
def prepare(ctx: Context) -> str:
    return "A"


@task(name="N")
def n_step(ctx: Context) -> str:
    return "N"


@task(name="M")
def m_step(ctx: Context) -> str:
    return "M"


@task(name="J")
def j_step(ctx: Context) -> str:
    return "J"


@task(name="K")
def k_step(ctx: Context) -> str:
    return "K"


@task
def choose(ctx: Context, prefer: str | None = None) -> str:
    """X: build one of the two promised shapes."""
    pick = prefer or ("NM" if ctx.random() < 0.5 else "JK")
    first, second = (n_step, m_step) if pick == "NM" else (j_step, k_step)
    head = ctx.spawn(first)
    ctx.spawn(second, after=[head])
    return pick


@task
def finish(ctx: Context) -> str:
    return "B"


SHAPE = Shape(OneOf(Seq(n_step, m_step), Seq(j_step, k_step)))


def build(prefer: str | None = None) -> Graph:
    """The workflow, with X's choice fixed if given (tests use it)."""
    graph = Graph("subgraph")
    a = graph.add(prepare, key="A")
    x = graph.add(choose, prefer, key="X", after=[a], promises=[SHAPE])
    graph.add(finish, key="B", after=[x])
    return graph


workflow = build()
