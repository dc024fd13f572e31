"""Durable execution and operator controls, end to end through real processes.

Each control (pause, resume, cancel, restart, attributes, signal, query) and
each durable mechanism (eviction and replay, durable sleep, root retries that
reuse finished children, divergence, cron, caching) is driven through
``plait.testing.Cluster``. Executions are counted through side files (see
``e2e_durable_tasks``). Flow's time is a file the test rewrites (``Cluster(clock=
...)``) wherever waiting for real time would be slow: a one-hour sleep and
cron ticks fire as soon as the test moves the clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import e2e
import e2e_durable_tasks as durable
import pytest

from examples import weekly_email
from plait.cli import Exit, main
from plait.client import NotFound, Refused, Run
from plait.errors import NonDeterminismError, TaskFailed, WorkflowCancelled
from plait.testing import Cluster, wait_for

T = e2e.RESULT_TIMEOUT
MODULES = ["e2e_durable_tasks", "examples.approval", "examples.reminder",
           "examples.weekly_email"]
T0 = 1_700_000_040.0 + 10  # a whole minute (UTC) plus ten seconds


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with e2e.cluster(MODULES, workers=2) as c:
        yield c


@pytest.fixture(scope="module")
def clocked() -> Iterator[Cluster]:
    """Flow on a clock of the test's own (timers and cron fire when it moves)."""
    with e2e.cluster(MODULES, workers=2, clock=T0) as c:
        yield c


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[str, str]]:
    log, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    yield log, gate
    Path(gate).touch()  # whatever the test did, nothing stays held at the gate


# --- helpers --------------------------------------------------------------------------------


def node(run: Run, node_id: str) -> dict[str, Any]:
    return next(n for n in run.graph(unfold=True)["nodes"] if n["id"] == node_id)


def in_state(run: Run, node_id: str, state: str) -> bool:
    return any(n["id"] == node_id and n["state"] == state
               for n in run.graph(unfold=True)["nodes"])


def events(run: Run, node_id: str, state: str | None = None) -> list[dict[str, Any]]:
    return [e for e in run.history() if e["type"] == "state" and e["node"] == node_id
            and (state is None or e["state"] == state)]


def attempts(run: Run, node_id: str, state: str = "succeeded") -> list[int]:
    return [e["attempt"] for e in events(run, node_id, state)]


def failed_attempts(run: Run, node_id: str) -> list[int]:
    """Attempts that failed: retried (``ready`` again, with the error) or final."""
    return [e["attempt"] - (e["state"] == "ready") for e in events(run, node_id)
            if e.get("error") and e["state"] in ("ready", "failed")]


def ran(log: str, name: str, kind: str = "run") -> int:
    return len(durable.lines(log, kind, name))


def result_on_clock(c: Cluster, run: Run) -> Any:
    """``run.result()`` on a Cluster with a clock: a retry's backoff is a timer on that
    clock, so whenever the run waits for one (a lost attempt after a Flow restart,
    say), move the clock to when it is due, and no further (not to the next tick)."""
    def ended() -> bool:
        if run.status() in ("succeeded", "failed", "cancelled", "violated"):
            return True
        due = max((e["due"] for e in run.history() if e["type"] == "state" and e.get("due")),
                  default=0.0)
        if due > c.now():
            c.set_time(due)
        return False

    wait_for(ended, T, message=lambda: f"{run.id} did not end: {run.history()[-3:]}")
    return run.result(timeout=T)


def line_of(marker: str) -> str:
    """``e2e_durable_tasks.py:N`` of the line holding ``marker``."""
    source = Path(durable.__file__).read_text().splitlines()
    (number,) = [i for i, text in enumerate(source, start=1) if marker in text]
    return f"e2e_durable_tasks.py:{number}"


# --- pause, resume, cancel ------------------------------------------------------------------


def test_pause_holds_new_tasks_running_ones_finish_and_resume_releases(
        cluster: Cluster, files: tuple[str, str]) -> None:
    log, gate = files
    run = cluster.client.submit(durable.two_steps(log, gate))
    wait_for(lambda: ran(log, "first"), T, message="first never started")
    run.pause()
    assert run.status() == "paused"
    Path(gate).touch()
    wait_for(lambda: in_state(run, "first", "succeeded"), T)  # the running one finished
    wait_for(lambda: in_state(run, "second", "ready"), T)
    # Flow still serves other work meanwhile; the paused workflow's ready node waits.
    assert cluster.client.submit("e2e_durable_tasks:triple", 4).result(timeout=T) == 12
    assert in_state(run, "second", "ready")
    assert ran(log, "second") == 0
    assert run.status() == "paused"
    run.resume()
    assert run.result(timeout=T) == "second"
    kinds = [e["type"] for e in run.history()]
    assert kinds.index("paused") < kinds.index("resumed")


