"""Shared set-up of the reliability suite (faults, fuzz, concurrency storms, access probes).

Hypothesis runs with the ``ci`` profile unless ``HYPOTHESIS_PROFILE`` names another: derandomized
(the same examples on every run, so CI is deterministic) with a bounded number of examples, so the
whole suite stays well under its 15-minute budget. ``HYPOTHESIS_PROFILE=dev`` explores more.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
