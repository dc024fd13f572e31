"""The client: correlation, timeouts, error mapping, the Clone-pattern watch, and
the whole API against a real Flow, supervisor and workers."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import e2e
import e2e_tasks
import pytest
import zmq

from plait.client import (
    Client,
    FlowError,
    FlowUnavailable,
    NotFound,
    Refused,
    ResultTimeout,
    feed_address,
    outcome_error,
)
from plait.client_errors import error_from_reply
from plait.errors import (
    NonDeterminismError,
    PlanError,
    PromiseViolation,
    ProtocolError,
    TaskFailed,
    WorkflowCancelled,
)
from plait.protocol import codec
from plait.protocol.messages import (
    Ack,
    AddSchedule,
    AwaitResult,
    Error,
    FeedEvent,
    GetGraph,
    GetHistory,
    GetStatus,
    GraphReply,
    HistoryReply,
    ListSchedules,
    Message,
    PauseWorkflow,
    Query,
    QueryReply,
    RestartNode,
    RunInfo,
    ScheduleInfo,
    ScheduleList,
    SendSignal,
    SetAttrs,
    StatusReply,
    Submit,
    Submitted,
    WorkflowResult,
)
from plait.protocol.sockets import RECONNECT_MAX_MS, RECONNECT_MS
from plait.testing import Cluster, free_port, wait_for

# --- a scripted Flow, for what a real one will not do on demand -------------------------

Script = Callable[[Message, "FakeFlow"], list[bytes]]


class FakeFlow:
    """A ROUTER and an XPUB in one thread; ``script`` turns requests into reply frames."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.zmq = zmq.Context()
        self.router = self.zmq.socket(zmq.ROUTER)
        self.router.bind("tcp://127.0.0.1:*")
        self.xpub = self.zmq.socket(zmq.XPUB)
        self.xpub.bind("tcp://127.0.0.1:*")
        self.address = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.feed = self.xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.seen: list[Message] = []
        self.subscribed = False
        self.pending: list[FeedEvent] = []  # published once a subscriber is there
        self.chatter: Callable[[], FeedEvent] | None = None  # published on every turn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.xpub, zmq.POLLIN)
        while not self._stop.is_set():
            events = dict(poller.poll(20))
            if self.xpub in events:
                self.subscribed = self.xpub.recv()[:1] == b"\x01"
            if self.router in events:
                ident, frame = self.router.recv_multipart()
                msg = codec.decode(frame)
                self.seen.append(msg)
                for reply in self.script(msg, self):
                    self.router.send_multipart([ident, reply])
            if self.subscribed and self.pending:
                for event in self.pending:
                    self.xpub.send_multipart([event.workflow_id.encode(), codec.encode(event)])
                self.pending = []
            if self.subscribed and self.chatter is not None:
                event = self.chatter()
                self.xpub.send_multipart([event.workflow_id.encode(), codec.encode(event)])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.router.close(0)
        self.xpub.close(0)
        self.zmq.term()


@pytest.fixture
def fake() -> Iterator[Callable[[Script], FakeFlow]]:
    made: list[FakeFlow] = []

    def make(script: Script) -> FakeFlow:
        made.append(FakeFlow(script))
        return made[-1]

    yield make
    for f in made:
        f.close()


def _info(workflow_id: str, status: str = "running") -> RunInfo:
    return RunInfo.model_validate({"workflow_id": workflow_id, "name": "wf", "status": status,
                                   "created": 0.0})


def test_a_dead_flow_is_a_clear_error_not_a_hang() -> None:
    started = time.monotonic()
    with Client(f"tcp://127.0.0.1:{free_port()}", timeout=0.5) as client:
        with pytest.raises(FlowUnavailable, match="did not answer"):
            client.runs()
        with pytest.raises(FlowUnavailable):
            client.run("nothing").result(timeout=30)
    assert time.monotonic() - started < 10


def test_a_client_retries_a_refused_connection_sooner_than_zeromqs_default() -> None:
    # ZeroMQ retries every 100 ms by default; ours start at 5 ms and back off to it.
    with Client(f"tcp://127.0.0.1:{free_port()}", timeout=0.5) as client:
        sock = client._sock()
        assert sock.getsockopt(zmq.RECONNECT_IVL) == RECONNECT_MS < 100
        assert sock.getsockopt(zmq.RECONNECT_IVL_MAX) == RECONNECT_MAX_MS == 100


def test_replies_are_matched_by_correlation_id(fake: Callable[[Script], FakeFlow]) -> None:
    def script(msg: Message, _: FakeFlow) -> list[bytes]:
        right = StatusReply(id=msg.id, runs=[_info("right")])
        stale = StatusReply(id="someone-else", runs=[_info("wrong")])
        return [codec.encode(stale), b"\xc1 not msgpack", codec.encode(right)]

    flow = fake(script)
    with Client(flow.address, feed=flow.feed, timeout=5) as client:
        assert [r.workflow_id for r in client.runs()] == ["right"]


