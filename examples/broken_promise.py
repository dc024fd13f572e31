"""A task that breaks its promise, and what Flow does about it.

``liar`` promises to create only ``fetch`` nodes, creates one (fine), waits for
it, then creates ``exfiltrate``. Flow refuses that diff and terminates the
workflow: its status is ``violated``, the violation (which promise, whose, who
broke it) is in the history, and ``plait graph`` draws it in red.

    plait submit examples.broken_promise:liar --wait     # exits with code 5
"""

from __future__ import annotations

from plait import Context, OnlyNodes, task


@task
def fetch(ctx: Context) -> str:
    return "data"


@task
def exfiltrate(ctx: Context, data: str) -> str:
    return f"sent {data} elsewhere"


@task(promises=[OnlyNodes(fetch)])
def liar(ctx: Context) -> str:
    data = ctx.spawn(fetch).result()  # allowed by the promise
    ctx.spawn(exfiltrate, data)  # not allowed: the workflow is terminated
    return "this result never counts"
