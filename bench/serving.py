"""Serving benchmark: Predict over gRPC on loopback against an in-process forward pass of the same path.

    .venv/bin/python -m bench.serving            # ~6 minutes on 2 CPU cores; writes bench/RESULTS.md
    .venv/bin/python -m bench.serving --store DIR   # reuse the 3-task store of an earlier run

All in one run, on one store:
1. Build a system on the offline default root (ImageNet-pretrained EfficientNet-Lite0) with three
   Split-Fashion-MNIST tasks, each evolved briefly (their paths are real muNet paths).
2. Several tasks on the same images: separate per-task passes versus `MunetSystem.logits_many`,
   which runs the components the paths share once.
3. The baseline a user would run instead (decode + resize + forward in their own process, on a copy
   of the store) and the real `munet-server` process through the real client over loopback, measured
   in alternating rounds; where the server's time goes, from its own stage histograms; concurrent
   clients.
4. The same images for every task over gRPC: Predict per task vs PredictMany.
5. Predict latency while another task evolves in the background, against idle, with the search
   yielding to Predict and without.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bench.machine import describe, prepare_process, update_section
from bench.process import free_port, wait_serving
from munet_client import MunetClient
from munet_server.data import offline
from munet_server.data.dataset import ImageDataset
from munet_server.data.images import decode_to_storage, encode_png
from munet_server.evolve.budget import Budget
from munet_server.learn import learn
from munet_server.model.root import RootConfig
from munet_server.spec import AddTaskSpec
from munet_server.store.store import Store
from munet_server.store.task_metrics import TaskMetrics
from munet_server.system import MunetSystem

OUT = Path(__file__).parent / "out"
RESULTS = Path(__file__).parent / "RESULTS.md"


@dataclass(frozen=True)
class ServingConfig:
    tasks: int = 3
    per_class: int = 60  # training images per class of each task (the search is not what we measure)
    requests: int = 20  # timed calls per measurement and round
    rounds: int = 5  # in-process and gRPC measurements alternate this many times
    clients: int = 4  # concurrent clients for the throughput rows
    threads: int = 2


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q))


def timed(fn: Callable[[], object], n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def to_dataset(raw: offline.RawImages, size: int) -> ImageDataset:
    images = torch.stack([decode_to_storage(encode_png(i), size) for i in raw.images])
    return ImageDataset(images, torch.from_numpy(raw.labels), raw.class_names)


# ---- 1. the system ---------------------------------------------------------------------------------
def build_system(store_dir: Path, cfg: ServingConfig) -> list[str]:
    system = MunetSystem.open(Store(store_dir), RootConfig(), device="cpu")
    pairs = ((0, 2), (7, 9), (5, 8), (1, 3))[: cfg.tasks]
    names = []
    for (a, b), raw in zip(pairs, offline.split_fashion_mnist(pairs)):
        name = f"fmnist-{a}-{b}"
        ds = to_dataset(offline.sample_per_class(raw, cfg.per_class, 0), system.storage_size)
        spec = AddTaskSpec(name=name, class_names=ds.class_names, budget=Budget(seconds=30))
        m = TaskMetrics.of(learn(system, spec, ds).record)  # exactly what AddTask runs
        names.append(name)
        print(f"  task {name}: val acc {m.validation_accuracy:.3f}, params added {m.params_added:,}")
    system.store.close()
    return names


# ---- 2 + 3. in process and over gRPC, side by side --------------------------------------------------
class InProcess:
    """What a user would do instead of calling the server: decode + resize + forward in their own
    process (channels-last for CNN roots, as `MunetSystem.logits` does), with the CPU threads that are
    fastest for the batch size (measured here, not assumed). Opened on a copy of the server's store."""

    def __init__(self, store_dir: Path, task: str) -> None:
        self.system = MunetSystem.open(Store(store_dir), device="cpu")
        self.task = task
        self.threads: dict[int, int] = {}

    def decode(self, pngs: list[bytes]) -> torch.Tensor:
        return torch.stack([decode_to_storage(p, self.system.storage_size) for p in pngs])

    def tune(self, b: int, pngs: list[bytes], cfg: ServingConfig) -> int:
        decoded = self.decode(pngs[:b])
        best = {}
        for n in (1, cfg.threads):
            torch.set_num_threads(n)
            best[n] = statistics.median(timed(lambda: self.system.logits(self.task, decoded), 10))
        self.threads[b] = min(best, key=best.get)
        torch.set_num_threads(self.threads[b])
        return self.threads[b]

    def forward(self, decoded: torch.Tensor) -> None:
        self.system.logits(self.task, decoded)

    def decode_forward(self, pngs: list[bytes]) -> None:
        self.system.logits(self.task, self.decode(pngs))


