"""Helpers shared by the tests (fixtures live in conftest.py): real server processes, store state."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from munet_client import MunetClient, MunetError


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
