"""--max-resident-mb: tasks' own layers go back to disk when not asked for and come back on demand,
bit-identically, never from under a call that runs through them."""

from __future__ import annotations

import io
import json
import random
import threading
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from munet_server.evolve.mutations import MutationConfig, Mutator
from munet_server.model.root import RootConfig
from munet_server.store.store import Store
from munet_server.system import MunetSystem

ROOT = RootConfig(weights="random", image_size=32, min_image_size=32, max_image_size=32)  # EfficientNet-Lite0
TASKS = ("a", "b", "c")


def _commit_tasks(system: MunetSystem) -> None:
    """Three tasks, each with its own cloned top block, an adapter and a head (trained-looking)."""
    rp, n = system.root_path, system.arch.num_blocks
    for i, name in enumerate(TASKS):
        mutator = Mutator(system.arch, system.space, MutationConfig(mu=0.0), random.Random(i))
        hp = mutator.fix_architecture({**rp.hparams, "adapters": [n - 2]})
        path = mutator.make_child(rp, name, 3, hp, mutate=True, clone=(f"block_{n - 1}",))
        torch.manual_seed(i)
        with torch.no_grad():
            for c in path.trainable():
                for p in c.module.parameters():
                    p.add_(0.05 * torch.randn_like(p))
        probe = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
        system.commit(name, ["x", "y", "z"], path, {"validation_accuracy": 0.5}, "", probe)


def _own_bytes(system: MunetSystem, task: str) -> int:
    return sum(
        t.numel() * t.element_size()
        for c in system.tasks[task].path.components
        if c.owner == task
        for t in c.module.state_dict().values()
    )


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("residency") / "store"
    system = MunetSystem.open(Store(d), ROOT, device="cpu")
    _commit_tasks(system)
    system.store.close()
    return d


def test_layers_go_to_disk_and_come_back_bit_identical(store_dir):
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    full = MunetSystem.open(Store(store_dir), device="cpu")
    want = {t: full.logits(t, images) for t in TASKS}
    bound = int(1.5 * max(_own_bytes(full, t) for t in TASKS))  # room for about one task's own layers
    full.store.close()

    system = MunetSystem.open(Store(store_dir), device="cpu", max_resident_mb=bound / 2**20)
    s = system.residency.stats()
    assert s.evicted > 0 and s.resident_bytes <= bound, s  # trimmed at start-up
    for _ in range(2):  # each task in turn brings its layers back and pushes another's out
        for t in TASKS:
            assert torch.equal(system.logits(t, images), want[t]), t
            assert system.verify_task(t)
            assert system.residency.stats().resident_bytes <= bound
    s = system.residency.stats()
    assert s.loads >= len(TASKS) and s.evictions > 0 and s.load_seconds > 0
    # The shared forward of several tasks holds all of their layers at once, then trims.
    many = system.logits_many(list(TASKS), images)
    assert all(torch.equal(many[t], want[t]) for t in TASKS)
    assert system.residency.stats().resident_bytes <= bound
    # A search holds every layer in memory while it runs; afterwards the bound applies again.
    with system.residency.hold_all():
        assert system.residency.stats().evicted == 0
    assert system.residency.stats().resident_bytes <= bound

    # Concurrent callers of different tasks: no call ever runs through a layer sent to disk.
    errors: list[BaseException] = []
    team = torch.get_num_threads()  # a CPU convolution's bits depend on its OpenMP team's size

    def caller(t: str) -> None:
        try:
            torch.set_num_threads(team)
            for _ in range(15):
                assert torch.equal(system.logits(t, images), want[t])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=caller, args=(t,)) for t in TASKS for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[0]
    system.store.close()


def test_a_digest_is_the_same_whatever_thread_computes_it(store_dir):
    """A version's golden digest is computed on one thread: verified from threads whose OpenMP teams
    differ (a gRPC worker, the Predict batcher on small batches), the outputs are still identical."""
    system = MunetSystem.open(Store(store_dir), device="cpu")
    verified: list[bool] = []

    def verify(team: int) -> None:
        torch.set_num_threads(team)
        verified.append(all(system.verify_task(t) for t in TASKS))

    try:
        for team in (1, 2, 3):
            th = threading.Thread(target=verify, args=(team,))
            th.start()
            th.join()
        assert verified == [True, True, True]
    finally:
        system.store.close()


def test_the_server_serves_within_the_bound_and_reports_it(tmp_path, store_dir):
    from munet_client import MunetClient
    from tests.helpers import free_port, make_app

    pngs = []
    for i in range(4):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
        pngs.append(buf.getvalue())
    app = make_app(store_dir, ROOT, root_explicit=False)
    try:
        want = {t: MunetClient(f"127.0.0.1:{app.port}", timeout=60).predict(t, pngs, top_k=3) for t in TASKS}
    finally:
        app.stop()
    port = free_port()
    app = make_app(store_dir, ROOT, root_explicit=False, max_resident_mb=0.001, metrics_port=port, http_port=0)
    try:
        client = MunetClient(f"127.0.0.1:{app.port}", timeout=60)
        for t in TASKS * 2:
            assert client.predict(t, pngs, top_k=3) == want[t], t
        assert client.predict_many(list(TASKS), pngs, top_k=3) == want
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        lines = dict(ln.rsplit(" ", 1) for ln in text.splitlines() if ln and not ln.startswith("#"))
        assert float(lines["munet_layer_loads_total"]) >= len(TASKS) * 2
        assert float(lines["munet_evicted_components"]) > 0
        assert float(lines["munet_resident_max_bytes"]) == int(0.001 * 2**20)
        system = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{app.http_port}/munet/v1/system").read())
        assert system["residency"]["evicted"] > 0 and system["residency"]["loads"] >= len(TASKS) * 2
    finally:
        app.stop()