def test_an_unanswered_request_times_out_and_the_next_one_works(
        fake: Callable[[Script], FakeFlow]) -> None:
    def script(msg: Message, flow: FakeFlow) -> list[bytes]:
        if len(flow.seen) == 1:
            return []  # the first request is lost
        return [codec.encode(StatusReply(id=msg.id, runs=[_info("late")]))]

    flow = fake(script)
    with Client(flow.address, feed=flow.feed, timeout=0.5) as client:
        with pytest.raises(FlowUnavailable):
            client.runs()
        assert [r.workflow_id for r in client.runs()] == ["late"]


def test_flow_errors_become_exceptions(fake: Callable[[Script], FakeFlow]) -> None:
    rejection: dict[str, Any] = {
        "kind": "violation", "reason": "M is not allowed", "proposer": None,
        "promise": "OnlyNodes(N)", "owner": "root", "diff": {}}

    def script(msg: Message, _: FakeFlow) -> list[bytes]:
        if isinstance(msg, Submit) and msg.name == "plan":
            return [codec.encode(Error(id=msg.id, code="rejected", reason="cycle",
                                       detail={**rejection, "kind": "plan"}))]
        if isinstance(msg, Submit):
            return [codec.encode(Error(id=msg.id, code="rejected", reason="violation",
                                       detail=rejection))]
        return [codec.encode(Error(id=msg.id, code="not_found", reason="no such workflow"))]

    flow = fake(script)
    with Client(flow.address, feed=flow.feed, timeout=5) as client:
        with pytest.raises(NotFound):
            client.run("missing").graph()
        with pytest.raises(PromiseViolation) as caught:
            client.submit_diff("wf", "root", {"nodes": []})
        assert (caught.value.promise, caught.value.owner) == ("OnlyNodes(N)", "root")
        with pytest.raises(PlanError):
            client.submit_diff("plan", "root", {"nodes": []})


def test_outcomes_map_to_the_documented_exceptions() -> None:
    failed = WorkflowResult(workflow_id="w", status="failed", error={
        "type": "ValueError", "message": "bad", "node": "n", "attempts": 3})
    error = outcome_error(failed)
    assert isinstance(error, TaskFailed)
    assert (error.node, error.attempts, error.cause) == ("n", 3, "ValueError")
    violated = WorkflowResult(workflow_id="w", status="violated", error={
        "type": "PromiseViolation", "message": "x broke it", "reason": "it", "promise": "P",
        "owner": "o", "proposer": "x"})
    error = outcome_error(violated)
    assert isinstance(error, PromiseViolation)
    assert (error.promise, error.owner, error.proposer) == ("P", "o", "x")
    assert isinstance(outcome_error(WorkflowResult(workflow_id="w", status="cancelled")),
                      WorkflowCancelled)


def test_a_divergence_is_both_task_failed_and_non_determinism() -> None:
    diverged = outcome_error(WorkflowResult(workflow_id="w", status="failed", error={
        "type": "NonDeterminismError", "node": "n", "attempts": 1,
        "message": "n: replay diverged at record seq 0: the history has random() at "
                   "a.py:3, this run calls now() at a.py:5"}))
    assert isinstance(diverged, TaskFailed)
    assert isinstance(diverged, NonDeterminismError)
    assert (diverged.node, diverged.call_site) == ("n", "a.py:5")


def test_controls_and_schedules_send_their_messages(fake: Callable[[Script], FakeFlow]) -> None:
    def script(msg: Message, _: FakeFlow) -> list[bytes]:
        if isinstance(msg, Query):
            return [codec.encode(QueryReply(id=msg.id, workflow_id=msg.workflow_id, state=2,
                                            nodes={"a": 1, "b": 2}))]
        if isinstance(msg, ListSchedules):
            info = ScheduleInfo(name="s", cron="@daily", target="m:t", next_fire=86400.0)
            return [codec.encode(ScheduleList(id=msg.id, schedules=[info]))]
        if isinstance(msg, RestartNode) and msg.node == "busy":
            return [codec.encode(Error(id=msg.id, code="rejected", reason="busy", detail={
                "kind": "plan", "reason": "busy still running", "proposer": None}))]
        if isinstance(msg, PauseWorkflow) and msg.workflow_id == "ended":
            return [codec.encode(Error(id=msg.id, code="rejected", reason="it has ended"))]
        return [codec.encode(Ack(id=msg.id))]

    flow = fake(script)
    with Client(flow.address, feed=flow.feed, timeout=5) as client:
        run = client.run("wf")
        run.pause()
        run.resume()
        run.restart("n")
        run.signal("go", {"x": 1})
        run.set_attrs("n", color="red")
        run.set_attrs(edge=("a", "b"), label="then")
        assert (run.query(), run.query("a"), run.states()) == (2, 1, {"a": 1, "b": 2})
        with pytest.raises(Refused, match="busy"):
            run.restart("busy")
        with pytest.raises(Refused, match="ended"):
            client.run("ended").pause()
        with pytest.raises(ValueError, match="exactly one"):
            run.set_attrs("n", edge=("a", "b"), color="red")
        with pytest.raises(ValueError, match="overlap"):
            client.add_schedule_diff("s", "@daily", "m:t", "t", "t", {}, overlap="often")
        added = client.add_schedule_diff("s", "@daily", "m:t", "t", "t", {"nodes": []},
                                         overlap="queue")
        assert added.next_fire == 86400.0
        client.remove_schedule("s")
    sent = [m for m in flow.seen if not isinstance(m, Query | ListSchedules)]
    assert [type(m).__name__ for m in sent] == [
        "PauseWorkflow", "ResumeWorkflow", "RestartNode", "SendSignal", "SetAttrs", "SetAttrs",
        "RestartNode", "PauseWorkflow", "AddSchedule", "RemoveSchedule"]
    signal = sent[3]
    assert isinstance(signal, SendSignal)
    assert (signal.name, signal.payload) == ("go", {"x": 1})
    attrs = sent[5]
    assert isinstance(attrs, SetAttrs)
    assert attrs.changes == [{"key": "label", "value": "then", "node": None,
                              "edge": ["a", "b"]}]
    schedule = sent[8]
    assert isinstance(schedule, AddSchedule)
    assert (schedule.schedule.overlap, schedule.submit.name) == ("queue", "t")


