"""Figures -> JSON, Markdown and a PNG (W2 latency against N, log-log)."""

from __future__ import annotations

import math
import statistics
from typing import Any

from .targets.base import Target
from .workloads import Results

# issue 19's targets, as (kind, bound) on the ratio to the stricter floor; see limit_for
LIMITS = {
    "W1 write c=1": (">=", 1 / 1.2),  # at most 1.2x slower
    "W1 write c=32": (">=", 1.0),
    "W1 burst c=32": (">=", 1.0),
    "W2 first page": ("<=", 1.5),
    "W2 page 10": ("<=", 1.5),
    "W2 search": ("<=", 2.0),  # the name term, against the floor's name-only search
    "W2 search text": ("<=", 2.0),  # the message-text term, against the same floor figure
    "W3 get_thread": ("<=", 1.3),
    "W4 delete_thread": ("<=", 1.5),
    "W5 mixed c=32": (">=", 0.8),
}
GROWTH_LIMIT = 0.1  # W2 growth exponent in N
SEARCH_GROWTH_FROM = 1000  # the search exponents are fitted from N = 1,000 up
W5_P99_LIMIT = 2.0
SCALE_GROWTH_LIMIT = 0.05  # SCALE: exponent over the store size
WALK_RSS_LIMIT_MIB = 16.0  # SCALE: RSS growth from the start to the end of the cursor walk
W2_LABELS = ("first page", "page 10", "search", "search text", "search 1-char")
W5_CALLS = ("get_user", "list_threads", "get_thread", "create_step")


def limit_for(key: str) -> tuple[str, float] | None:
    """The target a metric key is checked against ("W2 search 1-char ..." has none)."""
    base = key.rsplit(" N=", 1)[0] if key.startswith("W2 ") else key
    if base.startswith("W3 get_thread"):
        base = "W3 get_thread"
    return LIMITS.get(base)


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


def stricter_floor(m: Any, floors: list[str]) -> str | None:
    """Of ``floors`` with a valid figure for metric ``m``, the one with the best median (highest
    throughput, lowest latency): the floor every ratio of that metric is taken against."""
    ok = {f: med(m.rounds[f]) for f in floors
          if m.status.get(f, "ok") == "ok" and m.rounds.get(f)}
    if not ok:
        return None
    pick = max if m.higher_is_better else min
    return pick(ok, key=lambda f: ok[f])  # type: ignore[arg-type, return-value]


