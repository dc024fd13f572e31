"""Where plait's time goes: a chain hop or a durable step stage by stage, a
map-reduce phase by phase.

    python bench/timeline.py chain [--hops 1000]
    python bench/timeline.py steps [--n 2000]
    python bench/timeline.py map [--n 10000] [--reps 3]

``chain`` runs the chain workload on a ``plait dev`` cluster whose processes
load ``bench/probe/sitecustomize.py``: each notes the wall-clock time at which
it encodes or decodes a message and begins or ends a commit. The notes of all
processes are merged, every hop is matched against the sixteen stages below,
and the median of each stage is printed. A note costs ~15 µs here and a block
of notes is written to a file every 64, so a probed hop is ~0.3 ms slower than
the benchmark's and the stages are inflated unevenly: read the shares, not
the microseconds. ``steps`` does the same for the durable-step workload (the
eight stages of ``STEP_STAGES``).

``map`` needs no probe: it reads a map-reduce's event history and prints the
serial start (from the driver's assignment until its first child's result)
apart from the steady rate. An event's time is when Flow's keeper recorded it,
before its commit: a node's "running" is its assignment, not its start.

Nothing here is a benchmark figure; ``bench/run.py`` takes those.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH / "peers"))
sys.path.insert(0, str(BENCH.parent))

from plait_peer import Plait  # noqa: E402  (the bench's own driver of a plait dev cluster)

# One hop of the chain, as the notes show it: (process:what, what the stage is).
# The last note is the parent's next Wait, or its Finish after the last hop.
STAGES = [
    ("worker:enc Wait", "the parent's worker sends Wait (the spawn) to its supervisor"),
    ("supervisor:dec Wait", "the supervisor relays it to Flow"),
    ("gateway:dec Wait", "the Gateway hands it to the keeper, which applies the diff"),
    ("keeper:enc Assign", "the keeper hands the Write to the Store"),
    ("store:commit-begin", "commit (the spawn, the child running, the parent suspended)"),
    ("store:commit-end", "Store -> Gateway -> supervisor (Assign)"),
    ("supervisor:dec Assign", "the supervisor relays it to a worker"),
    ("worker:dec Assign", "the child runs (x + 1) in its worker"),
    ("worker:enc Finish", "the child's worker sends Finish to its supervisor"),
    ("supervisor:dec Finish", "the supervisor relays it to Flow"),
    ("gateway:dec Finish", "the Gateway hands it to the keeper, which records the result"),
    ("keeper:enc Resolved", "the keeper hands the Write to the Store"),
    ("store:commit-begin", "commit (the child succeeded, the parent running)"),
    ("store:commit-end", "Store -> Gateway -> supervisor (Resolved)"),
    ("supervisor:dec Resolved", "the supervisor relays it to the parent's worker"),
    ("worker:dec Resolved", "the parent resumes and spawns the next hop"),
    ("worker:enc Wait", ""),
]
PARENT = (0, 15, 16)  # stages noted by the parent's worker
CHILD = (7, 8)  # and by the child's, another process

# One durable step: from the task's Propose (its recorded value) to the next one.
STEP_STAGES = [
    ("worker:enc Propose", "the task's worker sends Propose (the value) to its supervisor"),
    ("supervisor:dec Propose", "the supervisor relays it to Flow"),
    ("gateway:dec Propose", "the Gateway hands it to the keeper, which notes the value"),
    ("keeper:enc Proposed", "the keeper hands the Write to the Store"),
    ("store:commit-begin", "commit (the recorded value)"),
    ("store:commit-end", "Store -> Gateway -> supervisor (Proposed)"),
    ("supervisor:dec Proposed", "the supervisor relays it to the worker"),
    ("worker:dec Proposed", "the task goes on and runs the next step"),
    ("worker:enc Propose", ""),
]


class Note(NamedTuple):
    ns: int
    pid: int
    label: str  # process:what


def _role(pid: int, thread: str, flow_pid: int, workers: set[int]) -> str:
    if pid in workers:  # its link thread decodes; the task's thread encodes what it sends
        return "worker"
    if pid == flow_pid:
        if thread == "plait-gateway":
            return "gateway"
        return thread.split("-")[0].lower().replace("plankeeper", "keeper")
    return "supervisor"


def _notes(directory: Path, since: int, until: int, flow_pid: int) -> list[Note]:
    notes = []
    lines = [line.split(" ", 3) for path in directory.glob("*.log")
             for line in path.read_text().splitlines()]
    workers = {int(pid) for _, pid, thread, _ in lines if thread == "plait-worker-link"}
    for ns, pid, thread, what in lines:
        if since <= int(ns) <= until:
            role = _role(int(pid), thread, flow_pid, workers)
            notes.append(Note(int(ns), int(pid), f"{role}:{what}"))
    notes.sort()
    return notes


def _hops(notes: list[Note], stages: list[tuple[str, str]] = STAGES,
          parent_stages: tuple[int, ...] = PARENT,
          child_stages: tuple[int, ...] = CHILD) -> list[list[int]]:
    """Each hop's note times, one per stage. A hop runs from one of the parent's
    first notes (its Wait) to the next (or its Finish): the stages are matched in
    order within those bounds only, so a missing note loses its hop instead of
    borrowing the next hop's, and every stage must come from the process it
    belongs to."""
    first = stages[0][0]
    parent = next((n.pid for n in notes if n.label == first), None)
    if parent is None:
        return []
    bounds = [i for i, n in enumerate(notes) if n.pid == parent
              and n.label in (first, "worker:enc Finish")]
    hops = []
    for start, end in itertools.pairwise(bounds):
        if notes[start].label != first:
            continue
        found, k = [notes[start]], 1
        for note in notes[start + 1:end]:
            if k < len(stages) - 1 and note.label == stages[k][0]:
                found.append(note)
                k += 1
        found.append(notes[end])
        if (k == len(stages) - 1 and all(found[i].pid == parent for i in parent_stages)
                and all(found[i].pid != parent for i in child_stages)):
            hops.append([n.ns for n in found])
    return hops


def _probed(run: Callable[[Plait], Any]) -> tuple[Any, list[Note]]:
    """``run(engine)`` on a probed ``plait dev`` cluster, and the notes it took."""
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
            out = run(engine)
            until = time.time_ns()
            engine.chain(40)  # pushes every process's last block of notes to its file
            flow_pid = engine.cluster_pids()[0]
        finally:
            engine.stop()
        return out, _notes(Path(directory), since, until, flow_pid)


def _table(stages: list[tuple[str, str]], matched: list[list[int]], what: str) -> None:
    print("| stage | median µs | share |\n|---|---|---|")
    medians = [statistics.median(h[k + 1] - h[k] for h in matched) / 1e3
               for k in range(len(stages) - 1)]
    total = sum(medians)
    for (_, stage), median in zip(stages, medians, strict=False):
        print(f"| {stage} | {median:.0f} | {median / total:.0%} |")
    one = statistics.median(h[-1] - h[0] for h in matched) / 1e3
    print(f"| **{what}** (median; the stages' medians add up to {total:.0f}) | **{one:.0f}** | |")


def chain(hops: int) -> None:
    laps, notes = _probed(lambda engine: engine.chain(hops))
    matched = _hops(notes)
    if not matched:
        raise SystemExit("no hop matched the stages: did the probe load? (PLAIT_PROBE)")
    print(f"chain: {len(matched)} of {hops} hops matched; the driver's own lap p50 "
          f"{statistics.median(laps) * 1e3:.3f} ms (probed)\n")
    _table(STAGES, matched, "one hop")


def steps(n: int) -> None:
    per_step, notes = _probed(lambda engine: engine.steps(n))
    matched = _hops(notes, STEP_STAGES, (0, 7, 8), ())
    if not matched:
        raise SystemExit("no step matched the stages: did the probe load? (PLAIT_PROBE)")
    print(f"durable step: {len(matched)} of {n} steps matched; the task's own mean "
          f"{per_step * 1e3:.3f} ms a step (probed)\n")
    _table(STEP_STAGES, matched, "one step")


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
        "driver assigned -> its diff applied": big[0] - running[0],
        "-> first child assigned (before the diff's commit)": running[1] - big[0],
        "-> its result recorded (the diff's commit included)": children[0] - running[1],
        "first -> last child's result recorded": children[-1] - children[0],
        "-> workflow ended": times("workflow")[-1] - children[-1],
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
    span = statistics.median(r["first -> last child's result recorded"] for r in runs)
    whole = statistics.median(r["submitted -> ended"] for r in runs)
    print(f"\nsteady rate {(n - 1) / span:,.0f} tasks/s; whole workflow {(n + 1) / whole:,.0f} "
          f"tasks/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("chain").add_argument("--hops", type=int, default=1000)
    sub.add_parser("steps").add_argument("--n", type=int, default=2000)
    m = sub.add_parser("map")
    m.add_argument("--n", type=int, default=10_000)
    m.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if args.what == "chain":
        chain(args.hops)
    elif args.what == "steps":
        steps(args.n)
    else:
        map_reduce(args.n, args.reps)


if __name__ == "__main__":
    main()
