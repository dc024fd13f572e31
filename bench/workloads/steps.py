"""durable step: sequential steps, each durably recorded before the next starts.

A step is ``ctx.step``: the function runs in the workflow's own task, and the
task goes on only once Flow has committed its value (fsync'd); a replay or a
retry gets the value back without running it. This is the idiom DBOS
(``@DBOS.step``) and Restate (``ctx.run``) measure; the chain workload covers
steps that are tasks of their own. The workflow returns the mean time per
step, measured inside it (so submission and scheduling are excluded, as in the
per-step figures other engines publish).
"""

from __future__ import annotations

import time

from plait import Context, task


def durable_step(i: int) -> int:
    return i


@task(name="steps_driver")
async def steps_driver(ctx: Context, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        if await ctx.step(durable_step, i) != i:
            raise RuntimeError(f"step {i} read back wrong")
    return (time.perf_counter() - started) / max(n, 1)
