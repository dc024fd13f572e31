"""A real local cluster for tests, examples and ``plait dev``/``plait demo``.

:class:`Cluster` starts ``python -m plait flow`` and one or more ``python -m
plait supervisor`` processes on free loopback ports with a temporary SQLite
database, waits until they are ready, hands out a :class:`~plait.client.Client`,
and stops everything it started on exit, even when the body failed. Each child
runs in its own session (process group), so its worker processes go with it.

Waiting is always a condition polled against a deadline (:func:`wait_for`),
never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from plait.client import Client, FlowUnavailable
from plait.supervisor.forking import descendants, proc_stat

__all__ = ["Cluster", "Proc", "alive", "child_environment", "descendants", "free_port",
           "proc_stat", "wait_for"]

T = TypeVar("T")


def wait_for(cond: Callable[[], T], timeout: float = 30.0, interval: float = 0.05,
             message: str | Callable[[], str] = "") -> T:
    """Poll ``cond`` until it returns something truthy, and return that.

    Raises ``TimeoutError`` (with ``message``, or a callable producing it) when
    ``timeout`` seconds pass first. The interval grows gently so that a slow
    machine is not flooded with polls.
    """
    deadline = time.monotonic() + timeout
    pause = interval
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise TimeoutError(text or f"condition not met within {timeout:g} s")
        # Bounded back-off between polls of a condition, not a wait for an event.
        time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
        pause = min(pause * 1.5, 0.1)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (from /proc)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def child_environment(paths: Iterable[str | os.PathLike[str]], cwd: str | None,
                      extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a cluster's child: ``paths`` and ``cwd`` first on its
    PYTHONPATH (where the task modules are), unbuffered output, then ``extra``."""
    env = dict(os.environ)
    here = [str(Path(p).resolve()) for p in paths] + [str(Path(cwd or ".").resolve())]
    if env.get("PYTHONPATH"):
        here.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(here)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class Proc:
    """One child process of the cluster and where its output goes."""

    name: str
    args: list[str]
    ready_file: Path
    log_path: Path | None
    popen: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, env: Mapping[str, str], cwd: str | None) -> None:
        self.ready_file.unlink(missing_ok=True)
        out: IO[bytes] | None = None
        if self.log_path is not None:
            self._log = out = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "plait", *self.args], env=dict(env), cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT if out else None,
            start_new_session=True,  # its own group: stopping it takes its workers too
        )

    def signal(self, signum: int, group: bool = True) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.popen.pid, signum)
            else:
                os.kill(self.popen.pid, signum)

    def kill(self, group: bool = False) -> None:
        """SIGKILL this process (with ``group``: and its workers, as if the machine
        died; without: the workers are left to notice), and reap it."""
        self.signal(signal.SIGKILL, group=group)
        if self.popen is not None:
            self.popen.wait(timeout=30)

    def stop(self, grace: float) -> int | None:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds; the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(timeout=30)
        self.signal(signal.SIGKILL)  # stragglers of the group: orphaned workers
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.popen.returncode

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


