"""A randomly branching workflow that always ends as one of two DAGs.

``coin`` promises ``Shape(OneOf(heads, tails))``: before it runs, the view
shows both alternatives as provisional; when it has run, exactly one of them
is real. ``p_heads`` decides the branch from an input (1.0 = always heads, 0.0 =
always tails); left out, the recorded ``ctx.random()`` decides.

    plait submit examples.branching:coin --wait
    plait submit examples.branching:coin 1.0 --wait     # heads
"""

from __future__ import annotations

from plait import Context, OneOf, Shape, task


@task
def heads(ctx: Context) -> str:
    return "heads"


@task
def tails(ctx: Context) -> str:
    return "tails"


@task(promises=[Shape(OneOf(heads, tails))])
def coin(ctx: Context, p_heads: float = 0.5) -> str:
    side = heads if ctx.random() < p_heads else tails
    ctx.then(side)  # runs after coin: the branch is a real node of the DAG
    return side.name
