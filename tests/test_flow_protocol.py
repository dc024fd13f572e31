"""Flow over its real sockets, driven by a fake client and fake supervisors.

Each test starts a Flow (in this process, on free loopback ports, with its own
SQLite file) and speaks the wire protocol to it through DEALER sockets: the
client submits and asks, the supervisor says Hello, receives Assign and
answers with Propose, Wait and Finish as a worker would.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
from flowkit import (
    FakeSupervisor,
    Peer,
    diff,
    flow_process,
    history,
    result,
    settings,
    spec,
    states,
    submit,
)

from plait.actors import flow as flow_module
from plait.actors.flow import Flow, run_flow
from plait.actors.gateway import Gateway
from plait.actors.history import WorkflowState
from plait.actors.mail import Lost, Start, Tick, Welcomed, Write
from plait.actors.membership import Membership
from plait.actors.registry import Registry
from plait.actors.retry import RetryPolicy
from plait.client import Client
from plait.errors import DatabaseInUse
from plait.protocol.codec import PROTOCOL_VERSION, decode, encode, pack
from plait.protocol.diff import EdgeSpec
from plait.protocol.messages import (
    Ack,
    Assign,
    AttemptRef,
    AwaitResult,
    CancelTask,
    CancelWorkflow,
    Error,
    FeedEvent,
    Finish,
    GetGraph,
    GetHistory,
    GetStatus,
    Heartbeat,
    Message,
    Proposed,
    Resolved,
    Submit,
    TaskInfo,
    Wait,
)
from plait.protocol.promises import MaxParallel, NoNewNodes
from plait.protocol.sockets import tcp
from plait.testing import free_port, wait_for

SupervisorFactory = Callable[..., FakeSupervisor]


def assigned_in(workflow_id: str) -> Callable[[Message], bool]:
    """Matches an Assign of that workflow."""
    return lambda m: isinstance(m, Assign) and m.workflow_id == workflow_id


# --- the happy paths ------------------------------------------------------------------


def test_run_flow_in_a_thread_serves_and_stops(tmp_path: Any) -> None:
    port = free_port()
    ready, stop = threading.Event(), threading.Event()
    s = settings(tmp_path, port=port, feed_port=0)
    thread = threading.Thread(target=run_flow, args=(s,), kwargs={"ready": ready, "stop": stop})
    thread.start()
    try:
        assert ready.wait(10)
        endpoint = f"tcp://127.0.0.1:{port}"
        client, sup = Peer(endpoint), FakeSupervisor(endpoint, ["a"])
        wf = submit(client, diff(spec("a", "a", 20)))
        a = sup.assign()
        assert a.inputs == {"args": [20], "kwargs": {}}
        sup.finish(a, 21)
        assert result(client, wf).output == 21
        client.close()
        sup.close()
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()


def _stops_within(flow: Flow, seconds: float) -> bool:
    stopping = threading.Thread(target=flow.stop, daemon=True)  # left behind if it hangs
    stopping.start()
    stopping.join(seconds)
    return not stopping.is_alive()


def test_a_flow_whose_store_failed_reports_it_and_still_stops(tmp_path: Any) -> None:
    """pykka skips on_stop for a failed actor: its socket stayed open and Flow's
    stop hung for ever in the context's term. A failed Store is also fatal."""
    fatal = threading.Event()
    flow = Flow(settings(tmp_path), on_fatal=lambda exc: fatal.set()).start()

    def boom() -> None:
        raise RuntimeError("a callback failed")

    flow.store.tell(Write(then=boom))
    assert fatal.wait(10)
    assert isinstance(flow.failure, RuntimeError)
    assert _stops_within(flow, 15)
    assert flow.stopped_cleanly


