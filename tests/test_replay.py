"""Replay and new attempts against a fake transport: recorded values, divergence,
versions, child ids across attempts, durable waits and eviction."""

from __future__ import annotations

import asyncio
import gc
import inspect
import itertools
import sys
import time
import weakref
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

import pytest
from tasks_sample import Point, add, double
from test_context import FakeTransport, ok

from plait import replay
from plait.context import Context, Handle
from plait.errors import NonDeterminismError, PlaitError, PlanError, StepFailed, WorkflowCancelled
from plait.protocol.diff import PlanDiff
from plait.protocol.messages import (
    History,
    Message,
    NodeResult,
    PreviousChild,
    PreviousStep,
    Propose,
    Recorded,
    TaskHeartbeat,
    Wait,
)
from plait.replay import ChildIds, Evicted, StepFailure, value_adapter
from plait.task import InvalidOutput


def make(transport: FakeTransport, history: History | None = None, attempt: int = 1) -> Context:
    return Context(workflow_id="wf", node_id="root", transport=transport, attempt=attempt,
                   history=history)


def here(offset: int = 1) -> str:
    """``test_replay.py:N`` for the caller's line plus ``offset``."""
    frame = inspect.currentframe()
    assert frame is not None
    assert frame.f_back is not None
    return f"test_replay.py:{frame.f_back.f_lineno + offset}"


def names(transport: FakeTransport) -> list[str]:
    return [type(m).__name__ for m in transport.sent]


def inputs(*args: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": {}}


# --- recorded values ------------------------------------------------------------------------


def test_replay_returns_recorded_values_without_recomputing() -> None:
    calls = itertools.count(1)

    def body(ctx: Context) -> tuple[Any, ...]:
        return (ctx.random(), ctx.now(), ctx.uuid4(), ctx.side_effect(lambda: next(calls)),
                ctx.version("fix-1"))

    first = make(FakeTransport())
    values = body(first)
    recorded = first.take_recorded()
    assert [(r.seq, r.kind) for r in recorded] == [
        (0, "random"), (1, "now"), (2, "uuid4"), (3, "side_effect"), (4, "version")]
    assert recorded[4].value == ["fix-1", True]
    assert first.take_recorded() == []  # taken once: they ride on one message

    again = make(FakeTransport(), History(recorded=recorded))
    assert again.replaying
    assert body(again) == values
    assert next(calls) == 2  # the side effect ran once, in the first execution
    assert again.take_recorded() == []
    assert not again.replaying


def test_side_effects_read_back_as_the_same_type() -> None:
    def when() -> datetime:
        return datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)

    first = make(FakeTransport())
    got = (first.side_effect(when), first.side_effect(lambda: Point(x=1, y=2), returns=Point),
           first.side_effect(lambda: (1, 2)))
    assert got == (when(), Point(x=1, y=2), [1, 2])  # untyped: data, as a replay returns it
    again = make(FakeTransport(), History(recorded=first.take_recorded()))
    assert (again.side_effect(when), again.side_effect(lambda: Point(x=0, y=0), returns=Point),
            again.side_effect(lambda: (3, 4))) == got


def test_a_replay_is_not_past_a_wait_for_children_until_it_has_spawned_them() -> None:
    """Old code spawned fetch(1) and was evicted waiting for it; new code asks
    ctx.version first. Nothing recorded told the replay it was replaying: it took
    the new path, spawned another task at the same spawn seq, and diverged."""
    history = History(resumed_at=(0, 1), results={"root.1": NodeResult(state="succeeded",
                                                                       output=2)})
    ctx = make(FakeTransport(), history)
    assert ctx.replaying
    assert ctx.version("v2") is False  # the old path: it is what the history holds
    assert ctx.spawn(add, 1, 1).result() == 2
    assert not ctx.replaying  # back where it waited: new code from here
    assert ctx.version("v3") is True
    assert [r.value for r in ctx.recorder.values] == [["v2", False], ["v3", True]]


class ApiDown(Exception):
    pass


