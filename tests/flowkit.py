"""Test helpers for Flow: fake clients and supervisors speaking the wire protocol.

A :class:`Peer` is a DEALER socket that sends validated messages and waits for
replies by correlation id or by type, with deadlines (never sleeps). A
:class:`FakeSupervisor` says Hello and then does whatever the test tells it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import zmq

from plait.protocol.codec import decode, encode
from plait.protocol.diff import EdgeSpec, NodeSpec, PlanDiff
from plait.protocol.messages import (
    Ack,
    Assign,
    Credit,
    Finish,
    Heartbeat,
    Hello,
    Message,
    Propose,
    Proposed,
    TaskInfo,
    Wait,
    Welcome,
)
from plait.protocol.promises import Promise

M = TypeVar("M", bound=Message)


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.005)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spec(node_id: str, task: str | None = None, *args: Any, creator: str | None = None,
         key: str | None = None, **kwargs: Any) -> NodeSpec:
    return NodeSpec(node_id, task or node_id, {"args": list(args), "kwargs": kwargs},
                    creator=creator, key=key)


def diff(*nodes: NodeSpec, edges: Iterable[tuple[str, str] | EdgeSpec] = (),
         promises: Iterable[tuple[str, Promise]] = (), proposer: str | None = None
         ) -> dict[str, Any]:
    specs = tuple(e if isinstance(e, EdgeSpec) else EdgeSpec(*e) for e in edges)
    return PlanDiff(proposer, tuple(nodes), specs, tuple(promises)).to_dict()


class Peer:
    """A DEALER connected to Flow; answers Flow's heartbeats when asked to."""

    def __init__(self, endpoint: str, ctx: zmq.Context[Any] | None = None,
                 heartbeats: bool = False) -> None:
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.heartbeats = heartbeats
        self.backlog: list[Message] = []

    def close(self) -> None:
        self.sock.close(linger=0)

    def send(self, msg: M) -> M:
        self.sock.send(encode(msg))
        return msg

    def send_raw(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def _recv(self, timeout: float) -> Message | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        msg = decode(self.sock.recv())
        if isinstance(msg, Heartbeat):
            if self.heartbeats:
                self.send(Heartbeat())
            return None
        return msg

    def next(self, match: Callable[[Message], bool] | type[M], timeout: float = 10.0) -> Any:
        """The first message (backlog first) that matches; others stay in the backlog."""
        test = (lambda m: isinstance(m, match)) if isinstance(match, type) else match
        for i, msg in enumerate(self.backlog):
            if test(msg):
                return self.backlog.pop(i)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = self._recv(min(left, 0.1))
            if got is None:
                continue
            if test(got):
                return got
            self.backlog.append(got)
        raise AssertionError(f"no matching message within {timeout}s; backlog {self.backlog}")

    def none(self, match: Callable[[Message], bool] | type[Message], within: float) -> None:
        """Assert that nothing matching arrives within ``within`` seconds."""
        try:
            got = self.next(match, timeout=within)
        except AssertionError:
            return
        raise AssertionError(f"unexpected {got}")

    def request(self, msg: Message, timeout: float = 10.0) -> Any:
        self.send(msg)
        return self.next(lambda m: m.id == msg.id, timeout)


class FakeSupervisor(Peer):
    """Says Hello for ``tasks`` and then runs nothing by itself: the test drives it."""

    def __init__(self, endpoint: str, tasks: Iterable[str | TaskInfo], slots: int = 4,
                 supervisor_id: str = "sup-1", running: Iterable[Any] = (),
                 heartbeats: bool = True) -> None:
        super().__init__(endpoint, heartbeats=heartbeats)
        self.supervisor_id = supervisor_id
        infos = [t if isinstance(t, TaskInfo) else TaskInfo(name=t) for t in tasks]
        welcome = self.request(Hello(supervisor_id=supervisor_id, tasks=infos, slots=slots,
                                     running=list(running)))
        assert isinstance(welcome, Welcome), welcome

    def assign(self, timeout: float = 10.0, node: str | None = None) -> Assign:
        return self.next(
            lambda m: isinstance(m, Assign) and (node is None or m.node == node), timeout)

    def finish(self, a: Assign, output: Any = None, *, ok: bool = True,
               error: dict[str, Any] | None = None, diff: dict[str, Any] | None = None,
               attempt: int | None = None, credit: bool = True) -> Ack:
        """Report an attempt's end, then free its slot (as a real supervisor does)."""
        ack = self.request(Finish(
            workflow_id=a.workflow_id, node=a.node, attempt=attempt or a.attempt, ok=ok,
            output=output, error=error, diff=diff))
        if credit:
            self.send(Credit(n=1))
        return ack

    def propose(self, a: Assign, d: dict[str, Any]) -> Proposed:
        return self.request(Propose(workflow_id=a.workflow_id, node=a.node,
                                    attempt=a.attempt, diff=d))

    def wait(self, a: Assign, handles: list[str]) -> Wait:
        return self.send(Wait(workflow_id=a.workflow_id, node=a.node, attempt=a.attempt,
                              handles=handles))
