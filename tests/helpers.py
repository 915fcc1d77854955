"""Helpers shared by the tests (fixtures live in conftest.py): real data, real servers in-process and
as processes, store state."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from munet_client import MunetClient, MunetError

if TYPE_CHECKING:
    from munet_server.data.dataset import ImageDataset
    from munet_server.model.root import RootConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_STARTED: list[subprocess.Popen] = []


def kill_leftover_servers() -> None:
    """A failing test must not leave a server process behind (conftest calls this after each test)."""
    while _STARTED:
        p = _STARTED.pop()
        if p.poll() is None:
            p.kill()
            p.wait(30)


TINY_VIT_FLAGS = ["--root", "vit_tiny_patch16_224", "--image-size", "32", "--min-image-size", "16",
                  "--max-image-size", "64"]  # fmt: skip


def server_command(store: Path, port: int, weights: str) -> list[str]:
    """`munet-server` on the tiny test ViT, as a user would start it."""
    kwargs = json.dumps(dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2))
    return [
        sys.executable, "-m", "munet_server", "--store", str(store), "--port", str(port), "--device", "cpu",
        *TINY_VIT_FLAGS, "--root-kwargs", kwargs, "--root-weights", weights, "--log-level", "WARNING",
        "--no-idle-improvement",  # tests that compare states need a quiet server
    ]  # fmt: skip


class ServerProcess:
    """A real `munet-server` subprocess on a loopback port, with a client once it is SERVING."""

    def __init__(
        self, store: Path, weights: str, crash_at: str = "", disk_full_at: str = "", extra: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        cmd = [*server_command(store, self.port, weights), *extra]
        env = {
            **os.environ,
            "MUNET_CRASH_AT": crash_at,
            "MUNET_DISK_FULL_AT": disk_full_at,
            "OMP_NUM_THREADS": "1",
        }
        self.log = open(store.parent / f"server-{self.port}.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        _STARTED.append(self.proc)
        self.client = MunetClient(f"127.0.0.1:{self.port}", timeout=60)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited: {(store.parent / f'server-{self.port}.log').read_text()}"
                )
            try:
                if self.client.health() == "SERVING":
                    return
            except MunetError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server did not start")
            time.sleep(0.2)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(60) == 0
        self.close()

    def wait_dead(self) -> None:
        assert self.proc.wait(120) == -signal.SIGKILL
        self.close()

    def close(self) -> None:
        self.client.close()
        self.log.close()


def store_state(app) -> tuple:
    """Everything that must not change: tasks, components, datasets, shard files, golden digests."""
    s = app.ref.system
    with s.store.meta.read() as v:
        tasks = tuple(sorted((t.name, t.golden_digest) for t in v.list_tasks()))
        comps = tuple(sorted(c.id for c in v.list_components()))
        datasets = tuple(sorted(d.id for d in v.list_datasets() if not d.complete))
    return tasks, comps, datasets, tuple(sorted(s.store.shards.digests()))


def learn(system, name, ds, seed=0, scale=1.0, cancel=None, champion=None, **budget):
    """`learn` with a small budget: what AddTask runs (ImproveTask with `champion`), on an
    in-memory dataset."""
    from munet_server.evolve.budget import Budget
    from munet_server.learn import learn as learn_task
    from munet_server.spec import AddTaskSpec

    b = Budget(**{**TINY_BUDGET, **budget})
    spec = AddTaskSpec(name=name, class_names=ds.class_names, budget=b, seed=seed, scale_factor=scale)
    return learn_task(system, spec, ds, cancel=cancel, champion=champion)


POOR_WD = 30.0  # a weight decay that starves the head: measured 0.30 vs 0.66 for what ImproveTask finds


def poor_path(system, name: str, ds):
    """A legitimate but weak recipe for `name`: an over-regularised head on the root's first block
    alone, at the smallest image size the system searches."""
    import copy
    import random

    import torch

    from munet_server.evolve.features import FeatureCache, View
    from munet_server.evolve.mutations import MutationConfig, Mutator
    from munet_server.evolve.train import fit_probe_head, probe_features

    rp = system.root_path
    mut = Mutator(system.arch, system.space, MutationConfig(), random.Random(0))
    hp = {**copy.deepcopy(rp.hparams), "num_layers": 1, "ds_image_size": system.space.sizes[0], "head_wd": POOR_WD}
    path = mut.make_child(rp, name, ds.num_classes, mut.fix_architecture(hp), mutate=False)
    feats = probe_features(path, system.arch, FeatureCache(ds.images, system.device), [View(system.space.sizes[0])])
    fit_probe_head(path, feats, ds.labels, torch.arange(len(ds)), ds.num_classes, POOR_WD)
    return path


def commit_poor_version(system, name: str, ds) -> int:
    """Publish that weak recipe as the task's next version (its number)."""
    metrics = {"kind": "probe", "validation_accuracy": 0.0, "scale_factor": 0.95, "recipe_epochs": 0}
    return system.commit_version(name, poor_path(system, name, ds), metrics).version


