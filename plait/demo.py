"""``plait dev`` and ``plait demo``: a local cluster for people, not tests.

``plait dev`` keeps Flow (in its own process) and one supervisor (a child
process, started at once so that the two start in parallel) running until
Ctrl-C. ``plait demo`` starts a throw-away cluster on free ports, runs every
example of ``examples/`` that ends by itself (not ``approval``, which waits
for a person's signal), draws each workflow's graph as SVG and exits.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plait import memory
from plait.cli_base import UsageError
from plait.client import DEFAULT_ADDRESS, ResultTimeout, Run, outcome_error
from plait.errors import GraphvizMissing
from plait.protocol.codec import DEFAULT_MAX_SIZE
from plait.protocol.messages import WorkflowResult
from plait.stopping import stop_on_signals
from plait.supervisor.forking import die_with_parent, fork_call, single_threaded
from plait.testing import Cluster, wait_for

__all__ = ["DEMOS", "EXAMPLE_MODULES", "Demo", "examples_path", "run_demo", "run_dev"]

EXAMPLE_MODULES = (
    "examples.static", "examples.branching", "examples.random_map", "examples.map_reduce",
    "examples.subgraph", "examples.broken_promise", "examples.weekly_email",
    "examples.reminder", "examples.checkout", "examples.approval",
)


@dataclass(frozen=True)
class Demo:
    """One example workflow the demo runs, and how it is expected to end."""

    name: str
    target: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    expect: str = "succeeded"
    note: str = ""


DEMOS = (
    Demo("static", "examples.static:pipeline", note="seed 001's DAG, registered whole"),
    Demo("branching", "examples.branching:coin", note="ends as heads or as tails"),
    Demo("random_map", "examples.random_map:workflow", note="A -> M* -> B"),
    Demo("map_reduce", "examples.map_reduce:map_reduce", ([1, 2, 3, 4, 5],),
         note="a collection in, a collection out, then a sum"),
    Demo("subgraph", "examples.subgraph:workflow", note="A -> X -> B, X = N->M or J->K"),
    Demo("broken_promise", "examples.broken_promise:liar", expect="violated",
         note="breaks its promise: terminated, drawn in red"),
    Demo("weekly_email", "examples.weekly_email:weekly_email", kwargs={"seed": 3},
         note="seed 004: emails retried, the workflow retried until it succeeds"),
    Demo("reminder", "examples.reminder:remind", ("stretch", 1.0),
         note="a durable one-second sleep that holds no worker"),
    Demo("checkout", "examples.checkout:checkout", ("order-7", 25),
         note="durable steps: the retry charges the card once"),
)


def examples_path() -> Path | None:
    """The directory holding the ``examples`` package (the checkout, or the cwd)."""
    for base in (Path(__file__).resolve().parents[1], Path.cwd()):
        if (base / "examples" / "static.py").is_file():
            return base
    return None


def run_dev(imports: Sequence[str], *, port: int, workers: int, db: Path,
            paths: Sequence[Path], max_message_size: int = DEFAULT_MAX_SIZE) -> int:
    """Flow on ``port`` (feed ``port + 1``) in this process, and one supervisor
    process, until SIGINT/SIGTERM (or until the supervisor exits: 1).

    The supervisor is forked from this process first, before Flow starts any
    thread: it needs no interpreter or imports of its own (its zygote and workers
    are forked in turn), its start overlaps Flow's, and it shares this process's
    imported pages, which a laptop's memory notices."""
    _ports_free(port, port + 1)
    address = f"tcp://127.0.0.1:{port}"
    argv = ["supervisor", "--flow", address, "--workers", str(workers),
            "--max-message-size", str(max_message_size)]
    for module in imports:
        argv += ["--import", module]
    supervisor = flow = None
    memory.tune_gc()  # Flow's, and the supervisor's forked from it
    with stop_on_signals() as stop:
        try:
            supervisor = _Forked.start(argv, [*paths, Path.cwd()])
            # Imported only now: the supervisor's start does not wait for Flow's imports.
            from plait.actors.flow import Flow, FlowSettings

            flow = Flow(FlowSettings(db=str(db), port=port, feed_port=port + 1,
                                     max_message_size=max_message_size),
                        on_fatal=lambda exc: stop.set()).start()
            print(f"plait dev: Flow on {address} (feed tcp://127.0.0.1:{port + 1}), "
                  f"database {db}\n"
                  f"plait dev: one supervisor ({workers} workers) serving "
                  f"{', '.join(imports)}\n"
                  f"plait dev: try `plait submit {_suggestion(imports)} --wait"
                  f"{'' if address == DEFAULT_ADDRESS else ' --flow ' + address}`; "
                  f"Ctrl-C stops", flush=True)
            wait_for(lambda: stop.is_set() or not supervisor.alive(), float("inf"),
                     interval=0.2)
        finally:
            if supervisor is not None:
                supervisor.stop(10.0)  # first: its Finishes still reach Flow
            if flow is not None:
                flow.stop()
    if flow.failure is not None:
        print(f"plait dev: Flow stopped: {flow.failure}", file=sys.stderr)
        return 1
    if not stop.is_set():
        print("plait dev: the supervisor exited unexpectedly", file=sys.stderr)
        return 1
    return 0


