"""The markdown report of bench.search: the goal checks first, then the tables they come from."""

from __future__ import annotations

import statistics as st


def _ms(vals: list[float], nd: int = 1) -> str:
    """'mean ± SD' over seeds (SD 0 with one seed)."""
    sd = st.stdev(vals) if len(vals) > 1 else 0.0
    return f"{st.mean(vals):.{nd}f} ± {sd:.{nd}f}"


def _fmt(v, nd: int = 1) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def _quality(runs: list[dict], second: str) -> tuple[list[str], dict]:
    labels = [row["label"] for row in runs[0]["fixed"]]
    acc = {lab: [next(r for r in run["fixed"] if r["label"] == lab)["acc"] for run in runs] for lab in labels}
    means = {lab: st.mean(v) for lab, v in acc.items()}
    order = sorted(labels, key=lambda lab: -means[lab])
    best = order[0]
    auto = [run["auto"]["acc"] for run in runs]
    alt = [run["auto_second"]["acc"] for run in runs]
    oracle = [max(r["acc"] for r in run["fixed"]) for run in runs]
    median = [st.median(r["acc"] for r in run["fixed"]) for run in runs]
    diff = [a - b for a, b in zip(auto, acc[best], strict=True)]
    diff_second = [a - b for a, b in zip(alt, acc[best], strict=True)]
    diff_oracle = [a - b for a, b in zip(auto, oracle, strict=True)]
    rank = 1 + sum(m > st.mean(auto) for m in means.values())
    met = st.mean(diff) >= -1.0
    lines = [
        "## Quality: auto vs the fixed candidates (test accuracy %, mean ± SD over seeds)",
        "",
        "| seed | auto (pick) | second auto budget (pick) | best-mean fixed: "
        f"{best} | per-seed max of 26 (which) | median fixed |",
        "|---|---|---|---|---|---|",
    ]
    for i, run in enumerate(runs):
        top = max(run["fixed"], key=lambda r: r["acc"])
        lines.append(
            f"| {run['seed']} | {auto[i]:.1f} ({run['auto']['label']}) | {alt[i]:.1f} "
            f"({run['auto_second']['label']}) | {acc[best][i]:.1f} | {oracle[i]:.1f} ({top['label']}) | "
            f"{median[i]:.1f} |"
        )
    lines += [
        f"| **mean ± SD** | **{_ms(auto)}** | {_ms(alt)} | {_ms(acc[best])} | {_ms(oracle)} | "
        f"{_ms(median)} |",
        "",
        f"- **auto − best-mean fixed candidate ({best}): {_ms(diff, 2)} points** (paired over seeds; "
        f"goal ≥ −1.0: **{'met' if met else 'MISSED'}**). Auto's mean ranks **{rank}/{len(labels) + 1}** "
        "among the 26 fixed means and itself.",
        f"- second auto budget ({second}) − best-mean fixed: {_ms(diff_second, 2)} points; auto − it, "
        f"paired: {_ms([a - b for a, b in zip(auto, alt, strict=True)], 2)} points.",
        f"- auto − per-seed max of the 26 (optimistic oracle, selected on the test set): "
        f"{_ms(diff_oracle, 2)} points.",
        *_blocks(runs, diff, diff_second),
        "",
        "### The 26 fixed candidates, by mean test accuracy",
        "",
        "| fixed candidate | test acc % | teacher agreement % | held-out BD loss | CPU s |",
        "|---|---|---|---|---|",
    ]
    for lab in order:
        rows = [next(r for r in run["fixed"] if r["label"] == lab) for run in runs]
        lines.append(
            f"| {lab} | {_ms(acc[lab])} | {_ms([r['agree'] for r in rows])} | "
            f"{_ms([r['val_loss'] for r in rows], 3)} | {_ms([r['cpu_s'] for r in rows], 2)} |"
        )
    return lines, {"best_mean": best, "diff": diff, "diff_second": diff_second, "diff_oracle": diff_oracle,
                   "rank": rank, "met": met}


