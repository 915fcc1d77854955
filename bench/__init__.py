"""Benchmarks of the muNet server (run as modules: `python -m bench.quality --quick`)."""
