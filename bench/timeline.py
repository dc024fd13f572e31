"""Where plait's time goes: a chain hop stage by stage, a map-reduce phase by phase.

    python bench/timeline.py chain [--hops 1000]
    python bench/timeline.py map [--n 10000] [--reps 3]

``chain`` runs the chain workload on a ``plait dev`` cluster whose processes
load ``bench/probe/sitecustomize.py``: each notes the wall-clock time at which
it encodes or decodes a message and begins or ends a commit. The notes of all
processes are merged, every hop is matched against the sixteen stages below,
and the median of each stage is printed. The probe costs a few microseconds a
note, so a probed hop is somewhat slower than the benchmark's; the stages'
shares are what this is for.

``map`` needs no probe: it reads a map-reduce's event history (every event
carries the time Flow recorded it) and prints the serial start (the driver's
big diff until the first child runs) apart from the steady rate.

Nothing here is a benchmark figure; ``bench/run.py`` takes those.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH / "peers"))
sys.path.insert(0, str(BENCH.parent))

from plait_peer import Plait  # noqa: E402  (the bench's own driver of a plait dev cluster)

# One hop of the chain, as the notes show it: (process:what, what the stage is).
STAGES = [
    ("worker:enc Wait", "parent's worker sends Wait (the spawn) to its supervisor"),
    ("supervisor:dec Wait", "supervisor relays it to Flow"),
    ("gateway:dec Wait", "Gateway hands it to the keeper, which applies the diff"),
    ("keeper:enc Assign", "keeper hands the Write to the Store"),
    ("store:commit-begin", "commit (spawn, child running, parent suspended)"),
    ("store:commit-end", "Store -> Gateway -> supervisor (Assign)"),
    ("supervisor:dec Assign", "supervisor relays it to a worker"),
    ("worker:dec Assign", "the child runs (x + 1) in its worker"),
    ("worker:enc Finish", "child's worker sends Finish to its supervisor"),
    ("supervisor:dec Finish", "supervisor relays it to Flow"),
    ("gateway:dec Finish", "Gateway hands it to the keeper, which records the result"),
    ("keeper:enc Resolved", "keeper hands the Write to the Store"),
    ("store:commit-begin", "commit (child succeeded, parent running)"),
    ("store:commit-end", "Store -> Gateway -> supervisor (Resolved)"),
    ("supervisor:dec Resolved", "supervisor relays it to the parent's worker"),
    ("worker:dec Resolved", "the parent resumes and spawns the next hop"),
    ("worker:enc Wait", ""),
]
WINDOW = 60  # notes a hop may span (others' heartbeats and credits interleave)


def _role(pid: int, thread: str, flow_pid: int) -> str:
    if thread == "plait-worker-link":
        return "worker"
    if pid == flow_pid:
        if thread == "plait-gateway":
            return "gateway"
        return thread.split("-")[0].lower().replace("plankeeper", "keeper")
    return "supervisor"


def _notes(directory: Path, since: int, until: int, flow_pid: int
           ) -> list[tuple[int, str]]:
    notes = []
    for path in directory.glob("*.log"):
        for line in path.read_text().splitlines():
            ns, pid, thread, what = line.split(" ", 3)
            if since <= int(ns) <= until:
                notes.append((int(ns), f"{_role(int(pid), thread, flow_pid)}:{what}"))
    notes.sort()
    return notes


def _hops(notes: list[tuple[int, str]]) -> list[list[int]]:
    """Each hop's note times, one per stage: a subsequence match from every Wait."""
    wanted = [label for label, _ in STAGES]
    hops = []
    for i, (_, label) in enumerate(notes):
        if label != wanted[0]:
            continue
        times, k = [], 0
        for ns, other in notes[i:i + WINDOW]:
            if other == wanted[k]:
                times.append(ns)
                k += 1
                if k == len(wanted):
                    hops.append(times)
                    break
    return hops


