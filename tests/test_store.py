"""The Store: events and projection in one transaction, group commit, nothing
sent before it is committed, and the streams Flow rebuilds from at start."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import pykka
import pytest
import zmq
from flowkit import diff, spec

from plait.actors import publisher as publisher_module
from plait.actors.history import WorkflowState, state_event
from plait.actors.mail import CacheEntry, Publish, ScheduleChange, StoredEvent, Write
from plait.actors.publisher import Audience, Publisher
from plait.actors.store import Database, Store, load
from plait.protocol.diff import NodeState
from plait.testing import wait_for

WF = "wf-1"


def told(ref: pykka.ActorRef[Any], message: Any) -> bool:
    """Tell ``ref``, and say so: one step of a condition that ``wait_for`` polls."""
    ref.tell(message)
    return True


def stream(wf: str = WF, end: bool = True) -> list[StoredEvent]:
    events: list[dict[str, Any]] = [
        {"type": "submitted", "name": "wf", "root": "a"},
        {"type": "diff", "diff": diff(spec("a"), spec("b"), edges=[("a", "b")])},
        state_event("a", NodeState.RUNNING, 1, supervisor="s"),
        state_event("a", NodeState.SUCCEEDED, 1, output={"x": [1, 2]}),
    ]
    if end:
        events.append({"type": "workflow", "status": "succeeded", "output": {"x": [1, 2]}})
    counts = [0, 2, 2, 2, 2]  # the plan's nodes after each event
    return [StoredEvent(wf, i + 1, 1000.0 + i, e, counts[i]) for i, e in enumerate(events)]


@pytest.fixture
def db(tmp_path: Any) -> Iterator[Database]:
    database = Database(str(tmp_path / "flow.db"))
    yield database
    database.close()


def test_durable_settings(db: Database) -> None:
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_events_and_projection_in_one_transaction(db: Database) -> None:
    db.append(stream())
    assert [seq for seq, _, _ in db.events(WF)] == [1, 2, 3, 4, 5]
    assert db.events(WF, upto=2)[-1][2]["type"] == "diff"
    (run,) = db.runs(WF)
    assert (run.name, run.status, run.nodes, run.created, run.finished) == (
        "wf", "succeeded", 2, 1000.0, 1004.0)
    assert db.result(WF) == ("succeeded", {"x": [1, 2]}, None)


def test_a_failed_batch_leaves_nothing_behind(db: Database) -> None:
    db.append(stream(end=False)[:2])
    batch = [StoredEvent("wf-2", 1, 1.0, {"type": "submitted", "name": "n", "root": "r"}),
             StoredEvent(WF, 2, 1.0, {"type": "workflow", "status": "failed"})]  # seq taken
    with pytest.raises(sqlite3.IntegrityError):
        db.append(batch)
    assert db.runs("wf-2") == []
    assert db.result(WF) == ("running", None, None)


def test_load_returns_unfinished_streams_that_rebuild(tmp_path: Any, db: Database) -> None:
    db.append(stream("done"))
    db.append(stream("live", end=False))
    db.append([], tasks=[{"name": "a", "timeout": 5.0}])
    db.append([], tasks=[{"name": "a", "timeout": 7.0}, {"name": "b"}])  # the last word
    known, streams, schedules, tasks = load(str(tmp_path / "flow.db"))
    assert schedules == []
    assert tasks == [{"name": "a", "timeout": 7.0}, {"name": "b"}]
    assert known == {"done", "live"}
    assert [wf for wf, _ in streams] == ["live"]
    state = WorkflowState.rebuild("live", streams[0][1])
    assert state.seq == 4
    assert state.status == "running"
    assert state.plan.nodes["a"].output == {"x": [1, 2]}
    assert state.plan.nodes["b"].state is NodeState.READY  # the plan released it itself
    assert state.supervisor == {"a": "s"}


class Recorder(pykka.ThreadingActor):
    """Stands in for the Publisher."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[StoredEvent] = []

    def on_receive(self, message: Any) -> Any:
        assert isinstance(message, Publish)
        self.published.extend(message.events)

    def seen(self) -> int:
        return len(self.published)


class Running(NamedTuple):
    store: pykka.ActorRef[Any]
    pull: zmq.Socket[bytes]  # where the Gateway would get the Store's frames
    publisher: pykka.ActorRef[Any]  # a Recorder
    fatal: list[BaseException]


@contextmanager
def running_store(tmp_path: Any, subscribed: bool = True) -> Iterator[Running]:
    """A Store on its own database with a Recorder for its Publisher; stops both."""
    zctx: zmq.Context[Any] = zmq.Context()
    pull = zctx.socket(zmq.PULL)
    pull.bind("inproc://store-test")
    publisher = Recorder.start()
    fatal: list[BaseException] = []
    store = Store.start(str(tmp_path / "flow.db"), zctx, "inproc://store-test", publisher,
                        lambda: subscribed, fatal.append)
    try:
        yield Running(store, pull, publisher, fatal)
    finally:
        store.stop(block=True, timeout=10)
        publisher.stop(block=True, timeout=10)
        pull.close(linger=0)
        zctx.term()


