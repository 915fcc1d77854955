"""Predict for several tasks in one pass: shared components run once, every task gets its own answer."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import torch

from client import MunetClient
from server.data.images import encode_png
from server.model.components import Component
from server.model.path import Path
from server.store.store import Store
from server.system import MunetSystem
from tests.conftest import digits_dataset, image_folder, make_app
from tests.test_engine_system import _evolve


@pytest.fixture(scope="module")
def three_tasks(tmp_path_factory, tiny_vit):
    system = MunetSystem.open(Store(tmp_path_factory.mktemp("shared") / "store"), tiny_vit, device="cpu")
    for i, classes in enumerate((3, 5, 4)):
        _evolve(system, f"t{i}", digits_dataset(classes=classes), generations=2, candidates=2, seed=i)
    # A task that reuses all of t0's path but its head: the sharing every muNet system has somewhere.
    base = system.tasks["t0"].path
    torch.manual_seed(0)
    head = Component(base.components[-1].spec, system.arch.fresh(base.components[-1].spec), frozen=False)
    twin = Path("twin", dict(base.hparams), [*base.components[:-1], head])
    probe = digits_dataset(classes=3).images[:8]
    system.commit("twin", ["0", "1", "2"], twin, {"validation_accuracy": 0.0}, "none", probe)
    return system


def _expected_calls(system: MunetSystem, batches: dict[str, torch.Tensor]) -> Counter:
    """Per module: one call per distinct (input size, modules so far) prefix among the tasks."""
    prefixes: set[tuple] = set()
    for task in batches:
        e = system.tasks[task]
        key: tuple = (e.path.hparams["ds_image_size"],)
        for modules, _ in system.arch.steps(list(e.model.parts)):
            key = (*key, tuple(id(m) for m in modules))
            prefixes.add(key)
    return Counter(m for key in prefixes for m in key[-1][:1])  # a step's first module is called


def test_many_tasks_match_one_at_a_time_and_share_work(three_tasks):
    system = three_tasks
    images = digits_dataset(classes=3).images[:6]
    batches = {t: images[i : i + 4] for i, t in enumerate(system.tasks)}
    alone = {t: system.logits(t, x) for t, x in batches.items()}

    calls: Counter = Counter()
    modules = {id(m): m for e in system.tasks.values() for m in e.model.parts}
    hooks = [
        m.register_forward_hook(lambda mod, args, out: calls.update([id(mod)])) for m in modules.values()
    ]
    try:
        together = system.logits_many(batches)
    finally:
        for h in hooks:
            h.remove()

    assert set(together) == set(batches)
    for t in batches:
        assert together[t].shape == alone[t].shape
        torch.testing.assert_close(together[t], alone[t], rtol=1e-5, atol=1e-5)
        assert torch.equal(together[t].argmax(-1), alone[t].argmax(-1))
    expected = _expected_calls(system, batches)
    assert {m: calls[m] for m in expected} == dict(expected)
    one_by_one = sum(len(system.arch.steps(list(system.tasks[t].model.parts))) for t in batches)
    steps_t0 = len(system.arch.steps(list(system.tasks["t0"].model.parts)))
    assert sum(expected.values()) <= one_by_one - (steps_t0 - 1)  # twin adds only its head's call


def test_unshared_tasks_and_different_sizes_still_work(three_tasks):
    system = three_tasks
    images = digits_dataset(classes=3).images[:5]
    out = system.logits_many({"t0": images[:2], "t2": images[2:]})
    torch.testing.assert_close(out["t0"], system.logits("t0", images[:2]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["t2"], system.logits("t2", images[2:]), rtol=1e-5, atol=1e-5)


def test_server_serves_two_tasks_in_shared_passes(tmp_path, tiny_vit):
    """Concurrent Predicts for two tasks over gRPC: merged into shared passes, same answers."""
    app = make_app(tmp_path / "store", tiny_vit, batch_wait_ms=20.0)
    try:
        client = MunetClient(f"127.0.0.1:{app.port}", timeout=120)
        folder, test = image_folder(tmp_path, classes=3, per_class=20)
        assert client.wait(client.add_task_from_folder("a", folder).name, timeout=300).state == "SUCCEEDED"
        system = app.ref.system
        base = system.tasks["a"].path
        head = Component(base.components[-1].spec, system.arch.fresh(base.components[-1].spec), frozen=False)
        images = [encode_png(i) for i in test.images[:6]]
        probe = app.predictor.decode(images, [])  # at the store's size, as commit wants
        system.commit("b", ["x", "y", "z"], Path("b", dict(base.hparams), [*base.components[:-1], head]),
                      {"validation_accuracy": 0.0}, "none", probe)  # fmt: skip
        assert system.shares_stem("a", "b")

        want = {t: client.predict(t, images, top_k=3) for t in ("a", "b")}  # one task per pass
        got: list[tuple[str, list]] = []
        errors: list[Exception] = []

        def worker(task: str) -> None:
            try:
                with MunetClient(client.target, timeout=120) as c:
                    got.extend((task, c.predict(task, images, top_k=3)) for _ in range(6))
            except Exception as e:  # collected and asserted below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(t,)) for t in ("a", "b") * 4]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and len(got) == 48
        for task, preds in got:
            for p, w in zip(preds, want[task]):
                assert [s.name for s in p] == [s.name for s in w]
                assert [s.probability for s in p] == pytest.approx([s.probability for s in w], abs=1e-5)
        shared = app.predictor.batcher.multi_task_batches
        assert shared > 0
        passes = app.metrics.registry.get_sample_value("munet_predict_passes_total", {"tasks": "2+"})
        assert passes == shared  # exported on /metrics
        client.close()
    finally:
        app.stop(0)