def chain(hops: int) -> None:
    with tempfile.TemporaryDirectory(prefix="plait-probe-") as directory:
        os.environ["PLAIT_PROBE"] = directory
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(BENCH / "probe"), *filter(None, [os.environ.get("PYTHONPATH")])])
        engine = Plait()
        engine.start()
        try:
            engine.hello()
            engine.chain(50)  # warm: imports, first workflow, the database's pages
            since = time.time_ns()
            laps = engine.chain(hops)
            until = time.time_ns()
            engine.chain(40)  # pushes every process's last block of notes to its file
            flow_pid = engine.cluster_pids()[0]
        finally:
            engine.stop()
        matched = _hops(_notes(Path(directory), since, until, flow_pid))
    if not matched:
        raise SystemExit("no hop matched the stages: did the probe load? (PLAIT_PROBE)")
    print(f"chain: {len(matched)} of {hops} hops matched; the driver's own lap p50 "
          f"{statistics.median(laps) * 1e3:.3f} ms (probed)\n")
    print("| stage | median µs | share |\n|---|---|---|")
    medians = [statistics.median(h[k + 1] - h[k] for h in matched) / 1e3
               for k in range(len(STAGES) - 1)]
    total = sum(medians)
    for (_, what), median in zip(STAGES, medians, strict=False):
        print(f"| {what} | {median:.0f} | {median / total:.0%} |")
    hop = statistics.median(h[-1] - h[0] for h in matched) / 1e3
    print(f"| **one hop** (median; the stages' medians add up to {total:.0f}) | **{hop:.0f}** | |")


def _phases(history: list[dict[str, Any]], n: int) -> dict[str, float]:
    def times(kind: str, state: str | None = None) -> list[float]:
        return sorted(e["ts"] for e in history if e["type"] == kind
                      and (state is None or e.get("state") == state))

    running, done = times("state", "running"), times("state", "succeeded")
    big = [e["ts"] for e in history
           if e["type"] == "diff" and len(e["diff"].get("nodes") or ()) >= n]
    if not big or len(done) < n + 2:
        raise SystemExit("the history does not show a whole map (was n too small?)")
    children = done[:n]  # the children end first, then the sum, then the driver
    return {
        "driver starts -> its diff is applied": big[0] - running[0],
        "diff applied -> first child runs": running[1] - big[0],
        "first child runs -> first child done": children[0] - running[1],
        "first child done -> last child done": children[-1] - children[0],
        "last child done -> workflow ends": times("workflow")[-1] - children[-1],
        "submitted -> ended": times("workflow")[-1] - times("submitted")[0],
    }


def map_reduce(n: int, reps: int) -> None:
    engine = Plait()
    engine.start()
    try:
        engine.hello()
        engine.run_map_reduce(min(n, 2000))  # warm
        runs = []
        for rep in range(reps):
            assert engine.client is not None
            wid = f"timeline-{rep}-{os.urandom(3).hex()}"
            run = engine.client.start("bench.workloads.map_reduce:mr_driver", [n],
                                      workflow_id=wid)
            run.result(timeout=300)
            runs.append(_phases(engine.client.history(wid), n))
    finally:
        engine.stop()
    print(f"map-reduce of {n:,}, medians of {reps} (ms; from Flow's event times)\n")
    print("| phase | ms |\n|---|---|")
    for phase in runs[0]:
        print(f"| {phase} | {statistics.median(r[phase] for r in runs) * 1e3:.0f} |")
    span = statistics.median(r["first child done -> last child done"] for r in runs)
    whole = statistics.median(r["submitted -> ended"] for r in runs)
    print(f"\nsteady rate {(n - 1) / span:,.0f} tasks/s; whole workflow {(n + 1) / whole:,.0f} "
          f"tasks/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("chain").add_argument("--hops", type=int, default=1000)
    m = sub.add_parser("map")
    m.add_argument("--n", type=int, default=10_000)
    m.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if args.what == "chain":
        chain(args.hops)
    else:
        map_reduce(args.n, args.reps)


if __name__ == "__main__":
    main()