def _ports_free(*ports: int) -> None:
    """Before the supervisor is forked: with a port taken (another ``plait dev``),
    it would say Hello to the Flow already there and take that Flow's work, only
    to be stopped when this Flow cannot bind."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As ZeroMQ binds: a port left in TIME_WAIT by the last run is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                raise UsageError(f"port {port} is in use ({exc.strerror}): "
                                 "is another Flow running? Choose another --port") from None


def _suggestion(imports: Sequence[str]) -> str:
    """A target to try: an example's if the examples are served."""
    return ("examples.branching:coin" if "examples.branching" in imports
            else f"{imports[0] if imports else 'MODULE'}:TASK")


class _Forked:
    """``plait <argv>`` in a child forked from this process, in a process group of
    its own (so that stopping it stops its zygote and workers too)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    @classmethod
    def start(cls, argv: Sequence[str], paths: Sequence[Path]) -> _Forked:
        if not single_threaded():
            raise RuntimeError("plait dev forks its supervisor: run it in a process with "
                               "one thread")
        parent = os.getpid()

        def supervisor() -> int:
            os.setsid()
            die_with_parent(parent)  # plait dev SIGKILLed: no supervisor left behind
            # What a task prints shows at once, as PYTHONUNBUFFERED did for a spawned child.
            for stream in (sys.stdout, sys.stderr):
                if isinstance(stream, io.TextIOWrapper):
                    stream.reconfigure(line_buffering=True)
            sys.path[:0] = [str(p.resolve()) for p in paths]  # where the task modules are
            from plait.cli import main

            return main(argv)

        return cls(fork_call(supervisor))

    def alive(self) -> bool:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode is None

    def stop(self, grace: float) -> None:
        """SIGTERM its group, SIGKILL it after ``grace`` seconds; reap it."""
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                wait_for(lambda: not self.alive(), grace, interval=0.02)
            except TimeoutError:
                self._signal(signal.SIGKILL)
                os.waitpid(self.pid, 0)
                self.returncode = -signal.SIGKILL
        self._signal(signal.SIGKILL)  # stragglers of the group: orphaned workers

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


def run_demo(out: Path, *, timeout: float = 60.0, demos: Sequence[Demo] = DEMOS) -> int:
    """Run the examples on a temporary cluster; write ``out/<name>.svg``; 0 if all
    ended as expected."""
    base = examples_path()
    if base is None:
        print("plait demo: cannot find the examples/ directory (run it from a plait checkout)",
              file=sys.stderr)
        return 2
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print("plait demo: starting Flow and a supervisor on free ports...", flush=True)
    with Cluster(EXAMPLE_MODULES, workers=2, paths=[base], cwd=str(base)) as cluster:
        runs = [(d, cluster.client.start(d.target, d.args, d.kwargs)) for d in demos]
        ok = True
        deadline = time.monotonic() + timeout
        for demo, run in runs:
            try:
                finished = run.wait(max(deadline - time.monotonic(), 0.1))
            except ResultTimeout:
                print(f"  !! {demo.name:<15} did not finish within {timeout:g} s", flush=True)
                ok = False
                continue
            picture = _draw(run.graph(), out / demo.name)
            ok &= finished.status == demo.expect
            print(_summary(demo, run, finished, picture), flush=True)
    took = time.monotonic() - started
    print(f"plait demo: {'all examples ended as expected' if ok else 'SOME EXAMPLES DID NOT'}"
          f" ({took:.1f} s); pictures in {out}/")
    return 0 if ok else 1


def _draw(graph: dict[str, Any], stem: Path) -> Path:
    """SVG through Graphviz; without the ``dot`` program, the DOT text instead."""
    from plait.protocol.render import render

    try:
        return render(graph, stem.with_suffix(".svg"), "svg")
    except GraphvizMissing:
        return render(graph, stem.with_suffix(".dot"), "dot")


def _summary(demo: Demo, run: Run, finished: WorkflowResult, picture: Path) -> str:
    mark = "ok " if finished.status == demo.expect else "!! "
    if finished.status == "succeeded":
        outcome = f"-> {_short(finished.output)}"
    else:
        outcome = f"({outcome_error(finished)})"
    return (f"  {mark}{demo.name:<15} {finished.status:<10} {picture}  {demo.note}\n"
            f"      {run.id} {outcome}")


def _short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
