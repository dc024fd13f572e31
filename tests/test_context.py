"""The Context against a fake transport: batching, data edges, ids, waits, errors.

``FakeTransport`` is shared with ``test_replay``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from typing import Annotated, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BeforeValidator
from pydantic_core import PydanticOmit, SchemaError
from tasks_sample import Point, add, double, leaf, move, stamp

from plait.context import Context, Handle
from plait.errors import (
    NonDeterminismError,
    PlaitError,
    PlanError,
    PromiseViolation,
    TaskFailed,
    WorkflowCancelled,
)
from plait.protocol.diff import EdgeSpec, PlanDiff
from plait.protocol.messages import (
    History,
    Message,
    NodeResult,
    Propose,
    Proposed,
    Recorded,
    Resolved,
    SetState,
    TaskHeartbeat,
    Wait,
)
from plait.protocol.promises import MaxNodes, NoNewNodes
from plait.replay import Evicted
from plait.task import InvalidArguments, Task, task


class FakeTransport:
    """Answers like Flow would: proposals accepted (unless told otherwise), waits
    resolved from ``results`` (node id -> NodeResult). A refused diff is answered
    with ``Proposed(ok=False, rejection=...)``, whether it came on a Propose or on
    the Wait that carried it. With ``evict``, a Wait is answered like a supervisor
    that drops the task: its future raises Evicted. ``send`` (heartbeats, state)
    lands in ``notes``.

    It also watches the order of requests: ``proposed`` holds the node ids whose
    spawn was sent (on a Propose or a Wait); ``overtaken`` lists the nodes a Wait
    named before their spawn was sent (in that Wait or an earlier message); and
    ``overlapped`` is set if a request was sent while an earlier one was still
    unanswered (``deferred`` answers on the event loop's next turn, like a real
    peer, so that concurrent awaits that did not take turns would show)."""

    def __init__(self) -> None:
        self.sent: list[Propose | Wait] = []
        self.notes: list[TaskHeartbeat | SetState] = []
        self.results: dict[str, NodeResult] = {}
        self.rejection: dict[str, Any] | None = None
        self.cancelled = False
        self.evicted = False
        self.evict = False
        self.deferred = False
        self.unanswered: list[Future[Message]] = []
        self.proposed: set[str] = set()
        self.overtaken: list[str] = []
        self.overlapped = False

    def request(self, message: Propose | Wait) -> Future[Message]:
        self.sent.append(message)
        self.unanswered = [f for f in self.unanswered if not f.done()]
        self.overlapped |= bool(self.unanswered)
        if message.diff is not None:
            self.proposed.update(n.id for n in PlanDiff.from_dict(message.diff).nodes)
        if isinstance(message, Wait):
            self.overtaken += [h for h in message.handles if h not in self.proposed]
        future: Future[Message] = Future()
        if self.evict and isinstance(message, Wait):
            self.evicted = True
            future.set_exception(Evicted())
            return future
        reply = self._reply(message)
        if self.deferred:
            self.unanswered.append(future)
            asyncio.get_running_loop().call_soon(future.set_result, reply)
        else:
            future.set_result(reply)
        return future

    def _reply(self, message: Propose | Wait) -> Message:
        if isinstance(message, Propose) or (
                message.diff is not None and self.rejection is not None):
            return Proposed(id=message.id, workflow_id=message.workflow_id, node=message.node,
                            ok=self.rejection is None, rejection=self.rejection)
        return Resolved(id=message.id, workflow_id=message.workflow_id, node=message.node,
                        results={h: self.results[h] for h in message.handles})

    def send(self, message: TaskHeartbeat | SetState) -> None:
        self.notes.append(message)

    def diffs(self) -> list[PlanDiff]:
        """The diffs sent, in order, on a Propose or carried by a Wait."""
        return [PlanDiff.from_dict(m.diff) for m in self.sent if m.diff is not None]


def ok(output: Any) -> NodeResult:
    return NodeResult(state="succeeded", output=output)


@pytest.fixture
def transport() -> FakeTransport:
    return FakeTransport()


@pytest.fixture
def ctx(transport: FakeTransport) -> Context:
    return Context(workflow_id="wf-1", node_id="root", transport=transport, attempt=2,
                   idempotency_key="wf-1/root")


def test_identity(ctx: Context) -> None:
    assert (ctx.workflow_id, ctx.node_id, ctx.attempt, ctx.idempotency_key) == (
        "wf-1", "root", 2, "wf-1/root")


def test_spawns_are_batched_until_the_task_waits(ctx: Context, transport: FakeTransport) -> None:
    a = ctx.spawn(add, 1, 2)
    b = ctx.spawn(double, 4, color="red")
    ctx.promise(MaxNodes(5))
    assert transport.sent == []
    transport.results = {a.id: ok(3), b.id: ok(8)}
    assert ctx.gather([a, b]).result() == [3, 8]
    (wait,) = transport.sent  # the proposals ride on the Wait: one message
    assert isinstance(wait, Wait)
    assert wait.attempt == 2
    assert wait.handles == [a.id, b.id]
    assert wait.diff is not None
    diff = PlanDiff.from_dict(wait.diff)
    assert diff.proposer == "root"
    assert [(n.id, n.task, n.creator) for n in diff.nodes] == [
        ("root.1", "add", "root"), ("root.2", "sample.double", "root")]
    assert diff.nodes[1].attrs == {"color": "red"}
    assert diff.nodes[1].inputs["args"] == [4]
    assert diff.promises == (("root", MaxNodes(5)),)
    assert ctx.take_diff() is None  # nothing left for Finish


def test_a_known_result_is_not_asked_again(ctx: Context, transport: FakeTransport) -> None:
    a = ctx.spawn(add, 1, 2)
    transport.results = {a.id: ok(3)}
    assert a.result() == 3
    assert a.done()
    assert a.result() == 3
    assert [type(m).__name__ for m in transport.sent] == ["Wait"]  # carrying the spawn


def test_handles_as_arguments_become_data_edges(ctx: Context, transport: FakeTransport) -> None:
    a = ctx.spawn(add, 1, 2)
    b = ctx.spawn(add, a, 10)
    c = ctx.spawn("collect", [a, {"second": b}], after=[a])
    diff = ctx.take_diff()
    assert diff is not None
    assert diff.nodes[1].inputs == {"args": [{"$ref": a.id}, 10], "kwargs": {}}
    assert diff.nodes[2].inputs == {"args": [[{"$ref": a.id}, {"second": {"$ref": b.id}}]],
                                    "kwargs": {}}
    assert sorted(diff.edges, key=lambda e: e.key) == [  # after=[a] adds nothing more
        EdgeSpec(a.id, b.id, data=True), EdgeSpec(a.id, c.id, data=True),
        EdgeSpec(b.id, c.id, data=True)]


def test_after_takes_one_node_as_well_as_several(ctx: Context) -> None:
    a = ctx.spawn(add, 1, 2)
    b = ctx.spawn(add, 3, 4, after=a)
    c = ctx.spawn(add, 5, 6, after="root.1")  # an id: not one edge per character
    diff = ctx.take_diff()
    assert diff is not None
    assert sorted(e.key for e in diff.edges) == [(a.id, b.id), (a.id, c.id)]


def test_spawn_checks_its_attributes_and_key_at_the_call(ctx: Context) -> None:
    """Caught later, a non-data attribute failed the task at its next await, or
    killed its worker at Finish; a key with '/' could name a grandchild's id."""
    with pytest.raises(InvalidArguments, match=r"attribute deadline= .* not JSON-able"):
        ctx.spawn(add, 1, 2, deadline=object())
    for key in ("a/b", "", 1.5):
        with pytest.raises(InvalidArguments, match="key= takes a non-empty string"):
            ctx.spawn(add, 1, 2, key=key)  # type: ignore[arg-type]
    when = ctx.spawn(add, 1, 2, key="f.csv", at=datetime(2026, 1, 2))
    third = ctx.spawn(add, 1, 3, key=3)  # type: ignore[arg-type]  # an int, as before
    diff = ctx.take_diff()
    assert diff is not None
    assert [(n.id, n.attrs) for n in diff.nodes] == [
        (when.id, {"at": "2026-01-02T00:00:00"}),  # data, as the wire carries it
        (third.id, {})]
    assert third.id == "root/3"


