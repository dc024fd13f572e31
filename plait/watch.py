"""Following the mutation feed: ZeroMQ's "Clone" pattern on the client side.

Subscribe first, then take a snapshot (``GetGraph``, whose reply carries its
``seq``), then yield only events with a larger ``seq``. A gap in a workflow's
sequence (the subscription was slow to take hold, or a message was dropped)
is filled from the workflow's history, so a late or slow subscriber still
sees every change, in order, exactly once.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

import zmq

from plait.errors import ProtocolError
from plait.protocol import codec
from plait.protocol.messages import FeedEvent, RunInfo
from plait.protocol.sockets import connect

if TYPE_CHECKING:
    from plait.client import Client

__all__ = ["TERMINAL", "Watch"]

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "violated"})
# Ends recorded just before the latest one seen may commit just after it: the
# busy feed's look for lost ends reaches this far back (seconds of Flow's clock).
ENDS_OVERLAP = 5.0


class Watch(Iterator[FeedEvent]):
    """One feed subscription with per-workflow sequence tracking (see Client.watch).

    An iterator of :class:`FeedEvent`; ``close()`` (or ``with``) ends the subscription,
    also from another thread while this one waits in ``next()``, which then ends.
    """

    def __init__(self, client: Client, workflow_id: str | None) -> None:
        self.client = client
        self.workflow_id = workflow_id
        self.last: dict[str, int] = {}
        # Workflows whose end this watch has delivered -> that end's time (a workflow
        # restarted after its end ends again later).
        self.ended: dict[str, float | None] = {}
        self.done = False
        # Every workflow: the latest time on Flow's clock it has shown us, and when
        # to look for lost ends next while the feed is busy.
        self._flow_time: float | None = None
        # Flow's time when every workflow was listed: one created later that the feed
        # never showed ended before the subscription took hold.
        self._snapshot_time = float("inf")
        self._check_at = time.monotonic() + client.poll_interval
        self._sub = client._zmq.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.SUBSCRIBE, (workflow_id or "").encode())
        connect(self._sub, client.feed)
        # A close() from another thread wakes the iterating one through this.
        self._closing = threading.Event()
        self._lock = threading.Lock()  # over _closing and _iterating
        self._iterating = False
        self.closed = threading.Event()  # its sockets are closed (Client.close waits)
        self._wake_address = f"inproc://plait-watch-{secrets.token_hex(8)}"
        self._wake = client._zmq.socket(zmq.PULL)
        self._wake.setsockopt(zmq.LINGER, 0)
        self._wake.bind(self._wake_address)
        self._poller = zmq.Poller()
        self._poller.register(self._sub, zmq.POLLIN)
        self._poller.register(self._wake, zmq.POLLIN)
        self._events = self._run()

    def __next__(self) -> FeedEvent:
        with self._lock:
            closing = self._closing.is_set()
            self._iterating = not closing
        if closing:  # closed from another thread while this one was not in next()
            self._end()
            raise StopIteration
        try:
            return next(self._events)
        finally:
            with self._lock:
                self._iterating = False

    def close(self) -> None:
        with self._lock:
            self._closing.set()
            iterating = self._iterating
        if not iterating:
            self._end()
            return
        # Another thread is in next(): woken, it ends, and closes the sockets.
        nudge = self.client._zmq.socket(zmq.PUSH)
        nudge.setsockopt(zmq.LINGER, 1000)
        nudge.connect(self._wake_address)
        with contextlib.suppress(zmq.Again):
            nudge.send(b"", zmq.NOBLOCK)
        nudge.close()

    def _end(self) -> None:
        with contextlib.suppress(ValueError):  # being closed by the other thread as well
            self._events.close()
        self._close_sockets()

    def _close_sockets(self) -> None:
        with self._lock:  # once: both threads may get here (close() and the generator)
            if self.closed.is_set():
                return
            self.closed.set()
            self._sub.close(linger=0)
            self._wake.close(linger=0)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> Generator[FeedEvent, None, None]:
        try:
            yield from self._snapshots()
            while not self.done and not self._closing.is_set():
                ready = dict(self._poller.poll(int(self.client.poll_interval * 1000)))
                if self._closing.is_set():
                    return
                if self._sub not in ready:
                    yield from self.quiet()
                    continue
                yield from self.accept(self._sub.recv_multipart()[-1])
                if time.monotonic() >= self._check_at:
                    # Other workflows may never let the feed go quiet (for one
                    # workflow: those whose ids it prefixes, "wf-1" of "wf-12").
                    yield from self.quiet()
        finally:
            self._close_sockets()

    def _snapshots(self) -> Iterator[FeedEvent]:
        """The Clone pattern's snapshot, taken after subscribing."""
        if self.workflow_id is not None:
            yield self.snapshot(self.workflow_id)
            return
        runs = self.client.runs()
        self._note_time(runs)
        self._snapshot_time = self._flow_time if self._flow_time is not None else 0.0
        for info in runs:
            if info.status not in TERMINAL:
                yield self.snapshot(info.workflow_id)

    def snapshot(self, workflow_id: str) -> FeedEvent:
        reply = self.client.graph(workflow_id, unfold=True)  # for machines: nothing folded
        self.last[workflow_id] = reply.seq
        return FeedEvent(workflow_id=workflow_id, seq=reply.seq,
                         event={"type": "snapshot", "graph": reply.graph})

    def accept(self, frame: bytes) -> Iterator[FeedEvent]:
        try:
            event = codec.decode(frame, max_size=codec.TRUSTED_MAX_SIZE)
        except ProtocolError:
            return
        if not isinstance(event, FeedEvent):
            return
        wid = event.workflow_id
        if self.workflow_id is not None and wid != self.workflow_id:
            return  # topics match by prefix: "wf-1" also brings "wf-12"
        if wid not in self.last and event.seq > 1:
            yield self.snapshot(wid)  # joined this workflow late
        last = self.last.get(wid, 0)
        if event.seq <= last:
            return
        if event.seq > last + 1:
            yield from self.catch_up(wid)  # we missed some: fill the gap
            if event.seq <= self.last.get(wid, 0) or self.done:
                return  # caught up, or the gap held the end (a restart after it too)
        yield from self.deliver(event)

    def deliver(self, event: FeedEvent) -> Iterator[FeedEvent]:
        self.last[event.workflow_id] = event.seq
        yield event
        if event.event.get("type") != "workflow":
            self.ended.pop(event.workflow_id, None)  # restarted after its end
            return
        ts = event.event.get("ts")
        self.ended[event.workflow_id] = float(ts) if isinstance(ts, int | float) else None
        if event.workflow_id == self.workflow_id:
            self.done = True

    def _lost_ends(self, runs: list[RunInfo]) -> Iterator[FeedEvent]:
        """Ends among ``runs`` the feed did not bring: no later event of such a
        workflow would show the gap, so the end (and what led to it) comes from
        its history."""
        self._note_time(runs)
        self._check_at = time.monotonic() + self.client.poll_interval
        for info in runs:
            if info.status not in TERMINAL:
                continue
            if info.workflow_id in self.last:
                lost = self._end_lost(info.workflow_id, info.finished)
            else:  # begun after the snapshot and over before the subscription took hold
                lost = info.created > self._snapshot_time
            if lost:
                yield from self.catch_up(info.workflow_id)
                self.ended[info.workflow_id] = info.finished

    def _recent_ends(self) -> list[RunInfo]:
        """The workflows that ended lately (on Flow's clock), where a lost end may
        be: not every workflow Flow knows, which a big database makes a big reply."""
        since = 0.0 if self._flow_time is None else self._flow_time - ENDS_OVERLAP
        return self.client.runs(ended_since=since)

    def _note_time(self, runs: list[RunInfo]) -> None:
        for info in runs:
            seen = info.finished if info.finished is not None else info.created
            if self._flow_time is None or seen > self._flow_time:
                self._flow_time = seen

    def _end_lost(self, workflow_id: str, finished: float | None) -> bool:
        """Whether the workflow has ended (at ``finished``) with that end undelivered."""
        if workflow_id not in self.ended:
            return True
        delivered = self.ended[workflow_id]
        return delivered is not None and finished is not None and finished != delivered

    def catch_up(self, workflow_id: str) -> Iterator[FeedEvent]:
        """Events after the last one delivered, from the workflow's history."""
        for event in self.client.history(workflow_id):
            seq = int(event.get("seq", 0))
            if seq > self.last.get(workflow_id, 0) and not self.done:
                yield from self.deliver(FeedEvent(workflow_id=workflow_id, seq=seq, event=event))

    def quiet(self) -> Iterator[FeedEvent]:
        if self.workflow_id is None:
            # Also a liveness check: a dead Flow raises FlowUnavailable.
            yield from self._lost_ends(self._recent_ends())
            return
        self._check_at = time.monotonic() + self.client.poll_interval
        if self.client.run_info(self.workflow_id).status in TERMINAL:
            # The end may have been published before our subscription took hold,
            # or before our snapshot, which then already shows the final graph.
            yield from self.catch_up(self.workflow_id)
            self.done = True
