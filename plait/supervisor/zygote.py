"""The zygote: a small single-threaded process that forks the supervisor's workers.

A worker forked from a process that has already imported plait starts in
milliseconds instead of paying a fresh interpreter and its imports (a third of
a second here), and shares those imported pages with its siblings until it
writes to them, so N workers cost far less memory than N interpreters.

Forking is only safe from a process with one thread: the supervisor has
several (its Relay, the pool's actor, timers, ZeroMQ's I/O threads), so it
never forks workers itself. :meth:`Zygote.start` makes the zygote before the
supervisor starts any thread, by forking the supervisor's process while it is
still single-threaded; a supervisor started inside a threaded program (a test
running it in a thread) spawns the zygote as a fresh interpreter instead
(``python -m plait.supervisor.zygote``). Either way the zygote runs
:func:`serve`: the same loop, the same messages.

The zygote and the pool (:mod:`plait.supervisor.pool`) talk over a
``SOCK_SEQPACKET`` socket pair (one datagram per message, msgpack dicts, never
pickles): the pool asks ``fork`` (worker arguments) and ``signal`` (pid,
signal number); the zygote answers ``forked`` (pid) and reports ``exited``
(pid, exit code as :attr:`subprocess.Popen.returncode` spells it) for every
worker it reaps. Only the zygote reaps and signals its children, so a pid is
never signalled after it was reaped and reused. The zygote imports no task
module: each worker imports its modules after the fork, so a user module's
import-time threads or connections are never shared between workers.

When the supervisor goes away (its end of the socket closes, even if it was
SIGKILLed) the zygote exits; its workers see their parent change and exit too.
The zygote ignores SIGINT and SIGTERM: a signal to the supervisor's process
group reaches the workers directly, and the zygote stays to report their exit.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from plait import memory
from plait.errors import PlaitError
from plait.protocol import codec
from plait.supervisor.forking import (
    STOP_SIGNALS,
    die_with_parent,
    fork_call,
    process_tree,
    single_threaded,
)

log = logging.getLogger("plait.supervisor")

_MAX_MESSAGE = 1 << 16


class ZygoteGone(PlaitError):
    """The process that forks workers died or stopped answering: no worker can start."""

    code = "zygote_gone"


class Zygote:
    """The supervisor's end: ask for workers, signal them, learn how they exited.

    Used by one thread only (the pool's actor)."""

    def __init__(self, sock: socket.socket, pid: int,
                 process: subprocess.Popen[bytes] | None = None) -> None:
        self._sock = sock
        self.pid = pid
        self._process = process  # when spawned; a forked zygote is reaped by pid
        self._exits: dict[int, int] = {}  # reported, not yet collected
        self.gone = False

    @classmethod
    def start(cls, fork: bool | None = None) -> Zygote:
        """Fork the zygote if this process has one thread (or ``fork`` says so);
        otherwise spawn it with this process's ``sys.path`` (where the task
        modules were found)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if fork if fork is not None else single_threaded():
            def zygote() -> None:
                ours.close()
                serve(theirs)

            pid = fork_call(zygote, signals=_ignore_stop_signals)
            theirs.close()
            return cls(ours, pid)
        env = dict(os.environ)
        pythonpath = [p or os.getcwd() for p in sys.path]
        env["PYTHONPATH"] = os.pathsep.join([*pythonpath, env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep)
        process = subprocess.Popen(
            [sys.executable, "-m", "plait.supervisor.zygote", "--fd", str(theirs.fileno())],
            env=env, stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
        theirs.close()
        return cls(ours, process.pid, process)

    def fork(self, argv: Sequence[str], timeout: float = 30.0) -> int:
        """A new worker running ``plait.supervisor.worker.main(argv)``; its pid."""
        self._send({"op": "fork", "argv": list(argv)})
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(max(deadline - time.monotonic(), 0.0))
            if message is None:
                self._fail(f"the zygote (pid {self.pid}) did not fork a worker in {timeout:g} s")
            if message.get("op") == "forked":
                return int(message["pid"])
            if message.get("op") == "error":
                raise OSError(f"the zygote could not fork a worker: {message['reason']}")

    def signal(self, pid: int, sig: int) -> None:
        """Send ``sig`` to worker ``pid`` if it has not exited (no error if it has)."""
        if not self.gone:
            self._send({"op": "signal", "pid": pid, "sig": sig})

    def exits(self, timeout: float = 0.0) -> dict[int, int]:
        """Workers reaped since the last call (pid -> exit code); waits up to
        ``timeout`` for the first report. Raises ZygoteGone if the zygote died."""
        if not self._exits and not self.gone:
            self._receive(timeout)
        while not self.gone and self._receive(0.0) is not None:
            pass
        exits, self._exits = self._exits, {}
        if not exits and self.gone:
            raise ZygoteGone(f"the zygote (pid {self.pid}) is gone")
        return exits

    def close(self, timeout: float = 5.0) -> None:
        """Let the zygote exit (it does once this end closes) and reap it."""
        self._sock.close()
        self.gone = True
        if self._process is not None:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                done, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if done:
                return
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                return
            time.sleep(0.01)  # a forked zygote has no handle to wait on

    # --- the socket ---------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._sock.send(codec.pack(message))
        except OSError as exc:
            self._fail(f"the zygote (pid {self.pid}) is gone: {exc}")

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        """One message (``exited`` ones are also kept for :meth:`exits`), or None."""
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if not ready:
            return None
        try:
            frame = self._sock.recv(_MAX_MESSAGE)
        except OSError:
            frame = b""
        if not frame:
            self.gone = True
            return None
        message: dict[str, Any] = codec.unpack(frame)
        if message.get("op") == "exited":
            self._exits[int(message["pid"])] = int(message["code"])
        return message

    def _fail(self, reason: str) -> NoReturn:
        self.gone = True
        raise ZygoteGone(reason)


# --- the zygote's side ----------------------------------------------------------------------


def _ignore_stop_signals() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def serve(sock: socket.socket) -> None:
    """Fork workers on request and report their exits, until ``sock`` closes."""
    _ignore_stop_signals()
    # A worker reads no terminal: a stray input() or breakpoint() must not eat the
    # keystrokes of the shell that started plait.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    # SIGCHLD wakes the select below through this pipe: no polling for exits.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    import plait.supervisor.worker  # noqa: F401  (imported once here, shared by every fork)
    children: set[int] = set()
    try:
        while True:
            ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
            if wake_r in ready:
                os.read(wake_r, 4096)
            _reap(sock, children)
            if sock.fileno() not in ready:
                continue
            frame = sock.recv(_MAX_MESSAGE)
            if not frame:
                return  # the supervisor is gone
            message = codec.unpack(frame)
            if message.get("op") == "fork":
                try:
                    pid = _fork_worker([str(a) for a in message["argv"]], sock,
                                       (wake_r, wake_w))
                except OSError as exc:  # out of processes or memory: the pool says so
                    sock.send(codec.pack({"op": "error", "reason": str(exc)}))
                    continue
                children.add(pid)
                sock.send(codec.pack({"op": "forked", "pid": pid}))
            elif message.get("op") == "signal" and message.get("pid") in children:
                _signal(int(message["pid"]), int(message["sig"]))
    except (BrokenPipeError, ConnectionResetError):
        return  # the supervisor is gone
    finally:
        signal.set_wakeup_fd(-1)


def _reap(sock: socket.socket, children: set[int]) -> None:
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            children.discard(pid)
            sock.send(codec.pack({"op": "exited", "pid": pid,
                                  "code": os.waitstatus_to_exitcode(status)}))


def _signal(pid: int, sig: int) -> None:
    """Signal a worker and, first, the processes its task started: a cancelled
    task's subprocess outlived its killed worker, and the retry started another.
    (Not by process group: a worker in a group of its own would escape a signal to
    its supervisor's.)"""
    for below in process_tree(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(below, sig)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _fork_worker(argv: list[str], sock: socket.socket, pipe: tuple[int, int]) -> int:
    zygote = os.getpid()

    def worker() -> int:
        # Before the task modules' imports, which may hang: the link thread that
        # notices a gone parent starts only after them.
        die_with_parent(zygote)
        sock.close()
        signal.set_wakeup_fd(-1)
        for fd in pipe:
            os.close(fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        from plait.supervisor.worker import main

        return main(argv)

    return fork_call(worker)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plait.supervisor.zygote")
    parser.add_argument("--fd", type=int, required=True,
                        help="this end of the supervisor's SOCK_SEQPACKET socket pair")
    opts = parser.parse_args(argv)
    memory.tune_gc()
    serve(socket.socket(fileno=opts.fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
