"""The client: submit workflows to Flow, inspect them, wait for them, watch the feed.

One DEALER socket talks to Flow's ROUTER. Every request carries a correlation
id and has a deadline: a Flow that does not answer raises :class:`FlowUnavailable`
instead of hanging, and the socket is then replaced (the "Lazy Pirate" pattern)
so that a request abandoned while Flow was down is not delivered later.
:meth:`Client.watch` follows the feed (see :mod:`plait.watch`).
"""

from __future__ import annotations

import importlib
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import zmq

from plait.client_errors import (
    FlowError,
    FlowUnavailable,
    NotFound,
    Refused,
    ReplayDiverged,
    ResultTimeout,
    error_from_reply,
    outcome_error,
    rejection_error,
)
from plait.errors import NonDeterminismError, PlaitError, PlanError, ProtocolError
from plait.protocol import codec
from plait.protocol.diff import AttrChange
from plait.protocol.messages import (
    Ack,
    AddSchedule,
    AwaitResult,
    CancelWorkflow,
    Error,
    GetGraph,
    GetHistory,
    GetStatus,
    GraphReply,
    HistoryReply,
    ListSchedules,
    Message,
    PauseWorkflow,
    Query,
    QueryReply,
    RemoveSchedule,
    RestartNode,
    ResumeWorkflow,
    RunInfo,
    ScheduleInfo,
    ScheduleList,
    SendSignal,
    SetAttrs,
    StatusReply,
    Submit,
    Submitted,
    WorkflowResult,
)
from plait.protocol.sockets import connect, tcp
from plait.run import Run
from plait.watch import TERMINAL, Watch

__all__ = [
    "DEFAULT_ADDRESS",
    "OVERLAP",
    "Client",
    "FlowError",
    "FlowUnavailable",
    "NotFound",
    "Refused",
    "ReplayDiverged",
    "ResultTimeout",
    "Run",
    "Watch",
    "error_from_reply",
    "feed_address",
    "outcome_error",
    "rejection_error",
]

DEFAULT_ADDRESS = "tcp://127.0.0.1:7100"
OVERLAP = ("skip", "queue", "cancel")  # what a cron tick does while the last run is live
_RETRY_PAUSE = 0.05  # seconds between asks for what Flow is about to commit
_M = TypeVar("_M", bound=Message)
_T = TypeVar("_T")


def feed_address(address: str) -> str:
    """Flow's feed is published on the port after its request port."""
    parts = urlsplit(address)
    try:
        port = parts.port
    except ValueError:  # not a number
        port = None
    if parts.scheme != "tcp" or port is None or not parts.hostname:
        raise ValueError(f"cannot derive the feed address of {address!r}: pass feed=...")
    return tcp(parts.hostname, port + 1)


_LAST_LOOK = 0.5  # seconds a result() past its timeout may still take to read an end


