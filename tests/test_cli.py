"""The ``plait`` command: help, exit codes by cause, and every verb against a real
cluster (client verbs in-process; dev, demo and a waiting submit as subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import e2e
import e2e_tasks
import pytest
import zmq

from plait.actors.database import DatabaseLock
from plait.cli import Exit, describe, main
from plait.client import Client, FlowUnavailable
from plait.demo import DEMOS
from plait.errors import ProtocolError, TaskFailed
from plait.protocol.messages import FeedEvent
from plait.testing import Cluster, alive, descendants, free_port, wait_for

VERBS = ["dev", "flow", "supervisor", "submit", "status", "watch", "graph", "trace", "history",
         "cancel", "demo", "pause", "resume", "restart", "signal", "query", "attrs", "schedule"]


def plait(*argv: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``python -m plait ARGV`` in a child process, from the repository root."""
    return subprocess.run([sys.executable, "-m", "plait", *argv], cwd=e2e.ROOT, text=True,
                          capture_output=True, timeout=timeout, check=False, **kwargs)


# --- no cluster needed ----------------------------------------------------------------------


@pytest.mark.parametrize("at", ["0", "-3", str(2**63), "soon"])
def test_graph_at_takes_an_event_number(at: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Events are numbered from 1: anything else is a usage error, not "no workflow"
    (0) or an overflow inside Flow (a huge number)."""
    with pytest.raises(SystemExit) as exited:
        main(["graph", "wf-1", "--at", at, "--flow", "tcp://127.0.0.1:1"])
    assert exited.value.code == Exit.USAGE
    assert "event number" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["signal", "wf-1", "approve", '{"by": ana}'],
    ["submit", "e2e_tasks:square", "[1, 2"],
    ["submit", "e2e_tasks:square", "--kw", 'n="3'],
])
def test_text_meant_as_json_that_does_not_parse_is_refused(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Sent as a string, a typo in a signal's payload failed every retry of the task
    that read it, and stayed first in line before a corrected one."""
    assert main([*argv, "--flow", "tcp://127.0.0.1:1", "--timeout", "0.5"]) == Exit.USAGE
    assert "is not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["status", "--timeout", "inf"], ["status", "--timeout", "0"], ["status", "--timeout", "nan"],
    ["submit", "e2e_tasks:square", "3", "--wait", "--wait-timeout", "-1"],
    ["flow", "--heartbeat-interval", "0"], ["flow", "--retry-scale", "-1"],
])
def test_durations_are_positive_and_finite(argv: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """inf overflowed a poll (a traceback), 0 read as "Flow unreachable", an interval
    of 0 sent heartbeats in a tight loop to every supervisor."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == Exit.USAGE
    assert "is not a" in capsys.readouterr().err


def test_flow_refuses_a_heartbeat_timeout_within_one_interval(tmp_path: Path) -> None:
    done = plait("flow", "--port", "0", "--db", str(tmp_path / "f.db"),
                 "--heartbeat-interval", "2", "--heartbeat-timeout", "1", timeout=60)
    assert done.returncode == Exit.USAGE, done.stderr
    assert "shorter than the heartbeat timeout" in done.stderr


def test_wait_timeout_goes_with_wait(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "e2e_tasks:square", "3", "--wait-timeout", "5",
                 "--flow", "tcp://127.0.0.1:1"]) == Exit.USAGE
    assert "--wait-timeout goes with --wait" in capsys.readouterr().err


def test_watch_lines_say_what_a_diff_changed() -> None:
    def line(diff: dict[str, Any]) -> str:
        return describe(FeedEvent(workflow_id="wf", seq=3, event={"type": "diff", "diff": diff}))

    assert line({"proposer": "r", "nodes": [{"id": "r.1", "task": "t"}], "edges": [],
                 "promises": []}) == "wf #3    diff by r: +r.1 (t) +0 edges +0 promises"
    # An operator's attributes (or a cache hit's mark) were "+no nodes" by registration.
    assert line({"attrs": [{"key": "color", "value": "red", "node": "a"},
                           {"key": "label", "value": "x", "edge": ["a", "b"]}]}) == \
        'wf #3    attributes: a.color="red", a->b.label="x"'


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([verb, "--help"])
    assert exited.value.code == 0
    assert f"usage: plait {verb}" in capsys.readouterr().out


@pytest.mark.parametrize("action", ["add", "ls", "rm"])
def test_every_schedule_action_has_help(action: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["schedule", action, "--help"])
    assert exited.value.code == 0
    assert f"usage: plait schedule {action}" in capsys.readouterr().out


def test_python_m_plait() -> None:
    done = plait("--help", timeout=60)
    assert done.returncode == 0
    assert all(verb in done.stdout for verb in VERBS)


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["graph"], ["status", "--at", "x"],
                                  ["restart", "wf"], ["schedule"], ["attrs", "wf", "k=1"],
                                  ["schedule", "add", "n", "* * * * *", "m:t",
                                   "--overlap", "sometimes"]])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == Exit.USAGE


def test_an_unknown_target_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    unreachable = f"tcp://127.0.0.1:{free_port()}"
    assert main(["submit", "no_such_module:main", "--flow", unreachable]) == Exit.USAGE
    assert "cannot import" in capsys.readouterr().err


def test_an_unreachable_flow_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    unreachable = f"tcp://127.0.0.1:{free_port()}"
    assert main(["status", "--flow", unreachable, "--timeout", "0.3"]) == Exit.UNREACHABLE
    assert "did not answer" in capsys.readouterr().err


# --- client verbs against a cluster -------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with e2e.cluster(["e2e_tasks", "e2e_durable_tasks", "examples.static",
                      "examples.broken_promise", "examples.approval"]) as c:
        yield c


class Cli:
    """Runs ``plait VERB ... --flow <cluster>`` in this process; (exit code, stdout)."""

    def __init__(self, cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
        self.cluster = cluster
        self.capsys = capsys
        self.err = ""  # the last verb's standard error

    def __call__(self, verb: str, *argv: str) -> tuple[int, str]:
        self.capsys.readouterr()
        code = main([verb, *argv, "--flow", self.cluster.address, "--feed", self.cluster.feed])
        captured = self.capsys.readouterr()
        self.err = captured.err
        return code, captured.out

    def json(self, verb: str, *argv: str) -> Any:
        code, out = self(verb, *argv, "--json")
        assert code == Exit.OK, out
        return json.loads(out)


@pytest.fixture
def cli(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(cluster, capsys)


@pytest.fixture(scope="module")
def static_run(cluster: Cluster) -> str:
    run = cluster.client.submit("examples.static:pipeline")
    run.wait(e2e.RESULT_TIMEOUT)
    return run.id


def test_submit_and_wait_names_a_workflow_it_stops_waiting_for(cli: Cli, tmp_path: Path) -> None:
    """Its id, chosen by Flow, was printed nowhere: nobody could cancel it."""
    log, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    code, _ = cli("submit", "e2e_tasks:gated", json.dumps(log), json.dumps(gate), '"g"',
                  "--wait", "--wait-timeout", "0.5")
    assert code != Exit.OK
    said = [line for line in cli.err.splitlines() if line.endswith(" was submitted and runs on")]
    assert len(said) == 1, cli.err
    assert said[0].startswith("plait submit: workflow gated-")
    wf = said[0].split()[3]
    assert cli("cancel", wf)[0] == Exit.OK


def test_submit_and_wait(cli: Cli) -> None:
    code, out = cli("submit", "e2e_tasks:square", "6", "--wait")
    assert (code, json.loads(out)) == (Exit.OK, 36)
    done = cli.json("submit", "e2e_tasks:record", "--kw", "log=/dev/null", "--kw", "name=x",
                    "--wait")
    assert (done["status"], done["output"]) == ("succeeded", "x")
    code, out = cli("submit", "e2e_tasks:square", "5")
    assert code == Exit.OK
    assert out.strip().startswith("square-")


def test_submit_exit_codes_by_outcome(cli: Cli) -> None:
    assert cli("submit", "e2e_tasks:boom", '"bad"', "--wait")[0] == Exit.FAILED
    assert cli("submit", "examples.broken_promise:liar", "--wait")[0] == Exit.VIOLATED


def test_submit_wait_on_a_cancelled_workflow_exits_6(cli: Cli, cluster: Cluster,
                                                    tmp_path: Path) -> None:
    log, gate, wid = str(tmp_path / "log"), str(tmp_path / "gate"), "to-cancel"
    waiting = subprocess.Popen(
        [sys.executable, "-m", "plait", "submit", "e2e_tasks:gated", json.dumps(log),
         json.dumps(gate), '"n"', "--id", wid, "--wait", "--flow", cluster.address],
        cwd=e2e.ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(e2e.ROOT), str(e2e.TESTS)])}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: e2e_tasks.lines(log, "start"), e2e.RESULT_TIMEOUT)
        assert cli("cancel", wid) == (Exit.OK, f"cancelled {wid}\n")
        assert waiting.wait(e2e.RESULT_TIMEOUT) == Exit.CANCELLED
    finally:
        waiting.kill()
        waiting.wait()
    assert cli.json("status", wid)["status"] == "cancelled"


def test_cancel_of_an_ended_workflow_says_so(cli: Cli, static_run: str) -> None:
    code, out = cli("cancel", static_run)
    assert (code, out) == (Exit.OK, f"{static_run} had already ended (succeeded): "
                                     "nothing to cancel\n")
    assert cli.json("cancel", static_run) == {"workflow_id": static_run, "cancelled": False,
                                              "status": "succeeded"}
    assert cli.json("status", static_run)["status"] == "succeeded"


def test_status(cli: Cli, static_run: str) -> None:
    assert cli.json("status", static_run)["status"] == "succeeded"
    assert static_run in {r["workflow_id"] for r in cli.json("status")}
    code, out = cli("status")
    assert code == Exit.OK
    assert static_run in out


NONE = "no-such-workflow"


@pytest.mark.parametrize("argv", [
    ["status", NONE], ["graph", NONE], ["history", NONE], ["cancel", NONE], ["watch", NONE],
    ["pause", NONE], ["resume", NONE], ["query", NONE], ["signal", NONE, "go"],
    ["restart", NONE, "node"], ["attrs", NONE, "--node", "n", "k=1"],
    ["schedule", "rm", "no-such-schedule"]])
def test_unknown_workflow_exits_7(cli: Cli, argv: list[str]) -> None:
    assert cli(*argv)[0] == Exit.NOT_FOUND


def test_graph_in_each_format(cli: Cli, static_run: str, tmp_path: Path) -> None:
    code, dot = cli("graph", static_run)
    assert code == Exit.OK
    assert dot.startswith("digraph")
    doc = cli.json("graph", static_run)
    assert {n["id"] for n in doc["nodes"]} == {"start", "1", "2", "end"}
    assert cli.json("graph", static_run, "--format", "json") == doc
    magic = {"svg": b"<svg", "png": b"\x89PNG", "dot": b"digraph", "json": b"{"}
    for fmt, head in magic.items():
        out = tmp_path / f"g.{fmt}"
        assert cli("graph", static_run, "-o", str(out))[0] == Exit.OK
        assert head in out.read_bytes()[:300], fmt
    # --json shapes what is printed, never the file's format.
    assert cli.json("graph", static_run, "-o", str(tmp_path / "j.svg")) == {
        "path": str(tmp_path / "j.svg")}
    assert (tmp_path / "j.svg").read_bytes().lstrip().startswith((b"<?xml", b"<svg"))
    first = cli.json("graph", static_run, "--at", "2")
    assert first["seq"] == 2
    assert {n["state"] for n in first["nodes"]} <= {"pending", "ready"}


def test_a_picture_without_graphviz_is_one_clear_error(
        cli: Cli, static_run: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` on it
    code, out = cli("graph", static_run, "--format", "svg")
    assert (code, out) == (Exit.ERROR, "")
    assert "needs Graphviz's `dot` program, which is not installed" in cli.err
    assert cli("graph", static_run, "-o", str(tmp_path / "g.png"))[0] == Exit.ERROR
    assert not (tmp_path / "g.png").exists()
    assert cli("graph", static_run, "--format", "dot")[0] == Exit.OK  # no program needed


def test_trace_writes_one_frame_per_diff(cli: Cli, static_run: str, cluster: Cluster,
                                          tmp_path: Path) -> None:
    out = tmp_path / "frames"
    frames = cli.json("trace", static_run, str(out))
    diffs = [e for e in cluster.client.history(static_run) if e["type"] == "diff"]
    assert len(frames) == len(diffs) == len(list(out.glob("frame-*.svg")))
    assert all(Path(f).read_bytes().lstrip().startswith((b"<?xml", b"<svg")) for f in frames)


def test_history_is_json_lines(cli: Cli, static_run: str) -> None:
    code, out = cli("history", static_run)
    assert code == Exit.OK
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["type"] == "submitted"
    assert events[-1] == {**events[-1], "type": "workflow", "status": "succeeded"}
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_watch_a_finished_workflow(cli: Cli, static_run: str) -> None:
    code, out = cli("watch", static_run, "--json")
    assert code == Exit.OK
    first = json.loads(out.splitlines()[0])
    assert first["event"]["type"] == "snapshot"
    code, text = cli("watch", static_run)
    assert "snapshot" in text


# --- operator controls -------------------------------------------------------------------------


def test_signal_and_query(cli: Cli, cluster: Cluster) -> None:
    wid = cli.json("submit", "examples.approval:publish", '"notes"')["workflow_id"]
    waiting = {"step": "waiting for approval", "title": "notes"}
    wait_for(lambda: cli.json("query", wid)["state"] == waiting, e2e.RESULT_TIMEOUT)
    assert cli.json("query", wid) == {"workflow_id": wid, "state": waiting,
                                      "nodes": {"publish": waiting}}
    code, out = cli("query", wid)
    assert (code, json.loads(out)) == (Exit.OK, waiting)
    code, out = cli("query", wid, "--nodes")
    assert (code, out.split("\t")[0]) == (Exit.OK, "publish")
    sent = cli.json("signal", wid, "approve", '{"by": "cli"}')
    assert sent == {"workflow_id": wid, "signal": "approve", "payload": {"by": "cli"}}
    assert cluster.client.run(wid).result(timeout=e2e.RESULT_TIMEOUT) == \
        "released 'notes', approved by cli"
    assert cli("signal", wid, "approve")[0] == Exit.REFUSED  # it has ended


def test_pause_and_resume(cli: Cli, cluster: Cluster) -> None:
    wid = cli.json("submit", "e2e_durable_tasks:reporter", "2")["workflow_id"]
    assert cli.json("pause", wid) == {"workflow_id": wid, "paused": True}
    assert cli.json("status", wid)["status"] == "paused"
    code, out = cli("resume", wid)
    assert (code, out.strip()) == (Exit.OK, f"resumed {wid}")
    assert cli.json("status", wid)["status"] == "running"
    assert cli("signal", wid, "finish", "1")[0] == Exit.OK
    assert cluster.client.run(wid).result(timeout=e2e.RESULT_TIMEOUT) == 3
    assert cli("pause", wid)[0] == Exit.REFUSED


def test_restart_and_attrs(cli: Cli, cluster: Cluster, static_run: str) -> None:
    done = cli.json("attrs", static_run, "--node", "start", 'color="green"', "label=checked")
    assert done["changes"] == [
        {"key": "color", "value": "green", "node": "start", "edge": None},
        {"key": "label", "value": "checked", "node": "start", "edge": None}]
    assert cli("attrs", static_run, "--edge", "start", "1", "label=first")[0] == Exit.OK
    start = next(n for n in cli.json("graph", static_run)["nodes"] if n["id"] == "start")
    assert {"color": "green", "label": "checked"}.items() <= start["attrs"].items()
    assert cli("attrs", static_run, "--node", "nowhere", "k=1")[0] == Exit.REFUSED
    assert cli("restart", static_run, "nowhere")[0] == Exit.NOT_FOUND
    assert cli.json("restart", static_run, "2")["restarted"] is True
    run = cluster.client.run(static_run)
    assert run.result(timeout=e2e.RESULT_TIMEOUT) == {"1": 10, "end": "end"}
    runs = [e["attempt"] for e in run.history()
            if e["type"] == "state" and e["state"] == "running" and e["node"] in ("2", "end")]
    assert runs == [1, 1, 2, 2]  # 2 and end, downstream of it, ran again


def test_schedule_add_ls_rm(cli: Cli) -> None:
    added = cli.json("schedule", "add", "yearly", "@yearly", "e2e_tasks:square", "3",
                     "--overlap", "queue")
    assert (added["name"], added["cron"], added["overlap"], added["target"]) == \
        ("yearly", "@yearly", "queue", "e2e_tasks:square")
    assert added["next_fire"] is not None
    assert [s["name"] for s in cli.json("schedule", "ls")] == ["yearly"]
    code, table = cli("schedule", "ls")
    assert code == Exit.OK
    assert "yearly" in table
    assert "e2e_tasks:square" in table
    assert cli("schedule", "add", "bad", "61 * * * *", "e2e_tasks:square", "3")[0] == Exit.USAGE
    assert cli("schedule", "add", "bad", "* * * * *", "no_such_module:x")[0] == Exit.USAGE
    assert cli.json("schedule", "rm", "yearly") == {"name": "yearly", "removed": True}
    assert cli.json("schedule", "ls") == []


# --- whole-process verbs -----------------------------------------------------------------------


def _port_pair() -> int:
    """A free port whose successor is free too (Flow's requests and its feed)."""
    def pair() -> int:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                return 0
        return port
    return wait_for(pair, 10)


def test_dev_serves_until_interrupted(tmp_path: Path) -> None:
    port = _port_pair()
    dev = subprocess.Popen(
        [sys.executable, "-m", "plait", "dev", "--port", str(port), "--db",
         str(tmp_path / "dev.db"), "--import", "examples.static", "--workers", "1",
         "--max-message-size", "65536", "--log-level", "warning"],
        cwd=e2e.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout=2, max_message_size=1 << 20) as client:
            wait_for(lambda: _answers(client), e2e.RESULT_TIMEOUT)
            run = client.submit("examples.static:pipeline")
            assert run.result(timeout=e2e.RESULT_TIMEOUT) is not None
            with pytest.raises(ProtocolError) as refused:  # over the limit it was given
                client.submit_diff("big", "a", {"attrs": [{"key": "x" * 70_000}]})
            assert refused.value.code == "too_large"
        children = descendants(dev.pid)
        # dev (Flow) -> its supervisor -> the zygote -> the worker
        assert len(descendants(dev.pid, depth=3)) == 1
        dev.send_signal(signal.SIGINT)
        assert dev.wait(60) == 0
        assert not [pid for pid in children if alive(pid)]
    finally:
        dev.kill()
        dev.wait()
    assert (tmp_path / "dev.db").exists()
    out = dev.stdout.read() if dev.stdout else ""
    assert f"try `plait submit examples.static:TASK --wait --flow tcp://127.0.0.1:{port}`" \
        in out
    assert " INFO " not in out, out  # --log-level warning: Flow's and its supervisor's


@pytest.mark.parametrize("taken", ["request", "feed"])
def test_flow_on_a_port_taken_says_so_in_one_line(taken: str, tmp_path: Path) -> None:
    """Either of its two ports in use: one line and the usage exit code, as for a
    bad address, not a traceback."""
    port = free_port()
    holder: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
    holder.setsockopt(zmq.LINGER, 0)
    holder.bind(f"tcp://127.0.0.1:{port + (taken == 'feed')}")
    try:
        done = plait("flow", "--port", str(port), "--db", str(tmp_path / "f.db"), timeout=60)
    finally:
        holder.close()
    assert done.returncode == Exit.USAGE, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"plait flow: Address already in use (addr='tcp://127.0.0.1:"
        f"{port + (taken == 'feed')}')"], done.stderr


def test_a_second_flow_on_a_database_in_use_says_so_and_touches_nothing(
        tmp_path: Path) -> None:
    """Two Flows on one file would both run its unfinished workflows (and write the
    same event numbers: fatal to one of them). The second one refuses to start."""
    db = str(tmp_path / "f.db")
    lock = DatabaseLock(db)
    lock.acquire()  # as a running Flow holds it
    try:
        done = plait("flow", "--port", "0", "--db", db, timeout=60)
    finally:
        lock.release()
    assert done.returncode == Exit.USAGE, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"plait flow: database {db} is in use by another Flow (pid {os.getpid()}): "
        "stop it, or give this one another database"], done.stderr
    assert not os.path.exists(db)  # not even created