# Enough for the tiny test ViT: the probes, one structured generation, one evolved one.
TINY_BUDGET = dict(seconds=120.0, generations=2, candidates_per_generation=2, epochs=3)


def self_signed_cert(tmp_path, host: str = "localhost"):
    """A self-signed certificate for `host` and its key, as PEM files under tmp_path."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


# ---- real data ----------------------------------------------------------------------------------
def digits_dataset(size: int = 32, classes: int = 10, per_class: int | None = None) -> ImageDataset:
    """scikit-learn's 8x8 digits (real UCI data, ships in the wheel), upscaled to `size`, as RGB uint8."""
    from sklearn.datasets import load_digits

    from munet_server.data.dataset import ImageDataset

    d = load_digits()
    keep = d.target < classes
    x = torch.from_numpy((d.images[keep] * (255.0 / 16.0)).astype(np.float32))[:, None]
    y = torch.from_numpy(d.target[keep].astype(np.int64))
    if per_class is not None:
        idx = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(classes)])
        x, y = x[idx], y[idx]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 255)
    images = x.round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return ImageDataset(images=images, labels=y, class_names=[str(i) for i in range(classes)])


def animal_shapes_at(size: int, per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Animal silhouettes (real, from the animal-shape-mnist wheel) as (N, 3, size, size) uint8."""
    from munet_server.data import offline

    raw = offline.sample_per_class(offline.animal_shapes(), per_class, seed)
    x = torch.from_numpy(raw.images)[:, None].float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).round().clamp(0, 255)
    return x.to(torch.uint8).expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(raw.labels)


# ---- a real server on a loopback port --------------------------------------------------------------
SMALL_BUDGET = dict(seconds=60.0, generations=2, candidates_per_generation=2, epochs=3)


def make_app(store, root: RootConfig, executor_factory=None, **overrides):
    """A real MunetApp (gRPC server on 127.0.0.1, port 0) over a real store."""
    from munet_server.app import MunetApp
    from munet_server.config import ServerConfig
    from munet_server.spec import Budget

    overrides.setdefault("default_budget", Budget(**SMALL_BUDGET))
    overrides.setdefault("idle_improvement", False)  # tests that compare states need a quiet server
    cfg = ServerConfig(store=store, port=0, root=root, device="cpu", grace_seconds=1.0, **overrides)
    app = MunetApp(cfg, executor_factory=executor_factory)
    app.start()
    return app


def image_folder(tmp_path, classes: int = 3, per_class: int = 30, seed: int = 0, name: str = "digits"):
    """A real ImageFolder tree (PNG files) from scikit-learn's digits, plus a held-out test split."""
    from munet_server.data import offline

    raw = offline.sample_per_class(offline.digits(), per_class + 10, seed)
    keep = raw.labels < classes
    raw = offline.RawImages(raw.images[keep], raw.labels[keep], raw.class_names[:classes])
    train, test = offline.train_test_split(raw, 10 / (per_class + 10), seed)
    return offline.write_image_folder(train, tmp_path / name), test
