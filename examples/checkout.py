"""Durable steps: ``await ctx.step(fn, *args)`` records a result before going on.

``checkout`` reserves stock, charges the card and books the courier, each a
durable step: the task continues only once Flow has committed the step's
result. The charge fails on the first attempt after the card was charged (the
order's ``flaky`` flag, standing in for a crash); the retry gets the
reservation and the charge back from Flow without running them again, so the
customer pays once. Steps are lighter than child tasks: no node, no other
worker, one round trip each.

    plait submit examples.checkout:checkout '"order-7"' 25 --wait
"""

from __future__ import annotations

from plait import Context, Retry, task


def reserve(order: str) -> str:
    return f"{order}/stock"


def charge(order: str, amount: int) -> str:
    return f"{order}/paid-{amount}"


def book(order: str) -> str:
    return f"{order}/courier"


@task(retry=Retry(max_attempts=3, initial=0.1))
async def checkout(ctx: Context, order: str, amount: int, flaky: bool = True) -> list[str]:
    reserved = await ctx.step(reserve, order)
    paid = await ctx.step(charge, order, amount)
    if flaky and ctx.attempt == 1:
        raise ConnectionError("the courier's API timed out")  # after the charge
    booked = await ctx.step(book, order)
    return [reserved, paid, booked]
