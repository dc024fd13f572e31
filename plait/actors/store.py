"""The Store: the only writer of Flow's SQLite database, and its readers.

Every event goes into ``events`` in the same transaction as the projection it
updates (``workflows``, ``nodes``), and the projection can always be rebuilt by
folding the events. The :class:`Store` actor commits in groups: it drains its
inbox, writes every pending event in one transaction and one fsync
(``synchronous=FULL`` in WAL mode, so a commit is durable), and only then sends
the replies, assignments and feed messages those events caused. Nothing leaves
Flow before it is recorded.

The :class:`Reader` actor answers history, status and graph-as-of requests on a
connection of its own, so long reads never delay a commit.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pykka
import zmq

from plait.actors.gateway import Outbox
from plait.actors.history import ENDED, WorkflowState
from plait.actors.mail import Publish, Request, StoredEvent, Write
from plait.protocol.codec import pack, unpack
from plait.protocol.messages import (
    Ack,
    AwaitResult,
    CancelWorkflow,
    Error,
    GetGraph,
    GetHistory,
    GetStatus,
    GraphReply,
    HistoryReply,
    Message,
    RunInfo,
    StatusReply,
    WorkflowResult,
)

__all__ = ["Database", "Reader", "Store", "load"]

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    wf TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, type TEXT NOT NULL,
    body BLOB NOT NULL, PRIMARY KEY (wf, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS workflows (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, root TEXT NOT NULL, status TEXT NOT NULL,
    created REAL NOT NULL, finished REAL, nodes INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL DEFAULT 0, output BLOB, error BLOB);
CREATE TABLE IF NOT EXISTS nodes (
    wf TEXT NOT NULL, id TEXT NOT NULL, task TEXT NOT NULL, state TEXT NOT NULL,
    attempt INTEGER NOT NULL, PRIMARY KEY (wf, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS workflows_status ON workflows (status);
"""

_NO_LIMIT = sys.maxsize  # stored blobs were written by us: no size limit on reading them