def analyse(res: Results, targets: list[Target]) -> dict[str, Any]:
    floors_of: dict[str, list[str]] = {}
    for t in targets:
        if t.kind == "floor":
            floors_of.setdefault(t.backend, []).append(t.name)
    out: dict[str, Any] = {}
    for key, m in res.metrics.items():
        fm = res.metrics.get(m.floor_key or key, m)  # the metric the floors' figures come from
        chosen = {b: stricter_floor(fm, fs) for b, fs in floors_of.items()}
        rows = {}
        ok_chainlit = {t.name: med(m.rounds.get(t.name, [])) for t in targets
                       if t.kind == "chainlit" and m.status.get(t.name, "ok") == "ok"
                       and m.rounds.get(t.name)}
        best = None
        if ok_chainlit:
            pick = max if m.higher_is_better else min
            best = pick(ok_chainlit, key=lambda k: ok_chainlit[k])  # type: ignore[arg-type]
        for t in targets:
            vals = m.rounds.get(t.name, [])
            status = m.status.get(t.name, "ok" if vals else "not run")
            fl = chosen.get(t.backend)
            fvals = fm.rounds.get(fl, []) if fl else []
            row: dict[str, Any] = {"status": status, "rounds": vals, "median": med(vals),
                                   "min": min(vals) if vals else None,
                                   "max": max(vals) if vals else None, "floor": fl}
            if status == "ok" and vals:
                row["x_floor"] = paired_ratio(vals, fvals) if fvals else None
                row["x_floors"] = {f: paired_ratio(vals, fm.rounds.get(f, []))
                                   for f in floors_of.get(t.backend, [])
                                   if fm.status.get(f, "ok") == "ok" and fm.rounds.get(f)}
                row["x_best_chainlit"] = (med(vals) / ok_chainlit[best]) if best else None
                for name, xs in m.extra.get(t.name, {}).items():
                    row[name] = med(xs)
                    fx = fm.extra.get(fl, {}).get(name, []) if fl else []
                    row[f"{name} x_floor"] = paired_ratio(xs, fx) if fx else None
            rows[t.name] = row
        out[key] = {"unit": m.unit, "higher_is_better": m.higher_is_better,
                    "best_chainlit": best, "floors": chosen, "floor_key": m.floor_key,
                    "targets": rows}
    # growth exponents in N (search: from SEARCH_GROWTH_FROM up)
    growth: dict[str, dict[str, float | None]] = {}
    for t in targets:
        for label in W2_LABELS:
            pts = []
            for key, mm in out.items():
                if key.startswith(f"W2 {label} N="):
                    n = int(key.split("N=")[1])
                    row = mm["targets"].get(t.name, {})
                    if (row.get("status") == "ok" and row.get("median")
                            and (not label.startswith("search") or n >= SEARCH_GROWTH_FROM)):
                        pts.append((n, row["median"]))
            growth.setdefault(t.name, {})[label] = exponent(pts) if len(pts) >= 2 else None
    return {"metrics": out, "growth": growth, "floors": floors_of, "scale": _scale(res)}


SCALE_TARGET = "chainlit-orm/postgresql"


def _scale(res: Results) -> dict[str, Any]:
    """SCALE medians per store size and their exponent over the store size."""
    if not res.scale:
        return {}
    series: dict[str, list[tuple[int, float]]] = {}
    status: dict[str, str] = {}
    for key, m in res.metrics.items():
        if not key.startswith("SCALE "):
            continue
        label, size = key[len("SCALE "):].rsplit(" S=", 1)
        st = m.status.get(SCALE_TARGET, "ok")
        vals = m.rounds.get(SCALE_TARGET, [])
        if st != "ok" or not vals:
            status[f"{label} S={size}"] = st if st != "ok" else "not run"
        else:
            series.setdefault(label, []).append((int(size), statistics.median(vals)))
    return {"series": {k: sorted(v) for k, v in series.items()},
            "exponent": {k: exponent(v) if len(v) >= 2 else None for k, v in series.items()},
            "status": status}


def _w2_n(key: str) -> int | None:
    """N of a W2 metric key ("W2 page 10 N=1000"), else None."""
    if not key.startswith("W2") or "N=" not in key:
        return None
    return int(key.rsplit("N=", 1)[1])