def test_cancel_tells_running_tasks_and_schedules_nothing_more(
        cluster: Cluster, files: tuple[str, str]) -> None:
    log, gate = files
    run = cluster.client.submit(durable.two_steps(log, gate))
    wait_for(lambda: ran(log, "first"), T, message="first never started")
    run.cancel()
    wait_for(lambda: ran(log, "first", "cancelled"), T, message="no cancellation seen")
    with pytest.raises(WorkflowCancelled):
        run.result(timeout=T)
    assert run.status() == "cancelled"
    assert ran(log, "first", "done") == 0
    assert ran(log, "second") == 0
    assert events(run, "second", "running") == []
    assert node(run, "second")["state"] == "cancelled"
    with pytest.raises(Refused):
        run.pause()  # it has ended


# --- restart, attributes --------------------------------------------------------------------


def test_restart_reruns_the_node_and_downstream_keeping_history(
        cluster: Cluster, files: tuple[str, str]) -> None:
    log, _ = files
    run = cluster.client.submit(durable.three_steps(log))
    assert run.result(timeout=T) == "three"
    run.restart("two")
    assert run.result(timeout=T) == "three"
    assert (ran(log, "one"), ran(log, "two"), ran(log, "two-child"), ran(log, "three")) \
        == (1, 2, 2, 2)
    assert attempts(run, "one") == [1]
    assert attempts(run, "two") == [1, 2]  # the first attempt stays in the history
    assert attempts(run, "two.1") == [1, 2]  # downstream by lineage: its child
    assert attempts(run, "three") == [1, 2]  # downstream by edge
    assert [e["node"] for e in run.history() if e["type"] == "restart"] == ["two"]
    assert node(run, "two")["attrs"].get("attempt") == 2


def test_restart_is_refused_while_the_node_runs_and_unknown_nodes_are_not_found(
        cluster: Cluster, files: tuple[str, str]) -> None:
    log, gate = files
    run = cluster.client.submit(durable.two_steps(log, gate))
    wait_for(lambda: ran(log, "first"), T, message="first never started")
    with pytest.raises(Refused):
        run.restart("first")
    with pytest.raises(NotFound):
        run.restart("no-such-node")
    Path(gate).touch()
    assert run.result(timeout=T) == "second"


def test_set_attrs_on_nodes_and_edges(cluster: Cluster, files: tuple[str, str]) -> None:
    log, _ = files
    run = cluster.client.submit(durable.three_steps(log))
    assert run.result(timeout=T) == "three"
    run.set_attrs("one", color="green", label="checked")
    run.set_attrs(edge=("one", "two"), label="then")
    assert {"color": "green", "label": "checked"}.items() <= node(run, "one")["attrs"].items()
    changes = [c for e in run.history() if e["type"] == "diff"
               for c in e["diff"].get("attrs", [])]
    assert {"key": "label", "value": "then", "node": None, "edge": ["one", "two"]} in changes
    with pytest.raises(Refused):
        run.set_attrs("no-such-node", color="red")
    with pytest.raises(ValueError, match="exactly one"):
        run.set_attrs(color="red")
    assert run.status() == "succeeded"  # cosmetics change nothing else
    assert run.result(timeout=T) == "three"


# --- signals and queries --------------------------------------------------------------------


def test_a_signal_resumes_a_task_that_holds_no_process(cluster: Cluster) -> None:
    run = cluster.client.submit("examples.approval:publish", "notes")
    wait_for(lambda: run.query() == {"step": "waiting for approval", "title": "notes"}, T)
    wait_for(lambda: in_state(run, "publish", "suspended"), T)
    run.signal("approve", {"by": "ana"})
    assert run.result(timeout=T) == "released 'notes', approved by ana"
    assert attempts(run, "publish.1") == [1]  # the draft was not written again
    (delivered,) = [e for e in run.history() if e["type"] == "delivered"]
    assert (delivered["name"], delivered["payload"]) == ("approve", {"by": "ana"})


def test_a_signal_sent_before_the_wait_is_kept_for_it(cluster: Cluster) -> None:
    run = cluster.client.submit("examples.approval:publish", "early")
    run.signal("approve", {"by": "bob", "ok": False})  # before the task gets there
    assert run.result(timeout=T) == "'early' rejected by bob"
    assert run.query() == {"step": "rejected", "by": "bob"}


def test_query_reads_the_state_while_running_and_after(cluster: Cluster) -> None:
    run = cluster.client.submit("e2e_durable_tasks:reporter", 3)
    wait_for(lambda: run.query() == {"waiting": "finish"}, T)
    assert run.states() == {"reporter": {"waiting": "finish"}}
    assert run.query("reporter") == {"waiting": "finish"}
    assert run.query("no-such-node") is None
    assert run.status() == "running"  # reading changes nothing
    run.signal("finish", 5)
    assert run.result(timeout=T) == 8
    assert run.query() == {"waiting": "finish"}  # still readable once it has ended


