"""The floor under plait's latency targets on this machine: what the path the
design fixes for a chain hop and a durable step costs with no plait code on it.

    python bench/floor.py [--n 2000]

It times, with the libraries plait uses, each kind of step on that path:

- a ZeroMQ message one way between two processes (half a ROUTER/DEALER
  ping-pong), over ipc (supervisor <-> worker) and over TCP loopback
  (Flow <-> supervisor);
- a hand-off between two threads of one process: through a ``queue.Queue``
  (pykka's inbox: the Gateway tells the keeper, the keeper tells the Store) and
  through an inproc ZeroMQ pair (the Store's replies back to the Gateway's
  socket, a worker's link thread and its task thread);
- a SQLite commit of three small events in WAL mode with ``synchronous=FULL``
  (Flow's settings), in a temporary directory.

and adds them up along the design's path (DESIGN.md, sections 1 and 5; seed
004 makes the supervisor the proxy between Flow and its workers, and nothing
happens until Flow has recorded it):

- **chain hop**: the parent's spawn goes worker -> supervisor -> Flow, is
  committed, and the child's Assign goes Flow -> supervisor -> worker; the
  child's result goes back the same way, is committed, and reaches the parent:
  eight crossings (four ipc, four TCP), two commits, three hand-offs inside
  Flow per message (Gateway -> keeper -> Store -> Gateway) and one inside a
  worker per message (its link thread <-> its task thread);
- **durable step**: one round trip worker -> supervisor -> Flow -> supervisor
  -> worker around one commit: four crossings, one commit, three hand-offs in
  Flow, two in the worker.

Nothing of plait's own Python (decoding, validating, folding, the keeper's
rules) is in these sums: a measured figure above its floor shows plait's own
cost; a target below the floor cannot be met on this machine by this design.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import socket
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

PAYLOAD = b"x" * 200  # about a small Finish or Resolved
TARGET_MS = 1.0  # issue 5: chain p50 per hop, durable step


def _echo(address: str, n: int) -> None:
    """The far end of a ping-pong: a DEALER in another process sends back what it gets."""
    zctx = zmq.Context()
    sock = zctx.socket(zmq.DEALER)
    sock.connect(address)
    sock.send(b"ready")
    for _ in range(n):
        sock.send(sock.recv())
    sock.close(linger=1000)
    zctx.term()


def process_one_way(address: str, n: int) -> float:
    """Median µs of one message between two processes (half a round trip)."""
    warm = max(n // 10, 10)
    zctx = zmq.Context()
    router = zctx.socket(zmq.ROUTER)
    router.bind(address)
    child = multiprocessing.get_context("fork").Process(target=_echo,
                                                         args=(address, warm + n))
    child.start()
    try:
        ident, _ = router.recv_multipart()
        laps = []
        for i in range(warm + n):
            began = time.perf_counter()
            router.send_multipart([ident, PAYLOAD])
            router.recv_multipart()
            if i >= warm:
                laps.append(time.perf_counter() - began)
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
        router.close(linger=0)
        zctx.term()
    return statistics.median(laps) / 2 * 1e6


def _ping_pong(send: Callable[[bytes], Any], recv: Callable[[], Any], n: int) -> float:
    warm = max(n // 10, 10)
    laps = []
    for i in range(warm + n):
        began = time.perf_counter()
        send(PAYLOAD)
        recv()
        if i >= warm:
            laps.append(time.perf_counter() - began)
    return statistics.median(laps) / 2 * 1e6


def _with_echo(echo: Callable[[], None], stop: Callable[[], Any],
               send: Callable[[bytes], Any], recv: Callable[[], Any], n: int) -> float:
    """A ping-pong with ``echo`` answering in a thread of this process."""
    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    try:
        return _ping_pong(send, recv, n)
    finally:
        stop()
        thread.join(timeout=10)


def queue_hand_off(n: int) -> float:
    """Median µs of one hand-off between two threads through ``queue.Queue``."""
    there: queue.Queue[bytes | None] = queue.Queue()
    back: queue.Queue[bytes] = queue.Queue()

    def echo() -> None:
        while (item := there.get()) is not None:
            back.put(item)

    return _with_echo(echo, lambda: there.put(None), there.put, back.get, n)


def inproc_hand_off(n: int) -> float:
    """Median µs of one hand-off between two threads through an inproc ZeroMQ pair."""
    zctx = zmq.Context()
    near = zctx.socket(zmq.PAIR)
    near.bind("inproc://floor")
    far = zctx.socket(zmq.PAIR)
    far.connect("inproc://floor")

    def echo() -> None:
        while (item := far.recv()) != b"":
            far.send(item)

    try:
        return _with_echo(echo, lambda: near.send(b""), near.send, near.recv, n)
    finally:
        near.close(linger=0)
        far.close(linger=0)
        zctx.term()


def commit(n: int) -> float:
    """Median µs of a SQLite commit of three small events, with Flow's pragmas."""
    with tempfile.TemporaryDirectory(prefix="plait-floor-") as tmp:
        conn = sqlite3.connect(os.path.join(tmp, "floor.db"), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("CREATE TABLE events (wf TEXT, seq INTEGER, body BLOB)")
            warm = max(n // 10, 10)
            laps = []
            for i in range(warm + n):
                began = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT INTO events VALUES (?, ?, ?)",
                                 [("wf", 3 * i + k, PAYLOAD) for k in range(3)])
                conn.execute("COMMIT")
                if i >= warm:
                    laps.append(time.perf_counter() - began)
        finally:
            conn.close()
    return statistics.median(laps) * 1e6


def measure(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="plait-floor-") as tmp:
        ipc = process_one_way(f"ipc://{tmp}/floor.ipc", n)
    tcp = process_one_way(f"tcp://127.0.0.1:{_free_port()}", n)
    return {"ipc": ipc, "tcp": tcp, "queue": queue_hand_off(n),
            "inproc": inproc_hand_off(n), "commit": commit(n)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def floors(m: dict[str, float]) -> dict[str, float]:
    """µs along the design's path (see the module's docstring)."""
    flow_hand_offs = 2 * m["queue"] + m["inproc"]  # Gateway -> keeper -> Store -> Gateway
    chain = (4 * m["ipc"] + 4 * m["tcp"] + 2 * m["commit"] + 2 * flow_hand_offs
             + 4 * m["inproc"])
    step = 2 * m["ipc"] + 2 * m["tcp"] + m["commit"] + flow_hand_offs + 2 * m["inproc"]
    return {"chain": chain, "step": step}


def report(m: dict[str, float]) -> str:
    f = floors(m)
    rows = [
        ("a message between processes, ipc (supervisor <-> worker)", m["ipc"]),
        ("a message between processes, TCP loopback (Flow <-> supervisor)", m["tcp"]),
        ("a hand-off between threads, queue.Queue (a pykka tell)", m["queue"]),
        ("a hand-off between threads, inproc ZeroMQ", m["inproc"]),
        ("a SQLite commit of three events (WAL, synchronous=FULL)", m["commit"]),
    ]
    lines = [f"Machine: {os.cpu_count()} CPUs; medians", "",
             "| step of the path | µs |", "|---|---|"]
    lines += [f"| {what} | {us:,.0f} |" for what, us in rows]
    lines += ["", "| floor (no plait code) | ms | target | reachable here |", "|---|---|---|---|"]
    for name, what in (("chain", "chain hop: 8 crossings, 2 commits, 10 hand-offs"),
                       ("step", "durable step: 4 crossings, 1 commit, 5 hand-offs")):
        ms = f[name] / 1000
        lines.append(f"| {what} | {ms:.2f} | ≤ {TARGET_MS:g} ms | "
                     f"{'yes' if ms <= TARGET_MS else 'no: the floor is above it'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="round trips per figure")
    opts = parser.parse_args(argv)
    if opts.n < 1:
        parser.error("--n must be at least 1")
    print(report(measure(opts.n)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