def stage_seconds(metrics_url: str) -> dict[str, float]:
    """Sums of the server's Predict histograms (munet_predict_stage_seconds, handler latency)."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^munet_predict_stage_seconds_sum\{stage="(\w+)"\} (\S+)', text, re.M):
        out[m.group(1)] = float(m.group(2))
    out["handler"] = sum(
        float(m.group(1)) for m in re.finditer(r"^munet_predict_latency_seconds_sum\{[^}]*\} (\S+)", text, re.M)
    )
    return out


def side_by_side(
    inproc: InProcess, target: str, metrics_url: str, task: str, pngs: list[bytes], cfg: ServingConfig
) -> dict:
    """For batch 1 and 32, `rounds` rounds of: in-process forward, in-process decode + forward, gRPC
    Predict, `requests` calls each. Interleaving keeps a drifting machine (other tenants, clock
    changes: the same forward measured 66 and 110 ms in two runs an hour apart) out of the ratios."""
    out: dict = {}
    with MunetClient(target, timeout=120) as c:
        for b in (1, 32):
            batch = pngs[:b]
            decoded = inproc.decode(batch)
            threads = inproc.tune(b, pngs, cfg)
            fwd: list[float] = []
            full: list[float] = []
            grpc: list[float] = []
            ratios = []
            stages = {k: 0.0 for k in ("decode", "queue", "forward", "handler")}
            for _ in range(cfg.rounds):
                f = timed(lambda d=decoded: inproc.forward(d), cfg.requests)
                d = timed(lambda bt=batch: inproc.decode_forward(bt), cfg.requests)
                before = stage_seconds(metrics_url)
                g = timed(lambda bt=batch: c.predict(task, bt), cfg.requests, warmup=1)
                after = stage_seconds(metrics_url)
                for k in stages:  # the warm-up call is in the sums too: per call below, over requests + 1
                    stages[k] += after.get(k, 0.0) - before.get(k, 0.0)
                fwd += f
                full += d
                grpc += g
                ratios.append(statistics.mean(d) / statistics.mean(g))
            calls = cfg.rounds * (cfg.requests + 1)
            row = {
                "threads_in_process": threads,
                "forward": _lat(fwd, b),
                "decode_forward": _lat(full, b),
                "grpc": _lat(grpc, b),
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "server_ms": {k: 1e3 * v / calls for k, v in stages.items()},
            }
            row["server_ms"]["rest"] = row["server_ms"]["handler"] - sum(
                row["server_ms"][k] for k in ("decode", "queue", "forward")
            )
            row["client_minus_handler_ms"] = 1e3 * statistics.mean(grpc) - row["server_ms"]["handler"]
            out[f"b{b}"] = row
        for b in (1, 32):
            torch.set_num_threads(inproc.threads[b])
            base = timed(lambda bt=pngs[:b]: inproc.decode_forward(bt), cfg.requests)
            out[f"b{b}_x{cfg.clients}"] = concurrent(target, [task], pngs[:b], cfg)
            out[f"b{b}_x{cfg.clients}"]["in_process_ips"] = b / statistics.mean(base)
    torch.set_num_threads(cfg.threads)
    return out


def _lat(xs: list[float], b: int) -> dict:
    return {"p50": percentile(xs, 50), "p99": percentile(xs, 99), "ips": b / statistics.mean(xs)}


@torch.no_grad()
def multitask(system: MunetSystem, tasks: list[str], pngs: list[bytes], cfg: ServingConfig) -> dict:
    """Separate per-task passes vs `logits_many` (shared components run once), same images."""
    entries = [system.entry(t) for t in tasks]
    sizes = {int(e.path.hparams["ds_image_size"]) for e in entries}
    images = torch.stack([decode_to_storage(p, system.storage_size) for p in pngs])
    ids = [[c.id for c in e.path.components] for e in entries]
    common = 0
    while all(len(i) > common + 1 for i in ids) and len({i[common] for i in ids}) == 1:
        common += 1

    def separate() -> dict[str, torch.Tensor]:
        return {t: system.logits(t, images) for t in tasks}

    def shared() -> dict[str, torch.Tensor]:
        return system.logits_many(tasks, images)

    apart, together = separate(), shared()
    sep = timed(separate, max(5, cfg.requests // 4))
    sh = timed(shared, max(5, cfg.requests // 4))
    return {
        "tasks": len(tasks),
        "path_lengths": [len(i) for i in ids],
        "shared_prefix_components": common,
        "same_image_size": len(sizes) == 1,
        "separate_s": statistics.median(sep),
        "shared_prefix_s": statistics.median(sh),
        "saving": 1 - statistics.median(sh) / statistics.median(sep),
        "bit_identical": all(torch.equal(apart[t], together[t]) for t in tasks),
    }


# ---- 3 + 5. over gRPC --------------------------------------------------------------------------------
def start_server(store_dir: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str, str]:
    """The server process; returns it, its gRPC target and its /metrics URL."""
    port, mport = free_port(), free_port()
    cmd = [sys.executable, "-m", "munet_server", "--store", str(store_dir), "--port", str(port), "--device", "cpu",
           "--metrics-port", str(mport), *extra]  # fmt: skip
    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{port}"
    wait_serving(target, proc, log)
    return proc, target, f"http://127.0.0.1:{mport}/metrics"


def many_tasks(target: str, tasks: list[str], pngs: list[bytes], cfg: ServingConfig) -> dict:
    """The same images for every task: one Predict per task vs one PredictMany."""
    out: dict = {}
    with MunetClient(target, timeout=120) as c:
        for b in (1, 32):
            batch = pngs[:b]
            each = timed(lambda bt=batch: [c.predict(t, bt) for t in tasks], cfg.requests // 2)
            many = timed(lambda bt=batch: c.predict_many(tasks, bt), cfg.requests // 2)
            out[f"b{b}"] = {
                "separate_p50": percentile(each, 50),
                "many_p50": percentile(many, 50),
                "speedup": statistics.median(each) / statistics.median(many),
            }
        out["same_answers"] = c.predict_many(tasks, pngs) == {t: c.predict(t, pngs) for t in tasks}
    return out


def concurrent(target: str, tasks: list[str], batch: list[bytes], cfg: ServingConfig) -> dict:
    """`clients` threads, each its own channel, spread over the tasks; images per second overall."""
    lat: list[float] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        with MunetClient(target, timeout=120) as c:
            task = tasks[i % len(tasks)]
            c.predict(task, batch)
            for _ in range(cfg.requests // 2):
                t0 = time.perf_counter()
                c.predict(task, batch)
                with lock:
                    lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(cfg.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "ips": len(lat) * len(batch) / wall}


def while_evolving(target: str, task: str, png: bytes, folder: Path, cfg: ServingConfig) -> dict:
    """Predict batch 1, idle and while another task's search trains on the same cores (3x the calls:
    p99 needs them)."""
    n = 3 * cfg.requests * cfg.rounds // 2
    with MunetClient(target, timeout=120) as c:
        idle = timed(lambda: c.predict(task, [png]), n)
        op = c.add_task_from_folder("bench-evolving", folder, budget={"generations": 50}, seed=0)
        while c.operation(op.name).progress.phase != "searching":
            time.sleep(0.1)
        busy = timed(lambda: c.predict(task, [png]), n)
        still = c.operation(op.name).state
        c.cancel(op.name)
        c.wait(op.name, timeout=120)
        c.delete_task("bench-evolving") if any(t.name == "bench-evolving" for t in c.list_tasks()) else None
    return {
        "idle": {"p50": percentile(idle, 50), "p99": percentile(idle, 99)},
        "evolving": {"p50": percentile(busy, 50), "p99": percentile(busy, 99)},
        "evolution_was_running": still == "RUNNING",
    }


# ---- report ----------------------------------------------------------------------------------------
def report(r: dict) -> str:
    sb, cfg = r["side_by_side"], r["config"]
    ms = lambda s: f"{s * 1e3:.1f}"  # noqa: E731
    rows, where, conc = [], [], []
    for b in (1, 32):
        x = sb[f"b{b}"]
        f, d, g = x["forward"], x["decode_forward"], x["grpc"]
        rows.append(
            f"| {b} | {x['threads_in_process']} | {ms(f['p50'])} / {ms(f['p99'])} | {ms(d['p50'])} / {ms(d['p99'])} "
            f"| {ms(g['p50'])} / {ms(g['p99'])} | {d['ips']:.0f} | {g['ips']:.0f} "
            f"| **{x['ratio_median']:.2f}** ({x['ratio_min']:.2f}-{x['ratio_max']:.2f}) |"
        )
        sm = x["server_ms"]
        where.append(
            f"| {b} | {sm['decode']:.1f} | {sm['queue']:.1f} | {sm['forward']:.1f} | {sm['rest']:.1f} "
            f"| {x['client_minus_handler_ms']:.1f} | {1e3 / d['ips'] * b:.1f} |"
        )
        c = sb[f"b{b}_x{cfg['clients']}"]
        conc.append(f"| {b} | {cfg['clients']} | {ms(c['p50'])} / {ms(c['p99'])} | {c['ips']:.0f} | "
                    f"{c['in_process_ips']:.0f} | {c['ips'] / c['in_process_ips']:.2f} |")  # fmt: skip
    many = []
    for b in (1, 32):
        x = r["many_tasks"][f"b{b}"]
        many.append(f"| {b} | {ms(x['separate_p50'])} | {ms(x['many_p50'])} | {x['speedup']:.2f}x |")
    m = r["multitask"]
    ev = [(label, r["while_evolving"][key]) for key, label in (("yield", "gives way (default)"), ("no_yield", "never gives way (`--training-yield-ms 0`)"))]
    evrows = "\n".join(
        f"| {label} | {ms(e['idle']['p50'])} / {ms(e['idle']['p99'])} | {ms(e['evolving']['p50'])} / "
        f"{ms(e['evolving']['p99'])} | {e['evolving']['p99'] / e['idle']['p99']:.2f} | {e['evolution_was_running']} |"
        for label, e in ev
    )
    return f"""## Serving

