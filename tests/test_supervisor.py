"""A real supervisor with real worker processes, against a fake Flow (a ROUTER here)."""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import tasks_sample
import zmq

from plait.errors import MessageTooLarge
from plait.protocol import codec
from plait.protocol.diff import PlanDiff
from plait.protocol.messages import (
    Ack,
    Assign,
    AttemptRef,
    CancelTask,
    Credit,
    Error,
    Evict,
    Finish,
    Heartbeat,
    Hello,
    History,
    Message,
    NodeResult,
    Propose,
    Proposed,
    Recorded,
    Resolved,
    Retract,
    Retracted,
    SetState,
    TaskHeartbeat,
    Wait,
    Welcome,
    WorkerReady,
)
from plait.supervisor import daemon
from plait.supervisor import worker as worker_module
from plait.supervisor.daemon import (
    Supervisor,
    SupervisorSettings,
    import_tasks,
    run_supervisor,
)
from plait.supervisor.flow_link import Outstanding
from plait.supervisor.pool import Cancel, CrashLoop, PoolSettings, WorkerPool
from plait.supervisor.routing import Worker
from plait.supervisor.worker import WorkerLink, error_dict
from plait.testing import alive as running
from plait.testing import descendants, proc_stat, wait_for

M = TypeVar("M", bound=Message)
TIMEOUT = 20.0


