"""``python -m bench.compare``: the #15 before/after rule on made-up reports."""

from __future__ import annotations

import json
from pathlib import Path

from bench.compare import table


def _report(path: Path, w1: float, w2: float) -> None:
    path.mkdir()
    metrics = {
        "W1 write c=1": {"higher_is_better": True, "targets": {
            "chainlit-orm/sqlite": {"x_floor": w1}, "floor/sqlite": {"x_floor": 1.0}}},
        "W2 first page N=100": {"higher_is_better": False, "targets": {
            "chainlit-orm/sqlite": {"x_floor": w2}}},
    }
    (path / "quick.json").write_text(json.dumps({"analysis": {"metrics": metrics}}))


def test_noise_is_the_spread_of_the_before_runs_and_worse_is_oriented(tmp_path: Path) -> None:
    for name, w1, w2 in (("1-before", 1.00, 1.50), ("2-after", 0.80, 1.50),
                         ("3-before", 0.90, 1.40), ("4-after", 0.84, 1.58),
                         ("5-before", 0.95, 1.45)):
        _report(tmp_path / name, w1, w2)
    assert table(tmp_path).splitlines() == [
        "before runs: ['1-before', '3-before', '5-before']; after runs: ['2-after', '4-after']",
        "| metric | target | before (runs) | noise (spread) | after (runs) | worse by | "
        "beyond noise? |",
        "|---|---|---|---:|---|---:|---|",
        # throughput 0.95 -> 0.82: worse by 0.13, beyond the spread 0.10
        "| W1 write c=1 | sqlite | 1.00 / 0.90 / 0.95 | 0.10 | 0.80 / 0.84 | +0.13 | **yes** |",
        # latency 1.45 -> 1.54: worse by 0.09, within the spread 0.10
        "| W2 first page N=100 | sqlite | 1.50 / 1.40 / 1.45 | 0.10 | 1.50 / 1.58 | +0.09 | no |",
        "",
        "2 ratios; worse beyond noise: 1. x floor: throughput metrics higher is better, latency "
        "metrics lower is better; 'worse by' > 0 means worse after.",
    ]