# --- eviction and replay, root retries, divergence ------------------------------------------


def test_evicted_parents_replay_without_rerunning_finished_children(
        files: tuple[str, str]) -> None:
    log, _ = files
    # One worker and no room for more: every await evicts the parent.
    with e2e.cluster(MODULES, workers=1, supervisor_args=["--max-workers", "1"]) as c:
        run = c.client.submit("e2e_durable_tasks:sequential", log, 3)
        assert run.result(timeout=T) == ["step0", "step1", "step2"]
        for i in range(3):
            assert ran(log, f"step{i}") == 1, f"step{i} ran again"
        assert ran(log, "sequential") == 4  # the first run and three replays
        assert ran(log, "sequential", "done") == 1
        assert len(events(run, "sequential", "suspended")) == 3
        assert set(attempts(run, "sequential", "running")) == {1}  # resumptions, not retries
        # A step that failed and was caught fails again on the replay, without running.
        run = c.client.submit("e2e_durable_tasks:pays_or_notes", log)
        assert run.result(timeout=T) == "not paid (card declined), receipt"
        assert (ran(log, "pays_or_notes"), ran(log, "declined")) == (2, 1)
        # A task waiting for a signal holds no worker: the only one runs other work.
        waiting = c.client.submit("examples.approval:publish", "x")
        wait_for(lambda: in_state(waiting, "publish", "suspended")
                 and waiting.query() is not None, T)
        assert c.client.submit("e2e_durable_tasks:triple", 5).result(timeout=T) == 15
        waiting.signal("approve")
        assert waiting.result(timeout=T).startswith("released")


def test_a_failing_root_is_retried_and_each_email_is_sent_once(
        cluster: Cluster, tmp_path: Path) -> None:
    seed, outbox = 1, str(tmp_path / "outbox")
    assert [weekly_email.fails(seed, n, 0.75) for n in range(1, 5)] == [True] * 3 + [False]
    run = cluster.client.submit("examples.weekly_email:weekly_email", seed=seed,
                                outbox=outbox)
    assert run.result(timeout=T) == 5
    assert failed_attempts(run, "weekly_email") == [1, 2, 3]
    assert attempts(run, "weekly_email") == [4]
    assert weekly_email.sent(outbox) == dict.fromkeys(weekly_email.ORGS[:5], 1)
    assert attempts(run, "weekly_email.1") == [1]  # the organisations were fetched once


@pytest.mark.parametrize(("target", "marker"), [
    ("e2e_durable_tasks:fickle", "ctx.now()  # the divergent line"),
    ("e2e_durable_tasks:fickle_spawn", "ctx.spawn(triple, x)  # the divergent line"),
])
def test_a_replay_that_diverges_fails_with_non_determinism_at_its_line(
        cluster: Cluster, tmp_path: Path, target: str, marker: str) -> None:
    flag = tmp_path / "flag"
    run = cluster.client.submit(target, str(flag))
    root = target.split(":")[1]
    wait_for(lambda: in_state(run, root, "suspended"), T)
    flag.touch()  # the replay will take another path than the history
    run.signal("go")
    with pytest.raises(NonDeterminismError) as caught:
        run.result(timeout=T)
    assert isinstance(caught.value, TaskFailed)
    assert caught.value.call_site is not None
    assert caught.value.call_site.endswith(line_of(marker)), str(caught.value)
    assert line_of(marker) in str(caught.value)
    assert failed_attempts(run, root) == [1]  # a divergence is not retried


# --- durable sleep (on the test's clock) ----------------------------------------------------


def test_a_durable_sleep_survives_a_flow_restart(clocked: Cluster,
                                                 files: tuple[str, str]) -> None:
    log, _ = files
    run = clocked.client.submit("e2e_durable_tasks:napper", log, 3600)
    wait_for(lambda: in_state(run, "napper", "suspended"), T)
    clocked.restart_flow()  # SIGKILL, then again on the same database
    assert run.status() == "running"
    clocked.advance(3600)
    drawn = result_on_clock(clocked, run)
    assert isinstance(drawn, float)
    assert ran(log, "napper") == 2  # the first run, and the replay once the timer fired
    assert ran(log, "napper", "done") == 1
    assert [e["type"] for e in run.history()].count("timer") == 1


def test_the_reminder_example_sleeps_for_real(cluster: Cluster) -> None:
    run = cluster.client.submit("examples.reminder:remind", "stand up", 0.5)
    assert run.result(timeout=T).startswith("reminder: stand up")
    assert attempts(run, "remind.1") == [1]


# --- cron schedules, from the CLI (on the test's clock) -------------------------------------


