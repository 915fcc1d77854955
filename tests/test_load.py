"""Load while learning: many concurrent Predict clients while a task evolves; concurrent AddTasks."""

from __future__ import annotations

import resource
import threading
import time

import numpy as np
import pytest

from munet_client import MunetClient, MunetError
from munet_server.data.images import encode_png
from munet_server.priority import GATE, ServingGate
from tests.helpers import image_folder, make_app

pytestmark = pytest.mark.slow


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_predict_load_while_a_task_evolves(tmp_path, tiny_vit):
    app = make_app(tmp_path / "store", tiny_vit, max_pending_operations=2)
    target = f"127.0.0.1:{app.port}"
    try:
        with MunetClient(target) as c:
            folder, test = image_folder(tmp_path, classes=3, per_class=20)
            assert c.wait(c.add_task_from_folder("a", folder).name, timeout=300).state == "SUCCEEDED"
            images = [encode_png(i) for i in test.images[:8]]
            golden = c.predict("a", images)
            # Idle latency first, then the same load while "b" evolves in the background.
            idle = _hammer(target, images, golden, clients=8, seconds=3)
            op = c.add_task_from_folder("b", folder, budget={"seconds": 600, "generations": 1000, "epochs": 200})
            while c.operation(op.name).state != "RUNNING":
                time.sleep(0.05)
            rss0 = _rss_mb()
            yields0 = GATE.yields
            busy = _hammer(target, images, golden, clients=16, seconds=6)
            rss1 = _rss_mb()
            assert c.operation(op.name).state == "RUNNING"  # it really was learning the whole time
            assert GATE.yields > yields0  # and paused its steps while Predict ran
            c.cancel(op.name)
            assert c.wait(op.name, timeout=60).state == "CANCELLED"
        for stats in (idle, busy):
            assert stats["errors"] == [], stats["errors"][:3]
            assert stats["wrong"] == 0
            assert stats["calls"] > 20
        assert rss1 - rss0 < 300, (rss0, rss1)  # bounded: no per-request growth
        print(
            f"\nload: idle {idle['calls']} calls p50 {idle['p50'] * 1e3:.1f} ms p99 {idle['p99'] * 1e3:.1f} ms; "
            f"while evolving {busy['calls']} calls p50 {busy['p50'] * 1e3:.1f} ms p99 {busy['p99'] * 1e3:.1f} ms; "
            f"RSS {rss0:.0f} -> {rss1:.0f} MB"
        )
    finally:
        app.stop(0)


def test_the_serving_gate_bounds_each_pause():
    gate = ServingGate(max_wait=0.05)
    t0 = time.monotonic()
    gate.yield_to_serving()  # nothing served: no pause
    assert time.monotonic() - t0 < 0.01 and gate.yields == 0
    with gate.serving():
        t0 = time.monotonic()
        gate.yield_to_serving()  # Predict never ends here: the step waits max_wait, then runs
        assert 0.04 < time.monotonic() - t0 < 1.0 and gate.yields == 1
    entered = threading.Event()

    def serve() -> None:
        with gate.serving():
            entered.set()
            time.sleep(0.02)

    gate.max_wait = 5.0
    t = threading.Thread(target=serve)
    t.start()
    entered.wait()
    t0 = time.monotonic()
    gate.yield_to_serving()  # returns when the pass ends, long before max_wait
    t.join()
    assert time.monotonic() - t0 < 2.0 and gate.yields == 2


