"""What every process does the same way on its ZeroMQ sockets."""

from __future__ import annotations

from typing import Any, cast

import zmq

__all__ = ["RECONNECT_MAX_MS", "RECONNECT_MS", "bind", "connect", "tcp", "waiting"]

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


def tcp(host: str, port: int | str) -> str:
    """A TCP endpoint; an IPv6 host goes in brackets (given with them or without)."""
    host = host.removeprefix("[").removesuffix("]")
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def connect(sock: zmq.Socket[Any], address: str) -> None:
    """Connect ``sock``, retrying a refused connection after 5, 10, 20... ms, then
    every 100 ms. An IPv6 address (``tcp://[::1]:7100``) is reached too."""
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
    _ipv6(sock, address)
    sock.connect(address)


def bind(sock: zmq.Socket[Any], address: str) -> None:
    """Bind ``sock``, on an IPv6 address too (``tcp://[::1]:7100``)."""
    _ipv6(sock, address)
    sock.bind(address)


def _ipv6(sock: zmq.Socket[Any], address: str) -> None:
    # Only for an IPv6 literal: with IPv6 on, a name such as "localhost" may resolve to
    # ::1 first, which a Flow bound on 127.0.0.1 refuses for ever.
    if address.startswith("tcp://["):
        sock.setsockopt(zmq.IPV6, 1)
