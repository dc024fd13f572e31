"""The benchmark harness runs every plait workload end to end (tiny sizes, no peers).

It checks that each figure is produced and is a positive number, so that the
harness cannot rot; it asserts nothing about speed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIGURES = ("chain_p50_ms", "chain_p99_ms", "map_reduce_tasks_per_s", "fanout_tasks_per_s",
           "step_ms", "cold_start_s", "memory_mib")


def test_every_plait_workload_produces_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    results = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--peers", "none", "--size", "tiny", "--reps", "1",
         "--json", str(out), "--results", str(results)],
        cwd=REPO, capture_output=True, text=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
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


def _timeline(*args: str) -> str:
    proc = subprocess.run([sys.executable, "bench/timeline.py", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_timeline_splits_chain_hops_into_their_stages() -> None:
    out = _timeline("chain", "--hops", "30")
    matched = re.search(r"chain: (\d+) of 30 hops matched", out)
    assert matched is not None, out
    assert int(matched[1]) >= 25, out  # a hop cut by a heartbeat's notes may be missed
    rows = re.findall(r"^\| (.+?) \| \**(\d+)\** \|", out, re.MULTILINE)
    stages = [what for what, _ in rows]
    assert len(stages) == 17, out  # sixteen stages and the hop
    assert stages[4].startswith("commit")
    assert stages[12].startswith("commit")
    assert all(int(us) > 0 for _, us in rows), out


def test_timeline_splits_a_map_reduce_into_its_phases() -> None:
    out = _timeline("map", "--n", "300", "--reps", "1")
    phases = dict(re.findall(r"^\| (.+?) \| (\d+) \|$", out, re.MULTILINE))
    assert set(phases) == {
        "driver starts -> its diff is applied", "diff applied -> first child runs",
        "first child runs -> first child done", "first child done -> last child done",
        "last child done -> workflow ends", "submitted -> ended"}, out
    assert int(phases["submitted -> ended"]) >= int(phases["first child done -> last child done"])
    assert re.search(r"steady rate [\d,]+ tasks/s", out), out