def test_a_side_effect_that_raised_raises_again_on_replay_without_running() -> None:
    """Not recorded, the failure was forgotten: the replay called the outside world
    again, and, answered this time, took the other branch of the body's except."""
    calls: list[str] = []

    def call_api() -> str:
        calls.append("called")
        if len(calls) == 1:
            raise ApiDown("503")
        return "ok"

    first = make(FakeTransport())
    with pytest.raises(ApiDown, match="503"):
        first.side_effect(call_api)
    assert first.random() is not None  # the seq moved on past the failure
    recorded = first.take_recorded()
    again = make(FakeTransport(), History(recorded=recorded))
    with pytest.raises(ApiDown, match="503"):
        again.side_effect(call_api)
    assert calls == ["called"]
    with pytest.raises(NonDeterminismError, match=r"has side_effect\(\) .* calls random"):
        make(FakeTransport(), History(recorded=recorded[:1])).random()


def test_divergence_names_expected_actual_and_the_line() -> None:
    history = History(recorded=[Recorded(seq=0, kind="random", value=0.5, site="flows.py:7")])
    ctx = make(FakeTransport(), history)
    site = here(2)
    with pytest.raises(NonDeterminismError) as info:
        ctx.uuid4()
    err = info.value
    assert err.expected == "random() at flows.py:7"
    assert err.actual == "uuid4()"
    assert err.call_site is not None
    assert err.call_site.endswith(site)
    assert str(err) == (f"root: replay diverged at record seq 0: the history has random() at "
                        f"flows.py:7, this run calls uuid4() at {err.call_site}")
    with pytest.raises(NonDeterminismError, match=r"has random\(\) .* calls sleep\(\)"):
        ctx.sleep(1)
    timers = make(FakeTransport(), History(timers=[0]))
    with pytest.raises(NonDeterminismError, match=r"has sleep\(\), this run calls signal\(\)"):
        timers.signal("go")


def test_version_takes_old_or_new_paths() -> None:
    new = make(FakeTransport())
    assert new.version("fix") is True
    assert [r.value for r in new.take_recorded()] == [["fix", True]]
    # Replays keep the recorded choice.
    old = make(FakeTransport(), History(recorded=[
        Recorded(seq=0, kind="version", value=["fix", False])]))
    assert old.version("fix") is False
    # History written by code without the call: the old path, and the old code's
    # record at this seq is left to the old code's own call.
    before = make(FakeTransport(), History(recorded=[
        Recorded(seq=0, kind="random", value=0.25), Recorded(seq=1, kind="random", value=0.75)]))
    assert before.version("fix") is False
    assert (before.random(), before.random()) == (0.25, 0.75)
    assert before.take_recorded() == []
    assert before.version("later") is True  # past the history: new code
    # Replaying (records beyond), nothing at this seq: old path, recorded as such.
    gap = make(FakeTransport(), History(recorded=[Recorded(seq=1, kind="random", value=0.5)]))
    assert gap.version("fix") is False
    assert [(r.seq, r.value) for r in gap.take_recorded()] == [(0, ["fix", False])]
    assert gap.random() == 0.5
    # One path per change id: the call after the history (a sleep's) agrees with
    # the one inside it, and is recorded so, for the next replay.
    mixed = make(FakeTransport(), History(
        recorded=[Recorded(seq=0, kind="random", value=0.25)], timers=[1]))
    assert mixed.version("fix") is False  # at the old code's random
    assert mixed.random() == 0.25
    mixed.sleep(60)  # seq 1: fired
    assert mixed.version("fix") is False
    assert [r.value for r in mixed.take_recorded()] == [["fix", False]]


# --- children -----------------------------------------------------------------------------


def test_replay_rederives_ids_and_uses_recorded_results_without_waiting() -> None:
    def body(ctx: Context) -> list[Any]:
        a = ctx.spawn(add, 1, 2)
        first = a.result()
        hs = ctx.map(double, [a, 5])
        return [first, *ctx.gather(hs)]

    first = FakeTransport()
    first.results = {"root.1": ok(3), "root.2": ok(6), "root.3": ok(10)}
    assert body(make(first)) == [3, 6, 10]
    assert names(first) == ["Wait", "Wait"]  # each carrying the spawns it waits for
    assert [m.handles for m in first.sent if isinstance(m, Wait)] == [
        ["root.1"], ["root.2", "root.3"]]

    replay = FakeTransport()
    assert body(make(replay, History(results=first.results))) == [3, 6, 10]
    # Known children are re-proposed (no-ops for Flow, which checks they match)
    # before their recorded results are used; nothing is waited for.
    assert names(replay) == ["Propose", "Propose"]
    assert [[n.id for n in d.nodes] for d in replay.diffs()] == [
        [n.id for n in d.nodes] for d in first.diffs()] == [["root.1"], ["root.2", "root.3"]]


