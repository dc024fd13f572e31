"""The zygote that forks a supervisor's workers, forked or spawned, driven directly.

The workers here are real ``plait.supervisor.worker`` processes pointed at a
ROUTER nobody answers: they start, say WorkerReady, and wait for work until
they are signalled or their zygote goes away.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from plait.protocol import codec
from plait.protocol.messages import WorkerReady, new_id
from plait.supervisor.forking import descendants, fork_call, process_tree
from plait.supervisor.zygote import Zygote, ZygoteGone
from plait.testing import alive, wait_for

TIMEOUT = 20.0


@pytest.fixture
def router() -> Iterator[tuple[zmq.Socket[bytes], str]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    try:
        yield sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)
    finally:
        sock.close(0)
        ctx.term()


@pytest.fixture
def zygote() -> Iterator[Zygote]:
    # Spawned: this test process may have threads (pytest's, earlier tests'), and
    # forking it would copy whatever locks they hold. test_forked_* covers the fork.
    z = Zygote.start(fork=False)
    try:
        yield z
    finally:
        z.close()


def exit_of(z: Zygote, pid: int) -> int:
    seen: dict[int, int] = {}

    def reported() -> bool:
        seen.update(z.exits(0.1))
        return pid in seen

    wait_for(reported, TIMEOUT, message=f"no exit reported for pid {pid}")
    return seen[pid]


def ready_from(sock: zmq.Socket[bytes]) -> tuple[bytes, WorkerReady]:
    assert sock.poll(int(TIMEOUT * 1000)), "no WorkerReady"
    ident, frame = sock.recv_multipart()
    message = codec.decode(frame)
    assert isinstance(message, WorkerReady)
    return ident, message


def test_a_forked_worker_connects_and_a_signal_ends_it(
        zygote: Zygote, router: tuple[zmq.Socket[bytes], str]) -> None:
    sock, endpoint = router
    pid = zygote.fork(["--connect", endpoint, "--ident", "w-1"])
    ident, ready = ready_from(sock)
    assert (ident, ready.pid) == (b"w-1", pid)
    assert Path(f"/proc/{pid}/stat").read_text().split()[3] == str(zygote.pid)  # its parent
    zygote.signal(pid, signal.SIGTERM)
    assert exit_of(zygote, pid) == -signal.SIGTERM


def test_a_worker_that_cannot_start_reports_its_exit_code(zygote: Zygote) -> None:
    pid = zygote.fork(["--connect", "tcp://127.0.0.1:1", "--ident", "w-2",
                       "--import", "no_such_module_here"])
    assert exit_of(zygote, pid) == 3  # the worker's "cannot import" code
    zygote.signal(pid, signal.SIGKILL)  # reaped: the zygote ignores it, no error
    again = zygote.fork(["--bogus"])  # and it still serves
    assert exit_of(zygote, again) == 2  # argparse's usage error


def test_a_worker_whose_link_cannot_start_exits_instead_of_hanging(zygote: Zygote) -> None:
    """Its socket thread failed to connect: nothing would ever hand the task thread
    an attempt, so the worker exits, saying so, with a failure code."""
    pid = zygote.fork(["--connect", "nonsense://nowhere", "--ident", "w-3"])
    assert exit_of(zygote, pid) == 1


def test_a_worker_whose_task_module_fails_at_import_exits_3(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_tasks_for_zygote.py").write_text("def broken(:\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # before the zygote is spawned
    zygote = Zygote.start(fork=False)
    try:
        pid = zygote.fork(["--connect", "tcp://127.0.0.1:1", "--ident", "w-4",
                           "--import", "broken_tasks_for_zygote"])
        assert exit_of(zygote, pid) == 3  # a SyntaxError too is "cannot import", not a crash
    finally:
        zygote.close()


def test_two_workers_of_one_zygote_never_share_message_ids(
        zygote: Zygote, router: tuple[zmq.Socket[bytes], str]) -> None:
    sock, endpoint = router
    pids = [zygote.fork(["--connect", endpoint, "--ident", f"w-{i}"]) for i in (1, 2)]
    ids = {ready_from(sock)[1].id for _ in pids}
    assert len(ids) == 2
    assert not any(i.startswith(f"{zygote.pid:x}-") for i in ids)
    for pid in pids:
        zygote.signal(pid, signal.SIGKILL)
        assert exit_of(zygote, pid) == -signal.SIGKILL


def test_when_the_supervisor_end_closes_the_zygote_and_its_workers_exit(
        router: tuple[zmq.Socket[bytes], str]) -> None:
    sock, endpoint = router
    z = Zygote.start(fork=False)
    pid = z.fork(["--connect", endpoint, "--ident", "w-3"])
    ready_from(sock)
    z.close()  # reaps the zygote
    wait_for(lambda: not alive(pid), TIMEOUT, message="the worker outlived its zygote")


def test_a_worker_stuck_in_its_imports_does_not_outlive_its_zygote(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its link thread, which notices a gone parent, starts after the task modules'
    imports: one that hangs there is ended by the kernel when the zygote dies."""
    mark = tmp_path / "importing"
    (tmp_path / "hangs_at_import_for_zygote.py").write_text(
        "import os, pathlib, threading\n"
        "pathlib.Path(os.environ['PLAIT_TEST_MARK']).write_text(str(os.getpid()))\n"
        "threading.Event().wait()  # an import that never ends\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # before the zygote is spawned
    monkeypatch.setenv("PLAIT_TEST_MARK", str(mark))
    z = Zygote.start(fork=False)
    try:
        pid = z.fork(["--connect", "tcp://127.0.0.1:1", "--ident", "w-5",
                      "--import", "hangs_at_import_for_zygote"])
        wait_for(mark.exists, TIMEOUT, message="the worker did not start its imports")
    finally:
        z.close()
    wait_for(lambda: not alive(pid), TIMEOUT, message="the worker outlived its zygote")


def test_a_killed_zygote_is_reported_as_gone(zygote: Zygote) -> None:
    os.kill(zygote.pid, signal.SIGKILL)
    with pytest.raises(ZygoteGone):
        wait_for(lambda: zygote.exits(0.1) or None, TIMEOUT)
    with pytest.raises(ZygoteGone):
        zygote.fork(["--connect", "tcp://127.0.0.1:1", "--ident", "w-4"])


FORKED = """
import os, signal, sys, threading, zmq
from plait.protocol import codec
from plait.supervisor.zygote import Zygote
assert threading.active_count() == 1
z = Zygote.start()  # one thread: forked
ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER)
sock.bind("tcp://127.0.0.1:*")
pid = z.fork(["--connect", sock.getsockopt_string(zmq.LAST_ENDPOINT), "--ident", "w"])
assert sock.poll(20000)
ready = codec.decode(sock.recv_multipart()[1])
z.signal(pid, signal.SIGTERM)
code = None
while code is None:
    code = z.exits(1.0).get(pid)
with open(f"/proc/{z.pid}/cmdline", "rb") as f:
    forked = f.read() == open("/proc/self/cmdline", "rb").read()
z.close()
print(ready.pid == pid, code, forked)
"""


def test_a_single_threaded_supervisor_forks_its_zygote() -> None:
    out = subprocess.run([sys.executable, "-c", FORKED], capture_output=True, text=True,
                         timeout=TIMEOUT * 2, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", str(-signal.SIGTERM), "True"]


def test_message_ids_start_afresh_in_a_forked_child() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe, whatever happens
        try:
            os.write(write, new_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    child_id = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child_id == f"{pid:x}-1"


@pytest.mark.parametrize(("run", "code"), [
    (lambda: 7, 7), (lambda: None, 0), (lambda: sys.exit(), 0), (lambda: sys.exit(4), 4),
    (lambda: sys.exit("bye"), 1), (lambda: 1 / 0, 1)])
def test_a_forked_call_exits_with_its_code(run: Callable[[], int | None], code: int) -> None:
    pid = fork_call(run)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == code


def test_a_stop_signal_sent_during_the_fork_waits_for_the_child_s_handlers() -> None:
    read, write = os.pipe()

    def child() -> int:
        os.write(write, b"up")  # handlers set, signals unblocked: still alive
        return 0

    def handlers() -> None:
        # Sent while the parent's disposition (SIG_DFL: die) still holds, it stays
        # pending, and meets the child's own handler once unblocked.
        os.kill(os.getpid(), signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    pid = fork_call(child, signals=handlers)
    os.close(write)
    assert os.read(read, 10) == b"up"
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_process_tree_reads_children_without_scanning_every_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        assert child.pid in process_tree(os.getpid())
        assert child.pid in descendants(os.getpid())  # what the whole scan finds
    finally:
        child.communicate(b"")
