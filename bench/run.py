"""Measure plait and its peers on this machine, in one run, and print the ratios.

    python bench/run.py [--peers all|none|dask,celery,...] [--reps 3]
                        [--size tiny|small|full] [--json out.json] [--results FILE]

Each engine runs as a subprocess (``bench/peers/<engine>_peer.py``; plait's
with this interpreter, each peer with its own venv under ``bench/.venvs/``,
built on first use by ``bench/peers/setup.py``) that prints one JSON report on
stdout. Engines run one after the other, never at once. A peer that cannot be
installed or run is skipped with the reason. Figures are medians of ``--reps``
repetitions; see ``bench/peers/benchlib.py`` for how each is taken, and
``bench/README.md`` for the workloads.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEERS_DIR = BENCH / "peers"
sys.path.insert(0, str(PEERS_DIR))

import setup as peer_setup  # noqa: E402  (bench/peers/setup.py: the venv builder)


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    digits: int = 1


# Workload title -> its figures, in the order printed.
TABLES: dict[str, tuple[str, list[Figure]]] = {
    "chain": ("chain: per-hop latency, each hop awaiting the previous result (x + 1)", [
        Figure("chain_p50_ms", "p50", "ms", False, 2),
        Figure("chain_p99_ms", "p99", "ms", False, 2)]),
    "map_reduce": ("map-reduce: map a no-op over n integers, then one sum task", [
        Figure("map_reduce_tasks_per_s", "throughput", "tasks/s", True, 0)]),
    "fanout": ("dynamic fan-out: a task spawns 0..most children (seeded), a final task counts them",
               [Figure("fanout_tasks_per_s", "throughput", "tasks/s", True, 0)]),
    "steps": ("durable step: sequential steps, each durably recorded before the next", [
        Figure("step_ms", "per step", "ms", False, 2)]),
    "cold": ("cold start: from launching the local cluster to the first workflow result", [
        Figure("cold_start_s", "time", "s", False, 2)]),
    "memory": ("memory: PSS of the whole local cluster (2 workers) after the workloads", [
        Figure("memory_mib", "PSS", "MiB", False, 0),
        Figure("memory_rss_mib", "RSS", "MiB", False, 0)]),
}
WORKLOADS = ("chain", "map_reduce", "fanout", "steps", "cold")

# plait's targets on a 2-core machine (issue 5): figure -> (target, higher is better).
TARGETS: dict[str, tuple[str, float, bool]] = {
    "map_reduce_tasks_per_s": ("map-reduce throughput", 5_000, True),
    "fanout_tasks_per_s": ("dynamic fan-out throughput", 3_000, True),
    "chain_p50_ms": ("chain p50 per hop", 1.0, False),
    "step_ms": ("durable step", 1.0, False),
    "cold_start_s": ("cold start", 0.5, False),
    "memory_mib": ("memory, 2 workers", 150, False),
}


# --- machine ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were taken on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    commit = os.environ.get("PLAIT_BENCH_COMMIT") or _commit()
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": cpu, "ram_gib": round(ram / 2**30, 1),
            "python": platform.python_version(), "kernel": platform.release(),
            "commit": commit, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "loadavg_start": list(os.getloadavg())}


def _commit() -> str:
    """HEAD's short hash, flagged when plait/ has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO,
                              check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return f"{head} + uncommitted changes in plait/" if git("status", "--porcelain",
                                                            "plait") else head


# --- running one engine ---------------------------------------------------------------------


def _pump(stream: Any, log: Any, name: str) -> None:
    """Copy a driver's stderr to its log; echo its progress lines."""
    for line in stream:
        log.write(line)
        log.flush()
        if line.startswith(f"[{name}]"):
            print(f"  {line.rstrip()}", file=sys.stderr, flush=True)


