"""Test helpers for Flow: fake clients and supervisors speaking the wire protocol.

A :class:`Peer` is a DEALER socket that sends validated messages and waits for
replies by correlation id or by type, with deadlines (never sleeps). A
:class:`FakeSupervisor` says Hello and then does whatever the test tells it.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import zmq

from plait.actors.flow import FlowSettings
from plait.protocol.codec import decode, encode
from plait.protocol.diff import EdgeSpec, NodeSpec, PlanDiff
from plait.protocol.messages import (
    Ack,
    Assign,
    AwaitResult,
    Credit,
    Finish,
    GetHistory,
    Heartbeat,
    Hello,
    Message,
    Propose,
    Proposed,
    Recorded,
    SetState,
    Submit,
    TaskHeartbeat,
    TaskInfo,
    Wait,
    Welcome,
    WorkflowResult,
)
from plait.protocol.promises import Promise

M = TypeVar("M", bound=Message)


def spec(node_id: str, task: str | None = None, *args: Any, creator: str | None = None,
         key: str | None = None, **kwargs: Any) -> NodeSpec:
    return NodeSpec(node_id, task or node_id, {"args": list(args), "kwargs": kwargs},
                    creator=creator, key=key)


def diff(*nodes: NodeSpec, edges: Iterable[tuple[str, str] | EdgeSpec] = (),
         promises: Iterable[tuple[str, Promise]] = (), proposer: str | None = None
         ) -> dict[str, Any]:
    specs = tuple(e if isinstance(e, EdgeSpec) else EdgeSpec(*e) for e in edges)
    return PlanDiff(proposer, tuple(nodes), specs, tuple(promises)).to_dict()


def settings(tmp_path: Any, **kw: Any) -> FlowSettings:
    """Flow on a free port with its own database, quick heartbeats, tiny retry delays."""
    base: dict[str, Any] = {"db": str(tmp_path / "flow.db"), "port": 0,
                            "heartbeat_interval": 0.2, "heartbeat_timeout": 30.0,
                            "retry_scale": 0.001}
    return FlowSettings(**{**base, **kw})


def submit(client: Peer, d: dict[str, Any], root: str = "a", **kw: Any) -> str:
    reply = client.request(Submit(name="wf", root=root, diff=d, **kw))
    assert reply.type == "submitted", reply
    return str(reply.workflow_id)


def history(client: Peer, wf: str) -> list[dict[str, Any]]:
    return list(client.request(GetHistory(workflow_id=wf)).events)


def result(client: Peer, wf: str, timeout: float = 10.0) -> WorkflowResult:
    reply = client.request(AwaitResult(workflow_id=wf), timeout=timeout)
    assert isinstance(reply, WorkflowResult), reply
    return reply


def states(events: list[dict[str, Any]], node: str) -> list[tuple[str, int]]:
    """A node's (state, attempt) transitions, as recorded."""
    return [(e["state"], e["attempt"]) for e in events
            if e["type"] == "state" and e["node"] == node]


@contextmanager
def flow_process(tmp_path: Any, db: str, *args: str
                 ) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``python -m plait.actors.flow`` on free ports (more ``args`` appended); yields
    (process, endpoint)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "flow.log", "a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "plait.actors.flow", "--db", db, "--port", "0",
             "--heartbeat-interval", "0.1", "--heartbeat-timeout", "1.0",
             "--retry-scale", "0.001", *args],
            stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("flow ready"), (line, (tmp_path / "flow.log").read_text())
        yield proc, line.split()[2]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


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
        """Send ``msg``; its reply (an Ack may answer it in ``more``)."""
        self.send(msg)
        return self.next(lambda m: m.id == msg.id or msg.id in getattr(m, "more", ()), timeout)


class FakeSupervisor(Peer):
    """Says Hello for ``tasks`` and then runs nothing by itself: the test drives it."""

    def __init__(self, endpoint: str, tasks: Iterable[str | TaskInfo], slots: int = 4,
                 supervisor_id: str = "sup-1", running: Iterable[Any] = (),
                 heartbeats: bool = True) -> None:
        super().__init__(endpoint, heartbeats=heartbeats)
        self.supervisor_id = supervisor_id
        infos = [t if isinstance(t, TaskInfo) else TaskInfo(name=t) for t in tasks]
        self.versions = {t.name: t.version for t in infos}  # what its "code" runs
        welcome = self.request(Hello(supervisor_id=supervisor_id, tasks=infos, slots=slots,
                                     running=list(running)))
        assert isinstance(welcome, Welcome), welcome

    def assign(self, timeout: float = 10.0, node: str | None = None) -> Assign:
        return self.next(
            lambda m: isinstance(m, Assign) and (node is None or m.node == node), timeout)

    def finish(self, a: Assign, output: Any = None, *, ok: bool = True,
               error: dict[str, Any] | None = None, diff: dict[str, Any] | None = None,
               attempt: int | None = None, credit: bool = True,
               recorded: Iterable[Recorded] = (), version: str | None = None) -> Ack:
        """Report an attempt's end, then free its slot (as a real supervisor does)."""
        ack = self.request(Finish(
            workflow_id=a.workflow_id, node=a.node, attempt=attempt or a.attempt, ok=ok,
            output=output, error=error, diff=diff, recorded=list(recorded),
            version=self.versions.get(a.task, "") if version is None else version))
        if credit:
            self.send(Credit(n=1))
        return ack

    def propose(self, a: Assign, d: dict[str, Any], recorded: Iterable[Recorded] = ()
                ) -> Proposed:
        return self.request(Propose(workflow_id=a.workflow_id, node=a.node,
                                    attempt=a.attempt, diff=d, recorded=list(recorded)))

    def wait(self, a: Assign, handles: list[str] | None = None, *, resident: bool = True,
             timer: float | None = None, signal: str | None = None, seq: int = 0,
             spawns: int = 0, recorded: Iterable[Recorded] = ()) -> Wait:
        """Send a Wait. A durable one (``resident=False``: the worker was evicted) is
        acknowledged at once, and its slot is free again (Credit)."""
        wait = Wait(workflow_id=a.workflow_id, node=a.node, attempt=a.attempt,
                    handles=handles or [], timer=timer, signal=signal, seq=seq,
                    spawns=spawns, resident=resident, recorded=list(recorded))
        if resident:
            return self.send(wait)
        ack = self.request(wait)
        assert isinstance(ack, Ack), ack
        self.send(Credit(n=1))
        return wait

    def started(self, a: Assign) -> Ack:
        """A worker took the attempt (what a supervisor says for a task with timeouts)."""
        return self.request(TaskHeartbeat(workflow_id=a.workflow_id, node=a.node,
                                          attempt=a.attempt, started=True))

    def heartbeat(self, a: Assign, details: Any = None) -> Ack:
        return self.request(TaskHeartbeat(workflow_id=a.workflow_id, node=a.node,
                                          attempt=a.attempt, details=details))

    def set_state(self, a: Assign, value: Any) -> Ack:
        return self.request(SetState(workflow_id=a.workflow_id, node=a.node,
                                     attempt=a.attempt, value=value))


def recorded(seq: int, kind: str, value: Any, site: str = "t.py:1") -> Recorded:
    return Recorded(seq=seq, kind=kind, value=value, site=site)
