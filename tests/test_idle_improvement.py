"""The system keeps learning when it is idle (issue 32 §4): with no operation and no Predict traffic the
server runs ImproveTask rounds on its own; a round waits while Predict runs, gives way at once to a
client's AddTask, and what it publishes is a new version that leaves every other task bit-identical."""

from __future__ import annotations

import time

import pytest

from munet_client import MunetClient
from munet_server.data.dataset import build_dataset
from munet_server.data.images import encode_png
from munet_server.priority import GATE
from munet_server.spec import Budget
from tests.helpers import commit_poor_version, image_folder, make_app

# A round's budget that its generations never end: it runs until something stops it.
ENDLESS = Budget(seconds=60.0, generations=1000, candidates_per_generation=2, epochs=3)


def _until(cond, timeout=300.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what() if callable(what) else what}"
        time.sleep(0.2)
    return value


def _idle_ops(client: MunetClient):
    return [o for o in client.operations() if o.origin == "idle"]


@pytest.mark.slow
def test_idle_rounds_improve_yield_and_change_no_other_task(tmp_path, tiny_vit):
    # Quiet for an hour before a round: none starts while the test sets its tasks up. The round searches
    # until the AddTask below stops it (2 generations of a tiny model could end it between two polls).
    app = make_app(tmp_path / "store", tiny_vit, http_port=0, default_budget=ENDLESS, idle_improvement=True,
                   idle_quiet_seconds=3600.0, idle_round_seconds=600.0)  # fmt: skip
    client = MunetClient(f"127.0.0.1:{app.port}", timeout=120)
    try:
        # Two tasks, added while idle rounds cannot start (an operation is running or queued).
        for name, classes, seed in (("a", 4, 0), ("b", 3, 1)):
            folder, _ = image_folder(tmp_path / name, classes=classes, per_class=20, seed=seed)
            op = client.add_task_from_folder(name, folder, budget={"generations": 0, "seconds": 2}, seed=seed)
            assert client.wait(op.name, timeout=300).state == "SUCCEEDED"
        # A weak version of "a" (the lowest estimate goes first): the round should find better.
        system = app.ref.system
        rec = system.entry("a").record
        ds = build_dataset(system.store.meta.iter_examples(rec.dataset_id), rec.class_names, system.storage_size)
        commit_poor_version(system, "a", ds)
        images = [encode_png(i) for i in ds.images[:8]]
        before = {n: (system.entry(n).record.version, system.entry(n).record.golden_digest) for n in ("a", "b")}
        b_answers = client.predict("b", images, top_k=2)

        # A round starts on its own, over "a", and says so in the operations and the queue.
        app.service.improver.quiet_seconds = 0.5
        idle = _until(lambda: _idle_ops(client), what="an idle round")[0]
        assert idle.kind == "improve_task" and idle.task == "a"
        # On a timeout the message carries the round's operation: its state, phase and error say where it stopped.
        _until(lambda: client.operation(idle.name).progress.phase == "searching",
               what=lambda: f"the round to train; it is {client.operation(idle.name)}")  # fmt: skip

        # Predict traffic: the round waits for it (it does not merely slow down).
        waits = GATE.background_waits
        for _ in range(20):
            assert client.predict("b", images, top_k=2) == b_answers
        _until(lambda: GATE.background_waits > waits, timeout=60, what="the round to wait for Predict")

        # A client's AddTask: the round stops at its next step, keeping what it published; the AddTask runs.
        folder, _ = image_folder(tmp_path / "c", classes=3, per_class=20, seed=2)
        added = client.add_task_from_folder("c", folder, budget={"generations": 0, "seconds": 2}, seed=2)
        ended = client.wait(idle.name, timeout=120)
        assert ended.state == "SUCCEEDED" and ended.origin == "idle", ended
        assert client.wait(added.name, timeout=300).state == "SUCCEEDED"

        # Whatever the round published is a new version of "a"; "b" is bit-identical, every version verifies.
        a = client.describe_task("a")
        assert a.served_version == ended.task_version and a.served_version >= before["a"][0]
        assert (system.entry("b").record.version, system.entry("b").record.golden_digest) == before["b"]
        assert client.predict("b", images, top_k=2) == b_answers
        assert all(client.verify_task(f"a@{v.version}").identical for v in a.versions)
        queue = __import__("httpx").get(f"http://127.0.0.1:{app.http_port}/munet/v1/improvement").json()
        assert queue["enabled"] and set(queue["next"]) <= {"a", "b", "c"}
    finally:
        client.close()
        app.stop(0)


@pytest.mark.slow
def test_with_ray_rounds_over_different_tasks_run_at_once(tmp_path, tiny_vit):
    """With --executor ray the cluster trains the candidates, so idle rounds over two tasks run at the
    same time (each its own operation); the task without a round stays bit-identical."""
    pytest.importorskip("ray")
    from munet_server.evolve.ray_executor import RayExecutor

    executor = RayExecutor(local_num_cpus=2)
    app = make_app(tmp_path / "store", tiny_vit, executor_factory=lambda: executor, executor="ray", http_port=0,
                   default_budget=ENDLESS, idle_improvement=True, idle_quiet_seconds=3600.0,
                   idle_round_seconds=600.0)  # fmt: skip
    client = MunetClient(f"127.0.0.1:{app.port}", timeout=120)
    try:
        improver = app.service.improver
        assert app.service.operations.workers == improver.parallel == 2
        for name, classes, seed in (("a", 4, 0), ("b", 3, 1), ("c", 3, 2)):
            folder, _ = image_folder(tmp_path / name, classes=classes, per_class=20, seed=seed)
            op = client.add_task_from_folder(name, folder, budget={"generations": 0, "seconds": 2}, seed=seed)
            assert client.wait(op.name, timeout=300).state == "SUCCEEDED"
        system = app.ref.system
        before = {n: (system.entry(n).record.version, system.entry(n).record.golden_digest) for n in ("a", "b", "c")}

        improver.quiet_seconds = 0.5

        def two_running() -> set[str] | None:
            tasks = [o.task for o in _idle_ops(client) if o.state == "RUNNING"]
            return set(tasks) if len(tasks) == 2 else None

        running = _until(two_running, what="two rounds at once")
        queue = __import__("httpx").get(f"http://127.0.0.1:{app.http_port}/munet/v1/improvement").json()
        assert len(running) == 2 and set(queue["running"]) == running

        improver.held.set()  # no further round; both stop as for a client's call, keeping what they published
        app.service.operations.yield_idle_rounds()
        for op in _idle_ops(client):
            assert client.wait(op.name, timeout=120).state == "SUCCEEDED"
        (idle_task,) = {"a", "b", "c"} - running
        assert (system.entry(idle_task).record.version, system.entry(idle_task).record.golden_digest) == before[idle_task]
        for name in ("a", "b", "c"):
            assert all(client.verify_task(f"{name}@{v.version}").identical for v in client.describe_task(name).versions)
    finally:
        client.close()
        app.stop(0)
        executor.close()