def test_watch_snapshots_then_fills_a_gap_from_history(
        fake: Callable[[Script], FakeFlow]) -> None:
    wid = "wf-1"
    events: list[dict[str, Any]] = [{"type": "submitted", "name": "wf", "root": "r"},
              {"type": "diff", "diff": {"nodes": []}},
              {"type": "state", "node": "r", "state": "running", "attempt": 1},
              {"type": "state", "node": "r", "state": "succeeded", "attempt": 1},
              {"type": "diff", "diff": {"nodes": []}},
              {"type": "workflow", "status": "succeeded"}]
    stored = [{**e, "seq": i} for i, e in enumerate(events, start=1)]

    # Published after the snapshot, with event 4 lost on the way.
    published = [FeedEvent(workflow_id="wf-10", seq=9, event=events[0]),
                 *(FeedEvent(workflow_id=wid, seq=s, event=stored[s - 1]) for s in (3, 5))]
    got = _watched(fake, wid, stored, published)
    assert got == [(2, "snapshot"), (3, "state"), (4, "state"), (5, "diff"), (6, "workflow")]


def _watched(fake: Callable[[Script], FakeFlow], wid: str, stored: list[dict[str, Any]],
             published: list[FeedEvent]) -> list[tuple[int, str]]:
    """What a watch of ``wid`` yields: a snapshot at seq 2, then ``published`` on the
    feed, and ``stored`` as the history that fills gaps."""
    def script(msg: Message, flow: FakeFlow) -> list[bytes]:
        if isinstance(msg, GetGraph):
            flow.pending = list(published)
            return [codec.encode(GraphReply(id=msg.id, workflow_id=wid, seq=2,
                                            graph={"nodes": [], "edges": []}))]
        if isinstance(msg, GetHistory):
            return [codec.encode(HistoryReply(id=msg.id, workflow_id=wid, events=stored))]
        assert isinstance(msg, GetStatus)
        return [codec.encode(StatusReply(id=msg.id, runs=[_info(wid)]))]

    flow = fake(script)
    with Client(flow.address, feed=flow.feed, timeout=5, poll_interval=0.1) as client:
        return [(e.seq, e.event["type"]) for e in client.watch(wid)]


def test_a_watch_whose_gap_held_the_end_yields_nothing_after_it(
        fake: Callable[[Script], FakeFlow]) -> None:
    """The feed lost 3 to 6: the end (4), an operator's restart (5) and more. The
    watch filled the gap up to the end, then yielded the event that revealed it."""
    wid = "wf-1"
    events: list[dict[str, Any]] = [
        {"type": "submitted", "name": "wf", "root": "r"}, {"type": "diff", "diff": {}},
        {"type": "state", "node": "r", "state": "succeeded", "attempt": 1},
        {"type": "workflow", "status": "succeeded"}, {"type": "restart", "node": "r"},
        {"type": "state", "node": "r", "state": "running", "attempt": 2},
        {"type": "state", "node": "r", "state": "succeeded", "attempt": 2}]
    stored = [{**e, "seq": i} for i, e in enumerate(events, start=1)]

    got = _watched(fake, wid, stored, [FeedEvent(workflow_id=wid, seq=7, event=stored[6])])
    assert got == [(2, "snapshot"), (3, "state"), (4, "workflow")]


def test_a_watch_of_one_workflow_finds_its_lost_end_on_a_feed_busy_with_others(
        fake: Callable[[Script], FakeFlow]) -> None:
    """Topics match by prefix: watching "wf-1" brings "wf-12"'s events too, which
    never let the feed go quiet. The end the feed lost is found from the status
    all the same, while "wf-12" still publishes."""
    wid = "wf-1"
    stored = [{"type": "submitted", "name": "wf", "root": "r", "seq": 1},
              {"type": "diff", "diff": {"nodes": []}, "seq": 2},
              {"type": "workflow", "status": "succeeded", "ts": 5.0, "seq": 3}]
    chatted = itertools.count(1)
    most = 500  # ~10 s of chatter: then the feed goes quiet anyway

    def chatter() -> FeedEvent:
        n = next(chatted)
        return FeedEvent(workflow_id="wf-12" if n < most else "wf-99", seq=n,
                         event=stored[1])

    def script(msg: Message, flow: FakeFlow) -> list[bytes]:
        if isinstance(msg, GetGraph):
            flow.chatter = chatter  # wf-1's end was published before the subscription
            return [codec.encode(GraphReply(id=msg.id, workflow_id=wid, seq=2,
                                            graph={"nodes": [], "edges": []}))]
        if isinstance(msg, GetHistory):
            return [codec.encode(HistoryReply(id=msg.id, workflow_id=wid, events=stored))]
        assert isinstance(msg, GetStatus)
        return [codec.encode(StatusReply(id=msg.id, runs=[RunInfo(
            workflow_id=wid, name="wf", status="succeeded", created=0.0, finished=5.0)]))]

    flow = fake(script)
    with Client(flow.address, feed=flow.feed, timeout=5, poll_interval=0.1) as client:
        got = [(e.seq, e.event["type"]) for e in client.watch(wid)]
    assert got == [(2, "snapshot"), (3, "workflow")]
    assert next(chatted) < most  # found while the other workflow still published


