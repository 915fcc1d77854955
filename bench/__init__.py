"""Benchmarks of the muNet server (run as modules: `python -m bench.quality --quick`)."""

import os

# Idle OpenMP threads sleep instead of spinning: on a small shared CPU, spinning threads of another
# process make every torch op wait (measured here: 1.42 s vs 0.18 s per fine-tuning step while a
# second torch process ran). Must be set before torch is first imported; override it from the shell.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
