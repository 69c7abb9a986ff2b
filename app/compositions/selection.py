"""Which pieces serve a category × task cell: the rule behind cell compositions and the grid.

Order of preference among category and task versions ("aliases first, then newest"): a version that
any alias points at comes before one without an alias; among equals the newer (higher row id) comes
first. Adapters of a cell (of every adapter module of the cell together) are ranked by the rule a user
can check: **alias** (a version an alias points at, e.g. `production`), else the **best held-out
metric** (teacher agreement on the job's held-out inputs, `metrics_on == "val"`, ranked by the lower
end of its 95 % interval so that a score on a handful of inputs does not win by luck), else the
**newest** (no adapter has a held-out metric). A 2-epoch trial never displaces a better adapter by
being newer.
The rule that picked a cell is reported (`Pick.rule`, `Pick.reason`) by the grid and by cell
compositions.

A cell (c, t) is, in this order:
- **transplanted** when an adapter module of (c, t) has a version whose lineage (or, without lineage,
  shapes) links a category module of c to a task module of t: f_c → h_{c,t} → g_t. Lineage parents
  are used first: a category-module parent of category c, a task-module parent of task t whose role
  says `student` (the generic module the adapter was trained for). Without them, the preferred
  category version whose output fits the adapter's input, and the preferred task version whose input
  the adapter's output fits (task modules not trained on c, i.e. generic ones, first).
- **running** when a transplant job for (c, t) is queued or running (reported by the grid only).
- **native** when a task module version of task t lists c in its `trained_on` (it is the head of c's
  own teacher network) and a category module version of category c outputs exactly its input shape:
  f_c → g_t with no adapter.
- **missing** otherwise.

Transplanted comes first because the cell served by the shared, generic task module is what the
registry exists to build: a category usually arrives with its own teacher head (a native pair), and
the grid must show when the generic network has learnt it (running → transplanted). The native pair
stays reachable as an explicit composition, and serves the cell until an adapter exists.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from app.models import ModuleVersion
from transplant.compose import shapes_fit


@dataclass(frozen=True)
class Pick:
    """The pieces chosen for a cell."""

    status: str  # native | transplanted
    category: ModuleVersion
    adapter: ModuleVersion | None
    task: ModuleVersion
    rule: str = "explicit"  # alias | best held-out metric | newest | native | explicit
    reason: str = ""


def held_out_agreement(v: ModuleVersion) -> tuple[float, int] | None:
    """(teacher agreement, inputs) on the job's held-out split, or None (no split, or no metric)."""
    metrics = v.metrics or {}
    score, n = metrics.get("teacher_agreement"), metrics.get("n_val")
    if metrics.get("metrics_on") != "val" or not isinstance(score, (int, float)):
        return None
    return float(score), int(n) if isinstance(n, int) and n > 0 else 1


def held_out_score(v: ModuleVersion) -> float | None:
    """The lower end of the 95 % Wilson interval of the held-out agreement, or None.

    An agreement of 1.0 measured on 2 held-out inputs (a 10-label job's split) must not outrank 0.85
    measured on 26: the bound is 0.34 against 0.67.
    """
    found = held_out_agreement(v)
    if found is None:
        return None
    p, n = found
    z = 1.96
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


@dataclass
class Candidates:
    """Versions of category, task and adapter modules, each list in order of preference."""

    categories: dict[str, list[ModuleVersion]]
    tasks: dict[str, list[ModuleVersion]]
    adapters: dict[tuple[str, str], list[ModuleVersion]]
    aliased: frozenset[int] = frozenset()

    @classmethod
    def build(
        cls, category_versions: list[ModuleVersion], task_versions: list[ModuleVersion],
        adapter_versions: list[ModuleVersion], aliased: set[int],
    ) -> Candidates:
        def order(versions: list[ModuleVersion]) -> list[ModuleVersion]:
            return sorted(versions, key=lambda v: (v.id in aliased, v.id), reverse=True)

        def adapter_order(versions: list[ModuleVersion]) -> list[ModuleVersion]:
            def key(v: ModuleVersion) -> tuple:
                score = held_out_score(v)
                return (v.id in aliased, score is not None, score or 0.0, v.id)
            return sorted(versions, key=key, reverse=True)

        cats: dict[str, list[ModuleVersion]] = defaultdict(list)
        tasks: dict[str, list[ModuleVersion]] = defaultdict(list)
        adapters: dict[tuple[str, str], list[ModuleVersion]] = defaultdict(list)
        for v in category_versions:
            if v.module.category:
                cats[v.module.category].append(v)
        for v in task_versions:
            if v.module.task:
                tasks[v.module.task].append(v)
        for v in adapter_versions:
            if v.module.category and v.module.task:
                adapters[(v.module.category, v.module.task)].append(v)
        return cls(
            {k: order(v) for k, v in cats.items()},
            {k: order(v) for k, v in tasks.items()},
            {k: adapter_order(v) for k, v in adapters.items()},
            frozenset(aliased),
        )


def pick_native(cands: Candidates, category: str, task: str) -> Pick | None:
    for g in cands.tasks.get(task, []):
        if category not in (g.trained_on or []):
            continue
        for f in cands.categories.get(category, []):
            if list(f.output_shape) == list(g.input_shape):
                return Pick("native", f, None, g, "native",
                            "no adapter into a shared task module yet: the category's own teacher pair")
    return None


def _lineage(adapter: ModuleVersion, versions: list[ModuleVersion], role_word: str | None) -> list:
    by_ref = {(v.module.name, v.version): v for v in versions}
    found = []
    for parent in adapter.parents or []:
        if not isinstance(parent, dict):
            continue
        v = by_ref.get((parent.get("name"), parent.get("version")))
        if v is not None and (role_word is None or role_word in str(parent.get("role", ""))):
            found.append(v)
    return found


def pick_transplanted(cands: Candidates, category: str, task: str) -> Pick | None:
    fs = cands.categories.get(category, [])
    gs = cands.tasks.get(task, [])
    # Generic task modules (not trained on this category) before teachers' own heads.
    gs_generic_first = sorted(gs, key=lambda g: category in (g.trained_on or []))
    for h in cands.adapters.get((category, task), []):
        f_pool = _lineage(h, fs, None) + fs
        g_pool = _lineage(h, gs, "student") + gs_generic_first
        f = next((f for f in f_pool if shapes_fit(f.output_shape, h.input_shape)), None)
        g = next((g for g in g_pool if shapes_fit(h.output_shape, g.input_shape)), None)
        if f is not None and g is not None:
            rule, reason = _why(cands, h, category, task)
            return Pick("transplanted", f, h, g, rule, reason)
    return None


def _why(cands: Candidates, h: ModuleVersion, category: str, task: str) -> tuple[str, str]:
    name = f"{h.module.name}@{h.version}"
    if h.id in cands.aliased:
        return "alias", f"{name} is the version an alias points at"
    found, bound = held_out_agreement(h), held_out_score(h)
    n = len(cands.adapters.get((category, task), []))
    if found is not None and bound is not None:
        return "best held-out metric", (
            f"{name} has teacher agreement {found[0]:.3f} on {found[1]} held-out inputs (at least "
            f"{bound:.3f} at 95 % confidence), the best of {n} adapter version(s) of the cell")
    return "newest", f"{name} is the newest adapter version without a held-out metric ({n} in the cell)"


def pick_cell(cands: Candidates, category: str, task: str) -> Pick | None:
    """The pieces for (category, task) by the rule above, or None when the cell cannot be served."""
    return pick_transplanted(cands, category, task) or pick_native(cands, category, task)
