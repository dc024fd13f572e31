"""Result caching across workflows: ``@task(cache=True, version=...)``.

When a node of a caching task becomes ready, its keeper computes the cache key
(task, version and the node's inputs with data edges resolved, in a canonical
msgpack form, hashed) and asks the :class:`Cache` actor, which looks it up on a
read-only connection of its own and answers the keeper: a hit is the stored
output (the keeper marks the node succeeded without running it and sets the
node attribute ``cached``), a miss runs the node. A success is stored under its
key by the keeper's own write, in the same transaction as the node's result;
the first result stored under a key stays.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import msgpack
import pykka

from plait.actors.database import Database
from plait.actors.mail import CacheAnswer, Lookup
from plait.actors.registry import safe_tell
from plait.protocol.codec import pack

__all__ = ["Cache", "cache_key"]

log = logging.getLogger(__name__)

_MAP = 1  # the msgpack extension type of a map in a key's canonical form


def cache_key(task: str, version: str, inputs: Any) -> str:
    """A digest of (task, version, inputs): equal for equal calls, whatever the key
    order of the dicts in the inputs. msgpack keeps the types apart that JSON would
    merge (bytes and the string of their repr, a map and a list of pairs), and packs
    any map key (JSON refuses bytes keys). Raises TypeError for what is not data."""
    return hashlib.sha256(pack(_canonical([task, version, inputs]))).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        # A map as its entries in the order of their packed keys, wrapped so that it
        # differs from a list of pairs.
        entries = sorted((pack(_canonical(k)), pack(_canonical(v))) for k, v in value.items())
        return msgpack.ExtType(_MAP, pack(entries))
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


class Cache(pykka.ThreadingActor):
    """Answers :class:`~plait.actors.mail.Lookup` from the ``cache`` table."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def on_start(self) -> None:
        self.db = Database(self._path)

    def on_stop(self) -> None:
        self.db.close()

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, Lookup):
            return super().on_receive(message)
        try:
            found, output = self.db.cached(message.key)
        except Exception:  # a lookup that fails is a miss: the node simply runs
            log.exception("cache: lookup failed")
            found, output = False, None
        safe_tell(message.keeper, CacheAnswer(message.node, message.attempt, message.key,
                                              found, output))
        return None
