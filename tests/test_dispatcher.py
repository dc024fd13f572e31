"""The Dispatcher's MaxParallel lines: a freed slot always reaches a live entry,
whatever stale entries (an ended workflow's, a node already running) stand in
front of it. The Dispatcher is driven directly, message by message, with keepers
that only note what they are told."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pykka
import pytest

from plait.actors import membership as membership_module
from plait.actors import registry as registry_module
from plait.actors.dispatcher import Dispatcher
from plait.actors.keeper_base import KeeperContext
from plait.actors.mail import Join, Leave, Ready, Refund, Start, Stopped, Welcomed, Write
from plait.actors.membership import Membership
from plait.actors.plan_keeper import PlanKeeper
from plait.actors.registry import Counters, Registry, Sessions
from plait.protocol import codec
from plait.protocol.messages import CancelTask

KEY = (("shared", 1),)


class Keeper:
    """Stands in for a PlanKeeper's actor ref: keeps the Starts it is told."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.attempts: list[tuple[str, int]] = []
        self.starts: list[Start] = []

    def tell(self, message: Any) -> None:
        assert isinstance(message, Start)
        self.started.append(message.node)
        self.attempts.append((message.node, message.attempt))
        self.starts.append(message)


def dispatcher(*workflows: str) -> tuple[Dispatcher, Registry, dict[str, Keeper]]:
    registry, keepers = Registry(), {wf: Keeper() for wf in workflows}
    for wf, keeper in keepers.items():
        registry.add(wf, cast(pykka.ActorRef[Any], keeper))
    d = Dispatcher(registry, Counters())
    d.on_receive(Join("sup", b"sup", frozenset({"kid"}), 8))
    return d, registry, keepers


def ready(wf: str, node: str) -> Ready:
    return Ready(wf, node, 1, "kid", KEY)


def test_a_freed_slot_skips_the_held_entries_of_an_ended_workflow() -> None:
    d, registry, keepers = dispatcher("live", "over")
    d.on_receive(ready("live", "a"))
    for node in ("x", "y", "z"):
        d.on_receive(ready("over", node))  # held: the slot is taken
    d.on_receive(ready("live", "b"))
    assert keepers["live"].started == ["a"]
    registry.remove("over")  # cancelled: its keeper is gone
    d.on_receive(Stopped("live", "a", 1))
    assert keepers["live"].started == ["a", "b"]
    assert d.counters.get("dispatch.gone") == 3


def test_a_refunded_entry_passes_the_slot_on() -> None:
    d, _, keepers = dispatcher("w")
    for node in ("a", "b", "c"):
        d.on_receive(ready("w", node))
    d.on_receive(Stopped("w", "a", 1))
    assert keepers["w"].started == ["a", "b"]
    d.on_receive(Refund("w", "b", 1, "sup"))  # b was no longer ready there
    assert keepers["w"].started == ["a", "b", "c"]


def test_a_leftover_entry_of_a_running_node_does_not_free_its_slot() -> None:
    d, _, keepers = dispatcher("w")
    two = (("pair", 2),)
    d.on_receive(Ready("w", "a", 1, "kid", two))
    for node in ("a", "b", "c"):  # a again: a leftover entry while it runs
        d.on_receive(Ready("w", node, 1, "kid", two))
    assert keepers["w"].started == ["a", "b"]  # c waits: two run
    assert d.counters.get("dispatch.stale") == 1
    d.on_receive(Stopped("w", "a", 1))
    assert keepers["w"].started == ["a", "b", "c"]
    assert d.running["pair"] == 2


def test_a_start_that_reaches_a_retired_keeper_gives_its_credit_and_slot_back() -> None:
    """The Dispatcher spent a credit and a slot on a Start that the keeper only reads
    after it has left (the workflow ended meanwhile): its refund frees both, and the
    next held entry gets the slot."""
    d, registry, keepers = dispatcher("over", "live")
    d.on_receive(ready("over", "a"))
    d.on_receive(ready("live", "b"))  # held: the slot is taken
    assert keepers["over"].started == ["a"]
    assert d.supervisors["sup"].credit == 7
    retired = PlanKeeper("over", cast(KeeperContext, SimpleNamespace(
        dispatcher=d, counters=d.counters, registry=registry)))
    retired.gone = True
    retired.on_receive(keepers["over"].starts[0])
    assert keepers["live"].started == ["b"]
    assert d.supervisors["sup"].credit == 7  # a's back, b's spent
    assert ("over", "a", 1) not in d.active
    assert d.counters.get("dispatch.gone") == 1


def test_a_restarted_node_is_not_taken_for_a_leftover_while_its_old_start_is_on_its_way() \
        -> None:
    """The node was restarted (a new attempt is ready) while the Start of its old
    attempt was on its way to the keeper: the new attempt runs, and the old Start's
    refund frees only the slot that Start took."""
    d, _, keepers = dispatcher("w")
    two = (("pair", 2),)
    d.on_receive(Ready("w", "a", 1, "kid", two))
    d.on_receive(Ready("w", "a", 2, "kid", two))
    d.on_receive(Refund("w", "a", 1, "sup"))  # the keeper's answer to the old Start
    assert keepers["w"].attempts == [("a", 1), ("a", 2)]
    assert d.running["pair"] == 1  # attempt 2's
    assert d.counters.get("dispatch.stale") == 0
    d.on_receive(Stopped("w", "a", 2))
    assert d.running["pair"] == 0


