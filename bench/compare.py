"""Before/after table of `python -m bench` runs: ``python -m bench.compare DIR``.

``DIR`` holds one report directory per run, named ``<n>-before`` or ``<n>-after`` (each with its
``quick.json``), as interleaved runs of two commits write them. For every chainlit-orm target and
metric, the table gives each run's ratio to the floor (``x_floor``), the noise (the spread, max -
min, of the before runs), and how much worse the after median is than the before median,
oriented so that > 0 is worse (throughput: lower; latency: higher). Why the spread of the before
runs: the #15 acceptance rule ("no ratio may get worse by more than the run-to-run noise,
defined as the spread of three runs of the commit before").
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def _metrics(run: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run / "quick.json").read_text())
    metrics: dict[str, Any] = data["analysis"]["metrics"]
    return metrics


def table(root: Path) -> str:
    """The markdown table (and its one-line summary) for the runs under ``root``."""
    runs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "quick.json").exists())
    before = [p for p in runs if p.name.endswith("before")]
    after = [p for p in runs if p.name.endswith("after")]
    b_runs, a_runs = [_metrics(p) for p in before], [_metrics(p) for p in after]
    out = [f"before runs: {[p.name for p in before]}; after runs: {[p.name for p in after]}",
           "| metric | target | before (runs) | noise (spread) | after (runs) | worse by | "
           "beyond noise? |",
           "|---|---|---|---:|---|---:|---|"]
    compared = worse = 0
    for metric, spec in b_runs[0].items():
        higher_is_better = bool(spec.get("higher_is_better", False))
        for target in spec["targets"]:
            if not target.startswith("chainlit-orm/"):
                continue

            def ratios(reports: list[dict[str, Any]], target: str = target,
                       metric: str = metric) -> list[float]:
                found = (r.get(metric, {}).get("targets", {}).get(target, {}).get("x_floor")
                         for r in reports)
                return [float(x) for x in found if x is not None]

            b, a = ratios(b_runs), ratios(a_runs)
            if len(b) < len(b_runs) or not a:
                continue
            noise = max(b) - min(b)
            delta = statistics.median(a) - statistics.median(b)
            worse_by = -delta if higher_is_better else delta
            beyond = worse_by > noise
            compared += 1
            worse += beyond

            def shown(xs: list[float]) -> str:
                return " / ".join(f"{x:.2f}" for x in xs)

            out.append(f"| {metric} | {target.split('/', 1)[1]} | {shown(b)} | {noise:.2f} | "
                       f"{shown(a)} | {worse_by:+.2f} | {'**yes**' if beyond else 'no'} |")
    out.append(f"\n{compared} ratios; worse beyond noise: {worse}. x floor: throughput metrics "
               "higher is better, latency metrics lower is better; 'worse by' > 0 means worse "
               "after.")
    return "\n".join(out)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
