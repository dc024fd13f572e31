"""cold start: the first workflow a fresh cluster runs (one trivial task)."""

from __future__ import annotations

from plait import Context, task


@task(name="cold_hello")
def cold_hello(ctx: Context) -> str:
    return "hello"