class _Held(FakeTransport):
    """Leaves every Wait unanswered (its children are still running)."""

    def request(self, message: Propose | Wait) -> Future[Message]:
        if isinstance(message, Wait):
            self.sent.append(message)
            return Future()
        return super().request(message)


def test_whether_a_timed_result_timed_out_is_recorded_for_the_replay() -> None:
    """The replay, with every result there at once, returned where the first run
    raised TimeoutError: it skipped the body's except and diverged."""
    first = Context(workflow_id="wf", node_id="root", transport=_Held())
    h = first.spawn(add, 1, 1)
    with pytest.raises(TimeoutError):
        h.result(timeout=0.05)
    recorded = first.take_recorded()
    assert [(r.seq, r.kind, r.value) for r in recorded] == [(0, "timed_out", True)]
    replay = Context(workflow_id="wf", node_id="root", transport=FakeTransport(),
                     history=History(recorded=recorded, results={h.id: ok(2)}))
    again = replay.spawn(add, 1, 1)
    with pytest.raises(TimeoutError):
        again.result(timeout=0.05)
    assert again.result() == 2
    # History from before these were recorded: another call holds the seq.
    older = Context(workflow_id="wf", node_id="root", transport=FakeTransport(),
                    history=History(timers=[0], results={h.id: ok(2)}))
    assert older.spawn(add, 1, 1).result(timeout=0.05) == 2
    older.sleep(60).result()  # seq 0, as the first run's
    quick = FakeTransport()
    fast = Context(workflow_id="wf", node_id="root", transport=quick)
    done = fast.spawn(add, 2, 2)
    quick.results = {done.id: ok(4)}
    assert done.result(timeout=5) == 4
    assert [r.value for r in fast.take_recorded()] == [False]


