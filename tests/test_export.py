"""`munet export`: a task taken out of the server runs without it, in onnxruntime and in plain PyTorch,
and answers as the server's Predict does (issue 15 §3)."""

from __future__ import annotations

import gc
import hashlib
import io
import json
import random
import tarfile
import tempfile
from pathlib import Path

import httpx
import numpy as np
import onnxruntime
import pytest
import torch

from munet_client import MunetClient, MunetError, load_exported
from munet_client.cli import main as cli
from munet_client.preprocess import prepare, resize
from munet_server.data.images import decode_to_storage, encode_png
from munet_server.evolve.mutations import MutationConfig, Mutator
from munet_server.model.path import PathModel
from munet_server.model.root_config import RootConfig, tiny_vit_config
from munet_server.serve import export
from munet_server.store.store import Store
from munet_server.system import MunetSystem
from tests.helpers import image_folder, make_app


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_vit):
    tmp = tmp_path_factory.mktemp("export")
    app = make_app(tmp / "store", tiny_vit, http_port=0)
    client = MunetClient(f"127.0.0.1:{app.port}", timeout=60)
    folder, test = image_folder(tmp, classes=3, per_class=20)
    final = client.wait(client.add_task_from_folder("digits", folder, seed=0).name, timeout=300)
    assert final.state == "SUCCEEDED", final
    yield app, client, test, tmp
    client.close()
    app.stop(0)


def _session(path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_exported_task_answers_like_predict(served, capsys):
    app, client, test, tmp = served
    out = tmp / "exported"
    assert cli(["--target", f"127.0.0.1:{app.port}", "export", "digits", str(out)]) == 0
    assert "exported digits" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx", "model.safetensors"]

    pngs = [encode_png(i) for i in test.images]
    served_probs = np.array(
        [[lb.probability for lb in sorted(p, key=lambda lb: lb.index)] for p in client.predict("digits", pngs, top_k=3)]
    )
    meta = json.loads((out / "model.json").read_text())
    info = client.describe_task("digits")
    assert meta["labels"] == info.class_names and meta["task"] == "digits"
    # What a user does without the server: munet_client.preprocess.prepare with the bundle's metadata.
    image = torch.from_numpy(np.stack([prepare(p, meta) for p in pngs]))

    session = _session(out / "model.onnx")
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["labels"]) == info.class_names and int(props["image_size"]) == meta["image_size"]
    logits, probs = session.run(["logits", "probabilities"], {"image": image.numpy()})
    assert probs.shape == (len(pngs), 3)
    np.testing.assert_allclose(probs, served_probs, atol=1e-4)
    assert (probs.argmax(1) == served_probs.argmax(1)).all()

    module, meta2 = load_exported(out)
    assert meta2 == meta and not any(p.requires_grad for p in module.parameters())
    with torch.no_grad():
        torch_probs = module(image).softmax(-1).numpy()
    np.testing.assert_allclose(torch_probs, served_probs, atol=1e-5)
    np.testing.assert_allclose(logits, module(image).detach().numpy(), atol=1e-3)