def run_engine(name: str, python: Path, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """Run one engine's driver; its report (or {"engine", "fatal"} with the reason)."""
    driver = PEERS_DIR / f"{name}_peer.py"
    argv = [str(python), str(driver), "--reps", str(args.reps), "--size", args.size,
            "--workloads", ",".join(args.workloads)]
    log_path = logs / f"{name}.log"
    print(f"{name}: running ({log_path})", file=sys.stderr, flush=True)
    started = time.monotonic()
    load = os.getloadavg()[0]
    with log_path.open("w") as log, tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        pump = threading.Thread(target=_pump, args=(proc.stderr, log, name), daemon=True)
        pump.start()
        try:
            proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"engine": name, "fatal": f"timed out after {args.timeout:g} s"}
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever the driver left behind
            pump.join(timeout=10)
        out.seek(0)
        lines = [ln for ln in out.read().splitlines() if ln.startswith("{")]
    if not lines:
        tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-4:])
        return {"engine": name, "fatal": f"exit {proc.returncode}, no report: {tail}"}
    report: dict[str, Any] = json.loads(lines[-1])
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    report["loadavg"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    return report


def prepare_peer(peer: str, install: bool) -> tuple[Path | None, str]:
    """The peer's interpreter, or None with the reason it is skipped."""
    if not peer_setup.is_ready(peer):
        if not install:
            return None, "not installed (run bench/peers/setup.py, or drop --no-install)"
        print(f"{peer}: installing into bench/.venvs/{peer} ...", file=sys.stderr, flush=True)
        ok, message = peer_setup.install(peer)
        if not ok:
            return None, f"cannot install: {message}"
    return peer_setup.venv_python(peer), ""


# --- printing -------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _spread(values: list[float], digits: int) -> str:
    if len(values) < 2:
        return ""
    return f"{min(values):,.{digits}f} to {max(values):,.{digits}f}"


def _ratio_line(fig: Figure, plait: float | None, peers: dict[str, float]) -> str:
    if plait is None or not peers:
        return f"plait / best peer ({fig.label}): n/a"
    best = max(peers, key=peers.__getitem__) if fig.higher_is_better else \
        min(peers, key=peers.__getitem__)
    ratio = plait / peers[best]
    wins = ratio > 1 if fig.higher_is_better else ratio < 1
    better = "higher" if fig.higher_is_better else "lower"
    verdict = "plait ahead" if wins else "plait behind"
    return (f"plait / best peer ({fig.label}): **{ratio:.2f}x** vs {best} "
            f"({better} is better: {verdict})")


def table(key: str, reports: list[dict[str, Any]]) -> list[str]:
    """One workload's markdown table and its ratio lines."""
    title, figures = TABLES[key]
    head = ["engine", *[f"{f.label} ({f.unit})" for f in figures], "range (min to max)", "note"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    values: dict[str, dict[str, float]] = {}
    for rep in reports:
        medians = rep.get("medians", {})
        row = [rep["engine"]]
        for fig in figures:
            row.append(_fmt(medians.get(fig.key), fig.digits))
        first = figures[0]
        row.append(_spread(rep.get("figures", {}).get(first.key, []), first.digits))
        row.append(_note(key, rep))
        lines.append("| " + " | ".join(row) + " |")
        values[rep["engine"]] = {f.key: medians[f.key] for f in figures if f.key in medians}
    lines.append("")
    for fig in figures:
        peers = {e: v[fig.key] for e, v in values.items() if e != "plait" and fig.key in v}
        lines.append(_ratio_line(fig, values.get("plait", {}).get(fig.key), peers) + "  ")
    return [*lines, ""]


def _note(key: str, rep: dict[str, Any]) -> str:
    err = rep.get("errors", {}).get(key)
    if err:
        return err.replace("|", "/")[:120]
    sizes = rep.get("sizes", {})
    if not sizes:
        return ""
    return {"chain": f"{sizes['chain']} hops", "map_reduce": f"n = {sizes['map']:,}",
            "fanout": f"{len(sizes['fan_seeds'])} fan-outs of 0..{sizes['fan_most']}",
            "steps": f"{sizes['steps']} steps"}.get(key, "")


def durability(reports: list[dict[str, Any]]) -> list[str]:
    lines = ["### engines: version, and whether state persists so that a crash can resume", "",
             "| engine | version | persists state for crash resume | run time | load (start→end) |",
             "|---|---|---|---|---|"]
    for rep in reports:
        load = rep.get("loadavg", ["", ""])
        lines.append(f"| {rep['engine']} | {rep.get('version', '')} | "
                     f"{rep.get('durable', '').replace('|', '/')} | {rep.get('elapsed_s', '')} s | "
                     f"{load[0]} → {load[1]} |")
    return [*lines, ""]


def render(info: dict[str, Any], reports: list[dict[str, Any]],
           skipped: dict[str, str], args: argparse.Namespace) -> str:
    ok = [r for r in reports if "fatal" not in r]
    failed = {r["engine"]: r["fatal"] for r in reports if "fatal" in r}
    out = [f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']} GiB RAM, "
           f"Python {info['python']}, Linux {info['kernel']}  ",
           f"Commit: {info['commit']}, {info['date']}; size {args.size}, medians of "
           f"{args.reps} repetition(s)  ",
           f"Load average (1, 5, 15 min) at the start: "
           f"{', '.join(f'{x:.2f}' for x in info['loadavg_start'])}; at the end: "
           f"{', '.join(f'{x:.2f}' for x in info.get('loadavg_end', []))}", ""]
    for name, reason in skipped.items():
        out.append(f"- **{name} skipped**: {reason}")
    for name, reason in failed.items():
        out.append(f"- **{name} failed**: {reason}")
    if skipped or failed:
        out.append("")
    keys = [k for k in TABLES if k == "memory" or k in args.workloads]
    for key in keys:
        out += table(key, ok)
    out += targets(ok)
    out += durability(ok)
    notes = [f"- {r['engine']}: {n}" for r in ok for n in r.get("notes", [])]
    if notes:
        out += ["Notes:", "", *notes, ""]
    return "\n".join(out)


def targets(reports: list[dict[str, Any]]) -> list[str]:
    """plait's figures against its targets."""
    plait = next((r for r in reports if r["engine"] == "plait" and "medians" in r), None)
    if plait is None:
        return []
    figures = {f.key: f for _, figs in TABLES.values() for f in figs}
    lines = ["### plait against its targets (issue 5)", "",
             "| figure | target | plait | met |", "|---|---|---|---|"]
    for key, (name, goal, higher) in TARGETS.items():
        value = plait["medians"].get(key)
        fig = figures[key]
        met = "—" if value is None else ("yes" if (value >= goal if higher else value <= goal)
                                         else "no")
        lines.append(f"| {name} | {'≥' if higher else '≤'} {goal:,g} {fig.unit} | "
                     f"{_fmt(value, fig.digits)} | {met} |")
    return [*lines, ""]


def results_page(info: dict[str, Any], reports: list[dict[str, Any]], tables: str) -> str:
    """RESULTS.md: a title, how to reproduce, a warning if the machine was busy, the tables."""
    loads = [info["loadavg_start"][0], *(info.get("loadavg_end") or [])[:1]]
    loads += [x for r in reports for x in r.get("loadavg", [])]
    busy = max(loads) > 0.5 * info["nproc"]
    head = ["# Benchmark results", "",
            "Produced by `python bench/run.py --results bench/RESULTS.md` (see "
            "[README.md](README.md) for the workloads and how each figure is taken). "
            "Ratios are plait / best peer; each table says which direction is better.", ""]
    if busy:
        head += [f"**Noisy figures.** The machine was shared while they were taken (1-minute "
                 f"load average between {min(loads):.2f} and {max(loads):.2f} on "
                 f"{info['nproc']} CPUs; per-engine loads in the last table): wall-clock "
                 "figures include the neighbours' work. Re-run on a quiet machine before "
                 "quoting them.", ""]
    return "\n".join(head) + "\n" + tables + "\n"


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="plait against its peers, on this machine.")
    parser.add_argument("--peers", default="all",
                        help=f"all, none, or a comma-separated list of: "
                             f"{', '.join(peer_setup.PEERS)}")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--size", choices=("tiny", "small", "full"), default="full")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of {', '.join(WORKLOADS)}")
    parser.add_argument("--json", type=Path, help="also write every report here")
    parser.add_argument("--results", type=Path, help="also write the tables (markdown) here")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds one engine may take in all (default 3600)")
    parser.add_argument("--no-install", action="store_true",
                        help="skip peers whose venv is missing instead of building it")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the drivers' logs (kept anyway when an engine fails)")
    parser.add_argument("--skip-plait", action="store_true",
                        help="measure only the peers (to combine later with --render)")
    parser.add_argument("--render", type=Path, nargs="+", metavar="JSON",
                        help="measure nothing: print the tables of earlier --json files "
                             "(an engine's first report wins)")
    args = parser.parse_args(argv)
    args.workloads = [w for w in args.workloads.split(",") if w]
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(unknown)}")
    return args