def test_a_replay_publishes_no_state_or_progress_its_first_execution_did() -> None:
    """Queries saw the state go back to 'fetch' on every resumption, and a retry
    resumed from the replay's older heartbeat details."""
    history = History(recorded=[Recorded(seq=0, kind="random", value=0.5)])
    transport = FakeTransport()
    ctx = Context(workflow_id="wf", node_id="root", transport=transport, history=history)
    ctx.set_state({"stage": "fetch"})
    ctx.heartbeat({"done": 1})
    assert ctx.random() == 0.5  # back where the first execution went on from
    ctx.set_state({"stage": "process"})
    ctx.heartbeat({"done": 2})
    assert [(type(n).__name__, getattr(n, "value", None) or getattr(n, "details", None))
            for n in transport.notes] == [
        ("TaskHeartbeat", None), ("SetState", {"stage": "process"}),
        ("TaskHeartbeat", {"done": 2})]
    assert ctx.heartbeat_details == {"done": 2}


def test_map_is_one_diff(ctx: Context, transport: FakeTransport) -> None:
    handles = ctx.map(double, range(5))
    transport.results = {h.id: ok(2 * i) for i, h in enumerate(handles)}
    assert list(ctx.gather(handles)) == [0, 2, 4, 6, 8]
    (wait,) = transport.sent
    assert isinstance(wait, Wait)
    assert wait.handles == [h.id for h in handles]
    (diff,) = transport.diffs()
    assert [n.id for n in diff.nodes] == [f"root.{i}" for i in range(1, 6)]
    assert [n.inputs["args"] for n in diff.nodes] == [[i] for i in range(5)]


@task
def shift(ctx: Context, p: Point) -> Point:  # one parameter, a model: map's list path
    return p


def _omit_negative(value: Any) -> Any:
    if isinstance(value, int) and value < 0:
        raise PydanticOmit
    return value


@task
def omitting(ctx: Context, n: Annotated[int, BeforeValidator(_omit_negative)]) -> int:
    return n


# Per task, items that are mostly valid (so that the list path runs on long lists)
# with some that are not, or that only coerce (both paths must agree on those too).
_ITEMS: dict[str, st.SearchStrategy[Any]] = {
    "double": st.one_of(st.integers(-(2**40), 2**40), st.integers().map(str),
                        st.sampled_from(["x", 1.5, None])),
    "stamp": st.one_of(st.datetimes(), st.datetimes().map(datetime.isoformat),
                       st.sampled_from(["not a date", [1]])),
    "leaf": st.one_of(st.text(max_size=5), st.sampled_from([1, None])),
    "shift": st.one_of(st.builds(Point, x=st.integers(), y=st.integers()),
                       st.fixed_dictionaries({"x": st.integers(), "y": st.integers()}),
                       st.sampled_from([{"x": 1}, "p"])),
    "sample.move": st.builds(Point, x=st.integers(), y=st.integers()),  # two parameters
}
_TASKS = {"double": double, "stamp": stamp, "leaf": leaf, "shift": shift,
          "sample.move": move}


