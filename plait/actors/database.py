"""Flow's SQLite database: the schema, the one transaction that writes, the queries.

- ``events``: every workflow's stream, the truth (see :mod:`history`);
- ``workflows``: a projection of the events, for queries only (status, result,
  node count). Nodes are not projected: every query about them folds the events,
  so a row per node and per state change (an earlier version's ``nodes`` table)
  was written for nobody, at 7 µs of the Store's CPU per task of a map;
- ``schedules``: cron schedules (their stored Submit and where they stand);
- ``cache``: successful results of ``cache=True`` tasks by (task, version, inputs);
- ``tasks``: what supervisors last said of each task (timeouts, retry policy), read
  back at start for the workflows restored before any supervisor is back.

:meth:`Database.append` writes events, their projection, schedule changes,
cache entries and task metadata in one transaction. A :class:`Database` is used
by one thread: a :class:`DatabaseActor` (the Store, the Reader) opens its own on
its thread.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any

import pykka
import zmq

from plait.actors.gateway import Outbox
from plait.actors.history import ENDED
from plait.actors.mail import CacheEntry, ScheduleChange, StoredEvent
from plait.errors import DatabaseInUse
from plait.protocol.codec import pack, unpack
from plait.protocol.messages import RunInfo

__all__ = ["Database", "DatabaseActor", "DatabaseLock"]

# ``events`` is a rowid table, so every insert lands at the right edge of its B-tree;
# the (wf, seq) key is a separate index. Keyed by (wf, seq) itself (WITHOUT ROWID),
# a workflow whose id sorts before an earlier one's inserted each event in the middle
# of the table, next to that workflow's rows (a big map's diff is megabytes): five
# times the CPU per event, a third of Flow's per-task time on a 10,000-task map. A
# database created with that layout keeps it, and works as before.
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    wf TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, type TEXT NOT NULL,
    body BLOB NOT NULL, UNIQUE (wf, seq));
CREATE TABLE IF NOT EXISTS workflows (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, root TEXT NOT NULL, status TEXT NOT NULL,
    created REAL NOT NULL, finished REAL, nodes INTEGER NOT NULL DEFAULT 0,
    output BLOB, error BLOB);
CREATE INDEX IF NOT EXISTS workflows_status ON workflows (status);
CREATE INDEX IF NOT EXISTS workflows_finished ON workflows (finished);
CREATE TABLE IF NOT EXISTS schedules (name TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (name TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS cache (
    key TEXT PRIMARY KEY, task TEXT NOT NULL, version TEXT NOT NULL, output BLOB,
    wf TEXT NOT NULL, node TEXT NOT NULL, ts REAL NOT NULL);
"""

_NO_LIMIT = sys.maxsize  # stored blobs were written by us: no size limit on reading them
_STATUS = {"paused": "paused", "resumed": "running"}
_PROJECTED = frozenset({"submitted", "diff", "workflow", "restart", *_STATUS})


