"""A worker process: runs one task attempt at a time for its supervisor.

``python -m plait.supervisor.worker --connect ENDPOINT --ident ID --import MODULE...``

The main thread runs task code: sync tasks directly, async tasks in a fresh
asyncio loop. A second thread, :class:`WorkerLink`, owns the DEALER socket to
the supervisor (a ZeroMQ socket belongs to one thread): it hands assignments to
the main thread, completes the futures of the Context's requests with Flow's
replies, and turns a CancelTask into a cancellation the task sees at its next
Context call or await. The worker exits when its supervisor goes away.

An ``Evict`` (the supervisor has no room to keep a waiting task, or the task
waits on a timer or a signal) makes the task's pending wait raise the private
:class:`~plait.replay.Evicted`: the task unwinds (its ``finally`` blocks run),
nothing more is reported for the attempt, and the worker says ``WorkerReady``
again. Flow re-assigns the attempt with its history when the wait is over.

The supervisor may send a busy worker its next attempt ahead of time: it waits
in the link's queue and starts the moment the current one ends. A ``Retract``
takes it back if it has not started (answered ``Retracted``), and a
``CancelTask`` for it ends it unstarted, with a cancelled ``Finish``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import queue
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import zmq

from plait import memory
from plait.context import Context
from plait.errors import (
    MessageTooLarge,
    NonDeterminismError,
    PlaitError,
    PlanError,
    PromiseViolation,
    ProtocolError,
    TaskFailed,
    WorkflowCancelled,
)
from plait.protocol import codec
from plait.protocol.messages import (
    Assign,
    CancelTask,
    Error,
    Evict,
    Finish,
    Message,
    Propose,
    Proposed,
    Resolved,
    Retract,
    Retracted,
    TaskHeartbeat,
    Wait,
    WorkerReady,
)
from plait.protocol.sockets import connect, waiting
from plait.replay import Evicted
from plait.supervisor.routing import attempt_of
from plait.task import (
    DEFAULT_RETRY,
    InvalidArguments,
    InvalidOutput,
    Retry,
    Task,
    UnknownTask,
    import_user_module,
    registered,
)

log = logging.getLogger("plait.worker")

# Errors that another attempt cannot fix: the task's own bug, the plan's verdict, or
# a message too big to travel (it would be as big again).
FATAL = (InvalidArguments, InvalidOutput, UnknownTask, PlanError, PromiseViolation,
         NonDeterminismError, WorkflowCancelled, TaskFailed, MessageTooLarge)
_PARENT_CHECK_MS = 500
# Heartbeats go out at most this often; a newer one replaces one not yet sent,
# and any other message first flushes it (so details are never lost or reordered).
_BEAT_SPACING = 0.25
# A task that ran this long (seconds) may have built big data; releasing its memory
# afterwards costs about a millisecond (a 10,000-item map's driver), ~1% of such a task.
_RELEASE_AFTER = 0.1


def error_dict(exc: BaseException, policy: Retry = DEFAULT_RETRY) -> dict[str, Any]:
    """The wire form of a task failure."""
    return {"type": type(exc).__name__, "message": _message(exc),
            "traceback": "".join(traceback.format_exception(exc)),
            "retryable": not isinstance(exc, FATAL) and policy.retryable(exc)}


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception as broken:  # noqa: BLE001 - a user's __str__: any error, named
        return f"<str() of the exception failed: {type(broken).__name__}: {broken}>"


class WorkerLink:
    """The worker's socket thread, and the Context's :class:`~plait.context.Transport`."""

    def __init__(self, endpoint: str, ident: str, parent: int | None = None,
                 max_frame: int = codec.DEFAULT_MAX_SIZE) -> None:
        self._endpoint = endpoint
        self._ident = ident.encode()
        self._max_frame = max_frame  # the largest frame its supervisor reads from it
        # Frames, encoded by the thread that sends them: one too big to be read is
        # refused there, where the task can be told.
        self._outbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Lock()
        # Attempts handed to the task thread, not started yet: the supervisor sends the
        # next one ahead while this one runs, and may take it back (Retract).
        self._queued: deque[Assign | None] = deque()
        self._handed = threading.Condition(self._lock)
        self._pending: dict[str, tuple[Propose | Wait, Future[Message]]] = {}
        self._current: tuple[str, str, int] | None = None
        self._cancelled = False
        self._evicted = False
        self._on_cancel: Callable[[], None] | None = None
        self._beat: TaskHeartbeat | None = None  # a heartbeat held back by the spacing
        self._beat_sent = 0.0
        self._parent = os.getppid() if parent is None else parent  # its supervisor or zygote
        self._thread = threading.Thread(target=self._run, name="plait-worker-link", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # --- called from the task thread -------------------------------------------------

    def send(self, message: Message) -> None:
        """Queue ``message`` for the supervisor. A Finish too big to be read is sent
        as the attempt's failure; anything else too big raises MessageTooLarge (a
        request's future holds it instead)."""
        self._put(message, self._encode(message))

    def _put(self, message: Message, frame: bytes) -> None:
        now = time.monotonic()
        with self._lock:
            if isinstance(message, TaskHeartbeat) and now - self._beat_sent < _BEAT_SPACING:
                self._beat = message
                return
            held, self._beat = self._beat, None
            if isinstance(message, TaskHeartbeat):
                self._beat_sent, held = now, None
            if held is not None:
                self._outbox.put(codec.encode(held))
            self._outbox.put(frame)
        os.write(self._wake_w, b"x")

    def request(self, message: Propose | Wait) -> Future[Message]:
        future: Future[Message] = Future()
        try:
            frame = self._encode(message)
        except MessageTooLarge as exc:
            future.set_exception(exc)  # the task's await raises it: nothing was sent
            return future
        with self._lock:
            if self._evicted:
                future.set_exception(Evicted())
                return future
            if self._cancelled:
                future.set_exception(self._cancel_error())
                return future
            self._pending[message.id] = (message, future)
        self._put(message, frame)
        return future

    def _encode(self, message: Message) -> bytes:
        try:
            frame = codec.encode(message)
        except (TypeError, ValueError) as exc:
            if not isinstance(message, Finish):
                raise  # the request's caller, the task, gets it at its await
            # Raised in the worker's loop it ended the process: every retry then
            # killed another worker, and nobody learnt why.
            return codec.encode(_finish(message, ok=False, error={
                "type": "InvalidOutput", "retryable": False, "traceback": "",
                "message": f"the attempt's report cannot be sent: {exc}"}))
        if len(frame) <= self._max_frame:
            return frame
        what = (f"{type(message).__name__} of {len(frame):,} bytes exceeds the "
                f"{self._max_frame:,}-byte message limit")
        if not isinstance(message, Finish):
            # The spawns and recorded values it carried are taken from the Context:
            # the attempt cannot go on without them, and fails (not retried).
            raise MessageTooLarge(f"{what}: propose fewer or smaller children at a time")
        return self._finish_that_fits(message, what)

    def _finish_that_fits(self, finish: Finish, what: str) -> bytes:
        """A Finish cannot travel: it goes as the attempt's failure, rather than as a
        frame the supervisor drops while the workflow hangs. A failure keeps its type
        and retryability with a shortened message; a result says why it failed."""
        error = finish.error or {}
        if not finish.ok and isinstance(error.get("message"), str):
            keep = min(2000, self._max_frame // 4)
            shortened = {**error, "traceback": "",
                         "message": f"{error['message'][:keep]} [shortened: {what}]"}
            frame = codec.encode(_finish(finish, ok=False, error=shortened))
            if len(frame) <= self._max_frame:
                return frame
        cause = ("its output and its last proposals" if finish.ok
                 else "its error and its last proposals")
        return codec.encode(_finish(finish, ok=False, error={
            "type": "MessageTooLarge", "retryable": False,
            "message": f"{what} ({cause}): return a smaller result (store a big one "
                       "elsewhere and return a reference to it) or spawn fewer children "
                       "at the end"}))

    def hand(self, assign: Assign | None) -> None:
        """Queue an attempt for the task thread (None: stop serving)."""
        with self._lock:
            self._queued.append(assign)
            self._handed.notify()

    def take(self) -> Assign | None:
        """The next attempt, once there is one (None: stop serving)."""
        with self._lock:
            self._handed.wait_for(lambda: bool(self._queued))
            assign = self._queued.popleft()
            if assign is not None:  # current from now: a CancelTask from now on is its
                self._current = attempt_of(assign)
                self._cancelled = self._evicted = False
            return assign

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def evicted(self) -> bool:
        return self._evicted

    def begin(self, assign: Assign, on_cancel: Callable[[], None] | None = None) -> None:
        key = attempt_of(assign)
        with self._lock:
            if self._current != key:  # not taken through take(): a fresh start
                self._current, self._cancelled, self._evicted = key, False, False
            self._on_cancel = on_cancel

    def set_on_cancel(self, on_cancel: Callable[[], None] | None) -> None:
        """Install the hook that cancels the running task; called at once if the
        attempt's CancelTask came first (while its inputs were decoded, say)."""
        with self._lock:
            self._on_cancel = on_cancel
            late = self._cancelled
        if late and on_cancel is not None:
            on_cancel()

    def end(self) -> None:
        with self._lock:
            self._current, self._on_cancel = None, None
            self._pending.clear()

    def _cancel_error(self, attempt: tuple[str, str, int] | None = None) -> WorkflowCancelled:
        wf, node, _ = attempt or self._current or ("?", "?", 0)
        return WorkflowCancelled(f"workflow {wf} was cancelled (node {node})")

    # --- the socket thread ----------------------------------------------------------------

    def _run(self) -> None:
        sock: zmq.Socket[bytes] | None = None
        code = 1  # unless the supervisor went away: then this worker's work is done
        try:
            zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
            sock = zctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, self._ident)
            sock.setsockopt(zmq.LINGER, 1000)
            connect(sock, self._endpoint)
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(self._wake_r, zmq.POLLIN)
            while os.getppid() == self._parent:
                events = dict(poller.poll(self._poll_ms()))
                if self._wake_r in events:
                    os.read(self._wake_r, 4096)
                if sock in events:
                    self._receive(sock)  # may queue answers (Retracted): sent just below
                self._release_beat()
                while not self._outbox.empty():
                    sock.send(self._outbox.get())
            log.warning("worker %d: supervisor is gone; exiting", os.getpid())
            code = 0
        except Exception:  # the process edge: without its link a worker is useless
            log.exception("worker %d: link failed; exiting", os.getpid())
        finally:
            if sock is not None:
                sock.close(linger=0)
            os._exit(code)  # the main thread may be deep in task code: do not wait for it

    def _poll_ms(self) -> int:
        with self._lock:
            if self._beat is None:
                return _PARENT_CHECK_MS
            due = self._beat_sent + _BEAT_SPACING - time.monotonic()
        return max(int(due * 1000) + 1, 0)

    def _release_beat(self) -> None:
        """Queue the held-back heartbeat once the spacing has passed."""
        now = time.monotonic()
        with self._lock:
            if self._beat is not None and now - self._beat_sent >= _BEAT_SPACING:
                self._outbox.put(codec.encode(self._beat))
                self._beat, self._beat_sent = None, now

    def _receive(self, sock: zmq.Socket[bytes]) -> None:
        while waiting(sock):
            frame = sock.recv(zmq.NOBLOCK)
            try:
                self._dispatch(codec.decode(frame, max_size=codec.TRUSTED_MAX_SIZE))
            except ProtocolError as exc:
                log.error("worker %d: bad frame from supervisor: %s", os.getpid(), exc)

    def _dispatch(self, msg: Message) -> None:
        if isinstance(msg, Assign):
            self.hand(msg)
        elif isinstance(msg, Retract):
            self._retract(msg)
        elif isinstance(msg, CancelTask):
            self._cancel(msg)
        elif isinstance(msg, Evict):
            self._evict(msg)
        elif isinstance(msg, Proposed | Resolved | Error):
            self._reply(msg)
        else:
            log.warning("worker %d: unexpected %s", os.getpid(), type(msg).__name__)

    def _reply(self, msg: Message) -> None:
        # By correlation id only: a late answer to an ended attempt's request (re-sent
        # by the supervisor after a Flow restart, say) names the same node as the
        # request of whatever attempt this worker runs now, possibly of another run.
        with self._lock:
            entry = self._pending.pop(msg.id, None)
        future = entry[1] if entry is not None else None
        if future is None:
            log.warning("worker %d: dropped a late %s", os.getpid(), type(msg).__name__)
        elif not future.done():
            future.set_result(msg)

    def _unqueue(self, key: tuple[str, str, int]) -> Assign | None:
        """Remove a queued attempt (the lock held); None if it is not queued (any more)."""
        found = next((a for a in self._queued
                      if a is not None and attempt_of(a) == key), None)
        if found is not None:
            self._queued.remove(found)
        return found

    def _retract(self, msg: Retract) -> None:
        # Through the outbox, under the lock that the task thread's sends take too:
        # the answer follows whatever the task thread sent before taking the attempt.
        with self._lock:
            found = self._unqueue(attempt_of(msg))
            self._outbox.put(codec.encode(Retracted(workflow_id=msg.workflow_id, node=msg.node,
                                                    attempt=msg.attempt, ok=found is not None)))

    def _cancel(self, msg: CancelTask) -> None:
        with self._lock:
            key = attempt_of(msg)
            if self._current != key:
                queued = self._unqueue(key)
                if queued is not None:  # never started: it ends here, cancelled
                    self._outbox.put(codec.encode(_finish(
                        queued, ok=False, error=error_dict(self._cancel_error(key)))))
                return
            self._cancelled = True
            pending = [future for _, future in self._pending.values()]
            self._pending = {}
            on_cancel = self._on_cancel
        for future in pending:
            if not future.done():
                future.set_exception(self._cancel_error())
        if on_cancel is not None:
            on_cancel()


    def _evict(self, msg: Evict) -> None:
        with self._lock:
            if self._current != attempt_of(msg):
                return
            self._evicted = True
            pending = [future for _, future in self._pending.values()]
            self._pending = {}
        for future in pending:
            if not future.done():
                future.set_exception(Evicted())


