"""Shared pytest configuration: hypothesis profiles, and the fixtures of the tests
that drive a Flow at protocol level (``flow``, ``client``, ``supervisor``).

``ci`` (the default) runs each property test's own example count with no
deadline: the machine is shared, and a slow example is not a failing one. Under
CI (``CI`` set) the examples are derandomized, so a landing is judged on the same
cases every time; local runs draw new cases and so keep finding new bugs.
``HYPOTHESIS_PROFILE=dev`` runs few examples for quick local loops (tests that set
their own ``max_examples`` scale it with ``workflow_strategy.examples``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flowkit
import pytest
from hypothesis import HealthCheck, settings

from plait.actors.flow import Flow
from plait.protocol.messages import TaskInfo

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    parent=settings.get_profile("ci"),
    max_examples=20,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# --- a Flow in this process, with fake clients and supervisors (tests/flowkit.py) ------


@pytest.fixture
def flow_options() -> dict[str, Any]:
    """More FlowSettings for the ``flow`` fixture; a test module overrides it (a
    FakeClock, real retry delays...)."""
    return {}


@pytest.fixture
def flow(tmp_path: Path, flow_options: dict[str, Any]) -> Iterator[Flow]:
    f = Flow(flowkit.settings(tmp_path, **flow_options)).start()
    try:
        yield f
    finally:
        f.stop()
    if not f.stopped_cleanly:  # rare and not understood yet: said, not failed (see note)
        warnings.warn("a socket of Flow's was still open at stop", stacklevel=1)


@pytest.fixture
def client(flow: Flow) -> Iterator[flowkit.Peer]:
    peer = flowkit.Peer(flow.endpoint)
    yield peer
    peer.close()


@pytest.fixture
def supervisor(flow: Flow) -> Iterator[Callable[..., flowkit.FakeSupervisor]]:
    """Makes FakeSupervisors (``supervisor(*tasks, **kw)``), closed at the end."""
    started: list[flowkit.FakeSupervisor] = []

    def make(*tasks: str | TaskInfo, **kw: Any) -> flowkit.FakeSupervisor:
        sup = flowkit.FakeSupervisor(flow.endpoint, tasks, **kw)
        started.append(sup)
        return sup

    yield make
    for sup in started:
        sup.close()
