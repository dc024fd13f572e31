"""plait's bench driver: ``plait dev`` with 2 workers, driven through ``plait.Client``.

Runs in plait's own environment (``bench/run.py`` starts it with its own
interpreter). The cluster is exactly what a user starts: ``python -m plait
dev --workers 2 --import bench.workloads...`` on free loopback ports and a
temporary SQLite database; its memory is the ``plait dev`` process tree (Flow
runs in that process; the supervisor and its workers below it). The workloads are the task
modules in ``bench/workloads/``.

It starts ``plait dev`` before importing plait's client (see "How the figures
are taken" in bench/README.md).
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench.workloads, plait

from benchlib import REPO, Engine, log, main

from bench.workloads import MODULES

if TYPE_CHECKING:
    from plait.client import Client

RESULT_TIMEOUT = 600.0


def _free_pair() -> int:
    """A port P such that P and P + 1 (the feed) are both free on loopback."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Plait(Engine):
    def __init__(self) -> None:
        super().__init__(name="plait", durable="yes: every event in SQLite (Flow's store); "
                         "unfinished workflows resume after a restart, finished tasks "
                         "are not re-run")
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Client | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def version(self) -> str:
        rev = os.environ.get("PLAIT_BENCH_COMMIT") or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO,
            check=False).stdout.strip()
        return f"0.1.0 ({rev or 'unknown commit'})"

    def start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="plait-bench-")
        port = _free_pair()
        argv = [sys.executable, "-m", "plait", "dev", "--port", str(port), "--workers", "2",
                "--db", str(Path(self._tmp.name) / "flow.db")]
        for module in MODULES:
            argv += ["--import", module]
        log_file = (Path(self._tmp.name) / "dev.log").open("wb")
        self.proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log_file.close()
        from plait.client import Client

        # Poll the port (not a fixed sleep) so the first request goes out as soon as
        # Flow listens; the supervisor joins while the workflow waits in Flow's queue.
        deadline = time.monotonic() + 120
        while not _listening(port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"plait dev did not start: {self._log_tail()}")
            time.sleep(0.005)
        self.client = Client(f"tcp://127.0.0.1:{port}", timeout=60.0, poll_interval=5.0)

    def _log_tail(self) -> str:
        if self._tmp is None:
            return ""
        path = Path(self._tmp.name) / "dev.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log("plait dev ignored SIGTERM for 30 s: killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of the group
            self.proc.wait(timeout=30)
            self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def cluster_pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def _run(self, target: str, *args: Any) -> Any:
        from plait.client import FlowError

        assert self.client is not None
        wid = f"{target.rsplit(':', 1)[1]}-{os.urandom(4).hex()}"
        try:
            run = self.client.start(target, args, workflow_id=wid)
        except FlowError as exc:
            if "is taken" not in exc.reason:  # a retried Submit that did arrive
                raise
            run = self.client.run(wid)
        return run.result(timeout=RESULT_TIMEOUT)

    def hello(self) -> Any:
        return self._run("bench.workloads.cold:cold_hello")

    def chain(self, hops: int) -> list[float]:
        return [float(x) for x in self._run("bench.workloads.chain:chain_driver", hops)]

    def run_map_reduce(self, n: int) -> int:
        return self._run("bench.workloads.map_reduce:mr_driver", n)

    def run_fanout(self, seed: int, most: int) -> int:
        return self._run("bench.workloads.fanout:fan_driver", seed, most)

    def steps(self, n: int) -> float:
        return float(self._run("bench.workloads.steps:steps_driver", n))


if __name__ == "__main__":
    main(Plait, __file__)