# --- running one attempt ----------------------------------------------------------------------


async def _run_async(t: Task[Any, Any], ctx: Context, args: list[Any], kwargs: dict[str, Any],
                     link: WorkerLink) -> Any:
    loop = asyncio.get_running_loop()
    job = asyncio.ensure_future(t.fn(ctx, *args, **kwargs))
    link.set_on_cancel(lambda: _call_soon(loop, job.cancel))
    try:
        return await job
    except asyncio.CancelledError:
        if link.cancelled:
            raise WorkflowCancelled(f"workflow {ctx.workflow_id} was cancelled "
                                    f"(node {ctx.node_id})") from None
        raise


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], Any]) -> None:
    # A cancel may come after the task's loop has closed (the attempt is flushing its
    # last proposals): nothing is left to cancel, and the link thread must live on.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn)


def _finish(of: Assign | Finish, **fields: Any) -> Finish:
    """A Finish of the attempt ``of`` names."""
    return Finish(workflow_id=of.workflow_id, node=of.node, attempt=of.attempt, **fields)


def run_attempt(assign: Assign, served: Mapping[str, Task[Any, Any]],
                link: WorkerLink) -> Finish | None:
    """Run one attempt until it ends (its Finish) or is evicted (None); never raises."""
    t = served.get(assign.task)
    if t is None:
        exc = UnknownTask(f"task {assign.task!r} is not served by this worker "
                          f"(serves {sorted(served)})")
        return _finish(assign, ok=False, error=error_dict(exc))
    link.begin(assign)
    ctx = Context(workflow_id=assign.workflow_id, node_id=assign.node, transport=link,
                  attempt=assign.attempt, idempotency_key=assign.idempotency_key,
                  history=assign.history)
    try:
        finish = _execute(assign, t, ctx, link)
    except Evicted:
        return None
    finally:
        link.end()
    # A task that swallowed its eviction ran on for nothing: Flow resumes it anyway.
    return None if link.evicted else finish