def rendered(files: list[Path]) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, str]]:
    """Machine, reports and skipped peers of earlier runs, merged (plait first)."""
    runs = [json.loads(f.read_text()) for f in files]
    info = dict(runs[0]["machine"])
    if len(runs) > 1:
        info["date"] = "; ".join(r["machine"]["date"] for r in runs)
        info["commit"] = "; ".join(dict.fromkeys(r["machine"]["commit"] for r in runs))
    reports: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for run in runs:
        for rep in run["reports"]:
            reports.setdefault(rep["engine"], rep)
        for name, reason in run.get("skipped", {}).items():
            skipped.setdefault(name, reason)
    ordered = sorted(reports.values(), key=lambda r: r["engine"] != "plait")
    return info, ordered, {k: v for k, v in skipped.items() if k not in reports}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return render_only(args) if args.render else measure(args)


def render_only(args: argparse.Namespace) -> int:
    """``--render``: the tables of earlier runs, nothing measured."""
    info, reports, skipped = rendered(args.render)
    runs = [json.loads(f.read_text()) for f in args.render]
    args.size = "/".join(dict.fromkeys(r["args"]["size"] for r in runs if "args" in r))
    args.reps = max(r.get("args", {}).get("reps", 0) for r in runs)
    return _finish(info, reports, skipped, args)


