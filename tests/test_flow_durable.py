"""Durable execution in Flow, at protocol level: suspension without a process and
resumption with history, recorded values, retries with durable backoff, the
three timeouts, sleeps, signals, heartbeats, queries, and the workflow status
rule. A fake client and fake supervisors speak to a real Flow in this process,
whose clock is a :class:`FakeClock`: timers fire when the test moves time, and
nothing waits for real time.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flowkit import (
    FakeSupervisor,
    Peer,
    diff,
    flow_process,
    history,
    recorded,
    result,
    settings,
    spec,
    states,
    submit,
)

from plait.actors import plan_keeper
from plait.actors.clock import FakeClock, FileClock
from plait.actors.flow import Flow, FlowSettings
from plait.actors.history import WorkflowState
from plait.actors.plan_keeper import PlanKeeper
from plait.protocol.messages import (
    Ack,
    Assign,
    AttemptRef,
    CancelTask,
    CancelWorkflow,
    Error,
    Finish,
    GetGraph,
    Message,
    PauseWorkflow,
    Query,
    QueryReply,
    Recorded,
    Resolved,
    RestartNode,
    ResumeWorkflow,
    SendSignal,
    SetState,
    TaskInfo,
    Wait,
)
from plait.testing import wait_for

Factory = Callable[..., FakeSupervisor]
BOOM = {"type": "IOError", "message": "flaky", "retryable": True}


def answering(request: Message) -> Callable[[Message], bool]:
    """Matches the reply to ``request``."""
    return lambda m: m.id == request.id


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def flow_options(clock: FakeClock) -> dict[str, Any]:
    return {"clock": clock, "retry_scale": 1.0}


@contextmanager
def serving(s: FlowSettings, tasks: list[str | TaskInfo], running: Iterable[AttemptRef] = ()
            ) -> Iterator[tuple[Peer, FakeSupervisor]]:
    """One lifetime of Flow on ``s`` (its database outlives it): a client and a
    supervisor serving ``tasks`` (claiming ``running``), all stopped on the way out."""
    flow = Flow(s).start()
    client = Peer(flow.endpoint)
    try:
        sup = FakeSupervisor(flow.endpoint, tasks, running=running)
        try:
            yield client, sup
        finally:
            sup.close()
    finally:
        client.close()
        flow.stop()


def node_states(client: Peer, wf: str) -> dict[str, str]:
    graph = client.request(GetGraph(workflow_id=wf, unfold=True)).graph
    return {n["id"]: n["state"] for n in graph["nodes"] if not n["provisional"]}


def kids(parent: str, *tasks: str, args: tuple[Any, ...] = ()) -> dict[str, Any]:
    """``parent`` spawns one child per task, ids ``parent.1``, ``parent.2``..."""
    specs = [spec(f"{parent}.{i}", t, *args, creator=parent) for i, t in enumerate(tasks, 1)]
    return diff(*specs, proposer=parent)


def rebuilt_equals_live(client: Peer, wf: str) -> None:
    events = history(client, wf)
    live = client.request(GetGraph(workflow_id=wf, unfold=True))
    assert live.seq == len(events)
    rebuilt = WorkflowState.rebuild(wf, [(e["seq"], e["ts"], e) for e in events])
    assert rebuilt.view_json(unfold=True) == live.graph


# --- suspension and resumption ---------------------------------------------------------


def parent_of(client: Peer, supervisor: Factory, children: int
              ) -> tuple[FakeSupervisor, str, Assign]:
    """A workflow whose running root ``parent`` has spawned ``children`` children
    (``parent.1``...): the supervisor, the workflow, the parent's Assign."""
    sup = supervisor("parent", "child")
    wf = submit(client, diff(spec("parent")), root="parent")
    p = sup.assign(node="parent")
    assert sup.propose(p, kids("parent", *["child"] * children)).ok
    return sup, wf, p


def test_durable_wait_frees_the_worker_and_resumes_with_history(
        client: Peer, supervisor: Factory) -> None:
    sup = supervisor("parent", "child")
    wf = submit(client, diff(spec("parent")), root="parent")
    p = sup.assign(node="parent")
    assert p.history is None  # a first execution of a first attempt
    drawn = [recorded(0, "random", 0.25), recorded(1, "uuid4", "u-1")]
    assert sup.propose(p, kids("parent", "child", "child"), recorded=drawn).ok
    sup.wait(p, ["parent.1", "parent.2"], resident=False, seq=2, spawns=2)
    assert node_states(client, wf)["parent"] == "suspended"
    c1, c2 = sup.assign(node="parent.1"), sup.assign(node="parent.2")
    sup.finish(c1, 10)
    sup.none(lambda m: isinstance(m, Assign) and m.node == "parent", within=0.1)
    sup.finish(c2, ok=False, error={"type": "KeyError", "message": "k", "retryable": False})
    again = sup.assign(node="parent")
    assert again.attempt == 1  # a resumption, not a new attempt
    h = again.history
    assert h is not None
    assert [(r.seq, r.kind, r.value) for r in h.recorded] == [(0, "random", 0.25),
                                                              (1, "uuid4", "u-1")]
    assert h.results["parent.1"].output == 10
    assert h.results["parent.2"].state == "failed"
    assert (h.results["parent.2"].error or {})["type"] == "KeyError"
    assert (h.previous, h.timers, h.signals) == ([], [], [])
    assert h.resumed_at == (2, 2)  # where it waited: replaying until it is back there
    # The replay re-proposes its spawns and values: no-ops, nothing recorded twice.
    assert sup.propose(again, kids("parent", "child", "child"), recorded=drawn).ok
    sup.finish(again, "coped", recorded=[recorded(2, "now", 5.0)])
    done = result(client, wf)
    assert (done.status, done.output) == ("succeeded", "coped")  # the root handled it
    events = history(client, wf)
    assert states(events, "parent") == [("running", 1), ("suspended", 1), ("ready", 1),
                                        ("running", 1), ("succeeded", 1)]
    values = [v["seq"] for e in events if e["type"] == "recorded" for v in e["values"]]
    assert values == [0, 1, 2]
    suspended = next(e for e in events if e.get("state") == "suspended")
    assert suspended["wait"]["handles"] == ["parent.1", "parent.2"]
    assert suspended["wait"]["resident"] is False
    rebuilt_equals_live(client, wf)


