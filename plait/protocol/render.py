"""Drawing a view: DOT text with plait's visual grammar, and files through Graphviz.

The grammar (DESIGN.md section 8): solid arrows = runs-after (bold when data
flows), dashed grey = lineage (who created whom), dotted grey = provisional
(placeholders ``M x0..inf``, wildcards ``?``), fill colour = state, red =
violation. Labels show the task and a short id; every string is escaped, so a
task name cannot break or inject into the DOT text.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plait.errors import GraphvizMissing, PlaitError
from plait.protocol.view import TIMES, View, ViewEdge, ViewNode

__all__ = [
    "FORMATS", "INFINITY", "STATE_COLOURS", "TIMES", "image", "node_label", "quote", "render",
    "to_dot",
]

FORMATS = ("svg", "png", "pdf", "dot", "json")
INFINITY = "\u221e"

STATE_COLOURS = {
    "pending": "white",
    "ready": "#cfe8fc",
    "running": "#fff59d",
    "suspended": "#ffcc80",
    "succeeded": "#b9e4b0",
    "failed": "#f28b82",
    "cancelled": "#d0d0d0",
}
_STATE_ORDER = ("running", "suspended", "failed", "ready", "pending", "cancelled", "succeeded")
_GREY = "grey50"
_RED = "#d32f2f"
_SHORT_ID = 18
_WRAP = 40  # characters per line of a message inside a node
_WRAP_LINES = 3

_HEADER = (
    "digraph plait {",
    '  graph [rankdir=LR, fontname="Helvetica", fontsize=10, nodesep=0.2, ranksep=0.3];',
    '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10,'
    " height=0.3, fillcolor=white];",
    "  edge [arrowsize=0.6];",
)
_EDGE_STYLE = {
    "edge": "",
    "data": " [penwidth=2]",
    "lineage": f" [style=dashed, color={_GREY}, arrowhead=empty]",
}


_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_PIECE = 8_000  # Graphviz refuses a quoted string over 16,384 characters


def quote(text: str) -> str:
    """``text`` as a DOT double-quoted string; newlines (and carriage returns,
    which merged "a\\rb" with "ab") become centred line breaks, and other control
    characters (a NUL failed the whole picture) a visible replacement. A long one
    is cut into pieces joined by DOT's ``+``."""
    text = _CONTROLS.sub("\ufffd", text.replace("\r\n", "\n").replace("\r", "\n"))
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    if len(escaped) <= _PIECE:
        return '"' + escaped + '"'
    pieces, start = [], 0
    while start < len(escaped):
        end = min(start + _PIECE, len(escaped))
        while end < len(escaped) and _odd_backslashes(escaped, start, end):
            end -= 1  # never between a backslash and what it escapes
        pieces.append('"' + escaped[start:end] + '"')
        start = end
    return " + ".join(pieces)


def _odd_backslashes(text: str, start: int, end: int) -> bool:
    count = 0
    while end - 1 - count >= start and text[end - 1 - count] == "\\":
        count += 1
    return count % 2 == 1


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _count(n: int | None) -> str:
    return INFINITY if n is None else str(n)


def node_label(node: ViewNode, promises: bool = False) -> str:
    """The text inside a node: task and short id, counts, bounds, or ``?``; with
    ``promises``, also the promises a committed node made."""
    if node.kind == "wildcard":
        return _wildcard_label(node)
    task = node.task or "?"
    if node.provisional:
        return task + _bounds_label(node) + (" if retried" if node.attrs.get("retry") else "")
    if node.members is not None:
        return f"{task} {TIMES}{node.count}\n{_states_label(node.attrs.get('states') or {})}"
    lines = [task]
    if node.id != task:
        lines.append(_short(node.id, _SHORT_ID))
    if node.attrs.get("label"):
        lines.extend(_wrap(str(node.attrs["label"])))
    if node.attrs.get("attempt"):
        lines.append(f"attempt {node.attrs['attempt']}")
    if node.attrs.get("cached"):
        lines.append("↺ from cache")
    if promises and node.attrs.get("promises"):
        lines.extend(_wrap("[" + ", ".join(map(str, node.attrs["promises"])) + "]"))
    for key in ("violation", "rejected"):
        if node.attrs.get(key):
            lines.extend(_wrap("⚠ " + str(node.attrs[key])))
    return "\n".join(lines)


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, _WRAP, max_lines=_WRAP_LINES, placeholder=" …")