def checks(an: dict[str, Any], res: Results, targets: list[Target]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(target: str, check: str, value: Any, ok: bool | None) -> None:
        out.append({"target": target, "check": check, "value": value, "pass": ok})

    for t in targets:
        if t.kind != "orm":
            continue
        skipped = f"n/a: W2 on moto stops at N={t.max_w2_n} (targets/dynamo.py)"
        for key, mm in an["metrics"].items():
            row = mm["targets"].get(t.name)
            lim = limit_for(key)
            if lim is None or row is None or row["status"] == "not run":
                continue
            op, bound = lim
            fl = row.get("floor") or "floor"
            ref = f" ({mm['floor_key']})" if mm.get("floor_key") not in (None, key) else ""
            check = f"{key}: x {fl}{ref} {op} {bound:.2f}"
            n = _w2_n(key)
            if n is not None and n > t.max_w2_n:
                add(t.name, check, skipped, None)
                continue
            if key.startswith("W2 search text") and "text" not in t.search_scope:
                add(t.name, check, "n/a: declared name-only search", None)
                continue
            r = row.get("x_floor")
            ok = row["status"] == "ok" and r is not None and (
                r >= bound if op == ">=" else r <= bound)
            add(t.name, check, r if row["status"] == "ok" else row["status"], ok)
            if key.startswith("W5"):
                for call in ("", *(f"{c} " for c in W5_CALLS)):
                    p = row.get(f"{call}p99 ms x_floor")
                    add(t.name, f"{key}: {call or 'all calls '}p99 x {fl} <= {W5_P99_LIMIT:g}",
                        p, p is not None and p <= W5_P99_LIMIT)
        ran_w2 = any(k.startswith("W2 ") for k in an["metrics"])
        for label in ("first page", "page 10", "search", "search text") if ran_w2 else ():
            g = an["growth"].get(t.name, {}).get(label)
            span = f" (N >= {SEARCH_GROWTH_FROM:,})" if label.startswith("search") else ""
            check = f"W2 {label}: growth exponent{span} <= {GROWTH_LIMIT}"
            if label == "search text" and "text" not in t.search_scope:
                add(t.name, check, "n/a: declared name-only search", None)
                continue
            if g is None and t.max_w2_n < 10**9:  # page 10 needs N >= 350: one N below the cap
                add(t.name, check, skipped + ": fewer than 2 sizes", None)
                continue
            if g is None:
                add(t.name, check, "fewer than 2 sizes", None)
                continue
            add(t.name, check, g, g <= GROWTH_LIMIT)
        mine = res.calls.get(t.name, {})
        fnames = an["floors"].get(t.backend, [])
        floor = res.calls.get(fnames[0], {}) if fnames else {}
        if t.backend != "dynamodb" and "delete_thread" in mine:
            # one transaction: one BEGIN..COMMIT, or a single statement (an autocommit
            # statement is its own transaction, atomic: PostgreSQL's data-modifying CTE)
            tx = mine["delete_thread"]["transactions"]
            n_st = mine["delete_thread"]["statements"]
            one = tx == 1 or (tx == 0 and n_st == 1)
            add(t.name, "W4 delete_thread in one transaction", f"{tx:g} BEGIN, {n_st:g} statements",
                one)
        if t.backend == "dynamodb":
            for op, c in mine.items():
                f = floor.get(op)
                if f is not None:
                    add(t.name, f"API calls {op} == floor",
                        f"{c['api_calls']:g} vs {f['api_calls']:g}",
                        c["api_calls"] <= f["api_calls"])
    sc = an.get("scale") or {}
    if sc:
        for label, e in sc["exponent"].items():
            add("chainlit-orm/postgresql", f"SCALE {label}: exponent over store size <= "
                f"{SCALE_GROWTH_LIMIT}", e if e is not None else "fewer than 2 sizes",
                None if e is None else e <= SCALE_GROWTH_LIMIT)
        for label, st in sc["status"].items():
            add("chainlit-orm/postgresql", f"SCALE {label}", st, False)
        w = res.scale.get("walk")
        if w:
            add("chainlit-orm/postgresql", f"SCALE walk of the big user ({w['threads']:,} threads):"
                " every thread once, in order", f"{w['seen']:,} seen", w["ok"])
            growth = w["rss_end_mib"] - w["rss_start_mib"]
            add("chainlit-orm/postgresql", f"SCALE walk: RSS end - start <= "
                f"{WALK_RSS_LIMIT_MIB:g} MiB", f"{growth:+.1f} MiB", growth <= WALK_RSS_LIMIT_MIB)
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
    L.append(f"PostgreSQL synchronous_commit of the bench's databases: **{meta['pg_sync_commit']}**"
             " (see Machine). Every chainlit-orm layer runs with its shipped defaults "
             "(`SQLDataLayer(url)`; settings below).")
    L.append("")
    if meta.get("workload_s"):
        L.append("Time per workload: " + ", ".join(f"{w} {s:.0f} s"
                                                  for w, s in meta["workload_s"].items()))
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
    names = [t.name for t in targets if not t.name.startswith("SCALE")]
    regular = {k: v for k, v in an["metrics"].items() if not k.startswith("SCALE ")}
    L.append("## Ratio to the backend's stricter floor (median of per-round paired ratios)")
    L.append("Throughput rows (steps/s, calls/s): >1 is faster than the floor. Latency rows (ms): "
             "<1 is faster. *lost data* / *wrong result*: the read-back failed; the figure is void."
             " Where a backend has two floors, each metric is compared with the faster of them "
             "(table below). W2 `search text` (a term in message text only) is compared with the "
             "floor's name-only `search` of the name term.")
    L.append("")
    backends = [b for b in an["floors"] if len(an["floors"][b]) > 1]
    if backends:
        L.append("| metric | " + " | ".join(f"stricter floor, {b}" for b in backends) + " |")
        L.append("|---|" + "---|" * len(backends))
        for key, mm in regular.items():
            L.append(f"| {key} | " + " | ".join(str(mm["floors"].get(b) or "–")
                                                for b in backends) + " |")
        L.append("")
    L.append("| metric | " + " | ".join(names) + " |")
    L.append("|---|" + "---|" * len(names))
    for key, mm in regular.items():
        cells = []
        for n in names:
            row = mm["targets"][n]
            cells.append(ratio(row.get("x_floor")) if row["status"] == "ok" else
                         f"*{row['status']}*")
        L.append(f"| {key} ({mm['unit']}) | " + " | ".join(cells) + " |")
    L.append("")
    L.append("## Figures: median [min–max] over rounds, ×stricter floor, ×each floor, "
             "×best Chainlit layer")
    for key, mm in regular.items():
        L.append(f"### {key} ({mm['unit']}; best Chainlit layer: {mm['best_chainlit'] or '–'})")
        extra = [k for k in ("p50 ms", "p99 ms") if any(k in r for r in mm["targets"].values())]
        L.append("| target | median [min–max] | ×stricter floor (which) | ×each floor | "
                 "×best Chainlit | " + "".join(f"{e} | {e} ×floor | " for e in extra))
        L.append("|---|---|---|---|---|" + "---|---|" * len(extra))
        for n in names:
            row = mm["targets"][n]
            if row["status"] != "ok":
                L.append(f"| {n} | **{row['status']}** | | | | " + "| | " * len(extra))
                continue
            u = mm["unit"]
            each = ", ".join(f"{ratio(v)} {f}" for f, v in (row.get("x_floors") or {}).items())
            L.append(f"| {n} | {fmt(row['median'], u)} [{fmt(row['min'], u)}–{fmt(row['max'], u)}]"
                     f" | {ratio(row.get('x_floor'))} ({row.get('floor') or '–'}) | {each} | "
                     f"{ratio(row.get('x_best_chainlit'))} | " +
                     "".join(f"{fmt(row.get(e), 'ms')} | {ratio(row.get(e + ' x_floor'))} | "
                             for e in extra))
        L.append("")
    w5 = regular.get("W5 mixed c=32")
    if w5:
        L.append("## W5 latency per call type: p50 / p99 ms (×stricter floor's p50 / p99)")
        L.append("The floors' own figures are their rows; each target is compared with its "
                 "backend's stricter W5 floor (by throughput).")
        L.append("| target | floor | " + " | ".join(W5_CALLS) + " |")
        L.append("|---|---|" + "---|" * len(W5_CALLS))
        for n in names:
            row = w5["targets"][n]
            if row["status"] != "ok":
                L.append(f"| {n} | | **{row['status']}** |" + " |" * (len(W5_CALLS) - 1))
                continue
            cells = []
            for c in W5_CALLS:
                p50, p99 = row.get(f"{c} p50 ms"), row.get(f"{c} p99 ms")
                r50, r99 = row.get(f"{c} p50 ms x_floor"), row.get(f"{c} p99 ms x_floor")
                cells.append(f"{fmt(p50, 'ms')} / {fmt(p99, 'ms')} ({ratio(r50)} / {ratio(r99)})")
            L.append(f"| {n} | {row.get('floor') or '–'} | " + " | ".join(cells) + " |")
        L.append("")
    L.append("## W2 growth exponent in N (slope of log latency against log N)")
    L.append(f"Searches are fitted from N = {SEARCH_GROWTH_FROM:,} up. `search`: a name term "
             "matching 10 threads of the user at every N; `search text`: a term in 10 threads' "
             "message text; `search 1-char`: one character, matching the 10 `search` threads.")
    L.append("| target | " + " | ".join(W2_LABELS) + " |")
    L.append("|---|" + "---|" * len(W2_LABELS))
    for n in names:
        g = an["growth"].get(n, {})
        L.append(f"| {n} | " + " | ".join("–" if g.get(k) is None else f"{g[k]:.2f}"
                                            for k in W2_LABELS) + " |")
    L.append("")
    if res.memory:
        L.append("## Memory of the bench process (RSS, MiB; sampled every 20 ms)")
        L.append("All targets share the process: a workload's peak is all of them together.")
        L.append("| phase | at start | peak | at end |")
        L.append("|---|---|---|---|")
        for w, mem in res.memory.items():
            L.append(f"| {w} | {mem['start']:.0f} | {mem['peak']:.0f} | {mem['end']:.0f} |")
        L.append("")
    if res.scale:
        L.extend(_scale_md(an, res))
    ops = sorted({op for n in names for op in res.calls.get(n, {})})
    if ops:
        L.append("## Statements / API calls per operation (warm-up round)")
        L.append("SQL: statements (transactions); DynamoDB: API calls.")
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
    if ops:
        L.append("")
    L.append("## Targets of issue 19 (chainlit-orm only)")
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


def _scale_md(an: dict[str, Any], res: Results) -> list[str]:
    L = ["## SCALE: chainlit-orm/postgresql on stores of growing size", ""]
    L.append("| store (threads) | steps | database | load | size | synchronous_commit |")
    L.append("|---|---|---|---|---|---|")
    for size, info in sorted(res.scale.get("stores", {}).items()):
        L.append(f"| {int(size):,} | {info['steps']:,} | {info['db']} | {info['load']} | "
                 f"{info.get('size', '?')} | {info.get('synchronous_commit', '?')} |")
    L.append("")
    sc = an.get("scale") or {}
    sizes = sorted({s for v in sc.get("series", {}).values() for s, _ in v})
    if sizes:
        L.append("Median ms per call (probe: a user with 1,000 threads in every store; big: the "
                 "user with a tenth of the store's threads). Exponent: slope of log latency "
                 "against log store size.")
        L.append("| call | " + " | ".join(f"S={s:,}" for s in sizes) + " | exponent |")
        L.append("|---|" + "---|" * (len(sizes) + 1))
        for label, pts in sc["series"].items():
            by = dict(pts)
            e = sc["exponent"].get(label)
            L.append(f"| {label} | " + " | ".join(fmt(by.get(s), "ms") for s in sizes)
                     + f" | {'–' if e is None else f'{e:.3f}'} |")
        L.append("")
    w = res.scale.get("walk")
    if w:
        L.append(f"Walk of the big user ({w['threads']:,} threads, {w['pages']:,} pages of 35) "
                 f"through every cursor: {w['seconds']:.1f} s, page median "
                 f"{w['page_ms_median']:.2f} ms, max {w['page_ms_max']:.1f} ms; RSS "
                 f"{w['rss_start_mib']:.1f} / {w['rss_middle_mib']:.1f} / {w['rss_end_mib']:.1f}"
                 f" MiB at start / middle / end, peak {w['rss_peak_mib']:.1f} MiB; "
                 f"every thread once, in order: {w['ok']}.")
        L.append("")
    return L


def plot(an: dict[str, Any], targets: list[Target], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(26, 5))
    for ax, label in zip(axes, W2_LABELS, strict=True):
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
