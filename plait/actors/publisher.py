"""The Publisher: the mutation feed, a PUB socket of committed events.

Each message is ``[topic = workflow id, FeedEvent frame]`` with the Store's
sequence number. A late subscriber subscribes first, then asks for a snapshot
(``GetHistory`` or ``GetGraph``, whose reply carries the seq) and applies only
feed events after it: the ZeroMQ guide's "Clone" pattern. The Store tells the
Publisher only after a commit, so the feed never shows what could be lost.

The socket is an XPUB: it hands the Publisher the subscriptions (a topic's
first subscriber, its last one leaving), so that an event nobody subscribed to
is not even packed. The subscriptions are read before each batch; ZeroMQ
registers a subscription in its filter when it makes it readable, so this
skips exactly what a PUB would have dropped.

While nobody subscribes at all, the Store does not even tell the Publisher
(waking its thread cost every commit tens of microseconds). It asks the
:class:`Audience` first: somebody subscribes, or the socket has news the
Publisher has not read (a subscription, say): ZeroMQ makes the socket's
``ZMQ_FD`` readable whenever its state changes, until the owning thread next
processes the socket's commands (any call on it). The Store only polls that
descriptor, never the socket (which belongs to the Publisher's thread), so a
first subscription is published to from the first commit after it reached
the socket; the decision is taken when the Store polls, a moment before a
PUB would have filtered, and a subscriber fills any gap from the history.
"""

from __future__ import annotations

import logging
import select
import threading
from typing import Any

import pykka
import zmq

from plait.actors.mail import Publish
from plait.protocol.codec import pack
from plait.protocol.messages import PROTOCOL_VERSION, FeedEvent, new_id
from plait.protocol.sockets import bind, waiting

__all__ = ["Audience", "Publisher"]

log = logging.getLogger(__name__)

FEED_EVENT: str = FeedEvent.model_fields["type"].default


class Audience:
    """Whether the feed may have a subscriber: the Store asks before telling the
    Publisher. The Publisher's thread sets ``listening``; :meth:`maybe` runs on
    the Store's thread only (a poll object is not for two threads)."""

    def __init__(self) -> None:
        self.listening = threading.Event()  # some topic is subscribed
        self._news = select.poll()

    def watch(self, fd: int) -> None:
        """The socket's ZMQ_FD (before any other thread calls :meth:`maybe`)."""
        self._news.register(fd, select.POLLIN)

    def maybe(self) -> bool:
        # The Event again after the descriptor: the Publisher sets it before its
        # drain resets the descriptor, so a reset seen here comes with the Event set.
        return self.listening.is_set() or bool(self._news.poll(0)) or self.listening.is_set()


class Publisher(pykka.ThreadingActor):
    """Owns the PUB socket; binds it in its own thread."""

    def __init__(self, zctx: zmq.Context[Any], endpoint: str) -> None:
        super().__init__()
        self._zctx = zctx
        self._endpoint = endpoint
        self.endpoint = ""
        self.sent = 0
        self.audience = Audience()
        self._error: zmq.ZMQError | None = None

    def on_start(self) -> None:
        self.topics: set[bytes] = set()  # subscribed prefixes of workflow ids
        self.sock = self._zctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.LINGER, 0)
        try:
            bind(self.sock, self._endpoint)
        except zmq.ZMQError as exc:  # port taken, no such address: bound() raises it
            self.sock.close(linger=0)
            self._error = exc
            return
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.audience.watch(self.sock.getsockopt(zmq.FD))
        self._subscriptions()  # none yet: this only resets ZMQ_FD

    def on_stop(self) -> None:
        self.sock.close()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        # pykka skips on_stop for a failed actor: an open socket would hang Flow's
        # context at stop. Flow itself goes on; only its feed falls silent.
        log.error("the feed's Publisher failed (%s): the feed is silent", exception_value)
        self.sock.close(linger=0)

    def bound(self) -> str | zmq.ZMQError:
        """The endpoint the feed is bound to, or why it could not bind (asked once,
        at start, by Flow, whose start raises it as it does for its request socket;
        returned, not raised: pykka would log a raise with its traceback)."""
        return self._error if self._error is not None else self.endpoint

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, Publish):
            return super().on_receive(message)
        self._subscriptions()
        if not self.topics:
            return None
        for e in message.events:
            topic = e.workflow_id.encode()
            if not any(topic.startswith(t) for t in self.topics):
                continue
            # A FeedEvent's wire form, packed directly: the events are Flow's own,
            # already valid, and a model per event costs more than the rest.
            frame = pack({"v": PROTOCOL_VERSION, "id": new_id(), "type": FEED_EVENT,
                          "workflow_id": e.workflow_id, "seq": e.seq,
                          "event": {**e.event, "seq": e.seq, "ts": e.ts}})
            self.sock.send_multipart([topic, frame])
            self.sent += 1
        return None

    def _subscriptions(self) -> None:
        # The socket is touched only here (which ends having read everything, so
        # ZMQ_FD is quiet until the next news) or to send while ``listening`` is
        # set: any other use would reset ZMQ_FD behind the Audience's back. And
        # ``listening`` is set before the first call on the socket resets ZMQ_FD,
        # or a commit in between would see neither and skip what it should publish.
        self.audience.listening.set()
        while waiting(self.sock):
            note = self.sock.recv()
            if note[:1] == b"\x01":
                self.topics.add(note[1:])
            elif note[:1] == b"\x00":
                self.topics.discard(note[1:])
        if not self.topics:
            self.audience.listening.clear()