class DatabaseLock:
    """Flow is its database's only writer. A second Flow on the same file would
    restore and run every unfinished workflow again, and write the event numbers
    the first one writes (a UNIQUE violation, fatal to whichever commits second).
    An exclusive ``flock`` on ``<db>.lock``, which the kernel drops when the
    process dies, keeps it out; the file names the pid that holds it."""

    def __init__(self, db: str) -> None:
        self.path = f"{db}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Raises DatabaseInUse if another Flow (in any process) holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DatabaseInUse(
                f"database {self.path[:-5]} is in use by another Flow (pid {holder}): "
                "stop it, or give this one another database") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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

    def append(self, events: Sequence[StoredEvent], schedules: Sequence[ScheduleChange] = (),
               cache: Sequence[CacheEntry] = (), tasks: Sequence[dict[str, Any]] = ()) -> None:
        """Write events and their projection, schedules, cache entries and task
        metadata in one transaction."""
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.executemany(
                "INSERT INTO events (wf, seq, ts, type, body) VALUES (?, ?, ?, ?, ?)",
                [(e.workflow_id, e.seq, e.ts, e.event["type"], pack(dict(e.event)))
                 for e in events])
            for e in events:
                if e.event["type"] in _PROJECTED:  # each statement is a GIL round trip
                    self._project(cur, e)
            self._schedules(cur, schedules)
            if cache:  # each statement is a GIL round trip: skip the empty ones
                cur.executemany(
                    "INSERT OR IGNORE INTO cache (key, task, version, output, wf, node, ts) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(c.key, c.task, c.version, pack(c.output), c.workflow_id, c.node, c.ts)
                     for c in cache])
            if tasks:
                cur.executemany("INSERT OR REPLACE INTO tasks (name, body) VALUES (?, ?)",
                                [(t["name"], pack(dict(t))) for t in tasks])
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    @staticmethod
    def _schedules(cur: sqlite3.Cursor, changes: Sequence[ScheduleChange]) -> None:
        for change in changes:
            if change.body is None:
                cur.execute("DELETE FROM schedules WHERE name = ?", (change.name,))
            else:
                cur.execute("INSERT OR REPLACE INTO schedules (name, body) VALUES (?, ?)",
                            (change.name, pack(dict(change.body))))

    @staticmethod
    def _project(cur: sqlite3.Cursor, e: StoredEvent) -> None:
        ev, wf = e.event, e.workflow_id
        kind = ev["type"]
        if kind == "submitted":
            cur.execute("INSERT INTO workflows (id, name, root, status, created) "
                        "VALUES (?, ?, ?, 'running', ?)", (wf, ev["name"], ev["root"], e.ts))
        elif kind == "diff":
            if e.nodes is not None:  # re-proposed nodes are not new: the plan counts
                cur.execute("UPDATE workflows SET nodes = ? WHERE id = ?", (e.nodes, wf))
        elif kind == "workflow":
            cur.execute("UPDATE workflows SET status = ?, finished = ?, output = ?, error = ? "
                        "WHERE id = ?", (ev["status"], e.ts, pack(ev.get("output")),
                                         pack(ev.get("error")), wf))
        elif kind in _STATUS:
            cur.execute("UPDATE workflows SET status = ? WHERE id = ?", (_STATUS[kind], wf))
        elif kind == "restart":  # an ended workflow runs again; a live one stays as it is
            cur.execute("UPDATE workflows SET status = 'running', finished = NULL, "
                        "output = NULL, error = NULL WHERE id = ? AND status IN (?, ?, ?, ?)",
                        (wf, *sorted(ENDED)))

    # --- reading --------------------------------------------------------------

    def workflow_ids(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT id FROM workflows")}

    def unfinished(self) -> list[str]:
        rows = self.conn.execute(
            "SELECT id FROM workflows WHERE status NOT IN (?, ?, ?, ?) ORDER BY created",
            tuple(sorted(ENDED)))
        return [row[0] for row in rows]

    def events(self, workflow_id: str, upto: int | None = None,
               kind: str | None = None) -> list[tuple[int, float, dict[str, Any]]]:
        query = "SELECT seq, ts, body FROM events WHERE wf = ? AND seq <= ?"
        args: tuple[Any, ...] = (workflow_id, _NO_LIMIT if upto is None else upto)
        if kind is not None:
            query += " AND type = ?"
            args += (kind,)
        rows = self.conn.execute(query + " ORDER BY seq", args)
        return [(seq, ts, unpack(body, max_size=_NO_LIMIT)) for seq, ts, body in rows]

    def runs(self, workflow_id: str | None = None,
             ended_since: float | None = None) -> list[RunInfo]:
        query = "SELECT id, name, status, created, finished, nodes FROM workflows"
        if workflow_id is not None:  # "" names no workflow, not every one
            rows = self.conn.execute(query + " WHERE id = ?", (workflow_id,))
        elif ended_since is not None:
            rows = self.conn.execute(query + " WHERE finished >= ? ORDER BY finished",
                                     (ended_since,))
        else:
            rows = self.conn.execute(query + " ORDER BY created")
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

    def tasks(self) -> list[dict[str, Any]]:
        """What supervisors last said of each task (TaskInfo dumps)."""
        rows = self.conn.execute("SELECT body FROM tasks ORDER BY name")
        return [unpack(body, max_size=_NO_LIMIT) for (body,) in rows]

    def schedules(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT body FROM schedules ORDER BY name")
        return [unpack(body, max_size=_NO_LIMIT) for (body,) in rows]

    def cached(self, key: str) -> tuple[bool, Any]:
        """(found, output) of a cache entry."""
        row = self.conn.execute("SELECT output FROM cache WHERE key = ?", (key,)).fetchone()
        if row is None:
            return False, None
        return True, unpack(row[0], max_size=_NO_LIMIT)


class DatabaseActor(pykka.ThreadingActor):
    """An actor with a database connection and an Outbox of its own, both opened
    on the actor's thread when it starts and closed when it stops."""

    db: Database
    outbox: Outbox

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

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        # pykka skips on_stop for a failed actor, and a socket left open would hang
        # Flow's context at stop for ever.
        self.on_stop()
