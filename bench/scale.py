"""Scale benchmark (issue 14 §2): a system of a thousand tasks, measured as it grows.

A real `munet-server` process (offline default root, EfficientNet-Lite0, CPU) learns a few evolved
tasks (a short search each, so their paths hold trained layers), then cheap tasks (2 classes x 3
Fashion-MNIST images, the converged probe only) through the real client, up to 1,000. At each
checkpoint N, against the live server: ListTasks (every page: seconds and bytes on the wire),
DescribeTask, Predict p50/p99 at batch 1, PredictMany over 64 tasks, the server's resident memory,
the store's size on disk, a Snapshot, and a restart (seconds until SERVING).

    .venv/bin/python -m bench.scale                   # ~45 min on 2 CPU cores
    .venv/bin/python -m bench.scale --report
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import describe, prepare_process, update_section
from bench.process import free_port, wait_serving
from munet_client import MunetClient
from munet_proto.v1 import munet_pb2 as pb
from munet_server.data import offline
from munet_server.data.images import encode_png

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out" / "scale.jsonl"
CHECKPOINTS = (10, 100, 250, 500, 1000)
EVOLVED = 10  # tasks learned with a short search before the cheap ones (trained layers in their paths)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Server:
    """The real server process on a store; restartable (start-up time is one of the curves)."""

    def __init__(self, store: Path, logfile: Path) -> None:
        self.store, self.logfile = store, logfile
        self.proc: subprocess.Popen | None = None
        self.target = ""

    def start(self) -> float:
        port = free_port()
        cmd = [sys.executable, "-m", "munet_server", "--store", str(self.store), "--port", str(port),
               "--device", "cpu", "--log-level", "WARNING", "--snapshot-root", str(self.store.parent)]  # fmt: skip
        t0 = time.perf_counter()
        with open(self.logfile, "a") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        self.target = f"127.0.0.1:{port}"
        wait_serving(self.target, self.proc, self.logfile)
        return time.perf_counter() - t0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(120)

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    fn()  # warm
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def cheap_examples(raw: offline.RawImages, i: int) -> tuple[list[str], list[tuple[bytes, int]]]:
    """Task i: 3 images of each of two Fashion-MNIST classes (its own images, so its head differs)."""
    rng = np.random.default_rng(i)
    out = []
    for label in (0, 1):
        idx = rng.choice(np.nonzero(raw.labels == label)[0], 3, replace=False)
        out += [(encode_png(raw.images[j]), label) for j in idx]
    return raw.class_names, out


def add(c: MunetClient, name: str, classes: list[str], examples: list[tuple[bytes, int]], budget: dict) -> str:
    return c.add_task(name, classes, examples, budget=budget, seed=0).name


def measure(server: Server, n: int, pngs: list[bytes], workdir: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"tasks": n}
    with MunetClient(server.target, timeout=600) as c:
        t0 = time.perf_counter()
        tasks, wire, token = [], 0, ""
        while True:  # what `munet tasks` does: every page
            r = c._call(c.stub.ListTasks, pb.ListTasksRequest(page_token=token))
            wire += r.ByteSize()
            tasks += [t.name for t in r.tasks]
            token = r.next_page_token
            if not token:
                break
        row["list_tasks_s"] = time.perf_counter() - t0
        row["list_tasks_mb"] = wire / 2**20
        assert len(tasks) == n, (len(tasks), n)
        some = tasks[len(tasks) // 2]
        row["describe_s"] = statistics.median(timed(lambda: c.describe_task(some), 10))
        lat = timed(lambda: c.predict(tasks[-1], pngs[:1]), 50)
        row["predict_p50_ms"], row["predict_p99_ms"] = 1e3 * np.percentile(lat, 50), 1e3 * np.percentile(lat, 99)
        many = tasks[-64:]
        row["predict_many_64_ms"] = 1e3 * statistics.median(timed(lambda: c.predict_many(many, pngs[:1]), 10))
        row["rss_mb"] = server.rss_mb()
        row["store_mb"] = dir_mb(server.store)
        dest = workdir / f"snap-{n}"
        t0 = time.perf_counter()
        c.snapshot(server_dir=str(dest))
        row["snapshot_s"] = time.perf_counter() - t0
        shutil.rmtree(dest)
    server.stop()
    row["startup_s"] = server.start()
    return row


def run(out: Path, checkpoints: tuple[int, ...], evolved: int, keep: Path | None = None) -> None:
    fm = offline.split_fashion_mnist(((0, 6), (2, 4), (5, 7), (1, 3), (8, 9)))
    pngs = [encode_png(x) for x in fm[0].images[:8]]
    env = {"machine": describe()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) if keep is None else keep
        work.mkdir(parents=True, exist_ok=True)
        server = Server(work / "store", out.parent / "scale_server.log")
        server.start()
        try:
            with MunetClient(server.target, timeout=600) as c:
                n = 0
                for i in range(evolved):  # short real searches: trained layers other tasks may reuse
                    raw = offline.sample_per_class(fm[i % len(fm)], 40, i)
                    ex = [(encode_png(x), int(y)) for x, y in zip(raw.images, raw.labels)]
                    op = add(c, f"evolved-{i:03d}", raw.class_names, ex, {"seconds": 20})
                    assert c.wait(op).state == "SUCCEEDED"
                    n += 1
                log(f"{n} evolved tasks")
                for target_n in checkpoints:
                    pending = []
                    while n < target_n:
                        classes, ex = cheap_examples(fm[n % len(fm)], n)
                        # the probe generation only, most of it on the root: PROBE_SHARE of 2 s for
                        # the other seeds (at 10 s, adding the 1,000 took 70 min)
                        pending.append(add(c, f"task-{n:04d}", classes, ex, {"generations": 0, "seconds": 2}))
                        n += 1
                        if len(pending) == 6 or n == target_n:  # the server queues at most 8
                            for op in pending:
                                assert c.wait(op).state == "SUCCEEDED"
                            pending = []
                    row = measure(server, n, pngs, work)
                    c.close()
                    c = MunetClient(server.target, timeout=600)  # the server restarted
                    log(f"N={n}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if k != "tasks"))
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with open(out, "a") as f:
                        f.write(json.dumps({**row, "evolved": evolved, **env}) + "\n")
        finally:
            server.stop()


COLUMNS = (
    ("list_tasks_s", "ListTasks s", "{:.2f}"),
    ("list_tasks_mb", "ListTasks MB", "{:.2f}"),
    ("describe_s", "DescribeTask ms", "{:.1f}", 1e3),
    ("predict_p50_ms", "Predict p50 ms", "{:.1f}"),
    ("predict_p99_ms", "Predict p99 ms", "{:.1f}"),
    ("predict_many_64_ms", "PredictMany(64) ms", "{:.0f}"),
    ("rss_mb", "server RSS MB", "{:.0f}"),
    ("store_mb", "store MB", "{:.0f}"),
    ("snapshot_s", "Snapshot s", "{:.1f}"),
    ("startup_s", "start-up s", "{:.1f}"),
)


def report(out: Path, results_md: Path) -> str:
    rows = [json.loads(x) for x in out.read_text().splitlines() if x.strip()] if out.exists() else []
    if not rows:
        return "no rows yet"
    rows.sort(key=lambda r: r["tasks"])
    head = "| tasks | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [
        f"Machine: {rows[-1]['machine']}. The real server process on the default root (EfficientNet-Lite0, CPU); "
        f"the first {rows[-1]['evolved']} tasks learned with a 20 s search, the rest cheap (2 classes x 3 "
        "images, the probe generation of a 2 s budget). Measured through the real client at each N; start-up = a restart of "
        "the process until it answers SERVING.",
        "",
        head,
        "|" + "---:|" * (len(COLUMNS) + 1),
    ]
    for r in rows:
        cells = [c[2].format(r[c[0]] * (c[3] if len(c) > 3 else 1)) for c in COLUMNS]
        lines.append(f"| {r['tasks']:,} | " + " | ".join(cells) + " |")
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        ratio = b["tasks"] / a["tasks"]
        growth = ", ".join(f"{c[1]} x{b[c[0]] / a[c[0]]:.2f}" for c in COLUMNS if a[c[0]])
        lines += ["", f"From {a['tasks']:,} to {b['tasks']:,} tasks (x{ratio:.1f}): {growth}."]
    _plot(rows, results_md.parent / "scale.png")
    body = "\n".join(lines) + "\n\n![scale](scale.png)\n"
    update_section(str(results_md), "scale", "## A thousand tasks\n\n" + body)
    return body


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["tasks"] for r in rows]
    fig, axes = plt.subplots(2, 5, figsize=(16, 6))
    for ax, c in zip(axes.flat, COLUMNS):
        ax.plot(n, [r[c[0]] * (c[3] if len(c) > 3 else 1) for r in rows], marker="o")
        ax.set_title(c[1], fontsize=9)
        ax.set_xlabel("tasks", fontsize=8)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    prepare_process()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", default=",".join(map(str, CHECKPOINTS)))
    p.add_argument("--evolved", type=int, default=EVOLVED)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--report", action="store_true")
    p.add_argument("--keep", type=Path, help="build the store in this folder and keep it (to profile a start-up)")
    p.add_argument("--no-report", action="store_true", help="leave bench/RESULTS.md alone (an experiment)")
    a = p.parse_args(argv)
    if not a.report:
        if a.out.exists():
            os.replace(a.out, a.out.with_suffix(".previous.jsonl"))
        run(a.out, tuple(int(x) for x in a.checkpoints.split(",")), a.evolved, a.keep)
    if not a.no_report:
        print(report(a.out, BENCH / "RESULTS.md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
