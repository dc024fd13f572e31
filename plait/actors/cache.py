"""Result caching across workflows: ``@task(cache=True, version=...)``.

When a node of a caching task becomes ready, its keeper computes the cache key
(task, version and the node's inputs with data edges resolved, in canonical
JSON, hashed) and asks the :class:`Cache` actor, which looks it up on a
read-only connection of its own and answers the keeper: a hit is the stored
output (the keeper marks the node succeeded without running it and sets the
node attribute ``cached``), a miss runs the node. A success is stored under its
key by the keeper's own write, in the same transaction as the node's result;
the first result stored under a key stays.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import pykka

from plait.actors.database import Database
from plait.actors.mail import CacheAnswer, Lookup
from plait.actors.registry import safe_tell

__all__ = ["Cache", "cache_key"]

log = logging.getLogger(__name__)


def cache_key(task: str, version: str, inputs: Any) -> str:
    """A digest of (task, version, inputs): equal for equal calls, whatever the key
    order of the dicts in the inputs."""
    text = json.dumps([task, version, inputs], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


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
