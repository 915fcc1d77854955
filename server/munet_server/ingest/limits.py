"""Upload limits: plain data, torch-free (the server's flags parse without importing the engine)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UploadLimits:
    max_examples: int = 200_000
    max_bytes: int = 2 << 30  # total encoded bytes of one upload
    max_image_bytes: int = 16 << 20
    min_per_class: int = 2  # a class needs one example to train on and one to validate
    max_classes: int = 10_000
    max_decoded_bytes: int = 4 << 30  # an upload decoded at the storage size, as the search holds it
    idle_seconds: float = 60.0  # an upload or restore stream that sends nothing this long is ended
