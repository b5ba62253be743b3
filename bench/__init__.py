"""Benchmarks: each prints JSON figures measured side by side in one run (python -m bench.NAME)."""
