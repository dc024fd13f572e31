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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import zmq

from plait.errors import (
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
    Submit,
    Submitted,
    WorkflowResult,
)
from plait.watch import TERMINAL, Watch

__all__ = [
    "DEFAULT_ADDRESS",
    "Client",
    "FlowError",
    "FlowUnavailable",
    "NotFound",
    "ResultTimeout",
    "Run",
    "Watch",
    "feed_address",
]

DEFAULT_ADDRESS = "tcp://127.0.0.1:7100"
_M = TypeVar("_M", bound=Message)


class FlowUnavailable(PlaitError):
    """Flow did not answer within the client's timeout (down, or wrong address)."""

    code = "unavailable"


class FlowError(PlaitError):
    """Flow answered a request with an error (``code`` is the wire's stable code)."""

    def __init__(self, code: str, reason: str, detail: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.detail = dict(detail or {})


class NotFound(FlowError):
    """No such workflow (or node) in Flow."""


class ResultTimeout(PlaitError, TimeoutError):
    """``Run.result(timeout=...)`` expired before the workflow finished."""

    code = "timeout"


def feed_address(address: str) -> str:
    """Flow's feed is published on the port after its request port."""
    parts = urlsplit(address)
    if parts.scheme != "tcp" or parts.port is None:
        raise ValueError(f"cannot derive the feed address of {address!r}: pass feed=...")
    return f"tcp://{parts.hostname}:{parts.port + 1}"


def error_from_reply(error: Error) -> PlaitError:
    """The exception a Flow error reply means for the caller."""
    if error.code == "not_found":
        return NotFound(error.code, error.reason, error.detail)
    if error.code == "rejected" and error.detail.get("kind"):
        return rejection_error(error.detail)
    if error.code in {"malformed", "too_large", "unknown_type", "bad_version"}:
        return ProtocolError(error.code, error.reason)
    return FlowError(error.code, error.reason, error.detail)


def rejection_error(rejection: Mapping[str, Any]) -> PlaitError:
    """A rejection dict (``Rejection.to_dict()``) as the matching exception."""
    reason = str(rejection.get("reason") or rejection.get("message") or "rejected")
    kind = rejection.get("kind", "violation")
    if kind == "plan":
        return PlanError(reason)
    if kind == "nondeterminism":
        return NonDeterminismError(reason)
    violation = PromiseViolation(
        str(rejection.get("message") or reason), promise=str(rejection.get("promise") or ""),
        owner=rejection.get("owner"), proposer=rejection.get("proposer"),
        diff=dict(rejection.get("diff") or {}),
    )
    violation.reason = reason  # str() is the whole story; .reason just the broken rule
    return violation


def outcome_error(result: WorkflowResult) -> PlaitError:
    """Why a finished workflow has no result, as the exception ``Run.result`` raises."""
    error = dict(result.error or {})
    message = str(error.get("message") or error.get("reason") or result.status)
    if result.status == "violated":
        inner = error.get("rejection")
        return rejection_error({"kind": "violation", **error, **(inner or {})})
    if result.status == "cancelled":
        return WorkflowCancelled(f"workflow {result.workflow_id} was cancelled")
    node = error.get("node")
    where = f" in {node}" if node else ""
    return TaskFailed(
        f"workflow {result.workflow_id} failed{where}: {error.get('type', 'Error')}: {message}",
        node=node, attempts=int(error.get("attempt") or error.get("attempts") or 0),
        cause=error.get("type"),
    )


class Run:
    """A handle on one submitted workflow."""

    def __init__(self, client: Client, workflow_id: str) -> None:
        self.client = client
        self.id = workflow_id

    def __repr__(self) -> str:
        return f"Run({self.id!r})"

    def result(self, timeout: float | None = None) -> Any:
        """The workflow's output once it succeeded; raises ``TaskFailed``,
        ``PromiseViolation`` or ``WorkflowCancelled`` when it did not, and
        :class:`ResultTimeout` if ``timeout`` seconds pass first."""
        finished = self.wait(timeout)
        if finished.status == "succeeded":
            return finished.output
        raise outcome_error(finished)

    def wait(self, timeout: float | None = None) -> WorkflowResult:
        """The finished workflow's result message, whatever its status."""
        return self.client.await_result(self.id, timeout)

    def info(self) -> RunInfo:
        return self.client.run_info(self.id)

    def status(self) -> str:
        """One of running, paused, succeeded, failed, cancelled, violated."""
        return self.info().status

    def graph(self, at: int | None = None, *, unfold: bool = False) -> dict[str, Any]:
        """The as-of-now view as its JSON document (or as of sequence number ``at``)."""
        return self.client.graph(self.id, at=at, unfold=unfold).graph

    def history(self) -> list[dict[str, Any]]:
        """The workflow's event log, oldest first."""
        return self.client.history(self.id)

    def cancel(self) -> None:
        self.client.cancel(self.id)


class Client:
    """Talks to one Flow. Usable from several threads (requests are serialised).

    ``address``: Flow's request socket (default: ``$PLAIT_FLOW``, else
    ``tcp://127.0.0.1:7100``); ``feed``: its PUB socket (default: ``$PLAIT_FEED``,
    else the next port); ``timeout``: seconds to wait for any reply.
    """

    def __init__(self, address: str | None = None, *, feed: str | None = None,
                 timeout: float = 10.0, poll_interval: float = 1.0) -> None:
        self.address = address or os.environ.get("PLAIT_FLOW") or DEFAULT_ADDRESS
        self._feed = feed or os.environ.get("PLAIT_FEED") or None
        self.timeout = timeout
        self.poll_interval = poll_interval
        self._zmq = zmq.Context()
        self._lock = threading.RLock()
        self._socket: zmq.Socket[bytes] | None = None
        self._stash: dict[str, Message] = {}  # replies that arrived while waiting for another
        self._wanted: set[str] = set()

    @property
    def feed(self) -> str:
        return self._feed or feed_address(self.address)

    # --- lifecycle ------------------------------------------------------------

    def close(self) -> None:
        """Close the client and any watch still open on it."""
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
            sock.connect(self.address)
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
        with self._lock:
            self._wanted.add(message.id)
            self._sock().send(codec.encode(message))

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
                    self._file(sock.recv_multipart()[-1])
            self._wanted.discard(correlation)
            return self._stash.pop(correlation)

    def _file(self, frame: bytes) -> None:
        try:
            reply = codec.decode(frame)
        except ProtocolError:
            return  # not a reply we can read; the request it answers will time out
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
        """Start a workflow from a registration diff already built (its dict form)."""
        # The id is made here, not by Flow, so a Submit retried after a timeout
        # cannot start the same workflow twice.
        wid = workflow_id or f"{name}-{secrets.token_hex(4)}"
        reply = self.request(
            Submit(workflow_id=wid, name=name, root=root, diff=dict(diff)), Submitted)
        return Run(self, reply.workflow_id)

    def run(self, workflow_id: str) -> Run:
        """A handle on an existing workflow (not checked until used)."""
        return Run(self, workflow_id)

    def runs(self) -> list[RunInfo]:
        """Every workflow Flow knows."""
        return list(self.request(GetStatus(), StatusReply).runs)

    def run_info(self, workflow_id: str) -> RunInfo:
        runs = self.request(GetStatus(workflow_id=workflow_id), StatusReply).runs
        for info in runs:
            if info.workflow_id == workflow_id:
                return info
        raise NotFound("not_found", f"no workflow {workflow_id!r}")

    def graph(self, workflow_id: str, *, at: int | None = None,
              unfold: bool = False) -> GraphReply:
        return self.request(GetGraph(workflow_id=workflow_id, at=at, unfold=unfold), GraphReply)

    def history(self, workflow_id: str) -> list[dict[str, Any]]:
        events = self.request(GetHistory(workflow_id=workflow_id), HistoryReply).events
        return [dict(e, seq=e.get("seq", i)) for i, e in enumerate(events, start=1)]

    def cancel(self, workflow_id: str) -> None:
        self.request(CancelWorkflow(workflow_id=workflow_id), Ack)

    def await_result(self, workflow_id: str, timeout: float | None = None) -> WorkflowResult:
        """Block until the workflow finishes (or ``timeout`` passes).

        Flow answers ``AwaitResult`` when the workflow ends; meanwhile the client
        asks for its status every ``poll_interval`` seconds, which notices a dead
        Flow (:class:`FlowUnavailable`) and a Flow restart that forgot the wait.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        ask = AwaitResult(workflow_id=workflow_id)
        self.send(ask)
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ResultTimeout(f"workflow {workflow_id} did not finish within {timeout:g} s")
            reply = self.receive(ask.id, self.poll_interval if left is None
                                 else min(left, self.poll_interval))
            if isinstance(reply, Error):
                raise error_from_reply(reply)
            if isinstance(reply, WorkflowResult):
                return reply
            if self.run_info(workflow_id).status in TERMINAL or ask.id not in self._wanted:
                ask = AwaitResult(workflow_id=workflow_id)  # answered at once if it has ended
                self.send(ask)

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
        from the history.
        """
        return Watch(self, workflow_id)


def _registration() -> Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]:
    # Imported lazily: plait.graph belongs to the SDK, and a client that only
    # inspects workflows should not need it (nor the user's task modules).
    registration: Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]
    registration = importlib.import_module("plait.graph").registration
    return registration
