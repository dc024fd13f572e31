"""durable step: sequential steps, each durably recorded before the next starts.

A step is a child task: Flow commits its result before the parent, which
awaits it, goes on. The parent returns the mean time per step, measured
inside the workflow (so submission and scheduling of the parent are excluded,
as in the per-step figures other engines publish).
"""

from __future__ import annotations

import time

from plait import Context, task


@task(name="durable_step")
def durable_step(ctx: Context, i: int) -> int:
    return i


@task(name="steps_driver")
async def steps_driver(ctx: Context, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await ctx.spawn(durable_step, i)
    return (time.perf_counter() - started) / max(n, 1)