@pytest.mark.parametrize(("restarted", "busy"), [(False, False), (True, False), (False, True)],
                         ids=["first-end", "end-after-restart", "busy-feed"])
def test_watching_every_workflow_fills_a_lost_end_from_history(
        fake: Callable[[Script], FakeFlow], restarted: bool, busy: bool) -> None:
    """The feed lost a workflow's last events, so no later event of it shows the gap:
    the watch finds the end from the status, on a quiet feed or a busy one (another
    workflow publishing all the time). Also when the workflow had ended before (its
    end delivered) and was restarted."""
    wid = "wf-1"
    events: list[dict[str, Any]] = [{"type": "submitted", "name": "wf", "root": "r"},
                                    {"type": "diff", "diff": {"nodes": []}},
                                    {"type": "state", "node": "r", "state": "running",
                                     "attempt": 1},
                                    {"type": "workflow", "status": "succeeded", "ts": 10.0},
                                    {"type": "restart", "node": "r"},
                                    {"type": "workflow", "status": "succeeded", "ts": 20.0}]
    stored = [{**e, "seq": i} for i, e in enumerate(events, start=1)]
    published = 4 if restarted else 3  # what the feed brings; the rest is lost
    asked: list[GetStatus] = []
    other = iter(range(1, 1_000_000))

    def script(msg: Message, flow: FakeFlow) -> list[bytes]:
        if isinstance(msg, GetGraph):
            flow.pending = [FeedEvent(workflow_id=wid, seq=s, event=stored[s - 1])
                            for s in range(3, published + 1)]
            if busy:
                flow.chatter = lambda: FeedEvent(workflow_id="wf-2", seq=next(other),
                                                 event=events[1])
            return [codec.encode(GraphReply(id=msg.id, workflow_id=wid, seq=2,
                                            graph={"nodes": [], "edges": []}))]
        if isinstance(msg, GetHistory):
            return [codec.encode(HistoryReply(id=msg.id, workflow_id=wid, events=stored))]
        assert isinstance(msg, GetStatus)
        asked.append(msg)
        if len(asked) > 50:  # bounded: a watch that never finds the end fails here
            return [codec.encode(Error(id=msg.id, code="invalid", reason="gave up"))]
        if len(asked) == 1:
            runs = [_info(wid)]
        else:
            runs = [RunInfo(workflow_id=wid, name="wf", status="succeeded", created=0.0,
                            finished=20.0)]
            if msg.ended_since is None:
                runs.append(_info("wf-2"))
        return [codec.encode(StatusReply(id=msg.id, runs=runs))]

    flow = fake(script)
    got = []
    with Client(flow.address, feed=flow.feed, timeout=5, poll_interval=0.2) as client, \
            client.watch() as watch:
        deadline = time.monotonic() + 10  # a busy feed never lets the fake give up
        for event in watch:
            if event.workflow_id == wid:
                got.append((event.seq, event.event["type"]))
            if got[-1:] == [(6, "workflow")] or time.monotonic() > deadline:
                break
    assert got == [(2, "snapshot"), (3, "state"), (4, "workflow"), (5, "restart"),
                   (6, "workflow")]
    # Only the first asks for every workflow (the snapshot); the looks for lost ends
    # ask for the recent ends, quiet feed or busy.
    assert asked[0].ended_since is None
    assert len(asked) > 1
    assert all(m.ended_since is not None for m in asked[1:])