def test_a_flow_whose_membership_failed_stops(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    failed = threading.Event()

    def tick(self: Membership) -> None:
        failed.set()
        raise RuntimeError("a tick failed")

    monkeypatch.setattr(Membership, "_tick", tick)
    fatal = threading.Event()
    flow = Flow(settings(tmp_path), on_fatal=lambda exc: fatal.set()).start()
    flow.membership.tell(Tick())
    assert failed.wait(10)
    assert fatal.wait(10)  # no supervisor could be welcomed any more
    assert _stops_within(flow, 15)
    assert flow.stopped_cleanly


def test_a_socket_left_open_does_not_hang_the_stop(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    monkeypatch.setattr(flow_module, "STOP_TIMEOUT", 0.5)
    flow = Flow(settings(tmp_path)).start()
    stray = flow.zctx.socket(zmq.PUSH)  # as a thread that never stopped would hold
    try:
        assert _stops_within(flow, 10)
        assert not flow.stopped_cleanly
        assert "a socket is still open after stop" in caplog.text
        # Something of it may still write: its database stays locked meanwhile.
        with pytest.raises(DatabaseInUse):
            Flow(settings(tmp_path)).start()
    finally:
        stray.close(linger=0)  # the context's term, left waiting, ends
        flow._lock.release()  # what the process's exit would do


def test_one_database_serves_one_flow_at_a_time(flow: Flow, client: Peer) -> None:
    wf = submit(client, diff(spec("a")))
    second = Flow(settings(Path(flow.settings.db).parent))
    with pytest.raises(DatabaseInUse, match=rf"in use by another Flow \(pid {os.getpid()}\)"):
        second.start()
    assert client.request(GetStatus(workflow_id=wf)).runs[0].status == "running"


def test_one_zeromq_message_may_carry_several_requests(client: Peer) -> None:
    beats = [Heartbeat(), Heartbeat()]  # from a peer that never said Hello
    client.send_raw(*(encode(b) for b in beats))
    replies = [client.next(Error), client.next(Error)]
    assert [r.id for r in replies] == [b.id for b in beats]
    assert {r.code for r in replies} == {"unavailable"}


def test_static_graph_runs_in_order_with_data_resolved(
        client: Peer, supervisor: SupervisorFactory) -> None:
    sup = supervisor("a", "b")
    d = diff(spec("a", "a", 1), spec("b", "b", {"x": [{"$ref": "a"}]}),
             edges=[EdgeSpec("a", "b", data=True)])
    wf = submit(client, d, root="b", workflow_id="static-1")
    assert wf == "static-1"
    waiting = client.send(AwaitResult(workflow_id=wf))  # long poll: answered at the end
    a = sup.assign()
    assert (a.node, a.attempt, a.idempotency_key) == ("a", 1, "static-1/a")
    sup.none(Assign, within=0.2)  # b waits for a
    sup.finish(a, {"n": 41})
    b = sup.assign()
    assert b.inputs == {"args": [{"x": [{"n": 41}]}], "kwargs": {}}
    client.none(lambda m: m.id == waiting.id, within=0.05)
    sup.finish(b, 42)
    done = client.next(lambda m: m.id == waiting.id)
    assert (done.status, done.output) == ("succeeded", 42)


def test_spawn_wait_resolved_and_finish(client: Peer, supervisor: SupervisorFactory) -> None:
    sup = supervisor("parent", "child")
    wf = submit(client, diff(spec("parent", "parent")), root="parent")
    p = sup.assign(node="parent")
    kids = diff(spec("parent.1", "child", 1, creator="parent"),
                spec("parent.2", "child", 2, creator="parent"), proposer="parent")
    assert sup.propose(p, kids).ok
    assert sup.propose(p, kids).ok  # re-sent after a reconnect: a no-op
    wait = sup.wait(p, ["parent.1", "parent.2", "parent.1"])
    c1, c2 = sup.assign(node="parent.1"), sup.assign(node="parent.2")
    graph = client.request(GetGraph(workflow_id=wf, unfold=True)).graph
    assert {n["id"]: n["state"] for n in graph["nodes"] if not n["provisional"]} == {
        "parent": "suspended", "parent.1": "running", "parent.2": "running"}
    sup.finish(c1, 10)
    sup.none(Resolved, within=0.05)
    sup.finish(c2, ok=False, error={"type": "KeyError", "message": "x", "retryable": False})
    resolved = sup.next(lambda m: m.id == wait.id)
    assert isinstance(resolved, Resolved)
    assert resolved.results["parent.1"].output == 10
    assert resolved.results["parent.2"].state == "failed"
    assert (resolved.results["parent.2"].error or {}).get("type") == "KeyError"
    sup.finish(p, "handled")
    done = result(client, wf)
    # A workflow submitted as a task follows its root: the root handled the failure.
    assert (done.status, done.output, done.error) == ("succeeded", "handled", None)
    assert states(history(client, wf), "parent") == [
        ("running", 1), ("suspended", 1), ("running", 1), ("succeeded", 1)]


def test_a_wait_carries_the_spawns_it_awaits(
        client: Peer, supervisor: SupervisorFactory) -> None:
    sup = supervisor("parent", "child")
    wf = submit(client, diff(spec("parent", "parent")), root="parent")
    p = sup.assign(node="parent")
    kids = diff(spec("parent.1", "child", 7, creator="parent"), proposer="parent")
    wait = sup.send(Wait(workflow_id=wf, node="parent", attempt=p.attempt,
                         handles=["parent.1"], diff=kids))  # one message, no Propose
    c = sup.assign(node="parent.1")
    assert c.inputs == {"args": [7], "kwargs": {}}
    sup.finish(c, 8)
    resolved = sup.next(lambda m: m.id == wait.id)
    assert isinstance(resolved, Resolved)
    assert resolved.results["parent.1"].output == 8
    sup.finish(p, "done")
    assert result(client, wf).output == "done"
    events = [(e["type"], e.get("node")) for e in history(client, wf)
              if e["type"] in ("diff", "wait", "state") and e.get("node") in (None, "parent")]
    diff_at = events.index(("diff", None), 1)  # after the registration's
    assert events[diff_at + 1] == ("state", "parent")  # then the parent suspends


@pytest.mark.parametrize("resident", [True, False])
def test_a_refused_wait_diff_is_answered_like_a_propose(
        client: Peer, supervisor: SupervisorFactory, resident: bool) -> None:
    sup = supervisor("a")
    wf = submit(client, diff(spec("a")))
    a = sup.assign()
    bad = diff(spec("a.1", "a", creator="a"), edges=[("a.1", "ghost")], proposer="a")
    reply = sup.request(Wait(workflow_id=wf, node="a", attempt=a.attempt, handles=["a.1"],
                             diff=bad, resident=resident))
    assert isinstance(reply, Proposed)
    assert not reply.ok
    assert reply.rejection is not None
    assert reply.rejection["kind"] == "plan"
    if resident:  # the task raises PlanError and goes on; here it succeeds anyway
        sup.none(CancelTask, within=0.1)
        sup.finish(a, 1)
        assert result(client, wf).status == "succeeded"
    else:  # evicted: no task is left to raise it, so Flow fails the node as it would
        done = result(client, wf)
        assert done.status == "failed"
        assert done.error is not None
        assert (done.error["node"], done.error["type"]) == ("a", "PlanError")
    assert [e["type"] for e in history(client, wf)].count("rejected") == 1
    assert "a.1" not in {n["id"] for n in client.request(GetGraph(workflow_id=wf)).graph["nodes"]}


# --- retries and exactly-once -------------------------------------------------------------


def test_retry_after_failure_counts_the_result_once(
        flow: Flow, client: Peer, supervisor: SupervisorFactory) -> None:
    sup = supervisor("a")
    wf = submit(client, diff(spec("a")))
    first = sup.assign()
    sup.finish(first, ok=False, error={"type": "IOError", "message": "flaky",
                                        "retryable": True})
    second = sup.assign()
    assert (second.node, second.attempt) == ("a", 2)
    assert second.idempotency_key == first.idempotency_key
    dropped = flow.counters.get("dropped.finish")
    assert isinstance(sup.finish(first, "late"), Ack)  # the lost attempt's result: dropped
    sup.finish(second, "ok")
    assert isinstance(sup.finish(second, "again"), Ack)  # a duplicate: dropped
    assert flow.counters.get("dropped.finish") == dropped + 2
    assert result(client, wf).output == "ok"
    assert states(history(client, wf), "a") == [
        ("running", 1), ("ready", 2), ("running", 2), ("succeeded", 2)]


def test_a_finish_reaching_a_keeper_as_it_leaves_is_acknowledged_and_counted(
        flow: Flow, client: Peer, supervisor: SupervisorFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A duplicate Finish told to the keeper just before it left the Registry is
    answered by the leaving keeper as the Gateway answers one after: an Ack, and
    counted as dropped (the Reader it went to before acknowledged it uncounted)."""
    sup = supervisor("a")
    wf = submit(client, diff(spec("a")))
    a = sup.assign()
    leaving, go = threading.Event(), threading.Event()
    remove = Registry.remove

    def held_remove(self: Registry, workflow_id: str) -> Any:
        if workflow_id == wf:
            leaving.set()
            go.wait(10)
        return remove(self, workflow_id)

    monkeypatch.setattr(Registry, "remove", held_remove)
    keeper = flow.registry._keepers[wf]
    sup.finish(a, "ok")
    assert leaving.wait(10)
    dropped = flow.counters.get("dropped.finish")
    again = sup.send(Finish(workflow_id=wf, node="a", attempt=1, ok=True, output="again"))
    wait_for(lambda: not keeper.actor_inbox.empty(), message="the duplicate in the inbox")
    go.set()
    assert isinstance(sup.next(lambda m: m.id == again.id or again.id in getattr(m, "more", ())),
                      Ack)
    assert flow.counters.get("dropped.finish") == dropped + 1
    assert result(client, wf).output == "ok"


def test_timeout_stops_and_retries_the_attempt(
        flow: Flow, client: Peer, supervisor: SupervisorFactory) -> None:
    sup = supervisor(TaskInfo(name="a", timeout=0.5))
    wf = submit(client, diff(spec("a")))
    first = sup.assign()
    sup.started(first)
    cancel = sup.next(CancelTask)
    assert (cancel.node, cancel.attempt) == ("a", 1)
    second = sup.assign()
    assert second.attempt == 2
    sup.finish(first, "too late")
    sup.finish(second, "in time")
    assert result(client, wf).output == "in time"
    assert flow.counters.get("attempts.timed_out") == 1
    wait_for(lambda: wf not in flow.registry.live(), message="the keeper to retire")


def test_an_attempt_queued_at_its_supervisor_counts_its_timeout_from_its_start(
        flow: Flow, client: Peer, supervisor: SupervisorFactory) -> None:
    sup = supervisor(TaskInfo(name="a", timeout=1.0))
    submit(client, diff(spec("a")))
    a = sup.assign()
    sup.none(CancelTask, within=1.2)  # longer than its timeout, in the supervisor's queue
    assert isinstance(sup.started(a), Ack)  # a worker took it: the count starts
    sup.none(CancelTask, within=0.5)
    assert isinstance(sup.started(a), Ack)  # re-sent after a reconnection: moves nothing
    cancel = sup.next(CancelTask, timeout=0.8)  # 1.0 s after the first notice
    assert (cancel.node, cancel.attempt) == ("a", 1)
    assert flow.counters.get("attempts.timed_out") == 1


def test_retry_policy_from_hello(client: Peer, supervisor: SupervisorFactory) -> None:
    sup = supervisor(TaskInfo(name="a", retry={"max_attempts": 2, "initial": 0.0,
                                               "non_retryable": ["ValueError"]}),
                     TaskInfo(name="b"))
    wf = submit(client, diff(spec("a"), spec("b")), root="graph")  # a Graph: no root node
    boom = {"type": "RuntimeError", "message": "boom", "retryable": True}
    sup.finish(sup.assign(node="a"), ok=False, error=boom)
    sup.finish(sup.assign(node="a"), ok=False, error=boom)  # attempt 2 of 2
    sup.finish(sup.assign(node="b"), ok=False,
               error={"type": "ValueError", "message": "bad", "retryable": False})
    done = result(client, wf)
    assert done.status == "failed"
    assert done.error is not None
    assert (done.error["node"], done.error["attempts"]) == ("a", 2)
    events = history(client, wf)
    assert states(events, "a")[-1] == ("failed", 2)
    assert states(events, "b") == [("running", 1), ("failed", 1)]


def test_failure_cancels_what_can_no_longer_run(
        client: Peer, supervisor: SupervisorFactory) -> None:
    sup = supervisor("a", "b", "c")
    wf = submit(client, diff(spec("a"), spec("b"), spec("c"), edges=[("a", "b"), ("b", "c")]))
    sup.finish(sup.assign(), ok=False, error={"type": "E", "message": "", "retryable": False})
    done = result(client, wf)
    assert done.status == "failed"
    events = history(client, wf)
    assert states(events, "b") == [("cancelled", 1)]
    assert states(events, "c") == [("cancelled", 1)]


# --- promises, cancellation --------------------------------------------------------------


def test_violation_terminates_the_workflow(client: Peer, supervisor: SupervisorFactory) -> None:
    sup = supervisor("r", "s", "child")
    wf = submit(client, diff(spec("r"), spec("s"), promises=[("r", NoNewNodes())]), root="r")
    r, s = sup.assign(node="r"), sup.assign(node="s")
    proposed = sup.propose(r, diff(spec("r.1", "child", creator="r"), proposer="r"))
    assert not proposed.ok
    assert proposed.rejection is not None
    assert proposed.rejection["kind"] == "violation"
    cancels = {sup.next(CancelTask).node, sup.next(CancelTask).node}
    assert cancels == {"r", "s"}
    done = result(client, wf)
    assert done.status == "violated"
    assert done.error is not None
    assert done.error["type"] == "PromiseViolation"
    assert done.error["owner"] == "r"
    graph = client.request(GetGraph(workflow_id=wf)).graph
    assert graph["violations"]
    assert graph["violations"][0]["promise"] == "NoNewNodes()"
    assert isinstance(sup.finish(s, "late"), Ack)
    sup.none(Assign, within=0.1)


def test_plan_error_is_refused_without_ending_the_workflow(
        client: Peer, supervisor: SupervisorFactory) -> None:
    sup = supervisor("a")
    wf = submit(client, diff(spec("a")))
    a = sup.assign()
    bad = sup.propose(a, diff(spec("a.1", "a", creator="a"), edges=[("a.1", "ghost")],
                              proposer="a"))
    assert not bad.ok
    assert bad.rejection is not None
    assert bad.rejection["kind"] == "plan"
    sup.finish(a, 1)
    assert result(client, wf).status == "succeeded"
    assert [e["type"] for e in history(client, wf)].count("rejected") == 1


def test_cancel_stops_running_attempts(
        flow: Flow, client: Peer, supervisor: SupervisorFactory) -> None:
    sup = supervisor("a", "b")
    wf = submit(client, diff(spec("a"), spec("b"), edges=[("a", "b")]))
    a = sup.assign()
    assert isinstance(client.request(CancelWorkflow(workflow_id=wf)), Ack)
    cancel = sup.next(CancelTask)
    assert (cancel.node, cancel.attempt) == ("a", 1)
    assert result(client, wf).status == "cancelled"
    sup.finish(a, 1)
    sup.none(Assign, within=0.1)
    assert isinstance(client.request(CancelWorkflow(workflow_id=wf)), Ack)  # idempotent
    status = client.request(GetStatus(workflow_id=wf))
    assert status.runs[0].status == "cancelled"


def test_max_parallel_limits_running_children(
        client: Peer, supervisor: SupervisorFactory) -> None:
    sup = supervisor("root", "kid", slots=8)
    wf = submit(client, diff(spec("root"), promises=[("root", MaxParallel(2))]), root="root")
    root = sup.assign(node="root")
    kids = [spec(f"root.{i}", "kid", i, creator="root") for i in range(5)]
    assert sup.propose(root, diff(*kids, proposer="root")).ok
    running = [sup.assign(), sup.assign()]
    sup.none(Assign, within=0.2)
    for _ in range(3):
        sup.finish(running.pop(0), 0)
        running.append(sup.assign())
        sup.none(Assign, within=0.05)
    for a in running:
        sup.finish(a, 0)
    sup.finish(root, "done")
    assert result(client, wf).output == "done"


def test_a_node_under_max_parallel_may_not_wait_in_its_worker(
        client: Peer, supervisor: SupervisorFactory) -> None:
    """A resident wait would resume without queueing for a slot (the slot was given
    up while it waited): the Assign of a limited node says it must give up its
    worker whenever it waits; other nodes may keep theirs."""
    sup = supervisor("root", "kid", slots=8)
    wf = submit(client, diff(spec("root"), promises=[("root", MaxParallel(1))]), root="root")
    root = sup.assign(node="root")
    assert root.resident_waits
    kids = [spec(f"root.{i}", "kid", i, creator="root") for i in range(2)]
    assert sup.propose(root, diff(*kids, proposer="root")).ok
    for _ in kids:
        kid = sup.assign()
        assert not kid.resident_waits
        sup.finish(kid, 0)
    sup.finish(root, "done")
    assert result(client, wf).output == "done"


def test_a_retried_child_gives_its_max_parallel_slot_back(
        client: Peer, supervisor: SupervisorFactory) -> None:
    """A child that fails and is retried leaves the running state at its first
    attempt: that attempt's slot is freed, so its retry and its sibling still run."""
    kid = TaskInfo(name="kid", retry={"max_attempts": 2, "initial": 0.0})
    sup = supervisor("root", kid, slots=8)
    wf = submit(client, diff(spec("root"), promises=[("root", MaxParallel(1))]), root="root")
    root = sup.assign(node="root")
    kids = [spec(f"root.{i}", "kid", i, creator="root") for i in range(2)]
    assert sup.propose(root, diff(*kids, proposer="root")).ok
    first = sup.assign()
    sup.none(Assign, within=0.1)
    sup.finish(first, ok=False, error={"type": "RuntimeError", "message": "boom",
                                       "retryable": True})
    ran = []
    for _ in range(2):  # the retry and the sibling, one at a time
        a = sup.assign()
        sup.none(Assign, within=0.1)
        ran.append((a.node, a.attempt))
        sup.finish(a, 0)
    (sibling,) = {"root.0", "root.1"} - {first.node}
    assert sorted(ran) == sorted([(first.node, 2), (sibling, 1)])
    sup.finish(root, "done")
    assert result(client, wf).output == "done"


def test_max_parallel_counts_per_workflow(client: Peer, supervisor: SupervisorFactory) -> None:
    """Two workflows with the same root and MaxParallel(1) each run one child at a
    time, side by side: one workflow's limit does not hold the other back."""
    sup = supervisor("root", "kid", slots=8)
    runs = {}
    for _ in range(2):
        wf = submit(client, diff(spec("root"), promises=[("root", MaxParallel(1))]),
                    root="root")
        root = sup.next(assigned_in(wf))
        kids = [spec(f"root.{i}", "kid", i, creator="root") for i in range(2)]
        assert sup.propose(root, diff(*kids, proposer="root")).ok
        runs[wf] = root
    first = [sup.assign(), sup.assign()]
    assert {a.workflow_id for a in first} == set(runs)
    sup.none(Assign, within=0.2)
    for a in first:
        sup.finish(a, 0)
    second = [sup.assign(), sup.assign()]
    assert {a.workflow_id for a in second} == set(runs)
    for a in second:
        sup.finish(a, 0)
    for wf, root in runs.items():
        sup.finish(root, "done")
        assert result(client, wf).output == "done"


# --- errors, queries ------------------------------------------------------------------------


def test_submit_errors(client: Peer) -> None:
    bad = client.request(Submit(name="x", root="a", diff=diff(spec("a"), edges=[("a", "z")])))
    assert isinstance(bad, Error)
    assert bad.code == "rejected"
    assert bad.detail["kind"] == "plan"
    assert "z" in bad.detail["reason"]
    malformed = client.request(Submit(name="x", root="a", diff={"nodes": [{"task": "t"}]}))
    assert isinstance(malformed, Error)
    assert malformed.code == "invalid"
    submit(client, diff(spec("a")), workflow_id="taken")
    taken = client.request(Submit(name="x", root="a", workflow_id="taken", diff=diff(spec("a"))))
    assert isinstance(taken, Error)
    assert taken.code == "invalid"
    for ask in (GetHistory(workflow_id="nope"), GetGraph(workflow_id="nope"),
                AwaitResult(workflow_id="nope"), CancelWorkflow(workflow_id="nope"),
                GetStatus(workflow_id="nope")):
        reply = client.request(ask)
        assert isinstance(reply, Error), (ask, reply)
        assert reply.code == "not_found", (ask, reply)


def test_an_unreadable_request_is_answered_under_its_own_id(client: Peer) -> None:
    """A frame Flow cannot read (an int map key deep in a signal's payload) still
    gets its Error under the request's id: the sender hears why at once instead
    of waiting out its timeout as if Flow were down."""
    frame = pack({"v": PROTOCOL_VERSION, "id": "odd-1", "type": "send_signal",
                  "workflow_id": "w", "name": "go", "payload": {1: "yes"}})
    client.send_raw(frame)
    reply = client.next(lambda m: m.id == "odd-1", timeout=5)
    assert isinstance(reply, Error)
    assert reply.code == "malformed"


def test_nan_or_inf_in_a_number_is_refused_and_timers_go_on(
        flow: Flow, client: Peer, supervisor: SupervisorFactory) -> None:
    """A nan timer sat at the top of the timers' heap, never due: every durable timer
    of every workflow stopped, and a core spun. A nan timeout, stored, came back
    at every start."""
    nan_task = {"v": PROTOCOL_VERSION, "id": "nan-1", "type": "hello", "supervisor_id": "x",
                "slots": 1, "tasks": [{"name": "t", "timeout": float("nan")}]}
    client.send_raw(pack(nan_task))
    refused = client.next(lambda m: m.id == "nan-1", timeout=5)
    assert isinstance(refused, Error)
    assert refused.code == "invalid"
    sup = supervisor(TaskInfo(name="a", retry={"initial": 0.05, "max_attempts": 2}))
    wf = submit(client, diff(spec("a")))
    a = sup.assign()
    sup.send_raw(pack({"v": PROTOCOL_VERSION, "id": "nan-2", "type": "wait", "workflow_id": wf,
                       "node": "a", "attempt": 1, "timer": float("inf"), "seq": 0}))
    assert isinstance(sup.next(lambda m: m.id == "nan-2", timeout=5), Error)
    sup.finish(a, ok=False, error={"type": "E", "message": "", "retryable": True})
    retried = sup.assign()  # after its 50 ms backoff: a timer, so timers still run
    assert retried.attempt == 2
    sup.finish(retried, "ok")
    assert result(client, wf).output == "ok"


def test_a_steep_retry_backoff_is_capped_not_an_overflow() -> None:
    """An OverflowError failed the Finish as internal; the supervisor dropped it,
    and the node stayed running for ever."""
    policy = RetryPolicy.from_dict({"max_attempts": 100, "backoff": 1e5, "maximum": 3600})
    assert policy.delay(70) == 3600
    assert RetryPolicy.from_dict({"max_attempts": float("inf"),
                                  "initial": float("nan")}) == RetryPolicy()


def test_odd_query_arguments_are_refused_not_misread(client: Peer) -> None:
    """at=0 said "no workflow" for one that exists, a huge at overflowed inside Flow,
    and an empty id listed every workflow."""
    wf = submit(client, diff(spec("a")))
    for at in (0, 2**63):
        client.send_raw(pack({"v": PROTOCOL_VERSION, "id": f"at-{at}", "type": "get_graph",
                              "workflow_id": wf, "at": at}))
        refused = client.next(Error, timeout=5)
        assert (refused.id, refused.code) == (f"at-{at}", "invalid")
    nobody = client.request(GetStatus(workflow_id=""))
    assert isinstance(nobody, Error)
    assert nobody.code == "not_found"


def test_graph_history_and_status(client: Peer, supervisor: SupervisorFactory) -> None:
    sup = supervisor("a", "b")
    wf = submit(client, diff(spec("a"), spec("b"), edges=[("a", "b")]), workflow_id="q-1",
                id="submit-q-1")
    sup.finish(sup.assign(), 1)
    live = client.request(GetGraph(workflow_id=wf))
    stored = client.request(GetGraph(workflow_id=wf, at=live.seq))
    assert live.seq == stored.seq >= 4  # b may have started already
    assert live.graph == stored.graph
    at2 = client.request(GetGraph(workflow_id=wf, at=2)).graph
    assert {n["id"]: n["state"] for n in at2["nodes"] if not n["provisional"]} == {
        "a": "ready", "b": "pending"}
    sup.finish(sup.assign(), 2)
    assert result(client, wf).output == 1  # root "a"
    events = history(client, wf)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0] == {**events[0], "type": "submitted", "name": "wf", "root": "a"}
    assert events[0]["request"] == "submit-q-1"  # a retried Submit tells its own workflow
    first = client.request(GetHistory(workflow_id=wf, upto=2)).events
    assert first == events[:2]
    assert events[-1]["type"] == "workflow"
    assert all("ts" in e for e in events)
    runs = client.request(GetStatus()).runs
    assert [(r.workflow_id, r.status, r.nodes) for r in runs] == [("q-1", "succeeded", 2)]
    final = client.request(GetGraph(workflow_id=wf, unfold=True))
    assert final.seq == len(events)
    assert final.graph == WorkflowState.rebuild(
        wf, [(e["seq"], e["ts"], e) for e in events]).view_json(unfold=True)


# --- the feed -------------------------------------------------------------------------------


class FeedMirror:
    """A late subscriber: subscribe, snapshot (history), then apply newer feed events."""

    def __init__(self, feed: str, client: Peer, wf: str) -> None:
        self.client, self.wf = client, wf
        self.sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        monitor: zmq.Socket[bytes] = self.sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.sub.setsockopt(zmq.SUBSCRIBE, wf.encode())
        self.sub.connect(feed)
        assert monitor.poll(5000), "feed connection"  # subscribed before the snapshot
        self.sub.disable_monitor()
        monitor.close(linger=0)
        self.events: dict[int, dict[str, Any]] = {}
        self.snapshots = 0
        self.snapshot()

    def snapshot(self) -> None:
        self.snapshots += 1
        for e in history(self.client, self.wf):
            self.events[e["seq"]] = e

    def pump(self) -> int:
        while self.sub.poll(10):
            topic, frame = self.sub.recv_multipart()
            msg = decode(frame)
            assert isinstance(msg, FeedEvent)
            assert topic.decode() == msg.workflow_id == self.wf
            self.events.setdefault(msg.seq, msg.event)
        if self.events and len(self.events) != max(self.events):
            self.snapshot()  # a gap: the Clone pattern's answer is a fresh snapshot
        return max(self.events, default=0)

    def close(self) -> None:
        self.sub.close(linger=0)


def test_feed_late_joiner_converges(
        flow: Flow, client: Peer, supervisor: SupervisorFactory) -> None:
    sup = supervisor("step")
    chain = [spec(f"s{i}", "step", i) for i in range(6)]
    wf = submit(client, diff(*chain, edges=[(f"s{i}", f"s{i + 1}") for i in range(5)]),
                root="s5")
    for _ in range(3):
        sup.finish(sup.assign(), 0)
    mirror = FeedMirror(flow.feed_endpoint, client, wf)
    try:
        for _ in range(3):
            sup.finish(sup.assign(), 0)
        assert result(client, wf).status == "succeeded"
        final = client.request(GetGraph(workflow_id=wf, unfold=True))
        wait_for(lambda: mirror.pump() == final.seq, message="the mirror to reach the end")
        ordered = [(seq, e["ts"], e) for seq, e in sorted(mirror.events.items())]
        assert WorkflowState.rebuild(wf, ordered).view_json(unfold=True) == final.graph
        assert mirror.snapshots == 1  # the feed alone carried everything after the snapshot
    finally:
        mirror.close()


def test_the_feed_packs_only_what_somebody_subscribed_to(
        flow: Flow, client: Peer, supervisor: SupervisorFactory) -> None:
    sup = supervisor("step")
    runs = itertools.count()

    def run(prefix: str) -> str:
        wf = submit(client, diff(spec("s", "step", 0)), workflow_id=f"{prefix}-{next(runs)}")
        sup.finish(sup.assign(), 0)
        assert result(client, wf).status == "succeeded"
        return wf

    def sent() -> int:
        return int(flow.publisher.proxy().sent.get(timeout=5))

    run("unwatched")
    assert sent() == 0  # nobody listens: nothing was even packed
    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"watched")
    sub.connect(flow.feed_endpoint)
    try:
        # Until one arrives, the subscription may still be on its way to Flow.
        wait_for(lambda: run("watched") and sub.poll(100), message="no feed event arrived")
        while sub.poll(100):
            sub.recv_multipart()
        before = sent()
        run("unwatched")
        assert sent() == before  # a workflow nobody subscribed to costs nothing
        wf = run("watched")
        got: list[list[bytes]] = []

        def all_arrived() -> bool:
            while sub.poll(10):
                got.append(sub.recv_multipart())
            return len(got) >= len(history(client, wf))

        wait_for(all_arrived, message="the watched workflow's events")
        assert {topic for topic, _ in got} == {wf.encode()}
        assert sent() == before + len(got)
    finally:
        sub.close(linger=0)


# --- supervisors -----------------------------------------------------------------------------


def test_a_lost_that_reaches_a_keeper_after_the_supervisor_joined_again_fails_nothing(
        flow: Flow, client: Peer, supervisor: SupervisorFactory) -> None:
    """Membership expires a supervisor and tells every keeper, one by one; it says
    Hello again meanwhile and is given work on its new connection. A keeper told
    late failed that work, running fine, and it ran twice."""
    sup = supervisor("a", supervisor_id="s")
    wf = submit(client, diff(spec("a")))
    a = sup.assign()  # on the connection the supervisor has now
    assert flow.registry.tell(wf, Lost("s"))  # the late broadcast of an older expiry
    sup.none(Assign, within=0.3)  # not failed and given again
    sup.finish(a, "once")
    assert result(client, wf).output == "once"
    assert states(history(client, wf), "a") == [("running", 1), ("succeeded", 1)]
    assert flow.counters.get("attempts.lost") == 0


def test_a_welcome_for_a_connection_already_replaced_fails_nothing(
        flow: Flow, client: Peer, supervisor: SupervisorFactory) -> None:
    """A supervisor that reconnected twice in a row: the first Hello's Welcomed,
    told after work was started on the second connection, failed that work."""
    sup = supervisor("a", supervisor_id="s")
    wf = submit(client, diff(spec("a")))
    a = sup.assign()
    assert flow.registry.tell(wf, Welcomed("s", b"an-earlier-connection", frozenset(),
                                           frozenset()))
    sup.none(Assign, within=0.3)
    sup.finish(a, "once")
    assert result(client, wf).output == "once"
    assert states(history(client, wf), "a") == [("running", 1), ("succeeded", 1)]


def test_a_hello_claiming_attempts_of_a_workflow_whose_keeper_retired_as_told_stops_them(
        flow: Flow, client: Peer, supervisor: SupervisorFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Membership lists the keepers, one retires, then is told: the tell, behind its
    stop, is dropped unread, and the attempt it would have cancelled ran on."""
    sup = supervisor("a")
    wf = submit(client, diff(spec("a")))
    sup.finish(sup.assign(), "done")
    assert result(client, wf).output == "done"
    wait_for(lambda: not flow.registry.is_live(wf), message="the keeper to retire")
    monkeypatch.setattr(Registry, "broadcast", lambda self, message: [wf])  # listed, gone
    back = supervisor("a", supervisor_id="back",
                      running=[AttemptRef(workflow_id=wf, node="a", attempt=1)])
    cancel = back.next(CancelTask)
    assert (cancel.workflow_id, cancel.node, cancel.attempt) == (wf, "a", 1)


def test_after_a_restart_the_wait_for_claims_counts_from_when_flow_serves(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Restored keepers started counting as they were restored: a restore of the
    other workflows longer than the wait failed attempts still running, before any
    supervisor could connect to claim them."""
    first = Flow(settings(tmp_path)).start()
    client = Peer(first.endpoint)
    sup = FakeSupervisor(first.endpoint, ["a"])
    try:
        wf = submit(client, diff(spec("a")))
        a = sup.assign()
    finally:
        client.close()
        sup.close()
        first.stop()
    start = Gateway.start

    def slow_start(self: Gateway, timeout: float = 10.0) -> str:
        time.sleep(1.0)  # wait-ok: the injected fault, a restore twice the wait below
        return start(self, timeout)

    monkeypatch.setattr(Gateway, "start", slow_start)
    flow = Flow(settings(tmp_path, heartbeat_timeout=0.5)).start()
    client = Peer(flow.endpoint)
    back = FakeSupervisor(flow.endpoint, ["a"], running=[AttemptRef(workflow_id=wf, node="a",
                                                                    attempt=1)])
    try:
        back.finish(a, "kept")
        assert result(client, wf).output == "kept"
        assert states(history(client, wf), "a") == [("running", 1), ("succeeded", 1)]
        assert flow.counters.get("attempts.lost") == 0
    finally:
        client.close()
        back.close()
        flow.stop()


def test_silent_supervisor_is_declared_dead_and_its_attempts_retried(tmp_path: Any) -> None:
    flow = Flow(settings(tmp_path, heartbeat_interval=0.05, heartbeat_timeout=0.5)).start()
    client = Peer(flow.endpoint)
    silent = FakeSupervisor(flow.endpoint, ["a"], supervisor_id="silent", heartbeats=False)
    try:
        wf = submit(client, diff(spec("a")))
        lost = silent.assign()
        healthy = FakeSupervisor(flow.endpoint, ["a"], supervisor_id="healthy")
        try:
            again = healthy.assign(timeout=10)
            assert (again.node, again.attempt) == ("a", 2)
            assert flow.counters.get("supervisors.lost") == 1
            silent.finish(lost, "zombie")  # unknown now: acknowledged, not counted
            back = FakeSupervisor(flow.endpoint, ["a"], supervisor_id="silent",
                                  running=[AttemptRef(workflow_id=wf, node="a", attempt=1)])
            cancel = back.next(CancelTask)  # its attempt was given away: stop it
            back.close()
            assert (cancel.node, cancel.attempt) == ("a", 1)
            healthy.finish(again, "ok")
            assert result(client, wf).output == "ok"
            error = next(e["error"] for e in history(client, wf) if e.get("state") == "ready")
            assert (error["type"], error["retryable"]) == ("SupervisorLost", True)
        finally:
            healthy.close()
    finally:
        silent.close()
        client.close()
        flow.stop()


def test_unknown_supervisor_heartbeat_asks_for_hello(client: Peer) -> None:
    from plait.protocol.messages import Credit, Heartbeat

    reply = client.request(Heartbeat())
    assert isinstance(reply, Error)
    assert reply.code == "unavailable"
    reply = client.request(Credit(n=1))
    assert isinstance(reply, Error)
    assert reply.code == "unavailable"


# --- restart ----------------------------------------------------------------------------------


def test_restart_after_sigkill_resumes_from_the_store(tmp_path: Any) -> None:
    db = str(tmp_path / "flow.db")
    d = diff(spec("a"), spec("b"), spec("c"), spec("d", "d", {"$ref": "b"}),
             edges=[("a", "b"), ("a", "c"), EdgeSpec("b", "d", data=True), ("c", "d")])
    with flow_process(tmp_path, db) as (proc, endpoint):
        client, sup = Peer(endpoint), FakeSupervisor(endpoint, "abcd", supervisor_id="sup-1")
        try:
            wf = submit(client, d, root="d")
            sup.finish(sup.assign(node="a"), "A")
            b, c = sup.assign(node="b"), sup.assign(node="c")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            client.close()
            sup.close()
    with flow_process(tmp_path, db) as (proc, endpoint):
        client = Peer(endpoint)
        # The same supervisor comes back still running b; c's attempt was lost with it.
        sup = FakeSupervisor(endpoint, "abcd", supervisor_id="sup-1",
                             running=[AttemptRef(workflow_id=wf, node="b", attempt=1)])
        try:
            c2 = sup.assign(node="c")
            assert c2.attempt == 2
            sup.finish(b, "B")
            sup.finish(c, "lost")  # the lost attempt's result does not count
            sup.finish(c2, "C")
            last = sup.assign(node="d")
            assert last.inputs == {"args": ["B"], "kwargs": {}}
            sup.finish(last, "D")
            assert result(client, wf).output == "D"
            events = history(client, wf)
            assert states(events, "a") == [("running", 1), ("succeeded", 1)]  # never again
            assert states(events, "b") == [("running", 1), ("succeeded", 1)]
            assert states(events, "c") == [("running", 1), ("ready", 2), ("running", 2),
                                           ("succeeded", 2)]
            proc.terminate()
            assert proc.wait(15) == 0  # SIGTERM stops Flow cleanly
        finally:
            client.close()
            sup.close()


def test_restart_fails_attempts_nobody_claims(tmp_path: Any) -> None:
    db = str(tmp_path / "flow.db")
    with flow_process(tmp_path, db) as (proc, endpoint):
        client, sup = Peer(endpoint), FakeSupervisor(endpoint, ["a"], supervisor_id="gone")
        try:
            wf = submit(client, diff(spec("a")))
            sup.assign()
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            client.close()
            sup.close()
    with flow_process(tmp_path, db) as (proc, endpoint):
        client, other = Peer(endpoint), FakeSupervisor(endpoint, ["a"], supervisor_id="other")
        try:
            a = other.assign(timeout=10)  # after heartbeat_timeout: "gone" never claimed it
            assert a.attempt == 2
            other.finish(a, "ok")
            assert result(client, wf).output == "ok"
            # "gone" comes back still running the attempt it lost: told to stop it.
            back = FakeSupervisor(endpoint, ["a"], supervisor_id="gone",
                                  running=[AttemptRef(workflow_id=wf, node="a", attempt=1)])
            cancel = back.next(CancelTask)
            back.close()
            assert (cancel.workflow_id, cancel.node, cancel.attempt) == (wf, "a", 1)
        finally:
            client.close()
            other.close()


def test_an_attempt_assigned_as_its_supervisor_rejoins_is_not_lost(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Dispatcher may give the rejoining supervisor's new connection an attempt
    before the keeper learns of its Hello (which cannot claim that attempt): the
    attempt is not lost for it."""
    gate = threading.Event()
    hello = Membership._hello

    def late_hello(self: Membership, identity: bytes, msg: Any) -> None:
        if msg.slots:  # the rejoin: its Welcomed reaches keepers after the Start
            gate.wait(10)
        hello(self, identity, msg)

    monkeypatch.setattr(Membership, "_hello", late_hello)
    flow = Flow(settings(tmp_path)).start()
    client = Peer(flow.endpoint)
    first = FakeSupervisor(flow.endpoint, ["a"], supervisor_id="s", slots=0)
    again: FakeSupervisor | None = None
    try:
        wf = submit(client, diff(spec("a")))
        first.none(Assign, within=0.1)  # no credit: a waits in its queue
        again = FakeSupervisor(flow.endpoint, ["a"], supervisor_id="s", slots=1)  # new socket
        a = again.assign()
        gate.set()
        assert a.attempt == 1
        again.none(Assign, within=0.3)  # not failed and retried
        again.finish(a, "kept")
        assert result(client, wf).output == "kept"
        assert states(history(client, wf), "a") == [("running", 1), ("succeeded", 1)]
    finally:
        gate.set()
        for peer in (client, first, again):
            if peer is not None:
                peer.close()
        flow.stop()


def test_a_start_for_a_gone_connection_queues_the_node_again(
        flow: Flow, client: Peer, supervisor: SupervisorFactory) -> None:
    """The Dispatcher chose a supervisor that was declared dead (or reconnected)
    before the keeper got the Start: no Assign goes to nowhere."""
    wf = submit(client, diff(spec("a")))
    flow.registry.tell(wf, Start("a", 1, "ghost", b"no-such-socket"))
    wait_for(lambda: flow.counters.get("dispatch.gone") == 1, message="the stale start")
    sup = supervisor("a")
    a = sup.assign()
    assert a.attempt == 1
    sup.finish(a, "ok")
    assert result(client, wf).output == "ok"
    assert states(history(client, wf), "a") == [("running", 1), ("succeeded", 1)]


def test_flow_on_ipv6_serves_requests_and_its_feed(tmp_path: Any) -> None:
    """``--host ::1``: Flow binds its sockets on IPv6, and a client given
    ``tcp://[::1]:P`` derives the feed (``[::1]:P+1``) and gets events from it."""
    port = wait_for(_free_pair_v6, 10)
    flow = Flow(settings(tmp_path, host="::1", port=port, feed_port=port + 1)).start()
    try:
        assert flow.endpoint == f"tcp://[::1]:{port}"
        with Client(f"tcp://[::1]:{port}", timeout=5, poll_interval=30) as client:
            assert client.feed == f"tcp://[::1]:{port + 1}"
            run = client.submit_diff("wf", "a", diff(spec("a")))
            with client.watch(run.id) as watch:
                assert next(watch).event["type"] == "snapshot"
                client.cancel(run.id)
                ended = next(watch)  # from the feed: the watch polls only every 30 s
            assert (ended.event["type"], ended.event["status"]) == ("workflow", "cancelled")
    finally:
        flow.stop()


def _free_pair_v6() -> int:
    """A port P on the IPv6 loopback such that P + 1 is free too (0: try again)."""
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = int(s.getsockname()[1])
    with socket.socket(socket.AF_INET6) as s:
        try:
            s.bind(("::1", port + 1))
        except OSError:
            return 0
    return port


@pytest.mark.parametrize(("host", "endpoint"), [
    ("127.0.0.1", "tcp://127.0.0.1:7100"), ("flow.example.com", "tcp://flow.example.com:7100"),
    ("::1", "tcp://[::1]:7100"), ("[::1]", "tcp://[::1]:7100"), ("*", "tcp://*:7100"),
])
def test_an_endpoint_brackets_an_ipv6_host_once(host: str, endpoint: str) -> None:
    assert tcp(host, 7100) == endpoint