def test_a_cpu_search_runs_on_one_thread_while_predict_is_busy():
    """The thread budget: beside Predict (and for `recent` seconds after it) a CPU search's steps run
    on one thread; then on its own count again. Other threads (Predict's) keep theirs."""
    import torch

    gate = ServingGate(max_wait=0.01, recent=0.2)
    seen: list[int] = []

    def search_steps() -> None:
        torch.set_num_threads(2)
        gate.yield_to_serving("cpu")  # idle: its own 2 threads
        seen.append(torch.get_num_threads())
        with gate.serving():  # Predict in flight (from this thread, for the test's sake)
            gate.yield_to_serving("cpu")
            seen.append(torch.get_num_threads())
        gate.yield_to_serving("cpu")  # Predict just ended: still narrow
        seen.append(torch.get_num_threads())
        time.sleep(0.3)
        gate.yield_to_serving("cpu")  # quiet for longer than `recent`: wide again
        seen.append(torch.get_num_threads())
        with gate.serving():
            gate.yield_to_serving("cuda")  # a GPU search keeps its CPU threads
            seen.append(torch.get_num_threads())

    t = threading.Thread(target=search_steps)
    t.start()
    t.join()
    assert seen == [2, 1, 1, 2, 2], seen
    assert gate.narrow_steps == 2
    gate.max_wait = 0  # --training-yield-ms 0: neither pauses nor narrows
    t = threading.Thread(target=lambda: (torch.set_num_threads(2), gate.yield_to_serving("cpu"), seen.append(torch.get_num_threads())))
    with gate.serving():
        t.start()
        t.join()
    assert seen[-1] == 2


def _same_predictions(got, golden) -> bool:
    """Same labels in the same order, probabilities equal to float32 rounding.

    Concurrent requests are batched together, and a batch of 64 runs other BLAS kernels than a batch
    of 8: the last bits of a logit may differ with the company a request keeps (measured on AMD EPYC).
    """
    return all(
        [(lb.name, lb.index) for lb in g] == [(lb.name, lb.index) for lb in w]
        and all(abs(a.probability - b.probability) < 1e-5 for a, b in zip(g, w))
        for g, w in zip(got, golden, strict=True)
    )


def _hammer(target: str, images: list[bytes], golden, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[Exception] = []
    wrong = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        nonlocal wrong
        with MunetClient(target, timeout=30) as c:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    got = c.predict("a", images)
                except MunetError as e:
                    with lock:
                        errors.append(e)
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    wrong += not _same_predictions(got, golden)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    lat = np.array(latencies or [0.0])
    return {
        "calls": len(latencies),
        "errors": errors,
        "wrong": wrong,
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
    }


def test_concurrent_add_tasks_queue_or_refuse_cleanly(tmp_path, tiny_vit):
    app = make_app(tmp_path / "store", tiny_vit, max_pending_operations=2)
    target = f"127.0.0.1:{app.port}"
    folder, _ = image_folder(tmp_path, classes=2, per_class=8)
    results: dict[str, list] = {"ok": [], "err": []}
    lock = threading.Lock()

    def add(name: str) -> None:
        with MunetClient(target) as c:
            try:
                op = c.add_task_from_folder(name, folder, budget={"generations": 1})
                with lock:
                    results["ok"].append((name, op.name))
            except MunetError as e:
                with lock:
                    results["err"].append((name, e.code))

    try:
        names = ["same"] * 4 + ["x1", "x2", "x3"]
        threads = [threading.Thread(target=add, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(results["ok"]) + len(results["err"]) == len(names)
        assert sum(1 for n, _ in results["ok"] if n == "same") <= 1  # never two operations for one name
        assert {code for _, code in results["err"]} <= {"ALREADY_EXISTS", "RESOURCE_EXHAUSTED"}
        assert results["ok"], results
        with app.ref.system.store.meta.read() as v:  # refused uploads left nothing behind
            assert all(d.complete for d in v.list_datasets())
        with MunetClient(target) as c:
            finals = [c.wait(op, timeout=300) for _, op in results["ok"]]
            assert all(f.state == "SUCCEEDED" for f in finals), finals
            assert sorted(t.name for t in c.list_tasks()) == sorted(n for n, _ in results["ok"])
            for t in c.list_tasks():
                assert app.ref.system.verify_task(t.name)
    finally:
        app.stop(0)