def test_watching_every_workflow_shows_one_begun_and_ended_out_of_the_feeds_sight(
        fake: Callable[[Script], FakeFlow]) -> None:
    """A workflow created after the watch listed every workflow, and over before
    its subscription took hold: the feed brings none of it, and the watch shows it
    from its history, whole. One that had ended before the listing is not shown."""
    stored = [{"type": "submitted", "name": "wf", "root": "r", "seq": 1, "ts": 7.0},
              {"type": "diff", "diff": {"nodes": []}, "seq": 2, "ts": 7.0},
              {"type": "workflow", "status": "succeeded", "ts": 8.0, "seq": 3}]
    old = RunInfo(workflow_id="wf-old", name="wf", status="succeeded", created=1.0,
                  finished=5.0)
    new = RunInfo(workflow_id="wf-new", name="wf", status="succeeded", created=7.0,
                  finished=8.0)
    histories: list[str] = []

    def script(msg: Message, _: FakeFlow) -> list[bytes]:
        if isinstance(msg, GetHistory):
            histories.append(msg.workflow_id)
            return [codec.encode(HistoryReply(id=msg.id, workflow_id=msg.workflow_id,
                                              events=stored))]
        assert isinstance(msg, GetStatus)
        runs = [old] if msg.ended_since is None else [old, new]
        return [codec.encode(StatusReply(id=msg.id, runs=runs))]

    flow = fake(script)
    got = []
    with Client(flow.address, feed=flow.feed, timeout=5, poll_interval=0.1) as client, \
            client.watch() as watch:
        bound = threading.Timer(10, watch.close)  # a watch that shows nothing ends here
        bound.start()
        for event in watch:
            got.append((event.workflow_id, event.seq, event.event["type"]))
            if event.event["type"] == "workflow":
                break
        bound.cancel()
    assert got == [("wf-new", 1, "submitted"), ("wf-new", 2, "diff"),
                   ("wf-new", 3, "workflow")]
    assert histories == ["wf-new"]


def _running_quietly(msg: Message, _: FakeFlow) -> list[bytes]:
    """A Flow where wf-1 runs and nothing happens: a snapshot, then "running"."""
    if isinstance(msg, GetGraph):
        return [codec.encode(GraphReply(id=msg.id, workflow_id="wf-1", seq=1,
                                        graph={"nodes": [], "edges": []}))]
    assert isinstance(msg, GetStatus)
    return [codec.encode(StatusReply(id=msg.id, runs=[_info("wf-1")]))]


def test_a_watch_closed_from_another_thread_ends_its_loop(
        fake: Callable[[Script], FakeFlow]) -> None:
    """The iterating thread waits on a quiet feed; a close() from elsewhere wakes it
    and its loop ends at once, not after a poll interval, and nothing raises."""
    flow = fake(_running_quietly)
    failures: list[BaseException] = []

    def close_soon(watch: Any, seen: threading.Event) -> None:
        seen.wait(10)
        try:
            watch.close()
        except ValueError as exc:  # "generator already executing": reported, not lost
            failures.append(exc)
            # and the watch ends anyway, with the workflow: the test stays bounded
            flow.pending = [FeedEvent(workflow_id="wf-1", seq=2,
                                      event={"type": "workflow", "status": "succeeded"})]

    with Client(flow.address, feed=flow.feed, timeout=5, poll_interval=3) as client:
        watch = client.watch("wf-1")
        seen = threading.Event()
        closer = threading.Thread(target=close_soon, args=(watch, seen))
        closer.start()
        started = time.monotonic()
        got = []
        for event in watch:
            got.append(event.event["type"])
            seen.set()  # the closer closes while this loop waits for the next event
        took = time.monotonic() - started
        closer.join(10)
        watch.close()
    assert (got, failures) == (["snapshot"], [])
    assert took < 2.5  # woken, not after the 3 s poll interval


def test_closing_the_client_from_another_thread_ends_a_watch_iterated_there(
        fake: Callable[[Script], FakeFlow]) -> None:
    """Client.close() closes its watches: one being iterated in another thread is
    woken and ends there (its thread closes its sockets), with nothing raised."""
    flow = fake(_running_quietly)
    client = Client(flow.address, feed=flow.feed, timeout=5, poll_interval=3)
    watch = client.watch("wf-1")
    seen, ended = threading.Event(), threading.Event()
    outcome: list[Any] = []

    def iterate() -> None:
        try:
            for event in watch:
                outcome.append(event.event["type"])
                seen.set()
        except BaseException as exc:  # noqa: BLE001 - what the test reports
            outcome.append(exc)
        ended.set()

    thread = threading.Thread(target=iterate)
    thread.start()
    assert seen.wait(10)
    client.close()
    assert ended.wait(10)
    thread.join(10)
    assert outcome == ["snapshot"]
    assert watch.closed.is_set()


# --- against a real cluster ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with e2e.cluster(["e2e_tasks", "examples.broken_promise"], workers=2) as c:
        yield c


def test_submit_result_status_graph_history(cluster: Cluster, tmp_path: Path) -> None:
    client = cluster.client
    run = client.submit(e2e_tasks.record, str(tmp_path / "log"), "one")
    assert run.result(timeout=e2e.RESULT_TIMEOUT) == "one"
    assert run.status() == "succeeded"
    assert run.id in {r.workflow_id for r in client.runs()}
    (ended,) = [r for r in client.runs(ended_since=0.0) if r.workflow_id == run.id]
    assert ended.finished is not None
    assert run.id in {r.workflow_id for r in client.runs(ended_since=ended.finished)}
    assert run.id not in {r.workflow_id for r in client.runs(ended_since=ended.finished + 1)}
    nodes, _ = e2e.committed(run.graph())
    assert nodes == {"record": ("record", "succeeded", None)}
    history = run.history()
    assert history[0]["type"] == "submitted"
    assert history[-1]["type"] == "workflow"
    assert [e["seq"] for e in history] == list(range(1, len(history) + 1))
    by_name = client.submit("e2e_tasks:square", 7)
    assert by_name.result(timeout=e2e.RESULT_TIMEOUT) == 49


