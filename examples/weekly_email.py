"""Seed 004's weekly email: fetch organisations, email each, gather, then fail 75%.

``send_weekly_email`` fails its first attempt for some organisations (a busy
mail server) and is retried. The workflow itself then fails with a division by
zero 75% of the time, at its very end, and is retried as a whole under its own
policy. A retry runs the workflow's body again, but the organisations and the
emails already sent are not computed again: re-spawning the same child (same
task, same inputs, same place in the body) reuses the earlier attempt's node
and its recorded result, so **each email is sent once**, however often the
workflow fails at its end.

``outbox`` names a file that stands for the mail server: every email actually
sent appends one line, ``<idempotency key> <organisation> <attempt>``. Task
bodies run at least once (a worker that dies after sending, before its result
is recorded, sends again), so a real mail API would be given
``ctx.idempotency_key``, which is stable across attempts, to drop the repeat.

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
def send_weekly_email(ctx: Context, org: str, outbox: str | None = None) -> bool:
    if ctx.attempt == 1 and len(org) % 2 == 0:
        raise ConnectionError(f"mail server busy, could not email {org}")
    if outbox is not None:
        with open(outbox, "a", encoding="utf-8") as server:  # one short append per email
            server.write(f"{ctx.idempotency_key} {org} {ctx.attempt}\n")
    return True


def sent(outbox: str) -> dict[str, int]:
    """How many emails each organisation was sent, as the outbox file says."""
    counts: dict[str, int] = {}
    try:
        with open(outbox, encoding="utf-8") as server:
            for line in server:
                org = line.split()[1]
                counts[org] = counts.get(org, 0) + 1
    except FileNotFoundError:
        pass
    return counts


def fails(seed: int | None, attempt: int, failure_rate: float) -> bool:
    """Whether attempt ``attempt`` of the workflow fails (tests predict outcomes with it)."""
    rng = random.Random(f"{seed}:{attempt}") if seed is not None else random.Random()
    return rng.random() < failure_rate


@task(retry=Retry(max_attempts=5, initial=0.1, backoff=2.0, maximum=1.0),
      promises=[OnlyNodes(get_all_orgs, send_weekly_email)])
async def weekly_email(ctx: Context, seed: int | None = None, failure_rate: float = 0.75,
                       orgs: int = 5, outbox: str | None = None) -> int:
    names = await ctx.spawn(get_all_orgs, orgs)
    emails = [ctx.spawn(send_weekly_email, org, outbox) for org in names]
    delivered = await ctx.gather(emails)
    if fails(seed, ctx.attempt, failure_rate):
        raise ZeroDivisionError("division by zero (seed 004's `1/0`, 75% of the time)")
    return sum(delivered)