def _proposed(run: Callable[[Context], object]) -> tuple[str, object]:
    """What ``run`` proposes on a fresh context, or the error it raises."""
    c = Context(workflow_id="wf", node_id="p", transport=FakeTransport())
    try:
        run(c)
    except InvalidArguments as exc:
        return "raised", (str(exc), c.take_diff())
    return "proposed", c.take_diff()


@st.composite
def _map_case(draw: st.DrawFn) -> tuple[Any, list[Any], Callable[[list[Any]], Any]]:
    name = draw(st.sampled_from(sorted(_TASKS)))
    items = draw(st.lists(_ITEMS[name], max_size=30))
    kinds: list[Callable[[list[Any]], Any]] = [list, tuple, iter]
    return _TASKS[name], items, draw(st.sampled_from(kinds))


@settings(max_examples=200, deadline=None)
@given(case=_map_case(), spawned_before=st.integers(0, 2))
def test_map_proposes_what_spawning_each_item_would(
        case: tuple[Any, list[Any], Callable[[list[Any]], Any]], spawned_before: int) -> None:
    """map validates a list or tuple in one pydantic call and falls back to spawning
    one by one: either way the same diff, or the same error naming the first bad
    item with the children before it kept."""
    fn, items, kind = case

    def by_map(c: Context) -> None:
        for i in range(spawned_before):
            c.spawn(double, i)
        c.map(fn, kind(items))

    def one_by_one(c: Context) -> None:
        for i in range(spawned_before):
            c.spawn(double, i)
        for item in items:
            c.spawn(fn, item)

    assert _proposed(by_map) == _proposed(one_by_one)


