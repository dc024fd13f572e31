"""Operator controls, cron schedules and the result cache, at protocol level: a
real Flow in this process on a :class:`FakeClock`, a fake client and fake
supervisors. Pause and resume, cancel, restart a node (also after the end),
set attributes; schedules that tick, overlap policies, a missed tick after
downtime that fires once and never twice; cached results across workflows."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, cast

import pytest
from flowkit import (
    FakeSupervisor,
    Peer,
    diff,
    history,
    result,
    settings,
    spec,
    states,
    submit,
)

from plait.actors.cache import cache_key
from plait.actors.clock import FakeClock
from plait.actors.database import Database
from plait.actors.flow import Flow
from plait.actors.history import WorkflowState
from plait.actors.keeper_base import _encoded
from plait.actors.plan_keeper import AWAITS_PER_PEER
from plait.actors.registry import Registry
from plait.actors.schedules import run_id
from plait.protocol.codec import pack, unpack
from plait.protocol.diff import EdgeSpec
from plait.protocol.messages import (
    Ack,
    AddSchedule,
    Assign,
    AwaitResult,
    CancelTask,
    CancelWorkflow,
    Error,
    GetGraph,
    GetStatus,
    ListSchedules,
    Message,
    PauseWorkflow,
    QueryReply,
    RemoveSchedule,
    RestartNode,
    ResumeWorkflow,
    ScheduleInfo,
    ScheduleList,
    SendSignal,
    SetAttrs,
    Submit,
    TaskInfo,
    WorkflowResult,
)
from plait.protocol.promises import Shape
from plait.protocol.shape import Seq
from plait.testing import wait_for

Factory = Callable[..., FakeSupervisor]
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def flow_options(clock: FakeClock) -> dict[str, Any]:
    return {"clock": clock}


def status(client: Peer, wf: str) -> str:
    return str(client.request(GetStatus(workflow_id=wf)).runs[0].status)


def graph(client: Peer, wf: str, at: int | None = None) -> dict[str, dict[str, Any]]:
    doc = client.request(GetGraph(workflow_id=wf, at=at, unfold=True)).graph
    return {n["id"]: n for n in doc["nodes"] if not n["provisional"]}


def chain(*ids: str) -> dict[str, Any]:
    return diff(*[spec(i) for i in ids], edges=list(itertools.pairwise(ids)))


def answering(correlation: str) -> Callable[[Message], bool]:
    return lambda m: m.id == correlation


def assert_rebuilt_equals_live(client: Peer, wf: str) -> None:
    events = history(client, wf)
    live = client.request(GetGraph(workflow_id=wf, unfold=True))
    rebuilt = WorkflowState.rebuild(wf, [(e["seq"], e["ts"], e) for e in events])
    assert (live.seq, live.graph) == (len(events), rebuilt.view_json(unfold=True))


# --- pause, resume, cancel -------------------------------------------------------------------


def test_pause_holds_new_starts_and_resume_releases_them(
        client: Peer, supervisor: Factory) -> None:
    sup = supervisor("a", "b", "c")
    wf = submit(client, chain("a", "b"), root="graph")
    extra = submit(client, diff(spec("c")), root="c")
    a = sup.assign(node="a")
    assert isinstance(client.request(PauseWorkflow(workflow_id=wf)), Ack)
    assert isinstance(client.request(PauseWorkflow(workflow_id=wf)), Ack)  # idempotent
    assert status(client, wf) == "paused"
    sup.finish(a, 1)  # a running task finishes
    sup.finish(sup.assign(node="c"), "other workflows run")
    sup.none(Assign, within=0.2)  # b is ready, but held
    assert graph(client, wf)["b"]["state"] == "ready"
    assert isinstance(client.request(ResumeWorkflow(workflow_id=wf)), Ack)
    assert status(client, wf) == "running"
    sup.finish(sup.assign(node="b"), 2)
    assert result(client, wf).status == "succeeded"
    assert result(client, extra).output == "other workflows run"
    kinds = [e["type"] for e in history(client, wf)]
    assert (kinds.count("paused"), kinds.count("resumed")) == (1, 1)
    late = client.request(PauseWorkflow(workflow_id=wf))
    assert isinstance(late, Error)
    assert late.code == "rejected"


def test_controls_that_reach_a_workflow_as_it_ends_are_refused(
        client: Peer, supervisor: Factory) -> None:
    """Pause and signal right behind a cancel reach the keeper before it retires:
    refused as the Reader refuses them later, not recorded over the end."""
    sup = supervisor("a")
    wf = submit(client, diff(spec("a")))
    sup.assign()
    cancel = client.send(CancelWorkflow(workflow_id=wf))
    pause = client.send(PauseWorkflow(workflow_id=wf))
    signal = client.send(SendSignal(workflow_id=wf, name="go"))
    assert isinstance(client.next(answering(cancel.id)), Ack)
    for late in (pause.id, signal.id):
        reply = client.next(answering(late))
        assert isinstance(reply, Error)
        assert (reply.code, reply.reason) == ("rejected", f"workflow {wf!r} has ended "
                                                          "(cancelled)")
    assert result(client, wf).status == "cancelled"
    assert status(client, wf) == "cancelled"
    assert [e["type"] for e in history(client, wf)][-1] == "workflow"
    assert_rebuilt_equals_live(client, wf)


def test_only_a_client_s_latest_waits_for_a_result_are_kept(
        client: Peer, supervisor: Factory) -> None:
    """A client that keeps giving up and asking again (a loop of short timeouts)
    does not pile up answers the keeper would send it all at the end."""
    sup = supervisor("a")
    wf = submit(client, diff(spec("a")))
    a = sup.assign()
    asks = [client.send(AwaitResult(workflow_id=wf)).id for _ in range(3 * AWAITS_PER_PEER)]
    client.request(GetGraph(workflow_id=wf))  # behind the asks, through the same keeper
    sup.finish(a, 1)
    answered = [client.next(WorkflowResult).id for _ in range(AWAITS_PER_PEER)]
    assert answered == asks[-AWAITS_PER_PEER:]
    client.none(WorkflowResult, within=0.2)


def test_pause_holds_a_retry_until_resumed(client: Peer, supervisor: Factory) -> None:
    sup = supervisor(TaskInfo(name="a", retry={"initial": 0}))
    wf = submit(client, diff(spec("a")))
    a = sup.assign()
    client.request(PauseWorkflow(workflow_id=wf))
    sup.finish(a, ok=False, error={"type": "E", "message": "", "retryable": True})
    sup.none(Assign, within=0.2)
    client.request(ResumeWorkflow(workflow_id=wf))
    again = sup.assign()
    assert again.attempt == 2
    sup.finish(again, "ok")
    assert result(client, wf).output == "ok"


def test_cancel_stops_running_and_suspended_tasks_and_schedules_nothing(
        client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    sup = supervisor("root", "child", "sleeper")
    wf = submit(client, diff(spec("root"), spec("sleeper")), root="graph")
    root, sleeper = sup.assign(node="root"), sup.assign(node="sleeper")
    kids = diff(spec("root.1", "child", creator="root"), spec("root.2", "child", creator="root"),
                edges=[("root.1", "root.2")], proposer="root")
    assert sup.propose(root, kids).ok
    sup.wait(root, ["root.1", "root.2"], resident=False)  # no process holds it
    sup.wait(sleeper, timer=30, seq=0, resident=False)
    child = sup.assign(node="root.1")
    assert isinstance(client.request(CancelWorkflow(workflow_id=wf)), Ack)
    cancel = sup.next(CancelTask)
    assert (cancel.node, cancel.attempt) == ("root.1", 1)
    sup.none(CancelTask, within=0.1)  # nothing else holds a process
    assert result(client, wf).status == "cancelled"
    sup.finish(child, 1)
    clock.advance(30)
    sup.none(Assign, within=0.2)
    assert {n: g["state"] for n, g in graph(client, wf).items()} == {
        "root": "cancelled", "sleeper": "cancelled", "root.1": "cancelled",
        "root.2": "cancelled"}


# --- restart ----------------------------------------------------------------------------------


def test_restart_a_node_and_its_downstream_after_the_end(
        flow: Flow, client: Peer, supervisor: Factory) -> None:
    sup = supervisor("a", "b", "c")
    wf = submit(client, chain("a", "b", "c"), root="graph")
    for node, out in (("a", 1), ("b", 2), ("c", 3)):
        sup.finish(sup.assign(node=node), out)
    assert result(client, wf).output == 3
    wait_for(lambda: wf not in flow.registry.live(), message="the keeper to retire")
    ended_at = len(history(client, wf))
    assert isinstance(client.request(RestartNode(workflow_id=wf, node="b")), Ack)
    assert status(client, wf) == "running"
    b = sup.assign(node="b")
    assert b.attempt == 2
    refused = client.request(RestartNode(workflow_id=wf, node="a"))  # b runs: refused
    assert isinstance(refused, Error)
    assert refused.code == "rejected"
    assert "still running" in refused.reason
    sup.finish(b, 20)
    c = sup.assign(node="c")
    assert c.attempt == 2
    sup.finish(c, 30)
    assert result(client, wf).output == 30
    events = history(client, wf)
    assert states(events, "a") == [("running", 1), ("succeeded", 1)]
    assert states(events, "b") == [("running", 1), ("succeeded", 1), ("running", 2),
                                   ("succeeded", 2)]
    assert [e["type"] for e in events].count("workflow") == 2  # earlier end kept as history
    old = graph(client, wf, at=ended_at)  # the view as of the first end is unchanged
    assert old["c"]["state"] == "succeeded"
    assert_rebuilt_equals_live(client, wf)
    missing = client.request(RestartNode(workflow_id=wf, node="ghost"))
    assert isinstance(missing, Error)
    assert missing.code == "not_found"


def test_a_restarted_node_gets_its_retries_afresh(
        flow: Flow, client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    """Retries count within a run: a node that used them all and is restarted by an
    operator may fail and retry as often again, from the first backoff."""
    sup = supervisor(TaskInfo(name="a", retry={"max_attempts": 2, "initial": 10,
                                               "backoff": 100}))
    wf = submit(client, diff(spec("a")))
    boom = {"type": "E", "message": "boom", "retryable": True}
    sup.finish(sup.assign(), ok=False, error=boom)
    clock.advance(10)
    sup.finish(sup.assign(), ok=False, error=boom)
    assert result(client, wf).status == "failed"
    wait_for(lambda: wf not in flow.registry.live(), message="the keeper to retire")
    assert isinstance(client.request(RestartNode(workflow_id=wf, node="a")), Ack)
    third = sup.assign()
    assert third.attempt == 3
    sup.finish(third, ok=False, error=boom)  # the restarted run's first failure: retried
    sup.none(Assign, within=0.1)
    clock.advance(10)  # after the first backoff, not the third (10 * 100 ** 2 s)
    fourth = sup.assign()
    assert fourth.attempt == 4
    sup.finish(fourth, ok=False, error=boom)  # its second: the run has failed
    assert result(client, wf).status == "failed"
    sup.none(Assign, within=0.1)
    assert_rebuilt_equals_live(client, wf)


class _Keeper:
    """Stands for a keeper's ActorRef: notes what it is told."""

    def __init__(self, name: str, told: list[tuple[str, str]]) -> None:
        self.name, self._told = name, told

    def tell(self, message: str) -> None:
        self._told.append((self.name, message))