def _blocks(runs: list[dict], diff: list[float], diff_second: list[float], size: int = 10) -> list[str]:
    """auto − best-mean fixed per block of `size` worlds (in run order), when there is more than one."""
    if len(runs) <= size:
        return []
    parts = []
    for i in range(0, len(runs), size):
        d, d2 = diff[i : i + size], diff_second[i : i + size]
        se = st.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0
        parts.append(f"{runs[i]['seed']}–{runs[i + len(d) - 1]['seed']}: {st.mean(d):+.2f} (SE {se:.2f}, "
                     f"median {st.median(d):+.2f}; second {st.mean(d2):+.2f})")
    return [f"- auto − best-mean fixed by blocks of {size} worlds: " + "; ".join(parts) + "."]


def _cost(runs: list[dict], best: str) -> tuple[list[str], dict]:
    lines = [
        "## Cost (one thread; CPU s are robust to the shared cores, wall s are not)",
        "",
        f"| seed | auto CPU s | median fixed CPU s | auto ÷ median fixed | {best} CPU s | auto ÷ {best} "
        "| auto ÷ the fixed run of its pick | auto ÷ all 26 | second ÷ median "
        "| auto wall ÷ median fixed wall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios, to_best, to_pick, shares, ref_to_med, second, to_second = [], [], [], [], [], [], []
    for run in runs:
        med = st.median(r["cpu_s"] for r in run["fixed"])
        ref = next(r["cpu_s"] for r in run["fixed"] if r["label"] == best)
        tot = sum(r["cpu_s"] for r in run["fixed"])
        med_wall = st.median(r["wall_s"] for r in run["fixed"])
        a, p = run["auto"], run["auto_second"]
        pick = next((r["cpu_s"] for r in run["fixed"] if r["label"] == a["label"]), None)  # quick: maybe none
        ratios.append(a["cpu_s"] / med)
        to_best.append(a["cpu_s"] / ref)
        if pick is not None:
            to_pick.append(a["cpu_s"] / pick)
        shares.append(a["cpu_s"] / tot)
        ref_to_med.append(ref / med)
        second.append(p["cpu_s"] / med)
        to_second.append(a["cpu_s"] / p["cpu_s"])
        to_own = f"{a['cpu_s'] / pick:.2f}×" if pick is not None else "—"
        lines.append(
            f"| {run['seed']} | {a['cpu_s']:.2f} | {med:.2f} | **{a['cpu_s'] / med:.2f}×** | {ref:.2f} | "
            f"**{a['cpu_s'] / ref:.2f}×** | {to_own} | {a['cpu_s'] / tot:.3f}× | "
            f"{p['cpu_s'] / med:.2f}× | {a['wall_s'] / med_wall:.2f}× |"
        )
    if len(to_pick) == len(runs):
        own = (f"{_ms(to_pick, 2)}× (≤ 2× in every world: **{'met' if max(to_pick) <= 2 else 'MISSED'}**, "
               f"max {max(to_pick):.2f}×).")
    else:
        own = f"not taken: {len(runs) - len(to_pick)} of {len(runs)} picks have no fixed run."
    lines += ["", f"- auto ÷ one median fixed run: {_ms(ratios, 2)}× (goal ≤ 2× in every world: "
              f"**{'met' if max(ratios) <= 2 else 'MISSED'}**, max {max(ratios):.2f}×, over 2× in "
              f"{sum(r > 2 for r in ratios)} of {len(ratios)}).",
              f"- auto ÷ the run of the best-mean fixed candidate ({best}): {_ms(to_best, 2)}× (≤ 2× in "
              f"every world: **{'met' if max(to_best) <= 2 else 'MISSED'}**, max {max(to_best):.2f}×). "
              f"That run alone costs {_ms(ref_to_med, 2)}× the median fixed run.",
              f"- auto ÷ the fixed run of the architecture auto kept (training its answer directly): {own}",
              f"- auto ÷ training all 26: {_ms(shares, 3)}×.",
              f"- second auto budget ÷ one median fixed run: {_ms(second, 2)}×; auto ÷ second: "
              f"{_ms(to_second, 2)}×."]
    return lines, {"cpu_ratio": ratios, "cpu_ratio_to_best": to_best, "cpu_ratio_to_pick": to_pick,
                   "share_of_all": shares, "best_to_median": ref_to_med}


def _picks(runs: list[dict]) -> list[str]:
    lines = ["## What the search did", ""]
    for run in runs:
        a = run["auto"]
        race = ", ".join(f"{r['name']} {r['score']:.2f}→{r['raced_score']:.2f}" for r in a["race"])
        lines.append(
            f"- seed {run['seed']}: steps {a['supernet_steps']}+{a['race_steps']}+{a['finetune_steps']} "
            f"(super-net + race + fine-tune); top-5 inherited "
            + ", ".join(f"{lab} {s:.2f}" for lab, s in a["ranked"])
            + f"; race (inherited → after trial) {race or '—'}; kept **{a['label']}**."
        )
    return lines


def _warm(runs: list[dict], every: int) -> tuple[list[str], dict]:
    lines = [
        "## Warm starts: a new version of the category module, its predecessor's adapter in the registry",
        "",
        "Criterion (decided before the run): both runs are fine-tuned for the same steps with no early "
        "stopping; the target is the cold run's final level (mean held-out back-distillation loss of its "
        "last 3 evaluations); a run reaches it at the first evaluation where the trailing 3-evaluation "
        f"mean is ≤ the target (evaluated every {every} steps). Ratio = warm steps ÷ cold steps. "
        "Secondary (added after the quick smoke showed both runs creeping to one plateau, before this "
        "run): the same with the target 10 % above the cold run's final level.",
        "",
    ]
    summary = {}
    for mode in ("finetuned", "retrained"):
        how = "fine-tuned a little" if mode == "finetuned" else "retrained from scratch"
        lines += [
            f"### {mode}: f@2 = f@1 {how}",
            "",
            "| seed | warm loss at step 0 | target | cold steps | warm steps | warm ÷ cold | within 10 %: "
            "cold / warm steps, ratio | test acc cold / warm (end) | auto: used | auto acc without / with "
            "registry |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        ratios = []
        for run in runs:
            w = run["warm"][mode]
            ratios.append(w["ratio"])
            lines.append(
                f"| {run['seed']} | {w['warm_curve'][0][1]:.2f} | {w['target_loss']:.2f} | "
                f"{_fmt(w['cold_steps'], 0)} | {_fmt(w['warm_steps'], 0)} | **{_fmt(w['ratio'], 2)}** | "
                f"{_fmt(w['cold_steps_near'], 0)} / {_fmt(w['warm_steps_near'], 0)}, "
                f"{_fmt(w['ratio_near'], 2)} | "
                f"{w['cold_test']['acc']:.1f} / {w['warm_test']['acc']:.1f} | {_used(w)} | "
                f"{w['auto_cold_test']['acc']:.1f} / {w['auto_warm_test']['acc']:.1f} |"
            )
        drift = [run["warm"][mode]["feature_drift"] for run in runs]
        same = [100 * run["warm"][mode]["teacher_v1_v2_agreement"] for run in runs]
        got = [r for r in ratios if r is not None]
        near = [run["warm"][mode]["ratio_near"] for run in runs]
        got_near = [r for r in near if r is not None]
        summary[mode] = {"ratios": ratios, "median": st.median(got) if got else None, "ratios_near": near,
                         "median_near": st.median(got_near) if got_near else None}
        scores = "; ".join(
            f"seed {run['seed']}: " + ", ".join(f"{k} {_fmt(v, 2)}" for k, v in run["warm"][mode]
                                               ["auto_warm_scores"].items())
            + f" vs best child {run['warm'][mode]['auto_best_child']:.2f}"
            for run in runs
        )
        lines += [
            "",
            f"- warm ÷ cold steps: median **{_fmt(summary[mode]['median'], 2)}** "
            f"({sum(r is None for r in ratios)} of {len(ratios)} warm runs never reached the target); "
            f"secondary, within 10 % of it: median **{_fmt(summary[mode]['median_near'], 2)}**.",
            f"- how far f@2 is from f@1: relative feature change ‖f@2(x) − f@1(x)‖ / ‖f@1(x)‖ "
            f"{_ms(drift, 2)}; teacher v2 agrees with teacher v1 on {_ms(same)} % of the inputs.",
            f"- auto's held-out scores of the offered adapters (inherited-weight scale): {scores}.",
            "- mean held-out loss over seeds, step: cold / warm — " + _curves(runs, mode) + ".",
            _with_registry(runs, mode),
            "",
        ]
    return lines, summary


def _used(w: dict) -> str:
    """The registered adapter auto kept (and the child it was lifted into), or `None`."""
    lifted = w.get("auto_warm_lifted", {}).get(w["auto_warm_start"])
    return f"`{w['auto_warm_start']}`" + (f" → {lifted}" if lifted else "")


def _with_registry(runs: list[dict], mode: str) -> str:
    """auto's test accuracy with the registry − without it, where it kept a warm start and where not."""

    def gain(ws: list[dict]) -> str:
        diffs = [w["auto_warm_test"]["acc"] - w["auto_cold_test"]["acc"] for w in ws]
        return f"{st.mean(diffs):+.2f}" if diffs else "—"

    ws = [run["warm"][mode] for run in runs]
    kept = [w for w in ws if w["auto_warm_start"] is not None]
    rest = [w for w in ws if w["auto_warm_start"] is None]
    return (f"- auto's test accuracy with the registry − without it: {gain(ws)} points (mean); "
            f"{gain(kept)} on the {len(kept)} worlds where it kept a registered adapter, {gain(rest)} on "
            f"the other {len(rest)}.")


def _curves(runs: list[dict], mode: str) -> str:
    parts = []
    for step in (0, 20, 50, 100, 150, 200, 250, 300):
        cold = [v for run in runs for s, v in run["warm"][mode]["cold_curve"] if s == step]
        warm = [v for run in runs for s, v in run["warm"][mode]["warm_curve"] if s == step]
        if cold and warm:
            parts.append(f"{step}: {st.mean(cold):.2f} / {st.mean(warm):.2f}")
    return ", ".join(parts)


def _total(conditions: dict) -> str:
    """The run time the header states: one run's, the sum over merged files', or none for a subset."""
    total, merged = conditions.get("total_s"), conditions.get("merged") or []
    if total is None:
        return "run time not kept per world (a subset of a merged run)"
    return f"total {total:.0f} s" + (f", summed over {len(merged)} result files" if len(merged) > 1 else "")


def report(runs: list[dict], conditions: dict, space: dict) -> str:
    """The whole results file; also fills conditions['verdict'] with the numbers the goals use."""
    quick = " (quick smoke)" if conditions["quick"] else ""
    lb, la = conditions["load_before"], conditions["load_after"]
    lines = [
        f'# `"adapter": "auto"` vs fixed adapters{quick}',
        "",
        f"World: `build_world(seed, 'small', 'shapes')` for seeds {conditions['seeds']}, new category, "
        f"task `cls`, back-distillation on 384 unlabelled inputs (20 % held out), Adam lr 3e-3, batch 32, "
        f"**{conditions['steps']} optimiser steps per run** (auto: super-net + race + fine-tune), no early "
        f"stopping; scores on {conditions['n_test']} fresh test inputs per world. Space {space} (+ skip "
        f"on/off) = 26 children. One torch thread, 2-core machine shared with other work (load average "
        f"before {lb[0]:.2f}/{lb[1]:.2f}, after {la[0]:.2f}/{la[1]:.2f}); {_total(conditions)}.",
        "",
        f"**Protocol.** {conditions['protocol']}",
        "",
    ]
    q_lines, q = _quality(runs, conditions["second"])
    c_lines, c = _cost(runs, q["best_mean"])
    w_lines, w = _warm(runs, 10)
    lines += q_lines + [""] + c_lines + [""] + _picks(runs) + [""] + w_lines
    conditions["verdict"] = {"quality": q, "cost": c, "warm": w}
    return "\n".join(lines)
