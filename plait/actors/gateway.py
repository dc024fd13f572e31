"""The Gateway: Flow's ROUTER socket, its only door.

One thread owns the ROUTER (clients and supervisors connect DEALERs) and an
inproc PULL through which the other actors queue outbound frames, each from an
:class:`Outbox` (a PUSH socket) created in its own thread. Every inbound frame
is decoded and validated here; anything malformed, oversized, of an unknown
type or unexpected at Flow gets an :class:`Error` with a stable code and is
counted, and the loop goes on. Valid messages are routed to the actor that
owns their subject: the workflow's PlanKeeper while it is live, else the
Reader; Hello and Credit to Membership and the Dispatcher.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgpack
import pykka
import zmq

from plait.actors.dispatcher import Dispatcher
from plait.actors.mail import LATE, Join, Request, Supply, Write
from plait.actors.registry import Catalog, Counters, Registry, Sessions, safe_tell
from plait.errors import ProtocolError
from plait.protocol.codec import ACCEPTED_DEPTH, correlation_of, decode, encode, error_reply
from plait.protocol.messages import (
    Ack,
    AddSchedule,
    AwaitResult,
    CancelWorkflow,
    Credit,
    Error,
    Finish,
    GetGraph,
    GetHistory,
    GetStatus,
    Heartbeat,
    Hello,
    ListSchedules,
    Message,
    PauseWorkflow,
    Propose,
    Query,
    RemoveSchedule,
    RestartNode,
    ResumeWorkflow,
    SendSignal,
    SetAttrs,
    SetState,
    Submit,
    TaskHeartbeat,
    Wait,
    Welcome,
)
from plait.protocol.sockets import bind, waiting

__all__ = ["Gateway", "Outbox"]

log = logging.getLogger(__name__)

# Requests about one workflow: its keeper while it is live, else the Reader.
TO_WORKFLOW = (Propose, Wait, Finish, AwaitResult, CancelWorkflow, TaskHeartbeat, SetState,
               PauseWorkflow, ResumeWorkflow, RestartNode, SetAttrs, SendSignal, Query)
TO_SCHEDULER = (AddSchedule, RemoveSchedule, ListSchedules)

POLL_MS = 100  # how often the loop looks at its stop flag when idle
BURST = 256  # frames taken from one socket before looking at the other
MAX_ID = 200  # longest workflow id Flow accepts


class Outbox:
    """A PUSH socket to the Gateway, owned by one actor thread.

    Sends never block: the queue is unbounded while the Gateway drains it, and
    once the Gateway has closed (Flow is stopping) a PUSH socket without a peer
    would block forever, so what cannot be queued then is dropped."""

    def __init__(self, zctx: zmq.Context[Any], address: str) -> None:
        self.sock = zctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, 0)  # never block an actor: the gateway drains
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.connect(address)
        self.dropped = 0

    def send(self, identity: bytes, message: Message) -> None:
        self._push([identity, encode(message)])

    def send_frames(self, frames: Iterable[tuple[bytes, bytes]]) -> None:
        """Several replies in one inproc message (identity, frame, identity, ...):
        the Gateway wakes once for a whole commit's worth."""
        parts = [part for pair in frames for part in pair]
        if parts:
            self._push(parts)

    def _push(self, parts: list[bytes]) -> None:
        try:
            self.sock.send_multipart(parts, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += len(parts) // 2  # the Gateway is gone: nobody could be answered

    def close(self, linger: int | None = None) -> None:
        self.sock.close(linger=linger)


class Gateway:
    """The ROUTER thread. ``spawn_keeper(workflow_id)`` starts a PlanKeeper."""

    def __init__(self, zctx: zmq.Context[Any], endpoint: str, outbox_address: str, *,
                 registry: Registry, sessions: Sessions, catalog: Catalog, counters: Counters,
                 reader: pykka.ActorRef[Any], store: pykka.ActorRef[Any], dispatcher: Dispatcher,
                 membership: pykka.ActorRef[Any], scheduler: pykka.ActorRef[Any] | None,
                 spawn_keeper: Callable[[str], pykka.ActorRef[Any]],
                 max_message_size: int, welcome: Welcome) -> None:
        self._zctx = zctx
        self._endpoint = endpoint
        self._outbox_address = outbox_address
        self.registry, self.sessions, self.catalog = registry, sessions, catalog
        self.counters = counters
        self.reader, self.store = reader, store
        self.dispatcher, self.membership = dispatcher, membership
        self.scheduler = scheduler
        self.spawn_keeper = spawn_keeper
        self.max_size = max_message_size
        self.welcome = welcome
        self.endpoint = ""
        self._bound = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="plait-gateway", daemon=True)

    # --- life cycle ---------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> str:
        """Bind and start serving; the bound endpoint (raises if binding failed)."""
        self._thread.start()
        if not self._bound.wait(timeout):
            raise RuntimeError("gateway did not start")
        if self._error is not None:
            raise self._error
        return self.endpoint

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            router, pull = self._bind()
        except (zmq.ZMQError, OSError) as exc:  # start() raises it in the caller
            self._error = exc
            self._bound.set()
            return
        self._bound.set()
        try:
            self._loop(router, pull)
        finally:
            router.close(linger=0)
            pull.close(linger=0)

    def _bind(self) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
        pull = self._zctx.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, 0)
        pull.bind(self._outbox_address)
        router = self._zctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.SNDHWM, 100_000)
        router.setsockopt(zmq.RCVHWM, 100_000)
        # Frames far over the limit are cut by ZeroMQ (the peer is disconnected);
        # those up to 4x the limit still get a "too_large" reply.
        router.setsockopt(zmq.MAXMSGSIZE, self.max_size * 4 + 4096)
        try:
            bind(router, self._endpoint)
        except zmq.ZMQError:
            pull.close(linger=0)
            router.close(linger=0)
            raise
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        return router, pull

    def _loop(self, router: zmq.Socket[bytes], pull: zmq.Socket[bytes]) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(pull, zmq.POLLIN)
        self._router = router
        while not self._stop.is_set():
            events = dict(poller.poll(POLL_MS))
            if pull in events:
                for _ in range(BURST):
                    if not waiting(pull):
                        break
                    for batch in _by_peer(pull.recv_multipart(zmq.NOBLOCK)):
                        router.send_multipart(batch)
            if router in events:
                for _ in range(BURST):
                    if not waiting(router):
                        break
                    self._inbound(router.recv_multipart(zmq.NOBLOCK))

    # --- inbound ------------------------------------------------------------------

    def _inbound(self, frames: list[bytes]) -> None:
        """One ZeroMQ message from a peer: its identity, then one protocol message
        per frame (a peer may send several at once)."""
        identity = frames[0]
        if len(frames) < 2:
            self.counters.add("frames")
            self._fail(identity, ProtocolError("malformed", "an empty message"), None)
            return
        for frame in frames[1:]:
            self.counters.add("frames")
            self._one(identity, frame)

    def _one(self, identity: bytes, frame: bytes) -> None:
        try:
            msg = decode(frame, max_size=self.max_size, max_depth=ACCEPTED_DEPTH)
        except ProtocolError as exc:
            self._fail(identity, exc, frame)
            return
        except Exception as exc:  # a codec bug must not close the door: answer, go on
            log.exception("gateway: decoding raised")
            self._fail(identity, ProtocolError("malformed", f"undecodable: {exc!r}"), frame)
            return
        supervisor = self.sessions.touch(identity)
        try:
            self._route(identity, msg, supervisor)
        except Exception as exc:  # a routing bug answers one request, never stops the door
            log.exception("gateway: routing %s failed", type(msg).__name__)
            self.counters.add("errors")
            self.counters.add("error.internal")
            self._reply(identity, Error(id=msg.id, code="internal", reason=repr(exc)))

    def _fail(self, identity: bytes, exc: ProtocolError, frame: bytes | None) -> None:
        self.counters.add("errors")
        self.counters.add(f"error.{exc.code}")
        # The id from the header only: the rest may be what could not be read (an
        # int map key deep in a payload, say), and an uncorrelated Error leaves the
        # sender waiting for its timeout as if Flow were down.
        correlation = None
        if frame is not None:
            correlation = _peek_id(frame)
            if correlation is None and exc.code != "too_large":  # an id among later keys
                correlation = correlation_of(frame)
        self._reply(identity, error_reply(exc, correlation))

    def _reply(self, identity: bytes, message: Message) -> None:
        self._router.send_multipart([identity, encode(message)])

    def _route(self, identity: bytes, msg: Message, supervisor: str | None) -> None:
        if isinstance(msg, Submit):
            self._submit(identity, msg)
        elif isinstance(msg, TO_WORKFLOW):
            self._to_workflow(identity, msg)
        elif isinstance(msg, TO_SCHEDULER) and self.scheduler is not None:
            safe_tell(self.scheduler, Request(identity, msg))
        elif isinstance(msg, GetGraph):
            if msg.at is not None or not self.registry.tell(msg.workflow_id,
                                                            Request(identity, msg)):
                safe_tell(self.reader, Request(identity, msg))
        elif isinstance(msg, GetStatus | GetHistory):
            safe_tell(self.reader, Request(identity, msg))
        elif isinstance(msg, Hello):
            self._hello(identity, msg)
        elif isinstance(msg, Heartbeat | Credit):
            self._supervisor(identity, msg, supervisor)
        elif isinstance(msg, Error | Ack):
            self.counters.add("ignored")  # never answer an answer: no ping-pong
        else:
            self._fail_msg(identity, msg, "invalid",
                           f"{type(msg).__name__} is not a request to Flow")

    def _fail_msg(self, identity: bytes, msg: Message, code: str, reason: str) -> None:
        self.counters.add("errors")
        self.counters.add(f"error.{code}")
        self._reply(identity, Error(id=msg.id, code=code, reason=reason))

    def _submit(self, identity: bytes, msg: Submit) -> None:
        workflow_id = msg.workflow_id or f"{msg.name}-{secrets.token_hex(4)}"
        if not workflow_id or len(workflow_id) > MAX_ID:
            self._fail_msg(identity, msg, "invalid", f"a workflow id has 1 to {MAX_ID} chars")
        elif not self.registry.claim(workflow_id):
            self._fail_msg(identity, msg, "invalid", f"workflow id {workflow_id!r} is taken")
        else:
            keeper = self.spawn_keeper(workflow_id)
            self.registry.add(workflow_id, keeper)
            keeper.tell(Request(identity, msg))

    def _to_workflow(self, identity: bytes, msg: Any) -> None:
        if self.registry.tell(msg.workflow_id, Request(identity, msg)):
            return
        if isinstance(msg, LATE):
            self.counters.add(f"dropped.{msg.type}")  # the workflow is over: nothing to count
            self._reply(identity, Ack(id=msg.id))
        else:
            safe_tell(self.reader, Request(identity, msg))

    def _hello(self, identity: bytes, msg: Hello) -> None:
        self.sessions.join(msg.supervisor_id, identity)
        changed = self.catalog.update(msg.tasks)
        if changed:  # stored for the next start: restored workflows need them at once
            safe_tell(self.store, Write(tasks=[t.model_dump() for t in changed]))
        # Told from this thread, so the Dispatcher knows the supervisor before any Credit.
        self.dispatcher.tell(Join(msg.supervisor_id, identity,
                                  frozenset(t.name for t in msg.tasks), msg.slots))
        self.membership.tell(Request(identity, msg))
        self._reply(identity, self.welcome.model_copy(update={"id": msg.id}))

    def _supervisor(self, identity: bytes, msg: Heartbeat | Credit, supervisor: str | None
                    ) -> None:
        if supervisor is None:
            self._fail_msg(identity, msg, "unavailable",
                           "unknown supervisor (Flow restarted or declared it dead): "
                           "send Hello")
        elif isinstance(msg, Credit):
            self.dispatcher.tell(Supply(supervisor, msg.n))


def _by_peer(parts: list[bytes]) -> Iterator[list[bytes]]:
    """(identity, frame, identity, frame, ...) as one message per run of the same
    peer: [identity, frame, frame, ...] (a peer reads each frame as a message)."""
    batch: list[bytes] = []
    for i in range(0, len(parts) - 1, 2):
        if batch and batch[0] != parts[i]:
            yield batch
            batch = []
        if not batch:
            batch.append(parts[i])
        batch.append(parts[i + 1])
    if batch:
        yield batch


def _peek_id(frame: bytes) -> str | None:
    """The ``id`` of a frame that could not be taken (oversized, malformed, invalid),
    read from the first keys of its map without unpacking the rest."""
    try:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(frame) + 1)
        unpacker.feed(frame)
        for _ in range(min(unpacker.read_map_header(), 4)):
            key = unpacker.unpack()
            if key == "id":
                value = unpacker.unpack()
                return value if isinstance(value, str) and len(value) <= 128 else None
            unpacker.skip()
    except (ValueError, TypeError, msgpack.UnpackException, msgpack.ExtraData,
            msgpack.FormatError, msgpack.StackError, RecursionError):
        return None
    return None