def test_an_ended_workflow_revived_twice_at_once_is_revived_from_its_last_commit() -> None:
    """Two requests revive an ended workflow (two SetAttrs, say). The first one's
    keeper commits and retires while the second reads the events: that read misses
    the commit, and a keeper started from it would write the same seq again (a
    UNIQUE violation: the Store stops Flow). The state is read again."""
    registry = Registry()
    told: list[tuple[str, str]] = []
    loads: list[int] = []

    def load() -> str:
        loads.append(len(loads) + 1)
        if len(loads) == 1:  # meanwhile: the first request's keeper starts, commits, leaves
            registry.add("wf", cast(Any, _Keeper("first", told)))
            assert registry.remove("wf") is not None
        return f"state as of load {len(loads)}"

    started: list[str] = []

    def start(state: str) -> Any:
        started.append(state)
        return _Keeper("second", told)

    assert registry.adopt("wf", load, start, "set attrs")
    assert started == ["state as of load 2"]
    assert told == [("second", "set attrs")]
    # A live keeper is told, not replaced; a workflow forever changing gives up.
    assert registry.adopt("wf", load, start, "again")
    assert told[-1] == ("second", "again")
    assert len(started) == 1

    def churn() -> str:
        registry.add("other", cast(Any, _Keeper("k", told)))
        registry.remove("other")
        return "stale"

    assert not registry.adopt("other", churn, start, "x", tries=3)