@pytest.mark.parametrize("subscribed", [True, False])
def test_group_commit_sends_only_what_is_committed(tmp_path: Any, subscribed: bool) -> None:
    gate = threading.Event()
    with running_store(tmp_path, subscribed) as (store, pull, publisher, fatal):
        reader = sqlite3.connect(str(tmp_path / "flow.db"))
        try:
            def hold() -> None:  # keeps the Store's thread busy while writes pile up
                gate.wait(10)

            store.tell(Write(then=hold))
            first = stream(end=False)[0]
            store.tell(Write([first], [(b"peer", b"submitted")]))
            for i in range(2, 302):
                event = {"type": "rejected", "rejection": {}, "n": i}
                store.tell(Write([StoredEvent(WF, i, 0.0, event)],
                                 [(b"peer", str(i).encode())]))
            gate.set()
            frames: list[list[bytes]] = []
            while len(frames) < 301:  # (identity, frame) pairs, a commit's in one message
                assert pull.poll(10_000)
                parts = pull.recv_multipart()
                frames += [parts[i:i + 2] for i in range(0, len(parts), 2)]
                count = reader.execute("SELECT count(*) FROM events").fetchone()[0]
                assert count == 301  # every frame left after the one commit that holds it
            assert len(frames) == 301
            assert frames[0] == [b"peer", b"submitted"]
            assert [int(f[1]) for f in frames[1:]] == list(range(2, 302))
            assert store.proxy().commits.get(timeout=10) == 1  # 301 writes, one transaction
            done = threading.Event()
            # Runs after the Store told the Publisher, if it did.
            store.tell(Write(then=done.set))
            assert done.wait(10)
            # Told only if somebody subscribes to the feed: else its thread is not even woken.
            assert publisher.proxy().seen().get(timeout=10) == (301 if subscribed else 0)
            assert not fatal
        finally:
            gate.set()
            reader.close()


def test_a_commit_that_fails_stops_flow_and_sends_nothing(tmp_path: Any) -> None:
    with running_store(tmp_path) as (store, pull, _, fatal):
        event = stream(end=False)[0]
        store.tell(Write([event], [(b"p", b"one")]))
        assert pull.poll(10_000)
        assert pull.recv_multipart() == [b"p", b"one"]
        store.tell(Write([event], [(b"p", b"two")]))  # the same (wf, seq) again
        wait_for(lambda: fatal, message="the fatal callback")
        assert isinstance(fatal[0], sqlite3.IntegrityError)
        store.tell(Write([], [(b"p", b"three")]))  # after a failure nothing leaves
        assert not pull.poll(200)


def test_the_audience_tells_the_store_when_the_feed_may_have_a_subscriber() -> None:
    zctx: zmq.Context[Any] = zmq.Context()
    publisher = Publisher.start(zctx, "tcp://127.0.0.1:*")
    endpoint = publisher.proxy().bound().get(timeout=10)
    audience = publisher.proxy().audience.get(timeout=10)
    event = stream(end=False)[0]

    def subscribe() -> zmq.Socket[bytes]:
        sub = zctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, WF.encode())
        sub.connect(endpoint)
        # The connection, then the subscription, reached the socket; the Publisher,
        # told nothing, has not read them, but the Store knows to tell it.
        wait_for(audience.maybe, message="news on the feed's socket")
        # Told (as the Store would be, of each commit) until the subscription is read.
        wait_for(lambda: told(publisher, Publish([event])) and sub.poll(50),
                 message="the event, once the subscription was read")
        topic, _ = sub.recv_multipart()
        assert topic == WF.encode()
        assert audience.listening.is_set()
        return sub

    def unsubscribe(sub: zmq.Socket[bytes]) -> None:
        sub.close(linger=0)
        wait_for(lambda: told(publisher, Publish([])) and not audience.listening.is_set(),
                 message="the subscriber leaving")
        # Once the Publisher has read what the socket had (the leaving included).
        wait_for(lambda: told(publisher, Publish([])) and not audience.maybe(),
                 message="the socket's news read")

    try:
        assert not audience.maybe()  # nobody yet: the Store tells the Publisher nothing
        unsubscribe(subscribe())
        # The descriptor, quiet again, shows the next subscriber's news too.
        unsubscribe(subscribe())
    finally:
        publisher.stop(block=True, timeout=10)
        zctx.term()


