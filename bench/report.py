"""Figures -> JSON, Markdown and a PNG (W2 latency against N, log-log)."""

from __future__ import annotations

import math
import statistics
from typing import Any

from .targets.base import Target
from .workloads import Results

LIMITS = {  # issue #8 targets, as (kind, bound) on the ratio to the floor
    "W1 write c=1": (">=", 1 / 1.3),
    "W1 write c=32": (">=", 1.0),
    "W2 first page": ("<=", 1.5),
    "W2 page 10": ("<=", 1.5),
    "W3 get_thread": ("<=", 1.5),
    "W4 delete_thread": ("<=", 1.5),
    "W5 mixed c=32": (">=", 0.7),
}


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def paired_ratio(a: list[float], b: list[float]) -> float | None:
    rs = [x / y for x, y in zip(a, b, strict=False) if y]
    return statistics.median(rs) if rs else None


def exponent(points: list[tuple[int, float]]) -> float | None:
    pts = [(math.log(n), math.log(v)) for n, v in points if v and v > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den if den else None


def analyse(res: Results, targets: list[Target]) -> dict[str, Any]:
    floors = {t.backend: t.name for t in targets if t.kind == "floor"}
    out: dict[str, Any] = {}
    for key, m in res.metrics.items():
        rows = {}
        ok_chainlit = {t.name: med(m.rounds.get(t.name, [])) for t in targets
                       if t.kind == "chainlit" and m.status.get(t.name, "ok") == "ok"
                       and m.rounds.get(t.name)}
        best = None
        if ok_chainlit:
            pick = max if m.higher_is_better else min
            best = pick(ok_chainlit, key=lambda k: ok_chainlit[k])
        for t in targets:
            vals = m.rounds.get(t.name, [])
            status = m.status.get(t.name, "ok" if vals else "not run")
            fl = floors.get(t.backend)
            fvals = m.rounds.get(fl, []) if fl else []
            fok = fl is not None and m.status.get(fl, "ok") == "ok"
            row: dict[str, Any] = {"status": status, "rounds": vals, "median": med(vals),
                                   "min": min(vals) if vals else None,
                                   "max": max(vals) if vals else None}
            if status == "ok" and vals:
                row["x_floor"] = paired_ratio(vals, fvals) if fok and fvals else None
                row["x_best_chainlit"] = (med(vals) / ok_chainlit[best]) if best else None
                for name, xs in m.extra.get(t.name, {}).items():
                    row[name] = med(xs)
                    fx = m.extra.get(fl, {}).get(name, []) if fl else []
                    row[f"{name} x_floor"] = paired_ratio(xs, fx) if fok and fx else None
            rows[t.name] = row
        out[key] = {"unit": m.unit, "higher_is_better": m.higher_is_better,
                    "best_chainlit": best, "targets": rows}
    # growth exponents in N
    growth: dict[str, dict[str, float | None]] = {}
    for t in targets:
        for label in ("first page", "page 10", "search"):
            pts = []
            for key, mm in out.items():
                if key.startswith(f"W2 {label} N="):
                    row = mm["targets"].get(t.name, {})
                    if row.get("status") == "ok" and row.get("median"):
                        pts.append((int(key.split("N=")[1]), row["median"]))
            growth.setdefault(t.name, {})[label] = exponent(pts) if len(pts) >= 2 else None
    return {"metrics": out, "growth": growth, "floors": floors}


def _w2_n(key: str) -> int | None:
    """N of a W2 metric key ("W2 page 10 N=1000"), else None."""
    if not key.startswith("W2") or "N=" not in key:
        return None
    return int(key.rsplit("N=", 1)[1])


def checks(an: dict[str, Any], res: Results, targets: list[Target]) -> list[dict[str, Any]]:
    out = []
    for t in targets:
        if t.kind != "orm":
            continue
        skipped = f"n/a: W2 on moto stops at N={t.max_w2_n} (targets/dynamo.py)"
        for key, mm in an["metrics"].items():
            row = mm["targets"].get(t.name)
            for prefix, (op, bound) in LIMITS.items():
                if not key.startswith(prefix) or row is None:
                    continue
                n = _w2_n(key)
                if n is not None and n > t.max_w2_n:
                    out.append({"target": t.name, "check": f"{key}: x floor {op} {bound:.2f}",
                                "value": skipped, "pass": None})
                    continue
                r = row.get("x_floor")
                ok = row["status"] == "ok" and r is not None and (
                    r >= bound if op == ">=" else r <= bound)
                out.append({"target": t.name, "check": f"{key}: x floor {op} {bound:.2f}",
                            "value": r if row["status"] == "ok" else row["status"], "pass": ok})
                if key.startswith("W5"):
                    p = row.get("p99 ms x_floor")
                    out.append({"target": t.name, "check": f"{key}: p99 x floor <= 2",
                                "value": p, "pass": p is not None and p <= 2})
        for label in ("first page", "page 10"):
            g = an["growth"].get(t.name, {}).get(label)
            if g is None and t.max_w2_n < 10**9:  # page 10 needs N >= 350: one N below the cap
                out.append({"target": t.name, "check": f"W2 {label}: growth exponent <= 0.1",
                            "value": skipped + ": fewer than 2 sizes", "pass": None})
                continue
            out.append({"target": t.name, "check": f"W2 {label}: growth exponent <= 0.1",
                        "value": g, "pass": g is not None and g <= 0.1})
        mine = res.calls.get(t.name, {})
        floor = res.calls.get(an["floors"].get(t.backend, ""), {})
        if t.backend != "dynamodb" and "delete_thread" in mine:
            # one transaction: one BEGIN..COMMIT, or a single statement (an autocommit
            # statement is its own transaction, atomic: PostgreSQL's data-modifying CTE)
            tx = mine["delete_thread"]["transactions"]
            n = mine["delete_thread"]["statements"]
            one = tx == 1 or (tx == 0 and n == 1)
            out.append({"target": t.name, "check": "W4 delete_thread in one transaction",
                        "value": f"{tx:g} BEGIN, {n:g} statements", "pass": one})
        if t.backend == "dynamodb":
            for op, c in mine.items():
                f = floor.get(op)
                if f is not None:
                    out.append({"target": t.name, "check": f"API calls {op} == floor",
                                "value": f"{c['api_calls']:g} vs {f['api_calls']:g}",
                                "pass": c["api_calls"] <= f["api_calls"]})
    return out


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "–"
    if unit == "ms":
        return f"{v:.2f}" if v < 100 else f"{v:.0f}"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def ratio(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def markdown(an: dict[str, Any], res: Results, targets: list[Target], unavailable: dict[str, str],
             meta: dict[str, Any], chk: list[dict[str, Any]]) -> str:
    L: list[str] = ["# chainlit-orm benchmark", ""]
    L.append(f"Mode **{meta['mode']}**, {meta['rounds']} timed rounds (+1 warm-up/counting round), "
             f"total {meta['elapsed_s']:.0f} s. Command: `{meta['command']}`")
    L.append("")
    L.append("## Machine and versions")
    for k, v in meta["machine"].items():
        L.append(f"- {k}: {v}")
    L.append("")
    L.append("## Targets")
    L.append("| target | kind | what | settings |")
    L.append("|---|---|---|---|")
    for t in targets:
        L.append(f"| {t.name} | {t.kind} | {t.description} | "
                 f"{', '.join(f'{k}={v}' for k, v in t.settings.items()) or ''} |")
    for name, why in unavailable.items():
        L.append(f"| {name} | – | **not available: {why}** | |")
    L.append("")
    names = [t.name for t in targets]
    L.append("## Ratio to the backend's floor (median of per-round paired ratios)")
    L.append("Throughput rows (steps/s, calls/s): >1 is faster than the floor. Latency rows (ms): "
             "<1 is faster. *lost data* / *wrong result*: the read-back failed; the figure is void.")
    L.append("")
    L.append("| metric | " + " | ".join(names) + " |")
    L.append("|---|" + "---|" * len(names))
    for key, mm in an["metrics"].items():
        cells = []
        for n in names:
            row = mm["targets"][n]
            cells.append(ratio(row.get("x_floor")) if row["status"] == "ok" else
                         f"*{row['status']}*")
        L.append(f"| {key} ({mm['unit']}) | " + " | ".join(cells) + " |")
    L.append("")
    L.append("## Figures: median [min–max] over rounds, ×floor, ×best Chainlit layer")
    for key, mm in an["metrics"].items():
        L.append(f"### {key} ({mm['unit']}; best Chainlit layer: {mm['best_chainlit'] or '–'})")
        extra = [k for k in ("p50 ms", "p99 ms") if any(k in r for r in mm["targets"].values())]
        L.append("| target | median [min–max] | ×floor | ×best Chainlit | " +
                 "".join(f"{e} | {e} ×floor | " for e in extra))
        L.append("|---|---|---|---|" + "---|---|" * len(extra))
        for n in names:
            row = mm["targets"][n]
            if row["status"] != "ok":
                L.append(f"| {n} | **{row['status']}** | | | " + "| | " * len(extra))
                continue
            u = mm["unit"]
            L.append(f"| {n} | {fmt(row['median'], u)} [{fmt(row['min'], u)}–{fmt(row['max'], u)}]"
                     f" | {ratio(row.get('x_floor'))} | {ratio(row.get('x_best_chainlit'))} | " +
                     "".join(f"{fmt(row.get(e), 'ms')} | {ratio(row.get(e + ' x_floor'))} | "
                             for e in extra))
        L.append("")
    L.append("## W2 growth exponent in N (slope of log latency against log N)")
    L.append("| target | first page | page 10 | search |")
    L.append("|---|---|---|---|")
    for n in names:
        g = an["growth"].get(n, {})
        L.append(f"| {n} | " + " | ".join("–" if g.get(k) is None else f"{g[k]:.2f}"
                                            for k in ("first page", "page 10", "search")) + " |")
    L.append("")
    L.append("## Statements / API calls per operation (warm-up round)")
    L.append("SQL: statements (transactions); DynamoDB: API calls.")
    ops = sorted({op for n in names for op in res.calls.get(n, {})})
    L.append("| operation | " + " | ".join(names) + " |")
    L.append("|---|" + "---|" * len(names))
    for op in ops:
        cells = []
        for n in names:
            c = res.calls.get(n, {}).get(op)
            if c is None:
                cells.append("–")
            elif c["api_calls"]:
                cells.append(f"{c['api_calls']:g}")
            else:
                cells.append(f"{c['statements']:g} ({c['transactions']:g})")
        L.append(f"| {op} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("## Targets of issue #8 (chainlit-orm only)")
    if not chk:
        L.append("No chainlit-orm target ran.")
    else:
        L.append("| target | check | value | result |")
        L.append("|---|---|---|---|")
        for c in chk:
            v = c["value"]
            vs = f"{v:.2f}" if isinstance(v, float) else str(v)
            verdict = "n/a" if c["pass"] is None else "PASS" if c["pass"] else "FAIL"
            L.append(f"| {c['target']} | {c['check']} | {vs} | {verdict} |")
    L.append("")
    if res.errors:
        L.append("## Errors (first per target)")
        for n, errs in res.errors.items():
            L.append(f"- {n}: {len(errs)} error(s); first: `{errs[0].splitlines()[0]}`")
        L.append("")
    return "\n".join(L)


def plot(an: dict[str, Any], targets: list[Target], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for ax, label in zip(axes, ("first page", "page 10", "search"), strict=True):
        for t in targets:
            pts = []
            for key, mm in an["metrics"].items():
                if key.startswith(f"W2 {label} N="):
                    row = mm["targets"].get(t.name, {})
                    if row.get("status") == "ok" and row.get("median"):
                        pts.append((int(key.split("N=")[1]), row["median"]))
            if pts:
                pts.sort()
                style = {"orm": "-", "chainlit": "--", "floor": ":"}[t.kind]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o",
                        label=t.name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("threads of the user (N)")
        ax.set_ylabel("latency, ms (median)")
        ax.set_title(f"W2 list_threads: {label}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