def test_a_spawn_flow_finds_divergent_fails_at_its_line() -> None:
    transport = FakeTransport()
    transport.rejection = {
        "kind": "nondeterminism", "proposer": "root",
        "reason": "node root.2 was add{'args': [1, 2], 'kwargs': {}} and is now proposed as "
                  "sample.double{'args': [4], 'kwargs': {}}"}
    ctx = make(transport, History(results={"root.1": ok(3), "root.2": ok(3)}))
    a = ctx.spawn(add, 1, 1)
    site = here()
    b = ctx.spawn(double, 4)
    with pytest.raises(NonDeterminismError) as info:
        ctx.gather([a, b]).result()
    err = info.value
    assert err.call_site is not None
    assert err.call_site.endswith(site)
    assert err.expected == "add{'args': [1, 2], 'kwargs': {}}"
    assert err.actual == "sample.double{'args': [4], 'kwargs': {}}"
    assert str(err).startswith(f"root: replay diverged at {err.call_site}: the history has "
                               f"child root.2 = add")


def test_a_replay_flushes_leftover_spawns_so_a_divergence_has_its_line() -> None:
    transport = FakeTransport()
    transport.rejection = {
        "kind": "nondeterminism", "proposer": "root",
        "reason": "node root.1 was leaf{} and is now proposed as add{}"}
    ctx = make(transport, History(results={"root.1": ok("x")}))
    site = here()
    ctx.then(add, 1, 1)
    with pytest.raises(NonDeterminismError) as info:
        ctx.flush()  # the worker does this before Finish when it replays
    assert info.value.call_site is not None
    assert info.value.call_site.endswith(site)
    assert ctx.take_diff() is None


def test_a_new_attempt_draws_fresh_values_and_reuses_matching_children() -> None:
    history = History(
        previous=[PreviousChild(seq=1, id="root.1", task="add", inputs=inputs(1, 2)),
                  PreviousChild(seq=2, id="root.2", task="add", inputs=inputs(2, 2)),
                  PreviousChild(seq=3, id="root/k", task="add", inputs=inputs(3, 3))],
        results={"root.1": ok(3), "root.2": ok(4), "root/k": ok(6)})
    transport = FakeTransport()
    ctx = make(transport, history, attempt=3)
    assert ctx.random() >= 0
    assert [r.seq for r in ctx.take_recorded()] == [0]  # drawn, not replayed
    same = ctx.spawn(add, 1, 2)
    other = ctx.spawn(add, 5, 5)
    keyed = ctx.spawn(add, 3, 3, key="k")
    rekeyed = ctx.spawn(add, 9, 9, key="k2")
    more = ctx.spawn(add, 0, 0)
    assert [h.id for h in (same, other, keyed, rekeyed, more)] == [
        "root.1", "root.2@3", "root/k", "root/k2", "root.5"]
    assert same.result() == 3
    assert keyed.result() == 6
    assert names(transport) == ["Propose"]  # reused results: no Wait
    transport.results = {"root.2@3": ok(10)}
    assert other.result() == 10
    assert transport.sent[-1].handles == ["root.2@3"]  # type: ignore[union-attr]


def test_a_differing_keyed_spawn_keeps_the_earlier_child_as_history() -> None:
    history = History(previous=[PreviousChild(seq=1, id="root/k", task="add",
                                              inputs=inputs(1, 1))])
    ctx = make(FakeTransport(), history, attempt=2)
    assert ctx.spawn(add, 2, 2, key="k").id == "root/k@2"


# --- durable waits and eviction ----------------------------------------------------------------


def test_sleep_and_signal_wait_durably_and_replay() -> None:
    def body(ctx: Context) -> str:
        r = ctx.random()
        ctx.spawn(add, 1, 1)
        ctx.sleep(5).result()
        payload = ctx.signal("go").result()
        return f"{payload}:{r}"

    first = FakeTransport()
    first.evict = True
    with pytest.raises(Evicted):
        body(make(first))
    (wait,) = first.sent  # the spawn and the draw ride on the sleep's Wait
    assert isinstance(wait, Wait)
    assert (wait.timer, wait.signal, wait.seq, wait.handles) == (5.0, None, 1, [])
    assert [r.kind for r in wait.recorded] == ["random"]
    assert [[n.id for n in d.nodes] for d in first.diffs()] == [["root.1"]]
    recorded = wait.recorded

    second = FakeTransport()
    second.evict = True
    with pytest.raises(Evicted):
        body(make(second, History(recorded=recorded, timers=[1])))
    # The sleep is over; the child is re-proposed on the signal's Wait, and the
    # replayed draw is not recorded again.
    (signal_wait,) = second.sent
    assert isinstance(signal_wait, Wait)
    assert (signal_wait.signal, signal_wait.seq, signal_wait.timer, signal_wait.handles,
            signal_wait.recorded) == ("go", 2, None, [], [])
    assert [[n.id for n in d.nodes] for d in second.diffs()] == [["root.1"]]

    third = FakeTransport()
    history = History(recorded=recorded, timers=[1], signals=[(2, "yes")])
    ctx = make(third, history)
    assert body(ctx) == f"yes:{recorded[0].value}"
    assert third.sent == []  # nothing to wait for: the child is left for Finish
    diff = ctx.take_diff()
    assert diff is not None
    assert [n.id for n in diff.nodes] == ["root.1"]


