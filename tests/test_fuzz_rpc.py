"""Property-based bad input on every RPC: each gets a precise status, never INTERNAL, and changes nothing."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from munet_client import MunetClient, MunetError
from munet_proto.v1 import munet_pb2 as pb
from munet_server.data.images import encode_png
from tests.helpers import image_folder, make_app, store_state

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PNG = encode_png(np.arange(64, dtype=np.uint8).reshape(8, 8))
PRECISE = {
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "DATA_LOSS",
}


class Served(tuple):
    def __repr__(self) -> str:  # hypothesis prints fixtures of failing cases: keep it short
        return "<served app, client, archive, probe, golden>"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_vit):
    tmp = tmp_path_factory.mktemp("fuzz")
    app = make_app(tmp / "store", tiny_vit)
    client = MunetClient(f"127.0.0.1:{app.port}", timeout=30)
    folder, test = image_folder(tmp, classes=2, per_class=10)
    assert client.wait(client.add_task_from_folder("base", folder).name, timeout=300).state == "SUCCEEDED"
    archive = tmp / "good.tar"
    client.snapshot(archive)
    probe = [encode_png(i) for i in test.images[:8]]
    yield Served((app, client, archive.read_bytes(), probe, client.predict("base", probe, top_k=2)))
    client.close()
    app.stop(0)


def _expect_precise(call, *codes: str) -> MunetError:
    with pytest.raises(MunetError) as e:
        call()
    assert e.value.code in (codes or PRECISE), e.value
    assert e.value.message  # always something a person can act on
    return e.value


def _unchanged(app, client, before, probe, golden) -> None:
    assert store_state(app) == before
    assert client.predict("base", probe, top_k=2) == golden


@FUZZ
@given(data=st.binary(max_size=2048))
def test_predict_garbage_bytes(served, data):
    app, client, _, probe, golden = served
    before = store_state(app)
    try:
        client.predict("base", [data])  # a few random byte strings are valid images: then it answers
    except MunetError as e:
        assert e.code == "INVALID_ARGUMENT", e
    _unchanged(app, client, before, probe, golden)


@FUZZ
@given(cut=st.integers(min_value=0, max_value=len(PNG) - 1))
def test_predict_truncated_png(served, cut):
    _app, client, _, _probe, _golden = served
    try:
        got = client.predict("base", [PNG[:cut]], top_k=2)
    except MunetError as e:
        assert e.code == "INVALID_ARGUMENT" and "image 0" in e.message, e
        return
    # Only the trailing IEND chunk was cut: every pixel arrived, so the answer is the full image's.
    assert got == client.predict("base", [PNG], top_k=2)


@FUZZ
@given(name=st.text(max_size=80))
def test_task_names_anywhere(served, name):
    """Any string as a task name: Describe/Delete/Predict answer NOT_FOUND or INVALID_ARGUMENT."""
    app, client, _, probe, golden = served
    if name == "base":
        return
    before = store_state(app)
    for call in (
        lambda: client.describe_task(name),
        lambda: client.delete_task(name),
        lambda: client.predict(name, [PNG]),
    ):
        _expect_precise(call, "NOT_FOUND", "INVALID_ARGUMENT")
    _expect_precise(
        lambda: client.add_task(name, ["a", "b"], iter([])), "INVALID_ARGUMENT"
    )  # bad name or empty
    _unchanged(app, client, before, probe, golden)


@FUZZ
@given(tasks=st.lists(st.sampled_from(["base", "", "x", "base\x00base", "bäse", "a" * 70]), max_size=70))
def test_predict_many_any_task_list(served, tasks):
    """Any list of task names for PredictMany: answers, or a precise status; nothing changes."""
    app, client, _, probe, golden = served
    before = store_state(app)
    req = pb.PredictManyRequest(tasks=tasks, images=probe[:2], top_k=2)
    try:
        r = client._call(client.stub.PredictMany, req)
    except MunetError as e:
        assert e.code in ("NOT_FOUND", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"), e
        assert e.message
    else:
        assert tasks == ["base"] and [len(p.labels) for p in r.results[0].predictions] == [2, 2]
    _unchanged(app, client, before, probe, golden)


@FUZZ
@given(
    name=st.sampled_from(["../x", "a/b", "a\x00b", "..", ".hidden", "x" * 65, "ünïcode", " sp", "ok"]),
    budget=st.dictionaries(
        st.sampled_from(
            [
                "generations",
                "candidates_per_generation",
                "epochs",
                "views",
                "seconds",
                "batch_size",
            ]
        ),
        st.integers(min_value=-(2**62), max_value=2**62),
    ),
    scale=st.floats(allow_nan=True, allow_infinity=True, width=64),
    labels=st.lists(st.integers(min_value=-(2**62), max_value=2**62), max_size=6),
)
def test_add_task_hostile_specs(served, name, budget, scale, labels):
    app, client, _, probe, golden = served
    before = store_state(app)
    # Every example set here is invalid (labels out of range or too few per class), so even a valid
    # spec must fail; the status must say why, precisely.
    examples = [(PNG, lb) for lb in labels if not 0 <= lb < 2] or []
    _expect_precise(
        lambda: client.add_task(name, ["a", "b"], iter(examples), budget=budget, scale_factor=scale),
        "INVALID_ARGUMENT",
        "RESOURCE_EXHAUSTED",
    )
    _unchanged(app, client, before, probe, golden)


@FUZZ
@given(
    raw=st.builds(
        lambda h, w, c, n: pb.RawImage(height=h, width=w, channels=c, data=b"\x07" * n),
        st.integers(-5, 40),
        st.integers(-5, 40),
        st.integers(-1, 5),
        st.integers(0, 5000),
    )
)
def test_predict_raw_shapes(served, raw):
    _app, client, _, _probe, _golden = served
    ok = (
        raw.channels in (1, 3)
        and raw.height >= 1
        and raw.width >= 1
        and len(raw.data) == raw.height * raw.width * raw.channels
    )
    req = pb.PredictRequest(task="base", raw_images=[raw])
    if ok:
        assert len(client._call(client.stub.Predict, req).predictions) == 1
    else:
        _expect_precise(lambda: client._call(client.stub.Predict, req), "INVALID_ARGUMENT")


def _tamper(archive: bytes, where: int, byte: int) -> bytes:
    b = bytearray(archive)
    b[where % len(b)] ^= byte or 1
    return bytes(b)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mode=st.sampled_from(["truncate", "tamper", "garbage"]),
    where=st.integers(min_value=0, max_value=2**31),
    byte=st.integers(min_value=0, max_value=255),
)
def test_restore_corrupted_truncated_tampered(served, mode, where, byte):
    app, client, archive, probe, golden = served
    before = store_state(app)
    if mode == "truncate":
        data = archive[: where % len(archive)]
    elif mode == "tamper":
        data = _tamper(archive, where, byte)
    else:
        data = np.random.default_rng(where).integers(0, 256, where % 5000, dtype=np.uint8).tobytes()
    chunks = iter([pb.SnapshotChunk(data=data)])
    try:
        client._call(client.stub.StreamRestore, chunks)
    except MunetError as e:
        assert e.code in ("INVALID_ARGUMENT", "DATA_LOSS", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION"), e
        _unchanged(app, client, before, probe, golden)
        return
    # A flip in tar padding or header slack is harmless: then the restore is an exact, verified copy.
    assert client.predict("base", probe, top_k=2) == golden


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(
    "members",
    [
        [("../escape.txt", b"x")],
        [("/etc/passwd", b"x")],
        [
            (
                "manifest.json",
                b'{"format": "munet-snapshot", "files": {"../../x": {"sha256": "0", "size": 1}}}',
            )
        ],
        [("shards/" + "a" * 64 + ".safetensors", b"\xff" * 8 + b"{}")],  # absurd header length
    ],
)
def test_restore_hostile_archives(served, members):
    app, client, _, probe, golden = served
    before = store_state(app)
    chunks = iter([pb.SnapshotChunk(data=_tar(members))])
    _expect_precise(lambda: client._call(client.stub.StreamRestore, chunks))
    _unchanged(app, client, before, probe, golden)
