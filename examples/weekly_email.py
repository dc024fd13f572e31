"""Seed 004's weekly email: fetch organisations, email each, gather, then fail 75%.

``send_weekly_email`` fails its first attempt for some organisations (a busy
mail server) and is retried. The workflow itself then fails with a division by
zero 75% of the time and is retried as a whole under its own policy; the
organisations and the emails already sent are not computed again: re-spawning
the same child is recognised as the same node, and its recorded result is used.

``seed`` makes the failures reproducible (attempt ``n`` fails when
``Random(f"{seed}:{n}").random() < failure_rate``); without it they are random.

    plait submit examples.weekly_email:weekly_email --kw seed=3 --wait
"""

from __future__ import annotations

import random

from plait import Context, OnlyNodes, Retry, task

ORGS = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne"]


@task
def get_all_orgs(ctx: Context, count: int = 5) -> list[str]:
    return ORGS[:count]


@task(retry=Retry(max_attempts=3, initial=0.2))
def send_weekly_email(ctx: Context, org: str) -> bool:
    if ctx.attempt == 1 and len(org) % 2 == 0:
        raise ConnectionError(f"mail server busy, could not email {org}")
    return True


def fails(seed: int | None, attempt: int, failure_rate: float) -> bool:
    """Whether attempt ``attempt`` of the workflow fails (tests predict outcomes with it)."""
    rng = random.Random(f"{seed}:{attempt}") if seed is not None else random.Random()
    return rng.random() < failure_rate


@task(retry=Retry(max_attempts=5, initial=0.1, backoff=2.0, maximum=1.0),
      promises=[OnlyNodes(get_all_orgs, send_weekly_email)])
async def weekly_email(ctx: Context, seed: int | None = None, failure_rate: float = 0.75,
                       orgs: int = 5) -> int:
    names = await ctx.spawn(get_all_orgs, orgs)
    sent = await ctx.gather(ctx.map(send_weekly_email, names))
    if fails(seed, ctx.attempt, failure_rate):
        raise ZeroDivisionError("division by zero (seed 004's `1/0`, 75% of the time)")
    return sum(sent)