def measure(args: argparse.Namespace) -> int:
    """Run plait, then each peer in turn; print (and keep) the tables."""
    peers = peer_setup.parse_peers(args.peers)
    info = machine()
    logs = Path(tempfile.mkdtemp(prefix="plait-bench-logs-"))
    # Installed packages come with their bytecode compiled (pip does it); a checkout
    # run with PYTHONDONTWRITEBYTECODE would compile plait and the drivers on every
    # start, which the cold start would count against plait alone.
    for tree in ("plait", "bench"):
        compileall.compile_dir(REPO / tree, quiet=1, rx=re.compile(r"[/\\]\.venvs"))
    reports = [] if args.skip_plait else [run_engine("plait", Path(sys.executable), args, logs)]
    skipped: dict[str, str] = {}
    for peer in peers:
        python, reason = prepare_peer(peer, not args.no_install)
        if python is None:
            print(f"{peer}: skipped: {reason}", file=sys.stderr, flush=True)
            skipped[peer] = reason
            continue
        reports.append(run_engine(peer, python, args, logs))
    info["loadavg_end"] = list(os.getloadavg())
    if args.keep_logs or any("fatal" in r for r in reports):
        print(f"drivers' logs kept in {logs}", file=sys.stderr)
    else:
        shutil.rmtree(logs, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(
            {"machine": info, "args": {"size": args.size, "reps": args.reps},
             "reports": reports, "skipped": skipped}, indent=1))
    return _finish(info, reports, skipped, args)


def _finish(info: dict[str, Any], reports: list[dict[str, Any]], skipped: dict[str, str],
            args: argparse.Namespace) -> int:
    text = render(info, reports, skipped, args)
    print(text)
    if args.results:
        args.results.write_text(results_page(info, reports, text))
    plait = [r for r in reports if r["engine"] == "plait"]
    return 1 if plait and "fatal" in plait[0] else 0


if __name__ == "__main__":
    sys.exit(main())