Produced by `.venv/bin/python -m bench.serving` on **{r["machine"]}**, {r["date"]}.
Root: {r["root"]}; {m["tasks"]} Split-Fashion-MNIST tasks evolved briefly; images are 28x28 PNGs sent by the
real client over loopback, served at the task's image size. **Baseline**: what a user would do instead,
in their own process on the same machine: decode + resize + forward of the same path (channels-last,
CPU threads chosen by measuring 1 and {cfg["threads"]}). Baseline and server are measured **side by side**:
{cfg["rounds"]} rounds of {cfg["requests"]} calls each, alternating, so that a drifting machine moves both.
Ratio = server images/s / baseline images/s, median of the rounds (min-max).

Latency p50 / p99 in ms, one client, sequential calls:

| batch | baseline threads | in-process forward | in-process decode + forward | gRPC Predict | baseline img/s | gRPC img/s | gRPC / baseline |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Where a Predict's time goes, ms per call (the server's own histograms, `munet_predict_stage_seconds`,
read from its /metrics around the gRPC calls): decode on the RPC thread, waiting for the batcher, the
forward pass on the batcher thread, the rest of the handler (top-k, protobuf), and what the client saw
beyond the handler (gRPC transport, serialisation, the client itself); last column, the baseline's
decode + forward per call:

