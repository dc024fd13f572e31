"""chain: hops that each depend on the previous one's result (x + 1).

The parent awaits each hop before spawning the next, so it stays resident in
its worker and every hop is one spawn, one run and one result. It times each
hop itself (wall clock, inside the task) and returns the list of lap times:
non-deterministic, which is harmless here because nothing replays it.
"""

from __future__ import annotations

import time

from plait import Context, task


@task(name="chain_inc")
def chain_inc(ctx: Context, x: int) -> int:
    return x + 1


@task(name="chain_driver")
async def chain_driver(ctx: Context, hops: int) -> list[float]:
    x = 0
    laps: list[float] = []
    for _ in range(hops):
        started = time.perf_counter()
        x = await ctx.spawn(chain_inc, x)
        laps.append(time.perf_counter() - started)
    if x != hops:
        raise RuntimeError(f"chain ended at {x}, expected {hops}")
    return laps
