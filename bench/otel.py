"""``--tracing on|off`` of ``python -m bench``: chainlit-orm's OpenTelemetry spans on or off.

On: ``CHAINLIT_ORM_TRACING=1`` (every chainlit-orm layer and storage the targets build is
traced) and the SDK's ``TracerProvider`` with a ``BatchSpanProcessor`` whose exporter counts the
spans and drops them: what an app pays for its spans up to the network (an OTLP exporter then
sends the batches from the processor's own thread). Off: ``CHAINLIT_ORM_TRACING=0``, no provider
(the API's no-op one), so the layers run exactly their untraced code.

``python -m bench.otel BOTH.json`` (a ``--tracing both`` report) or ``python -m bench.otel
OFF.json ON.json`` prints the comparison that ``bench/results/otel.md`` holds.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

EXPORTED = [0]


def install(setting: str) -> None:
    """Apply ``--tracing on|off|both`` (before any target is built). ``both`` leaves the
    variable at 0 and adds the ``chainlit-orm+otel/...`` targets, which pass ``tracing=True``:
    the two take turns in every round, so the machine's noise (a shared machine's above all)
    falls on both alike."""
    os.environ["CHAINLIT_ORM_TRACING"] = "1" if setting == "on" else "0"
    if setting == "both":
        os.environ["CHAINLIT_ORM_BENCH_TRACING"] = "both"
    if setting == "off":
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Dropping(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            EXPORTED[0] += len(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropping()))
    trace.set_tracer_provider(provider)


def flush() -> int:
    """Export what is queued; the number of spans exported so far."""
    from opentelemetry import trace

    provider: Any = trace.get_tracer_provider()
    if hasattr(provider, "force_flush"):
        provider.force_flush()
    return EXPORTED[0]


def compare_both(path: str) -> str:
    """A Markdown table of the W1 figures of one ``--tracing both`` report: each
    ``chainlit-orm+otel/...`` target against its untraced twin of the same rounds."""
    report = json.load(open(path))  # noqa: SIM115
    lines = ["| backend | metric | off: median [rounds] | on: median [rounds] | on / off "
             "(medians) | wall time added per step |", "|---|---|---|---|---|---|"]
    for name, metric in report["analysis"]["metrics"].items():
        if not name.startswith("W1"):
            continue
        targets = metric.get("targets", {})
        for target, on in sorted(targets.items()):
            if not target.startswith("chainlit-orm+otel/"):
                continue
            off = targets.get(target.replace("chainlit-orm+otel/", "chainlit-orm/"))
            if off is None or off.get("median") is None or on.get("median") is None:
                continue
            a, b = off["median"], on["median"]

            def rounds(t: dict[str, Any]) -> str:
                return ", ".join(f"{r:,.0f}" for r in t.get("rounds", []))

            lines.append(
                f"| {target.split('/', 1)[1]} | {name} ({metric.get('unit', '')}) | {a:,.0f} "
                f"[{rounds(off)}] | {b:,.0f} [{rounds(on)}] | {b / a:.3f} | "
                f"{1e6 / b - 1e6 / a:+.0f} us |")
    return "\n".join(lines)


def compare(off_path: str, on_path: str) -> str:
    """A Markdown table of the W1 figures of two reports (``--tracing off`` and ``on``)."""
    off, on = (json.load(open(p)) for p in (off_path, on_path))  # noqa: SIM115
    lines = ["| target | metric | off (median) | on (median) | on / off | added per step |",
             "|---|---|---|---|---|---|"]
    for name, metric in off["analysis"]["metrics"].items():
        if not name.startswith("W1"):
            continue
        other = on["analysis"]["metrics"].get(name, {})
        for target, value in sorted(metric.get("targets", {}).items()):
            a, b = value.get("median"), other.get("targets", {}).get(target, {}).get("median")
            if a is None or b is None:
                continue
            added = f"{1e6 / b - 1e6 / a:+.0f} us" if metric.get("unit") == "steps/s" else ""
            lines.append(f"| {target} | {name} ({metric.get('unit', '')}) | {a:,.0f} | {b:,.0f} "
                         f"| {b / a:.3f} | {added} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(compare(sys.argv[1], sys.argv[2]) if len(sys.argv) > 2 else compare_both(sys.argv[1]))
