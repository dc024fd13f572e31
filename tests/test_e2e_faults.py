"""Faults, end to end: real processes killed with SIGKILL, a restarted Flow, several
supervisors, and a feed subscriber that joins late.

Executions are counted through a side file every task appends to (see
``e2e_tasks``), because a process that was killed cannot report anything.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import e2e
import e2e_tasks
import pytest

from plait.client import Run
from plait.testing import Cluster, alive, descendants, wait_for


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with e2e.cluster(workers=2) as c:
        yield c


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    return str(tmp_path / "log"), str(tmp_path / "gate")


def started(log: str, name: str, count: int = 1) -> list[list[str]]:
    """Wait until ``name`` started ``count`` times; those ``start`` lines."""
    def enough() -> list[list[str]]:
        rows = e2e_tasks.lines(log, "start", name)
        return rows if len(rows) >= count else []

    return wait_for(enough, e2e.RESULT_TIMEOUT, message=f"{name} did not start {count} time(s)")


def node_events(run: Run, node: str) -> list[dict[str, Any]]:
    return [e for e in run.history() if e["type"] == "state" and e["node"] == node]


def test_a_worker_killed_mid_task_is_retried_and_counted_once(
        cluster: Cluster, files: tuple[str, str]) -> None:
    log, gate = files
    run = cluster.client.submit("e2e_tasks:gated", log, gate, "victim")
    (line,) = started(log, "victim")
    os.kill(int(line[4]), signal.SIGKILL)
    Path(gate).touch()
    assert run.result(timeout=e2e.RESULT_TIMEOUT) == "victim"
    events = node_events(run, "gated")
    assert [e["attempt"] for e in events if e["state"] == "succeeded"] == [2]
    lost = [e for e in events if (e.get("error") or {}).get("type") == "WorkerLost"]
    assert len(lost) == 1
    assert "signal 9" in lost[0]["error"]["message"]
    assert [r[3] for r in e2e_tasks.lines(log, "start", "victim")] == ["1", "2"]
    assert [r[3] for r in e2e_tasks.lines(log, "done", "victim")] == ["2"]


def test_durable_steps_survive_their_worker_s_death(
        cluster: Cluster, files: tuple[str, str]) -> None:
    log, gate = files
    run = cluster.client.submit("e2e_tasks:checkout", log, gate, "cart")
    (line,) = started(log, "cart")
    wait_for(lambda: e2e_tasks.lines(log, "committed", "cart"), e2e.RESULT_TIMEOUT,
             message="the two steps were not committed")
    os.kill(int(line[4]), signal.SIGKILL)  # after two committed steps
    started(log, "cart", count=2)  # the retry
    Path(gate).touch()
    assert run.result(timeout=e2e.RESULT_TIMEOUT) == [1, 2, 3]
    # Each step ran once: the retry got the first two back from Flow.
    assert [r[2] for r in e2e_tasks.lines(log, "paid", "cart")] == ["1", "2", "3"]


def test_a_late_feed_subscriber_converges_to_the_stored_graph(
        cluster: Cluster, files: tuple[str, str]) -> None:
    log, gate = files
    run = cluster.client.submit("e2e_tasks:fan", log, gate, 12)
    started(log, "first")
    mirror = e2e.Mirror()
    with cluster.new_client() as late:
        feed = late.watch(run.id)
        mirror.fold(next(feed))  # the snapshot, taken mid-workflow
        assert mirror.seqs[0] > 1
        Path(gate).touch()
        for message in feed:
            mirror.fold(message)
    assert run.result(timeout=e2e.RESULT_TIMEOUT) == sum(i * i for i in range(12))
    assert mirror.status == "succeeded"
    assert mirror.seqs == list(range(mirror.seqs[0], mirror.seqs[0] + len(mirror.seqs)))
    final = run.graph(unfold=True)
    assert mirror.seqs[-1] == final["seq"]
    assert (mirror.nodes, mirror.edges) == e2e.committed(final)
    assert len(mirror.nodes) == 14


def test_flow_killed_mid_workflow_and_restarted_on_the_same_db(files: tuple[str, str]) -> None:
    log, gate = files
    with e2e.cluster(workers=2) as c, c.new_client(timeout=60) as waiter, \
            ThreadPoolExecutor(1) as pool:
        run = c.client.submit("e2e_tasks:chain", log, gate)
        started(log, "b")
        assert e2e_tasks.lines(log, "done", "a")
        waiting = pool.submit(waiter.run(run.id).result, e2e.RESULT_TIMEOUT)  # across the crash
        c.kill_flow()
        c.start_flow()
        Path(gate).touch()
        assert run.result(timeout=e2e.RESULT_TIMEOUT) == ["a", "b", "c"]
        assert waiting.result(e2e.RESULT_TIMEOUT) == ["a", "b", "c"]
        assert run.status() == "succeeded"
    for name in ("a", "b", "c"):
        assert len(e2e_tasks.lines(log, "done", name)) == 1, name
    assert len(e2e_tasks.lines(log, "start", "a")) == 1  # completed before the crash: not rerun


def test_two_supervisors_serve_one_flow() -> None:
    with e2e.cluster(["e2e_tasks"], workers=1) as c:
        other = c.add_supervisor(["e2e_other"])
        mine, theirs = c.client.submit("e2e_tasks:here_and_there").result(
            timeout=e2e.RESULT_TIMEOUT)
        assert (mine, theirs) == (c.supervisors[0].pid, other.pid)


def test_a_lost_supervisor_s_attempt_is_retried_on_another(files: tuple[str, str]) -> None:
    log, gate = files
    with e2e.cluster(supervisors=2, workers=1) as c:
        run = c.client.submit("e2e_tasks:gated", log, gate, "orphan")
        (line,) = started(log, "orphan")
        (lost,) = [s for s in c.supervisors if s.pid == int(line[5])]
        c.kill_supervisor(lost, group=True)  # the machine is gone, workers and all
        Path(gate).touch()
        assert run.result(timeout=e2e.RESULT_TIMEOUT) == "orphan"
        (survivor,) = [s for s in c.supervisors if s is not lost]
        (done,) = e2e_tasks.lines(log, "done", "orphan")
        assert int(done[5]) == survivor.pid
        errors = [(e.get("error") or {}).get("type") for e in node_events(run, "gated")]
        assert "SupervisorLost" in errors


def test_a_sigkilled_supervisor_leaves_no_zygote_or_worker_behind() -> None:
    with e2e.cluster(workers=2) as c:
        sup = c.supervisors[0]
        workers = wait_for(lambda: c.worker_pids() if len(c.worker_pids()) == 2 else None,
                           e2e.RESULT_TIMEOUT, message="the workers did not start")
        assert workers is not None
        (zygote,) = [pid for pid in descendants(sup.pid) if pid not in workers]
        c.kill_supervisor(sup)  # the supervisor alone: its children must notice
        wait_for(lambda: not any(alive(p) for p in [zygote, *workers]), e2e.RESULT_TIMEOUT,
                 message="the zygote or a worker outlived its supervisor")
