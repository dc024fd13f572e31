"""The @task decorator, Retry, the registry, and argument/result validation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
import tasks_sample
from hypothesis import given
from hypothesis import strategies as st
from tasks_sample import Point, add, cached_square, double, fan_out, leaf, move, stamp

from plait.errors import PlaitError
from plait.protocol.promises import MaxNodes, NoNewNodes
from plait.task import (
    InvalidArguments,
    InvalidOutput,
    Retry,
    Task,
    as_task,
    encode_inputs,
    get_task,
    ref_of,
    registered,
    task,
)


class _Ref:
    """Anything with ``__plait_ref__`` stands for a node (handles, node references)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    @property
    def __plait_ref__(self) -> str:
        return self.node_id


def test_decorated_function_stays_callable_and_carries_its_name() -> None:
    assert add(None, 2, 3) == 5  # type: ignore[arg-type]  # any Context-like object
    assert add.__plait_task__ == "add"
    assert add.__name__ == "add"
    assert add.__doc__ is None
    assert double.__plait_task__ == "sample.double"
    assert isinstance(add, Task)


def test_async_task_is_callable_as_a_coroutine() -> None:
    @task(name="test_task.async_echo")
    async def echo(ctx: Any, x: int) -> int:
        return x

    assert echo.is_async
    assert asyncio.run(echo(None, 4)) == 4


def test_registry_by_name_and_by_module() -> None:
    assert get_task("add") is add
    assert as_task("sample.double") is double
    assert as_task(add) is add
    assert as_task("no such task") is None
    served = {t.name for t in registered([tasks_sample.__name__])}
    assert {"add", "sample.double", "leaf", "fan_out", "block"} <= served
    assert not any(t.module != tasks_sample.__name__ for t in registered([tasks_sample.__name__]))


def test_two_tasks_with_one_name_cannot_be_served_together() -> None:
    @task(name="test_task.dup")
    def one(ctx: Any) -> None: ...

    def two(ctx: Any) -> None: ...

    two.__qualname__ = "two_other"
    task(name="test_task.dup")(two)
    with pytest.raises(PlaitError, match="defined twice"):
        registered([__name__])


def test_task_needs_a_context_parameter() -> None:
    with pytest.raises(PlaitError, match="first parameter must be the Context"):
        task(lambda: None)


def test_task_info_for_hello() -> None:
    info = double.info()
    assert info.name == "sample.double"
    assert info.queue == "math"
    assert info.timeout == 30.0
    assert info.retry == {"max_attempts": 5, "initial": 0.5, "backoff": 2.0, "maximum": 60.0,
                          "non_retryable": ["KeyError"]}
    assert add.info().retry is None  # Flow applies the default policy
    assert leaf.promises == (NoNewNodes(),)
    assert fan_out.promises == (MaxNodes(10),)
    plain = add.info()
    assert (plain.cache, plain.version, plain.schedule_to_start, plain.heartbeat_timeout) == (
        False, "", None, None)


def test_durability_options_reach_task_info() -> None:
    info = cached_square.info()
    assert (info.cache, info.version, info.schedule_to_start, info.heartbeat_timeout) == (
        True, "2", 5.0, 2.0)


@pytest.mark.parametrize("value", [0, float("inf"), float("nan")])
@pytest.mark.parametrize("option", ["timeout", "schedule_to_start", "heartbeat_timeout"])
def test_timeouts_must_be_positive_and_finite(option: str, value: float) -> None:
    def f(ctx: Any) -> None: ...

    options: dict[str, Any] = {option: value}
    with pytest.raises(PlaitError, match=f"{option} must be a positive, finite number"):
        Task(f, **options)


