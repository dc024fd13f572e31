"""The only place that touches msgpack: frames in, validated messages out.

Decoding never executes anything: msgpack yields plain data (extension types
are refused), and pydantic validates it into one of the known message models.
Every failure is a :class:`ProtocolError` with a stable code, which the caller
sends back as an :class:`~plait.protocol.messages.Error` and counts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import msgpack
from pydantic import BaseModel, ValidationError

from plait.errors import ProtocolError
from plait.protocol.messages import (
    MESSAGE_CLASSES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    AnyMessage,
    Error,
    Message,
)

DEFAULT_MAX_SIZE = 16 * 1024 * 1024
# What a process reads from Flow (a client, a supervisor, a worker through it): Flow
# bounds what it accepts, not what it answers (a long history, ten thousand
# results), so this only stops a runaway frame.
TRUSTED_MAX_SIZE = 1024 * 1024 * 1024
_MESSAGES = Message.__module__  # plait's models: plain fields, no serializers


def _no_ext(code: int, data: bytes) -> Any:
    raise ProtocolError("malformed", f"msgpack extension type {code} is not allowed")


def pack(data: Any) -> bytes:
    """Plain data to msgpack bytes."""
    packed: bytes = msgpack.packb(data, use_bin_type=True)
    return packed


def unpack(frame: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Any:
    """msgpack bytes to plain data; oversized or malformed frames raise ProtocolError."""
    if len(frame) > max_size:
        raise ProtocolError("too_large", f"frame of {len(frame)} bytes exceeds {max_size}")
    try:
        return msgpack.unpackb(
            frame, raw=False, strict_map_key=True, ext_hook=_no_ext,
        )
    except ProtocolError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, RecursionError) as exc:
        raise ProtocolError("malformed", f"not a msgpack frame: {exc!r}") from exc


def encode(message: Message) -> bytes:
    """A message to one frame: the same bytes as ``pack(message.model_dump())``.

    The fields are read as they are and msgpack walks the data itself, calling
    back only for what it cannot pack (models, dataclasses): ``model_dump``
    also walks every value of an ``Any`` field, and a 10,000-child proposal's
    diff is such a value (three times as long to encode that way).
    """
    packed: bytes = msgpack.packb(_fields(message), use_bin_type=True, default=_nested)
    return packed


def _fields(model: BaseModel) -> dict[str, Any]:
    return {name: getattr(model, name) for name in type(model).model_fields}


def _nested(value: Any) -> Any:
    """What ``model_dump`` would make of a value msgpack cannot pack: the fields of
    plait's own models and of dataclasses (their values come back here in turn);
    any other model (a user's, in a signal's payload, say) dumps itself, so that
    its serializers, computed and excluded fields count."""
    if isinstance(value, BaseModel):
        if type(value).__module__ == _MESSAGES:
            return _fields(value)
        return value.model_dump(mode="python")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise TypeError(f"cannot encode {type(value).__name__} in a message")


# Nesting of a message's values (msgpack packs about 1,000 levels). Flow accepts
# less than anybody reads: it answers a value a few levels deeper than it came (a
# child's output inside a parent's Assign, a history), and that answer must decode.
MAX_DEPTH = 512
ACCEPTED_DEPTH = 256  # what Flow takes in (the Gateway)


def _too_deep(data: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether containers nest deeper than ``limit`` (iteratively: no recursion).
    Flow stores and answers values inside a few more levels than they came in: a
    value near msgpack's own limit decoded, then failed the commit (Flow stopped)
    or the reply (its keeper died)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values()
                         if isinstance(v, dict | list))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, dict | list))
    return False


def decode(frame: bytes, *, max_size: int = DEFAULT_MAX_SIZE,
           max_depth: int = MAX_DEPTH) -> AnyMessage:
    """One frame to a validated message, or ProtocolError with a stable code."""
    data = unpack(frame, max_size=max_size)
    if not isinstance(data, dict):
        raise ProtocolError("malformed", f"a message is a map, got {type(data).__name__}")
    # Each level takes a byte at least: a shorter frame cannot nest deeper.
    if len(frame) > max_depth and _too_deep(data, max_depth):
        raise ProtocolError("malformed", f"values nest deeper than {max_depth} levels")
    version = data.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"protocol version {version!r} is not supported "
                                           f"(this process speaks {PROTOCOL_VERSION})")
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {kind!r}")
    try:
        return cast(AnyMessage, MESSAGE_CLASSES[kind].model_validate(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ProtocolError("invalid", f"{kind}: {where}: {first.get('msg')}") from exc


def error_reply(exc: ProtocolError, correlation: str | None = None) -> Error:
    """The Error message that answers a frame which failed with ``exc``."""
    if correlation is None:
        return Error(code=exc.code, reason=exc.reason)
    return Error(id=correlation, code=exc.code, reason=exc.reason)


def correlation_of(frame: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> str | None:
    """Best effort: the ``id`` of a frame that failed validation, to address the reply."""
    try:
        data = unpack(frame, max_size=max_size)
    except ProtocolError:
        return None
    corr = data.get("id") if isinstance(data, dict) else None
    return corr if isinstance(corr, str) and len(corr) <= 128 else None
