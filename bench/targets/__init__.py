"""Benchmark targets: each wraps one data layer (or the raw-driver floor) on one backend."""
