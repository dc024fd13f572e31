"""Shared pytest configuration: hypothesis profiles.

``ci`` (the default) runs each property test's own example count with no
deadline: the machine is shared, and a slow example is not a failing one.
``HYPOTHESIS_PROFILE=dev`` runs few examples for quick local loops (tests that set
their own ``max_examples`` scale it with ``workflow_strategy.examples``).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    parent=settings.get_profile("ci"),
    max_examples=20,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
