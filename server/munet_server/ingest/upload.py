"""Upload -> store: validate a streamed dataset example by example and write it into LMDB.

Examples are decoded as they arrive (a bad image fails the upload at once, naming its index), then
written in batches of small LMDB transactions. The dataset record is marked complete only by
`finish`, in the same transaction that queues the job, so a dropped stream or a crash leaves an
incomplete dataset that start-up recovery deletes.
"""

from __future__ import annotations

import hashlib
import time
import unicodedata
import uuid

from munet_server.data.dataset import validate_class_counts
from munet_server.data.images import decode_image
from munet_server.errors import InvalidArgument, InvalidDataset, ResourceExhausted
from munet_server.faults import disk_full_point
from munet_server.ingest.limits import UploadLimits
from munet_server.store.records import DatasetRecord
from munet_server.store.store import Store

MAX_CLASS_NAME = 128  # characters: names are shown in tables and returned by every Predict


def check_class_name(i: int, name: str) -> None:
    """Plain, printable, bounded: a class name ends up in every client's table and in logs."""
    if not name.strip():
        raise InvalidArgument(f"class name {i} is empty")
    if len(name) > MAX_CLASS_NAME:
        raise InvalidArgument(
            f"class name {i} is {len(name)} characters long; the limit is {MAX_CLASS_NAME}"
        )
    bad = [ch for ch in name if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")]
    if bad:
        raise InvalidArgument(
            f"class name {i} ({name[:40]!r}) contains control or invisible formatting characters "
            f"({', '.join(f'U+{ord(c):04X}' for c in bad[:3])}); use printable text"
        )


class DatasetWriter:
    """Accumulates one upload. Call `add` per example, then `finish` (or `abort`)."""

    def __init__(
        self,
        store: Store,
        task_name: str,
        class_names: list[str],
        limits: UploadLimits,
        storage_size: int = 112,
    ) -> None:
        """`storage_size`: the side images are decoded to for the search (bounds its memory)."""
        if not class_names:
            raise InvalidArgument("the task spec lists no class names; give one name per label")
        if len(class_names) < 2:
            raise InvalidArgument("a classification task needs at least 2 classes")
        if len(class_names) > limits.max_classes:
            raise InvalidArgument(
                f"{len(class_names)} classes is more than the limit of {limits.max_classes}"
            )
        if len(set(class_names)) != len(class_names):
            raise InvalidArgument("class names must be unique")
        for i, n in enumerate(class_names):
            check_class_name(i, n)
        self.store = store
        self.task_name = task_name
        self.class_names = list(class_names)
        self.limits = limits
        self.decoded_bytes = 3 * storage_size * storage_size  # per image, uint8 RGB
        self.id = "ds-" + uuid.uuid4().hex[:16]
        self.counts = [0] * len(class_names)
        self.num_examples = 0
        self.num_bytes = 0
        self._sha = hashlib.sha256()
        self._pending: list[tuple[int, int, bytes]] = []
        self._created = time.time()
        with store.meta.write() as w:
            w.put_dataset(self._record(complete=False))

    def _record(self, complete: bool) -> DatasetRecord:
        return DatasetRecord(
            id=self.id,
            task_name=self.task_name,
            class_names=self.class_names,
            num_examples=self.num_examples,
            class_counts=list(self.counts),
            sha256=self._sha.hexdigest(),
            created_at=self._created,
            complete=complete,
        )

    def add(self, image: bytes, label: int) -> None:
        i = self.num_examples
        if not 0 <= label < len(self.class_names):
            raise InvalidDataset(
                f"example {i} has label {label}, but the task has {len(self.class_names)} classes "
                f"(labels 0..{len(self.class_names) - 1})"
            )
        if len(image) > self.limits.max_image_bytes:
            raise ResourceExhausted(
                f"example {i} is {len(image)} bytes; the limit is {self.limits.max_image_bytes}"
            )
        if self.num_examples + 1 > self.limits.max_examples:
            raise ResourceExhausted(f"the upload has more than {self.limits.max_examples} examples; split it")
        if (self.num_examples + 1) * self.decoded_bytes > self.limits.max_decoded_bytes:
            most = self.limits.max_decoded_bytes // self.decoded_bytes
            raise ResourceExhausted(
                f"the upload has more than {most} examples, which is what fits the server's memory "
                f"bound of {self.limits.max_decoded_bytes / 2**30:.3g} GiB per dataset once decoded "
                "for the search (however small the files); send fewer examples"
            )
        if self.num_bytes + len(image) > self.limits.max_bytes:
            raise ResourceExhausted(
                f"the upload is larger than {self.limits.max_bytes} bytes; send fewer examples"
            )
        try:
            decode_image(image)
        except InvalidArgument as e:
            raise type(e)(f"example {i}: {e.message}") from None
        self.counts[label] += 1
        self.num_examples += 1
        self.num_bytes += len(image)
        self._sha.update(label.to_bytes(4, "little") + len(image).to_bytes(8, "little") + image)
        self._pending.append((i, label, image))
        if len(self._pending) >= 256:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            disk_full_point("upload_write", self.store.meta.path)
            with self.store.meta.write() as w:
                for i, label, data in self._pending:
                    w.put_example(self.id, i, label, data)
            self._pending = []

    def check(self) -> None:
        if self.num_examples == 0:
            raise InvalidDataset("the upload contained no examples")
        validate_class_counts(self.counts, self.class_names, self.limits.min_per_class)

    def finish(self) -> DatasetRecord:
        """Flush and validate; the caller marks it complete together with queueing its job."""
        self._flush()
        self.check()
        return self._record(complete=True)

    def abort(self) -> None:
        self._pending = []
        with self.store.meta.write() as w:
            w.delete_dataset(self.id)
