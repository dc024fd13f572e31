"""The Store: the only writer of Flow's SQLite database.

Every event goes into ``events`` in the same transaction as the projection it
updates (see :mod:`database`), and the projection can always be rebuilt by
folding the events. The :class:`Store` actor commits in groups: it drains its
inbox, writes every pending event (and schedule change, and cache entry) in one
transaction and one fsync (``synchronous=FULL`` in WAL mode, so a commit is
durable), and only then sends the replies, assignments and feed messages those
events caused. Nothing leaves Flow before it is recorded.

Reads are the :class:`~plait.actors.reader.Reader`'s, on a connection of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import pykka
import zmq

from plait.actors.database import Database, DatabaseActor
from plait.actors.mail import Publish, Write
from plait.actors.registry import safe_tell

__all__ = ["Database", "Loaded", "Store", "load"]

log = logging.getLogger(__name__)

Stream = list[tuple[int, float, dict[str, Any]]]




class Store(DatabaseActor):
    """The only writer. Group commit: one transaction per drained inbox."""

    MAX_BATCH = 4096  # events per transaction: bounds the latency of one commit

    def __init__(self, path: str, zctx: zmq.Context[Any], outbox_address: str,
                 publisher: pykka.ActorRef[Any], listened: Callable[[], bool],
                 on_fatal: Callable[[BaseException], None]) -> None:
        super().__init__(path, zctx, outbox_address)
        self._publisher = publisher
        self._listened = listened  # whether the feed may have a subscriber (Audience)
        self._on_fatal = on_fatal
        self._failed = False
        self._feed_gone = False
        self.commits = 0

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, Write):
            return super().on_receive(message)
        batch, others = self._drain(message)
        try:
            self._commit(batch)
        finally:
            for envelope in others:  # not ours to batch: back in line, after this batch
                self.actor_inbox.put(envelope)
        return None

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        try:
            super().on_failure(exception_type, exception_value, traceback)
        finally:
            if not self._failed:  # nothing is recorded any more: Flow cannot go on
                self._failed = True
                self._on_fatal(exception_value)

    def _drain(self, first: Write) -> tuple[list[Write], list[Any]]:
        batch, others, size = [first], [], len(first.events)
        inbox = self.actor_inbox
        while size < self.MAX_BATCH and not inbox.empty():
            envelope = inbox.get()
            if isinstance(envelope.message, Write) and envelope.reply_to is None:
                batch.append(envelope.message)
                size += len(envelope.message.events)
            else:
                others.append(envelope)
                break  # keep order: whatever came after it waits for its turn
        return batch, others

    def _feed_stopped(self) -> None:
        """The Publisher failed: commits go on, and this is said once."""
        if not self._feed_gone:
            self._feed_gone = True
            log.error("store: the feed's Publisher has stopped; nothing is published")

    def _commit(self, batch: list[Write]) -> None:
        if self._failed:
            return  # Flow is going down: nothing more is recorded, nothing is sent
        events = [e for w in batch for e in w.events]
        schedules = [c for w in batch for c in w.schedules]
        cache = [c for w in batch for c in w.cache]
        tasks = [t for w in batch for t in w.tasks]
        if events or schedules or cache or tasks:
            try:
                self.db.append(events, schedules, cache, tasks)
            except Exception as exc:  # a write that cannot commit ends Flow: state is unknown
                self._failed = True
                log.exception("store: commit failed; stopping Flow")
                self._on_fatal(exc)
                return
            self.commits += 1
        # Replies first: a waiting task (a chain's next hop, a durable step) goes on
        # while the Publisher's thread, woken next, packs the feed.
        self.outbox.send_frames([pair for w in batch for pair in w.out])
        if events and self._listened() and not safe_tell(self._publisher, Publish(events)):
            self._feed_stopped()
        for w in batch:
            if w.then is not None:
                w.then()


class Loaded(NamedTuple):
    """What Flow reads at start: every workflow id ever used, the event streams of
    unfinished workflows, the stored schedules, and what supervisors last said of
    their tasks."""

    known: set[str]
    streams: list[tuple[str, Stream]]
    schedules: list[dict[str, Any]]
    tasks: list[dict[str, Any]]


def load(path: str) -> Loaded:
    db = Database(path)
    try:
        return Loaded(db.workflow_ids(), [(wf, db.events(wf)) for wf in db.unfinished()],
                      db.schedules(), db.tasks())
    finally:
        db.close()