def test_no_keeper_is_adopted_once_flow_stops() -> None:
    """Flow's stop closes the Registry before it stops the keepers it lists: the
    Reader reviving an ended workflow meanwhile starts none that nobody stops."""
    registry = Registry()
    told: list[tuple[str, str]] = []
    registry.add("live", cast(Any, _Keeper("live", told)))
    started: list[str] = []

    def start(state: str) -> Any:
        started.append(state)
        return _Keeper("revived", told)

    assert [k.name for k in registry.close()] == ["live"]  # type: ignore[attr-defined]
    assert not registry.adopt("ended", lambda: "state", start, "restart")
    assert started == []
    assert registry.adopt("live", lambda: "state", start, "set attrs")  # told, as before
    assert told == [("live", "set attrs")]


def test_a_restarted_node_starts_without_the_earlier_runs_heartbeat_details(
        flow: Flow, client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    """Heartbeat details carry progress from an attempt to its retry; a run an
    operator restarts starts afresh, as its steps do (it would skip its work)."""
    sup = supervisor(TaskInfo(name="a", retry={"initial": 0}))
    wf = submit(client, diff(spec("a")))
    first = sup.assign()
    sup.heartbeat(first, {"done": 100})
    sup.finish(first, ok=False, error={"type": "E", "message": "boom", "retryable": True})
    retry = sup.assign()
    assert retry.history is not None
    assert retry.history.heartbeat == {"done": 100}  # a retry resumes from them
    sup.finish(retry, "ok")
    assert result(client, wf).output == "ok"
    wait_for(lambda: wf not in flow.registry.live(), message="the keeper to retire")
    assert isinstance(client.request(RestartNode(workflow_id=wf, node="a")), Ack)
    again = sup.assign()
    assert again.attempt == 3
    assert again.history is None or again.history.heartbeat is None
    sup.heartbeat(again, {"done": 100})  # the same progress, in this run: recorded
    events = history(client, wf)
    assert [(e["attempt"], e["details"]) for e in events if e["type"] == "heartbeat"] == [
        (1, {"done": 100}), (3, {"done": 100})]
    sup.finish(again, "again")
    assert result(client, wf).output == "again"
    assert_rebuilt_equals_live(client, wf)


def test_a_node_after_one_that_failed_is_not_restarted_alone(
        flow: Flow, client: Peer, supervisor: Factory) -> None:
    """b runs after a, which failed: restarting b alone would leave it waiting for
    ever (nothing runs a again). It is refused, naming a; restarting a runs both."""
    sup = supervisor("a", "b")
    wf = submit(client, chain("a", "b"), root="graph")
    sup.finish(sup.assign(node="a"), ok=False,
               error={"type": "E", "message": "boom", "retryable": False})
    assert result(client, wf).status == "failed"
    wait_for(lambda: wf not in flow.registry.live(), message="the keeper to retire")
    refused = client.request(RestartNode(workflow_id=wf, node="b"))
    assert isinstance(refused, Error)
    assert refused.code == "rejected"
    assert "b runs after a, which failed; restart a (or a node upstream of it)" \
        in refused.reason
    assert status(client, wf) == "failed"
    assert isinstance(client.request(RestartNode(workflow_id=wf, node="a")), Ack)
    sup.finish(sup.assign(node="a"), 1)
    sup.finish(sup.assign(node="b"), 2)
    assert result(client, wf).output == 2
    assert_rebuilt_equals_live(client, wf)


def test_restarting_a_parent_supersedes_its_children_until_reproposed(
        client: Peer, supervisor: Factory) -> None:
    sup = supervisor("p", "k")
    wf = submit(client, diff(spec("p")), root="p")
    p = sup.assign(node="p")
    kids = diff(spec("p.1", "k", 1, creator="p"), spec("p.2", "k", 2, creator="p"),
                proposer="p")
    assert sup.propose(p, kids).ok
    sup.finish(sup.assign(node="p.1"), 1)
    sup.finish(sup.assign(node="p.2"), 2)
    sup.finish(p, 3)
    assert result(client, wf).output == 3
    assert isinstance(client.request(RestartNode(workflow_id=wf, node="p")), Ack)
    p2 = sup.assign(node="p")
    assert p2.attempt == 2
    assert p2.history is not None
    assert [(c.seq, c.id) for c in p2.history.previous] == [(1, "p.1"), (2, "p.2")]
    assert p2.history.results == {}  # superseded: their old results are history
    assert sup.propose(p2, diff(spec("p.1", "k", 1, creator="p"), proposer="p")).ok
    again = sup.assign(node="p.1")  # re-proposed: it runs again
    assert again.attempt == 2
    sup.finish(again, 10)
    sup.finish(p2, 30)
    assert result(client, wf).output == 30
    nodes = graph(client, wf)
    assert nodes["p.2"]["state"] == "succeeded"  # not re-proposed: the first attempt's
    assert_rebuilt_equals_live(client, wf)


# --- attributes --------------------------------------------------------------------------------


def test_set_attrs_live_and_after_the_end(
        flow: Flow, client: Peer, supervisor: Factory) -> None:
    sup = supervisor("a", "b")
    wf = submit(client, diff(spec("a"), spec("b"), edges=[EdgeSpec("a", "b")]), root="graph")
    red = {"key": "color", "value": "red", "node": "a"}
    assert isinstance(client.request(SetAttrs(workflow_id=wf, changes=[red])), Ack)
    assert graph(client, wf)["a"]["attrs"]["color"] == "red"
    bad = client.request(SetAttrs(workflow_id=wf, changes=[{**red, "node": "ghost"}]))
    assert isinstance(bad, Error)
    assert bad.code == "rejected"
    assert_rebuilt_equals_live(client, wf)  # the refusal is in the events too
    sup.finish(sup.assign(node="a"), 1)
    sup.finish(sup.assign(node="b"), 2)
    assert result(client, wf).status == "succeeded"
    wait_for(lambda: wf not in flow.registry.live(), message="the keeper to retire")
    label = {"key": "label", "value": "done", "node": "b"}
    edge = {"key": "color", "value": "blue", "edge": ["a", "b"]}
    assert isinstance(client.request(SetAttrs(workflow_id=wf, changes=[label, edge])), Ack)
    assert graph(client, wf)["b"]["attrs"]["label"] == "done"
    assert status(client, wf) == "succeeded"
    wait_for(lambda: wf not in flow.registry.live(), message="the keeper to retire again")
    events = history(client, wf)
    plan = WorkflowState.rebuild(wf, [(e["seq"], e["ts"], e) for e in events]).plan
    assert plan.edges[("a", "b")].attrs == {"color": "blue"}  # the view draws no edge attrs
    assert_rebuilt_equals_live(client, wf)


# --- cron schedules ---------------------------------------------------------------------------


def add_schedule(client: Peer, name: str, cron: str = "* * * * *", overlap: str = "skip",
                 task: str = "job") -> Any:
    info = ScheduleInfo(name=name, cron=cron, overlap=overlap,
                        target=f"tasks:{task}")
    submit_msg = Submit(name=task, root=task, diff=diff(spec(task)))
    return client.request(AddSchedule(schedule=info, submit=submit_msg))


def schedules(client: Peer) -> dict[str, ScheduleInfo]:
    reply = client.request(ListSchedules())
    assert isinstance(reply, ScheduleList)
    return {s.name: s for s in reply.schedules}


def tick(client: Peer, clock: FakeClock, name: str, seconds: float) -> None:
    """Move time on and wait until the schedule has taken its tick."""
    now = clock.advance(seconds)
    wait_for(lambda: (schedules(client)[name].next_fire or 0) > now, message=f"{name}'s tick")


def test_schedule_ticks_submit_runs_and_skip_overlaps(
        flow: Flow, client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    sup = supervisor("job")
    assert isinstance(add_schedule(client, "nightly"), Ack)
    first_tick = T0 + 40  # 22:14:00
    assert schedules(client)["nightly"].next_fire == first_tick
    sup.none(Assign, within=0.1)
    clock.advance(40)
    run = sup.assign()
    assert run.workflow_id == run_id("nightly", first_tick) == "nightly-20231114T2214Z"
    tick(client, clock, "nightly", 60)  # the next tick finds the run live: skipped
    sup.none(Assign, within=0.1)
    assert flow.counters.get("schedule.skipped") == 1
    sup.finish(run, "done")
    assert result(client, run.workflow_id).output == "done"
    clock.advance(60)
    nxt = sup.assign()
    assert nxt.workflow_id == "nightly-20231114T2216Z"
    info = schedules(client)["nightly"]
    assert (info.last_run, info.last_fired, info.next_fire) == (
        nxt.workflow_id, first_tick + 120, first_tick + 180)
    assert isinstance(client.request(RemoveSchedule(name="nightly")), Ack)
    assert schedules(client) == {}
    clock.advance(600)
    sup.none(Assign, within=0.2)
    gone = client.request(RemoveSchedule(name="nightly"))
    assert isinstance(gone, Error)
    assert gone.code == "not_found"


def test_schedules_sharing_ticks_share_timers(
        flow: Flow, client: Peer, clock: FakeClock) -> None:
    for name in ("x", "y", "z"):
        add_schedule(client, name, cron="*/2 * * * *")
    add_schedule(client, "w")
    for _ in range(6):
        tick(client, clock, "w", 60)
    # one look at Flow's start, then one per distinct tick time, however many schedules
    assert flow.counters.get("schedule.checks") == 1 + 6
    assert flow.counters.get("schedule.runs") == 4  # the first tick; later ones overlap
    assert flow.counters.get("schedule.skipped") == 5 + 2 * 3


def test_schedule_overlap_queue_starts_when_the_previous_run_ends(
        client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    sup = supervisor("job")
    add_schedule(client, "q", overlap="queue")
    clock.advance(40)
    first = sup.assign()
    tick(client, clock, "q", 60)  # queued
    tick(client, clock, "q", 60)  # at most one queued: dropped
    sup.none(Assign, within=0.1)
    sup.finish(first, 1)
    second = sup.assign()
    assert second.workflow_id == "q-20231114T2215Z"  # the queued tick's run
    sup.none(Assign, within=0.2)
    sup.finish(second, 2)
    assert result(client, second.workflow_id).output == 2


def test_schedule_overlap_cancel_cancels_the_previous_run_first(
        client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    sup = supervisor("job")
    add_schedule(client, "c", overlap="cancel")
    clock.advance(40)
    first = sup.assign()
    clock.advance(60)
    cancel = sup.next(CancelTask)
    assert cancel.workflow_id == first.workflow_id
    second = sup.assign()
    assert second.workflow_id == "c-20231114T2215Z"
    assert result(client, first.workflow_id).status == "cancelled"
    sup.finish(second, "ok")
    assert result(client, second.workflow_id).output == "ok"


def test_a_schedule_replaced_or_added_again_keeps_to_its_overlap_policy(
        flow: Flow, client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    """Added again after a removal it forgot the run still live, and overlapped it;
    replaced by a "skip" one, the old "queue" policy's queued tick still started."""
    sup = supervisor("job")
    add_schedule(client, "q", overlap="queue")
    clock.advance(40)
    first = sup.assign()
    tick(client, clock, "q", 60)  # queued behind the live run
    assert isinstance(add_schedule(client, "q", overlap="skip"), Ack)  # replaced
    sup.finish(first, 1)
    assert result(client, first.workflow_id).output == 1
    sup.none(Assign, within=0.2)  # the queued tick is dropped with its policy
    wait_for(lambda: first.workflow_id not in flow.registry.live(), message="the retirement")
    clock.advance(60)
    second = sup.assign()
    assert isinstance(client.request(RemoveSchedule(name="q")), Ack)
    assert isinstance(add_schedule(client, "q"), Ack)  # again, "skip"
    tick(client, clock, "q", 60)
    sup.none(Assign, within=0.2)  # second still runs: skipped
    assert schedules(client)["q"].last_run == second.workflow_id
    sup.finish(second, 2)


def test_bad_schedules_are_refused(client: Peer) -> None:
    bad = add_schedule(client, "x", cron="61 * * * *")
    assert isinstance(bad, Error)
    assert (bad.code, "cron" in bad.reason) == ("invalid", True)
    info = ScheduleInfo(name="y", cron="@daily", target="t")
    broken = Submit(name="y", root="y", diff=diff(spec("y"), edges=[("y", "nowhere")]))
    refused = client.request(AddSchedule(schedule=info, submit=broken))
    assert isinstance(refused, Error)
    assert refused.code == "invalid"
    # A diff whose applying raises TypeError (an unhashable creator) is refused too,
    # and the Scheduler lives on: it still answers, and still adds schedules.
    mangled_diff = diff(spec("y"))
    mangled_diff["nodes"][0]["creator"] = []
    mangled = Submit(name="y", root="y", diff=mangled_diff)
    refused = client.request(AddSchedule(schedule=info, submit=mangled))
    assert isinstance(refused, Error)
    assert refused.code == "invalid"
    assert schedules(client) == {}
    assert not isinstance(add_schedule(client, "z"), Error)
    assert set(schedules(client)) == {"z"}


def test_a_missed_tick_fires_once_after_downtime_never_twice(
        tmp_path: Any, clock: FakeClock) -> None:
    s = settings(tmp_path, clock=clock)

    def runs(endpoint: str) -> list[str]:
        peer = Peer(endpoint)
        try:
            return sorted(r.workflow_id for r in peer.request(GetStatus()).runs)
        finally:
            peer.close()

    flow = Flow(s).start()
    peer = Peer(flow.endpoint)
    try:
        assert isinstance(add_schedule(peer, "m", cron="*/5 * * * *"), Ack)  # next: 22:15
    finally:
        peer.close()
        flow.stop()
    clock.advance(3 * 3600)  # down for hours: 36 ticks missed
    flow = Flow(s).start()
    try:
        wait_for(lambda: runs(flow.endpoint), message="the missed tick's run")
        assert runs(flow.endpoint) == ["m-20231115T0110Z"]  # the latest missed tick, once
        peer = Peer(flow.endpoint)
        peer.request(CancelWorkflow(workflow_id="m-20231115T0110Z"))  # over: no overlap
        peer.close()
    finally:
        flow.stop()
    # The run was recorded but say the schedule's own row was not: the tick comes again.
    db = Database(s.db)
    body = unpack(db.conn.execute("SELECT body FROM schedules").fetchone()[0])
    body["info"]["next_fire"] = body["info"]["last_fired"]
    db.conn.execute("UPDATE schedules SET body = ?", (pack(body),))
    db.close()
    flow = Flow(s).start()
    try:
        wait_for(lambda: flow.counters.get("schedule.duplicate") == 1, message="the retry")
        assert runs(flow.endpoint) == ["m-20231115T0110Z"]  # its id is taken: never twice
    finally:
        flow.stop()


def runs(client: Peer) -> dict[str, str]:
    return {r.workflow_id: str(r.status) for r in client.request(GetStatus()).runs}


def test_a_run_lost_in_a_crash_after_its_schedule_was_committed_starts_at_restart(
        tmp_path: Any, clock: FakeClock) -> None:
    """The schedule's row (next tick, last run) and the run's submission are two
    commits: if only the first made it, the run starts at restart, under its id."""
    s = settings(tmp_path, clock=clock)
    wf = "m-20231114T2215Z"
    flow = Flow(s).start()
    peer = Peer(flow.endpoint)
    try:
        assert isinstance(add_schedule(peer, "m", cron="*/5 * * * *"), Ack)
        clock.advance(120)  # 22:15
        wait_for(lambda: runs(peer) == {wf: "running"}, message="the tick's run")
    finally:
        peer.close()
        flow.stop()
    db = Database(s.db)  # as if Flow went down between the two commits
    for table, key in (("events", "wf"), ("workflows", "id")):
        db.conn.execute(f"DELETE FROM {table} WHERE {key} = ?", (wf,))
    db.close()
    def restart() -> int:
        """Runs recovered by one more Flow lifetime, which finds the run live."""
        again = Flow(s).start()
        client = Peer(again.endpoint)
        try:
            wait_for(lambda: again.counters.get("schedule.checks") >= 1, message="the checks")
            wait_for(lambda: runs(client) == {wf: "running"}, message="the run")
            return again.counters.get("schedule.recovered")
        finally:
            client.close()
            again.stop()

    assert [restart(), restart()] == [1, 0]  # once only: the id is taken from then on


def test_a_cancel_overlap_cut_short_by_a_crash_cancels_at_restart(
        tmp_path: Any, clock: FakeClock) -> None:
    """The tick that cancels the previous run was committed, the cancel was not: the
    restarted Flow cancels it, and the tick's run starts once it has ended."""
    s = settings(tmp_path, clock=clock)
    first, second = "c-20231114T2214Z", "c-20231114T2215Z"
    flow = Flow(s).start()
    peer = Peer(flow.endpoint)
    sup = FakeSupervisor(flow.endpoint, ["job"])
    try:
        add_schedule(peer, "c", overlap="queue")
        clock.advance(40)  # 22:14
        assert sup.assign().workflow_id == first
        clock.advance(60)  # 22:15: queued behind the first run
        wait_for(lambda: schedules(peer)["c"].last_fired == T0 + 100, message="the tick")
    finally:
        sup.close()
        peer.close()
        flow.stop()
    db = Database(s.db)  # the same, with "cancel" (its CancelWorkflow never committed)
    body = unpack(db.conn.execute("SELECT body FROM schedules").fetchone()[0])
    body["info"]["overlap"] = "cancel"
    db.conn.execute("UPDATE schedules SET body = ?", (pack(body),))
    db.close()
    flow = Flow(s).start()
    peer = Peer(flow.endpoint)
    sup = FakeSupervisor(flow.endpoint, ["job"])
    try:
        assert sup.assign().workflow_id == second
        assert status(peer, first) == "cancelled"
    finally:
        sup.close()
        peer.close()
        flow.stop()


# --- the cache ---------------------------------------------------------------------------------


def test_a_cached_result_serves_another_workflow_without_running(
        flow: Flow, client: Peer, supervisor: Factory) -> None:
    sup = supervisor(TaskInfo(name="square", cache=True, version="1"), "use")
    square = diff(spec("square", "square", 3, exp=2))
    first = submit(client, square, root="square")
    a = sup.assign()
    assert a.inputs == {"args": [3], "kwargs": {"exp": 2}}
    sup.finish(a, 9)
    assert result(client, first).output == 9
    second = submit(client, diff(spec("square", "square", 3, exp=2), spec("use", "use",
                                 {"$ref": "square"}), edges=[EdgeSpec("square", "use",
                                                                     data=True)]),
                    root="use")
    use = sup.assign()
    assert use.node == "use"  # square was never assigned: served from the cache
    assert use.inputs == {"args": [9], "kwargs": {}}
    sup.finish(use, "used")
    assert result(client, second).output == "used"
    assert graph(client, second)["square"]["attrs"] == {"cached": True}
    assert states(history(client, second), "square") == [("running", 1), ("succeeded", 1)]
    assert flow.counters.get("cache.hits") == 1
    third = submit(client, diff(spec("square", "square", 4, exp=2)), root="square")
    miss = sup.assign()  # other inputs: a miss
    assert miss.workflow_id == third
    sup.finish(miss, 16)
    assert result(client, third).output == 16
    assert_rebuilt_equals_live(client, second)


def test_a_new_task_version_misses_the_cache(
        flow: Flow, client: Peer, supervisor: Factory) -> None:
    old = supervisor(TaskInfo(name="f", cache=True, version="1"), supervisor_id="s")
    wf = submit(client, diff(spec("f", "f", 1)), root="f")
    old.finish(old.assign(), "v1")
    assert result(client, wf).output == "v1"
    old.close()  # redeployed: the same supervisor comes back with version 2
    new = supervisor(TaskInfo(name="f", cache=True, version="2"), supervisor_id="s")
    wf2 = submit(client, diff(spec("f", "f", 1)), root="f")
    new.finish(new.assign(), "v2")
    assert result(client, wf2).output == "v2"
    assert flow.counters.get("cache.hits") == 0


def test_a_cached_task_that_promised_a_shape_runs_instead_of_breaking_it(
        client: Peer, supervisor: Factory) -> None:
    """A hit creates nothing: its region closed empty against Shape(g), and an
    honest workflow was terminated as violated on every hit."""
    sup = supervisor(TaskInfo(name="f", cache=True, version="1"), "g")
    for run in range(2):
        wf = submit(client, diff(spec("f", "f", 1), promises=[("f", Shape("g"))]), root="f")
        f = sup.assign(node="f")
        assert sup.propose(f, diff(spec("f.1", "g", creator="f"), proposer="f")).ok
        sup.finish(sup.assign(node="f.1"), "g ran")
        sup.finish(f, f"run {run}")
        done = result(client, wf)
        assert (done.status, done.output) == ("succeeded", f"run {run}")


def test_a_result_of_other_code_than_its_key_was_made_for_is_not_cached(
        flow: Flow, client: Peer, supervisor: Factory) -> None:
    """A rolling deploy: the key is made for version 2 (the latest Hello), and a
    supervisor still on version 1 runs the node. Its result, stored under the v2
    key, answered every later v2 call for good."""
    old = supervisor(TaskInfo(name="f", cache=True, version="1"), supervisor_id="old")
    supervisor(TaskInfo(name="f", cache=True, version="2"), supervisor_id="new", slots=0)
    wf = submit(client, diff(spec("f", "f", 1)), root="f")
    old.finish(old.assign(), "by v1")
    assert result(client, wf).output == "by v1"
    assert flow.counters.get("cache.other_version") == 1
    again = submit(client, diff(spec("f", "f", 1)), root="f")
    old.finish(old.assign(), "by v1 again", version="2")  # as if upgraded meanwhile
    assert result(client, again).output == "by v1 again"  # a miss: it ran
    assert flow.counters.get("cache.hits") == 0


def test_a_restarted_cached_node_runs_again(
        flow: Flow, client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    """Its first run filled the cache; the restart hit that entry and redid nothing."""
    sup = supervisor(TaskInfo(name="f", cache=True, version="1"))
    wf = submit(client, diff(spec("f", "f", 1)), root="f")
    sup.finish(sup.assign(), "first")
    assert result(client, wf).output == "first"
    assert isinstance(client.request(RestartNode(workflow_id=wf, node="f")), Ack)
    again = sup.assign()
    assert again.attempt == 2
    sup.finish(again, ok=False, error={"type": "E", "message": "", "retryable": True})
    clock.advance(60)  # its backoff
    retried = sup.assign()  # the restarted run's retry runs too
    assert retried.attempt == 3
    sup.finish(retried, "redone")
    assert result(client, wf).output == "redone"
    assert flow.counters.get("cache.hits") == 0


def test_a_reply_that_cannot_be_encoded_becomes_an_error_not_a_dead_keeper() -> None:
    """Raised in the keeper's flush, it lost the batch's events and ended the keeper."""
    frame = _encoded(QueryReply(id="q-1", workflow_id="w", state=object()))
    reply = unpack(frame)
    assert (reply["type"], reply["id"], reply["code"]) == ("error", "q-1", "internal")
    assert "could not be encoded" in reply["reason"]


def test_a_cached_task_inside_an_ancestors_shape_runs_instead_of_breaking_it(
        client: Peer, supervisor: Factory) -> None:
    """Shape(Seq(f, g)) on the root, with f creating g: a hit on f created no g,
    and the root's region closed incomplete (violated) on every hit."""
    sup = supervisor(TaskInfo(name="f", cache=True, version="1"), "g", "root")
    for run in range(2):
        wf = submit(client, diff(spec("r", "root"), promises=[("r", Shape(Seq("f", "g")))]),
                    root="r")
        r = sup.assign(node="r")
        assert sup.propose(r, diff(spec("r.1", "f", 1, creator="r"), proposer="r")).ok
        f = sup.assign(node="r.1")
        assert sup.propose(f, diff(spec("r.1.1", "g", creator="r.1"), edges=[("r.1", "r.1.1")],
                                   proposer="r.1")).ok  # ctx.then(g)
        sup.finish(f, "f")
        sup.finish(sup.assign(node="r.1.1"), "g")  # after f
        sup.finish(r, f"run {run}")
        done = result(client, wf)
        assert (done.status, done.output) == ("succeeded", f"run {run}")


def test_a_cache_key_tells_apart_what_json_would_merge() -> None:
    assert cache_key("t", "1", [b"x"]) != cache_key("t", "1", ["b'x'"])
    assert cache_key("t", "1", {"a": 1}) != cache_key("t", "1", [["a", 1]])
    assert cache_key("t", "1", [1]) != cache_key("t", "1", [1.0])
    assert cache_key("t", "1", {"a": 1, "b": {"c": 2, "d": 3}}) == cache_key(
        "t", "1", {"b": {"d": 3, "c": 2}, "a": 1})  # whatever the order of the keys
    assert cache_key("t", "1", {b"k": 1}) != cache_key("t", "1", {"k": 1})
    assert cache_key("t", "1", [1]) != cache_key("t", "2", [1])


def test_a_cached_task_with_a_bytes_keyed_map_in_its_inputs_runs(
        client: Peer, supervisor: Factory) -> None:
    """Its key could not be made as JSON: the node was never queued, and hung."""
    sup = supervisor(TaskInfo(name="f", cache=True, version="1"))
    wf = submit(client, diff(spec("f", "f", {b"k": 1})), root="f")
    a = sup.assign()
    assert a.inputs == {"args": [{b"k": 1}], "kwargs": {}}
    sup.finish(a, "ran")
    assert result(client, wf).output == "ran"


def test_signal_to_an_unknown_workflow_is_not_found(client: Peer) -> None:
    for ask in (SendSignal(workflow_id="nope", name="x"), PauseWorkflow(workflow_id="nope"),
                RestartNode(workflow_id="nope", node="a"), AwaitResult(workflow_id="nope")):
        reply = client.request(ask)
        assert isinstance(reply, Error), ask
        assert reply.code == "not_found", (ask, reply)
