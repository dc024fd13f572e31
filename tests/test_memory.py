"""Memory is given back after big work: a long task in a worker, a big workflow in Flow."""

from __future__ import annotations

import gc
import platform
import sys
import weakref
from collections.abc import Callable
from typing import Any

import e2e
import pytest
from flowkit import FakeSupervisor, Peer, diff, result, spec, submit

from plait import Context, memory, task
from plait.actors import plan_keeper
from plait.actors.flow import Flow
from plait.protocol.messages import Assign, Finish, Message
from plait.supervisor import worker
from plait.testing import wait_for

Factory = Callable[..., FakeSupervisor]


@task(name="test_memory.build")
def build(ctx: Context, n: int) -> int:
    return len([{"i": i} for i in range(n)])


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_release_collects_cycles_and_trims_the_c_heap() -> None:
    cycle = _Cycle()
    alive = weakref.ref(cycle)
    del cycle
    glibc = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
    assert memory.release() is glibc
    assert alive() is None


def test_tune_gc_sets_plait_s_thresholds() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        memory.tune_gc()
        assert gc.get_threshold() == memory.GC_THRESHOLD
    finally:
        gc.set_threshold(*before)


def test_workers_run_with_plait_s_collector_thresholds() -> None:
    """A worker runs task code with plait's collector pace (``worker.main`` sets it,
    whether the worker was forked by a zygote or spawned)."""
    with e2e.cluster(["e2e_tasks"], workers=1) as c:
        run = c.client.submit("e2e_tasks:gc_threshold")
        assert tuple(run.result(timeout=e2e.RESULT_TIMEOUT)) == memory.GC_THRESHOLD


@pytest.mark.parametrize(("after", "released"), [(0.0, True), (60.0, False)])
def test_a_worker_releases_memory_after_a_long_task_once_it_has_reported(
        monkeypatch: pytest.MonkeyPatch, after: float, released: bool) -> None:
    seen: list[str] = []
    monkeypatch.setattr(worker, "_RELEASE_AFTER", after)
    def release() -> bool:
        seen.append("release")
        return True

    monkeypatch.setattr(memory, "release", release)
    link = worker.WorkerLink("ipc://@plait-test-unused", "w")  # its thread never starts

    def send(message: Message) -> None:
        seen.append(type(message).__name__)
        if isinstance(message, Finish):
            assert message.output == 1000, message

    monkeypatch.setattr(link, "send", send)
    link.hand(Assign(workflow_id="wf", node="n", attempt=1, task=build.name,
                     inputs={"args": [1000], "kwargs": {}}, idempotency_key="k"))
    link.hand(None)
    worker.serve(link, {build.name: build})
    assert seen == (["Finish", "release"] if released else ["Finish"])


@pytest.mark.parametrize(("threshold", "released"), [(3, 1), (4, 0)])
def test_the_keeper_of_a_big_workflow_releases_memory_when_it_stops(
        flow: Flow, client: Peer, supervisor: Factory, monkeypatch: pytest.MonkeyPatch,
        threshold: int, released: int) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(plan_keeper, "RELEASE_NODES", threshold)
    def release() -> bool:
        calls.append(True)
        return True

    monkeypatch.setattr(memory, "release", release)
    sup = supervisor("a", "b", "c")
    wf = submit(client, diff(spec("a"), spec("b"), spec("c"), edges=[("a", "c"), ("b", "c")]),
                root="c")
    keeper = flow.registry._keepers[wf]
    for _ in range(2):
        sup.finish(sup.assign(), "x")
    sup.finish(sup.assign(node="c"), "c")
    assert result(client, wf).output == "c"
    wait_for(lambda: not keeper.is_alive(), timeout=10, message="the keeper did not stop")
    assert len(calls) == released