class Cluster:
    """A Flow and ``supervisors`` supervisors serving ``imports``, on loopback.

    ``port``/``feed_port``/``db`` default to free ports and a temporary
    database; ``clock`` (seconds since the epoch) gives Flow a time of its own
    that only :meth:`advance` moves (durable timers, retries' backoff, cron);
    ``paths`` are prepended to the children's PYTHONPATH (for task
    modules outside the package); ``logs=False`` lets the children write to
    this process's stdout/stderr instead of log files (``plait dev``).
    """

    def __init__(self, imports: Sequence[str] = (), *, supervisors: int = 1, workers: int = 2,
                 db: str | os.PathLike[str] | None = None, port: int | None = None,
                 feed_port: int | None = None, paths: Iterable[str | os.PathLike[str]] = (),
                 env: Mapping[str, str] | None = None, cwd: str | None = None,
                 flow_args: Sequence[str] = (), supervisor_args: Sequence[str] = (),
                 logs: bool = True, ready_timeout: float = 60.0, grace: float = 10.0,
                 clock: float | None = None) -> None:
        self.imports = list(imports)
        self.workers = workers
        self.initial_supervisors = supervisors
        self._tmp = tempfile.TemporaryDirectory(prefix="plait-cluster-")
        self.dir = Path(self._tmp.name)
        self.db = Path(db) if db is not None else self.dir / "plait.db"
        self.port = port or free_port()
        self.feed_port = feed_port or free_port()
        self.cwd = cwd
        self.env = self._environment(paths, env)
        self.flow_args = list(flow_args)
        self.clock_file: Path | None = None
        if clock is not None:
            self.clock_file = self.dir / "clock"
            self.set_time(clock)
            self.flow_args += ["--clock-file", str(self.clock_file)]
        self.supervisor_args = list(supervisor_args)
        self.logs = logs
        self.ready_timeout = ready_timeout
        self.grace = grace
        self.flow: Proc | None = None
        self.supervisors: list[Proc] = []
        self._client: Client | None = None
        self._count = 0

    def _environment(self, paths: Iterable[str | os.PathLike[str]],
                     extra: Mapping[str, str] | None) -> dict[str, str]:
        return child_environment(paths, self.cwd, extra)

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def feed(self) -> str:
        return f"tcp://127.0.0.1:{self.feed_port}"

    @property
    def client(self) -> Client:
        """A client of this cluster's Flow (closed with the cluster)."""
        if self._client is None:
            self._client = self.new_client()
        return self._client

    def new_client(self, timeout: float = 15.0) -> Client:
        return Client(self.address, feed=self.feed, timeout=timeout, poll_interval=0.25)

    # --- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is not None and self.logs:
            sys.stderr.write(self.log_tail())
        self.stop()

    def start(self) -> None:
        self.start_flow()
        for _ in range(self.initial_supervisors):
            self.add_supervisor()

    def stop(self) -> None:
        """Stop every process this cluster started (supervisors first)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        for proc in [*reversed(self.supervisors), *([self.flow] if self.flow else [])]:
            proc.stop(self.grace)
        self._tmp.cleanup()

    def _proc(self, name: str, args: list[str]) -> Proc:
        self._count += 1
        log = self.dir / f"{name}.log" if self.logs else None
        ready = self.dir / f"{name}-{self._count}.ready"
        return Proc(name, [*args, "--ready-file", str(ready)], ready, log)

    def _await_ready(self, proc: Proc) -> None:
        def up() -> bool:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen and proc.popen.poll()}"
                                   f" before it was ready:\n{proc.log()[-4000:]}")
            return proc.ready_file.exists()
        wait_for(up, self.ready_timeout,
                 message=lambda: f"{proc.name} not ready in {self.ready_timeout:g} s:\n"
                                 f"{proc.log()[-4000:]}")

    # --- Flow -------------------------------------------------------------------------

    def start_flow(self) -> Proc:
        """Start Flow (again, on the same database and ports) and wait until it answers."""
        if self.flow is not None and self.flow.alive():
            raise RuntimeError("Flow is already running")
        self.db.parent.mkdir(parents=True, exist_ok=True)
        proc = self._proc("flow", ["flow", "--db", str(self.db), "--port", str(self.port),
                                   "--feed-port", str(self.feed_port), *self.flow_args])
        self.flow = proc
        proc.start(self.env, self.cwd)
        self._await_ready(proc)
        wait_for(self._answers, self.ready_timeout, message="Flow does not answer GetStatus")
        return proc

    def _answers(self) -> bool:
        with self.new_client(timeout=1.0) as probe:
            try:
                probe.runs()
            except FlowUnavailable:
                return False
        return True

    def kill_flow(self) -> None:
        """SIGKILL Flow: no clean shutdown, no last commit."""
        if self.flow is not None:
            self.flow.kill()

    def restart_flow(self) -> Proc:
        self.kill_flow()
        return self.start_flow()

    # --- Flow's time (with ``clock=``) ---------------------------------------------------

    def now(self) -> float:
        """Flow's time, as this cluster set it."""
        if self.clock_file is None:
            raise RuntimeError("this Cluster runs on real time: pass clock=...")
        return float(self.clock_file.read_text())

    def set_time(self, t: float) -> None:
        if self.clock_file is None:
            raise RuntimeError("this Cluster runs on real time: pass clock=...")
        from plait.actors.clock import FileClock

        FileClock.write(str(self.clock_file), t)

    def advance(self, seconds: float) -> float:
        """Move Flow's time forward (due timers fire within a few polls); the new time."""
        self.set_time(self.now() + seconds)
        return self.now()

    # --- supervisors --------------------------------------------------------------------

    def add_supervisor(self, imports: Sequence[str] | None = None,
                       workers: int | None = None, args: Sequence[str] = ()) -> Proc:
        """Start one more supervisor and wait until it has joined Flow."""
        mods = list(imports if imports is not None else self.imports)
        argv = ["supervisor", "--flow", self.address,
                "--workers", str(workers or self.workers), *self.supervisor_args, *args]
        for mod in mods:
            argv += ["--import", mod]
        proc = self._proc(f"supervisor{len(self.supervisors) + 1}", argv)
        self.supervisors.append(proc)
        proc.start(self.env, self.cwd)
        self._await_ready(proc)
        return proc

    def kill_supervisor(self, which: int | Proc = 0, *, group: bool = False) -> None:
        """SIGKILL one supervisor; ``group=True`` takes its workers too (a lost machine)."""
        proc = self.supervisors[which] if isinstance(which, int) else which
        proc.kill(group=group)

    def worker_pids(self, which: int | Proc | None = None) -> list[int]:
        """Pids of the worker processes of one supervisor (or of all): the children
        of its zygote (:mod:`plait.supervisor.zygote`), not the zygote itself."""
        procs = self.supervisors if which is None else [
            self.supervisors[which] if isinstance(which, int) else which]
        return [pid for p in procs if p.alive() for pid in descendants(p.pid, depth=2)]

    # --- diagnostics ----------------------------------------------------------------------

    def log_tail(self, chars: int = 6000) -> str:
        procs = [*([self.flow] if self.flow else []), *self.supervisors]
        return "".join(f"\n----- {p.name} log -----\n{p.log()[-chars:]}" for p in procs)

    def wait(self, stop: Callable[[], bool] = lambda: False, interval: float = 0.5) -> Any:
        """Block until a child exits or ``stop()`` is true; the child that exited, if any."""
        procs = [*([self.flow] if self.flow else []), *self.supervisors]
        return wait_for(lambda: stop() or next((p for p in procs if not p.alive()), None),
                        timeout=float("inf"), interval=interval)
