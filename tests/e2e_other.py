"""A task module that only a second supervisor serves (see test_e2e_faults)."""

from __future__ import annotations

from e2e_tasks import supervisor_pid

from plait import Context, task


@task
def elsewhere(ctx: Context) -> int:
    return supervisor_pid()