| batch | decode | queue | forward | rest of handler | transport + client | baseline |
|---|---|---|---|---|---|---|
{chr(10).join(where)}

Concurrent clients (each its own channel, the same task: the server batches them), against the
baseline's sequential throughput measured just before:

| batch | clients | p50 / p99 ms | img/s | baseline img/s | ratio |
|---|---|---|---|---|---|
{chr(10).join(conc)}

Several tasks, the same images (`PredictMany`, `munet predict a,b,c IMAGES`): the {m["tasks"]} tasks' paths begin
with the same {m["shared_prefix_components"]} frozen components (same image size: {m["same_image_size"]}), which then run once
for all of them. In process, 32 images for every task take {m["separate_s"] * 1e3:.1f} ms as separate per-task
passes and {m["shared_prefix_s"] * 1e3:.1f} ms through `MunetSystem.logits_many`: **{m["saving"] * 100:.0f}% less time**, outputs
bit-identical: {m["bit_identical"]}. Over gRPC, p50 of one Predict per task vs one PredictMany:

| batch | {m["tasks"]} x Predict p50 ms | PredictMany p50 ms | speed-up |
|---|---|---|---|
{chr(10).join(many)}

Answers equal to per-task Predict: {r["many_tasks"]["same_answers"]}.

Predict (batch 1, p50 / p99 ms) while another task's search trains on the same 2 cores, against idle,
with the search giving way to Predict (`priority.py`: a step waits, at most `--training-yield-ms`,
while Predict work is in flight, and on a CPU runs on one thread while Predict ran in the last second)
and without (`--training-yield-ms 0`):