def test_retry_policy() -> None:
    r = Retry()
    assert (r.max_attempts, r.initial, r.backoff, r.maximum) == (3, 1.0, 2.0, 60.0)
    assert [r.delay(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert Retry(initial=10, maximum=15).delay(5) == 15.0
    strict = Retry(non_retryable=[ValueError, "KeyError"])
    assert strict.non_retryable == ("ValueError", "KeyError")
    assert not strict.retryable(UnicodeError())  # a subclass of ValueError
    assert not strict.retryable(KeyError("k"))
    assert strict.retryable(ZeroDivisionError())
    assert Retry.from_dict(strict.to_dict()) == strict
    # One alone: a name was taken for its letters, and ValueError stayed retryable.
    assert Retry(non_retryable="ValueError").non_retryable == ("ValueError",)
    assert Retry(non_retryable=KeyError).non_retryable == ("KeyError",)
    with pytest.raises(ValueError, match="max_attempts"):
        Retry(max_attempts=0)
    with pytest.raises(ValueError, match="finite"):  # Flow would read it as its default
        Retry(maximum=float("inf"))


def test_inputs_are_validated_and_become_data() -> None:
    inputs, refs = add.encode_inputs((2,), {"b": 3})
    assert inputs == {"args": [2, 3], "kwargs": {}}
    assert refs == []
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert stamp.encode_inputs((when,), {})[0] == {"args": ["2024-05-01T12:00:00Z"], "kwargs": {}}
    assert move.encode_inputs((Point(x=1, y=2),), {})[0]["args"] == [{"x": 1, "y": 2}]


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    (("x", 1), {}, r"argument a='x'.*valid integer"),
    ((1,), {}, "missing a required argument: 'b'"),
    ((1, 2, 3), {}, "too many positional arguments"),
    ((1, 2), {"c": 2}, "unexpected keyword argument 'c'"),
])
def test_wrong_arguments_are_a_clear_type_error(args: tuple[Any, ...], kwargs: dict[str, Any],
                                                match: str) -> None:
    with pytest.raises(InvalidArguments, match=match) as info:
        add.encode_inputs(args, kwargs)
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, PlaitError)
    assert "add()" in str(info.value)


@given(a=st.integers(), b=st.integers() | st.text("xyz", min_size=1, max_size=3),
       by_keyword=st.booleans())
def test_a_call_by_position_converts_as_a_bound_call_does(a: int, b: Any,
                                                          by_keyword: bool) -> None:
    # (a, b) by position skips inspect's bind; (a,) with b= goes through it.
    args, kwargs = ((a,), {"b": b}) if by_keyword else ((a, b), {})
    if isinstance(b, str):
        with pytest.raises(InvalidArguments, match="argument b="):
            add.encode_inputs(args, kwargs)
        return
    inputs, _ = add.encode_inputs(args, kwargs)
    assert inputs == {"args": [a, b], "kwargs": {}}
    assert add.decode_inputs(inputs) == ([a, b], {})
    assert move.encode_inputs((Point(x=a, y=1), 2), {}) == move.encode_inputs(
        (Point(x=a, y=1),), {"dx": 2})


def test_handles_become_refs_anywhere_in_the_arguments() -> None:
    h1, h2 = _Ref("root.1"), _Ref("root.2")
    assert ref_of(h1) == "root.1"
    assert ref_of("root.1") is None
    inputs, refs = add.encode_inputs((h1, 2), {})
    assert inputs == {"args": [{"$ref": "root.1"}, 2], "kwargs": {}}
    assert refs == ["root.1"]
    name, inputs, refs = encode_inputs("elsewhere", ([h1, {"k": h2}, h1],), {"z": 1})
    assert name == "elsewhere"
    assert inputs == {"args": [[{"$ref": "root.1"}, {"k": {"$ref": "root.2"}},
                                {"$ref": "root.1"}]], "kwargs": {"z": 1}}
    assert refs == ["root.1", "root.2"]


def test_plain_function_is_not_a_task() -> None:
    with pytest.raises(PlaitError, match="not a task"):
        encode_inputs(tasks_sample.not_a_task, (1,), {})
    with pytest.raises(InvalidArguments, match="not JSON-able"):
        encode_inputs("elsewhere", (object(),), {})


def test_run_time_decoding_validates_the_wire_data() -> None:
    assert move.decode_inputs({"args": [{"x": 1, "y": 2}], "kwargs": {"dx": 3}}) == (
        [Point(x=1, y=2), 3], {})
    assert stamp.decode_inputs({"args": ["2024-05-01T12:00:00Z"], "kwargs": {}})[0][0].year == 2024
    with pytest.raises(InvalidArguments, match="valid integer"):
        add.decode_inputs({"args": ["x", 1], "kwargs": {}})
    with pytest.raises(InvalidArguments, match="inputs must be"):
        add.decode_inputs({"args": "nope", "kwargs": {}})


def test_outputs_are_validated_against_the_return_annotation() -> None:
    assert move.encode_output(Point(x=2, y=3)) == {"x": 2, "y": 3}
    assert move.decode_output({"x": 2, "y": 3}) == Point(x=2, y=3)
    with pytest.raises(InvalidOutput, match="valid integer"):
        add.encode_output("seven")
    with pytest.raises(InvalidOutput, match="returned a handle"):
        add.encode_output(_Ref("root.1"))

    @task(name="test_task.untyped")
    def untyped(ctx: Any) -> Any:
        return object()

    with pytest.raises(InvalidOutput, match="not data"):
        untyped.encode_output(object())


def test_keywords_split_into_task_arguments_and_node_attributes() -> None:
    assert move.split_keywords({"dx": 2, "color": "red"}) == ({"dx": 2}, {"color": "red"})
