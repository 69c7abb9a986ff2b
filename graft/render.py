"""Rich renderings shared by the command line and the demo (which must not import the CLI package)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.table import Table
from rich.text import Text

STATUS_STYLE = {"native": "green", "transplanted": "cyan", "running": "yellow", "missing": "dim",
                "succeeded": "green", "failed": "red", "cancelled": "magenta", "queued": "dim"}
METRIC_KEYS = ("accuracy", "task_metric", "teacher_agreement", "val_loss")


def table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        t.add_column(col, overflow="fold")  # a narrow terminal wraps values, never cuts them
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    return t


def fmt_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)


def headline_metric(metrics: dict | None) -> str:
    """The one number worth showing in a cell: accuracy first, then agreement with the teacher.

    A job's figures are on its held-out split; without one they are on its training inputs, and say so.
    """
    for key in METRIC_KEYS:
        if metrics and isinstance(metrics.get(key), (int, float)):
            where = " (train inputs)" if metrics.get("metrics_on") == "train" else ""
            return f"{key.replace('_', ' ')} {fmt_metric(float(metrics[key]))}{where}"
    return ""


def render_grid(g: dict) -> Table:
    """The category × task board as a rich table: each cell its status and headline metric."""
    tasks = g.get("tasks") or []
    cells = {(c["category"], c["task"]): c for c in g.get("cells") or []}
    t = table("grid (category × task)", ("category", *tasks), [])
    for cat in g.get("categories") or []:
        row: list = [cat]
        for task in tasks:
            cell = cells.get((cat, task)) or {"status": "missing"}
            status = cell.get("status", "missing")
            metric = headline_metric(cell.get("metrics"))
            rule = (cell.get("selection") or {}).get("rule")
            picked = f"\npicked: {rule}" if rule and rule not in ("native", "explicit") else ""
            row.append(Text(status + (f"\n{metric}" if metric else "") + picked,
                            style=STATUS_STYLE.get(status, "")))
        t.add_row(*row)
    return t