def test_a_refund_from_before_the_supervisor_rejoined_gives_no_credit() -> None:
    """A Start spent a credit, then the supervisor said Hello again (its free slots
    count that one already): the Start's refund frees the slot, not another credit."""
    d, _, keepers = dispatcher("w")
    d.on_receive(ready("w", "a"))
    assert d.supervisors["sup"].credit == 7
    d.on_receive(Join("sup", b"sup", frozenset({"kid"}), 8))
    old = keepers["w"].starts[0]
    d.on_receive(Refund("w", old.node, old.attempt, "sup", old.session))
    assert d.supervisors["sup"].credit == 8
    assert d.running["shared"] == 0
    d.on_receive(ready("w", "b"))  # a current Start's refund does give its credit back
    new = keepers["w"].starts[1]
    d.on_receive(Refund("w", new.node, new.attempt, "sup", new.session))
    assert d.supervisors["sup"].credit == 8
    assert keepers["w"].started == ["a", "b"]


def test_a_supervisor_that_says_hello_while_declared_dead_keeps_its_credit() -> None:
    """Membership expires a silent supervisor, whose Hello (on the same connection)
    lands before Membership's Leave reaches the Dispatcher: the Leave is for the
    old session, and the new one keeps getting work."""
    registry, keeper, sessions = Registry(), Keeper(), Sessions()
    registry.add("wf", cast(pykka.ActorRef[Any], keeper))
    d = Dispatcher(registry, Counters(), sessions)
    sessions.join("sup", b"conn")
    d.on_receive(Join("sup", b"conn", frozenset({"kid"}), 1))
    dead, _ = sessions.expire(-1.0)  # silent for too long
    assert dead == ["sup"]
    sessions.join("sup", b"conn")  # its Hello, from the Gateway's thread
    d.on_receive(Join("sup", b"conn", frozenset({"kid"}), 1))
    d.on_receive(Leave("sup"))  # Membership's, for the session that expired
    assert "sup" in d.supervisors
    d.on_receive(Ready("wf", "a", 1, "kid", ()))
    assert keeper.started == ["a"]
    sessions.expire(-1.0)  # silent again, and no Hello this time: forgotten
    d.on_receive(Leave("sup"))
    assert "sup" not in d.supervisors


def test_a_keeper_told_a_hello_as_it_left_stops_the_ended_workflows_leftovers() -> None:
    """Membership counts a workflow as told once the Hello's Welcomed is on its way
    to the keeper; one that has left meanwhile stops the supervisor's claimed
    attempts itself (nobody else will: the workflow is over)."""
    writes: list[Write] = []
    store = SimpleNamespace(tell=writes.append)
    retired = PlanKeeper("over", cast(KeeperContext, SimpleNamespace(
        store=store, counters=Counters(), registry=Registry())))
    retired.gone = True
    retired.on_receive(Welcomed("sup", b"conn", frozenset({("a", 2), ("b", 1)})))
    sent = [(identity, codec.decode(frame)) for w in writes for identity, frame in w.out]
    assert sent == [(b"conn", CancelTask(id=sent[0][1].id, workflow_id="over", node="a",
                                         attempt=2)),
                    (b"conn", CancelTask(id=sent[1][1].id, workflow_id="over", node="b",
                                         attempt=1))]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def send(self, identity: bytes, message: Any) -> None:
        self.sent.append((identity, message))


def test_a_flow_that_stood_still_declares_no_supervisor_dead_for_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a pause of Flow's own, the heartbeats that came meanwhile wait unread:
    every supervisor looked silent, and all their attempts failed at once."""
    clock = _Clock()
    monkeypatch.setattr(registry_module.time, "monotonic", clock)
    monkeypatch.setattr(membership_module.time, "monotonic", clock)
    def membership(timeout: float) -> tuple[Membership, Sessions, Counters]:
        sessions, registry, counters = Sessions(), Registry(), Counters()
        m = Membership(cast(Any, None), "", sessions=sessions, registry=registry,
                       dispatcher=Dispatcher(registry, counters, sessions),
                       counters=counters, heartbeat_timeout=timeout, heartbeat_interval=0.5)
        m.outbox = cast(Any, _Outbox())
        sessions.join("s", b"s-1")
        return m, sessions, counters

    stood, sessions, counters = membership(3.0)
    for clock.now in (0.5, 1.0, 10.0, 10.5):  # Flow stood still from 1.0 to 10.0
        stood._tick()
    assert sessions.joined("s")
    assert counters.get("supervisors.lost") == 0
    clock.now = 11.0
    while sessions.joined("s"):  # silent since: dead one timeout after the pause
        stood._tick()
        clock.now += 0.5
    assert clock.now - 0.5 > 13.0
    assert counters.get("supervisors.lost") == 1
    # Ticks on time are not a stall, however short the timeout (two intervals here).
    clock.now = 0.0
    tight, sessions, counters = membership(0.9)
    while sessions.joined("s") and clock.now < 5:
        clock.now += 0.5
        tight._tick()
    assert (clock.now, counters.get("supervisors.lost")) == (1.0, 1)
