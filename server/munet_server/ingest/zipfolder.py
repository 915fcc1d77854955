"""A zipped ImageFolder (one folder per class) as upload examples, read with bounded memory.

A zip's headers can lie and a small member can inflate to gigabytes, so every member is checked
before it is opened (declared size, encryption, compression method) and read at most
`max_image_bytes + 1` bytes: nothing is decompressed past the per-example limit."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO

from munet_client.images import IMAGE_SUFFIXES, SPLIT_NAMES, skipped
from munet_server.errors import InvalidArgument, ResourceExhausted

SUPPORTED_COMPRESSION = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
_ENCRYPTED = 0x1  # general purpose bit 0 of a zip member's flags


@dataclass
class ZipFolder:
    """The class folders of an opened zip and the members to read, label by label."""

    archive: zipfile.ZipFile
    class_names: list[str]
    members: list[tuple[zipfile.ZipInfo, int]]
    max_image_bytes: int
    skipped_files: list[str] = field(default_factory=list)  # not images: listed for the caller to report

    @classmethod
    def open(cls, file: IO[bytes], filename: str, max_image_bytes: int) -> ZipFolder:
        try:
            archive = zipfile.ZipFile(file)
        except (zipfile.BadZipFile, OSError, ValueError):
            raise InvalidArgument(f"{filename or 'the upload'} is not a zip archive") from None
        try:
            names, members, skipped_files = _image_folder(archive)
            for info, _ in members:
                _check_member(info, max_image_bytes)
        except BaseException:
            archive.close()
            raise
        return cls(archive, names, members, max_image_bytes, skipped_files)

    def examples(self) -> Iterator[tuple[bytes, int]]:
        """(encoded image, label) per member, each read at most `max_image_bytes + 1` bytes."""
        for info, label in self.members:
            yield read_member(self.archive, info, self.max_image_bytes), label

    def close(self) -> None:
        self.archive.close()

    def __enter__(self) -> ZipFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_member(info: zipfile.ZipInfo, limit: int) -> None:
    """Refuse, before any byte is inflated, what can't be read or is declared too large."""
    if info.flag_bits & _ENCRYPTED:
        raise InvalidArgument(f"{info.filename} is encrypted; zip the images without a password")
    if info.compress_type not in SUPPORTED_COMPRESSION:
        raise InvalidArgument(
            f"{info.filename} uses zip compression method {info.compress_type}; "
            "use stored or deflate (what every zip tool writes by default)"
        )
    if info.file_size > limit:
        raise ResourceExhausted(
            f"{info.filename} is {info.file_size:,} bytes uncompressed; the limit of one image is {limit:,}"
        )


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """At most limit + 1 bytes of a member: a header that understates the size can't inflate more."""
    try:
        with archive.open(info) as f:
            data = f.read(limit + 1)
    except zipfile.BadZipFile as e:  # a CRC mismatch or a damaged header
        raise InvalidArgument(f"{info.filename} is damaged in the zip ({e}); zip the images again") from None
    except (NotImplementedError, RuntimeError, OSError, EOFError) as e:  # methods, passwords, truncated data
        raise InvalidArgument(f"{info.filename} can't be read from the zip ({e})") from None
    if len(data) > limit:
        raise ResourceExhausted(
            f"{info.filename} inflates past {limit:,} bytes (its header says {info.file_size:,}); "
            "the limit of one image is that"
        )
    return data


def _image_folder(archive: zipfile.ZipFile) -> tuple[list[str], list[tuple[zipfile.ZipInfo, int]], list[str]]:
    """Class folders (under at most one wrapping folder), images inside; hidden files and __MACOSX
    ignored, other files that are not images listed as skipped."""
    files: list[tuple[PurePosixPath, zipfile.ZipInfo]] = []
    skipped_files: list[str] = []
    for info in archive.infolist():
        p = PurePosixPath(info.filename)
        if info.is_dir() or any(map(skipped, p.parts)):
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            files.append((p, info))
        else:
            skipped_files.append(info.filename)
    tops = {p.parts[0] for p, _ in files if len(p.parts) > 1}
    strip = 1 if len(tops) == 1 and all(len(p.parts) > 2 for p, _ in files) else 0  # one wrapping folder
    by_class: dict[str, list[tuple[str, zipfile.ZipInfo]]] = {}
    for p, info in files:
        parts = p.parts[strip:]
        if len(parts) < 2:
            raise InvalidArgument(f"{p} is not inside a class folder; zip one folder per class")
        by_class.setdefault(parts[0], []).append((str(p), info))
    if len(by_class) < 2:
        raise InvalidArgument(f"the zip has {len(by_class)} class folders with images; a task needs at least 2")
    names = sorted(by_class)
    if set(names) <= SPLIT_NAMES:
        raise InvalidArgument(
            f"the zip holds the splits {', '.join(names)}, not class folders; zip the train/ folder alone"
        )
    members = [(info, label) for label, n in enumerate(names) for _, info in sorted(by_class[n], key=lambda x: x[0])]
    return names, members, skipped_files