| search | idle | while evolving | p99 evolving / idle | search running throughout |
|---|---|---|---|---|
{evrows}
"""


def main() -> None:
    prepare_process()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=ServingConfig.requests)
    ap.add_argument("--rounds", type=int, default=ServingConfig.rounds)
    ap.add_argument("--clients", type=int, default=ServingConfig.clients)
    ap.add_argument("--store", type=Path, help="reuse a store built by an earlier run (its 3 tasks)")
    ap.add_argument("--no-report", action="store_true", help="do not touch bench/RESULTS.md")
    args = ap.parse_args()
    cfg = ServingConfig(requests=args.requests, rounds=args.rounds, clients=args.clients)
    torch.set_num_threads(cfg.threads)
    if not offline.available()["fashion_mnist"]:
        raise SystemExit("needs Fashion-MNIST: apt-get install dataset-fashion-mnist (scripts/setup.sh does)")
    OUT.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="munet-serving-"))
    store = work / "store"
    if args.store:
        shutil.copytree(args.store, store)
        s = MunetSystem.open(Store(store), device="cpu")
        tasks = sorted(t for t in s.tasks if t.startswith("fmnist-"))
        s.store.close()
    else:
        print(f"[1/5] building a 3-task system in {store}")
        tasks = build_system(store, cfg)
    shutil.copytree(store, work / "store-in-process")  # the baseline's own copy: the server locks its store
    test = offline.sample_per_class(offline.split_fashion_mnist(((0, 2),), split="test")[0], 32, 1)
    pngs = [encode_png(i) for i in test.images]
    inproc = InProcess(work / "store-in-process", tasks[0])
    print("[2/5] shared prefixes in process")
    mt = multitask(inproc.system, tasks, pngs[:32], cfg)
    folder = offline.write_image_folder(
        offline.sample_per_class(offline.split_fashion_mnist(((4, 6),))[0], 60, 0), work / "evolve"
    )
    evolving = {}
    print("[3/5] gRPC over loopback against the in-process baseline, side by side")
    proc, target, metrics_url = start_server(store, work / "server.log")
    try:
        sb = side_by_side(inproc, target, metrics_url, tasks[0], pngs, cfg)
        print("[4/5] the same images for every task: Predict per task vs PredictMany")
        many = many_tasks(target, tasks, pngs, cfg)
        print("[5/5] Predict while a task evolves (the search yields; then a server where it does not)")
        evolving["yield"] = while_evolving(target, tasks[0], pngs[0], folder, cfg)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    proc, target, _ = start_server(store, work / "server.log", "--training-yield-ms", "0")
    try:
        evolving["no_yield"] = while_evolving(target, tasks[0], pngs[0], folder, cfg)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)

    result = {
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
        "root": "tf_efficientnet_lite0 (ImageNet-pretrained, offline), CPU",
        "config": asdict(cfg),
        "side_by_side": sb,
        "multitask": mt,
        "many_tasks": many,
        "while_evolving": evolving,
    }
    (OUT / "serving.json").write_text(json.dumps(result, indent=1))
    text = report(result)
    print(text)
    if not args.no_report:
        update_section(str(RESULTS), "serving", text)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