def test_async_durable_waits() -> None:
    async def body(ctx: Context) -> Any:
        await ctx.sleep(1.5)
        return await ctx.signal("approve")

    transport = FakeTransport()
    transport.evict = True
    with pytest.raises(Evicted):
        asyncio.run(body(make(transport)))
    assert names(transport) == ["Wait"]
    assert asyncio.run(body(make(FakeTransport(), History(
        timers=[0], signals=[(1, {"by": "ann"})])))) == {"by": "ann"}


def test_sleep_zero_returns_at_once_and_bad_arguments_fail() -> None:
    transport = FakeTransport()
    ctx = make(transport)
    assert ctx.sleep(0).result() is None
    assert transport.sent == []
    for bad in (-1, float("nan"), "5", True):
        with pytest.raises(ValueError, match="seconds >= 0"):
            ctx.sleep(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="signal name"):
        ctx.signal("")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_eviction_unwinds_through_except_exception_and_runs_finally(kind: str) -> None:
    notes: list[str] = []
    transport = FakeTransport()
    transport.evict = True
    ctx = make(transport)

    def sync_body() -> int:
        h = ctx.spawn(add, 1, 2)
        try:
            return int(h.result())
        except Exception:  # noqa: BLE001 - what eviction must get through
            notes.append("swallowed")
            return -1
        finally:
            notes.append("finally")

    async def async_body() -> int:
        h = ctx.spawn(add, 1, 2)
        try:
            return int(await h)
        except Exception:  # noqa: BLE001 - what eviction must get through
            notes.append("swallowed")
            return -1
        finally:
            notes.append("finally")

    with pytest.raises(Evicted):
        sync_body() if kind == "sync" else asyncio.run(async_body())
    assert notes == ["finally"]
    assert not isinstance(Evicted(), Exception)
    with pytest.raises(Evicted):  # a task that caught it anyway cannot go on
        ctx.random()


class CancellingTransport(FakeTransport):
    """Fails every Wait the way the worker link does when CancelTask arrives."""

    def request(self, message: Propose | Wait) -> Future[Message]:
        if not isinstance(message, Wait):
            return super().request(message)
        self.sent.append(message)
        self.cancelled = True
        future: Future[Message] = Future()
        future.set_exception(WorkflowCancelled("workflow wf was cancelled (node root)"))
        return future


def test_cancellation_reaches_a_task_waiting_on_a_signal_or_a_child() -> None:
    ctx = make(CancellingTransport())
    with pytest.raises(WorkflowCancelled, match="wf was cancelled"):
        ctx.signal("approve").result()
    ctx = make(CancellingTransport())
    with pytest.raises(WorkflowCancelled):
        asyncio.run(_await(ctx.spawn(add, 1, 1)))
    with pytest.raises(WorkflowCancelled):
        ctx.sleep(1)


async def _await(h: Handle) -> Any:
    return await h


def test_a_resumed_task_knows_its_last_heartbeat_details() -> None:
    transport = FakeTransport()
    ctx = make(transport, History(heartbeat={"offset": 40}), attempt=2)
    assert ctx.heartbeat_details == {"offset": 40}
    ctx.heartbeat()
    (beat,) = transport.notes
    assert isinstance(beat, TaskHeartbeat)
    assert (beat.attempt, beat.details) == (2, {"offset": 40})


def test_recorded_values_ride_on_the_next_wait() -> None:
    transport = FakeTransport()
    ctx = make(transport)
    h = ctx.spawn(add, 1, 1)
    ctx.take_diff()  # proposed already (as if by an earlier wait)
    transport.results = {h.id: ok(2)}
    ctx.now()
    assert h.result() == 2
    (wait,) = transport.sent
    assert isinstance(wait, Wait)
    assert [r.kind for r in wait.recorded] == ["now"]


