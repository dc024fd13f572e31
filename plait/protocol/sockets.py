"""What every process does the same way on its ZeroMQ sockets."""

from __future__ import annotations

from typing import Any, cast

import zmq

__all__ = ["waiting"]


def waiting(sock: zmq.Socket[Any]) -> bool:
    """Whether a message waits to be received. Reading ``ZMQ_EVENTS`` is cheaper
    than a NOBLOCK receive that raises ``Again`` at the end of every drain."""
    return bool(cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)