def test_dev_on_a_port_in_use_says_so_before_starting_anything(tmp_path: Path) -> None:
    """Its supervisor, forked first, would otherwise join the Flow already there."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        done = plait("dev", "--port", str(port), "--db", str(tmp_path / "dev.db"),
                     "--import", "examples.static", timeout=60)
    assert done.returncode == Exit.USAGE, done.stderr
    assert f"port {port} is in use" in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "dev.db").exists()


def test_flow_and_supervisor_take_a_message_size_limit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Flow refuses a request over its ``--max-message-size``; a worker's result over
    its supervisor's fails the attempt, saying why."""
    log = str(tmp_path / "log")
    with e2e.cluster(flow_args=["--max-message-size", "8192"],
                     supervisor_args=["--max-message-size", "4096"]) as c, \
            Client(c.address, feed=c.feed, max_message_size=1 << 20) as client:
        with pytest.raises(ProtocolError) as refused:
            client.submit("e2e_tasks:record", log, "x" * 10_000)
        assert refused.value.code == "too_large"
        run = client.submit("e2e_tasks:record", log, "y" * 6000)  # its result: over 4096
        with pytest.raises(TaskFailed, match=r"exceeds the 4,096-byte message limit"):
            run.result(timeout=e2e.RESULT_TIMEOUT)
        # The CLI's client has a limit of its own: refused before it is sent.
        argv = ["submit", "e2e_tasks:record", json.dumps(log), json.dumps("z" * 3000),
                "--flow", c.address, "--feed", c.feed]
        assert main([*argv, "--max-message-size", "2048"]) == Exit.ERROR
        assert "exceeds the 2,048-byte message limit" in capsys.readouterr().err
        assert main(argv) == Exit.OK  # under Flow's 8192


def _answers(client: Client) -> bool:
    try:
        client.runs()
    except FlowUnavailable:
        return False
    return True



def test_demo_runs_every_example_and_exits_by_itself(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = plait("demo", "--out", str(out), timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all examples ended as expected" in done.stdout
    for demo in DEMOS:
        assert (out / f"{demo.name}.svg").read_bytes().lstrip().startswith((b"<?xml", b"<svg"))
