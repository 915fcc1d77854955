"""The engine end to end on real data: evolve, commit, reopen, no forgetting, corruption, resume."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from munet_server.errors import AlreadyExists, Cancelled, DataLoss
from munet_server.evolve.budget import Budget
from munet_server.ingest.upload import DatasetWriter, UploadLimits
from munet_server.operations.manager import OperationManager
from munet_server.spec import AddTaskSpec
from munet_server.store.store import Store
from munet_server.system import MunetSystem
from tests.helpers import digits_dataset, learn


@pytest.fixture
def system(tmp_path, tiny_vit):
    return MunetSystem.open(Store(tmp_path / "store"), tiny_vit, device="cpu")


def test_learning_beats_chance_and_survives_reopen(tmp_path, tiny_vit, digits):
    system = MunetSystem.open(Store(tmp_path / "s"), tiny_vit, device="cpu")
    learned = learn(system, "digits", digits)
    record = learned.record
    # 10 classes, 359 held-out images: chance is 0.10 and one standard error about 0.026. The root was
    # pretrained on animal silhouettes only; a converged probe of it reads digits at ~0.8 (measured on
    # two machines), so 0.5 leaves a margin of more than ten standard errors for any CPU or BLAS.
    assert record.metrics["validation_accuracy"] > 0.5, record.metrics["history"]
    assert record.metrics["probe_validation_accuracy"] > 0.5
    assert record.metrics["validation_accuracy"] >= record.metrics["probe_validation_accuracy"]
    assert record.metrics["params_added"] > 0
    assert system.verify_task("digits")
    x = digits.images[:20]
    before = system.logits("digits", x)
    system.store.meta.close()
    reopened = MunetSystem.open(Store(tmp_path / "s"), device="cpu")
    assert torch.equal(reopened.logits("digits", x), before)
    assert reopened.verify_task("digits")
    assert set(reopened.pool) == set(system.pool)


def test_old_tasks_bit_identical_after_two_more(system):
    a = digits_dataset(classes=3, per_class=40)
    b = digits_dataset(classes=5, per_class=40)
    c = digits_dataset(classes=4, per_class=40)
    learn(system, "a", a, generations=1)
    golden = system.tasks["a"].record.golden_digest
    probe = a.images[:32]
    out_a = system.logits("a", probe)
    learn(system, "b", b, seed=1, generations=1)
    learn(system, "c", c, seed=2, generations=1)
    for name in ("a", "b", "c"):
        assert system.verify_task(name), name
    assert torch.equal(system.logits("a", probe), out_a)
    assert system.tasks["a"].record.golden_digest == golden
    with pytest.raises(AlreadyExists):
        learn(system, "a", a, generations=0)
    # every path begins with the root's frozen stem: one component, three users, run for each
    stem = system.tasks["a"].path.components[0]
    assert stem.owner == "root" and system.users(stem) == 3
    assert all(e.path.components[0] is stem for e in system.tasks.values())


def test_accounting_shares_cost_between_tasks(system):
    root_path = system.root_path
    alone = system.accounted_params(root_path, "new")
    assert alone == pytest.approx(sum(c.num_params for c in root_path.components))
    learn(system, "first", digits_dataset(classes=3), generations=0)  # the probe: the root + a head
    used = [c for c in root_path.components if system.users(c, exclude="new") == 1]
    assert used, "the first task's linear probe reuses root components"
    after = system.accounted_params(root_path, "new")
    assert after == pytest.approx(alone - sum(c.num_params for c in used) / 2)
    cfg = system.score_config(0.5)
    assert cfg.root_params == system.arch.root_param_count()


def test_corrupted_shard_is_refused(tmp_path, tiny_vit):
    system = MunetSystem.open(Store(tmp_path / "s"), tiny_vit, device="cpu")
    learn(system, "t", digits_dataset(classes=3), generations=0)
    digest = system.tasks["t"].record.shards[0]
    system.store.meta.close()
    shard = Store(tmp_path / "s").shards.path(digest)
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    reopened = MunetSystem.open(Store(tmp_path / "s"), device="cpu")  # the others still serve
    assert "t" in reopened.damaged and "t" not in reopened.tasks
    with pytest.raises(DataLoss, match="Restore a snapshot"):
        reopened.logits("t", torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_cancel_leaves_system_unchanged(system, digits):
    cancel = threading.Event()
    cancel.set()
    pool = set(system.pool)
    with pytest.raises(Cancelled):
        learn(system, "x", digits, cancel=cancel)
    assert "x" not in system.tasks and set(system.pool) == pool


def _upload(store, spec, ds):
    from munet_server.data.images import encode_png

    w = DatasetWriter(store, spec.name, spec.class_names, UploadLimits())
    for img, label in zip(ds.images, ds.labels):
        w.add(encode_png(img.permute(1, 2, 0).numpy()), int(label))
    return w.finish()


def test_job_resumes_after_interruption(tmp_path, tiny_vit):
    store_dir = tmp_path / "s"
    system = MunetSystem.open(Store(store_dir), tiny_vit, device="cpu")
    ds = digits_dataset(classes=3, per_class=40)
    budget = Budget(generations=3, candidates_per_generation=1, epochs=2)
    spec = AddTaskSpec(name="resumed", class_names=ds.class_names, budget=budget)
    jobs = OperationManager(system)
    jobs.start()
    job = jobs.submit(spec, _upload(system.store, spec, ds))
    # interrupt once the first generation has been checkpointed
    deadline = time.monotonic() + 120
    while not jobs.get(job.id).checkpoint.get("state") and time.monotonic() < deadline:
        time.sleep(0.05)
    jobs.stop()
    interrupted = system.store.meta.get_operation(job.id)
    assert interrupted.state == "RUNNING"
    assert system.tasks["resumed"].record.version == 1  # the first probe served at once
    digest = system.tasks["resumed"].record.golden_digest
    system.store.meta.close()

    system2 = MunetSystem.open(Store(store_dir), device="cpu")
    jobs2 = OperationManager(system2)
    jobs2.start()
    done = jobs2.wait(job.id, timeout=300)
    assert done.state == "SUCCEEDED", done.error
    assert system2.verify_task("resumed")
    v1 = system2.versions("resumed")[0]
    assert v1.version == 1 and v1.golden_digest == digest  # resumed as the champion, not published again
    # It went on from its checkpoint to the last generation (the probes, the structured one, two evolved).
    assert done.progress["candidates_done"] > interrupted.progress.get("candidates_done", 0)
    assert done.progress["generation"] >= 2
    jobs2.stop()
