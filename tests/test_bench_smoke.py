"""The benchmark harness runs every plait workload end to end (tiny sizes, no peers).

It checks that each figure is produced and is a positive number, so that the
harness cannot rot; it asserts nothing about speed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from plait.testing import descendants

REPO = Path(__file__).resolve().parent.parent
FIGURES = ("chain_p50_ms", "chain_p99_ms", "map_reduce_tasks_per_s", "fanout_tasks_per_s",
           "step_ms", "cold_start_s", "memory_mib")


def _script(*args: str) -> str:
    """Run a bench script; its stdout. A script that times out is killed with every
    process below it (its ``plait dev`` runs in a session of its own)."""
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=110)
    except subprocess.TimeoutExpired:
        for pid in [proc.pid, *descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{args[0]} timed out\n{out}{err}") from None
    assert proc.returncode == 0, out + err
    return out


def test_every_plait_workload_produces_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    results = tmp_path / "RESULTS.md"
    _script("bench/run.py", "--peers", "none", "--size", "tiny", "--reps", "1",
            "--json", str(out), "--results", str(results))
    report = json.loads(out.read_text())["reports"][0]
    assert report["engine"] == "plait"
    assert "fatal" not in report, report
    assert report["errors"] == {}
    for key in FIGURES:
        values = report["figures"][key]
        assert len(values) == 1, (key, values)
        assert values[0] > 0, (key, values)
        assert report["medians"][key] == values[0]
    text = results.read_text()
    for title in ("chain", "map-reduce", "dynamic fan-out", "durable step", "cold start",
                  "memory"):
        assert f"### {title}" in text
    assert "| plait |" in text


@pytest.mark.parametrize(("argv", "header", "rows", "commits"), [
    (["chain", "--hops", "30"], r"chain: (\d+) of 30 hops matched", 17, [4, 12]),  # 16 + hop
    (["steps", "--n", "30"], r"durable step: (\d+) of 30 steps matched", 9, [4]),  # 8 + step
], ids=["chain", "steps"])
def test_timeline_splits_a_hop_into_its_stages(argv: list[str], header: str, rows: int,
                                               commits: list[int]) -> None:
    out = _script("bench/timeline.py", *argv)
    matched = re.search(header, out)
    assert matched is not None, out
    # A hop with a note lost (a process stopped before writing its last block) is
    # dropped, not counted: nearly all must match.
    assert int(matched[1]) >= 25, out
    found = re.findall(r"^\| (.+?) \| \**(\d+)\** \|", out, re.MULTILINE)
    stages = [what for what, _ in found]
    assert len(stages) == rows, out
    assert all(stages[i].startswith("commit") for i in commits), out
    assert all(int(us) > 0 for _, us in found), out


def test_timeline_splits_a_map_reduce_into_its_phases() -> None:
    out = _script("bench/timeline.py", "map", "--n", "300", "--reps", "1")
    phases = dict(re.findall(r"^\| (.+?) \| (\d+) \|$", out, re.MULTILINE))
    assert list(phases) == [
        "driver assigned -> its diff applied",
        "-> first child assigned (before the diff's commit)",
        "-> its result recorded (the diff's commit included)",
        "first -> last child's result recorded", "-> workflow ended", "submitted -> ended"], out
    parts = sum(int(ms) for phase, ms in phases.items() if phase != "submitted -> ended")
    assert parts <= int(phases["submitted -> ended"]) + 5, out  # the phases follow each other
    assert re.search(r"steady rate [\d,]+ tasks/s", out), out


def test_floor_measures_each_step_of_the_path_and_adds_them_up() -> None:
    out = _script("bench/floor.py", "--n", "30")
    steps = re.findall(r"^\| (a .+?) \| ([\d,]+) \|$", out, re.MULTILINE)
    assert len(steps) == 5, out
    assert all(int(us.replace(",", "")) > 0 for _, us in steps), out
    floors = dict(re.findall(r"^\| (chain hop|durable step)\b.*? \| ([\d.]+) \| ≤ 1 ms \|",
                             out, re.MULTILINE))
    assert set(floors) == {"chain hop", "durable step"}, out
    assert float(floors["chain hop"]) > float(floors["durable step"]) > 0, out


def test_floor_counts_the_design_path() -> None:
    spec = importlib.util.spec_from_file_location("floor", REPO / "bench" / "floor.py")
    assert spec is not None
    assert spec.loader is not None
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    unit = {"ipc": 1.0, "tcp": 1.0, "queue": 1.0, "inproc": 1.0, "commit": 0.0}
    # A chain hop: 8 crossings and 10 hand-offs; a durable step: 4 and 5.
    assert floor.floors(unit) == {"chain": 18.0, "step": 9.0}
    commits = {**dict.fromkeys(unit, 0.0), "commit": 1.0}
    assert floor.floors(commits) == {"chain": 2.0, "step": 1.0}