def test_map_validates_a_list_at_once(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    encode = Task.encode_items

    def spy(self: Task[Any, Any], items: Any) -> Any:
        calls.append(encode(self, items))
        return calls[-1]

    monkeypatch.setattr(Task, "encode_items", spy)
    ctx.map(double, range(3))
    ctx.map(double, iter([1]))  # a generator may spawn as it goes: one by one
    with pytest.raises(InvalidArguments, match="argument n='x'"):
        ctx.map(double, [1, "x"])  # invalid: one by one, to name the item
    assert calls[0] == [{"args": [i], "kwargs": {}} for i in range(3)]
    assert calls[1:] == [None]


def test_map_over_a_generator_keeps_its_spawn_order(ctx: Context) -> None:
    mapped = ctx.map(double, (ctx.spawn(double, i) for i in range(2)))
    diff = ctx.take_diff()
    assert diff is not None
    assert [(n.id, n.inputs["args"]) for n in diff.nodes] == [
        ("root.1", [0]), ("root.2", [{"$ref": "root.1"}]),
        ("root.3", [1]), ("root.4", [{"$ref": "root.3"}])]
    assert [h.id for h in mapped] == ["root.2", "root.4"]


def test_map_drops_no_item_a_validator_omits(ctx: Context) -> None:
    with pytest.raises(SchemaError):  # what spawning the omitted item alone raises
        ctx.spawn(omitting, -2)
    with pytest.raises(SchemaError):
        ctx.map(omitting, [1, -2, 3])


def test_map_of_nothing_proposes_nothing_even_when_cancelled(
        ctx: Context, transport: FakeTransport) -> None:
    transport.cancelled = True
    assert ctx.map(double, []) == []
    with pytest.raises(WorkflowCancelled):
        ctx.map(double, [1])


def test_map_over_handles_makes_data_edges(ctx: Context) -> None:
    first = ctx.spawn(double, 1)
    mapped = ctx.map(double, [first, 2])
    diff = ctx.take_diff()
    assert diff is not None
    assert [n.inputs["args"] for n in diff.nodes] == [[1], [{"$ref": first.id}], [2]]
    assert diff.edges == (EdgeSpec(first.id, mapped[0].id, data=True),)


def test_child_ids_are_deterministic(transport: FakeTransport) -> None:
    def run() -> list[str]:
        c = Context(workflow_id="wf", node_id="p", transport=transport)
        hs = [c.spawn(add, 1, 1), c.spawn(add, 2, 2, key="mine"), c.spawn(leaf)]
        return [h.id for h in hs]

    assert run() == run() == ["p.1", "p/mine", "p.3"]


def test_then_runs_after_this_task(ctx: Context) -> None:
    h = ctx.then(leaf, "next")
    dependent = ctx.spawn(add, h, 1)
    diff = ctx.take_diff()
    assert diff is not None
    assert EdgeSpec("root", h.id) in diff.edges
    assert diff.promises == ((h.id, NoNewNodes()),)  # the child's own @task promises
    with pytest.raises(PlanError, match="runs after root finishes"):
        h.result()
    with pytest.raises(PlanError, match="runs after"):
        dependent.result()


def test_wrong_argument_types_fail_before_anything_is_proposed(
        ctx: Context, transport: FakeTransport) -> None:
    with pytest.raises(InvalidArguments, match=r"add\(\): argument a='one'") as info:
        ctx.spawn(add, "one", 2)
    assert isinstance(info.value, TypeError)
    with pytest.raises(InvalidArguments):
        ctx.map(double, ["x"])
    with pytest.raises(PlaitError, match="not a task"):
        ctx.spawn(print, 1)
    assert ctx.take_diff() is None
    assert transport.sent == []


def test_results_are_typed_by_the_child_return_annotation(
        ctx: Context, transport: FakeTransport) -> None:
    h = ctx.spawn(move, Point(x=1, y=1))
    transport.results = {h.id: ok({"x": 2, "y": 1})}
    assert h.result() == Point(x=2, y=1)


def test_failed_and_cancelled_children(ctx: Context, transport: FakeTransport) -> None:
    a, b, c = ctx.spawn(add, 1, 1), ctx.spawn(add, 2, 2), ctx.spawn(add, 3, 3)
    transport.results = {
        a.id: ok(2),
        b.id: NodeResult(state="failed", error={"type": "ZeroDivisionError",
                                                "message": "division by zero", "attempts": 3}),
        c.id: NodeResult(state="cancelled"),
    }
    with pytest.raises(TaskFailed, match=r"root.2 .add. failed: ZeroDivisionError") as info:
        ctx.gather([a, b, c]).result()
    assert (info.value.node, info.value.attempts, info.value.cause) == (
        "root.2", 3, "ZeroDivisionError")
    values = ctx.gather([a, b, c], return_exceptions=True).result()
    assert values[0] == 2
    assert isinstance(values[1], TaskFailed)
    assert isinstance(values[2], WorkflowCancelled)


def test_a_spawn_then_await_is_one_message(ctx: Context, transport: FakeTransport) -> None:
    r = ctx.random()
    h = ctx.spawn(add, 1, 2)
    transport.results = {h.id: ok(3)}
    assert h.result() == 3
    (wait,) = transport.sent
    assert isinstance(wait, Wait)
    assert (wait.node, wait.attempt, wait.handles, wait.resident) == ("root", 2, [h.id], True)
    assert [(rec.kind, rec.value) for rec in wait.recorded] == [("random", r)]
    assert wait.diff is not None
    diff = PlanDiff.from_dict(wait.diff)
    assert diff.proposer == "root"
    assert [(n.id, n.task, n.inputs["args"]) for n in diff.nodes] == [(h.id, "add", [1, 2])]
    assert transport.overtaken == []
    assert ctx.take_diff() is None  # nothing left for Finish


@pytest.mark.parametrize("waiting", ["child", "sleep"])
@pytest.mark.parametrize(("kind", "error"), [
    ("violation", PromiseViolation), ("plan", PlanError), ("nondeterminism", NonDeterminismError)])
def test_rejected_proposals_raise(ctx: Context, transport: FakeTransport, kind: str,
                                  error: type[Exception], waiting: str) -> None:
    """A refused diff carried by a Wait is answered with Proposed(ok=False): the
    task raises as it did for a refused Propose, and does not wait."""
    transport.rejection = {"kind": kind, "reason": "created x", "proposer": "root",
                           "promise": "NoNewNodes()", "owner": "root", "diff": {}}
    h = ctx.spawn(add, 1, 1)
    with pytest.raises(error, match="created x") as info:
        h.result() if waiting == "child" else ctx.sleep(5).result()
    (wait,) = transport.sent  # one Wait carrying the refused spawn, and nothing after it
    assert isinstance(wait, Wait)
    assert wait.diff is not None
    assert [n.id for n in PlanDiff.from_dict(wait.diff).nodes] == [h.id]
    assert wait.handles == ([h.id] if waiting == "child" else [])
    if isinstance(info.value, PromiseViolation):
        assert (info.value.promise, info.value.owner, info.value.proposer) == (
            "NoNewNodes()", "root", "root")


def test_async_await_and_gather(ctx: Context, transport: FakeTransport) -> None:
    async def body() -> tuple[int, list[int]]:
        a = ctx.spawn(add, 1, 2)
        hs = ctx.map(double, [1, 2])
        transport.results = {a.id: ok(3), hs[0].id: ok(2), hs[1].id: ok(4)}
        return await a, await ctx.gather(hs)

    assert asyncio.run(body()) == (3, [2, 4])
    first, second = transport.sent
    assert isinstance(first, Wait)
    assert isinstance(second, Wait)
    assert first.diff is not None  # every spawn so far rides on the first Wait
    assert [n.id for n in PlanDiff.from_dict(first.diff).nodes] == ["root.1", "root.2", "root.3"]
    assert (first.handles, second.handles, second.diff) == (
        ["root.1"], ["root.2", "root.3"], None)


def test_concurrent_awaits_never_wait_before_proposing(
        ctx: Context, transport: FakeTransport) -> None:
    async def body() -> list[int]:
        a, b = ctx.spawn(add, 1, 1), ctx.spawn(add, 2, 2)
        transport.results = {a.id: ok(2), b.id: ok(4)}
        return list(await asyncio.gather(a, b))

    transport.deferred = True
    assert asyncio.run(body()) == [2, 4]
    assert transport.overtaken == []  # no Wait named a node before its spawn was sent
    assert not transport.overlapped  # the two awaits took turns
    first, second = transport.sent
    assert isinstance(first, Wait)
    assert isinstance(second, Wait)
    assert first.diff is not None
    assert [n.id for n in PlanDiff.from_dict(first.diff).nodes] == ["root.1", "root.2"]
    assert (first.handles, second.handles, second.diff) == (["root.1"], ["root.2"], None)


def test_cancellation_is_raised_at_the_next_context_call(
        ctx: Context, transport: FakeTransport) -> None:
    h = ctx.spawn(add, 1, 1)
    transport.cancelled = True
    for call in (lambda: ctx.spawn(add, 1, 1), ctx.random, lambda: ctx.heartbeat("x"),
                 h.result, lambda: ctx.set_state(1)):
        with pytest.raises(WorkflowCancelled, match="wf-1 was cancelled"):
            call()


def test_state_and_heartbeats_are_sent_at_once_not_batched(
        ctx: Context, transport: FakeTransport) -> None:
    ctx.set_state({"step": 1})
    ctx.heartbeat({"offset": 10})
    ctx.heartbeat()  # liveness only: repeats the last details
    assert [(type(m).__name__, m.attempt) for m in transport.notes] == [
        ("SetState", 2), ("TaskHeartbeat", 2), ("TaskHeartbeat", 2)]
    state, beat, again = transport.notes
    assert isinstance(state, SetState)
    assert state.value == {"step": 1}
    assert isinstance(beat, TaskHeartbeat)
    assert isinstance(again, TaskHeartbeat)
    assert beat.details == again.details == ctx.heartbeat_details == {"offset": 10}
    ctx.then(leaf, "done")
    diff = ctx.take_diff()
    assert diff is not None
    assert diff.attrs == ()  # state is not a graph change
    assert [n.task for n in diff.nodes] == ["leaf"]
    with pytest.raises(InvalidArguments, match="not JSON-able"):
        ctx.set_state(object())


def test_recorded_values(ctx: Context) -> None:
    r, now, u = ctx.random(), ctx.now(), ctx.uuid4()
    assert 0 <= r < 1
    assert isinstance(now, datetime)
    assert now.tzinfo is not None
    assert ctx.side_effect(lambda: 42) == 42
    assert [(rec.seq, rec.kind, rec.value) for rec in ctx.recorder.values] == [
        (0, "random", r), (1, "now", now.isoformat()), (2, "uuid4", str(u)),
        (3, "side_effect", 42)]
    assert all("test_context.py:" in rec.site for rec in ctx.recorder.values)


def test_respawning_an_id_differently_is_a_plan_error(ctx: Context) -> None:
    ctx.spawn(add, 1, 1, key="k")
    with pytest.raises(PlanError, match="two different nodes with id root/k"):
        ctx.spawn(add, 2, 2, key="k")
    assert isinstance(ctx.spawn(add, 1, 1, key="k"), Handle)  # the same spawn is the same node
