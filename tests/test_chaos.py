"""Chaos: fifty workflows of every shape while processes die all around them.

Chains (static, data edges), dynamic chains and trees of awaiting parents,
maps of a hundred, and branches run on two supervisors while a killer thread
SIGKILLs a busy worker every 100-300 milliseconds, one supervisor is
killed with all its workers (a replacement joins), and Flow is SIGKILLed twice
and restarted on the same database. Then:

- every workflow succeeded, with the result its inputs determine;
- every node's completion is recorded exactly once in its history;
- no task body ever started after its completion was recorded (so nothing
  completed ran again, across Flow restarts or otherwise), read from the side
  file every body writes to (``e2e_chaos_tasks``), keyed by node and attempt.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import e2e
import e2e_chaos_tasks as chaos
import pytest

from plait.client import Run
from plait.testing import Cluster, wait_for

DEADLINE = 100.0  # seconds for everything to finish after the last fault
Expected = list[tuple[Any, Any, Any]]  # (target, args, expected output)


def workload(log: str) -> Expected:
    """Fifty workflows: 5 maps of 100, 12 static chains, 12 dynamic chains,
    11 branches, 10 trees (777 nodes in all)."""
    work: Expected = []
    work += [("e2e_chaos_tasks:fan", (log, 100), sum(i * i for i in range(100)))] * 5
    work += [(chaos.chain_graph(log, x, 5), (), x + 5) for x in range(12)]
    work += [("e2e_chaos_tasks:chain", (log, x, 4), x + 4) for x in range(12)]
    work += [("e2e_chaos_tasks:branch", (log, x), "even" if x % 2 == 0 else "odd")
             for x in range(11)]
    work += [("e2e_chaos_tasks:tree", (log, 2, 3), 9)] * 10
    return work


def rows(log: str) -> list[list[str]]:
    """The side file, one split line each: kind, workflow, node, attempt, pid, time."""
    try:
        with open(log, encoding="utf-8") as f:
            return [line.split() for line in f if line.count(" ") == 5]
    except FileNotFoundError:
        return []


def progress(log: str) -> int:
    return sum(1 for r in rows(log) if r[0] == "done")


class Killer:
    """A thread that SIGKILLs a busy worker every 100-300 milliseconds."""

    def __init__(self, cluster: Cluster, log: str, seed: int = 4) -> None:
        self.cluster = cluster
        self.log = log
        self.rng = random.Random(seed)
        self.kills = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="killer", daemon=True)

    def __enter__(self) -> Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.rng.uniform(0.1, 0.3)):
            victim = self._busy_worker()
            if victim is not None:
                try:
                    os.kill(victim, signal.SIGKILL)
                    self.kills += 1
                except ProcessLookupError:
                    pass  # it finished and exited first

    def _busy_worker(self) -> int | None:
        """A live worker in the middle of a task body if there is one, else one that
        started a task lately (so it was ready: killing one that is still starting
        would look like a crash loop to its supervisor). Tasks take milliseconds: a
        worker picked only for a recent start is often between two of them."""
        workers = set(self.cluster.worker_pids())
        last: dict[int, str] = {}
        for r in rows(self.log)[-200:]:
            last[int(r[4])] = r[0]
        mid_task = sorted(workers & {pid for pid, kind in last.items() if kind == "start"})
        recent = sorted(workers & set(last))
        candidates = mid_task or recent
        return self.rng.choice(candidates) if candidates else None


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with e2e.cluster(["e2e_chaos_tasks"], supervisors=2, workers=2,
                     flow_args=["--heartbeat-timeout", "2"]) as c:
        yield c


def at_progress(log: str, done: int) -> None:
    wait_for(lambda: progress(log) >= done, DEADLINE,
             message=lambda: f"stuck at {progress(log)} completions (waiting for {done})")


def all_ended(runs: list[Run]) -> Callable[[], bool]:
    def check() -> bool:
        status = {r.workflow_id: r.status for r in runs[0].client.runs()}
        return all(status.get(run.id) in ("succeeded", "failed", "cancelled", "violated")
                   for run in runs)
    return check


def test_chaos(cluster: Cluster, tmp_path: Path) -> None:
    log = str(tmp_path / "side")
    work = workload(log)
    started = time.monotonic()
    runs = [cluster.client.submit(target, *args) for target, args, _ in work]
    restarts: list[float] = []
    with Killer(cluster, log) as killer:
        at_progress(log, 120)
        restarts.append(time.time())
        cluster.restart_flow()  # SIGKILL: no clean shutdown, no last commit
        at_progress(log, 300)
        cluster.kill_supervisor(0, group=True)  # a machine lost, workers and all
        cluster.add_supervisor()
        at_progress(log, 480)
        restarts.append(time.time())
        cluster.restart_flow()
        wait_for(all_ended(runs), DEADLINE, interval=0.5,
                 message=lambda: f"not all ended; {progress(log)} completions")
    took = time.monotonic() - started
    assert killer.kills >= 10, f"only {killer.kills} workers killed in {took:.0f} s"
    check_results(runs, work)
    histories = {run.id: run.history() for run in runs}
    check_recorded_once(histories)
    check_nothing_completed_ran_again(histories, rows(log), restarts)
    lost = Counter((e.get("error") or {}).get("type") for h in histories.values() for e in h
                   if e["type"] == "state" and e.get("error"))
    print(f"chaos: {len(runs)} workflows in {took:.0f} s; {killer.kills} workers killed; "
          f"attempts lost: {dict(lost)}")
    assert lost["WorkerLost"] >= 5  # the kills did land mid-task


def check_results(runs: list[Run], work: Expected) -> None:
    for run, (target, args, expected) in zip(runs, work, strict=True):
        assert run.status() == "succeeded", (run.id, run.wait(5).error)
        assert run.result(timeout=5) == expected, (run.id, target, args)


def check_recorded_once(histories: dict[str, list[dict[str, Any]]]) -> None:
    """Each node succeeded exactly once, and every node that exists succeeded."""
    total = 0
    for wid, history in histories.items():
        nodes = {n["id"] for e in history if e["type"] == "diff" for n in e["diff"]["nodes"]}
        succeeded = Counter(e["node"] for e in history
                            if e["type"] == "state" and e["state"] == "succeeded")
        assert set(succeeded) == nodes, (wid, nodes - set(succeeded))
        assert set(succeeded.values()) == {1}, (wid, succeeded.most_common(3))
        ends = Counter((e["node"], e["attempt"]) for e in history if e["type"] == "state"
                       and e["state"] in ("succeeded", "failed", "cancelled"))
        assert set(ends.values()) == {1}, (wid, ends.most_common(3))
        total += len(nodes)
    assert total == 777


def check_nothing_completed_ran_again(histories: dict[str, list[dict[str, Any]]],
                                      side: list[list[str]], restarts: list[float]) -> None:
    """No body started after its node's completion was recorded; in particular none
    completed before a Flow restart ran after it."""
    recorded = {(wid, e["node"]): float(e["ts"]) for wid, history in histories.items()
                for e in history if e["type"] == "state" and e["state"] == "succeeded"}
    starts: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for kind, wid, node, attempt, _pid, at in side:
        if kind == "start":
            starts.setdefault((wid, node), []).append((int(attempt), float(at)))
    assert set(starts) == set(recorded)  # every recorded node ran (none was cached)
    for key, done_at in recorded.items():
        late = [(a, t) for a, t in starts[key] if t > done_at]
        assert not late, f"{key} completed at {done_at} but started again: {late}"
    for restart in restarts:
        before = {key for key, done_at in recorded.items() if done_at < restart}
        assert before, "the Flow restart came before any completion: it proves nothing"
        again = [key for key in before if any(t > restart for _, t in starts[key])]
        assert not again, f"completed before the Flow restart, ran after it: {again[:5]}"