def test_durable_wait_already_satisfied_reassigns_at_once(
        client: Peer, supervisor: Factory) -> None:
    sup, wf, p = parent_of(client, supervisor, 1)
    sup.finish(sup.assign(node="parent.1"), 1)
    sup.wait(p, ["parent.1"], resident=False)  # evicted anyway: assigned again
    again = sup.assign(node="parent")
    assert again.history is not None
    assert again.history.results["parent.1"].output == 1
    sup.finish(again, "ok")
    assert result(client, wf).output == "ok"


def test_a_resident_wait_that_turns_durable(client: Peer, supervisor: Factory) -> None:
    sup, wf, p = parent_of(client, supervisor, 1)
    sup.wait(p, ["parent.1"])  # resident first
    child = sup.assign(node="parent.1")
    sup.wait(p, ["parent.1"], resident=False)  # the supervisor needed the room: evicted
    sup.finish(child, 7)
    sup.none(Resolved, within=0.1)  # nobody holds the task to answer
    again = sup.assign(node="parent")
    assert again.history is not None
    assert again.history.results["parent.1"].output == 7
    sup.finish(again, "done")
    assert result(client, wf).output == "done"
    assert [e["type"] for e in history(client, wf)].count("wait") == 1


def test_a_wait_for_itself_or_its_creator_is_refused(
        client: Peer, supervisor: Factory) -> None:
    """It suspended the node on itself for ever, holding its worker if resident."""
    sup, wf, p = parent_of(client, supervisor, 1)
    c = sup.assign(node="parent.1")
    for waiter, handle in ((p, "parent"), (c, "parent")):
        refused = sup.request(Wait(workflow_id=wf, node=waiter.node, attempt=1,
                                   handles=[handle]))
        assert isinstance(refused, Error)
        assert "would wait for ever" in refused.reason
    sup.finish(c, 1)
    sup.finish(p, "done")
    assert result(client, wf).output == "done"


def test_a_restart_of_a_node_a_resident_task_waits_on_is_waited_for_again(
        client: Peer, supervisor: Factory) -> None:
    """The wait was answered when the other child ended, with the restarted node's
    "ready" state, which the task took for a failure."""
    sup, wf, p = parent_of(client, supervisor, 2)
    sup.wait(p, ["parent.1", "parent.2"])  # resident: the task is in its worker
    c1, c2 = sup.assign(node="parent.1"), sup.assign(node="parent.2")
    sup.finish(c1, ok=False, error={"type": "E", "message": "flaky", "retryable": False})
    assert isinstance(client.request(RestartNode(workflow_id=wf, node="parent.1")), Ack)
    again = sup.assign(node="parent.1")
    sup.finish(c2, 2)
    sup.none(Resolved, within=0.2)  # parent.1 runs again: not an answer yet
    sup.finish(again, 1)
    resolved = sup.next(Resolved)
    assert {h: r.output for h, r in resolved.results.items()} == {"parent.1": 1,
                                                                 "parent.2": 2}
    sup.finish(p, 3)
    assert result(client, wf).output == 3
    rebuilt_equals_live(client, wf)


def slept_once(client: Peer, supervisor: Factory, clock: FakeClock
               ) -> tuple[FakeSupervisor, str, Assign, Assign]:
    """A node slept 5 s durably (its first attempt's Wait) and was assigned again:
    the supervisor, the workflow, the first assignment and the second."""
    sup = supervisor("sleeper")
    wf = submit(client, diff(spec("sleeper")), root="sleeper")
    a = sup.assign()
    sup.wait(a, timer=5, seq=0, resident=False)
    clock.advance(5)
    return sup, wf, a, sup.assign()


