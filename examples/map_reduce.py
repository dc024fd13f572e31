"""Map a task over a collection (a collection comes back), then reduce it.

``map_reduce`` promises to create only ``square`` and ``total`` nodes, and, once
it knows the input's size, at most ``len(items) + 1`` of them: the view shows a
bounded wildcard until the map is spawned. The squares flow into ``total``
along data edges (a list of handles is an argument like any other).

    plait submit examples.map_reduce:map_reduce '[1, 2, 3, 4]' --wait
"""

from __future__ import annotations

from pydantic import BaseModel

from plait import Context, MaxNodes, OnlyNodes, task


class Reduced(BaseModel):
    squares: list[int]
    total: int


@task
def square(ctx: Context, x: int) -> int:
    return x * x


@task
def total(ctx: Context, values: list[int]) -> int:
    return sum(values)


@task(promises=[OnlyNodes(square, total)])
async def map_reduce(ctx: Context, items: list[int]) -> Reduced:
    ctx.promise(MaxNodes(len(items) + 1))
    squares = ctx.map(square, items)
    summed = ctx.spawn(total, squares)  # the handles arrive in total() as their results
    return Reduced(squares=await ctx.gather(squares), total=await summed)
