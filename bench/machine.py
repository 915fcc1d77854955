"""Name the machine a benchmark ran on (every table in RESULTS.md says where it came from)."""

from __future__ import annotations

import os
import platform
import subprocess

import torch

from munet_server.allocator import keep_freed_memory

_ALLOCATOR = "malloc defaults"


def prepare_process() -> None:
    """What the server does at start-up (munet_server.allocator), so that every method a benchmark
    compares (baselines included) runs on the same allocator as AddTask and Predict do."""
    global _ALLOCATOR
    if keep_freed_memory():
        _ALLOCATOR = "malloc keeps freed memory"


def describe() -> str:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), ""
        )
    except (OSError, subprocess.SubprocessError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({model or platform.processor() or 'unknown CPU'}), {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, {_ALLOCATOR}"
    )


def update_section(path: str, name: str, body: str) -> None:
    """Replace (or append) the block between `<!-- name:start -->` and `<!-- name:end -->`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    else:
        text = "# Benchmark results\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)