def _wildcard_label(node: ViewNode) -> str:
    label = "?"
    if node.tasks is not None:
        label += " {" + "|".join(node.tasks) + "}"
    hi = node.bounds[1] if node.bounds else None
    if hi is not None:
        label += f" ≤{hi}"
    return label


def _bounds_label(node: ViewNode) -> str:
    lo, hi = node.bounds or (1, 1)
    loop = " in sequence" if node.attrs.get("loop") else ""
    if (lo, hi) == (1, 1) or ((lo, hi) == (0, 1) and node.attrs.get("choice")):
        return loop
    return f" {TIMES}{lo}..{_count(hi)}{loop}"


def _states_label(states: Mapping[str, int]) -> str:
    return " · ".join(f"{states[s]} {s}" for s in _STATE_ORDER if states.get(s))


def _node_line(node: ViewNode, promises: bool) -> str:
    attrs = [f"label={quote(node_label(node, promises))}"]
    if node.attrs.get("promises"):
        attrs.append(f"tooltip={quote(', '.join(map(str, node.attrs['promises'])))}")
    if node.provisional:
        shape = "ellipse" if node.kind == "wildcard" else "box"
        attrs += [f"shape={shape}", 'style="dotted,rounded"', f"color={_GREY}",
                  f"fontcolor={_GREY}"]
    else:
        attrs.append(f"fillcolor={quote(STATE_COLOURS.get(node.state, 'white'))}")
        if node.members is not None:
            attrs.append("shape=box3d")
            attrs.append('style="filled"')
    if node.attrs.get("violation") or node.attrs.get("rejected"):
        attrs += [f'color="{_RED}"', f'fontcolor="{_RED}"', "penwidth=2.5"]
    elif not node.provisional:
        attrs += _cosmetics(node.attrs)
    return f"  {quote(node.id)} [{', '.join(attrs)}];"


_RECORDS = frozenset({"record", "mrecord"})


def _cosmetics(attrs: Mapping[str, Any]) -> list[str]:
    """A task's own cosmetic attributes; state colours and red stay the engine's."""
    found = []
    if attrs.get("color"):
        found += [f"color={quote(str(attrs['color']))}", "penwidth=2"]
    if attrs.get("shape"):
        shape = str(attrs["shape"])
        # A record shape parses its label for fields: {, |, < in a label (which the
        # view writes, and a user may) make Graphviz refuse the whole picture.
        found.append(f"shape={quote('box' if shape.lower() in _RECORDS else shape)}")
    return found


def _edge_line(edge: ViewEdge) -> str:
    if edge.provisional:
        parts = ["style=dotted", f"color={_GREY}"]
    else:
        base = _EDGE_STYLE.get(edge.kind, "").strip()
        parts = [base[1:-1]] if base else []
        parts += [f"{key}={quote(str(edge.attrs[key]))}" for key in ("color", "label")
                  if edge.attrs.get(key)]
    style = f" [{', '.join(parts)}]" if parts else ""
    return f"  {quote(edge.src)} -> {quote(edge.dst)}{style};"


def _graph_label(v: View) -> list[str]:
    text = f"{v.workflow_id} · seq {v.seq}" if v.workflow_id else f"seq {v.seq}"
    colour = ""
    if v.violations:
        text += "\n" + "\n".join(_wrap("violated: " + _violation_text(v.violations[0])))
        colour = f', fontcolor="{_RED}"'
    return [f"  graph [label={quote(text)}, labelloc=t{colour}];"]


def _violation_text(d: Mapping[str, Any]) -> str:
    return f"{d.get('proposer')} broke {d.get('promise')}: {d.get('reason')}"