class FakeFlow:
    """Flow's side of the supervisor protocol on a real ROUTER socket, driven by the test.

    It answers Hello with Welcome, heartbeats back to a supervisor it knows,
    accepts proposals, and acknowledges (unless ``ack`` is False) Finish, task
    heartbeats, states and the Waits of evicted tasks.
    Everything received is kept in ``received`` for the test to wait on.
    """

    def __init__(self, port: int | None = None, *, ack: bool = True) -> None:
        self.zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.zctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(f"tcp://127.0.0.1:{port or '*'}")
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = int(self.address.rsplit(":", 1)[1])
        self.ack = ack
        self.silent = False
        self.refuse_credit = False  # answer Credit "unknown supervisor", as a Flow that forgot it
        self.peer: bytes | None = None
        self.hellos: list[bytes] = []  # the socket identity each Hello came from
        self.received: list[Message] = []
        self._cond = threading.Condition()
        self._outbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # The socket is closed however the loop ends (even by an error, or by
        # close()'s term() interrupting a poll): term() waits for it for ever.
        try:
            while not self._stop.is_set():
                if self.sock.poll(10):
                    ident, *frames = self.sock.recv_multipart()  # one message or several
                    for frame in frames:
                        self._on(ident, codec.decode(frame))
                while not self._outbox.empty() and self.peer is not None:
                    self.sock.send_multipart([self.peer, self._outbox.get()])
        except zmq.ContextTerminated:
            pass
        finally:
            self.sock.close(linger=0)

    def _on(self, ident: bytes, msg: Message) -> None:
        reply: Message | None = None
        if isinstance(msg, Hello):
            self.peer = ident
            self.hellos.append(ident)
            reply = Welcome(id=msg.id, heartbeat_interval=0.2, heartbeat_timeout=1.0)
        elif isinstance(msg, Heartbeat) and not self.silent:
            reply = Heartbeat() if ident == self.peer else Error(
                id=msg.id, code="not_found", reason="unknown supervisor")
        elif isinstance(msg, Credit) and self.refuse_credit:
            reply = Error(id=msg.id, code="unavailable", reason="unknown supervisor")
        elif isinstance(msg, Finish) and self.ack:
            reply = Ack(id=msg.id)
        elif isinstance(msg, Propose):
            reply = Proposed(id=msg.id, workflow_id=msg.workflow_id, node=msg.node, ok=True)
        elif self.ack and (isinstance(msg, TaskHeartbeat | SetState) or (
                isinstance(msg, Wait) and not msg.resident)):
            reply = Ack(id=msg.id)
        if reply is not None:
            self.sock.send_multipart([ident, codec.encode(reply)])
        with self._cond:
            self.received.append(msg)
            self._cond.notify_all()

    def send(self, msg: Message | bytes) -> None:
        self._outbox.put(msg if isinstance(msg, bytes) else codec.encode(msg))

    def expect(self, kind: type[M], where: Callable[[M], bool] = lambda m: True,
               timeout: float = TIMEOUT) -> M:
        """The first message of ``kind`` satisfying ``where`` (waiting for it)."""
        def find() -> M | None:
            return next((m for m in self.received if isinstance(m, kind) and where(m)), None)

        with self._cond:
            if not self._cond.wait_for(lambda: find() is not None, timeout):
                seen = [type(m).__name__ for m in self.received]
                raise TimeoutError(f"no {kind.__name__} in {seen}")
            found = find()
            assert found is not None
            return found

    def all(self, kind: type[M]) -> list[M]:
        with self._cond:
            return [m for m in self.received if isinstance(m, kind)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.zctx.term()


@pytest.fixture
def flow() -> Iterator[FakeFlow]:
    fake = FakeFlow()
    try:
        yield fake
    finally:
        fake.close()


@contextmanager
def supervisor(address: str, **overrides: Any) -> Iterator[list[BaseException]]:
    """Run ``run_supervisor`` in a thread; stop it (and so its workers) on exit."""
    settings = SupervisorSettings(**{
        "flow": address, "imports": [tasks_sample.__name__], "workers": 1,
        "supervisor_id": "sup-test", "heartbeat_interval": 0.2, "heartbeat_timeout": 1.0,
        "cancel_grace": 0.5, "kill_grace": 0.5, "restart_backoff": 0.05,
        "prefetch": 0, **overrides})  # credit == free workers, unless a test says otherwise
    stop = threading.Event()
    errors: list[BaseException] = []

    def main() -> None:
        try:
            run_supervisor(settings, stop=stop)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    try:
        yield errors
    finally:
        stop.set()
        thread.join(15)
        assert not thread.is_alive()


@pytest.fixture
def sup(flow: FakeFlow) -> Iterator[FakeFlow]:
    with supervisor(flow.address) as errors:
        flow.expect(Hello)
        yield flow
    assert errors == []


_n = iter(range(1, 1_000_000))


def assign(task: str, *args: Any, node: str | None = None, attempt: int = 1,
           history: History | None = None) -> Assign:
    node = node or f"{task}-{next(_n)}"
    return Assign(workflow_id="wf", node=node, attempt=attempt, task=task,
                  inputs={"args": list(args), "kwargs": {}}, idempotency_key=f"wf/{node}",
                  history=history)


def run(flow: FakeFlow, a: Assign) -> Finish:
    flow.send(a)
    return flow.expect(Finish, lambda f: (f.node, f.attempt) == (a.node, a.attempt))


def pid_file(path: Path) -> int:
    return int(wait_for(lambda: path.exists() and path.read_text(), TIMEOUT, message="no pid"))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- tests ----------------------------------------------------------------------------------


def test_hello_declares_tasks_and_slots(sup: FakeFlow) -> None:
    hello = sup.expect(Hello)
    assert hello.supervisor_id == "sup-test"
    assert hello.slots == 1
    assert hello.running == []
    tasks = {t.name: t for t in hello.tasks}
    assert {"add", "sample.double", "fan_out", "block"} <= set(tasks)
    assert tasks["sample.double"].queue == "math"
    assert tasks["sample.double"].timeout == 30.0
    assert tasks["sample.double"].retry == {"max_attempts": 5, "initial": 0.5, "backoff": 2.0,
                                            "maximum": 60.0, "non_retryable": ["KeyError"]}


def test_an_assignment_runs_and_finishes(sup: FakeFlow) -> None:
    a = assign("add", 2, 3)
    done = run(sup, a)
    assert done.ok
    assert done.output == 5
    assert done.diff is None
    failed = run(sup, assign("boom"))
    assert not failed.ok
    assert failed.error is not None
    assert failed.error["type"] == "ZeroDivisionError"
    assert failed.error["retryable"] is True
    assert "1 // 0" in failed.error["traceback"]


def test_a_task_ending_in_a_base_exception_fails_as_itself(sup: FakeFlow) -> None:
    """A CancelledError the task brought on itself, or a SystemExit, is the task's
    failure (its own type, its policy), not a worker that died (WorkerLost), and
    the worker serves on."""
    before = run(sup, assign("pid"))
    for name, kind in (("cancels_itself", "CancelledError"), ("exits", "SystemExit")):
        failed = run(sup, assign(name))
        assert not failed.ok
        assert (failed.error or {})["type"] == kind
    after = run(sup, assign("pid"))
    assert after.output == before.output  # the same worker process


def test_unknown_task_and_wrong_arguments_are_clear_errors(sup: FakeFlow) -> None:
    sup.send(b"\x93not a message")  # counted and dropped; the supervisor goes on
    unknown = run(sup, assign("no_such_task"))
    assert unknown.error is not None
    assert unknown.error["type"] == "UnknownTask"
    assert "'no_such_task' is not served by supervisor sup-test" in unknown.error["message"]
    assert unknown.error["retryable"] is False
    wrong = run(sup, assign("add", "two", 3))
    assert wrong.error is not None
    assert wrong.error["type"] == "InvalidArguments"
    assert "argument a='two'" in wrong.error["message"]
    assert wrong.error["retryable"] is False
    assert run(sup, assign("add", 1, 1)).output == 2


def test_a_supervisor_serves_only_the_queues_it_is_given(flow: FakeFlow) -> None:
    with supervisor(flow.address, queues=["math"]) as errors:
        hello = flow.expect(Hello)
        assert [t.name for t in hello.tasks] == ["sample.double"]  # @task(queue="math")
        assert run(flow, assign("sample.double", 4)).output == 8
        other = run(flow, assign("add", 1, 1))  # on the default queue: not here
        assert other.error is not None
        assert other.error["type"] == "UnknownTask"
    assert errors == []
    with supervisor(flow.address, queues=["gpu"]) as errors:
        wait_for(lambda: errors, TIMEOUT, message="the supervisor started with nothing to do")
    assert "is on queues ['gpu'] (their queues: ['default', 'math'])" in str(errors[0])


@pytest.mark.skipif(sys.platform != "linux", reason="abstract Unix sockets are Linux's")
def test_workers_connect_over_an_abstract_unix_socket(flow: FakeFlow) -> None:
    def bound() -> set[str]:  # the abstract socket names in use, as Linux lists them
        with open("/proc/net/unix", encoding="utf-8") as table:
            return {line.split()[-1] for line in table if "@plait-sup-" in line}

    def mine() -> set[str]:  # this process's supervisor runs in a thread of it
        return {name for name in bound() if name.startswith(f"@plait-sup-{os.getpid()}-")}

    before = mine()
    with supervisor(flow.address):
        flow.expect(Hello)
        assert run(flow, assign("add", 2, 2)).output == 4
        assert mine() - before
    wait_for(lambda: not (mine() - before), TIMEOUT, message="the socket outlived it")


def test_finish_carries_unsent_proposals(sup: FakeFlow) -> None:
    done = run(sup, assign("follow_up", [1, 2, 3], node="fu"))
    assert done.output == 3
    assert done.diff is not None
    diff = PlanDiff.from_dict(done.diff)
    assert [(n.id, n.task) for n in diff.nodes] == [("fu.1", "leaf")]
    assert diff.attrs == ()
    state = sup.expect(SetState, lambda m: m.node == "fu")  # sent at once, on its own
    assert state.value == {"seen": 3}
    assert sup.received.index(state) < sup.received.index(done)


@pytest.mark.parametrize("parent", ["fan_out", "fan_out_sync"])
def test_an_awaiting_parent_frees_its_slot_for_its_children(sup: FakeFlow, parent: str) -> None:
    sup.send(assign(parent, 2, node="p"))
    wait = sup.expect(Wait, lambda m: m.node == "p")
    assert wait.diff is not None  # the spawns ride on the Wait: one message, not two
    assert [n["id"] for n in wait.diff["nodes"]] == ["p.1", "p.2"]
    assert wait.handles == ["p.1", "p.2"]
    assert wait.resident  # room to spare: the task stays in its worker
    assert [m for m in sup.all(Propose) if m.node == "p"] == []
    # One worker, busy with the waiting parent: its slot is granted again, and an
    # extra worker process runs the children one after the other.
    results = {}
    for i, child in enumerate(wait.handles):
        wait_for(lambda i=i: len(sup.all(Credit)) > i, TIMEOUT, message="no credit")  # type: ignore[misc]
        results[child] = NodeResult(state="succeeded",
                                    output=run(sup, assign("sample.double", i, node=child)).output)
    assert results["p.2"].output == 2
    sup.send(Resolved(id=wait.id, workflow_id="wf", node="p", results=results))
    done = sup.expect(Finish, lambda m: m.node == "p")
    assert done.ok
    assert done.output == 2
    assert done.diff is None  # everything was proposed with the Wait


def test_prefetched_assignments_wait_their_turn_and_say_when_they_start(
        flow: FakeFlow, tmp_path: Path) -> None:
    with supervisor(flow.address, prefetch=2, max_workers=1) as errors:
        assert flow.expect(Hello).slots == 3  # one free worker, two more queued here
        path = tmp_path / "pid"
        blocker = assign("block", str(path))
        flow.send(blocker)
        pid = pid_file(path)
        timed, plain = assign("sample.double", 4), assign("add", 1, 2)  # only one has a timeout
        flow.send(timed)
        flow.send(plain)
        os.kill(pid, signal.SIGKILL)  # the queue moves on in the replacement worker
        assert flow.expect(Finish, lambda f: f.node == blocker.node).error["type"] == "WorkerLost"  # type: ignore[index]
        assert run(flow, timed).output == 8
        assert run(flow, plain).output == 3
        started = [m for m in flow.all(TaskHeartbeat) if m.started]
        assert [(m.node, m.attempt) for m in started] == [(timed.node, 1)]
    assert errors == []


def ahead_to(caplog: pytest.LogCaptureFixture, a: Assign) -> int | None:
    """The pid of the worker that ``a`` was sent ahead to, once the supervisor says so."""
    said = f"sent wf/{a.node} ahead to worker pid "
    return next((int(m[len(said):]) for m in (r.getMessage() for r in list(caplog.records))
                 if m.startswith(said)), None)


def send_ahead(flow: FakeFlow, caplog: pytest.LogCaptureFixture) -> tuple[Assign, int]:
    """Send an attempt while every worker is busy; it and the pid it went ahead to."""
    x = assign("pid")
    flow.send(x)
    pid = wait_for(lambda: ahead_to(caplog, x), TIMEOUT, message="not sent ahead")
    assert pid is not None
    return x, pid


def taken_back(caplog: pytest.LogCaptureFixture, a: Assign) -> bool:
    return any(r.getMessage().startswith(f"took back wf/{a.node} ")
               for r in list(caplog.records))


def test_an_attempt_sent_ahead_is_taken_back_when_the_task_waits(
        flow: FakeFlow, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG, logger="plait.supervisor")
    monkeypatch.setattr(daemon, "STEAL_AFTER", 3600.0)  # the Wait alone must take x back
    path, gate = tmp_path / "pid", tmp_path / "gate"
    with supervisor(flow.address, prefetch=2, max_workers=2) as errors:
        flow.expect(Hello)
        flow.send(assign("gated_fan_out", str(path), str(gate), 1, node="p"))
        pid = pid_file(path)
        x, holder = send_ahead(flow, caplog)  # the only worker is busy
        assert holder == pid
        gate.touch()
        wait = flow.expect(Wait, lambda m: m.node == "p")
        # Left in the waiting task's worker, x would wait for the parent, which (here)
        # is answered only after x: x runs in the stand-in worker instead.
        done = flow.expect(Finish, lambda f: f.node == x.node)
        assert done.ok
        assert done.output != pid
        assert taken_back(caplog, x)
        child = run(flow, assign("sample.double", 0, node="p.1"))
        flow.send(Resolved(id=wait.id, workflow_id="wf", node="p", results={
            "p.1": NodeResult(state="succeeded", output=child.output)}))
        assert flow.expect(Finish, lambda f: f.node == "p").ok
    assert errors == []


def test_an_idle_worker_takes_back_an_attempt_sent_ahead_to_a_busy_one(
        flow: FakeFlow, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="plait.supervisor")
    with supervisor(flow.address, workers=2, max_workers=2, prefetch=2) as errors:
        flow.expect(Hello)
        gated = {}
        for name in ("a", "b"):
            flow.send(assign("gated", str(tmp_path / name), str(tmp_path / f"{name}.gate")))
            gated[pid_file(tmp_path / name)] = tmp_path / f"{name}.gate"
        x, holder = send_ahead(flow, caplog)
        assert holder in gated
        other = next(p for p in gated if p != holder)
        gated[other].touch()
        # The other worker is idle with nothing queued, while the holder's task runs on.
        assert flow.expect(Finish, lambda f: f.node == x.node).output == other
        assert taken_back(caplog, x)
        gated[holder].touch()
        wait_for(lambda: len([f for f in flow.all(Finish) if f.ok]) == 3, TIMEOUT,
                 message="the gated tasks did not finish")
    assert errors == []


def test_an_attempt_sent_ahead_can_be_cancelled_before_it_starts(
        flow: FakeFlow, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="plait.supervisor")
    path, gate = tmp_path / "pid", tmp_path / "gate"
    with supervisor(flow.address, prefetch=2, max_workers=1) as errors:
        flow.expect(Hello)
        holder = assign("gated", str(path), str(gate))
        flow.send(holder)
        pid = pid_file(path)
        x, _ = send_ahead(flow, caplog)
        flow.send(CancelTask(workflow_id="wf", node=x.node, attempt=1))
        done = flow.expect(Finish, lambda f: f.node == x.node)  # the holder still runs
        assert done.error is not None
        assert done.error["type"] == "WorkflowCancelled"
        assert not [f for f in flow.all(Finish) if f.node == holder.node]
        gate.touch()
        assert flow.expect(Finish, lambda f: f.node == holder.node).output == pid
        assert run(flow, assign("pid")).output == pid  # no escalation touched the worker
    assert errors == []


def test_an_attempt_sent_ahead_to_a_worker_that_dies_runs_elsewhere(
        flow: FakeFlow, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="plait.supervisor")
    path = tmp_path / "pid"
    with supervisor(flow.address, prefetch=2, max_workers=1) as errors:
        flow.expect(Hello)
        holder = assign("block", str(path))
        flow.send(holder)
        pid = pid_file(path)
        x, _ = send_ahead(flow, caplog)
        os.kill(pid, signal.SIGKILL)
        lost = flow.expect(Finish, lambda f: f.node == holder.node)
        assert lost.error is not None
        assert lost.error["type"] == "WorkerLost"
        done = flow.expect(Finish, lambda f: f.node == x.node)  # it never started: not lost
        assert done.ok
        assert done.output != pid
    assert errors == []


def test_a_killed_worker_is_a_lost_attempt_and_is_replaced(sup: FakeFlow, tmp_path: Path) -> None:
    path = tmp_path / "pid"
    a = assign("block", str(path))
    sup.send(a)
    pid = pid_file(path)
    os.kill(pid, signal.SIGKILL)
    lost = sup.expect(Finish, lambda f: f.node == a.node)
    assert not lost.ok
    assert lost.error is not None
    assert lost.error["type"] == "WorkerLost"
    assert lost.error["message"] == f"worker pid {pid} died (signal 9)"
    assert lost.error["retryable"] is True
    replacement = run(sup, assign("pid")).output
    assert replacement != pid
    assert alive(replacement)


def test_cooperative_cancel_keeps_the_worker(sup: FakeFlow, tmp_path: Path) -> None:
    path = tmp_path / "pid"
    a = assign("spin", str(path))
    sup.send(a)
    pid = pid_file(path)
    sup.send(CancelTask(workflow_id="wf", node=a.node, attempt=1))
    done = sup.expect(Finish, lambda f: f.node == a.node)
    assert done.error is not None
    assert done.error["type"] == "WorkflowCancelled"
    assert done.error["retryable"] is False
    assert run(sup, assign("pid")).output == pid  # same process: it was not killed


def test_cancel_escalates_to_sigkill(sup: FakeFlow, tmp_path: Path) -> None:
    path = tmp_path / "pid"
    a = assign("stubborn", str(path))
    sup.send(a)
    pid = pid_file(path)
    sup.send(CancelTask(workflow_id="wf", node=a.node, attempt=1))
    done = sup.expect(Finish, lambda f: f.node == a.node)
    assert done.error is not None
    assert done.error["type"] == "WorkflowCancelled"
    assert not alive(pid)  # SIGTERM was ignored; SIGKILL was not
    assert run(sup, assign("pid")).output != pid


def test_cancel_escalation_reaches_the_processes_a_task_started(
        sup: FakeFlow, tmp_path: Path) -> None:
    """Only the worker was signalled: its task's subprocess ran on, an orphan, and
    the retry started another."""
    path = tmp_path / "pids"
    a = assign("stubborn_parent", str(path))
    sup.send(a)
    def both() -> list[int] | None:
        pids = path.read_text().split() if path.exists() else []
        return [int(p) for p in pids] if len(pids) == 2 else None

    found = wait_for(both, TIMEOUT, message="no pids")
    assert found is not None
    worker, child = found
    sup.send(CancelTask(workflow_id="wf", node=a.node, attempt=1))
    sup.expect(Finish, lambda f: f.node == a.node)
    assert not alive(worker)
    wait_for(lambda: not running(child), TIMEOUT, message="the task's subprocess lives")


def test_reconnect_after_flow_restarts_resends_the_unacknowledged_finish() -> None:
    first = FakeFlow(ack=False)
    second: FakeFlow | None = None
    try:
        with supervisor(first.address):
            first.expect(Hello)
            a = assign("add", 20, 22)
            finish = run(first, a)
            port = first.port
            first.close()
            second = FakeFlow(port)  # Flow restarted on the same port
            hello = second.expect(Hello)
            assert AttemptRef(workflow_id="wf", node=a.node, attempt=1) in hello.running
            again = second.expect(Finish)
            assert again.id == finish.id
            assert again.output == 42
            assert second.received.index(hello) < second.received.index(again)
            # Acknowledged now: later traffic carries no third copy.
            assert run(second, assign("add", 1, 1)).output == 2
            assert [f.id for f in second.all(Finish)].count(finish.id) == 1
    finally:
        first.close() if second is None else second.close()


def test_one_ack_answers_several_finishes() -> None:
    """Flow acknowledges a batch of Finishes with one Ack (``more``): none of them is
    sent again after a reconnect, nor declared running."""
    first = FakeFlow(ack=False)
    second: FakeFlow | None = None
    try:
        with supervisor(first.address):
            first.expect(Hello)
            one, two, kept = (run(first, assign("add", i, 1)) for i in range(3))
            first.send(Ack(id=one.id, more=[two.id]))
            last = run(first, assign("add", 0, 0))  # after the Ack: it was handled
            port = first.port
            first.close()
            second = FakeFlow(port)
            hello = second.expect(Hello)
            assert {ref.node for ref in hello.running} == {kept.node, last.node}
            assert run(second, assign("add", 2, 2)).output == 4
            resent = {f.id for f in second.all(Finish)}
            assert {kept.id, last.id} <= resent
            assert not {one.id, two.id} & resent
    finally:
        first.close() if second is None else second.close()


def test_a_silent_flow_gets_a_new_connection_and_hello(sup: FakeFlow) -> None:
    sup.silent = True
    wait_for(lambda: len(sup.hellos) >= 2, TIMEOUT, message="no second Hello")
    assert sup.hellos[0] != sup.hellos[1]  # from a new socket
    sup.silent = False
    assert run(sup, assign("add", 3, 4)).output == 7


def test_a_flow_that_forgot_the_supervisor_gets_hello_again(sup: FakeFlow) -> None:
    sup.peer = None  # as if Flow lost its membership table: heartbeats now get an Error
    wait_for(lambda: len(sup.hellos) >= 2, TIMEOUT, message="no second Hello")
    assert sup.hellos[0] == sup.hellos[1]  # same socket: the Error, not silence, caused it
    assert run(sup, assign("add", 3, 4)).output == 7


def test_a_busy_supervisor_that_flow_forgot_says_hello_again(sup: FakeFlow) -> None:
    """One sending other frames sends no Heartbeat: the Credit Flow refuses tells it."""
    assert run(sup, assign("add", 1, 2)).output == 3
    sup.refuse_credit = True  # Flow declared it dead; its heartbeats are not asked for
    assert run(sup, assign("add", 3, 4)).output == 7  # then a Credit for the freed slot
    wait_for(lambda: len(sup.hellos) >= 2, TIMEOUT, message="no second Hello")
    assert sup.hellos[0] == sup.hellos[1]  # same socket: the refusal, not silence


def test_a_crash_loop_stops_the_supervisor_loudly(flow: FakeFlow,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAIT_TEST_BREAK_IMPORT", "1")  # workers cannot import the tasks
    with supervisor(flow.address, crash_limit=2) as errors:
        wait_for(lambda: errors, TIMEOUT, message="the supervisor did not give up")
    assert isinstance(errors[0], CrashLoop)
    assert "died before they were ready" in str(errors[0])


# --- durability: eviction, durable waits, resumption, heartbeats ---------------------------


def notes(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.parametrize("force", [{"max_workers": 1}, {"evict_waiting": True}])
@pytest.mark.parametrize("parent", ["guarded", "guarded_async"])
def test_an_evicted_task_unwinds_reports_nothing_and_resumes_from_history(
        flow: FakeFlow, tmp_path: Path, force: dict[str, Any], parent: str) -> None:
    path = tmp_path / "notes"
    with supervisor(flow.address, **force) as errors:
        flow.expect(Hello)
        a = assign(parent, str(path), node="g")
        flow.send(a)
        wait = flow.expect(Wait, lambda m: m.node == "g")
        assert wait.handles == ["g.1"]
        assert wait.diff is not None  # the spawn rides on the Wait
        assert [n["id"] for n in wait.diff["nodes"]] == ["g.1"]
        assert not wait.resident
        # The one worker is free again only once the task has unwound: through the
        # task's own `except Exception` (not taken) and its `finally` (run).
        child = run(flow, assign("add", 1, 2, node="g.1"))
        assert notes(path) == ["finally"]
        assert [f for f in flow.all(Finish) if f.node == "g"] == []
        # Resumed with the child's result: no new node, no Wait, and it finishes.
        resumed = assign(parent, str(path), node="g",
                         history=History(results={"g.1": NodeResult(
                             state="succeeded", output=child.output)}))
        done = run(flow, resumed)
        assert (done.ok, done.output) == (True, 3)
        assert notes(path) == ["finally", "finally", "after"]
        assert done.diff is None
        # The first run proposed the child on its Wait; the replay re-proposed it
        # (a Propose alone: nothing to wait for) before using its recorded result.
        assert [m for m in flow.all(Wait) if m.node == "g"] == [wait]
        (again,) = [m for m in flow.all(Propose) if m.node == "g"]
        assert [n["id"] for n in again.diff["nodes"]] == ["g.1"]
        assert again.attempt == 1
        assert flow.received.index(wait) < flow.received.index(again) \
            < flow.received.index(done)
    assert errors == []


@pytest.mark.parametrize("task", ["nap", "nap_sync"])
def test_sleep_and_signal_always_evict_and_replay(sup: FakeFlow, task: str) -> None:
    sup.send(assign(task, 30.0, node="n"))
    sleep = sup.expect(Wait, lambda m: m.node == "n")
    assert (sleep.timer, sleep.signal, sleep.seq, sleep.resident) == (30.0, None, 1, False)
    (drawn,) = sleep.recorded
    assert (drawn.seq, drawn.kind) == (0, "random")
    assert "tasks_sample.py:" in drawn.site
    pid = run(sup, assign("pid")).output  # the worker was freed
    # The timer fired: replayed, the draw comes from history and the signal is awaited.
    sup.send(assign(task, 30.0, node="n", history=History(recorded=[drawn], timers=[1])))
    signal_wait = sup.expect(Wait, lambda m: m.node == "n" and m.signal is not None)
    assert (signal_wait.signal, signal_wait.seq, signal_wait.resident) == ("go", 2, False)
    assert signal_wait.recorded == []
    history = History(recorded=[drawn], timers=[1], signals=[(2, "yes")])
    done = run(sup, assign(task, 30.0, node="n", history=history))
    assert done.output == f"yes:{drawn.value}"
    assert done.recorded == []
    assert [f.node for f in sup.all(Finish)].count("n") == 1
    assert run(sup, assign("pid")).output == pid


def test_a_cancel_after_eviction_is_not_the_worker_s_business(sup: FakeFlow) -> None:
    sup.send(assign("nap", 5.0, node="c"))
    sup.expect(Wait, lambda m: m.node == "c")
    sup.send(CancelTask(workflow_id="wf", node="c", attempt=1))  # Flow cancels it itself
    pid = run(sup, assign("pid")).output
    assert run(sup, assign("pid")).output == pid  # no escalation killed the worker
    assert [f for f in sup.all(Finish) if f.node == "c"] == []


def test_a_resident_waiting_task_can_be_cancelled(sup: FakeFlow) -> None:
    sup.send(assign("fan_out", 2, node="fc"))
    wait = sup.expect(Wait, lambda m: m.node == "fc")
    assert wait.resident
    sup.send(CancelTask(workflow_id="wf", node="fc", attempt=1))
    done = sup.expect(Finish, lambda m: m.node == "fc")
    assert done.error is not None
    assert done.error["type"] == "WorkflowCancelled"


REFUSED = {"kind": "violation", "reason": "created p.1", "proposer": "rp",
           "promise": "NoNewNodes()", "owner": "wf-root", "diff": {}}


def test_a_refused_wait_diff_is_raised_by_a_resident_task(sup: FakeFlow) -> None:
    sup.send(assign("fan_out", 2, node="rp"))
    wait = sup.expect(Wait, lambda m: m.node == "rp")
    assert wait.resident
    assert wait.diff is not None
    sup.send(Proposed(id=wait.id, workflow_id="wf", node="rp", ok=False, rejection=REFUSED))
    done = sup.expect(Finish, lambda m: m.node == "rp")
    assert not done.ok
    assert done.error is not None
    assert done.error["type"] == "PromiseViolation"
    assert "rp broke NoNewNodes() (promised by wf-root): created p.1" in done.error["message"]
    assert done.diff is None  # the refused spawns are not proposed again
    assert run(sup, assign("add", 1, 2)).output == 3  # the worker goes on


def test_heartbeats_and_state_reach_flow_and_a_retry_resumes_from_the_details(
        sup: FakeFlow) -> None:
    done = run(sup, assign("beats", 50, node="hb"))
    assert done.output is None
    state = sup.expect(SetState, lambda m: m.node == "hb")
    assert state.value == {"phase": "beating"}
    beats = [m for m in sup.all(TaskHeartbeat) if m.node == "hb" and not m.started]
    assert beats[0].details == {"i": 0}
    assert beats[-1].details == {"i": 49}  # the last details are never held back
    assert len(beats) < 50  # a tight loop is not a flood
    assert sup.received.index(beats[-1]) < sup.received.index(done)
    retry = run(sup, assign("beats", 0, node="hb", attempt=2,
                            history=History(heartbeat={"i": 49})))
    assert retry.output == {"i": 49}


def test_hello_declares_durability_options(sup: FakeFlow) -> None:
    tasks = {t.name: t for t in sup.expect(Hello).tasks}
    info = tasks["cached_square"]
    assert (info.cache, info.version, info.schedule_to_start, info.heartbeat_timeout) == (
        True, "2", 5.0, 2.0)
    assert tasks["beats"].heartbeat_timeout == 2.0


def test_recorded_values_ride_on_finish(sup: FakeFlow) -> None:
    done = run(sup, assign("draw", node="r"))
    (drawn,) = done.recorded
    assert (drawn.seq, drawn.kind, drawn.value) == (0, "random", done.output)
    replayed = run(sup, assign("draw", node="r2", history=History(recorded=[
        Recorded(seq=0, kind="random", value=0.5)])))
    assert (replayed.output, replayed.recorded) == (0.5, [])


def test_state_not_acknowledged_is_sent_again_after_a_reconnect() -> None:
    first = FakeFlow(ack=False)
    second: FakeFlow | None = None
    try:
        with supervisor(first.address):
            first.expect(Hello)
            run(first, assign("follow_up", [1], node="s"))
            state = first.expect(SetState)
            port = first.port
            first.close()
            second = FakeFlow(port)
            assert second.expect(SetState).id == state.id
    finally:
        first.close() if second is None else second.close()


def test_an_evicted_attempt_flow_has_not_acknowledged_is_claimed_after_a_restart() -> None:
    """Flow restarted before it recorded the Wait of an evicted task: it still has the
    attempt running here, so the Hello names it, as evicted (else it is failed as
    lost), and the Wait follows it."""
    first = FakeFlow(ack=False)
    second: FakeFlow | None = None
    try:
        with supervisor(first.address):
            first.expect(Hello)
            first.send(assign("nap", 30.0, node="n"))
            wait = first.expect(Wait, lambda m: m.node == "n")
            assert not wait.resident
            run(first, assign("pid"))  # the evicted task has unwound: its worker is free
            port = first.port
            first.close()
            second = FakeFlow(port)
            hello = second.expect(Hello)
            assert AttemptRef(workflow_id="wf", node="n", attempt=1,
                              evicted=True) in hello.running
            again = second.expect(Wait, lambda m: m.node == "n")
            assert again.id == wait.id
            assert second.received.index(hello) < second.received.index(again)
    finally:
        first.close() if second is None else second.close()


def test_a_failing_pool_stops_the_supervisor_loudly(flow: FakeFlow,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:  # a bug, not a passing shortage
        raise RuntimeError("the zygote spoke nonsense")

    monkeypatch.setattr("plait.supervisor.zygote.Zygote.fork", broken)
    with supervisor(flow.address) as errors:
        wait_for(lambda: errors, TIMEOUT, message="the supervisor did not give up")
    assert "worker pool failed" in str(errors[0])
    assert "the zygote spoke nonsense" in str(errors[0])


def test_a_killed_zygote_stops_the_supervisor_loudly(flow: FakeFlow) -> None:
    with supervisor(flow.address) as errors:
        flow.expect(Hello)
        zygote = wait_for(lambda: next((pid for pid in descendants(os.getpid())
                                        if _is_zygote(pid)), None),
                          TIMEOUT, message="no zygote among this process's children")
        assert zygote is not None
        os.kill(zygote, signal.SIGKILL)
        wait_for(lambda: errors, TIMEOUT, message="the supervisor did not give up")
    assert "zygote" in str(errors[0])


def _is_zygote(pid: int) -> bool:
    """A spawned zygote of this test process (its workers share its command line,
    but not its parent)."""
    stat = proc_stat(pid)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat is not None and stat[1] == os.getpid() and b"plait.supervisor.zygote" in cmdline


def test_a_worker_reports_what_it_cannot_send_instead_of_dying() -> None:
    """A Finish that cannot be encoded raised in the worker's loop: the process
    died, and every retry killed another worker. So did an exception whose str()
    fails."""
    link = WorkerLink("ipc://@plait-test-unused", "w")  # no thread
    a = assign("pid")
    link.send(Finish(workflow_id="wf", node=a.node, attempt=1, ok=True,
                     diff={"nodes": [{"id": "c", "attrs": {"at": object()}}]}))
    failed = codec.decode(link._outbox.get())
    assert isinstance(failed, Finish)
    assert (failed.ok, failed.diff) == (False, None)
    assert failed.error is not None
    assert (failed.error["type"], failed.error["retryable"]) == ("InvalidOutput", False)
    assert "cannot be sent: cannot encode object" in failed.error["message"]

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert error_dict(Unprintable())["message"] == \
        "<str() of the exception failed: RuntimeError: no>"


def test_a_worker_gives_back_only_an_attempt_it_has_not_started() -> None:
    link = WorkerLink("ipc://@plait-test-unused", "w")  # its thread never starts
    first, second = assign("pid"), assign("pid")
    link.hand(first)
    link.hand(second)
    assert link.take() == first  # started
    for a in (first, second, second):
        link._retract(Retract(workflow_id="wf", node=a.node, attempt=a.attempt))
    answers = [codec.decode(link._outbox.get()) for _ in range(3)]
    assert [(m.node, m.ok) for m in answers if isinstance(m, Retracted)] == [
        (first.node, False), (second.node, True), (second.node, False)]
    link.hand(None)
    assert link.take() is None  # second is gone from the queue


def test_a_worker_ends_a_cancelled_attempt_it_has_not_started() -> None:
    link = WorkerLink("ipc://@plait-test-unused", "w")
    queued = assign("pid")
    link.hand(queued)
    link._cancel(CancelTask(workflow_id="wf", node=queued.node, attempt=1))
    done = codec.decode(link._outbox.get())
    assert isinstance(done, Finish)
    assert (done.node, done.ok) == (queued.node, False)
    assert done.error is not None
    assert done.error["type"] == "WorkflowCancelled"
    assert link._outbox.empty()
    link.hand(None)
    assert link.take() is None


class _NoZygote:
    def close(self) -> None:
        pass


@contextmanager
def relay_with_a_worker(max_workers: int = 1
                        ) -> Iterator[tuple[Supervisor, Worker, zmq.Socket[bytes]]]:
    """The Relay's routing alone (no loop, pool or Flow), with one worker record whose
    socket the test holds: what the Relay sends that worker arrives there."""
    settings = SupervisorSettings(flow="tcp://127.0.0.1:9", imports=[tasks_sample.__name__],
                                  workers=1, max_workers=max_workers, prefetch=2)
    relay = Supervisor(settings, import_tasks(settings.imports), cast(Any, _NoZygote()))
    sock = relay.zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, b"w1")
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(relay.workers_sock.getsockopt_string(zmq.LAST_ENDPOINT))
    worker = Worker(b"w1", 1234, ready=True)
    relay.workers.by_ident[b"w1"] = worker
    try:
        yield relay, worker, sock
    finally:
        sock.close(linger=0)
        relay.close()


def waiting_frames(relay: Supervisor) -> bool:
    return bool(relay.workers_sock.poll(0))


def received(sock: zmq.Socket[bytes]) -> Message:
    assert sock.poll(int(TIMEOUT * 1000)), "nothing sent to the worker"
    return codec.decode(sock.recv())


def say_ready(relay: Supervisor, sock: zmq.Socket[bytes]) -> None:
    """The test's worker says WorkerReady: the ROUTER routes to it from now."""
    sock.send(codec.encode(WorkerReady(pid=1234)))
    wait_for(lambda: waiting_frames(relay), TIMEOUT, message="no WorkerReady")
    relay._poll_once()


def running_with_one_ahead(relay: Supervisor, worker: Worker,
                           sock: zmq.Socket[bytes]) -> tuple[Assign, Assign]:
    """The worker, ready, runs x with y sent ahead to it. Returns x and y."""
    say_ready(relay, sock)
    x, y = assign("pid"), assign("pid")
    for a in (x, y):
        relay._on_assign(a, codec.encode(a))
    relay._dispatch()
    assert (worker.assign, worker.ahead and worker.ahead[0]) == (x, y)
    assert [received(sock), received(sock)] == [x, y]
    return x, y


def finished_while_taking_back(relay: Supervisor, worker: Worker,
                               sock: zmq.Socket[bytes]) -> tuple[Assign, Assign]:
    """The worker runs x with y sent ahead; a Retract of y goes out, and x's Finish
    arrives before the answer. Returns x and y."""
    x, y = running_with_one_ahead(relay, worker, sock)
    worker.since -= 1.0
    relay._take_back(worker)  # as for an idle worker elsewhere
    assert isinstance(received(sock), Retract)
    relay._from_worker(b"w1", codec.encode(Finish(workflow_id="wf", node=x.node, attempt=1,
                                                  ok=True, output=1)), 0.0)
    assert worker.assign is None  # not moved on to y: the answer says whether it started
    return x, y


@pytest.mark.parametrize("started", [False, True])
def test_a_retract_answered_after_the_previous_finish_decides_who_runs_the_next(
        started: bool) -> None:
    with relay_with_a_worker() as (relay, worker, sock):
        _, y = finished_while_taking_back(relay, worker, sock)
        relay._from_worker(b"w1", codec.encode(Retracted(
            workflow_id="wf", node=y.node, attempt=1, ok=not started)), 0.0)
        assert worker.assign == y
        assert worker.ahead is None
        if not started:  # given back, then handed to the idle worker again
            assert received(sock) == y
        assert not sock.poll(50)
        assert relay.free() == 1 + 2 - 1


def test_a_worker_that_dies_before_answering_a_retract_had_started_the_next() -> None:
    with relay_with_a_worker() as (relay, worker, sock):
        _, y = finished_while_taking_back(relay, worker, sock)
        relay._on_death(b"w1", 1234, -9)
        lost = [m for m, _, _ in relay.link.outstanding.values()
                if isinstance(m, Finish) and not m.ok]
        assert [(m.node, m.error and m.error["type"]) for m in lost] == [(y.node, "WorkerLost")]
        assert not relay.queue  # not run again as if it had never started


def test_what_a_worker_says_of_the_attempt_sent_ahead_shows_it_started() -> None:
    with relay_with_a_worker() as (relay, worker, sock):
        _, y = finished_while_taking_back(relay, worker, sock)
        relay._from_worker(b"w1", codec.encode(Wait(workflow_id="wf", node=y.node, attempt=1,
                                                    handles=["c"])), 0.0)
        assert worker.assign == y
        assert worker.evicting  # handled as its current task's Wait (no room: evicted)
        relay._from_worker(b"w1", codec.encode(Retracted(workflow_id="wf", node=y.node,
                                                         attempt=1, ok=False)), 0.0)
        assert (worker.assign, worker.ahead) == (y, None)


@pytest.mark.parametrize("allowed", [True, False])
def test_a_task_waits_in_its_worker_only_if_its_assign_allows_it(allowed: bool) -> None:
    """There is room for a resident wait; an Assign with ``resident_waits`` False
    (a node under MaxParallel) has its task evicted and its Wait made durable."""
    with relay_with_a_worker(max_workers=2) as (relay, worker, sock):
        say_ready(relay, sock)
        x = assign("pid").model_copy(update={"resident_waits": allowed})
        relay._on_assign(x, codec.encode(x))
        relay._dispatch()
        assert received(sock) == x
        wait = Wait(workflow_id="wf", node=x.node, attempt=1, handles=["c"])
        relay._from_worker(b"w1", codec.encode(wait), 0.0)
        relayed = relay.link.outstanding[wait.id].message
        assert isinstance(relayed, Wait)
        assert relayed.resident is allowed
        assert worker.waiting is allowed
        assert worker.evicting is not allowed
        if not allowed:
            assert isinstance(received(sock), Evict)
        assert not sock.poll(50)


def test_the_attempt_sent_ahead_is_taken_back_from_a_worker_being_cancelled() -> None:
    """The cancel of x may end in a signal to its worker: y, sent ahead to it, is
    taken back rather than started there and killed with it."""
    with relay_with_a_worker() as (relay, worker, sock):
        x, y = running_with_one_ahead(relay, worker, sock)
        cancel = CancelTask(workflow_id="wf", node=x.node, attempt=1)
        relay._on_cancel(cancel)
        assert received(sock) == cancel
        retract = received(sock)
        assert isinstance(retract, Retract)
        assert retract.node == y.node
        relay._from_worker(b"w1", codec.encode(Retracted(
            workflow_id="wf", node=y.node, attempt=1, ok=True)), 0.0)
        assert worker.ahead is None
        assert [a for a, _ in relay.queue] == [y]  # first in line for the next worker


def test_a_late_answer_to_an_ended_attempts_wait_leaves_the_next_task_waiting() -> None:
    """x waited (resident) and was cancelled unanswered; y now waits on the same
    worker. Flow's answer to x's Wait, re-sent after a reconnection, is dropped: y
    still waits (its worker is not given attempts ahead, nor its stand-in retired),
    and x's Wait is not kept to be sent again."""
    with relay_with_a_worker(max_workers=2) as (relay, worker, sock):
        say_ready(relay, sock)
        x = assign("pid")
        relay._on_assign(x, codec.encode(x))
        relay._dispatch()
        assert received(sock) == x
        x_wait = Wait(workflow_id="wf", node=x.node, attempt=1, handles=["c"])
        relay._from_worker(b"w1", codec.encode(x_wait), 0.0)
        assert worker.waiting
        relay._on_cancel(CancelTask(workflow_id="wf", node=x.node, attempt=1))
        assert isinstance(received(sock), CancelTask)
        relay._from_worker(b"w1", codec.encode(Finish(
            workflow_id="wf", node=x.node, attempt=1, ok=False,
            error={"type": "WorkflowCancelled", "message": "", "retryable": False})), 0.0)
        assert x_wait.id not in relay.link.outstanding
        y = assign("pid")
        relay._on_assign(y, codec.encode(y))
        relay._dispatch()
        assert received(sock) == y
        relay._from_worker(b"w1", codec.encode(
            Wait(workflow_id="wf", node=y.node, attempt=1, handles=["d"])), 0.0)
        assert worker.waiting
        late = Error(id=x_wait.id, code="not_found", reason="ended")
        relay.link.outstanding[x_wait.id] = Outstanding(x_wait, b"w1", codec.encode(x_wait))
        relay._on_reply(late, codec.encode(late))
        assert worker.waiting
        assert relay.workers.target() == 2
        assert not sock.poll(50)  # nothing for the worker: nobody there awaits it


def test_a_cancel_reaches_the_worker_running_that_attempt_not_an_earlier_one() -> None:
    """Attempt 1 of a node still unwinds its own cancel in one worker while attempt 2
    runs in another (a retry after a timeout): cancelling attempt 2 tells its worker,
    whichever worker the routing table lists first."""
    with relay_with_a_worker() as (relay, worker, sock):
        say_ready(relay, sock)
        first, second = assign("pid", node="n"), assign("pid", node="n", attempt=2)
        unwinding = Worker(b"w0", 4321, ready=True, assign=first, cancelling=True)
        relay.workers.by_ident = {b"w0": unwinding, b"w1": worker}
        worker.assign = second
        cancel = CancelTask(workflow_id="wf", node="n", attempt=2)
        relay._on_cancel(cancel)
        assert received(sock) == cancel
        assert worker.cancelling


def test_a_worker_refuses_to_send_what_its_supervisor_could_not_read() -> None:
    """Over the frame limit, a Finish becomes the attempt's failure (saying why), a
    request fails in the task, and anything else raises: nothing is sent to be
    dropped unread while the workflow waits for it."""
    link = WorkerLink("ipc://@plait-test-unused", "w", max_frame=1000)  # no thread
    a = assign("big", 2000)
    link.send(Finish(workflow_id="wf", node=a.node, attempt=1, ok=True, output="x" * 2000))
    failed = codec.decode(link._outbox.get())
    assert isinstance(failed, Finish)
    assert (failed.node, failed.ok, failed.output) == (a.node, False, None)
    assert failed.error is not None
    assert (failed.error["type"], failed.error["retryable"]) == ("MessageTooLarge", False)
    assert "exceeds the 1,000-byte message limit (its output" in failed.error["message"]
    crash = {"type": "ValueError", "message": "x" * 5000, "traceback": "t" * 500,
             "retryable": True}
    link.send(Finish(workflow_id="wf", node=a.node, attempt=1, ok=False, error=crash))
    shortened = codec.decode(link._outbox.get())
    assert isinstance(shortened, Finish)
    assert shortened.error is not None
    assert (shortened.error["type"], shortened.error["retryable"]) == ("ValueError", True)
    assert shortened.error["message"].startswith("x" * 250 + " [shortened: Finish of ")
    wait = Wait(workflow_id="wf", node=a.node, attempt=1, handles=["c"],
                diff={"nodes": [{"id": "c", "pad": "x" * 2000}]})
    future = link.request(wait)
    with pytest.raises(MessageTooLarge, match=r"Wait of .* exceeds") as refused:
        future.result(0)
    assert refused.value.code == "too_large"
    with pytest.raises(MessageTooLarge, match="SetState of"):
        link.send(SetState(workflow_id="wf", node=a.node, attempt=1, value="x" * 2000))
    assert link._outbox.empty()
    assert not link._pending
    small = Finish(workflow_id="wf", node=a.node, attempt=1, ok=True, output="x" * 100)
    link.send(small)
    assert codec.decode(link._outbox.get()) == small


def test_a_result_too_big_to_travel_fails_its_attempt_end_to_end(flow: FakeFlow) -> None:
    with supervisor(flow.address, max_frame_size=4096) as errors:
        flow.expect(Hello)
        too_big = run(flow, assign("big", 10_000))
        assert not too_big.ok
        assert too_big.error is not None
        assert too_big.error["type"] == "MessageTooLarge"
        assert "exceeds the 4,096-byte message limit" in too_big.error["message"]
        spawns_too_much = run(flow, assign("fan_out_sync", 300))  # its Wait's diff
        assert spawns_too_much.error is not None
        assert spawns_too_much.error["message"].startswith("too_large: Wait of ")
        assert (spawns_too_much.error["type"], spawns_too_much.error["retryable"]) == (
            "MessageTooLarge", False)
        assert run(flow, assign("big", 100)).output == "x" * 100
    assert errors == []


def test_a_finish_flow_refuses_becomes_the_attempts_failure_once() -> None:
    """Flow answered a Finish with an Error (too large for it, say): no process holds
    the attempt any more, so a failed Finish saying why goes instead, not nothing;
    if Flow refuses that too, it is only logged (no loop)."""
    with relay_with_a_worker() as (relay, _, _sock):
        refused = Finish(workflow_id="wf", node="n", attempt=1, ok=True, output="big")
        relay.link.send(refused, b"w1", track=True)
        relay._on_reply(Error(id=refused.id, code="too_large", reason="over 4 bytes"), b"")
        stand_ins = [m for m, _, _ in relay.link.outstanding.values()]
        assert len(stand_ins) == 1
        stand_in = stand_ins[0]
        assert isinstance(stand_in, Finish)
        assert (stand_in.node, stand_in.attempt, stand_in.ok) == ("n", 1, False)
        assert stand_in.error == {
            "type": "ProtocolError", "retryable": False,
            "message": "Flow refused the attempt's Finish (too_large): over 4 bytes"}
        relay._on_reply(Error(id=stand_in.id, code="malformed", reason="bug"), b"")
        assert not relay.link.outstanding
        assert not relay._stand_ins
        # "Not running": Flow has moved on (a re-sent durable Wait of an attempt that
        # is to run again): nothing is failed for it.
        stale = Wait(workflow_id="wf", node="n", attempt=1, timer=5.0, seq=0, resident=False)
        relay.link.send(stale, b"w1", track=True)
        relay._on_reply(Error(id=stale.id, code="invalid", reason="n attempt 1 is not "
                                                                  "running"), b"")
        assert not relay.link.outstanding


class _FlakyZygote:
    """Forks fail ``fails`` times (out of processes), then work."""

    def __init__(self, fails: int) -> None:
        self.fails, self.forks = fails, 0

    def fork(self, argv: list[str]) -> int:
        self.forks += 1
        if self.forks <= self.fails:
            raise OSError("the zygote could not fork a worker: [Errno 11] EAGAIN")
        return 4000 + self.forks

    def exits(self) -> dict[int, int]:
        return {}


def test_a_fork_that_fails_is_tried_again_later_not_fatal() -> None:
    zctx: zmq.Context[Any] = zmq.Context()
    settings = PoolSettings(endpoint="ipc://@unused", events="inproc://unused", imports=[],
                            size=1, max_size=1, backoff_max=5.0)
    zygote = _FlakyZygote(fails=1)
    pool = WorkerPool(zctx, settings, cast(Any, zygote))  # not started: driven by hand
    reports: list[str] = []
    pool._report = lambda kind, **fields: reports.append(kind)  # type: ignore[method-assign]
    try:
        pool._reconcile(100.0)  # raised before: the actor failed and the supervisor stopped
        assert (zygote.forks, reports) == (1, [])
        pool._reconcile(104.9)  # backing off
        assert zygote.forks == 1
        pool._reconcile(105.0)
        assert (zygote.forks, reports) == (2, ["started"])
    finally:
        zctx.term()


def test_a_cancel_for_a_worker_already_reaped_starts_no_escalation() -> None:
    """The Relay's Cancel crossed the worker's death: no deadline is kept for a
    process that is gone (it would never be cleared)."""
    zctx: zmq.Context[Any] = zmq.Context()
    settings = PoolSettings(endpoint="ipc://@unused", events="inproc://unused", imports=[],
                            size=1, max_size=1)
    zygote = _FlakyZygote(fails=0)
    pool = WorkerPool(zctx, settings, cast(Any, zygote))  # not started: driven by hand
    pool._report = lambda kind, **fields: None  # type: ignore[method-assign]
    try:
        pool._reconcile(100.0)
        (live,) = pool._procs
        pool.on_receive(Cancel(b"w-reaped"))
        pool.on_receive(Cancel(live))
        assert b"w-reaped" not in pool._cancels
        assert live in pool._cancels
    finally:
        zctx.term()


class _SignalledZygote(_FlakyZygote):
    def __init__(self) -> None:
        super().__init__(fails=0)
        self.signals: list[tuple[int, int]] = []

    def signal(self, pid: int, sig: int) -> None:
        self.signals.append((pid, sig))


def test_a_retired_worker_that_ignores_sigterm_is_killed() -> None:
    """A task module may install a SIGTERM handler of its own: a spare retired with
    SIGTERM alone stayed, and every scale-down left one more process."""
    zctx: zmq.Context[Any] = zmq.Context()
    settings = PoolSettings(endpoint="ipc://@unused", events="inproc://unused", imports=[],
                            size=1, max_size=1, stop_timeout=3.0)
    zygote = _SignalledZygote()
    pool = WorkerPool(zctx, settings, cast(Any, zygote))  # not started: driven by hand
    pool._report = lambda kind, **fields: None  # type: ignore[method-assign]
    try:
        pool._reconcile(100.0)
        (ident,) = pool._procs
        pid = pool._procs[ident].pid
        pool._retire(ident, 100.0)
        assert zygote.signals == [(pid, signal.SIGTERM)]
        pool._reconcile(102.9)
        assert zygote.signals == [(pid, signal.SIGTERM)]  # its grace
        pool._reconcile(103.0)
        pool._reconcile(103.1)
        assert zygote.signals == [(pid, signal.SIGTERM), (pid, signal.SIGKILL)]  # once
    finally:
        zctx.term()


def test_a_cancel_after_an_async_tasks_loop_closed_leaves_the_link_alive() -> None:
    """The attempt's loop has closed (its task returned; the attempt is flushing its
    last proposals) when its CancelTask comes: the link thread, which reports the
    cancel, must not die of it (the worker would exit)."""
    link = WorkerLink("ipc://@plait-test-unused", "w")  # no thread
    a = assign("pid")
    link.hand(a)
    assert link.take() == a
    loop = asyncio.new_event_loop()
    loop.close()
    link.set_on_cancel(lambda: worker_module._call_soon(loop, lambda: None))
    link._cancel(CancelTask(workflow_id="wf", node=a.node, attempt=1))
    assert link.cancelled


def test_a_task_evicted_while_being_cancelled_stays_under_the_escalation() -> None:
    """Its Wait crossed the CancelTask: evicted, the task may still never stop (it
    swallowed the cancel and no longer calls ctx), so the signals stay due until
    the worker says it has unwound."""
    with relay_with_a_worker() as (relay, worker, sock):
        told: list[Any] = []
        relay._tell = told.append  # type: ignore[method-assign, assignment]
        sock.send(codec.encode(WorkerReady(pid=1234)))
        wait_for(lambda: waiting_frames(relay), TIMEOUT, message="no WorkerReady")
        relay._poll_once()
        x = assign("nap", 5.0, node="x")
        relay._on_assign(x, codec.encode(x))
        relay._dispatch()
        assert received(sock) == x
        relay._on_cancel(CancelTask(workflow_id="wf", node="x", attempt=1))
        relay._from_worker(b"w1", codec.encode(Wait(workflow_id="wf", node="x", attempt=1,
                                                    timer=5.0, seq=0)), 0.0)
        assert worker.evicting
        assert [type(m).__name__ for m in told] == ["Cancel"]
        relay._from_worker(b"w1", codec.encode(WorkerReady(pid=1234)), 0.0)
        assert [type(m).__name__ for m in told] == ["Cancel", "Settle"]
        assert worker.assign is None


def test_a_late_answer_for_the_same_node_of_another_run_is_not_taken() -> None:
    """Node ids repeat in every run of a workflow: an answer to an ended attempt's
    request (re-sent after a Flow restart, say) must not settle the request of
    the attempt this worker runs now; only its own correlation id does."""
    link = WorkerLink("ipc://@plait-test-unused", "w")  # no thread
    now = Assign(workflow_id="wf-2", node="etl", attempt=1, task="etl",
                 inputs={"args": [], "kwargs": {}}, idempotency_key="wf-2/etl")
    link.hand(now)
    assert link.take() == now
    request = Propose(workflow_id="wf-2", node="etl", attempt=1,
                      diff=PlanDiff(proposer="etl").to_dict())
    future = link.request(request)
    link._reply(Proposed(id="old-1", workflow_id="wf-1", node="etl", ok=False,
                         rejection={"kind": "plan", "message": "etl attempt 1 is not running"}))
    assert not future.done()
    link._reply(Proposed(id=request.id, workflow_id="wf-2", node="etl", ok=True))
    reply = future.result(timeout=1)
    assert isinstance(reply, Proposed)
    assert reply.ok


def test_a_cancel_before_the_task_started_is_delivered_when_it_does() -> None:
    """The CancelTask came between taking the attempt and installing the async
    task's hook (its inputs were being decoded): the hook runs when installed."""
    link = WorkerLink("ipc://@plait-test-unused", "w")  # no thread
    a = assign("pid")
    link.hand(a)
    assert link.take() == a
    link._cancel(CancelTask(workflow_id="wf", node=a.node, attempt=1))
    called: list[bool] = []
    link.set_on_cancel(lambda: called.append(True))
    assert called == [True]