def test_a_stale_resent_durable_wait_is_only_acknowledged(
        client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    sup, wf, a, again = slept_once(client, supervisor, clock)
    sup.wait(a, timer=5, seq=0, resident=False)  # the first one, re-sent late
    sup.none(Assign, within=0.1)
    assert node_states(client, wf)["sleeper"] == "running"
    sup.finish(again, "ok")
    assert result(client, wf).output == "ok"


def test_an_earlier_wait_resent_while_suspended_in_a_later_one_is_only_acknowledged(
        client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    """The first sleep's Wait, re-sent late, reaches Flow while the node sleeps
    durably in its second: it must not end the second sleep early."""
    sup, wf, a, again = slept_once(client, supervisor, clock)
    sup.wait(again, timer=100, seq=1, resident=False)
    sup.wait(a, timer=5, seq=0, resident=False)  # the first one, re-sent late
    sup.none(Assign, within=0.1)
    assert node_states(client, wf)["sleeper"] == "suspended"
    clock.advance(100)
    last = sup.assign()
    sup.finish(last, "ok")
    assert result(client, wf).output == "ok"


def test_an_evicted_attempt_whose_wait_flow_has_not_seen_is_not_lost(
        client: Peer, supervisor: Factory) -> None:
    """The supervisor reconnected (a new socket) between evicting a task and Flow
    reading its Wait: its Hello names the attempt as evicted, so Flow does not fail
    it as lost, and the Wait that follows suspends it as usual."""
    first = supervisor("parent", "child", supervisor_id="s")
    wf = submit(client, diff(spec("parent")), root="parent")
    parent = first.assign(node="parent")
    assert first.propose(parent, kids("parent", "child")).ok
    child = first.assign(node="parent.1")
    first.close()
    again = supervisor("parent", "child", supervisor_id="s", running=[
        AttemptRef(workflow_id=wf, node="parent", attempt=1, evicted=True),
        AttemptRef(workflow_id=wf, node="parent.1", attempt=1)])
    again.wait(parent, ["parent.1"], resident=False)
    again.finish(child, "C")
    resumed = again.assign(node="parent")
    assert resumed.attempt == 1
    again.finish(resumed, "P")
    assert result(client, wf).output == "P"
    assert states(history(client, wf), "parent") == [
        ("running", 1), ("suspended", 1), ("ready", 1), ("running", 1), ("succeeded", 1)]


def test_an_evicted_claim_does_not_take_an_attempt_running_elsewhere(
        client: Peer, supervisor: Factory) -> None:
    """Flow recorded an evicted task's Wait, but its Ack was lost: the supervisor
    still names the attempt in its next Hello, after the attempt has resumed on
    another supervisor. Flow keeps it there: a cancel reaches the one running it."""
    first = supervisor("parent", "child", supervisor_id="s", slots=1)
    wf = submit(client, diff(spec("parent")), root="parent")
    parent = first.assign(node="parent")
    assert first.propose(parent, kids("parent", "child")).ok
    first.wait(parent, ["parent.1"], resident=False)
    child = first.assign(node="parent.1")
    other = supervisor("parent", "child", supervisor_id="t")
    first.finish(child, "C")
    resumed = other.assign(node="parent")  # s has no credit left
    assert resumed.attempt == 1
    first.close()
    again = supervisor("parent", "child", supervisor_id="s", running=[
        AttemptRef(workflow_id=wf, node="parent", attempt=1, evicted=True)])
    client.request(CancelWorkflow(workflow_id=wf))
    cancel = other.next(CancelTask)
    assert (cancel.node, cancel.attempt) == ("parent", 1)
    again.none(CancelTask, within=0.2)


@pytest.mark.parametrize("flow_options", [{"heartbeat_timeout": 1.0}])
def test_an_attempt_sent_back_to_a_replaced_connection_is_lost_after_all(
        client: Peer, supervisor: Factory) -> None:
    """Flow read an evicted task's Wait, the wait was over at once, and the attempt
    went back to the supervisor's connection just as the supervisor replaced it:
    the Ack and the Assign were lost. The new Hello names the attempt as evicted and
    the re-sent Wait is stale; nobody runs it, so it is failed as lost (and retried)
    once the orphan timeout has passed, not kept running for ever."""
    first = supervisor("parent", "child", supervisor_id="s", slots=2)
    wf = submit(client, diff(spec("parent")), root="parent")
    parent = first.assign(node="parent")
    assert first.propose(parent, kids("parent", "child")).ok
    child = first.assign(node="parent.1")
    first.finish(child, "C")
    wait = first.wait(parent, ["parent.1"], resident=False)  # answered: over already
    first.assign(node="parent")  # sent back to this connection, which goes away
    first.close()
    again = supervisor("parent", "child", supervisor_id="s", running=[
        AttemptRef(workflow_id=wf, node="parent", attempt=1, evicted=True)])
    again.request(wait)  # re-sent: stale, only acknowledged
    retried = again.assign(node="parent", timeout=5.0)
    assert retried.attempt == 2
    again.finish(retried, "P")
    assert result(client, wf).output == "P"


def test_a_task_that_gives_up_waiting_finishes_from_suspended(
        tmp_path: Any, clock: FakeClock) -> None:
    """``h.result(timeout=...)`` timed out and the task returned: its Finish comes
    while Flow holds the node suspended. It succeeds (through running), the stream
    stays gapless, and a restarted Flow picks the workflow up."""
    s = settings(tmp_path, clock=clock)
    with serving(s, ["parent", "child"]) as (client, sup):
        wf = submit(client, diff(spec("parent")), root="parent")
        p = sup.assign(node="parent")
        assert sup.propose(p, kids("parent", "child")).ok
        sup.wait(p, ["parent.1"])  # resident; the task gives up on it
        child = sup.assign(node="parent.1")
        assert isinstance(sup.finish(p, "gave up"), Ack)
        assert node_states(client, wf)["parent"] == "succeeded"
        assert states(history(client, wf), "parent") == [
            ("running", 1), ("suspended", 1), ("running", 1), ("succeeded", 1)]
        rebuilt_equals_live(client, wf)
    claim = AttemptRef(workflow_id=wf, node="parent.1", attempt=child.attempt)
    with serving(s, ["parent", "child"], running=[claim]) as (client, sup):
        sup.finish(child, 7)
        done = result(client, wf)
        assert (done.status, done.output) == ("succeeded", "gave up")
        rebuilt_equals_live(client, wf)


def test_a_handler_that_raises_answers_internal_only(
        client: Peer, supervisor: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its Ack is not sent (it would claim what did not happen); what it recorded
    before raising is stored, so the stream still rebuilds the live state."""
    def half_done(keeper: PlanKeeper, identity: bytes, msg: SetState) -> None:
        keeper._send(identity, Ack(id=msg.id))
        keeper._record({"type": "set_state", "node": msg.node, "attempt": msg.attempt,
                        "value": msg.value})
        raise RuntimeError("half done")

    handlers: dict[type[Message], Any] = plan_keeper._HANDLERS
    key: type[Message] = SetState
    monkeypatch.setitem(handlers, key, half_done)
    sup = supervisor("a")
    wf = submit(client, diff(spec("a")))
    a = sup.assign()
    reply = sup.set_state(a, 1)
    assert isinstance(reply, Error), reply
    assert reply.code == "internal"
    sup.none(lambda m: m.id == reply.id, within=0.1)
    sup.finish(a, "ok")
    assert result(client, wf).output == "ok"
    rebuilt_equals_live(client, wf)


def finish_a_and_b_together(client: Peer, supervisor: Factory,
                            monkeypatch: pytest.MonkeyPatch,
                            after: Callable[[Finish], None] | None = None
                            ) -> tuple[str, FakeSupervisor, Finish, Finish]:
    """A workflow a, b -> c whose a and b Finishes are sent back to back; a's handler
    waits until b's Finish is in the keeper's inbox, so one batch takes both.
    ``after`` runs after each Finish's handler (it may raise)."""
    handle = plan_keeper._HANDLERS[Finish]

    def together(keeper: PlanKeeper, identity: bytes, msg: Finish) -> None:
        if msg.node == "a":
            wait_for(lambda: not keeper.actor_inbox.empty(), timeout=5)
        handle(keeper, identity, msg)
        if after is not None:
            after(msg)

    handlers: dict[type[Message], Any] = plan_keeper._HANDLERS
    key: type[Message] = Finish
    monkeypatch.setitem(handlers, key, together)
    sup = supervisor("a", "b", "c")
    wf = submit(client, diff(spec("a"), spec("b"), spec("c"), edges=[("a", "c"), ("b", "c")]),
                root="c")
    assert {sup.assign().node, sup.assign().node} == {"a", "b"}
    first, second = (Finish(workflow_id=wf, node=n, attempt=1, ok=True, output=n)
                     for n in ("a", "b"))
    sup.send(first)
    sup.send(second)
    return wf, sup, first, second


def test_finishes_handled_together_are_acknowledged_in_one_frame(
        client: Peer, supervisor: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """One Ack answers every Finish of a keeper's batch from one supervisor (``more``);
    each Finish is acknowledged exactly once."""
    wf, sup, first, second = finish_a_and_b_together(client, supervisor, monkeypatch)
    ack = sup.next(Ack)
    assert (ack.id, ack.more) == (first.id, [second.id])
    sup.none(Ack, within=0.2)
    sup.finish(sup.assign(node="c"), "c")
    assert result(client, wf).output == "c"


def test_a_finish_whose_handler_raises_is_left_out_of_its_batch_s_ack(
        client: Peer, supervisor: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor must send that Finish again: the shared Ack does not name it."""
    raised: list[str] = []

    def b_fails_once(msg: Finish) -> None:
        if msg.node == "b" and not raised:
            raised.append(msg.id)
            raise RuntimeError("b's handler broke")

    wf, sup, first, second = finish_a_and_b_together(client, supervisor, monkeypatch,
                                                     after=b_fails_once)
    refused = sup.next(lambda m: m.id == second.id)
    assert isinstance(refused, Error), refused
    assert refused.code == "internal"
    ack = sup.next(Ack)
    assert (ack.id, ack.more) == (first.id, [])
    assert isinstance(sup.request(second), Ack)  # sent again: a duplicate, acknowledged
    sup.finish(sup.assign(node="c"), "c")
    assert result(client, wf).output == "c"


def test_a_fold_that_fails_leaves_the_sequence_alone() -> None:
    state = WorkflowState("w")
    state.fold({"type": "submitted", "name": "r", "root": "r"})
    state.fold({"type": "diff", "diff": diff(spec("r"))})
    with pytest.raises(ValueError, match="cannot go from ready to succeeded"):
        state.fold({"type": "state", "node": "r", "state": "succeeded", "attempt": 1})
    assert state.seq == 2


def test_a_rebuild_numbers_on_from_the_last_stored_event() -> None:
    """A stream with a gap (written before the fold kept its count) continues after
    its largest number, never onto a stored one."""
    events: list[tuple[int, float, dict[str, Any]]] = [
        (1, 0.0, {"type": "submitted", "name": "r", "root": "r"}),
        (3, 0.0, {"type": "diff", "diff": diff(spec("r"))})]
    assert WorkflowState.rebuild("w", events).seq == 3


# --- retries ------------------------------------------------------------------------------


def test_retry_backoff_is_a_timer_on_flows_clock(
        client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    sup = supervisor(TaskInfo(name="a", retry={"max_attempts": 3, "initial": 10,
                                               "backoff": 3, "maximum": 20}))
    wf = submit(client, diff(spec("a")))
    sup.finish(sup.assign(), ok=False, error=BOOM)
    sup.none(Assign, within=0.1)
    clock.advance(9.9)
    sup.none(Assign, within=0.1)
    clock.advance(0.1)
    second = sup.assign()
    assert second.attempt == 2
    assert second.history is not None  # a new attempt: fresh values, no previous children
    assert (second.history.recorded, second.history.previous) == ([], [])
    sup.finish(second, ok=False, error=BOOM)
    clock.advance(19.9)  # 10 * 3 = 30, capped at 20
    sup.none(Assign, within=0.1)
    clock.advance(0.1)
    third = sup.assign()
    sup.finish(third, ok=False, error=BOOM)
    done = result(client, wf)
    assert (done.status, done.error and done.error["attempts"]) == ("failed", 3)
    retries = [e for e in history(client, wf) if e.get("state") == "ready"]
    assert [e["due"] - e["ts"] for e in retries] == [10, 20]  # stored: survives a restart


def test_a_durable_step_is_committed_alone_and_a_retry_gets_it_back(
        client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    sup = supervisor(TaskInfo(name="a", retry={"max_attempts": 2, "initial": 1}))
    wf = submit(client, diff(spec("a")))
    first = sup.assign()
    step = recorded(0, "step", {"i": 0, "fn": "charge", "v": {"charged": 5}})
    answer = sup.propose(first, diff(proposer="a"), [step])  # what ctx.step sends
    assert answer.ok
    events = history(client, wf)
    assert [e["type"] for e in events][-1] == "recorded"  # committed, no diff recorded
    assert not any(e["type"] == "diff" for e in events[2:])
    sup.finish(first, ok=False, error=BOOM)
    events = history(client, wf)  # what a restarted Flow would rebuild the steps from
    rebuilt = WorkflowState.rebuild(wf, [(e["seq"], e["ts"], e) for e in events])
    assert rebuilt.steps == {"a": {0: ("charge", {"charged": 5}, 1)}}
    clock.advance(1)
    second = sup.assign()
    assert second.history is not None
    assert second.history.recorded == []  # a new attempt draws fresh values...
    assert [(s.index, s.name, s.value) for s in second.history.steps] == [
        (0, "charge", {"charged": 5})]  # ...but keeps its completed steps
    sup.finish(second, "done")
    assert result(client, wf).output == "done"
    rebuilt_equals_live(client, wf)
    events = history(client, wf)
    assert WorkflowState.rebuild(wf, [(e["seq"], e["ts"], e) for e in events]).steps == {}
    assert isinstance(client.request(RestartNode(workflow_id=wf, node="a")), Ack)
    third = sup.assign()  # run again from scratch: its steps too
    assert third.history is None or third.history.steps == []


def test_a_failed_step_is_run_anew_by_a_retry_and_so_is_what_followed_it(
        client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    sup = supervisor(TaskInfo(name="a", retry={"max_attempts": 3, "initial": 1}))
    wf = submit(client, diff(spec("a")))

    def failed(seq: int, i: int, fn: str) -> Recorded:
        return recorded(seq, "step_error", {"i": i, "fn": fn, "e": {
            "type": "builtins.ValueError", "message": "declined", "args": ["declined"]}})

    # Attempt 1: step 0 fails (the body catches it), step 1 sends a "backordered" mail.
    first = sup.assign()
    assert sup.propose(first, diff(proposer="a"), [
        failed(0, 0, "charge"), recorded(1, "step", {"i": 1, "fn": "mail", "v": "backordered"})
    ]).ok
    sup.finish(first, ok=False, error=BOOM)
    clock.advance(1)
    second = sup.assign()
    assert second.history is not None
    assert [(s.index, s.name) for s in second.history.steps] == [(1, "mail")]  # not the failure
    # Attempt 2: step 0 succeeds this time, then its worker dies: its path differs at 0.
    assert sup.propose(second, diff(proposer="a"), [
        recorded(0, "step", {"i": 0, "fn": "charge", "v": 5})]).ok
    sup.finish(second, ok=False, error=BOOM)
    clock.advance(2)
    third = sup.assign()
    assert third.history is not None
    assert [(s.index, s.name, s.value) for s in third.history.steps] == [(0, "charge", 5)]
    events = history(client, wf)  # what a restarted Flow would rebuild the steps from
    rebuilt = WorkflowState.rebuild(wf, [(e["seq"], e["ts"], e) for e in events])
    assert rebuilt.steps == {"a": {0: ("charge", 5, 2)}}  # attempt 1's mail is stale
    sup.finish(third, "done")
    rebuilt_equals_live(client, wf)


def test_retry_backoff_survives_a_flow_restart(tmp_path: Any, clock: FakeClock) -> None:
    s = settings(tmp_path, clock=clock, retry_scale=1.0)
    info = TaskInfo(name="a", retry={"initial": 100, "maximum": 100})
    with serving(s, [info]) as (client, sup):
        wf = submit(client, diff(spec("a")))
        sup.finish(sup.assign(), ok=False, error=BOOM)
    clock.advance(60)
    with serving(s, [info]) as (client, sup):
        sup.none(Assign, within=0.2)  # 40 s of backoff left
        clock.advance(40)
        again = sup.assign()
        assert again.attempt == 2
        sup.finish(again, "ok")
        assert result(client, wf).output == "ok"


def test_task_timeouts_and_retry_policy_survive_a_flow_restart(
        tmp_path: Any, clock: FakeClock) -> None:
    """A restarted Flow knows its tasks before any supervisor says Hello again:
    the running attempt's start-to-close is armed from its stored start, and its
    failure follows the task's own policy (no retry), not the default."""
    s = settings(tmp_path, clock=clock, retry_scale=1.0)
    info = TaskInfo(name="a", timeout=60, retry={"max_attempts": 1})
    with serving(s, [info]) as (client, sup):
        wf = submit(client, diff(spec("a")))
        sup.started(sup.assign())
        wait_for(lambda: node_states(client, wf).get("a") == "running", timeout=5)
    clock.advance(30)
    claim = AttemptRef(workflow_id=wf, node="a", attempt=1)
    with serving(s, [info], running=[claim]) as (client, sup):
        sup.none(CancelTask, within=0.2)
        clock.advance(30)  # 60 s since the attempt started
        assert sup.next(CancelTask).attempt == 1
        done = result(client, wf)
        assert done.status == "failed"
        assert (done.error or {})["type"] == "TimeoutError"
        sup.none(Assign, within=0.2)  # max_attempts=1: not retried


def test_non_retryable_exception_names(client: Peer, supervisor: Factory) -> None:
    sup = supervisor(TaskInfo(name="a", retry={"max_attempts": 5, "initial": 0,
                                               "non_retryable": ["ValueError"]}))
    wf = submit(client, diff(spec("a")))
    sup.finish(sup.assign(), ok=False, error={"type": "ValueError", "message": "no",
                                              "retryable": True})
    done = result(client, wf)
    assert done.status == "failed"
    assert (done.error or {})["type"] == "ValueError"
    assert states(history(client, wf), "a") == [("running", 1), ("failed", 1)]


def test_failing_root_is_retried_and_reuses_its_completed_children(
        client: Peer, supervisor: Factory) -> None:
    """Seed 004: each email is sent once, however often the root fails at its end."""
    sup = supervisor(TaskInfo(name="weekly", retry={"max_attempts": 3, "initial": 0}),
                     "send_email")
    wf = submit(client, diff(spec("weekly")), root="weekly")
    orgs = ["a", "b", "c"]
    emails = diff(*[spec(f"weekly.{i}", "send_email", org, creator="weekly")
                    for i, org in enumerate(orgs, 1)], proposer="weekly")
    root = sup.assign(node="weekly")
    sup.heartbeat(root, {"sent": 0})
    assert sup.propose(root, emails, recorded=[recorded(0, "random", 0.9)]).ok
    wait = sup.wait(root, ["weekly.1", "weekly.2", "weekly.3"])
    for _ in orgs:
        sup.finish(sup.assign(), True)
    assert isinstance(sup.next(lambda m: m.id == wait.id), Resolved)
    sup.finish(root, ok=False, error={"type": "ZeroDivisionError", "message": "1/0",
                                      "retryable": True})
    for attempt in (2, 3):
        again = sup.assign(node="weekly")
        assert again.attempt == attempt
        h = again.history
        assert h is not None
        assert h.recorded == []  # a new attempt draws fresh values
        assert [(p.seq, p.id, p.task, p.inputs["args"]) for p in h.previous] == [
            (i, f"weekly.{i}", "send_email", [org]) for i, org in enumerate(orgs, 1)]
        assert {k: r.output for k, r in h.results.items()} == {
            "weekly.1": True, "weekly.2": True, "weekly.3": True}
        assert h.heartbeat == {"sent": 0}
        assert sup.propose(again, emails).ok  # the same children: reused, not rerun
        if attempt == 2:
            sup.finish(again, ok=False, error={"type": "ZeroDivisionError",
                                               "message": "1/0", "retryable": True})
        else:
            sup.finish(again, 3)
    assert result(client, wf).output == 3
    events = history(client, wf)
    for i in (1, 2, 3):
        assert states(events, f"weekly.{i}") == [("running", 1), ("succeeded", 1)]


def test_a_retry_that_spawns_differently_keeps_the_earlier_child_as_history(
        client: Peer, supervisor: Factory) -> None:
    sup = supervisor(TaskInfo(name="r", retry={"initial": 0}), "x", "y")
    wf = submit(client, diff(spec("r")), root="r")
    first = sup.assign(node="r")
    assert sup.propose(first, kids("r", "x")).ok
    sup.finish(sup.assign(node="r.1"), "x1")
    sup.finish(first, ok=False, error=BOOM)
    second = sup.assign(node="r")
    assert second.history is not None
    assert [p.id for p in second.history.previous] == ["r.1"]
    other = diff(spec("r.1@2", "y", creator="r"), proposer="r")  # what replay.ChildIds makes
    assert sup.propose(second, other).ok
    sup.finish(sup.assign(node="r.1@2"), "y1")
    sup.finish(second, "done")
    assert result(client, wf).output == "done"
    assert node_states(client, wf) == {"r": "succeeded", "r.1": "succeeded",
                                       "r.1@2": "succeeded"}


# --- the status rule ---------------------------------------------------------------------


def test_a_root_that_fails_for_good_fails_the_workflow_at_once(
        client: Peer, supervisor: Factory) -> None:
    sup = supervisor(TaskInfo(name="root", retry={"max_attempts": 1}), "child")
    wf = submit(client, diff(spec("root")), root="root")
    root = sup.assign(node="root")
    assert sup.propose(root, kids("root", "child")).ok
    child = sup.assign(node="root.1")
    sup.finish(root, ok=False, error={"type": "RuntimeError", "message": "no"})
    cancel = sup.next(CancelTask)
    assert (cancel.node, cancel.attempt) == ("root.1", 1)
    done = result(client, wf)
    assert done.status == "failed"
    assert (done.error or {})["node"] == "root"
    sup.finish(child, 1)  # too late: dropped
    assert states(history(client, wf), "root.1") == [("running", 1)]
    assert node_states(client, wf)["root.1"] == "cancelled"


# --- timeouts ------------------------------------------------------------------------------


def test_schedule_to_start_fails_a_node_nobody_starts(
        client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    sup = supervisor(TaskInfo(name="a", schedule_to_start=30), slots=0)
    wf = submit(client, diff(spec("a")))
    sup.none(Assign, within=0.1)
    clock.advance(30)
    done = result(client, wf)
    assert done.status == "failed"
    assert (done.error or {})["type"] == "ScheduleToStartTimeout"
    assert states(history(client, wf), "a") == [("running", 1), ("failed", 1)]


def test_start_to_close_on_flows_clock(
        flow: Flow, client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    sup = supervisor(TaskInfo(name="a", timeout=60, retry={"initial": 0}))
    wf = submit(client, diff(spec("a")))
    first = sup.assign()
    sup.started(first)
    clock.advance(59)
    sup.none(CancelTask, within=0.1)
    clock.advance(1)
    assert sup.next(CancelTask).attempt == 1
    second = sup.assign()
    assert second.attempt == 2
    sup.finish(second, "ok")
    assert result(client, wf).output == "ok"
    assert flow.counters.get("attempts.timed_out") == 1
    sup.finish(first, "late")  # dropped


def test_start_to_close_counts_again_when_a_durable_wait_resumes(
        client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    """The same attempt assigned again after a sleep is a new stint: its start
    notice arms start-to-close again (the first stint's timer is a no-op by then)."""
    sup = supervisor(TaskInfo(name="a", timeout=60, retry={"initial": 0}))
    wf = submit(client, diff(spec("a")))
    first = sup.assign()
    sup.started(first)
    sup.wait(first, timer=10, seq=1, resident=False)
    clock.advance(10)
    again = sup.assign()
    assert again.attempt == 1
    sup.started(again)
    clock.advance(59)  # 69 s after the first start, 59 after the second
    sup.none(CancelTask, within=0.1)
    clock.advance(1)
    assert sup.next(CancelTask).attempt == 1
    retry = sup.assign()
    assert retry.attempt == 2
    sup.finish(retry, "ok")
    assert result(client, wf).output == "ok"


def test_schedule_to_start_counts_again_from_a_resume(
        client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    """A node that stays queued through a pause is not judged while paused, and
    its schedule-to-start counts from the resume (as for a node held back)."""
    sup = supervisor(TaskInfo(name="a", schedule_to_start=30), slots=0)
    wf = submit(client, diff(spec("a")))
    sup.none(Assign, within=0.1)
    assert isinstance(client.request(PauseWorkflow(workflow_id=wf)), Ack)
    clock.advance(30)  # due while paused: not judged
    assert isinstance(client.request(ResumeWorkflow(workflow_id=wf)), Ack)
    clock.advance(29)
    assert node_states(client, wf)["a"] == "ready"
    clock.advance(1)
    done = result(client, wf)
    assert (done.status, (done.error or {}).get("type")) == ("failed",
                                                             "ScheduleToStartTimeout")


def test_a_retry_in_its_backoff_is_not_judged_for_schedule_to_start_on_resume(
        client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    sup = supervisor(TaskInfo(name="a", schedule_to_start=30, retry={"initial": 100}))
    wf = submit(client, diff(spec("a")))
    sup.finish(sup.assign(), ok=False, error=BOOM)  # the retry is due in 100 s
    assert isinstance(client.request(PauseWorkflow(workflow_id=wf)), Ack)
    assert isinstance(client.request(ResumeWorkflow(workflow_id=wf)), Ack)
    clock.advance(30)
    sup.none(Assign, within=0.1)
    assert node_states(client, wf)["a"] == "ready"
    clock.advance(70)
    again = sup.assign()
    assert again.attempt == 2
    sup.finish(again, "ok")
    assert result(client, wf).output == "ok"


def test_heartbeat_timeout_and_details_for_the_retry(
        client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    sup = supervisor(TaskInfo(name="a", heartbeat_timeout=10, retry={"initial": 0}))
    wf = submit(client, diff(spec("a")))
    first = sup.assign()
    for done in range(1, 4):  # each heartbeat restarts the count
        clock.advance(9)
        assert isinstance(sup.heartbeat(first, {"done": done}), Ack)
    sup.heartbeat(first, {"done": 3})  # same details: not recorded again
    sup.none(CancelTask, within=0.1)
    clock.advance(10)
    assert sup.next(CancelTask).attempt == 1
    second = sup.assign()
    assert second.history is not None
    assert second.history.heartbeat == {"done": 3}
    sup.finish(second, "resumed")
    assert result(client, wf).output == "resumed"
    events = history(client, wf)
    assert [e["details"] for e in events if e["type"] == "heartbeat"] == [
        {"done": 1}, {"done": 2}, {"done": 3}]
    error = next(e["error"] for e in events if e.get("state") == "ready")
    assert error["type"] == "HeartbeatTimeout"


def test_a_replay_starts_from_the_heartbeat_details_its_attempt_started_from(
        client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    """"start = ctx.heartbeat_details or 0; loop; sleep": the replay after the sleep
    got the details its own first execution sent, skipped the loop, and diverged."""
    sup = supervisor(TaskInfo(name="a", retry={"initial": 0}))
    wf = submit(client, diff(spec("a")))
    first = sup.assign()
    sup.heartbeat(first, {"done": 5})
    sup.wait(first, timer=60, seq=0, resident=False)
    clock.advance(60)
    replay = sup.assign()
    assert (replay.attempt, replay.history and replay.history.heartbeat) == (1, None)
    sup.finish(replay, ok=False, error={"type": "E", "message": "", "retryable": True})
    second = sup.assign()
    assert second.history is not None
    assert (second.attempt, second.history.heartbeat) == (2, {"done": 5})  # a retry resumes
    sup.heartbeat(second, {"done": 9})
    sup.wait(second, timer=60, seq=0, resident=False)
    clock.advance(60)
    again = sup.assign()
    assert again.history is not None
    assert (again.attempt, again.history.heartbeat) == (2, {"done": 5})
    sup.finish(again, "ok")
    assert result(client, wf).output == "ok"
    rebuilt_equals_live(client, wf)


# --- sleeps and signals -------------------------------------------------------------------


def test_sleep_is_a_durable_timer(client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    sup = supervisor("sleeper")
    wf = submit(client, diff(spec("sleeper")), root="sleeper")
    a = sup.assign()
    sup.wait(a, timer=3600, seq=2, resident=False,
             recorded=[recorded(0, "now", 1.0), recorded(1, "random", 0.5)])
    assert node_states(client, wf)["sleeper"] == "suspended"
    clock.advance(3599)
    sup.none(Assign, within=0.1)
    clock.advance(1)
    again = sup.assign()
    assert again.attempt == 1
    assert again.history is not None
    assert again.history.timers == [2]
    assert [r.seq for r in again.history.recorded] == [0, 1]
    sup.wait(again, timer=60, seq=3, resident=False)  # the next sleep
    clock.advance(60)
    third = sup.assign()
    assert third.history is not None
    assert third.history.timers == [2, 3]
    sup.finish(third, "woke")
    assert result(client, wf).output == "woke"
    rebuilt_equals_live(client, wf)


def test_signals_consumed_by_an_attempt_a_cancel_ends_go_back(
        client: Peer, supervisor: Factory) -> None:
    """As a failed attempt's do: the node restarted after the cancel gets the signal
    its cancelled attempt had consumed, instead of waiting for it for ever."""
    sup = supervisor("approve")
    wf = submit(client, diff(spec("approve")), root="approve")
    a = sup.assign()
    sup.wait(a, signal="go", seq=0, resident=False)
    assert isinstance(client.request(SendSignal(workflow_id=wf, name="go", payload=1)), Ack)
    replay = sup.assign()  # consumed: the attempt is to replay with it
    assert replay.history is not None
    assert replay.history.signals == [(0, 1)]
    assert isinstance(client.request(CancelWorkflow(workflow_id=wf)), Ack)
    assert result(client, wf).status == "cancelled"
    assert isinstance(client.request(RestartNode(workflow_id=wf, node="approve")), Ack)
    again = sup.assign()
    assert again.attempt == 2
    sup.wait(again, signal="go", seq=0, resident=False)
    resumed = sup.assign()
    assert resumed.history is not None
    assert resumed.history.signals == [(0, 1)]
    sup.finish(resumed, "approved")
    assert result(client, wf).output == "approved"
    rebuilt_equals_live(client, wf)


def test_signals_are_buffered_in_order_and_never_lost(
        client: Peer, supervisor: Factory) -> None:
    sup = supervisor("approve")
    wf = submit(client, diff(spec("approve")), root="approve")
    a = sup.assign()
    for payload in ({"ok": True}, {"ok": False}):  # sent before anybody waits
        assert isinstance(client.request(SendSignal(workflow_id=wf, name="go",
                                                    payload=payload)), Ack)
    sup.wait(a, signal="go", seq=0, resident=False)
    b = sup.assign()
    assert b.history is not None
    assert b.history.signals == [(0, {"ok": True})]
    sup.wait(b, signal="go", seq=1, resident=False)
    c = sup.assign()
    assert c.history is not None
    assert c.history.signals == [(0, {"ok": True}), (1, {"ok": False})]
    sup.wait(c, signal="go", seq=2, resident=False)  # nothing buffered: suspended
    sup.none(Assign, within=0.1)
    client.request(SendSignal(workflow_id=wf, name="other", payload=1))
    sup.none(Assign, within=0.1)
    client.request(SendSignal(workflow_id=wf, name="go", payload="third"))
    d = sup.assign()
    assert d.history is not None
    assert d.history.signals[-1] == (2, "third")
    sup.finish(d, "approved")
    assert result(client, wf).output == "approved"
    events = history(client, wf)
    assert [e["payload"] for e in events if e["type"] == "delivered"] == [
        {"ok": True}, {"ok": False}, "third"]
    rebuilt_equals_live(client, wf)
    late = client.request(SendSignal(workflow_id=wf, name="go"))
    assert isinstance(late, Error)
    assert late.code == "rejected"


@pytest.mark.parametrize(("b_waits", "first"), [
    pytest.param([("go", 0, False)], "b", id="b-first"),
    # Evicted: b's resident wait made durable is the same wait, as old as it was.
    pytest.param([("go", 0, True), ("go", 0, False)], "b", id="b-evicted"),
    # b waited for something else first: its wait for "go" is the newest.
    pytest.param([("stop", 0, True), ("go", 1, False)], "a", id="b-waits-again"),
])
def test_a_signal_goes_to_the_oldest_wait_after_a_flow_restart(
        tmp_path: Any, b_waits: list[tuple[str, int, bool]], first: str) -> None:
    """The waits are restored in the order they began, not in the plan's node
    order: the first signal after a restart goes where it would have gone before."""
    s = settings(tmp_path)
    with serving(s, ["a", "b"]) as (client, sup):
        wf = submit(client, diff(spec("a"), spec("b")), root="graph")
        a, b = sup.assign(node="a"), sup.assign(node="b")
        name, seq, resident = b_waits[0]
        sup.wait(b, signal=name, seq=seq, resident=resident)
        wait_for(lambda: node_states(client, wf).get("b") == "suspended", timeout=5)
        sup.wait(a, signal="go", seq=0, resident=False)
        for name, seq, resident in b_waits[1:]:
            sup.wait(b, signal=name, seq=seq, resident=resident)
        wait_for(lambda: set(node_states(client, wf).values()) == {"suspended"}, timeout=5)
    with serving(s, ["a", "b"]) as (client, sup):
        assert isinstance(client.request(SendSignal(workflow_id=wf, name="go", payload=1)),
                          Ack)
        resumed = sup.assign()
        assert resumed.node == first
        assert resumed.history is not None
        assert resumed.history.signals[-1] == (0 if first == "a" else b_waits[-1][1], 1)
        sup.none(Assign, within=0.2)  # the other waits on
        assert node_states(client, wf)[{"a": "b", "b": "a"}[first]] == "suspended"


def test_a_resident_signal_wait_is_resolved_with_the_payload(
        client: Peer, supervisor: Factory) -> None:
    sup = supervisor("t")
    wf = submit(client, diff(spec("t")), root="t")
    a = sup.assign()
    wait = sup.wait(a, signal="answer", seq=0)
    client.request(SendSignal(workflow_id=wf, name="answer", payload=42))
    resolved = sup.next(lambda m: m.id == wait.id)
    assert isinstance(resolved, Resolved)
    assert resolved.value == 42
    sup.finish(a, "ok")
    assert result(client, wf).output == "ok"


def test_signals_a_failed_attempt_consumed_go_back_to_the_buffer(
        client: Peer, supervisor: Factory, clock: FakeClock) -> None:
    """The retry (a new attempt, which starts with no signals) finds them again, in
    the order they came; a rebuild agrees."""
    sup = supervisor(TaskInfo(name="t", retry={"max_attempts": 2, "initial": 0}))
    wf = submit(client, diff(spec("t")), root="t")
    for name, payload in (("go", 1), ("stop", "s"), ("go", 2), ("go", 3)):
        client.request(SendSignal(workflow_id=wf, name=name, payload=payload))
    a = sup.assign()
    sup.wait(a, signal="go", seq=0, resident=False)
    b = sup.assign()
    wait = sup.wait(b, signal="stop", seq=1)
    assert isinstance(sup.next(lambda m: m.id == wait.id), Resolved)
    wait = sup.wait(b, signal="go", seq=2)
    assert sup.next(lambda m: m.id == wait.id).value == 2
    sup.finish(b, ok=False, error=BOOM)
    retry = sup.assign()
    assert retry.attempt == 2
    assert retry.history is not None
    assert retry.history.signals == []
    got = []
    for seq, name in enumerate(("go", "go", "stop", "go")):
        wait = sup.wait(retry, signal=name, seq=seq)
        got.append(sup.next(answering(wait)).value)
    assert got == [1, 2, "s", 3]
    sup.finish(retry, "ok")
    assert result(client, wf).output == "ok"
    rebuilt_equals_live(client, wf)


# --- queries and state ---------------------------------------------------------------------


def test_query_reads_set_state_during_and_after_the_run(
        client: Peer, supervisor: Factory) -> None:
    sup = supervisor("a", "b")
    wf = submit(client, diff(spec("a"), spec("b")), root="graph")
    a, b = sup.assign(node="a"), sup.assign(node="b")
    empty = client.request(Query(workflow_id=wf))
    assert isinstance(empty, QueryReply)
    assert (empty.state, empty.nodes) == (None, {})
    sup.set_state(a, {"progress": 0.5})
    sup.set_state(b, "b-started")
    sup.set_state(b, "b-started")  # unchanged: not recorded again
    live = client.request(Query(workflow_id=wf))
    assert (live.state, live.nodes) == ("b-started", {"a": {"progress": 0.5},
                                                      "b": "b-started"})
    sup.set_state(a, {"progress": 1.0})
    sup.finish(a, 1)
    sup.finish(b, 2)
    assert result(client, wf).status == "succeeded"
    after = client.request(Query(workflow_id=wf))  # answered by the Reader, from events
    assert (after.state, after.nodes) == ({"progress": 1.0}, {"a": {"progress": 1.0},
                                                              "b": "b-started"})
    assert [e["type"] for e in history(client, wf)].count("set_state") == 3
    missing = client.request(Query(workflow_id="nope"))
    assert isinstance(missing, Error)
    assert missing.code == "not_found"


# --- a Flow restart (SIGKILL) loses no timer, signal or suspended node -----------------------


def test_sigkill_keeps_timers_signals_and_suspended_nodes(tmp_path: Any) -> None:
    db, clock_file = str(tmp_path / "flow.db"), str(tmp_path / "clock")
    FileClock.write(clock_file, 1_700_000_000.0)
    tasks = ["sleeper", "waiter", "parent", "child"]
    with flow_process(tmp_path, db, "--clock-file", clock_file) as (proc, endpoint):
        client, sup = Peer(endpoint), FakeSupervisor(endpoint, tasks, supervisor_id="s")
        try:
            w1 = submit(client, diff(spec("sleeper")), root="sleeper")
            sup.wait(sup.assign(node="sleeper"), timer=100, seq=0, resident=False)
            w2 = submit(client, diff(spec("waiter")), root="waiter")
            waiter = sup.assign(node="waiter")
            client.request(SendSignal(workflow_id=w2, name="go", payload="kept"))
            w3 = submit(client, diff(spec("parent")), root="parent")
            parent = sup.assign(node="parent")
            assert sup.propose(parent, kids("parent", "child")).ok
            sup.wait(parent, ["parent.1"], resident=False)
            child = sup.assign(node="parent.1")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            client.close()
            sup.close()
    with flow_process(tmp_path, db, "--clock-file", clock_file) as (proc, endpoint):
        held = [AttemptRef(workflow_id=w2, node="waiter", attempt=1),
                AttemptRef(workflow_id=w3, node="parent.1", attempt=1)]
        client = Peer(endpoint)
        sup = FakeSupervisor(endpoint, tasks, supervisor_id="s", running=held)
        try:
            sup.wait(waiter, signal="go", seq=0, resident=False)  # the buffered signal
            again = sup.assign(node="waiter")
            assert again.history is not None
            assert again.history.signals == [(0, "kept")]
            sup.finish(again, "signalled")
            sup.finish(child, "C")  # the suspended parent resumes
            resumed = sup.assign(node="parent")
            assert (resumed.attempt, resumed.history and resumed.history.results["parent.1"].output
                    ) == (1, "C")
            sup.finish(resumed, "P")
            sup.none(lambda m: isinstance(m, Assign) and m.node == "sleeper", within=0.2)
            FileClock.write(clock_file, 1_700_000_100.0)  # the sleep is due
            woke = sup.assign(node="sleeper")
            assert woke.history is not None
            assert woke.history.timers == [0]
            sup.finish(woke, "S")
            outputs = {wf: result(client, wf).output for wf in (w1, w2, w3)}
            assert outputs == {w1: "S", w2: "signalled", w3: "P"}
            assert states(history(client, w3), "parent.1") == [("running", 1), ("succeeded", 1)]
            assert states(history(client, w1), "sleeper") == [
                ("running", 1), ("suspended", 1), ("ready", 1), ("running", 1),
                ("succeeded", 1)]
        finally:
            client.close()
            sup.close()
