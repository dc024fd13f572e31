"""A task module that only a second supervisor serves (see test_e2e_faults)."""

from __future__ import annotations

import os

from plait import Context, task


@task
def elsewhere(ctx: Context) -> int:
    return os.getppid()  # the supervisor that runs this worker
