"""The same images for several tasks in one pass: shared components run once, answers unchanged."""

from __future__ import annotations

import json
from collections import Counter

import grpc
import pytest
import torch

from munet_client import MunetClient, MunetError
from munet_client.cli import main as cli
from munet_proto.v1 import munet_pb2 as pb
from munet_proto.v1 import munet_pb2_grpc
from munet_server.data.images import encode_png
from munet_server.model.components import Component
from munet_server.model.path import TaskPath
from munet_server.store.store import Store
from munet_server.system import MunetSystem
from tests.helpers import digits_dataset, image_folder, learn, make_app


def _add_twin(system: MunetSystem, of: str, name: str, probe: torch.Tensor) -> None:
    """A task that reuses all of `of`'s path but the head: sharing as muNet makes it, made certain."""
    base = system.tasks[of].path
    spec = base.components[-1].spec
    torch.manual_seed(0)
    head = Component(spec, system.arch.fresh(spec), frozen=False)
    path = TaskPath(name, dict(base.hparams), [*base.components[:-1], head])
    classes = [str(i) for i in range(int(spec.get("num_classes")))]
    system.commit(name, classes, path, {"validation_accuracy": 0.0}, "none", probe)


@pytest.fixture(scope="module")
def system(tmp_path_factory, tiny_vit):
    system = MunetSystem.open(Store(tmp_path_factory.mktemp("shared") / "store"), tiny_vit, device="cpu")
    for i, classes in enumerate((3, 5, 4)):
        learn(system, f"t{i}", digits_dataset(classes=classes, per_class=40), seed=i, generations=1)
    _add_twin(system, "t0", "twin", digits_dataset(classes=3).images[:8])
    return system


def _count_calls(system: MunetSystem, fn):
    calls: Counter = Counter()
    modules = {id(m): m for e in system.tasks.values() for m in e.model.parts}
    hooks = [m.register_forward_hook(lambda mod, a, o: calls.update([id(mod)])) for m in modules.values()]
    try:
        return fn(), calls
    finally:
        for h in hooks:
            h.remove()


def test_same_images_many_tasks_exact_and_shared(system):
    images = digits_dataset(classes=3).images[:6]
    tasks = list(system.tasks)
    alone = {t: system.logits(t, images) for t in tasks}
    together, calls = _count_calls(system, lambda: system.logits_many(tasks, images))

    for t in tasks:  # the same modules on the same batch: bit-identical
        assert torch.equal(together[t], alone[t]), t
    # Expected calls, from the paths alone: one per distinct (image size, modules so far) prefix.
    prefixes = set()
    for t in tasks:
        e = system.tasks[t]
        key: tuple = (e.path.hparams["ds_image_size"],)
        for modules, _ in system.arch.steps(list(e.model.parts)):
            key = (*key, tuple(id(m) for m in modules))
            prefixes.add(key)
    expected = Counter(key[-1][0] for key in prefixes)  # a step is counted by its first module
    assert {m: calls[m] for m in expected} == dict(expected)
    # twin shares every step with t0 but the head: the pair costs one call more than t0 alone
    steps_t0 = len(system.arch.steps(list(system.tasks["t0"].model.parts)))
    alone_calls = sum(len(system.arch.steps(list(system.tasks[t].model.parts))) for t in tasks)
    assert sum(expected.values()) <= alone_calls - (steps_t0 - 1)


def test_many_tasks_errors(system):
    with pytest.raises(Exception, match="does not exist"):
        system.logits_many(["t0", "nope"], digits_dataset(classes=3).images[:2])


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_vit):
    tmp = tmp_path_factory.mktemp("many")
    app = make_app(tmp / "store", tiny_vit, predict_token="p", admin_token="a")
    client = MunetClient(f"127.0.0.1:{app.port}", token="a", timeout=120)
    folder, test = image_folder(tmp, classes=3, per_class=20)
    assert client.wait(client.add_task_from_folder("a", folder).name, timeout=300).state == "SUCCEEDED"
    images = [encode_png(i) for i in test.images[:6]]
    _add_twin(app.ref.system, "a", "b", app.service.predictor.decode(images, []))
    yield app, client, images, tmp
    client.close()
    app.stop(0)


def test_predict_many_over_grpc_matches_predict(served):
    app, client, images, _ = served
    want = {t: client.predict(t, images, top_k=2) for t in ("a", "b")}
    before = app.metrics.registry.get_sample_value("munet_predict_passes_total", {"tasks": "2+"}) or 0
    got = client.predict_many(["b", "a"], images, top_k=2)
    assert list(got) == ["b", "a"]
    assert got == want  # names, indices and float probabilities, all equal
    after = app.metrics.registry.get_sample_value("munet_predict_passes_total", {"tasks": "2+"})
    assert after == before + 1  # one pass served both tasks
    capped = client.predict_many(["a", "b"], images[:1], top_k=99)  # capped at each task's classes
    assert [len(capped[t][0]) for t in ("a", "b")] == [3, 3]


def test_predict_many_errors(served):
    _, client, images, _ = served
    cases = {
        "NOT_FOUND": (["a", "missing"], images),
        "INVALID_ARGUMENT": (["a", "a"], images),
    }
    for code, (tasks, imgs) in cases.items():
        with pytest.raises(MunetError) as e:
            client.predict_many(tasks, imgs)
        assert e.value.code == code, (tasks, e.value)
    with pytest.raises(MunetError) as e:
        client.predict_many([], images)
    assert e.value.code == "INVALID_ARGUMENT" and "at least one task" in e.value.message
    with pytest.raises(MunetError) as e:
        client.predict_many(["a", "b"], [b"not an image"])
    assert e.value.code == "INVALID_ARGUMENT" and "image 0" in e.value.message
    with pytest.raises(MunetError) as e:
        client.predict_many([f"t{i}" for i in range(65)], images)
    assert e.value.code == "RESOURCE_EXHAUSTED"


def test_predict_many_needs_the_predict_token(served):
    app, _, images, _ = served
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = munet_pb2_grpc.MunetStub(ch)
        req = pb.PredictManyRequest(tasks=["a", "b"], images=images[:1])
        with pytest.raises(grpc.RpcError) as e:
            stub.PredictMany(req, timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        r = stub.PredictMany(req, timeout=30, metadata=[("authorization", "Bearer p")])
        assert [x.task for x in r.results] == ["a", "b"]


def test_cli_predicts_several_tasks(served, capsys):
    app, _, images, tmp = served
    files = []
    for i, data in enumerate(images[:2]):
        files.append(tmp / f"img{i}.png")
        files[-1].write_bytes(data)
    target = ["--target", f"127.0.0.1:{app.port}", "--token", "p"]
    assert cli([*target, "--json", "predict", "a,b", *map(str, files)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in rows] == [str(f) for f in files]
    assert all(set(r["tasks"]) == {"a", "b"} for r in rows)
    assert cli([*target, "predict", "a,b", str(files[0])]) == 0
    assert "a" in capsys.readouterr().out
