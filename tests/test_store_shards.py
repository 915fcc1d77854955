"""Content-addressed safetensors shards: round trip, determinism, corruption, hostile input."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from munet_server.errors import CorruptShard, DataLoss, InvalidArgument, NotFound
from munet_server.store.shards import ShardStore, serialize, validate_shard_file


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    return {
        "block/w": base,
        "block/w_t": base.t(),  # non-contiguous view sharing storage with block/w
        "block/half": base[:2],  # another alias
        "head/b": torch.arange(5, dtype=torch.int64),
        "head/bf16": torch.randn(3, generator=g).to(torch.bfloat16),
        "mask": torch.tensor([True, False]),
        "pix": torch.randint(0, 255, (2, 3, 4, 4), dtype=torch.uint8, generator=g),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 7),
    }


def test_round_trip_is_exact_and_deterministic(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "shards")
    tensors = _tensors()
    digest = store.put(tensors, metadata={"owner": "root", "task": "t", "z": "1", "a": "2"})
    path = store.path(digest)
    assert path.name == f"{digest}.safetensors"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    back = store.get(digest)
    assert set(back) == set(tensors)
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), k
        assert back[k].is_contiguous()
    # Same content in another order, metadata in another order: same bytes, same digest.
    reordered = dict(reversed(list(tensors.items())))
    for _ in range(5):
        md = {"a": "2", "z": "1", "task": "t", "owner": "root"}
        assert store.put(reordered, metadata=md) == digest
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"a": "2", "owner": "root", "task": "t", "z": "1"}
    assert store.digests() == {digest} and store.exists(digest)
    store.verify(digest)


def test_existing_shard_is_never_rewritten(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    digest = store.put({"x": torch.ones(3)})
    inode = store.path(digest).stat().st_ino
    assert store.put({"x": torch.ones(3)}) == digest
    assert store.path(digest).stat().st_ino == inode
    assert store.clean_temp() == 0


def test_flipped_byte_is_corrupt_shard(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    digest = store.put({"x": torch.arange(100, dtype=torch.float32)})
    path = store.path(digest)
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptShard) as e:
        store.get(digest)
    assert str(path) in e.value.message and "snapshot" in e.value.message
    with pytest.raises(CorruptShard):
        store.verify(digest)


def test_pickle_under_a_valid_digest_is_never_unpickled(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    buf = io.BytesIO()
    torch.save({"x": torch.ones(2)}, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    store.path(digest).write_bytes(data)
    with pytest.raises(CorruptShard):
        store.get(digest)


@pytest.mark.parametrize(
    "bad", ["../../etc/passwd", "A" * 64, "a" * 63, "a" * 65, "g" * 64, "", "a" * 63 + "/", None, 123]
)
def test_bad_digest_strings_are_invalid_argument(tmp_path: Path, bad: object) -> None:
    store = ShardStore(tmp_path)
    for op in (store.get, store.path, store.exists, store.verify, store.remove):
        with pytest.raises(InvalidArgument):
            op(bad)  # type: ignore[arg-type]


def test_missing_shard_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        ShardStore(tmp_path).get("0" * 64)


def test_remove_and_clean_temp(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    digest = store.put({"x": torch.ones(1)})
    (tmp_path / ".tmp-abandoned").write_bytes(b"half a shard")
    (tmp_path / "unrelated.txt").write_text("kept")
    assert store.digests() == {digest}
    assert store.clean_temp() == 1
    store.remove(digest)
    store.remove(digest)  # idempotent
    assert not store.exists(digest) and (tmp_path / "unrelated.txt").exists()


def test_put_rejects_non_tensors(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    with pytest.raises(InvalidArgument):
        store.put({"x": [1, 2, 3]})  # type: ignore[dict-item]
    with pytest.raises(InvalidArgument):
        store.put({"x": torch.ones(1)}, metadata={"k": 1})  # type: ignore[dict-item]
    assert store.digests() == set()


def _header_file(path: Path, header: dict, payload: bytes) -> Path:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + payload)
    return path


def test_validate_shard_file_refuses_hostile_headers(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    good.write_bytes(serialize({"a": torch.ones(2, 2), "b": torch.zeros(3, dtype=torch.int64)}))
    assert sorted(validate_shard_file(good)) == ["a", "b"]
    cases = {
        "absurd": ({"a": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 4]}}, b"\0" * 4),
        "mismatch": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4),
        "beyond": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4),
        "gap": ({"a": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}, b"\0" * 4),
        "dtype": ({"a": {"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
        "negative": ({"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}, b"\0"),
    }
    for name, (header, payload) in cases.items():
        with pytest.raises(DataLoss):
            validate_shard_file(_header_file(tmp_path / f"{name}.safetensors", header, payload))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-3])
    with pytest.raises(DataLoss):
        validate_shard_file(truncated)
    (tmp_path / "tiny").write_bytes(b"\x01")
    with pytest.raises(DataLoss):
        validate_shard_file(tmp_path / "tiny")