def _choice_clusters(nodes: list[ViewNode]) -> list[str]:
    """Alternatives of one ``OneOf`` sit together in a dotted "one of" box."""
    groups: dict[str, list[str]] = {}
    for node in nodes:
        choice = node.attrs.get("choice") if node.provisional else None
        if isinstance(choice, str):
            group = choice.rsplit(":", 1)[0]
            groups.setdefault(group, []).append(node.id)
    lines = []
    for i, members in enumerate(groups.values()):
        lines.append(f"  subgraph cluster_choice_{i} {{")
        lines.append(f'    graph [label="one of", style="dotted,rounded", color={_GREY},'
                     f" fontcolor={_GREY}];")
        lines.extend(f"    {quote(m)};" for m in members)
        lines.append("  }")
    return lines


def _rejected_lines(v: View, shown: set[str]) -> list[str]:
    """Refused proposals in red, hanging off the node that proposed them."""
    lines: list[str] = []
    for i, entry in enumerate(v.rejected):
        proposer = (entry.get("rejection") or {}).get("proposer")
        ids = {n["id"]: f"!{i}:{n['id']}" for n in entry.get("nodes") or ()}
        for n in entry.get("nodes") or ():
            label = quote(f"{n.get('task')}\n{_short(str(n['id']), _SHORT_ID)}\nrejected")
            lines.append(f"  {quote(ids[n['id']])} [label={label}, style=\"dashed,rounded\","
                         f' color="{_RED}", fontcolor="{_RED}"];')
            if proposer in shown:
                lines.append(f"  {quote(proposer)} -> {quote(ids[n['id']])}"
                             f' [style=dashed, color="{_RED}"];')
        for e in entry.get("edges") or ():
            src, dst = ids.get(e["src"], e["src"]), ids.get(e["dst"], e["dst"])
            if (src in shown or src in ids.values()) and (dst in shown or dst in ids.values()):
                lines.append(f'  {quote(src)} -> {quote(dst)} [color="{_RED}", style=dashed];')
    return lines


def to_dot(v: View | Mapping[str, Any], promises: bool = False) -> str:
    """The DOT text of a view (or of its JSON document); ``promises`` writes each
    node's promises into its label (they are always in its tooltip)."""
    if not isinstance(v, View):
        v = View.from_json(v)
    lines = [*_HEADER, *_graph_label(v)]
    lines.extend(_node_line(n, promises) for n in v.nodes)
    lines.extend(_choice_clusters(v.nodes))
    lines.extend(_edge_line(e) for e in v.edges)
    if v.rejected:
        lines.extend(_rejected_lines(v, {n.id for n in v.nodes}))
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(v: View | Mapping[str, Any], path: str | Path, format: str | None = None, *,
           promises: bool = False) -> Path:
    """Write ``v`` to ``path`` as SVG, PNG or PDF (through Graphviz), DOT or JSON.

    ``format`` defaults to the file's suffix, else SVG; ``promises`` as in :func:`to_dot`.
    """
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".") or "svg").lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "json":
        doc = v.to_json() if isinstance(v, View) else dict(v)
        path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    elif fmt == "dot":
        path.write_text(to_dot(v, promises), encoding="utf-8")
    else:
        path.write_bytes(image(v, fmt, promises=promises))
    return path


def image(v: View | Mapping[str, Any], fmt: str, *, promises: bool = False) -> bytes:
    """``v`` drawn by Graphviz as ``fmt`` (svg, png, pdf)."""
    import graphviz  # the binding is only needed for images

    try:
        return graphviz.Source(to_dot(v, promises)).pipe(format=fmt)
    except graphviz.ExecutableNotFound as exc:
        raise GraphvizMissing(f"drawing {fmt.upper()} needs Graphviz's `dot` program, "
                              "which is not installed (apt-get install graphviz, brew "
                              "install graphviz...); --format dot or json need none") from exc
    except graphviz.CalledProcessError as exc:
        stderr = exc.stderr.decode(errors="replace").strip() if exc.stderr else ""
        raise PlaitError(f"Graphviz's `dot` failed ({exc.returncode}): {stderr}") from exc