def test_failures_raise_task_failed(cluster: Cluster) -> None:
    run = cluster.client.submit("e2e_tasks:boom", "no good")
    with pytest.raises(TaskFailed, match="no good") as caught:
        run.result(timeout=e2e.RESULT_TIMEOUT)
    assert caught.value.cause == "ValueError"
    assert run.status() == "failed"


def test_violations_raise_promise_violation(cluster: Cluster, tmp_path: Path) -> None:
    for target, args in [("examples.broken_promise:liar", ()),
                         ("e2e_tasks:sneaky", (str(tmp_path / "log"),))]:
        run = cluster.client.submit(target, *args)
        with pytest.raises(PromiseViolation) as caught:
            run.result(timeout=e2e.RESULT_TIMEOUT)
        assert "OnlyNodes" in caught.value.promise
        assert caught.value.owner == target.split(":")[1]
        assert caught.value.proposer == caught.value.owner
        assert run.status() == "violated"


def test_cancel_and_result_timeout(cluster: Cluster, tmp_path: Path) -> None:
    log, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    run = cluster.client.submit("e2e_tasks:gated", log, gate, "slow")
    wait_for(lambda: e2e_tasks.lines(log, "start"), e2e.RESULT_TIMEOUT)
    with pytest.raises(ResultTimeout):
        run.result(timeout=0.3)
    run.cancel()
    with pytest.raises(WorkflowCancelled):
        run.result(timeout=e2e.RESULT_TIMEOUT)
    assert run.status() == "cancelled"


def test_unknown_workflows_are_not_found(cluster: Cluster) -> None:
    run = cluster.client.run("no-such-workflow")
    for call in (run.status, run.graph, run.history, run.cancel):
        with pytest.raises(NotFound):
            call()


def test_watch_one_workflow_from_snapshot_to_end(cluster: Cluster, tmp_path: Path) -> None:
    log, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    run = cluster.client.submit("e2e_tasks:chain", log, gate)
    with cluster.new_client() as watcher:
        feed = watcher.watch(run.id)
        first = next(feed)
        assert first.event["type"] == "snapshot"
        Path(gate).touch()
        rest = list(feed)
    seqs = [first.seq] + [e.seq for e in rest]
    assert seqs == list(range(first.seq, first.seq + len(seqs)))
    assert rest[-1].event == {**rest[-1].event, "type": "workflow", "status": "succeeded"}
    assert run.result(timeout=e2e.RESULT_TIMEOUT) == ["a", "b", "c"]



def test_watch_every_workflow(cluster: Cluster, tmp_path: Path) -> None:
    log, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    run = cluster.client.submit("e2e_tasks:gated", log, gate, "watched")
    wait_for(lambda: e2e_tasks.lines(log, "start"), e2e.RESULT_TIMEOUT)
    seen: list[FeedEvent] = []
    with cluster.new_client() as watcher, watcher.watch() as feed:
        for event in feed:
            if event.workflow_id != run.id:
                continue
            seen.append(event)
            if event.event["type"] == "snapshot":
                Path(gate).touch()  # what happens next must reach the watcher
            if event.event["type"] == "workflow":
                break
    assert seen[0].event["type"] == "snapshot"
    assert seen[-1].event["status"] == "succeeded"
    assert [e.seq for e in seen] == list(range(seen[0].seq, seen[-1].seq + 1))


@pytest.mark.parametrize(("address", "feed"), [
    ("tcp://127.0.0.1:7100", "tcp://127.0.0.1:7101"),
    ("tcp://flow.example.com:9000", "tcp://flow.example.com:9001"),
    ("tcp://[::1]:7100", "tcp://[::1]:7101"),
    ("tcp://[fe80::1%25eth0]:7100", "tcp://[fe80::1%25eth0]:7101"),
])
def test_the_feed_is_on_the_next_port(address: str, feed: str) -> None:
    assert feed_address(address) == feed


@pytest.mark.parametrize("address", ["ipc:///tmp/flow", "tcp://127.0.0.1", "tcp://:7100",
                                     "tcp://host:port"])
def test_a_feed_that_cannot_be_derived_is_a_clear_error(address: str) -> None:
    with pytest.raises(ValueError, match="pass feed="):
        feed_address(address)


def test_addresses_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAIT_FLOW", "tcp://10.0.0.1:9000")
    monkeypatch.delenv("PLAIT_FEED", raising=False)
    with Client() as client:
        assert (client.address, client.feed) == ("tcp://10.0.0.1:9000", "tcp://10.0.0.1:9001")
    monkeypatch.delenv("PLAIT_FLOW")
    with Client() as client:
        assert client.address == "tcp://127.0.0.1:7100"
    # $PLAIT_FEED is the feed of $PLAIT_FLOW's Flow: not of a Flow named explicitly.
    monkeypatch.setenv("PLAIT_FEED", "tcp://10.0.0.1:9001")
    with Client() as client:
        assert client.feed == "tcp://10.0.0.1:9001"
    with Client("tcp://10.0.0.2:7200") as client:
        assert client.feed == "tcp://10.0.0.2:7201"
    monkeypatch.setenv("PLAIT_FLOW", "tcp://10.0.0.1:9000")
    monkeypatch.setenv("PLAIT_FEED", "tcp://10.0.0.1:9999")  # a feed port of its own
    with Client("tcp://10.0.0.1:9000") as client:  # the same Flow, named again
        assert client.feed == "tcp://10.0.0.1:9999"


