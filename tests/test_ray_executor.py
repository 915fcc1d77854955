"""RayExecutor on a local 2-CPU Ray instance: same results as LocalExecutor, cancellation, the clock,
failures. (The 1-vs-2-worker throughput quoted in docs/RAY.md: bench/ray_throughput.py.)"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch

from munet_server.data.dataset import ImageDataset
from munet_server.errors import Cancelled, FailedPrecondition
from munet_server.evolve.budget import Budget
from munet_server.evolve.clock import Clock
from munet_server.evolve.executors import Candidate, Executor, LocalExecutor
from munet_server.evolve.search import Search, SearchConfig
from munet_server.evolve.train import TrainResult
from munet_server.store.store import Store
from munet_server.system import MunetSystem
from tests.helpers import digits_dataset

SMALL = Budget(seconds=600, generations=2, candidates_per_generation=2, epochs=2, batch_size=16)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Worker tasks run with 1 torch thread; the local reference must too for bitwise equality."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def ray_executor():
    pytest.importorskip("ray")
    from munet_server.evolve.ray_executor import RayExecutor

    ex = RayExecutor(local_num_cpus=2)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def system(tmp_path_factory, tiny_vit) -> MunetSystem:
    return MunetSystem.open(Store(tmp_path_factory.mktemp("ray") / "store"), tiny_vit, device="cpu")


@pytest.fixture(scope="module")
def split() -> ImageDataset:
    return digits_dataset(classes=3, per_class=40)


def _search(system, data, executor, budget=SMALL, **kw) -> Search:
    """A search whose publications are counted, not committed: the executor is what is under test."""
    torch.manual_seed(0)  # fresh heads are initialised from the global RNG on the driver
    versions = iter(range(1, 1000))
    return Search(system, "digits", data, SearchConfig(budget=budget, seed=0), executor=executor,
                  publish=lambda path, member, pub: next(versions), **kw)  # fmt: skip


class Recording:
    """Wraps an executor; can tamper with a generation's candidates before they are shipped."""

    def __init__(self, inner: Executor, tamper=None) -> None:
        self.inner, self.tamper = inner, tamper
        self.candidates: list[Candidate] = []

    def train(self, candidates, ctx, report) -> list[TrainResult | None]:
        first = not self.candidates
        self.candidates += candidates
        if self.tamper is not None and first:
            self.tamper(candidates)
        return self.inner.train(candidates, ctx, report)


def _drafts(search: Search) -> list[torch.Tensor]:
    return [t for m in search.population.members for c in m.path.trainable() for t in c.module.state_dict().values()]


@pytest.mark.ray
def test_same_results_as_local_executor(system, split, ray_executor, monkeypatch):
    import ray

    with torch_threads(1):
        local = _search(system, split, LocalExecutor())
        expected = local.run()
    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda v, **kw: puts.append(v) or real_put(v, **kw))
    seen = []
    rec = Recording(ray_executor)
    remote = _search(system, split, rec, progress=lambda p: seen.append(p.candidates_done))
    with torch_threads(1):  # the driver fits the probes and refits the winner itself
        got = remote.run()

    def key(h):  # seconds differ
        return (h.generation, h.kind, h.validation_accuracy, h.validation_nll, h.score, h.accepted,
                h.trainable_components, h.hparams)  # fmt: skip

    assert [key(h) for h in got.history] == [key(h) for h in expected.history]
    assert got.steps == expected.steps and [p.member for p in got.publications] == [p.member for p in expected.publications]
    a, b = _drafts(local), _drafts(remote)
    assert len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert seen == sorted(seen) and seen[-1] > 0  # progress only moves forward
    # Shipped once per search: the data, plus each committed component any candidate referenced.
    frozen = {c.id for cand in rec.candidates for c in cand.path.components if c.frozen and c.id in system.pool}
    assert len(frozen) >= 3 and len(puts) == 1 + len(frozen)


@pytest.mark.ray
def test_failing_candidates_fail_only_themselves(system, split, ray_executor, caplog):
    from munet_server.evolve.ray_executor import RayExecutor

    class Raises:  # defined locally, so Ray pickles it by value into the worker
        def __float__(self) -> float:
            raise RuntimeError("injected training failure")

    class KillsWorker:
        def __float__(self) -> float:
            os._exit(1)

    def tamper(cands):  # the first trained generation; the trainer reads float(hp["opt_lr"]) in the worker
        cands[0].path.hparams["opt_lr"] = Raises()
        cands[1].path.hparams["opt_lr"] = KillsWorker()

    executor = Recording(RayExecutor(max_retries=0), tamper)  # reuses the running Ray instance
    budget = Budget(seconds=600, generations=2, candidates_per_generation=3, epochs=2, batch_size=16)
    search = _search(system, split, executor, budget=budget)
    with caplog.at_level(logging.WARNING, logger="munet_server.evolve.ray_executor"):
        state = search.run()
    first = [h for h in state.history if h.generation == 1]
    assert len(first) == 1  # the two failed candidates were dropped, the third trained
    assert any(h.generation == 2 for h in state.history)  # and the search went on
    assert not any(isinstance(m.path.hparams["opt_lr"], (Raises, KillsWorker)) for m in state.members)
    text = caplog.text
    assert "injected training failure" in text and text.count("failed on Ray and is dropped") == 2