def _execute(assign: Assign, t: Task[Any, Any], ctx: Context, link: WorkerLink) -> Finish:
    try:
        args, kwargs = t.decode_inputs(assign.inputs)
        if t.is_async:
            value = asyncio.run(_run_async(t, ctx, args, kwargs, link))
        else:
            value = t.fn(ctx, *args, **kwargs)
        output = t.encode_output(value)
        if assign.history is not None:
            ctx.flush()
        diff = ctx.take_diff()
        return _finish(assign, ok=True, output=output, diff=diff.to_dict() if diff else None,
                       recorded=ctx.take_recorded(), version=t.version or "")
    except (Evicted, KeyboardInterrupt):
        raise  # not the task's failure: the attempt resumes elsewhere / the worker stops
    except BaseException as exc:  # noqa: BLE001 - the task's failure is data for Flow
        # A BaseException too (a CancelledError plait did not cause, a SystemExit):
        # it is the task's outcome, under its retry policy, not a dead worker's.
        # Unsent proposals of a failed attempt are dropped: a retry proposes them again.
        return _finish(assign, ok=False, error=error_dict(exc, t.policy()),
                       recorded=ctx.take_recorded())


def _import(modules: Sequence[str]) -> dict[str, Task[Any, Any]]:
    for name in modules:
        import_user_module(name)
    return {t.name: t for t in registered(modules)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plait.supervisor.worker")
    parser.add_argument("--connect", required=True, help="the supervisor's worker endpoint")
    parser.add_argument("--ident", required=True, help="this worker's socket identity")
    parser.add_argument("--import", dest="imports", action="append", default=[],
                        metavar="MODULE", help="a module whose tasks this worker runs")
    parser.add_argument("--max-frame-size", type=int, default=codec.DEFAULT_MAX_SIZE,
                        metavar="BYTES", help="the largest message sent (what the "
                        "supervisor reads)")
    parent = os.getppid()  # before the imports: the parent may die while they run
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    memory.tune_gc()  # every worker, forked or spawned
    try:
        served = _import(opts.imports)
    except PlaitError as exc:
        print(f"plait worker: cannot import task modules: {exc}", file=sys.stderr)
        return 3
    link = WorkerLink(opts.connect, opts.ident, parent, opts.max_frame_size)
    link.start()
    link.send(WorkerReady(pid=os.getpid()))
    serve(link, served)
    return 0


def serve(link: WorkerLink, served: Mapping[str, Task[Any, Any]]) -> None:
    """Run the attempts the link hands over, one at a time, until it hands None."""
    while (assign := link.take()) is not None:
        started = time.monotonic()
        finish = run_attempt(assign, served, link)
        # An evicted attempt reports nothing; the supervisor learns the worker is free.
        link.send(finish if finish is not None else WorkerReady(pid=os.getpid()))
        if time.monotonic() - started >= _RELEASE_AFTER:
            del assign, finish
            memory.release()  # what a long task built is garbage now: give the pages back


if __name__ == "__main__":
    sys.exit(main())