def test_a_submit_whose_reply_is_lost_is_sent_again_with_the_same_id(
        fake: Callable[[Script], FakeFlow]) -> None:
    """The first Submit started the workflow but its reply never came: the retry
    (the same request) is told the id is taken, and the workflow's first event names
    that request, so it is this client's workflow. An id another Submit took before
    (the first Submit was lost on its way) stays an error. Nothing starts twice."""
    started = {"old": "somebody-else"}  # workflow id -> the Submit that started it
    unanswered = {"once", "old"}  # the first Submit of each gets no reply
    uncommitted = {"once"}  # its first history read comes before its first commit

    def script(msg: Message, _: FakeFlow) -> list[bytes]:
        if isinstance(msg, GetHistory):
            assert msg.upto == 1
            if msg.workflow_id in uncommitted:
                uncommitted.discard(msg.workflow_id)
                return [codec.encode(Error(id=msg.id, code="not_found",
                                           reason=f"no workflow {msg.workflow_id!r}"))]
            first = {"type": "submitted", "name": "wf", "root": "a",
                     "request": started[msg.workflow_id], "seq": 1, "ts": 0.0}
            return [codec.encode(HistoryReply(id=msg.id, workflow_id=msg.workflow_id,
                                              events=[first]))]
        assert isinstance(msg, Submit)
        wid = str(msg.workflow_id)
        if wid in unanswered:
            unanswered.discard(wid)
            started.setdefault(wid, msg.id)  # "once" starts (its reply is lost); "old" was taken
            return []
        return [codec.encode(Error(id=msg.id, code="invalid",
                                   reason=f"workflow id {wid!r} is taken"))]

    flow = fake(script)
    with Client(flow.address, feed=flow.feed, timeout=0.5) as client:
        run = client.submit_diff("wf", "a", {}, workflow_id="once")
        assert run.id == "once"
        with pytest.raises(FlowError, match="'old' is taken"):
            client.submit_diff("wf", "a", {}, workflow_id="old")
    submits = [m for m in flow.seen if isinstance(m, Submit)]
    # "once": sent again as it was, and once more while its history was not found
    assert [m.workflow_id for m in submits] == ["once", "once", "once", "old", "old"]
    assert submits[0].id == submits[1].id == submits[2].id
    assert not uncommitted  # "once" was looked up again once it was committed


def test_a_retried_submit_whose_first_is_refused_late_gets_the_refusal(
        fake: Callable[[Script], FakeFlow]) -> None:
    """The first Submit reached Flow late: its id was taken when the retry came,
    then given back when the registration was refused. The retry, sent again while
    no history is found, gets the refusal itself (a plan error, not "Flow
    unreachable")."""
    given_back = threading.Event()
    submits: list[Submit] = []

    def script(msg: Message, _: FakeFlow) -> list[bytes]:
        if isinstance(msg, GetHistory):
            given_back.set()  # by now the keeper has refused the first one
            return [codec.encode(Error(id=msg.id, code="not_found",
                                       reason=f"no workflow {msg.workflow_id!r}"))]
        assert isinstance(msg, Submit)
        submits.append(msg)
        if len(submits) == 1:
            return []  # late: the client gives up on it
        if not given_back.is_set():
            return [codec.encode(Error(id=msg.id, code="invalid",
                                       reason=f"workflow id {msg.workflow_id!r} is taken"))]
        return [codec.encode(Error(id=msg.id, code="rejected", reason="a cycle: a -> a",
                                   detail={"kind": "plan", "reason": "a cycle: a -> a"}))]

    flow = fake(script)
    with Client(flow.address, feed=flow.feed, timeout=0.5) as client, \
            pytest.raises(PlanError, match="a cycle"):
        client.submit_diff("wf", "a", {}, workflow_id="late")
    assert len(submits) == 3
    assert len({m.id for m in submits}) == 1


def test_a_submit_retried_only_after_a_timeout(fake: Callable[[Script], FakeFlow]) -> None:
    def script(msg: Message, flow: FakeFlow) -> list[bytes]:
        assert isinstance(msg, Submit)
        if msg.name == "lost":
            return []
        if msg.name == "late" and len(flow.seen) == 1:
            return []
        if msg.name == "late":
            return [codec.encode(Submitted(id=msg.id, workflow_id=str(msg.workflow_id)))]
        return [codec.encode(Error(id=msg.id, code="invalid",
                                   reason=f"workflow id {msg.workflow_id!r} is taken"))]

    flow = fake(script)
    with Client(flow.address, feed=flow.feed, timeout=0.5) as client:
        assert client.submit_diff("late", "a", {}).id.startswith("late-")
        with pytest.raises(FlowError, match="is taken"):  # not after a reply: raised
            client.submit_diff("taken", "a", {}, workflow_id="mine")
        with pytest.raises(FlowUnavailable):
            client.submit_diff("lost", "a", {})
    names = [m.name for m in flow.seen if isinstance(m, Submit)]
    assert names == ["late", "late", "taken", "lost", "lost"]