def test_child_ids_of_a_retried_big_map_take_linear_time() -> None:
    """Each spawn looks only at the earlier children at its seq or with its id: a
    retry re-spawning 20,000 children is quick (a scan per spawn took minutes)."""
    n = 20_000
    previous = [PreviousChild(seq=i, id=f"r.{i}", task="t", inputs={"args": [i]})
                for i in range(n)]
    ids = ChildIds("r", 2, previous)
    start = time.monotonic()
    derived = [ids.derive(i, None, "t", {"args": [i if i % 2 else -i]}) for i in range(n)]
    elapsed = time.monotonic() - start
    assert derived[1::2] == [f"r.{i}" for i in range(1, n, 2)]  # same call: reused
    assert derived[2::2] == [f"r.{i}@2" for i in range(2, n, 2)]  # another: a new id
    assert derived[0] == "r.0"  # -0 == 0: the same inputs
    assert elapsed < 5.0, elapsed


def test_child_ids_prefer_the_earliest_listed_match() -> None:
    previous = [PreviousChild(seq=1, id="r.1", task="t", inputs={"args": [1]}),
                PreviousChild(seq=1, id="r.1@2", task="u", inputs={}),
                PreviousChild(seq=-1, id="r/k", task="t", inputs={})]
    ids = ChildIds("r", 3, previous)
    assert ids.derive(1, None, "u", {}) == "r.1@2"
    assert ids.derive(1, None, "t", {"args": [1]}) == "r.1"
    assert ids.derive(1, None, "v", {}) == "r.1@3"
    assert ids.derive(0, "k", "t", {}) == "r/k"
    assert ids.derive(0, "k", "x", {}) == "r/k@3"
    assert ids.derive(2, None, "t", {}) == "r.2"


def test_a_keyed_child_a_later_attempt_made_is_reused() -> None:
    """Attempt 1 spawned key k with one input, attempt 2 with another (r/k@2, which
    completed): attempt 3 spawning what attempt 2 did reuses r/k@2, not a new node."""
    previous = [PreviousChild(seq=-1, id="r/k", task="t", inputs={"args": [1]}),
                PreviousChild(seq=-1, id="r/k@2", task="t", inputs={"args": [2]})]
    ids = ChildIds("r", 3, previous)
    assert ids.derive(5, "k", "t", {"args": [2]}) == "r/k@2"
    assert ids.derive(5, "k", "t", {"args": [1]}) == "r/k"
    assert ids.derive(5, "k", "t", {"args": [3]}) == "r/k@3"
    # A key of the user's own that ends in @N is reused as the id it is.
    own = ChildIds("r", 2, [PreviousChild(seq=-1, id="r/shard@1", task="t", inputs={})])
    assert own.derive(1, "shard@1", "t", {}) == "r/shard@1"
    assert own.derive(2, "shard", "t", {}) == "r/shard"


# --- durable steps ------------------------------------------------------------------------------


def charge(amount: int) -> dict[str, int]:
    return {"charged": amount}


def reserve(amount: int) -> int:
    return amount


async def refund(amount: int) -> int:
    await asyncio.sleep(0)  # wait-ok: a suspension point, as real async work has
    return -amount


def test_a_step_runs_once_and_waits_for_its_commit() -> None:
    calls: list[int] = []

    def counted(amount: int) -> dict[str, int]:
        calls.append(amount)
        return charge(amount)

    transport = FakeTransport()
    ctx = make(transport)
    site = here()
    assert ctx.step(counted, 5).result() == {"charged": 5}
    (propose,) = transport.sent  # the value went out alone, and was answered
    assert isinstance(propose, Propose)
    assert PlanDiff.from_dict(propose.diff).nodes == ()
    (rec,) = propose.recorded
    assert (rec.seq, rec.kind, rec.value) == (0, "step", {"i": 0, "fn": "test_a_step_runs_once_"
                                                             "and_waits_for_its_commit.<locals>."
                                                             "counted", "v": {"charged": 5}})
    assert rec.site.endswith(site)

    again = make(FakeTransport(), History(recorded=[rec]))  # replayed: no run, no message
    assert again.step(counted, 5).result() == {"charged": 5}
    assert calls == [5]
    assert again.take_recorded() == []


