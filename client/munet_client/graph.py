"""The system as a picture (the muNet paper's figure): the root's layers along the bottom row, one row
per task for the components it created, and each task's path as a coloured line through the layers it
runs. A layer drawn with a thick border is shared by several tasks. Pure Python, plain SVG: the CLI
writes it (`munet graph`) and the server's dashboard inlines it, offline."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from munet_client.types import PathComponent, TaskInfo

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f")
DX, DY, W, H, LEFT, TOP = 78, 56, 64, 30, 150, 40


def _columns(tasks: Sequence[TaskInfo]) -> list[str]:
    """Layer names left to right: every path's order, merged (an adapter sits before its block)."""
    order: list[str] = []
    for t in tasks:
        prev = None
        for c in t.path:
            if c.name not in order:
                order.insert(order.index(prev) + 1 if prev in order else len(order), c.name)
            prev = c.name
    return order


def _fmt(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)


def system_svg(tasks: Sequence[TaskInfo], title: str = "") -> str:
    tasks = sorted(tasks, key=lambda t: t.created_at)
    cols = _columns(tasks)
    x_of = {name: LEFT + i * DX for i, name in enumerate(cols)}
    rows = {t.name: i + 1 for i, t in enumerate(tasks)}  # row 0: the root's layers
    color = {t.name: PALETTE[i % len(PALETTE)] for i, t in enumerate(tasks)}
    users: dict[str, set[str]] = {}
    nodes: dict[str, tuple[PathComponent, int]] = {}  # id -> (component, row)
    for t in tasks:
        for c in t.path:
            users.setdefault(c.id, set()).add(t.name)
            if c.id not in nodes:  # a layer whose owner was deleted stays, drawn in the root's row
                nodes[c.id] = (c, rows.get(c.owner, 0))
    height = TOP + (len(tasks) + 1) * DY + 30 + 18 * len(tasks)
    width = LEFT + max(1, len(cols)) * DX + 20
    y0 = TOP + len(tasks) * DY  # the root row at the bottom, tasks above it

    def y_of(row: int) -> int:
        return y0 - row * DY

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="11" class="munet-graph">',
        f'<title>{escape(title or "munet system")}</title>',
        f'<text x="8" y="18" font-size="14" font-weight="bold">{escape(title or "the system")}</text>',
        f'<text x="8" y="{y_of(0) + 4}" fill="#555">root</text>',
    ]
    for t in tasks:
        out.append(f'<text x="8" y="{y_of(rows[t.name]) + 4}" fill="{color[t.name]}">{escape(t.name)}</text>')
    # Paths first, nodes on top. Each task's line is offset a little so that shared stretches show all.
    for i, t in enumerate(tasks):
        dy = (i - (len(tasks) - 1) / 2) * 3
        pts = " ".join(f"{x_of[c.name] + W / 2:.0f},{y_of(nodes[c.id][1]) + H / 2 + dy:.1f}" for c in t.path)
        out.append(
            f'<polyline points="{pts}" fill="none" stroke="{color[t.name]}" stroke-width="2" stroke-opacity="0.8" '
            f'class="path" data-task="{escape(t.name)}"/>'
        )
    for cid, (c, row) in nodes.items():
        x, y = x_of[c.name], y_of(row)
        fill = _tint(color[c.owner]) if c.owner in color else "#eeeeee"
        shared = len(users[cid]) > 1
        who = ", ".join(sorted(users[cid]))
        out.append(
            f'<g class="layer" data-id="{escape(cid)}" data-users="{escape(who)}" data-shared="{str(shared).lower()}">'
            f'<title>{escape(c.name)} ({c.kind}, {_fmt(c.num_params)} params, owner {escape(c.owner or "root")}); '
            f"used by {escape(who)}</title>"
            f'<rect x="{x}" y="{y}" width="{W}" height="{H}" rx="5" fill="{fill}" stroke="#333" '
            f'stroke-width="{2.5 if shared else 0.8}"/>'
            f'<text x="{x + W / 2}" y="{y + 13}" text-anchor="middle">{escape(c.name[:10])}</text>'
            f'<text x="{x + W / 2}" y="{y + 25}" text-anchor="middle" fill="#555" font-size="9">{_fmt(c.num_params)}</text>'
            "</g>"
        )
    y = y_of(0) + H + 24
    for t in tasks:
        acc = f"{t.validation_accuracy:.1%}" if t.state != "DAMAGED" else "damaged"
        out.append(
            f'<text x="8" y="{y}"><tspan fill="{color[t.name]}" font-weight="bold">{escape(t.name)}</tspan>: '
            f"{acc} validation accuracy, +{_fmt(t.params_added)} params added, "
            f"{sum(1 for c in t.path if c.created_by_task)} of {len(t.path)} layers its own</text>"
        )
        y += 18
    out.append("</svg>")
    return "\n".join(out)


def _tint(hex_color: str) -> str:
    """A light version of a task's colour for the layers it owns."""
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return "#{:02x}{:02x}{:02x}".format(*(int(v + (255 - v) * 0.7) for v in (r, g, b)))