@pytest.mark.ray
def test_cancel_stops_outstanding_ray_tasks(system, split, ray_executor):
    import ray

    cancel = threading.Event()
    long = Budget(seconds=3600, generations=1, candidates_per_generation=2, epochs=1000, batch_size=16)
    search = _search(system, split, ray_executor, budget=long, cancel=cancel)
    cancelled_at: list[float] = []
    running: list[bool] = []

    def cancel_when_running() -> None:
        deadline = time.monotonic() + 30
        while ray.available_resources().get("CPU", 0) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # wait until both candidates hold a CPU
        running.append(ray.available_resources().get("CPU", 0) == 0)
        time.sleep(0.5)
        cancelled_at.append(time.monotonic())
        cancel.set()

    t = threading.Thread(target=cancel_when_running, daemon=True)
    t.start()
    with pytest.raises(Cancelled):
        search.run()
    assert running == [True]  # both tasks were training when cancelled
    assert time.monotonic() - cancelled_at[0] < 2.0  # the driver stops at the next poll
    deadline = time.monotonic() + 15
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == 2  # the workers were interrupted, not left running
    assert all(h.kind == "probe" for h in search.state.history)  # no trained candidate was recorded


@pytest.mark.ray
def test_the_clock_is_honoured_by_both_executors(system, split, ray_executor):
    """A stopped clock (an idle round giving way) trains nothing more, locally or on Ray; one that
    runs out mid-candidate ends that candidate with what it has (its best checkpoint so far)."""
    search = _search(system, split, LocalExecutor(), budget=Budget(seconds=600, generations=0))
    search.run()  # the probes: the feature cache and a population to build children from
    from munet_server.evolve.executors import TrainContext
    from munet_server.evolve.mutations import FirstGeneration
    from munet_server.evolve.offspring import Brood, first_generation
    from munet_server.evolve.train import Batches

    brood = Brood("digits", split.num_classes, 1, 0)
    base = search.population.probes()[0]
    cands = first_generation(brood, base, search.mutator, FirstGeneration.STRUCTURED, 2)
    batches = Batches(search.cache, search.labels, split.num_classes, search.train_idx, search.holdout_idx,
                      search.views(cands[0].path.hparams))  # fmt: skip
    stopped = Clock(600)
    stopped.stop()
    for executor in (LocalExecutor(), ray_executor):
        ctx = TrainContext(system.arch, batches, search.train_cfg, None, stopped, root=system.root.config.to_dict(),
                           shared_ids=frozenset(system.pool))  # fmt: skip
        assert executor.train(cands, ctx, lambda i, f: None) == [None, None]
    short = TrainContext(system.arch, batches, replace(search.train_cfg, epochs=1000), None, Clock(0.5),
                         root=system.root.config.to_dict(), shared_ids=frozenset(system.pool))  # fmt: skip
    results = LocalExecutor().train(cands[:1], short, lambda i, f: None)
    assert results[0] is not None and results[0].epochs < 1000 and results[0].evaluation is not None


def test_missing_ray_is_failed_precondition(monkeypatch):
    from munet_server.evolve.ray_executor import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(FailedPrecondition, match=r"munet-server\[ray\]"):
        import_ray()


@pytest.mark.ray
def test_server_with_ray_executor_end_to_end(tmp_path, tiny_vit, ray_executor):
    """`--executor ray` through the real server and client: the task commits and serves."""
    from munet_client import MunetClient
    from munet_server.data.images import encode_png
    from tests.helpers import image_folder, make_app

    app = make_app(tmp_path / "store", tiny_vit, executor_factory=lambda: ray_executor)
    try:
        with MunetClient(f"127.0.0.1:{app.port}") as c:
            folder, test = image_folder(tmp_path, classes=3, per_class=20)
            final = c.wait(c.add_task_from_folder("digits", folder, seed=0).name, timeout=300)
            assert final.state == "SUCCEEDED", final
            preds = c.predict("digits", [encode_png(i) for i in test.images])
            assert sum(p[0].index == int(y) for p, y in zip(preds, test.labels)) / len(preds) > 0.5
            assert app.ref.system.verify_task("digits")
    finally:
        app.stop(0)