def test_a_retry_gets_earlier_attempts_steps_back_by_index_and_function() -> None:
    earlier = [PreviousStep(index=0, name="charge", value={"charged": 5})]
    transport = FakeTransport()
    ctx = make(transport, History(steps=earlier), attempt=2)
    ran: list[str] = []

    def other(amount: int) -> int:
        ran.append("other")
        return amount

    assert ctx.step(charge, 999).result() == {"charged": 5}  # index 0, same function: kept
    assert ctx.step(other, 3).result() == 3  # index 1: new, so it ran and was committed
    assert ran == ["other"]
    assert [[(r.seq, r.value["i"]) for r in m.recorded] for m in transport.sent] == [
        [(0, 0), (1, 1)]]  # the carried value rides with the next commit


def test_a_step_of_another_function_at_a_recorded_seq_diverges() -> None:
    history = History(recorded=[Recorded(seq=0, kind="step", site="flows.py:3",
                                         value={"i": 0, "fn": "charge", "v": 1})])
    ctx = make(FakeTransport(), history)
    with pytest.raises(NonDeterminismError, match=r"has step\(charge\) at flows.py:3, "
                                                  r"this run calls step\(reserve\)"):
        ctx.step(reserve, 1).result()


def test_an_async_step_is_awaited_and_a_failing_step_records_its_failure() -> None:
    transport = FakeTransport()
    ctx = make(transport)
    declined = ValueError("card declined")

    def broken() -> int:
        raise declined

    async def body() -> int:
        with pytest.raises(ValueError, match="declined") as raised:
            await ctx.step(broken)
        assert raised.value is declined  # this run sees the exception itself
        return await ctx.step(refund, 4)

    assert asyncio.run(body()) == -4
    failed, refunded = (r for m in transport.sent for r in m.recorded)  # one message
    assert (failed.seq, failed.kind, failed.value) == (0, "step_error", {
        "i": 0, "fn": broken.__qualname__, "e": {
            "type": "builtins.ValueError", "message": "card declined", "args": ["card declined"]}})
    assert (refunded.seq, refunded.value["fn"]) == (1, "refund")
    with pytest.raises(PlaitError, match="is async"):
        ctx.step(refund, 1).result()


class Declined(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)


def test_a_replay_raises_a_recorded_step_failure_again_without_running_the_step() -> None:
    ran: list[str] = []

    def pay() -> int:
        ran.append("pay")
        raise Declined(51, "insufficient funds")

    def body(ctx: Context) -> str:
        try:
            ctx.step(pay).result()
        except Declined as exc:
            return f"declined {exc.args[0]}"
        return "paid"

    first = make(FakeTransport())
    assert body(first) == "declined 51"
    history = History(recorded=first.take_recorded())
    assert [(r.kind, r.value["e"]["type"]) for r in history.recorded] == [
        ("step_error", f"{__name__}.Declined")]
    again = make(FakeTransport(), history)  # the same attempt, replayed after an eviction
    assert body(again) == "declined 51"  # the same path, as its own type
    assert ran == ["pay"]  # once
    assert again.take_recorded() == []

    step = again.step(pay)  # a second step at a fresh seq runs (nothing recorded there)
    with pytest.raises(Declined):
        step.result()
    with pytest.raises(Declined):
        step.result()  # waiting on a failed step twice runs it once
    assert ran == ["pay", "pay"]


class Status(Exception):
    """Made from a response, not from its message: a replay cannot call it again."""

    def __init__(self, response: Any) -> None:
        super().__init__(f"HTTP {response.status}")
        self.status = response.status


def replay_failure(error: dict[str, Any]) -> BaseException:
    history = History(recorded=[Recorded(seq=0, kind="step_error", value={
        "i": 0, "fn": "charge", "e": error})])
    with pytest.raises(Exception) as raised:  # noqa: PT011 - each caller checks the type
        make(FakeTransport(), history).step(charge, 1).result()
    return raised.value


def test_a_failure_is_rebuilt_as_its_own_type_without_its_constructor_if_need_be() -> None:
    # The first run's exceptions, recorded as the worker records them:
    missing = StepFailure.of(FileNotFoundError(2, "No such file or directory")).error
    missing["message"] = "[Errno 2] No such file or directory: 'in.csv'"  # open() adds it
    status = StepFailure.of(Status(type("R", (), {"status": 503})())).error
    for error, kind, args in ((missing, FileNotFoundError, (2, "No such file or directory")),
                              (status, Status, ("HTTP 503",))):
        again = replay_failure(error)
        assert isinstance(again, kind)  # so `except FileNotFoundError:` takes the same path
        assert type(again).__name__ == kind.__name__
        assert (str(again), again.args) == (error["message"], args)