class Database:
    """One SQLite connection (used by one thread) with Flow's schema and queries."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    # --- writing --------------------------------------------------------------

    def append(self, events: Sequence[StoredEvent]) -> None:
        """Write events and their projection in one transaction."""
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.executemany(
                "INSERT INTO events (wf, seq, ts, type, body) VALUES (?, ?, ?, ?, ?)",
                [(e.workflow_id, e.seq, e.ts, e.event["type"], pack(dict(e.event)))
                 for e in events])
            last: dict[str, int] = {}
            for e in events:
                self._project(cur, e)
                last[e.workflow_id] = e.seq
            cur.executemany("UPDATE workflows SET seq = ? WHERE id = ?",
                            [(seq, wf) for wf, seq in last.items()])
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    @staticmethod
    def _project(cur: sqlite3.Cursor, e: StoredEvent) -> None:
        ev, wf = e.event, e.workflow_id
        kind = ev["type"]
        if kind == "submitted":
            cur.execute("INSERT INTO workflows (id, name, root, status, created) "
                        "VALUES (?, ?, ?, 'running', ?)", (wf, ev["name"], ev["root"], e.ts))
        elif kind == "diff":
            nodes = ev["diff"].get("nodes") or ()
            cur.executemany("INSERT OR IGNORE INTO nodes (wf, id, task, state, attempt) "
                            "VALUES (?, ?, ?, 'pending', 1)",
                            [(wf, n["id"], n["task"]) for n in nodes])
            cur.execute("UPDATE workflows SET nodes = nodes + ? WHERE id = ?", (len(nodes), wf))
        elif kind == "state":
            cur.execute("UPDATE nodes SET state = ?, attempt = ? WHERE wf = ? AND id = ?",
                        (ev["state"], ev["attempt"], wf, ev["node"]))
        elif kind == "workflow":
            cur.execute("UPDATE workflows SET status = ?, finished = ?, output = ?, error = ? "
                        "WHERE id = ?", (ev["status"], e.ts, pack(ev.get("output")),
                                         pack(ev.get("error")), wf))

    # --- reading --------------------------------------------------------------

    def workflow_ids(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT id FROM workflows")}

    def unfinished(self) -> list[str]:
        rows = self.conn.execute(
            "SELECT id FROM workflows WHERE status NOT IN (?, ?, ?, ?) ORDER BY created",
            tuple(sorted(ENDED)))
        return [row[0] for row in rows]

    def events(self, workflow_id: str, upto: int | None = None
               ) -> list[tuple[int, float, dict[str, Any]]]:
        rows = self.conn.execute(
            "SELECT seq, ts, body FROM events WHERE wf = ? AND seq <= ? ORDER BY seq",
            (workflow_id, _NO_LIMIT if upto is None else upto))
        return [(seq, ts, unpack(body, max_size=_NO_LIMIT)) for seq, ts, body in rows]

    def runs(self, workflow_id: str | None = None) -> list[RunInfo]:
        query = "SELECT id, name, status, created, finished, nodes FROM workflows"
        rows = (self.conn.execute(query + " WHERE id = ?", (workflow_id,)) if workflow_id
                else self.conn.execute(query + " ORDER BY created"))
        return [RunInfo(workflow_id=r[0], name=r[1], status=r[2], created=r[3],
                        finished=r[4], nodes=r[5]) for r in rows]

    def result(self, workflow_id: str) -> tuple[str, Any, Any] | None:
        """(status, output, error) of a workflow, or None if unknown."""
        row = self.conn.execute("SELECT status, output, error FROM workflows WHERE id = ?",
                                (workflow_id,)).fetchone()
        if row is None:
            return None
        status, output, error = row
        return (status, unpack(output, max_size=_NO_LIMIT) if output is not None else None,
                unpack(error, max_size=_NO_LIMIT) if error is not None else None)


# --- the writer ---------------------------------------------------------------------


class Store(pykka.ThreadingActor):
    """The only writer. Group commit: one transaction per drained inbox."""

    MAX_BATCH = 4096  # events per transaction: bounds the latency of one commit

    def __init__(self, path: str, zctx: zmq.Context[Any], outbox_address: str,
                 publisher: pykka.ActorRef[Any], on_fatal: Callable[[BaseException], None]
                 ) -> None:
        super().__init__()
        self._path = path
        self._zctx = zctx
        self._outbox_address = outbox_address
        self._publisher = publisher
        self._on_fatal = on_fatal
        self._failed = False
        self.commits = 0

    def on_start(self) -> None:
        self.db = Database(self._path)
        self.outbox = Outbox(self._zctx, self._outbox_address)

    def on_stop(self) -> None:
        self.outbox.close()
        self.db.close()

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

    def _commit(self, batch: list[Write]) -> None:
        if self._failed:
            return  # Flow is going down: nothing more is recorded, nothing is sent
        events = [e for w in batch for e in w.events]
        if events:
            try:
                self.db.append(events)
            except Exception as exc:  # a write that cannot commit ends Flow: state is unknown
                self._failed = True
                log.exception("store: commit failed; stopping Flow")
                self._on_fatal(exc)
                return
            self.commits += 1
            self._publisher.tell(Publish(events))
        for w in batch:
            self.outbox.send_frames(w.out)
        for w in batch:
            if w.then is not None:
                w.then()


# --- the reader ---------------------------------------------------------------------


class Reader(pykka.ThreadingActor):
    """Answers requests about committed state: status, history, graph as of a seq,
    and anything about workflows that are no longer live."""

    def __init__(self, path: str, zctx: zmq.Context[Any], outbox_address: str) -> None:
        super().__init__()
        self._path = path
        self._zctx = zctx
        self._outbox_address = outbox_address

    def on_start(self) -> None:
        self.db = Database(self._path)
        self.outbox = Outbox(self._zctx, self._outbox_address)

    def on_stop(self) -> None:
        self.outbox.close()
        self.db.close()

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, Request):
            return super().on_receive(message)
        try:
            reply = self.answer(message.message)
        except Exception as exc:  # the edge of a request: reply, never die
            log.exception("reader: %s failed", type(message.message).__name__)
            reply = Error(id=message.message.id, code="internal", reason=repr(exc))
        self.outbox.send(message.identity, reply)
        return None

    def answer(self, msg: Message) -> Message:
        if isinstance(msg, GetStatus):
            runs = self.db.runs(msg.workflow_id)
            if msg.workflow_id is not None and not runs:
                return _not_found(msg, msg.workflow_id)
            return StatusReply(id=msg.id, runs=runs)
        if isinstance(msg, GetHistory):
            events = self.db.events(msg.workflow_id)
            if not events:
                return _not_found(msg, msg.workflow_id)
            return HistoryReply(id=msg.id, workflow_id=msg.workflow_id,
                                events=[{**ev, "seq": seq, "ts": ts} for seq, ts, ev in events])
        if isinstance(msg, GetGraph):
            return self._graph(msg)
        if isinstance(msg, AwaitResult | CancelWorkflow):
            return self._ended(msg)
        wf = getattr(msg, "workflow_id", None)
        return Error(id=msg.id, code="not_found", reason=f"workflow {wf!r} is not running")

    def _graph(self, msg: GetGraph) -> Message:
        events = self.db.events(msg.workflow_id, msg.at)
        if not events:
            return _not_found(msg, msg.workflow_id)
        state = WorkflowState.rebuild(msg.workflow_id, events)
        return GraphReply(id=msg.id, workflow_id=msg.workflow_id, seq=state.seq,
                          graph=state.view_json(msg.unfold))

    def _ended(self, msg: AwaitResult | CancelWorkflow) -> Message:
        found = self.db.result(msg.workflow_id)
        if found is None:
            return _not_found(msg, msg.workflow_id)
        status, output, error = found
        if status not in ENDED:
            return Error(id=msg.id, code="unavailable",
                         reason=f"workflow {msg.workflow_id!r} is being restored; retry")
        if isinstance(msg, CancelWorkflow):
            return Ack(id=msg.id)
        return WorkflowResult(id=msg.id, workflow_id=msg.workflow_id, status=status,
                              output=output, error=error)


def _not_found(msg: Message, workflow_id: str) -> Error:
    return Error(id=msg.id, code="not_found", reason=f"no workflow {workflow_id!r}")


def load(path: str) -> tuple[set[str], list[tuple[str, list[tuple[int, float, dict[str, Any]]]]]]:
    """At start: every workflow id ever used, and the event streams of unfinished ones."""
    db = Database(path)
    try:
        return db.workflow_ids(), [(wf, db.events(wf)) for wf in db.unfinished()]
    finally:
        db.close()