def test_the_publisher_says_it_listens_before_it_reads_the_socket(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The Store asks the Event, then the descriptor, then the Event again: the
    Publisher must set the Event before its first call on the socket resets the
    descriptor, or a commit between the two sees neither."""
    zctx: zmq.Context[Any] = zmq.Context()
    seen: list[bool] = []
    audiences: list[Audience] = []  # the Publisher's, once started
    real = publisher_module.waiting

    def waiting(sock: zmq.Socket[Any]) -> bool:
        if audiences:  # not the drain at start, before the Audience could be asked
            seen.append(audiences[0].listening.is_set())
        return real(sock)

    monkeypatch.setattr(publisher_module, "waiting", waiting)
    publisher = Publisher.start(zctx, "tcp://127.0.0.1:*")
    audience = publisher.proxy().audience.get(timeout=10)
    audiences.append(audience)
    try:
        publisher.tell(Publish([]))
        assert publisher.proxy().sent.get(timeout=10) == 0  # the tell was handled
        assert seen
        assert all(seen)
        assert not audience.listening.is_set()  # nobody subscribed: cleared after the drain
    finally:
        publisher.stop(block=True, timeout=10)
        zctx.term()


def test_a_store_whose_publisher_has_stopped_commits_and_answers_on(tmp_path: Any) -> None:
    with running_store(tmp_path) as (store, pull, publisher, fatal):
        publisher.stop(block=True, timeout=10)
        for i, event in enumerate(stream(end=False)[:2]):
            done = threading.Event()
            store.tell(Write([event], [(b"p", str(i).encode())], then=done.set))
            assert pull.poll(10_000)
            assert pull.recv_multipart() == [b"p", str(i).encode()]
            assert done.wait(10)  # the callbacks after the feed still run
        assert store.proxy().commits.get(timeout=10) == 2
        assert not fatal


def test_a_failed_publisher_closes_its_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    zctx: zmq.Context[Any] = zmq.Context()
    publisher = Publisher.start(zctx, "tcp://127.0.0.1:*")
    endpoint = publisher.proxy().bound().get(timeout=10)
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, WF.encode())
    sub.connect(endpoint)

    def broken(*_: Any, **__: Any) -> bytes:
        raise RuntimeError("cannot pack")

    monkeypatch.setattr(publisher_module, "pack", broken)
    event = stream(end=False)[0]
    wait_for(lambda: not publisher.is_alive() or not told(publisher, Publish([event])),
             message="the Publisher failing once it packs")
    sub.close(linger=0)
    # Its socket closed, the context terminates; an open one would block term().
    ended = threading.Thread(target=zctx.term, daemon=True)
    ended.start()
    ended.join(10)
    assert not ended.is_alive()


def test_schedules_and_cache_entries_commit_with_events(db: Database) -> None:
    entry = CacheEntry("k1", "square", "1", {"out": 9}, WF, "a", 5.0)
    db.append(stream(end=False), [ScheduleChange("nightly", {"info": {"name": "nightly"}})],
              [entry])
    assert db.schedules() == [{"info": {"name": "nightly"}}]
    assert db.cached("k1") == (True, {"out": 9})
    assert db.cached("k2") == (False, None)
    db.append([], [ScheduleChange("nightly", None)],
              [entry._replace(output="later")])  # the first result under a key stays
    assert db.schedules() == []
    assert db.cached("k1") == (True, {"out": 9})


def test_projection_of_pause_resume_and_restart(db: Database) -> None:
    events = stream(end=False)
    db.append(events)
    more = [{"type": "paused"}, {"type": "restart", "node": "a"}]
    db.append([StoredEvent(WF, len(events) + i + 1, 9.0, e) for i, e in enumerate(more)])
    assert db.runs(WF)[0].status == "paused"  # a restart of a live workflow keeps it paused
    end: list[dict[str, Any]] = [
        {"type": "resumed"}, {"type": "workflow", "status": "succeeded", "output": 1},
        {"type": "restart", "node": "a"}]
    db.append([StoredEvent(WF, len(events) + 3 + i, 9.0, e) for i, e in enumerate(end)])
    (run,) = db.runs(WF)
    assert (run.status, run.finished) == ("running", None)  # ended, restarted: runs again
    assert db.result(WF) == ("running", None, None)


def test_runs_that_ended_since_a_time(db: Database) -> None:
    """What the all-workflows watch asks while the feed is busy: the workflows that
    ended at or after a time on Flow's clock, not every workflow."""
    db.append(stream("early"))  # ends at 1004.0
    db.append([StoredEvent("late", e.seq, e.ts + 100.0, e.event) for e in stream("late")])
    db.append(stream("running", end=False))
    assert [r.workflow_id for r in db.runs(ended_since=1004.0)] == ["early", "late"]
    assert [r.workflow_id for r in db.runs(ended_since=1004.5)] == ["late"]
    assert [r.workflow_id for r in db.runs(ended_since=2000.0)] == []
    assert len(db.runs()) == 3