def test_result_keeps_to_its_timeout_when_flow_stalls(
        fake: Callable[[Script], FakeFlow]) -> None:
    """Each status request inside took the client's whole timeout: a stalled Flow
    held result(timeout=0.5) for 3.5 s, which then raised FlowUnavailable."""
    flow = fake(lambda msg, _: [])  # answers nothing
    with Client(flow.address, feed=flow.feed, timeout=3, poll_interval=0.2) as client:
        started = time.monotonic()
        with pytest.raises(ResultTimeout):
            client.run("wf-1").result(timeout=0.5)
        # Its 0.5 s and the last look's 0.5 s, well under the client's 3 s per request.
        assert time.monotonic() - started < 2.5


def test_a_wait_given_up_is_forgotten_and_timeout_zero_reads_an_ended_result(
        fake: Callable[[Script], FakeFlow]) -> None:
    """A loop of short ``result(timeout=...)`` calls leaves no asks behind whose
    late answers the client would keep for nobody; ``timeout=0`` on a workflow that
    has ended returns its result instead of timing out."""
    ended = threading.Event()
    asks: list[str] = []

    def script(msg: Message, flow: FakeFlow) -> list[bytes]:
        status = "succeeded" if ended.is_set() else "running"
        if isinstance(msg, GetStatus):
            return [codec.encode(StatusReply(id=msg.id, runs=[_info("wf-1", status)]))]
        if isinstance(msg, AwaitResult):
            asks.append(msg.id)
            if not ended.is_set():
                return []  # held until the end, as a keeper holds it
            return [codec.encode(WorkflowResult(id=ask, workflow_id="wf-1", status=status,
                                                output=42)) for ask in asks]
        return []

    flow = fake(script)
    with Client(flow.address, timeout=5.0, poll_interval=0.05) as client:
        for _ in range(3):
            with pytest.raises(ResultTimeout):
                client.await_result("wf-1", timeout=0.1)
        assert not client._wanted
        ended.set()
        assert client.await_result("wf-1", timeout=0).output == 42
        assert len(asks) >= 4  # the earlier asks were answered too, late
        assert client.runs()[0].status == "succeeded"
        assert not client._stash
        assert not client._wanted


def test_a_reply_over_the_request_limit_is_read_and_an_unreadable_one_is_an_error(
        fake: Callable[[Script], FakeFlow]) -> None:
    """Flow bounds what it accepts, not what it answers: a history over 16 MiB is
    read. A reply in another protocol version fails the request saying so, at once,
    instead of passing for a Flow that does not answer."""
    pad = "x" * (codec.DEFAULT_MAX_SIZE + 1024)

    def script(msg: Message, flow: FakeFlow) -> list[bytes]:
        if isinstance(msg, GetHistory):
            return [codec.encode(HistoryReply(id=msg.id, workflow_id=msg.workflow_id,
                                              events=[{"type": "note", "pad": pad}]))]
        return [codec.pack({"v": 99, "type": "status_reply", "id": msg.id, "runs": []})]

    flow = fake(script)
    with Client(flow.address, timeout=5.0) as client:
        events = client.history("wf-1")
        assert [len(e["pad"]) for e in events] == [len(pad)]
        started = time.monotonic()
        with pytest.raises(ProtocolError, match="could not be read: protocol version 99"):
            client.runs()
        assert time.monotonic() - started < 4.0  # not the request's timeout


def test_a_request_over_the_message_limit_is_refused_before_it_is_sent(
        fake: Callable[[Script], FakeFlow]) -> None:
    flow = fake(lambda msg, flow: [])
    with Client(flow.address, timeout=5.0, max_message_size=4096) as client:
        started = time.monotonic()
        with pytest.raises(ProtocolError, match=r"Submit of .* exceeds the 4,096-byte"):
            client.submit_diff("big", "big", {"nodes": [{"id": "big", "pad": "x" * 5000}]})
        assert time.monotonic() - started < 4.0
        assert not client._wanted
    assert flow.seen == []


def test_a_workflow_being_restored_is_waited_for_not_an_error(
        fake: Callable[[Script], FakeFlow]) -> None:
    """Flow answers ``unavailable`` while it restores a workflow: ``result()`` asks
    again later rather than failing, and other calls raise FlowUnavailable (worth
    a retry), not a generic FlowError."""
    def script(msg: Message, flow: FakeFlow) -> list[bytes]:
        if isinstance(msg, GetStatus):
            return [codec.encode(StatusReply(id=msg.id, runs=[_info("w")]))]
        assert isinstance(msg, AwaitResult)
        if sum(isinstance(m, AwaitResult) for m in flow.seen) < 3:
            return [codec.encode(Error(id=msg.id, code="unavailable",
                                       reason="workflow 'w' is being restored; retry"))]
        return [codec.encode(WorkflowResult(id=msg.id, workflow_id="w", status="succeeded",
                                            output=7))]

    flow = fake(script)
    with Client(flow.address, feed=flow.feed, timeout=2.0, poll_interval=0.05) as client:
        assert client.run("w").result(timeout=10) == 7
    assert sum(isinstance(m, AwaitResult) for m in flow.seen) == 3
    assert isinstance(error_from_reply(Error(code="unavailable", reason="stopping")),
                      FlowUnavailable)