@pytest.mark.parametrize(("error", "shown"), [
    ({"type": "nowhere.Gone", "message": "lost", "args": ["lost"]}, "nowhere.Gone: lost"),
    ({"type": "builtins.print", "message": "x", "args": ["x"]}, "builtins.print: x"),
    ({"type": "builtins.KeyboardInterrupt", "message": "", "args": []},
     "builtins.KeyboardInterrupt: "),
])
def test_a_failure_of_a_type_not_found_replays_as_step_failed(
        error: dict[str, Any], shown: str) -> None:
    # Not imported (nothing is imported on the history's word), not an exception type,
    # not an Exception (a replay never raises a BaseException the body did not).
    again = replay_failure(error)
    assert isinstance(again, StepFailed)
    assert str(again) == shown
    assert (again.type, again.message) == (error["type"], error["message"])
    assert "nowhere" not in sys.modules


def test_a_failure_is_recorded_within_msgpack_s_reach() -> None:
    class Loud(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    huge = StepFailure.of(ValueError(2**70, "x" * 10_000)).error
    assert huge["args"] is None  # msgpack cannot carry an int that big
    assert len(huge["message"]) == 4000
    assert StepFailure.of(ValueError(2**63, -(2**63), 1.5, None)).error["args"] == [
        2**63, -(2**63), 1.5, None]
    assert StepFailure.of(Loud()).error["message"] == "Loud"  # a broken __str__


def test_a_step_value_must_be_data() -> None:
    with pytest.raises(PlaitError, match="not data"):
        make(FakeTransport()).step(object).result()


def lookup() -> int:
    return "abc"  # type: ignore[return-value]  # the bug under test


def test_a_value_of_the_wrong_type_is_refused_before_it_is_recorded() -> None:
    """Recorded unchecked, a step's wrong value would fail every replay and retry
    (a retry reads a completed step back instead of running it again)."""
    transport = FakeTransport()
    ctx = make(transport)
    with pytest.raises(InvalidOutput, match=r"step lookup returned 'abc': .*integer"):
        ctx.step(lookup).result()
    with pytest.raises(InvalidOutput, match=r"side_effect lookup returned 'abc'"):
        ctx.side_effect(lookup)
    assert transport.sent == []
    assert ctx.take_recorded() == []


def test_a_step_s_function_may_not_use_ctx_and_a_step_runs_once_however_often_waited() -> None:
    transport = FakeTransport()
    ctx = make(transport)
    sneaky = ctx.step(lambda: ctx.random())
    with pytest.raises(PlaitError, match="uses ctx"):
        sneaky.result()
    calls: list[int] = []

    def once() -> int:
        calls.append(1)
        return 7

    step = ctx.step(once)
    assert (step.result(), step.result(), asyncio.run(_awaited(step))) == (7, 7, 7)
    assert calls == [1]
    assert ctx.random() < 1  # ctx works again outside the step


async def _awaited(step: Any) -> Any:
    return await step


def double_of(x: int) -> int:
    return 2 * x


def test_a_step_awaited_concurrently_whose_commit_fails_is_not_run_again() -> None:
    """The first await ran fn, and its value went out; the commit failed (Flow refused
    the batch). The other await gets that failure, not a second run of fn; and
    result() on a step another coroutine awaits is refused."""
    calls: list[int] = []

    def charge_card() -> int:
        calls.append(1)
        return 7

    async def body(ctx: Context) -> list[Any]:
        step = ctx.step(charge_card)

        async def sync_too() -> Any:
            return step.result()

        return list(await asyncio.gather(_awaited(step), _awaited(step), sync_too(),
                                         return_exceptions=True))

    transport = FakeTransport()
    transport.deferred = True
    transport.rejection = {"kind": "plan", "reason": "refused for the test"}
    first, second, third = asyncio.run(body(make(transport)))
    assert calls == [1]
    assert isinstance(first, PlanError)
    assert second is first
    assert isinstance(third, PlaitError)
    assert "is being awaited by another coroutine" in str(third)


def test_coroutines_whose_durable_calls_interleave_by_timing_are_refused() -> None:
    """Two gathered coroutines each take a step, then another: on the first run the
    steps interleave (each pauses for Flow's commit), on a replay they would not
    (recorded steps do not pause), and values would go to the wrong calls. The
    second step of the first coroutine is refused, saying why."""
    async def one(ctx: Context, x: int) -> tuple[int, int]:
        a = await ctx.step(double_of, x)
        b = await ctx.step(double_of, x * 10)
        return a, b

    async def body(ctx: Context) -> Any:
        return await asyncio.gather(one(ctx, 1), one(ctx, 2))

    transport = FakeTransport()
    transport.deferred = True
    with pytest.raises(PlaitError, match=r"ctx.step\(double_of\) at .* interleaves with "
                                         r"durable calls of another coroutine"):
        asyncio.run(body(make(transport)))


def test_gathered_coroutines_that_each_spawn_first_and_then_a_body_step_replay_alike(
        ) -> None:
    """Each coroutine spawns before it first pauses, so the spawn numbers follow the
    order the coroutines start in, on a replay too; the body goes on after the
    gather, when they have all finished."""
    async def fetch(ctx: Context, i: int) -> int:
        return int(await ctx.spawn(double, i))

    async def body(ctx: Context) -> tuple[Any, ...]:
        got = await asyncio.gather(*(fetch(ctx, i) for i in range(3)))
        return (*got, await ctx.step(double_of, 5), ctx.random())

    transport = FakeTransport()
    transport.deferred = True
    transport.results = {f"root.{i + 1}": ok(2 * i) for i in range(3)}
    first = make(transport)
    values = asyncio.run(body(first))
    assert values[:4] == (0, 2, 4, 10)
    recorded = [r for m in transport.sent for r in m.recorded] + first.take_recorded()
    results = {f"root.{i + 1}": ok(2 * i) for i in range(3)}
    again = make(FakeTransport(), History(recorded=recorded, results=results))
    assert asyncio.run(body(again)) == values


def test_one_step_awaited_concurrently_runs_once_and_replays_alike() -> None:
    """Two coroutines await one Step (asyncio.gather): the first runs it, the other
    waits for that (the first waits for Flow's commit in between), and a replay
    takes the same records, so what follows is no divergence."""
    calls: list[int] = []

    def charge_card() -> int:
        calls.append(1)
        return 7

    async def body(ctx: Context) -> tuple[Any, ...]:
        step = ctx.step(charge_card)
        both = await asyncio.gather(_awaited(step), _awaited(step))
        return (*both, ctx.random())

    transport = FakeTransport()
    transport.deferred = True  # answered on the loop's next turn, like a real peer
    first = make(transport)
    values = asyncio.run(body(first))
    assert values[:2] == (7, 7)
    assert calls == [1]
    recorded = [r for m in transport.sent for r in m.recorded] + first.take_recorded()
    again = make(FakeTransport(), History(recorded=recorded))
    assert asyncio.run(body(again)) == values  # no NonDeterminismError on ctx.random()
    assert calls == [1]


def test_a_retry_that_takes_another_path_runs_every_later_step_anew() -> None:
    earlier = [PreviousStep(index=0, name="charge", value={"charged": 5}),
               PreviousStep(index=1, name="reserve", value=1),
               PreviousStep(index=2, name="charge", value={"charged": 5})]
    ran: list[int] = []

    def counted(amount: int) -> dict[str, int]:
        ran.append(amount)
        return {"charged": amount}

    counted.__qualname__ = "charge"
    ctx = make(FakeTransport(), History(steps=earlier), attempt=2)
    assert ctx.step(counted, 1).result() == {"charged": 5}  # index 0: the same, kept
    assert ctx.step(other_path, 2).result() == 2  # index 1 differs: runs
    assert ctx.step(counted, 3).result() == {"charged": 3}  # so does everything after
    assert ran == [3]


def other_path(x: int) -> int:
    return x


def test_a_step_value_follows_the_return_hint_without_keeping_the_function_alive() -> None:
    def make() -> Any:
        def stamp() -> datetime:
            return datetime.now(UTC)
        return stamp

    stamp = make()
    when = datetime(2026, 1, 2, tzinfo=UTC)
    assert value_adapter(stamp).validate_python(when.isoformat()) == when
    assert replay._HINTS[stamp] is datetime  # read once, then from here
    assert value_adapter(lambda: 1).validate_python("x") == "x"  # no hint: plain data
    gone = weakref.ref(stamp)
    del stamp
    gc.collect()
    assert gone() is None
