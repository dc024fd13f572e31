"""What every engine's bench driver shares: sizes, timing, memory, the JSON report.

Each driver (``bench/peers/<engine>_peer.py``) runs in its engine's own venv
with only the standard library besides the engine, so this module imports
nothing else. A driver defines an :class:`Engine` and calls :func:`main`;
``bench/run.py`` starts it as a subprocess and reads one JSON document from
its stdout (progress goes to stderr).

Measurement protocol, the same for every engine:

- cold start: a fresh interpreter (``driver --cold``) imports the engine and
  starts its local cluster (in either order: see bench/README.md), runs one
  trivial workflow and prints the wall-clock
  time of the result; the figure is that time minus the moment the parent
  spawned it, so interpreter start and imports count for everyone;
- then, per repetition: start the cluster, run every workload once at a tiny
  size (warm-up: worker pools, imports, caches), run each workload once at the
  chosen size, read the memory (PSS) of the cluster's processes, stop the cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Sizes:
    """How big each workload is."""

    chain: int  # hops
    map: int  # mapped integers
    fan_seeds: tuple[int, ...]  # one fan-out workflow per seed
    fan_most: int  # each fan-out spawns 0..fan_most children
    steps: int  # durable steps


SIZES = {
    "tiny": Sizes(chain=10, map=50, fan_seeds=(1, 2), fan_most=20, steps=5),
    "small": Sizes(chain=200, map=2_000, fan_seeds=(1, 2, 3), fan_most=500, steps=100),
    "full": Sizes(chain=200, map=10_000, fan_seeds=(1, 2, 3, 4, 5), fan_most=500, steps=100),
}
WORKLOADS = ("chain", "map_reduce", "fanout", "steps")


def children_for(seed: int, most: int) -> int:
    """How many children the fan-out with ``seed`` spawns: the same draw in every engine."""
    import random

    return random.Random(seed).randint(0, most)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class NotApplicable(Exception):
    """This engine has no native idiom for the workload (e.g. no durable steps)."""


@dataclass
class Engine:
    """One engine's bench driver. Subclasses implement the workloads natively."""

    name: str = "engine"
    durable: str = "no"  # whether state persists so that a crash can resume, and how
    notes: list[str] = field(default_factory=list)
    # Caps for engines too slow to run the full size 3 times in a sane time; the
    # report carries the sizes actually used, and run.py prints them.
    max_map: int | None = None
    max_fan_seeds: int | None = None

    def sizes(self, sizes: Sizes) -> Sizes:
        """``sizes`` with this engine's caps applied."""
        return replace(sizes, map=min(sizes.map, self.max_map or sizes.map),
                       fan_seeds=sizes.fan_seeds[:self.max_fan_seeds or len(sizes.fan_seeds)])

    def version(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        """Start the local cluster (2 workers) and connect to it."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def hello(self) -> Any:
        """Run one trivial workflow to completion; its result."""
        raise NotImplementedError

    def cluster_pids(self) -> list[int]:
        """Root pids of the cluster's processes (their descendants count too)."""
        return [os.getpid()]

    def chain(self, hops: int) -> list[float]:
        """Per-hop latencies in seconds (each hop waits for the previous result)."""
        raise NotImplementedError

    def map_reduce(self, n: int) -> float:
        """Seconds from submitting the map over range(n) to the sum's result, which is
        checked (a wrong answer is no figure)."""
        started = time.perf_counter()
        total = self.run_map_reduce(n)
        elapsed = time.perf_counter() - started
        if total != n * (n - 1) // 2:
            raise RuntimeError(f"{self.name}: map-reduce over {n} summed to {total}")
        return elapsed

    def fanout(self, seed: int, most: int) -> float:
        """Seconds from submitting one dynamic fan-out to its (checked) count."""
        started = time.perf_counter()
        count = self.run_fanout(seed, most)
        elapsed = time.perf_counter() - started
        if count != children_for(seed, most):
            raise RuntimeError(f"{self.name}: fan-out {seed} counted {count}")
        return elapsed

    def run_map_reduce(self, n: int) -> int:
        """Map a no-op over range(n), then sum the results, natively; the sum."""
        raise NotImplementedError

    def run_fanout(self, seed: int, most: int) -> int:
        """One dynamic fan-out (``children_for(seed, most)`` children), natively; its count."""
        raise NotImplementedError

    def steps(self, n: int) -> float:
        """Mean seconds per durable step of an n-step workflow."""
        raise NotApplicable(f"{self.name} does not record steps durably")


# --- processes and memory -----------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _status(pid: int) -> tuple[str, int, int]:
    """(command line, shortened; RSS and PSS in bytes) of ``pid``; ("", 0, 0) if gone.

    PSS (proportional set size) splits each shared page between the processes
    that map it, so the PSS of a process tree sums to the memory it really uses;
    RSS counts a shared page once per process (forked workers, shared libraries)."""
    base = Path("/proc") / str(pid)
    try:
        rollup = (base / "smaps_rollup").read_text()
        argv = (base / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "", 0, 0
    sizes = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in rollup.splitlines()
             if line.startswith(("Rss:", "Pss:"))}
    words = [Path(a.decode(errors="replace")).name if i == 0 else a.decode(errors="replace")
             for i, a in enumerate(argv) if a]
    return " ".join(words)[:80], sizes.get("Rss", 0), sizes.get("Pss", 0)


def memory(roots: Iterable[int]) -> dict[str, Any]:
    """Summed PSS and RSS (MiB) of ``roots`` and all their descendants, with a
    per-process list."""
    pids: list[int] = []
    for root in roots:
        for pid in [root, *descendants(root)]:
            if pid not in pids:
                pids.append(pid)
    procs = [(pid, *_status(pid)) for pid in pids]
    procs = [p for p in procs if p[2] > 0]
    return {"pss_mib": sum(p[3] for p in procs) / 2**20,
            "rss_mib": sum(p[2] for p in procs) / 2**20,
            "processes": [{"pid": p, "name": n, "rss_mib": round(r / 2**20, 1),
                           "pss_mib": round(q / 2**20, 1)} for p, n, r, q in procs]}


# --- statistics -------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """Linear-interpolated percentile (0..100) of ``values``."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --- running one engine -----------------------------------------------------------------


def measure(engine: Engine, workload: str, sizes: Sizes) -> dict[str, float]:
    """Run one workload once at ``sizes``; its figures."""
    if workload == "chain":
        laps = engine.chain(sizes.chain)
        if len(laps) != sizes.chain:
            raise RuntimeError(f"chain returned {len(laps)} laps, expected {sizes.chain}")
        return {"chain_p50_ms": percentile(laps, 50) * 1e3,
                "chain_p99_ms": percentile(laps, 99) * 1e3}
    if workload == "map_reduce":
        elapsed = engine.map_reduce(sizes.map)
        return {"map_reduce_tasks_per_s": (sizes.map + 1) / elapsed}
    if workload == "fanout":
        tasks, elapsed = 0, 0.0
        for seed in sizes.fan_seeds:
            elapsed += engine.fanout(seed, sizes.fan_most)
            tasks += children_for(seed, sizes.fan_most) + 2  # the decider and the count
        return {"fanout_tasks_per_s": tasks / elapsed}
    if workload == "steps":
        return {"step_ms": engine.steps(sizes.steps) * 1e3}
    raise ValueError(f"unknown workload {workload!r}")


def cold_start(driver: Path, timeout: float = 300.0) -> float:
    """Seconds from spawning ``driver --cold`` to the first workflow's result."""
    started = time.time()
    proc = subprocess.run([sys.executable, str(driver), "--cold"], capture_output=True,
                          text=True, timeout=timeout, check=False, cwd=REPO)
    stamps = [line for line in proc.stdout.splitlines() if line.startswith("FIRST-RESULT ")]
    if proc.returncode != 0 or not stamps:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise RuntimeError(f"cold start run failed (exit {proc.returncode}): {tail}")
    return float(stamps[0].split()[1]) - started


def run_cold(engine: Engine, out: Any) -> None:
    """The body of ``driver --cold``: start, one result, print its time, stop."""
    engine.start()
    try:
        engine.hello()
        print(f"FIRST-RESULT {time.time():.6f}", file=out, flush=True)
    finally:
        engine.stop()


def _private_stdout() -> Any:
    """A stream on the real stdout, which then points at stderr: engines and the
    servers they spawn print banners on stdout, which must not mix with the report."""
    out = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    os.dup2(2, 1)
    return out


def one_rep(engine: Engine, workloads: list[str], sizes: Sizes,
            figures: dict[str, list[float]], errors: dict[str, str]) -> dict[str, Any]:
    """Start the cluster, warm it up, measure each workload once, read memory, stop."""
    engine.start()
    try:
        for workload in workloads:
            if workload in errors:
                continue
            try:
                measure(engine, workload, SIZES["tiny"])  # warm-up
                for key, value in measure(engine, workload, sizes).items():
                    figures.setdefault(key, []).append(value)
            except NotApplicable as exc:
                errors[workload] = f"n/a: {exc}"
            except Exception as exc:  # noqa: BLE001 -- a process edge: report it, go on
                errors[workload] = f"{type(exc).__name__}: {exc}"
                log(traceback.format_exc())
        return memory(engine.cluster_pids())
    finally:
        engine.stop()


def run(engine: Engine, driver: Path, reps: int, size: str,
        workloads: list[str]) -> dict[str, Any]:
    """Every measurement of one engine, as the JSON document bench/run.py reads."""
    sizes = engine.sizes(SIZES[size])
    report: dict[str, Any] = {"engine": engine.name, "version": engine.version(),
                              "durable": engine.durable, "size": size, "sizes": asdict(sizes),
                              "figures": {}, "errors": {}, "notes": engine.notes,
                              "memory": []}
    figures: dict[str, list[float]] = report["figures"]
    for rep in range(reps):
        log(f"[{engine.name}] rep {rep + 1}/{reps}")
        if "cold" in workloads:
            try:
                figures.setdefault("cold_start_s", []).append(cold_start(driver))
            except Exception as exc:  # noqa: BLE001 -- recorded; the other workloads still run
                report["errors"]["cold"] = f"{type(exc).__name__}: {exc}"
        mem = one_rep(engine, [w for w in workloads if w != "cold"], sizes, figures,
                      report["errors"])
        figures.setdefault("memory_mib", []).append(mem["pss_mib"])
        figures.setdefault("memory_rss_mib", []).append(mem["rss_mib"])
        report["memory"].append(mem["processes"])
    report["medians"] = {k: statistics.median(v) for k, v in figures.items() if v}
    return report


def main(make: Callable[[], Engine], driver: str) -> None:
    """Command line of a driver: ``--cold``, or a full run printing JSON on stdout."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", action="store_true", help="one cold start, then exit")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--workloads", default=",".join((*WORKLOADS, "cold")))
    args = parser.parse_args()
    out = _private_stdout()
    engine = make()
    if args.cold:
        run_cold(engine, out)
        return
    try:
        report = run(engine, Path(driver).resolve(), args.reps, args.size,
                     [w for w in args.workloads.split(",") if w])
    except Exception as exc:  # noqa: BLE001 -- the process edge: run.py prints it
        log(traceback.format_exc())
        report = {"engine": engine.name, "fatal": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(report), file=out, flush=True)
