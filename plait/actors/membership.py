"""Membership: which supervisors are alive, and what happens when one is not.

The Gateway records every supervisor's Hello and every frame it sends in the
shared :class:`~plait.actors.registry.Sessions`; Membership, on each tick,
heartbeats every supervisor and declares dead one silent for
``heartbeat_timeout``: the Dispatcher forgets its credit and every keeper fails
its attempts there (``SupervisorLost``, retryable). On a Hello, the keepers
learn which attempts the supervisor still runs; any other attempt Flow had
given it was lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pykka
import zmq

from plait.actors.dispatcher import Dispatcher
from plait.actors.gateway import Outbox
from plait.actors.mail import Leave, Lost, Request, Tick, Welcomed
from plait.actors.registry import Counters, Registry, Sessions
from plait.protocol.messages import CancelTask, Heartbeat, Hello

__all__ = ["Membership"]

log = logging.getLogger(__name__)


class Membership(pykka.ThreadingActor):
    def __init__(self, zctx: zmq.Context[Any], outbox_address: str, *, sessions: Sessions,
                 registry: Registry, dispatcher: Dispatcher, counters: Counters,
                 heartbeat_timeout: float, heartbeat_interval: float = 0.0,
                 on_fatal: Callable[[BaseException], None] | None = None) -> None:
        super().__init__()
        self._zctx = zctx
        self._outbox_address = outbox_address
        self.sessions = sessions
        self.registry = registry
        self.dispatcher = dispatcher
        self.counters = counters
        self.timeout = heartbeat_timeout
        self.interval = heartbeat_interval  # how often Flow's timer tells it Tick
        self._on_fatal = on_fatal
        self._last_tick: float | None = None

    def on_start(self) -> None:
        self.outbox = Outbox(self._zctx, self._outbox_address)

    def on_stop(self) -> None:
        self.outbox.close()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        # As on_stop (which pykka skips for a failed actor): an open socket would
        # hang Flow's context at stop. Fatal: no supervisor could be welcomed again.
        try:
            self.outbox.close(linger=0)
        finally:
            if self._on_fatal is not None:
                self._on_fatal(exception_value)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Tick):
            self._tick()
        elif isinstance(message, Request) and isinstance(message.message, Hello):
            self._hello(message.identity, message.message)
        else:
            return super().on_receive(message)
        return None

    def _hello(self, identity: bytes, msg: Hello) -> None:
        log.info("supervisor %s joined with %d slots, %d attempts running",
                 msg.supervisor_id, msg.slots, len(msg.running))
        claims: dict[str, set[tuple[str, int]]] = {}
        evicted: dict[str, set[tuple[str, int]]] = {}
        for a in msg.running:
            (evicted if a.evicted else claims).setdefault(a.workflow_id, set()).add(
                (a.node, a.attempt))
        told = set(self.registry.broadcast(lambda wf: Welcomed(
            msg.supervisor_id, identity, frozenset(claims.get(wf, ())),
            frozenset(evicted.get(wf, ())))))
        for wf in claims:
            # The workflow is over: stop its leftovers. Told but no longer live, its
            # keeper retired meanwhile, and a tell behind its stop is dropped unread
            # (one that read it cancels too: twice is harmless).
            if wf in told and self.registry.is_live(wf):
                continue
            for node, attempt in claims[wf]:
                self.outbox.send(identity, CancelTask(workflow_id=wf, node=node,
                                                      attempt=attempt))

    def _tick(self) -> None:
        now = time.monotonic()
        gap, self._last_tick = now - (self._last_tick or now), now
        if gap - self.interval > self.timeout / 2:  # late by that much, not merely due
            # Flow itself stood still (a pause, swapping): the heartbeats that came
            # meanwhile wait unread in its socket, and every supervisor would look
            # dead. Silence is counted again from now.
            log.warning("flow: membership ticked after %.1fs; supervisors' silence is "
                        "counted from now", gap)
            self.sessions.refresh()
        dead, live = self.sessions.expire(self.timeout)
        for identity in live:
            self.outbox.send(identity, Heartbeat())
        for supervisor in dead:
            self._dead(supervisor)

    def _dead(self, supervisor: str) -> None:
        log.warning("supervisor %s is silent for %.1fs: declared dead", supervisor, self.timeout)
        self.counters.add("supervisors.lost")
        self.dispatcher.tell(Leave(supervisor))
        self.registry.broadcast(Lost(supervisor))
