"""Shape expressions and the incremental matcher, checked against their meaning.

Unit tests pin the documented behaviour; property tests compare the matcher with
a brute-force reference that decides membership of a small labelled DAG directly
from the semantics (DESIGN.md section 3), by recursively splitting its node set.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from plait.errors import ShapeError
from plait.protocol.shape import (
    Any,
    Expr,
    Loop,
    OneOf,
    Par,
    Repeat,
    Seq,
    Task,
    check_deterministic,
    expr_from_dict,
)
from plait.protocol.shape_match import ShapeMatcher, Tentative

OWNER = "A"
_T = TypeVar("_T")


def examples(n: int) -> int:
    """`n` examples by default, few under HYPOTHESIS_PROFILE=dev (see conftest.py)."""
    return max(10, n // 20) if os.environ.get("HYPOTHESIS_PROFILE") == "dev" else n

# --- driving a matcher --------------------------------------------------------------


@dataclass
class Staged:
    """A StagedRegion over a growing edge list (what the plan would show)."""

    new_nodes: list[tuple[str, str]]
    new_edges: list[tuple[str, str]]
    all_preds: dict[str, list[str]]

    def preds(self, node_id: str) -> Iterable[str]:
        return self.all_preds.get(node_id, [])


@dataclass
class Region:
    """A matcher plus the graph it has been shown; `add` stages and commits a diff."""

    expr: Expr
    matcher: ShapeMatcher = field(init=False)
    preds: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.matcher = ShapeMatcher(self.expr, OWNER)

    def stage(self, nodes: str = "", edges: str = "") -> str | Callable[[], None]:
        """`nodes` like "n1:N n2:M", `edges` like "n1>n2 A>n1"."""
        new_nodes = [(n.split(":")[0], n.split(":")[1]) for n in nodes.split()]
        new_edges = [(e.split(">")[0], e.split(">")[1]) for e in edges.split()]
        preds = {k: list(v) for k, v in self.preds.items()}
        for src, dst in new_edges:
            preds.setdefault(dst, []).append(src)
        result = self.matcher.check(Staged(new_nodes, new_edges, preds))
        if not isinstance(result, str):
            self.preds = preds
        return result

    def add(self, nodes: str = "", edges: str = "") -> str | None:
        result = self.stage(nodes, edges)
        if isinstance(result, str):
            return result
        result()
        return None


SEED = OneOf(Seq("N", "M"), Seq("J", "K"))


# --- the seed example ---------------------------------------------------------------


def test_seed_accepts_either_branch() -> None:
    for first, second in (("N", "M"), ("J", "K")):
        region = Region(SEED)
        assert region.add(f"x:{first}", "A>x") is None
        assert region.matcher.complete() is not None
        assert region.add(f"y:{second}", "x>y") is None
        assert region.matcher.complete() is None
        assert region.matcher.remaining() is None


def test_seed_rejects_mixed_branches_with_a_clear_reason() -> None:
    region = Region(SEED)
    assert region.add("r.3:N") is None
    reason = region.add("r.4:K", "r.3>r.4")
    assert reason == ("node r.4 (task K) does not fit OneOf(Seq(N, M), Seq(J, K)) "
                      "after N: expected M")


def test_seed_rejects_an_incomplete_branch_at_close() -> None:
    region = Region(SEED)
    assert region.add("x:J") is None
    assert region.matcher.complete() == "region closed incomplete: expected K after J"


def test_seed_rejects_a_second_part_first_and_an_empty_region() -> None:
    region = Region(SEED)
    reason = region.add("x:M")
    assert reason is not None
    assert "expected J or N" in reason
    assert Region(SEED).matcher.complete() == (
        "region closed incomplete: expected J or N (nothing matched)")


def test_seed_whole_branch_in_one_diff() -> None:
    region = Region(SEED)
    assert region.add("x:N y:M", "A>x x>y") is None
    assert region.matcher.complete() is None
    assert region.matcher.matched_count == 2


# --- ordering and edges ----------------------------------------------------------------


def test_seq_needs_an_edge_from_the_previous_part() -> None:
    region = Region(Seq("N", "M"))
    assert region.add("n:N") is None
    reason = region.add("m:M", "A>m")  # the owner's edge does not order the region
    assert reason is not None
    assert "not ordered after n (task N)" in reason
    assert region.add("m:M", "n>m") is None


def test_seq_needs_every_sink_of_the_previous_part() -> None:
    region = Region(Seq(Repeat("M"), "K"))
    assert region.add("a:M b:M c:M") is None
    reason = region.add("k:K", "a>k b>k")
    assert reason is not None
    assert "c (task M)" in reason
    assert region.add("k:K", "a>k b>k c>k") is None
    assert region.matcher.complete() is None


def test_a_node_ordered_through_its_own_part_needs_no_more_edges() -> None:
    region = Region(Seq("N", Seq("M", "K")))
    assert region.add("n:N") is None
    assert region.add("m:M k:K", "n>m m>k") is None
    assert region.matcher.complete() is None


def test_only_sources_of_a_part_need_the_edges() -> None:
    region = Region(Seq("N", Any()))
    assert region.add("n:N x:X", "n>x") is None
    assert region.add("y:Y", "x>y") is None  # ordered through x
    assert region.add("z:Z") is not None  # a new source of Any(), not after N


def test_edges_between_par_parts_are_violations() -> None:
    region = Region(Par("A", "B"))
    assert region.add("a:A b:B") is None
    reason = region.add(edges="a>b")
    assert reason == "edge a -> b (A -> B) links parallel parts of Par(A, B)"


def test_edges_between_repeat_copies_are_violations() -> None:
    region = Region(Repeat("M"))
    assert region.add("a:M b:M") is None
    assert "links two copies" in (region.add(edges="a>b") or "")
    assert "copies must not be linked" in (region.add("c:M", "a>c") or "")


def test_backward_edges_are_violations() -> None:
    region = Region(Seq("N", "M"))
    assert region.add("n:N m:M", "n>m") is None
    assert "goes backwards in Seq(N, M)" in (region.add(edges="m>n") or "")


def test_edges_touching_outside_nodes_are_ignored() -> None:
    region = Region(Par("A", "B"))
    assert region.add("a:A b:B", "A>a A>b a>X X>b") is None
    assert region.matcher.complete() is None


def test_an_empty_middle_part_is_skipped() -> None:
    region = Region(Seq("A", Repeat("B", 0, 2), "C"))
    assert region.add("a:A c:C", "a>c") is None
    assert region.matcher.complete() is None
    assert "is a cycle" in (region.add(edges="c>c") or "")


def test_forward_edges_skipping_parts_are_fine() -> None:
    region = Region(Seq("N", "M", "K"))
    assert region.add("n:N m:M k:K", "n>m m>k n>k") is None
    assert region.matcher.complete() is None


# --- repeat and loop ---------------------------------------------------------------


def test_repeat_bounds() -> None:
    region = Region(Repeat("M", 1, 3))
    assert region.matcher.complete() == "region closed incomplete: expected M (nothing matched)"
    assert region.add("a:M b:M c:M") is None
    assert region.matcher.complete() is None
    reason = region.add("d:M")
    assert reason == ("node d (task M) would start copy 4 of Repeat(M, 1..3), "
                      "which allows at most 3")


def test_repeat_copies_are_found_from_predecessors() -> None:
    region = Region(Repeat(Seq("M", "N")))
    assert region.add("m1:M m2:M") is None
    assert region.add("n2:N", "m2>n2") is None
    assert region.matcher.complete() == "region closed incomplete: expected M or N after N"
    assert "no predecessor in the copy" in (region.add("n1:N") or "")
    assert region.add("n1:N", "m1>n1") is None
    assert region.matcher.complete() is None
    assert "copies must not be linked" in (region.add("n3:N", "m1>n3 m2>n3") or "")
    assert "copies must not be linked" in (region.add("m3:M", "n1>m3") or "")


def test_repeat_of_seq_followed_by_a_part() -> None:
    region = Region(Seq(Repeat(Seq("M", "N")), "N"))
    assert region.add("m1:M n1:N", "m1>n1") is None
    assert region.add("m2:M") is None
    assert region.add("n2:N", "m2>n2") is None  # continues the open copy
    assert region.add("last:N", "n1>last n2>last") is None  # starts the Seq's last part
    assert region.matcher.complete() is None


def test_loop_copies_come_in_order() -> None:
    region = Region(Loop("M", 1, 3))
    assert region.add("a:M") is None
    assert "not ordered after a (task M)" in (region.add("b:M") or "")
    assert region.add("b:M", "a>b") is None
    assert region.add("c:M", "b>c a>c") is None
    assert "allows at most 3" in (region.add("d:M", "c>d") or "")
    assert region.matcher.complete() is None


def test_loop_of_a_seq() -> None:
    region = Region(Loop(Seq("F", Repeat("G"))))
    assert region.add("f1:F g1:G g2:G", "f1>g1 f1>g2") is None
    assert "not ordered after" in (region.add("f2:F", "g1>f2") or "")
    assert region.add("f2:F", "g1>f2 g2>f2") is None
    assert "goes backwards" in (region.add("g3:G", "f2>g3 g3>g1") or "")
    assert region.matcher.complete() is None


def test_any_admits_anything_after_its_start() -> None:
    region = Region(Repeat(Seq("M", Any())))
    assert region.add("m1:M m2:M x:X", "m1>x") is None
    assert region.add("y:M", "x>y") is None  # an M inside the first copy's Any()
    assert region.matcher.complete() is None
    assert "no predecessor in the copy" in (region.add("z:Z") or "")


def test_an_optional_part_needs_no_single_root() -> None:
    region = Region(Seq("S", Repeat(Par("A", "B"), 0, 1)))
    assert region.add("s:S a:A", "s>a") is None
    assert region.matcher.complete() == "region closed incomplete: expected B after A"
    assert region.add("b:B", "s>b") is None
    assert region.matcher.complete() is None
    assert region.matcher.remaining() is None
    assert "does not fit" in (region.add("c:A", "s>c") or "")


def test_a_single_loop_copy_can_keep_growing() -> None:
    region = Region(Loop(Repeat("M", 1, 2), 0, 1))
    assert region.add("a:M b:M") is None
    assert region.matcher.complete() is None
    assert "allows at most 2" in (region.add("c:M") or "")


def test_cost_does_not_grow_with_the_region() -> None:
    """10,000 one-node diffs into a map: quadratic work would take minutes."""
    matcher = ShapeMatcher(Seq("S", Repeat(Seq("M", "N")), "J"), OWNER)
    preds: dict[str, list[str]] = {}

    def add(node: str, task: str, *srcs: str) -> None:
        preds[node] = list(srcs)
        result = matcher.check(Staged([(node, task)], [(s, node) for s in srcs], preds))
        assert not isinstance(result, str), result
        result()

    add("s", "S")
    for i in range(5_000):
        add(f"m{i}", "M", "s")
    for i in range(5_000):
        add(f"n{i}", "N", f"m{i}")
    add("j", "J", *(f"n{i}" for i in range(5_000)))
    assert matcher.complete() is None
    assert matcher.matched_count == 10_002


# --- atomicity -----------------------------------------------------------------------


def test_check_does_not_mutate_on_failure() -> None:
    region = Region(Seq(Repeat("M", 0, 5), "K"))
    assert region.add("a:M") is None
    before = (region.matcher.matched_count, region.matcher.remaining())
    reason = region.stage("b:M c:M d:X", "a>b")
    assert isinstance(reason, str)
    assert (region.matcher.matched_count, region.matcher.remaining()) == before
    assert region.add("b:M c:M") is None
    assert region.matcher.remaining() == Seq(Repeat("M", 0, 2), "K")


def test_an_accepted_change_is_tentative_until_committed_or_aborted() -> None:
    region = Region(Seq("N", "M"))
    change = region.stage("n:N")
    assert isinstance(change, Tentative)
    assert region.matcher.matched_count == 1  # applied, not yet sealed
    with pytest.raises(RuntimeError, match="neither committed nor aborted"):
        region.stage("m:M", "n>m")
    change.abort()
    assert region.matcher.matched_count == 0
    assert region.matcher.remaining() == Seq("N", "M")
    with pytest.raises(RuntimeError, match="stale"):
        change.commit()
    again = region.stage("n:N")
    assert isinstance(again, Tentative)
    again.commit()
    assert region.matcher.remaining() == Task("M")


def test_a_failing_edge_rolls_back_nodes_of_the_same_diff() -> None:
    region = Region(Par("A", Repeat("B")))
    assert isinstance(region.stage("a:A b:B c:B", "b>c"), str)
    assert region.matcher.matched_count == 0
    assert region.matcher.remaining() == Par("A", Repeat("B"))


# --- remaining() -------------------------------------------------------------------


def test_remaining_narrows_as_facts_arrive() -> None:
    region = Region(SEED)
    assert region.matcher.remaining() == SEED
    assert region.add("n:N") is None
    assert region.matcher.remaining() == Task("M")
    assert not region.matcher.remaining().nullable  # type: ignore[union-attr]

    repeat = Region(Repeat("M", 0, 5))
    assert repeat.add("a:M b:M c:M") is None
    assert repeat.matcher.remaining() == Repeat("M", 0, 2)
    assert repeat.matcher.remaining().nullable  # type: ignore[union-attr]

    at_least = Region(Repeat("M", 2))
    assert at_least.add("a:M") is None
    assert at_least.matcher.remaining() == Repeat("M", 1, None)

    seq = Region(Seq("N", Repeat("M"), "K"))
    assert seq.add("n:N") is None
    assert seq.matcher.remaining() == Seq(Repeat("M"), "K")


def test_remaining_of_open_copies() -> None:
    region = Region(Repeat(Seq("M", "N"), 0, 4))
    assert region.add("a:M b:M c:M") is None
    assert str(region.matcher.remaining()) == "Par(Repeat(N, 3..3), Repeat(Seq(M, N), 0..1))"
    assert region.add("x:N", "a>x") is None
    assert region.matcher.remaining() == Par(Repeat("N", 2, 2), Repeat(Seq("M", "N"), 0, 1))
    loop = Region(Loop(Seq("M", "N"), 1, 3))
    assert loop.add("a:M") is None
    assert loop.matcher.remaining() == Seq("N", Loop(Seq("M", "N"), 0, 2))


def test_remaining_with_any_is_a_wildcard() -> None:
    region = Region(Seq("M", Any()))
    assert region.add("m:M") is None
    remaining = region.matcher.remaining()
    assert remaining == Any()
    assert remaining is not None
    assert remaining.wildcard
    assert remaining.nullable


# --- expressions ----------------------------------------------------------------------


def fetch() -> None:
    """A task function stands for its name."""


class Decorated:
    """What @plait.task returns: a callable carrying the registered name."""

    __plait_task__ = "reports.build"

    def __call__(self) -> None:
        """Runs the task."""


def test_task_functions_are_task_refs() -> None:
    expr = Seq(fetch, Repeat(Decorated(), 1), Task(fetch))
    assert expr == Seq("fetch", Repeat("reports.build", 1), "fetch")
    assert expr.tasks() == {"fetch", "reports.build"}
    with pytest.raises(ShapeError):
        Seq(42)  # type: ignore[arg-type]
    with pytest.raises(ShapeError):
        Task("")


def test_str_and_repr() -> None:
    expr = Seq("N", Par("A", Loop("B", 1, 2)), OneOf("C", Any()), Repeat("M"))
    assert str(expr) == "Seq(N, Par(A, Loop(B, 1..2)), OneOf(C, Any()), Repeat(M, 0..*))"
    assert eval(repr(expr)) == expr  # the repr is constructor syntax


def test_arguments_are_validated() -> None:
    for bad in (lambda: Seq(), lambda: Par(), lambda: OneOf(),
                lambda: Repeat("M", 2, 1), lambda: Loop("M", -1),
                lambda: Repeat("M", True), lambda: Loop("M", 0, 1.5)):  # type: ignore[arg-type]
        with pytest.raises(ValueError):  # noqa: PT011 - ShapeError is a ValueError
            bad()


def test_nullable_tasks_and_wildcard() -> None:
    assert not Seq("N", Repeat("M")).nullable
    assert Par(Repeat("M"), OneOf("A", Loop("B"))).nullable
    assert Repeat("M", 0, 0).tasks() == frozenset()
    assert OneOf(Seq("N", "M"), "K").tasks() == {"N", "M", "K"}
    assert Seq("N", Any()).wildcard
    assert not Seq("N", Repeat(Any(), 0, 0)).wildcard


def test_dict_round_trip() -> None:
    expr = Seq("N", Par("A", Loop("B", 1, 2)), OneOf("C", Any()), Repeat(Seq("M", "K"), 2))
    data = expr.to_dict()
    assert data["seq"][0] == {"task": "N"}  # type: ignore[index]
    assert data["seq"][3] == {"repeat": {"seq": [{"task": "M"}, {"task": "K"}]},  # type: ignore[index]
                              "min": 2, "max": None}
    assert expr_from_dict(data) == expr


@pytest.mark.parametrize("data", [
    {}, "M", None, {"task": ""}, {"task": 3}, {"task": "M", "extra": 1}, {"seq": []},
    {"seq": {"task": "M"}}, {"par": [{"task": "M"}, {}]}, {"any": False},
    {"repeat": {"task": "M"}, "min": -1, "max": None},
    {"loop": {"task": "M"}, "min": 2, "max": 1}, {"repeat": {"task": "M"}, "min": 0},
])
def test_malformed_dicts_are_refused(data: object) -> None:
    with pytest.raises(ShapeError):
        expr_from_dict(data)


# --- determinism ------------------------------------------------------------------


@pytest.mark.parametrize(("expr", "clash"), [
    (OneOf(Seq("N", "M"), Seq("N", "K")), "alternatives Seq(N, M) and Seq(N, K) can both "
                                          "start with task N"),
    (OneOf(Repeat("A"), Loop("B")), "can both be empty"),
    (Par(Seq("A", "B"), "B"), "parts Seq(A, B) and B can both hold task B"),
    (Seq(Repeat("M"), "M"), "once Repeat(M, 0..*) is complete, a node of task M could "
                            "continue it or start M"),
    (Seq("N", Repeat("M", 0, 1), "M"), "once Repeat(M, 0..1) is complete"),
    (Seq(Any(), "M"), "once Any() is complete, a node of task M"),
    (Par(Any(), "M"), "can both hold task M"),
    (Repeat(Par("A", "B")), "can start with several nodes"),
    (Repeat(Repeat("M", 1)), "can start with several nodes"),
    (Repeat(Repeat("M")), "can be empty"),
    (Loop(Repeat("M", 1, 2)), "a node of task M could continue it or start the next copy"),
    (Loop(OneOf("A", Repeat("B"))), "can be empty"),
])
def test_ambiguous_shapes_are_refused_naming_the_clash(expr: Expr, clash: str) -> None:
    with pytest.raises(ShapeError, match="not deterministic") as caught:
        check_deterministic(expr)
    assert clash in str(caught.value)
    with pytest.raises(ShapeError):
        ShapeMatcher(expr, OWNER)


@pytest.mark.parametrize("expr", [
    SEED, Seq(Repeat(Seq("M", "N")), "N"), Repeat(Par("A", "B"), 0, 1), Any(),
    Seq("M", Any()), Repeat(Seq("M", Any())), Loop(Par("A", "B")), Loop(Seq("M", Repeat("N"))),
    OneOf(Seq("A", Any()), Seq("B", Any()), Repeat("C")), Seq(Loop("M"), "N"),
    Par(Repeat("A"), Seq("B", "C")), Loop(Repeat("M", 1, 2), 0, 1),
])
def test_deterministic_shapes_are_accepted(expr: Expr) -> None:
    check_deterministic(expr)


# --- the reference: membership decided from the semantics --------------------------


def submasks(mask: int) -> Iterator[int]:
    sub = mask
    while True:
        yield sub
        if sub == 0:
            return
        sub = (sub - 1) & mask


def bits(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class Reference:
    """Decides, by brute force over node subsets (bitmasks), whether the DAG induced
    on a set of nodes is a member of an expression (`exact`), or could become one by
    adding nodes and edges (not `exact`)."""

    def __init__(self, labels: Sequence[str], edges: Iterable[tuple[int, int]]) -> None:
        self.labels = labels
        self.succ = [0] * len(labels)
        self.pred = [0] * len(labels)
        for src, dst in edges:
            self.succ[src] |= 1 << dst
            self.pred[dst] |= 1 << src
        self.memo: dict[tuple[object, ...], bool] = {}

    def fits(self, expr: Expr, mask: int, exact: bool) -> bool:
        key = ("e", id(expr), mask, exact)
        if key not in self.memo:
            self.memo[key] = self._fits(expr, mask, exact)
        return self.memo[key]

    def _fits(self, expr: Expr, mask: int, exact: bool) -> bool:
        if isinstance(expr, Task):
            if mask == 0:
                return not exact
            return mask & (mask - 1) == 0 and self.labels[mask.bit_length() - 1] == expr.name
        if isinstance(expr, Any):
            return True
        if isinstance(expr, OneOf):
            return any(self.fits(alt, mask, exact) for alt in expr.parts)
        if isinstance(expr, Seq | Par):
            return self.group(expr, 0, mask, exact)
        assert isinstance(expr, Repeat | Loop)
        return self.counted(expr, expr.min, expr.max, mask, exact)

    def linked(self, src: int, dst: int) -> bool:
        return any(self.succ[u] & dst for u in bits(src))

    def ordered(self, first: int, then: int, within: int) -> bool:
        """Every sink of G[first] reaches every source of G[then] inside G[within]."""
        sources = {v for v in bits(then) if not self.pred[v] & then}
        for sink in bits(first):
            if self.succ[sink] & first:
                continue
            seen, todo = 0, [sink]
            while todo:
                for nxt in bits(self.succ[todo.pop()] & within & ~seen):
                    seen |= 1 << nxt
                    todo.append(nxt)
            if any(not seen >> s & 1 for s in sources):
                return False
        return True

    def group(self, expr: Seq | Par, i: int, mask: int, exact: bool) -> bool:
        key = ("g", id(expr), i, mask, exact)
        if key not in self.memo:
            self.memo[key] = self._group(expr, i, mask, exact)
        return self.memo[key]

    def _group(self, expr: Seq | Par, i: int, mask: int, exact: bool) -> bool:
        if i == len(expr.parts) - 1:
            return self.fits(expr.parts[i], mask, exact)
        for head in submasks(mask):
            tail = mask ^ head
            if self.linked(tail, head) or (isinstance(expr, Par) and self.linked(head, tail)):
                continue
            if not (self.fits(expr.parts[i], head, exact) and self.group(expr, i + 1, tail, exact)):
                continue
            if isinstance(expr, Par) or not exact or self.ordered(head, tail, mask):
                return True
        return False

    def counted(self, expr: Repeat | Loop, low: int, high: int | None, mask: int,
                exact: bool) -> bool:
        key = ("c", id(expr), low, high, mask, exact)
        if key not in self.memo:
            self.memo[key] = self._counted(expr, low, high, mask, exact)
        return self.memo[key]

    def _counted(self, expr: Repeat | Loop, low: int, high: int | None, mask: int,
                 exact: bool) -> bool:
        if mask == 0:
            return not exact or low == 0 or self.fits(expr.part, 0, True)
        if high == 0:
            return False
        rest_high = None if high is None else high - 1
        for copy in submasks(mask):
            rest = mask ^ copy
            if copy == 0 or self.linked(rest, copy):
                continue
            if isinstance(expr, Repeat) and (not copy & mask & -mask or self.linked(copy, rest)):
                continue  # copies are unordered: the lowest node's copy comes first
            if not (self.fits(expr.part, copy, exact)
                    and self.counted(expr, max(low - 1, 0), rest_high, rest, exact)):
                continue
            if isinstance(expr, Repeat) or not exact or self.ordered(copy, rest, mask):
                return True
        return False


def test_the_reference_agrees_with_hand_examples() -> None:
    nm = Reference(["N", "M"], [(0, 1)])
    assert nm.fits(SEED, 0b11, exact=True)
    assert not Reference(["N", "M"], []).fits(SEED, 0b11, exact=True)
    assert Reference(["N", "M"], []).fits(SEED, 0b11, exact=False)
    assert not Reference(["N", "K"], [(0, 1)]).fits(SEED, 0b11, exact=False)
    loop = Loop("M", 2, 3)
    assert Reference(["M", "M", "M"], [(0, 1), (1, 2)]).fits(loop, 0b111, exact=True)
    assert not Reference(["M", "M", "M"], [(0, 1), (0, 2)]).fits(loop, 0b111, exact=True)
    assert Reference(["M", "M"], []).fits(Repeat("M", 2), 0b11, exact=True)
    assert not Reference(["M", "M"], [(0, 1)]).fits(Repeat("M", 2), 0b11, exact=True)


# --- generated shapes and graphs --------------------------------------------------

NAMES = "ABCD"
MAX_NODES = 9


KINDS = ("seq", "par", "oneof", "repeat", "loop")


@functools.cache
def ints(low: int, high: int) -> st.SearchStrategy[int]:
    """Cached strategies: building one per draw costs more than the test itself."""
    return st.integers(low, high)


@functools.cache
def choice(items: tuple[object, ...]) -> st.SearchStrategy[object]:
    return st.sampled_from(items)


def pick(draw: st.DrawFn, items: Sequence[_T]) -> _T:
    return draw(choice(tuple(items)))  # type: ignore[return-value]


def raw_shape(draw: st.DrawFn, depth: int = 0) -> Expr:
    """A random expression, deeper than st.recursive would usually make it."""
    if depth >= 4 or (depth > 0 and draw(ints(0, 9)) < 1 + 2 * depth):
        name = pick(draw, [*NAMES, "*"])
        return Any() if name == "*" else Task(name)
    kind = pick(draw, KINDS)
    if kind in ("repeat", "loop"):
        part = raw_shape(draw, depth + 1)
        low = draw(ints(0, 2))
        high = pick(draw, (None, low, low + 1, low + 2))
        return (Repeat if kind == "repeat" else Loop)(part, low, high)
    parts = [raw_shape(draw, depth + 1) for _ in range(draw(ints(1, 3)))]
    return {"seq": Seq, "par": Par, "oneof": OneOf}[kind](*parts)


def is_deterministic(expr: Expr) -> bool:
    try:
        check_deterministic(expr)
    except ShapeError:
        return False
    return True


def relabel(expr: Expr, fresh: Iterator[str]) -> Expr:
    """The same structure with a new name on every leaf (which removes most clashes)."""
    if isinstance(expr, Task):
        return Task(next(fresh))
    if isinstance(expr, Seq | Par | OneOf):
        return type(expr)(*(relabel(part, fresh) for part in expr.parts))
    if isinstance(expr, Repeat | Loop):
        return type(expr)(relabel(expr.part, fresh), expr.min, expr.max)
    return expr


def repair(expr: Expr, fresh: Iterator[str]) -> Expr:
    """Bottom-up, the smallest changes that make each level deterministic."""
    if isinstance(expr, Task | Any):
        return expr
    if isinstance(expr, Repeat | Loop):
        fixed: Expr = type(expr)(repair(expr.part, fresh), expr.min, expr.max)
        if not is_deterministic(fixed):  # give the body one first and one last node
            body = Seq(next(fresh), fixed.part, next(fresh))  # type: ignore[attr-defined]
            fixed = type(expr)(body, expr.min, expr.max)
        return fixed
    assert isinstance(expr, Seq | Par | OneOf)
    parts = [repair(part, fresh) for part in expr.parts]
    fixed = type(expr)(*parts)
    if not is_deterministic(fixed) and isinstance(expr, OneOf):
        fixed = OneOf(*(Seq(next(fresh), part) for part in parts))
    if not is_deterministic(fixed):  # what is left is an Any() in the way
        fixed = type(expr)(*(Task(next(fresh)) if isinstance(p, Any) else p for p in parts))
    return fixed


@st.composite
def shapes(draw: st.DrawFn) -> Expr:
    """Deterministic expressions: as drawn, else with fresh names, else repaired."""
    expr = raw_shape(draw)
    if not is_deterministic(expr):
        fresh = (f"{letter}{i}" for i in range(100) for letter in "EFGH")
        expr = relabel(expr, fresh)
        if not is_deterministic(expr):
            expr = repair(expr, fresh)
    assume(is_deterministic(expr))
    return expr


@dataclass
class Graph:
    labels: list[str] = field(default_factory=list)
    edges: set[tuple[int, int]] = field(default_factory=set)

    def add(self, label: str) -> int:
        assume(len(self.labels) < MAX_NODES)
        self.labels.append(label)
        return len(self.labels) - 1

    def sinks(self, nodes: list[int]) -> list[int]:
        inside = set(nodes)
        return [u for u in nodes if not any((u, v) in self.edges for v in inside)]

    def sources(self, nodes: list[int]) -> list[int]:
        inside = set(nodes)
        return [v for v in nodes if not any((u, v) in self.edges for u in inside)]


def build(draw: st.DrawFn, expr: Expr, graph: Graph) -> list[int]:
    """Nodes of a random member of `expr`, added to `graph` (extra edges optional)."""
    if isinstance(expr, Task):
        return [graph.add(expr.name)]
    if isinstance(expr, Any):
        size = pick(draw, (2, 3, 1, 0))
        nodes = [graph.add(pick(draw, "ABZ")) for _ in range(size)]
        graph.edges |= {(u, v) for i, u in enumerate(nodes) for v in nodes[i + 1:]
                        if draw(st.booleans())}
        return nodes
    if isinstance(expr, OneOf):
        return build(draw, pick(draw, expr.parts), graph)
    if isinstance(expr, Seq | Par):
        groups = [build(draw, part, graph) for part in expr.parts]
    else:
        assert isinstance(expr, Repeat | Loop)
        high = expr.min + 2 if expr.max is None else min(expr.max, expr.min + 2)
        count = pick(draw, range(high, expr.min - 1, -1))
        groups = [build(draw, expr.part, graph) for _ in range(count)]
    if isinstance(expr, Seq | Loop):
        chain(draw, graph, [g for g in groups if g])
    return [node for group in groups for node in group]


def chain(draw: st.DrawFn, graph: Graph, groups: list[list[int]]) -> None:
    for before, after in itertools.pairwise(groups):
        graph.edges.update((s, t) for s in graph.sinks(before) for t in graph.sources(after))
    if len(groups) > 1 and draw(st.booleans()):  # an optional forward edge
        i = draw(ints(0, len(groups) - 2))
        j = draw(ints(i + 1, len(groups) - 1))
        graph.edges.add((pick(draw, groups[i]), pick(draw, groups[j])))


def topological(draw: st.DrawFn, graph: Graph) -> list[int]:
    order: list[int] = []
    while len(order) < len(graph.labels):
        ready = [v for v in range(len(graph.labels)) if v not in order
                 and all(u in order for u, w in graph.edges if w == v)]
        order.append(pick(draw, ready))
    return order


def mutate(draw: st.DrawFn, graph: Graph) -> Graph:
    """A near-member: one node or edge changed (it may still be a member)."""
    kind = pick(draw, ("relabel", "drop", "edge", "unedge", "node"))
    labels, edges = list(graph.labels), set(graph.edges)
    n = len(labels)
    if kind == "relabel" and n:
        labels[draw(ints(0, n - 1))] = pick(draw, sorted({*labels, "Z"}))
    elif kind == "drop" and n:
        gone = draw(ints(0, n - 1))
        labels.pop(gone)
        renum = {v: v - (v > gone) for v in range(n) if v != gone}
        edges = {(renum[u], renum[v]) for u, v in edges if gone not in (u, v)}
    elif kind == "edge" and n > 1:
        order = topological(draw, graph)
        i = draw(ints(0, n - 2))
        edges.add((order[i], order[draw(ints(i + 1, n - 1))]))
    elif kind == "unedge" and edges:
        edges.discard(pick(draw, sorted(edges)))
    elif kind == "node" and n < MAX_NODES:
        labels.append(pick(draw, "ABCDZ"))
        edges |= {(u, n) for u in draw(st.sets(st.integers(0, n - 1)))} if n else set()
    return Graph(labels, edges)


@dataclass
class Case:
    expr: Expr
    graph: Graph
    batches: list[list[int]]
    owner_edges: set[int]


@st.composite
def cases(draw: st.DrawFn, near: bool) -> Case:
    expr = draw(shapes())
    graph = Graph()
    build(draw, expr, graph)
    if near:
        graph = mutate(draw, graph)
    order = topological(draw, graph)
    batches: list[list[int]] = []
    for node in order:
        if not batches or draw(st.booleans()):
            batches.append([])
        batches[-1].append(node)
    owner_edges = draw(st.sets(st.sampled_from(order))) if order else set()
    return Case(expr, graph, batches, owner_edges)


def feed(case: Case, ref: Reference) -> bool:
    """Shows the case's graph to a matcher diff by diff (each node with its in-edges);
    checks the invariants after each diff; True if accepted and complete."""
    matcher = ShapeMatcher(case.expr, OWNER)
    labels = case.graph.labels
    preds: dict[str, list[str]] = {f"r.{v}": [] for v in range(len(labels))}
    created = 0
    for batch in case.batches:
        edges = [(f"r.{u}", f"r.{v}") for u, v in sorted(case.graph.edges) if v in batch]
        edges += [(OWNER, f"r.{v}") for v in batch if v in case.owner_edges]
        for src, dst in edges:
            preds[dst].append(src)
        before = (matcher.remaining(), matcher.matched_count)
        result = matcher.check(Staged([(f"r.{v}", labels[v]) for v in batch], edges, preds))
        if isinstance(result, str):
            assert (matcher.remaining(), matcher.matched_count) == before, "check mutated"
            return False
        rest = before[0]
        for v in batch:  # (4) what joins was announced by the previous remaining()
            assert rest is not None
            assert rest.wildcard or labels[v] in rest.tasks(), (labels[v], str(rest))
        result()
        created |= sum(1 << v for v in batch)
        assert ref.fits(case.expr, created, exact=False), "accepted a prefix that is not viable"
        rest = matcher.remaining()
        assert (rest is None or rest.nullable) == (matcher.complete() is None)
    return matcher.complete() is None


def describe(case: Case) -> str:
    return f"{case.expr!r} labels={case.graph.labels} edges={sorted(case.graph.edges)}"


@settings(max_examples=examples(500))
@given(cases(near=False))
def test_every_member_is_accepted(case: Case) -> None:
    ref = Reference(case.graph.labels, case.graph.edges)
    full = (1 << len(case.graph.labels)) - 1
    assert ref.fits(case.expr, full, exact=True), "generator bug: " + describe(case)
    assert feed(case, ref), describe(case)


@settings(max_examples=examples(700))
@given(cases(near=True))
def test_the_matcher_accepts_exactly_the_members(case: Case) -> None:
    ref = Reference(case.graph.labels, case.graph.edges)
    full = (1 << len(case.graph.labels)) - 1
    assert feed(case, ref) == ref.fits(case.expr, full, exact=True), describe(case)


@settings(max_examples=examples(200))
@given(shapes())
def test_generated_shapes_round_trip(expr: Expr) -> None:
    assert expr_from_dict(expr.to_dict()) == expr
    assert eval(repr(expr)) == expr  # the repr is constructor syntax
    matcher = ShapeMatcher(expr, OWNER)
    assert matcher.remaining() == (None if expr.empty_only else expr)
    assert (matcher.complete() is None) == expr.nullable


@dataclass
class Scrambled:
    """A graph created in any order, each edge added in some diff after both ends exist."""

    expr: Expr
    graph: Graph
    batches: list[tuple[list[int], list[tuple[int, int]]]]


@st.composite
def scrambled(draw: st.DrawFn) -> Scrambled:
    expr = draw(shapes())
    graph = Graph()
    build(draw, expr, graph)
    graph = mutate(draw, graph) if draw(st.booleans()) else graph
    order = draw(st.permutations(range(len(graph.labels))))
    batch_of: dict[int, int] = {}
    batches: list[tuple[list[int], list[tuple[int, int]]]] = []
    for node in order:
        if not batches or draw(st.booleans()):
            batches.append(([], []))
        batches[-1][0].append(node)
        batch_of[node] = len(batches) - 1
    for src, dst in sorted(graph.edges):
        ready = max(batch_of[src], batch_of[dst])
        batches[draw(ints(ready, len(batches) - 1))][1].append((src, dst))
    return Scrambled(expr, graph, batches)


@settings(max_examples=examples(500))
@given(scrambled())
def test_accepting_any_creation_order_is_sound(case: Scrambled) -> None:
    """Out of topological order, or with edges added late, the matcher may refuse a
    member (a later part must be ordered when it starts), but whatever it accepts is
    a viable prefix, and what it completes is a member."""
    matcher = ShapeMatcher(case.expr, OWNER)
    preds: dict[str, list[str]] = {}
    created, edges = 0, set()
    for nodes, new_edges in case.batches:
        named = [(f"r.{u}", f"r.{v}") for u, v in new_edges]
        for src, dst in named:
            preds.setdefault(dst, []).append(src)
        staged = Staged([(f"r.{v}", case.graph.labels[v]) for v in nodes], named, preds)
        result = matcher.check(staged)
        if isinstance(result, str):
            return
        result()
        created |= sum(1 << v for v in nodes)
        edges |= set(new_edges)
        prefix = Reference(case.graph.labels, edges)
        assert prefix.fits(case.expr, created, exact=False), describe_scrambled(case)
    if matcher.complete() is None:
        ref = Reference(case.graph.labels, case.graph.edges)
        full = (1 << len(case.graph.labels)) - 1
        assert ref.fits(case.expr, full, exact=True), describe_scrambled(case)


def describe_scrambled(case: Scrambled) -> str:
    return f"{case.expr!r} labels={case.graph.labels} batches={case.batches}"