def cli(c: Cluster, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    capsys.readouterr()
    code = main([*argv, "--flow", c.address, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def runs_of(c: Cluster, schedule: str) -> list[str]:
    return sorted(r.workflow_id for r in c.client.runs()
                  if r.workflow_id.startswith(f"{schedule}-"))


def tick_id(schedule: str, t: float) -> str:
    return f"{schedule}-{time.strftime('%Y%m%dT%H%MZ', time.gmtime(t))}"


def test_cron_fires_on_ticks_and_once_for_ticks_missed_while_flow_was_down(
        clocked: Cluster, files: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    log, _ = files
    code, info = cli(clocked, capsys, "schedule", "add", "minutely", "* * * * *",
                     "e2e_durable_tasks:stamp", json.dumps(log), '"tick"')
    assert code == Exit.OK
    start = clocked.now()
    first_tick = (start // 60 + 1) * 60
    assert (info["name"], info["overlap"], info["next_fire"]) == ("minutely", "skip", first_tick)
    assert [s["name"] for s in cli(clocked, capsys, "schedule", "ls")[1]] == ["minutely"]
    clocked.advance(first_tick - start)
    first = tick_id("minutely", first_tick)
    wait_for(lambda: runs_of(clocked, "minutely") == [first], T)
    assert result_on_clock(clocked, clocked.client.run(first)) == "tick"
    clocked.kill_flow()
    clocked.advance(5 * 60)  # five ticks pass while Flow is down
    clocked.start_flow()
    latest = tick_id("minutely", first_tick + 5 * 60)
    wait_for(lambda: runs_of(clocked, "minutely") == sorted([first, latest]), T)
    assert result_on_clock(clocked, clocked.client.run(latest)) == "tick"
    (listed,) = cli(clocked, capsys, "schedule", "ls")[1]
    assert listed["next_fire"] > clocked.now()  # nothing else is due: no second catch-up run
    assert runs_of(clocked, "minutely") == sorted([first, latest])
    for wid in (first, latest):  # each tick's run completed once (bodies: at least once)
        assert len(events(clocked.client.run(wid), "stamp", "succeeded")) == 1
    assert cli(clocked, capsys, "schedule", "rm", "minutely")[0] == Exit.OK
    assert cli(clocked, capsys, "schedule", "rm", "minutely")[0] == Exit.NOT_FOUND
    assert cli(clocked, capsys, "schedule", "ls")[1] == []


@pytest.mark.parametrize("overlap", ["skip", "queue", "cancel"])
def test_cron_runs_never_overlap(clocked: Cluster, files: tuple[str, str], overlap: str) -> None:
    log, gate = files
    name = f"held-{overlap}"
    client = clocked.client
    info = client.add_schedule(name, "* * * * *", "e2e_durable_tasks:held", log, gate, name,
                               overlap=overlap)
    try:
        first_tick = float(info.next_fire or 0)
        clocked.set_time(max(clocked.now(), first_tick))
        wait_for(lambda: ran(log, name) == 1, T, message="the first run never started")
        (first,) = runs_of(clocked, name)
        clocked.set_time(first_tick + 60)  # the next tick, while the first run is held
        second = tick_id(name, first_tick + 60)
        wait_for(lambda: _fired(client.schedules(), name) == first_tick + 60, T)
        if overlap == "cancel":
            wait_for(lambda: ran(log, name, "cancelled") == 1, T)
            assert client.run(first).status() == "cancelled"
        else:
            assert runs_of(clocked, name) == [first]  # nothing started beside the live run
            Path(gate).touch()
            assert result_on_clock(clocked, client.run(first)) == name
        if overlap == "skip":
            assert runs_of(clocked, name) == [first]
        else:  # queued: it starts once the first has ended; cancel: once it is cancelled
            wait_for(lambda: runs_of(clocked, name) == sorted([first, second]), T)
            Path(gate).touch()
            assert result_on_clock(clocked, client.run(second)) == name
    finally:
        client.remove_schedule(name)


def _fired(schedules: list[Any], name: str) -> float | None:
    return next((s.last_fired for s in schedules if s.name == name), None)


# --- caching --------------------------------------------------------------------------------


def test_a_cached_result_is_reused_across_workflows(cluster: Cluster,
                                                    files: tuple[str, str]) -> None:
    log, _ = files
    first = cluster.client.submit("e2e_durable_tasks:uses_costly", log, 4)
    assert first.result(timeout=T) == 41
    second = cluster.client.submit("e2e_durable_tasks:uses_costly", log, 4)
    assert second.result(timeout=T) == 41
    assert ran(log, "costly") == 1
    assert first.cached() == []
    assert second.cached() == ["uses_costly.1"]
    assert node(second, "uses_costly.1")["attrs"]["cached"] is True
    other = cluster.client.submit("e2e_durable_tasks:uses_costly", log, 5)
    assert other.result(timeout=T) == 51  # other inputs: computed
    assert ran(log, "costly") == 2
