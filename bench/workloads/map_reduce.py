"""map-reduce: map a no-op over n integers in one diff, then one task sums them.

The sum task receives the mapped results along data edges (a list of handles
is an argument like any other).
"""

from __future__ import annotations

from plait import Context, task


@task(name="mr_item")
def mr_item(ctx: Context, x: int) -> int:
    return x


@task(name="mr_sum")
def mr_sum(ctx: Context, values: list[int]) -> int:
    return sum(values)


@task(name="mr_driver")
async def mr_driver(ctx: Context, n: int) -> int:
    mapped = ctx.map(mr_item, range(n))
    return int(await ctx.spawn(mr_sum, mapped))