def test_export_errors_are_precise(served, capsys):
    app, client, _, tmp = served
    with pytest.raises(MunetError) as e:
        client.export_task("no-such-task", tmp / "none")
    assert e.value.code == "NOT_FOUND" and "no-such-task" in e.value.message
    assert not any((tmp / "none").iterdir())  # nothing half-written
    out = tmp / "twice"
    client.export_task("digits", out)
    before = (out / "model.safetensors").read_bytes()
    # An earlier export is never replaced by accident; --overwrite replaces it whole.
    assert cli(["--target", f"127.0.0.1:{app.port}", "export", "digits", str(out)]) == 2
    assert "already holds" in capsys.readouterr().err
    assert cli(["--target", f"127.0.0.1:{app.port}", "export", "digits", str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() == before  # the same task exports the same tensors


def test_http_export_is_the_same_bundle_with_checksums(served):
    app, client, test, tmp = served
    grpc_out = tmp / "by-grpc"
    client.export_task("digits", grpc_out)
    with httpx.Client(base_url=f"http://127.0.0.1:{app.http_port}", timeout=120) as http:
        r = http.get("/munet/v1/tasks/digits/export")
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
        assert 'filename="digits.tar"' in r.headers["content-disposition"]
        with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        assert list(files) == ["model.onnx", "model.safetensors", "model.json", "SHA256SUMS"]
        sums = dict(line.split("  ")[::-1] for line in files["SHA256SUMS"].decode().splitlines())
        assert sums == {n: hashlib.sha256(files[n]).hexdigest() for n in export.FILES}  # what `sha256sum -c` checks
        # The same tensors and metadata as the gRPC export (ExportTask), and an ONNX model that runs.
        assert files["model.safetensors"] == (grpc_out / "model.safetensors").read_bytes()
        assert json.loads(files["model.json"]) == json.loads((grpc_out / "model.json").read_text())
        meta = json.loads(files["model.json"])
        session = onnxruntime.InferenceSession(files["model.onnx"], providers=["CPUExecutionProvider"])
        x = torch.stack([decode_to_storage(encode_png(i), app.ref.system.storage_size) for i in test.images[:4]])
        (probs,) = session.run(["probabilities"], {"image": export.resize(x, meta["image_size"]).numpy()})
        assert probs.shape == (4, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)

        # A stored version by number; errors are statuses with a message, before any byte of a tar.
        assert http.get("/munet/v1/tasks/digits/export", params={"version": 1}).status_code == 200
        r = http.get("/munet/v1/tasks/no-such-task/export")
        assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND" and "no-such-task" in r.json()["error"]
        r = http.get("/munet/v1/tasks/digits/export", params={"version": "two"})
        assert r.status_code == 400 and "version" in r.json()["error"]
        r = http.get("/munet/v1/tasks/digits/export", params={"version": 9})
        assert r.status_code == 404 and "9" in r.json()["error"]

    # A tar stream that is never read (its client went away first) leaves no bundle behind.
    tmp_root = Path(tempfile.gettempdir())
    before = set(tmp_root.glob("munet-export-*"))
    stream = export.export_archive(app.ref.system, "digits")
    assert len(set(tmp_root.glob("munet-export-*")) - before) == 1
    del stream
    gc.collect()
    assert set(tmp_root.glob("munet-export-*")) == before


@pytest.mark.parametrize(
    "root",
    [
        RootConfig(weights="random", image_size=32, min_image_size=32, max_image_size=32),  # EfficientNet-Lite0
        tiny_vit_config(),
    ],
    ids=["cnn", "vit"],
)
def test_a_path_with_clones_and_adapters_exports_exactly(tmp_path, root):
    """Every kind of component a search commits (cloned blocks, adapters, a new head) survives the
    export: the PyTorch bundle reproduces the path bit for bit, ONNX within float tolerance."""
    system = MunetSystem.open(Store(tmp_path / "s"), root, device="cpu")
    rp, n = system.root_path, system.arch.num_blocks
    mutator = Mutator(system.arch, system.space, MutationConfig(mu=0.0), random.Random(0))
    hp = mutator.fix_architecture({**rp.hparams, "adapters": [n - 1]})
    child = mutator.make_child(rp, "t", 4, hp, mutate=True, clone=(f"block_{n - 1}",))
    kinds = {c.spec.kind for c in child.trainable()}
    assert {"adapter", "head"} <= kinds and child.component(f"block_{n - 1}").frozen is False
    torch.manual_seed(0)
    with torch.no_grad():  # trained-looking drafts: adapters start as the identity otherwise
        for c in child.trainable():
            for p in c.module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    meta = export.describe("t", ["a", "b", "c", "d"], child.hparams, root, child.components, "digest")
    export.write_bundle(tmp_path / "out", meta, child.components, system.arch)

    image = torch.rand(5, 3, meta["image_size"], meta["image_size"])
    with torch.no_grad():
        want = PathModel(system.arch, child.components).eval()(image * 2 - 1)
        module, _ = load_exported(tmp_path / "out")
        assert torch.equal(module(image), want)
    got = _session(tmp_path / "out" / "model.onnx").run(["logits"], {"image": image.numpy()})[0]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-3, rtol=1e-3)
    system.store.close()


def test_prepare_is_predicts_preprocessing(served, tmp_path):
    """docs/API.md's recipe (issue 31 §6): transparent, non-square and large images through
    `prepare` and the exported ONNX model answer as Predict does."""
    from PIL import Image

    _, client, test, tmp = served
    out = tmp / "prepared"
    client.export_task("digits", out)
    session = _session(out / "model.onnx")
    meta = session.get_modelmeta().custom_metadata_map  # what a user without model.json has
    rng = np.random.default_rng(0)
    images = []
    for i, img in enumerate(test.images[:12]):
        big = Image.fromarray(np.asarray(img)).resize((150 + 7 * i, 90 + 11 * i), Image.Resampling.BICUBIC)
        if i % 2:  # transparent corners: the server composites on white
            rgba = big.convert("RGBA")
            alpha = np.full(rgba.size[::-1], 255, np.uint8)
            alpha[: 20 + i, : 30] = rng.integers(0, 255, (20 + i, 30))
            rgba.putalpha(Image.fromarray(alpha))
            big = rgba
        buf = io.BytesIO()
        big.save(buf, format="PNG")
        images.append(buf.getvalue())
    served_probs = np.array(
        [[lb.probability for lb in sorted(p, key=lambda lb: lb.index)] for p in client.predict("digits", images, top_k=3)]
    )
    x = np.stack([prepare(b, meta) for b in images])
    probs = session.run(["probabilities"], {"image": x})[0]
    np.testing.assert_allclose(probs, served_probs, atol=1e-4)
    assert (probs.argmax(1) == served_probs.argmax(1)).all()


@pytest.mark.parametrize("shape", [(112, 112, 32), (64, 48, 32), (20, 20, 64), (33, 33, 33)])
def test_preprocess_resize_is_torchs_antialiased_bilinear(shape):
    h, w, size = shape
    x = np.random.default_rng(h * w).random((3, h, w), dtype=np.float32)
    want = export.resize(torch.from_numpy(np.round(x * 255).astype(np.uint8))[None], size)[0].numpy()
    got = resize(np.round(x * 255).astype(np.float32) / 255, size)
    np.testing.assert_allclose(got, want, atol=2e-6)
