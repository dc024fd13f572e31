"""dynamic fan-out: a task decides at run time how many children to spawn.

The count comes from ``random.Random(seed)`` so that every engine draws the
same numbers; a final task counts the children's results.
"""

from __future__ import annotations

import random

from plait import Context, task


def children_for(seed: int, most: int) -> int:
    """How many children the fan-out with ``seed`` spawns (0..most, the same everywhere)."""
    return random.Random(seed).randint(0, most)


@task(name="fan_child")
def fan_child(ctx: Context, i: int) -> int:
    return i


@task(name="fan_count")
def fan_count(ctx: Context, values: list[int]) -> int:
    return len(values)


@task(name="fan_driver")
async def fan_driver(ctx: Context, seed: int, most: int) -> int:
    children = ctx.map(fan_child, range(children_for(seed, most)))
    return int(await ctx.spawn(fan_count, children))