class Client:
    """Talks to one Flow. Usable from several threads (requests are serialised).

    ``address``: Flow's request socket (default: ``$PLAIT_FLOW``, else
    ``tcp://127.0.0.1:7100``); ``feed``: its PUB socket (default: the address's
    next port; ``$PLAIT_FEED`` unless the address names another Flow than
    ``$PLAIT_FLOW``, whose feed it is); ``timeout``:
    seconds to wait for any reply; ``max_message_size``: the largest request
    sent (Flow's ``--max-message-size``).
    """

    def __init__(self, address: str | None = None, *, feed: str | None = None,
                 timeout: float = 10.0, poll_interval: float = 1.0,
                 max_message_size: int = codec.DEFAULT_MAX_SIZE) -> None:
        self.address = address or os.environ.get("PLAIT_FLOW") or DEFAULT_ADDRESS
        self._feed = feed or (os.environ.get("PLAIT_FEED")
                              if address in (None, os.environ.get("PLAIT_FLOW")) else None)
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.max_message_size = max_message_size  # Flow's --max-message-size
        self._zmq = zmq.Context()
        self._lock = threading.RLock()
        self._socket: zmq.Socket[bytes] | None = None
        self._stash: dict[str, Message] = {}  # replies that arrived while waiting for another
        self._wanted: set[str] = set()
        self._watches: weakref.WeakSet[Watch] = weakref.WeakSet()

    @property
    def feed(self) -> str:
        return self._feed or feed_address(self.address)

    # --- lifecycle ------------------------------------------------------------

    def close(self) -> None:
        """Close the client and any watch still open on it (a watch iterated in
        another thread ends there, as if closed)."""
        watches = list(self._watches)
        for watch in watches:  # not under the lock: a watch may be in a request
            watch.close()
        # A watch iterated in another thread is woken at once, but may be in a request,
        # which is answered (or given up) within the client's timeout.
        deadline = time.monotonic() + self.timeout + 1.0
        for watch in watches:  # its thread closes its sockets: never two threads on one
            watch.closed.wait(max(deadline - time.monotonic(), 0))
        with self._lock:
            self._drop_socket()
            # destroy, not term: a watch left unfinished must not block the close.
            self._zmq.destroy(linger=0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the request/reply edge -----------------------------------------------

    def _sock(self) -> zmq.Socket[bytes]:
        if self._zmq.closed:
            raise PlaitError("this Client is closed")
        if self._socket is None:
            sock = self._zmq.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            connect(sock, self.address)
            self._socket = sock
        return self._socket

    def _drop_socket(self) -> None:
        # Forget queued requests: a Submit sent while Flow was down must not
        # surface minutes later after the caller was told it failed.
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        self._stash.clear()
        self._wanted.clear()

    def send(self, message: Message) -> None:
        """Send a request without waiting (its reply is kept for :meth:`receive`)."""
        frame = codec.encode(message)
        if len(frame) > self.max_message_size:
            # Refused here: Flow would answer too_large, or far over its limit ZeroMQ
            # would cut the connection and the request would pass for unanswered.
            raise ProtocolError("too_large", (
                f"{type(message).__name__} of {len(frame):,} bytes exceeds the "
                f"{self.max_message_size:,}-byte message limit (Flow's "
                "--max-message-size; if Flow's is higher, Client(max_message_size=...) "
                "or the CLI's --max-message-size)"))
        with self._lock:
            self._wanted.add(message.id)
            self._sock().send(frame)

    def receive(self, correlation: str, timeout: float) -> Message | None:
        """The reply to ``correlation``, or None after ``timeout`` seconds."""
        with self._lock:
            deadline = time.monotonic() + timeout
            while correlation not in self._stash:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or correlation not in self._wanted:
                    return None
                sock = self._sock()
                if sock.poll(int(remaining * 1000) + 1):
                    for frame in sock.recv_multipart():  # Flow may send several at once
                        self._file(frame)
            self._wanted.discard(correlation)
            return self._stash.pop(correlation)

    def _forget(self, correlation: str) -> None:
        """Nobody waits for this reply any more."""
        with self._lock:
            self._wanted.discard(correlation)
            self._stash.pop(correlation, None)

    def _file(self, frame: bytes) -> None:
        try:
            reply: Message = codec.decode(frame, max_size=codec.TRUSTED_MAX_SIZE)
        except ProtocolError as exc:
            # Flow answered, but not in a form this client reads (another protocol
            # version, say): the request fails saying so, not as "unreachable".
            correlation = codec.correlation_of(frame, max_size=codec.TRUSTED_MAX_SIZE)
            if correlation is None:
                return
            reply = Error(id=correlation, code=exc.code,
                          reason=f"Flow's reply could not be read: {exc.reason}")
        if reply.id in self._wanted:
            self._stash[reply.id] = reply

    def request(self, message: Message, expect: type[_M], timeout: float | None = None) -> _M:
        """Send ``message`` and return its reply; Flow's errors become exceptions."""
        wait = self.timeout if timeout is None else timeout
        with self._lock:
            self.send(message)
            reply = self.receive(message.id, wait)
            if reply is None:
                self._drop_socket()
                asked = type(message).__name__
                raise FlowUnavailable(
                    f"Flow at {self.address} did not answer {asked} within {wait:g} s "
                    "(is `plait flow` or `plait dev` running? set PLAIT_FLOW or --flow)")
        if isinstance(reply, Error):
            raise error_from_reply(reply)
        if not isinstance(reply, expect):
            got = type(reply).__name__
            raise ProtocolError("invalid", f"expected {expect.__name__}, got {got}")
        return reply

    # --- workflows ---------------------------------------------------------------

    def submit(self, target: Any, *args: Any, **kwargs: Any) -> Run:
        """Start a workflow: ``target`` is "module:task", a task function, a Graph,
        or "module:attr" naming a Graph; the rest are the root task's arguments."""
        return self.start(target, args, kwargs)

    def start(self, target: Any, args: Sequence[Any] = (),
              kwargs: Mapping[str, Any] | None = None, *,
              workflow_id: str | None = None) -> Run:
        """:meth:`submit` with explicit arguments and an optional workflow id."""
        name, root, diff = _registration()(target, tuple(args), dict(kwargs or {}))
        return self.submit_diff(name, root, diff.to_dict(), workflow_id=workflow_id)

    def submit_diff(self, name: str, root: str, diff: Mapping[str, Any], *,
                    workflow_id: str | None = None) -> Run:
        """Start a workflow from a registration diff already built (its dict form).

        A Submit Flow did not answer in time is sent once more, as it was: the
        workflow id is made here, not by Flow, so the retry cannot start the
        workflow twice. If the first one did start it (only its reply was lost),
        Flow answers the retry "id is taken", and the workflow's first event names
        this Submit: that is the workflow. An id taken by another Submit (an
        explicit ``workflow_id`` used before) stays an error."""
        wid = workflow_id or f"{name}-{secrets.token_hex(4)}"
        submit = Submit(workflow_id=wid, name=name, root=root, diff=dict(diff))
        try:
            reply = self.request(submit, Submitted)
        except FlowUnavailable:
            return self._submit_again(submit, wid)
        return Run(self, reply.workflow_id)

    def _submit_again(self, submit: Submit, wid: str) -> Run:
        """The same Submit once more, after one Flow did not answer in time.

        "Taken" may mean that the first one got there: if the workflow's first
        event names it, that is the workflow. Flow takes an id before it commits
        the workflow's first events, and gives it back if it refuses the
        registration: while the history is not found, the Submit is sent again,
        and answered as the first one was, or as the first one will be."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return Run(self, self.request(submit, Submitted).workflow_id)
            except FlowError as exc:
                if exc.code != "invalid" or f"{wid!r} is taken" not in exc.reason:
                    raise
                taken = exc
            try:
                first = self.history(wid, upto=1)
            except NotFound:
                if time.monotonic() >= deadline:
                    raise FlowUnavailable(
                        f"Flow took workflow id {wid!r} but has not recorded it "
                        f"within {self.timeout:g} s") from None
                time.sleep(_RETRY_PAUSE)  # a commit, or a refusal, on its way
                continue
            if first and first[0].get("request") == submit.id:
                return Run(self, wid)
            raise taken  # by another Submit (an explicit id used before)

    def run(self, workflow_id: str) -> Run:
        """A handle on an existing workflow (not checked until used)."""
        return Run(self, workflow_id)

    def runs(self, ended_since: float | None = None) -> list[RunInfo]:
        """Every workflow Flow knows; with ``ended_since``, those that ended at or
        after that time (Flow's clock: ``RunInfo.finished``)."""
        return list(self.request(GetStatus(ended_since=ended_since), StatusReply).runs)

    def run_info(self, workflow_id: str, *, timeout: float | None = None) -> RunInfo:
        runs = self.request(GetStatus(workflow_id=workflow_id), StatusReply, timeout).runs
        for info in runs:
            if info.workflow_id == workflow_id:
                return info
        raise NotFound("not_found", f"no workflow {workflow_id!r}")

    def graph(self, workflow_id: str, *, at: int | None = None,
              unfold: bool = False) -> GraphReply:
        return self.request(GetGraph(workflow_id=workflow_id, at=at, unfold=unfold), GraphReply)

    def history(self, workflow_id: str, *, upto: int | None = None) -> list[dict[str, Any]]:
        """The workflow's events, oldest first (with ``upto``: its first ``upto``)."""
        events = self.request(GetHistory(workflow_id=workflow_id, upto=upto),
                              HistoryReply).events
        return [dict(e, seq=e.get("seq", i)) for i, e in enumerate(events, start=1)]

    def cancel(self, workflow_id: str) -> str:
        """Cancel a workflow; its status after the cancel: "cancelled", or how it had
        already ended (cancelling an ended workflow changes nothing)."""
        self.request(CancelWorkflow(workflow_id=workflow_id), Ack)
        return str(self.run_info(workflow_id).status)  # committed before the Ack

    # --- operator controls (Run has the same, for its workflow) ----------------------

    def pause(self, workflow_id: str) -> None:
        self.control(PauseWorkflow(workflow_id=workflow_id))

    def resume(self, workflow_id: str) -> None:
        self.control(ResumeWorkflow(workflow_id=workflow_id))

    def restart(self, workflow_id: str, node: str) -> None:
        self.control(RestartNode(workflow_id=workflow_id, node=node))

    def signal(self, workflow_id: str, name: str, payload: Any = None) -> None:
        self.control(SendSignal(workflow_id=workflow_id, name=name, payload=payload))

    def query(self, workflow_id: str) -> QueryReply:
        """The workflow's latest ``ctx.set_state`` value and every node's latest."""
        return self.request(Query(workflow_id=workflow_id), QueryReply)

    def set_attrs(self, workflow_id: str, changes: Sequence[AttrChange]) -> None:
        """Apply cosmetic changes as one operator diff."""
        self.control(SetAttrs(workflow_id=workflow_id, changes=[c.to_dict() for c in changes]))

    def control(self, message: Message) -> None:
        """Send an operator's control; a refusal raises :class:`Refused` (whatever
        rule it broke: it is the operator's request that was refused, not a task)."""
        try:
            self.request(message, Ack)
        except (PlanError, NonDeterminismError) as exc:
            raise Refused("rejected", str(exc)) from exc
        except FlowError as exc:
            if exc.code != "rejected" or isinstance(exc, Refused):
                raise
            raise Refused(exc.code, exc.reason, exc.detail) from exc

    # --- cron schedules -------------------------------------------------------------------

    def schedules(self) -> list[ScheduleInfo]:
        """Every schedule, by name."""
        return list(self.request(ListSchedules(), ScheduleList).schedules)

    def add_schedule(self, name: str, cron: str, target: Any, *args: Any,
                     overlap: str = "skip", **kwargs: Any) -> ScheduleInfo:
        """Submit ``target(*args, **kwargs)`` on every tick of ``cron`` (five fields,
        UTC, or ``@hourly``...); replaces a schedule of the same name. ``overlap``
        says what a tick does while the schedule's last run is still live:
        ``skip`` it, ``queue`` it (one at most), or ``cancel`` the live run."""
        wf_name, root, diff = _registration()(target, tuple(args), dict(kwargs))
        label = target if isinstance(target, str) else wf_name
        return self.add_schedule_diff(name, cron, label, wf_name, root, diff.to_dict(),
                                      overlap=overlap)

    def add_schedule_diff(self, name: str, cron: str, target: str, wf_name: str, root: str,
                          diff: Mapping[str, Any], *, overlap: str = "skip") -> ScheduleInfo:
        """:meth:`add_schedule` from a registration diff already built (its dict form)."""
        if overlap not in OVERLAP:
            raise ValueError(f"overlap is one of {', '.join(OVERLAP)}, not {overlap!r}")
        info = ScheduleInfo(name=name, cron=cron, overlap=overlap, target=target)
        self.request(AddSchedule(schedule=info, submit=Submit(name=wf_name, root=root,
                                                              diff=dict(diff))), Ack)
        return next((s for s in self.schedules() if s.name == name), info)

    def remove_schedule(self, name: str) -> None:
        """Stop a schedule (its runs so far are not touched); ``NotFound`` if none."""
        self.request(RemoveSchedule(name=name), Ack)

    def await_result(self, workflow_id: str, timeout: float | None = None) -> WorkflowResult:
        """Block until the workflow finishes (or ``timeout`` passes).

        Flow answers ``AwaitResult`` when the workflow ends; meanwhile the client
        asks for its status every ``poll_interval`` seconds, which notices a dead
        Flow (:class:`FlowUnavailable`) and a Flow restart that forgot the wait.
        """
        deadline = None if timeout is None else time.monotonic() + timeout

        def late() -> ResultTimeout:
            return ResultTimeout(f"workflow {workflow_id} did not finish within {timeout:g} s")

        def within(ask: Callable[[float | None], _T]) -> _T:
            """``ask(timeout)``, a request bounded by what is left of the caller's
            timeout (a last look gets a moment of grace): each took Flow's whole
            timeout, so a stalled Flow held the caller twice that, then raised
            FlowUnavailable."""
            if deadline is None:
                return ask(None)
            budget = min(self.timeout, max(deadline - time.monotonic(), _LAST_LOOK))
            try:
                return ask(budget)
            except FlowUnavailable:
                if budget < self.timeout:
                    raise late() from None
                raise

        def ended() -> bool:
            return within(lambda t: self.run_info(workflow_id, timeout=t)).status in TERMINAL

        ask = AwaitResult(workflow_id=workflow_id)
        self.send(ask)
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    # Ended meanwhile, or timeout=0 on an ended workflow: its result.
                    if ended():
                        return within(lambda t: self.request(
                            AwaitResult(workflow_id=workflow_id), WorkflowResult, timeout=t))
                    raise late()
                pause = self.poll_interval if left is None else min(left, self.poll_interval)
                reply = self.receive(ask.id, pause)
                if isinstance(reply, Error) and reply.code == "unavailable":
                    # The workflow is being restored: ask again after a pause.
                    self._forget(ask.id)
                    time.sleep(pause)
                    ask = AwaitResult(workflow_id=workflow_id)
                    self.send(ask)
                    continue
                if isinstance(reply, Error):
                    raise error_from_reply(reply)
                if isinstance(reply, WorkflowResult):
                    return reply
                if ended() or ask.id not in self._wanted:
                    self._forget(ask.id)
                    ask = AwaitResult(workflow_id=workflow_id)  # answered at once if ended
                    self.send(ask)
        finally:
            self._forget(ask.id)  # its late answer is dropped, not kept for nobody

    # --- the feed -------------------------------------------------------------------

    def watch(self, workflow_id: str | None = None) -> Watch:
        """Feed events, as they happen, of one workflow (or of all).

        The subscription starts here, before the first ``next()``. For one
        workflow the first item is a snapshot, ``event = {"type": "snapshot",
        "graph": <view JSON, unfolded>}`` at the snapshot's ``seq``, and the
        iterator ends after the workflow's ``{"type": "workflow"}`` event. For
        all workflows the first items are snapshots of those still running, and
        it runs until closed; a workflow first seen mid-way gets a snapshot
        before its events. While the feed is quiet the client asks Flow for
        the status every ``poll_interval`` seconds: a dead Flow raises
        :class:`FlowUnavailable`, and an end the feed did not bring is taken
        from the history (for all workflows, also while the feed is busy: it
        then asks for the workflows that ended lately).
        """
        watch = Watch(self, workflow_id)
        self._watches.add(watch)
        return watch


def _registration() -> Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]:
    # Imported lazily: plait.graph belongs to the SDK, and a client that only
    # inspects workflows should not need it (nor the user's task modules).
    registration: Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]
    registration = importlib.import_module("plait.graph").registration
    return registration
