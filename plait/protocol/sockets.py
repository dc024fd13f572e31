"""What every process does the same way on its ZeroMQ sockets."""

from __future__ import annotations

from typing import Any, cast

import zmq

__all__ = ["RECONNECT_MAX_MS", "RECONNECT_MS", "connect", "waiting"]

# ZeroMQ retries a refused connection every 100 ms by default: a supervisor or
# client started alongside Flow idled a tenth of a second of a cold start. The
# first retries come sooner and back off to that default, never beyond it, so a
# restarted Flow is found as fast as before.
RECONNECT_MS = 5
RECONNECT_MAX_MS = 100

# Plain ints: pyzmq's constants are enums, and every operation on one goes
# through the enum machinery (40% of ``waiting``, which runs per message).
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def waiting(sock: zmq.Socket[Any]) -> bool:
    """Whether a message waits to be received. Reading ``ZMQ_EVENTS`` is cheaper
    than a NOBLOCK receive that raises ``Again`` at the end of every drain."""
    return bool(cast(int, sock.getsockopt(_EVENTS)) & _POLLIN)


def connect(sock: zmq.Socket[Any], address: str) -> None:
    """Connect ``sock``, retrying a refused connection after 5, 10, 20... ms, then
    every 100 ms."""
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
    sock.connect(address)
