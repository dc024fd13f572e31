"""The supervisor's connection to Flow: (re)connection, Hello, heartbeats, resends.

A DEALER socket with ``IMMEDIATE`` set, so that nothing queues for a Flow that
is not there (what one turn of the Relay's loop sends leaves together, one
ZeroMQ message of several frames), and a socket monitor, so that every
(re)connection, which may reach a restarted Flow that does not know this
supervisor, is greeted with Hello followed by every request Flow has not
answered yet (Propose, Wait and Finish are idempotent on Flow's side). A Flow
silent for ``timeout`` gets a brand new socket; one that answers a heartbeat
with an Error gets Hello again.
Used only by the supervisor's Relay thread (its poll loop), which owns the socket.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import zmq
from zmq.utils.monitor import recv_monitor_message

from plait.protocol import codec
from plait.protocol.messages import Heartbeat, Hello, Message, Propose, Wait
from plait.protocol.sockets import connect

if TYPE_CHECKING:
    from plait.supervisor.daemon import SupervisorSettings

log = logging.getLogger("plait.supervisor")

# The peer is ready for messages after the ZMTP handshake (libzmq >= 4.3), not at TCP connect.
_CONNECTED = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", zmq.EVENT_CONNECTED)


class Outstanding(NamedTuple):
    """A request Flow has not answered: what it was, the worker awaiting the answer
    (None: nobody), and its frame, sent again as it was on a new connection."""

    message: Message
    worker: bytes | None
    frame: bytes


class FlowLink:
    """The DEALER to Flow: (re)connection, heartbeats, and requests awaiting replies."""

    def __init__(self, zctx: zmq.Context[zmq.Socket[bytes]], settings: SupervisorSettings,
                 hello: Callable[[], Hello]) -> None:
        self._zctx = zctx
        self._address = settings.flow
        self._hello = hello
        self.interval = settings.heartbeat_interval
        self.timeout = settings.heartbeat_timeout
        # Requests by id until Flow answers them (Finishes until acknowledged).
        self.outstanding: dict[str, Outstanding] = {}
        # Worker -> ids of the resident Waits it sent (some answered since): what its
        # attempt's end looks at, rather than every request outstanding.
        self._resident: dict[bytes, list[str]] = {}
        self._out: list[bytes] = []  # frames for Flow, sent together by flush()
        self.sock: zmq.Socket[bytes] | None = None
        self.monitor: zmq.Socket[bytes] | None = None
        self.connections = 0
        self.greeting = False  # connected, Hello not yet out: hold everything else
        self.last_beat = ""  # a Flow that answers our heartbeat with an Error forgot us
        self._forgotten_at = -math.inf
        self._heard = self._sent = 0.0

    def open(self, now: float) -> None:
        """A new socket; Hello goes out when the monitor reports the connection."""
        self.close()
        sock = self._zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # nothing queues for a peer not (yet) there
        self.monitor = sock.get_monitor_socket(_CONNECTED | zmq.EVENT_DISCONNECTED)
        connect(sock, self._address)
        self.sock = sock
        self.greeting = False
        self._heard = now

    def close(self) -> None:
        self._out = []  # for the old connection; what is tracked goes again on the next
        if self.sock is not None:
            self.sock.disable_monitor()
            self.sock.close(linger=0)
        if self.monitor is not None:
            self.monitor.close(linger=0)
        self.sock = self.monitor = None

    def on_monitor(self, now: float) -> None:
        assert self.monitor is not None
        event = recv_monitor_message(self.monitor)
        if event["event"] == _CONNECTED:
            # A (re)connection may reach a restarted Flow that does not know us.
            self.connections += 1
            self._heard = now
            self.greet()
        elif event["event"] == zmq.EVENT_DISCONNECTED:
            log.warning("lost the connection to Flow at %s", self._address)

    def greet(self) -> None:
        """Hello, then every request Flow has not answered, in order (all idempotent)."""
        self.greeting = not self.send(self._hello())
        if not self.greeting:
            for request in list(self.outstanding.values()):
                self.send(request.message, frame=request.frame)

    def send(self, msg: Message, worker: bytes | None = None, *, track: bool = False,
             frame: bytes | None = None) -> bool:
        """Send now if connected; tracked messages also go again on every connection.
        ``frame`` is ``msg`` already encoded (a worker's frame, relayed as it came)."""
        if frame is None:
            frame = codec.encode(msg)
        if track:
            self.outstanding[msg.id] = Outstanding(msg, worker, frame)
            if worker is not None and isinstance(msg, Wait) and msg.resident:
                self._resident.setdefault(worker, []).append(msg.id)
        if self.sock is None or (self.greeting and not isinstance(msg, Hello)):
            return False
        if isinstance(msg, Hello):  # at once: whether it went decides what follows
            self.flush()
            try:
                self.sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                return False
        else:
            self._out.append(frame)
        self._sent = time.monotonic()
        return True

    def flush(self) -> None:
        """Send what ``send`` gathered, as one ZeroMQ message of several frames (Flow
        reads each frame as a message): the Relay calls it once per turn of its loop,
        so a busy supervisor sends its Finishes and Credit in one go."""
        if not self._out or self.sock is None:
            return
        out, self._out = self._out, []
        # No Flow (IMMEDIATE): the requests are tracked and go again on connection.
        with contextlib.suppress(zmq.Again):
            self.sock.send_multipart(out, zmq.NOBLOCK)

    def answered(self, mid: str) -> tuple[Message | None, bytes | None]:
        """Flow answered request ``mid``: it is not sent again. Returns it and its worker."""
        request = self.outstanding.pop(mid, None)
        return (request.message, request.worker) if request else (None, None)

    def forgotten(self, now: float) -> None:
        """Flow answered "unknown supervisor" (it restarted, or declared this one
        dead): Hello again, at most once per heartbeat interval, since every Credit
        or Heartbeat already on its way gets the same answer."""
        if now - self._forgotten_at >= self.interval:
            self._forgotten_at = now
            log.warning("Flow does not know this supervisor: saying Hello again")
            self.greet()

    def heard(self, now: float) -> None:
        self._heard = now

    def tick(self, now: float) -> bool:
        """Heartbeat; True when Flow has been silent too long (the caller reopens)."""
        if self.greeting:
            self.greet()
        if now - self._sent >= self.interval:
            beat = Heartbeat()
            if self.send(beat):
                self.last_beat = beat.id
        return now - self._heard > self.timeout

    def ended(self, worker: bytes, attempt: tuple[str, str, int]) -> None:
        """The worker ended ``attempt``: a resident Wait of it still unanswered (its
        workflow was cancelled, say) awaits nothing any more, and is not sent again.
        (A worker runs one attempt at a time: its Waits before this end are this
        attempt's.)"""
        for mid in self._resident.pop(worker, ()):
            request = self.outstanding.get(mid)
            if request is not None and isinstance(request.message, Wait) and (
                    request.message.workflow_id, request.message.node,
                    request.message.attempt) == attempt:
                del self.outstanding[mid]

    def forget(self, worker: bytes) -> None:
        """Drop the requests a dead worker awaited answers to (a Propose, a resident
        Wait); what Flow must still learn (Finish, an evicted Wait, state) stays."""
        self._resident.pop(worker, None)
        for mid, (msg, ident, _) in list(self.outstanding.items()):
            if ident == worker and (isinstance(msg, Propose) or (
                    isinstance(msg, Wait) and msg.resident)):
                del self.outstanding[mid]
