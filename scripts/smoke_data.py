"""The Python part of scripts/docker_smoke.sh, importable (ruff checks it, a test runs it):

    python -m scripts.smoke_data write DIR     # DIR/train and DIR/held-out: Fashion-MNIST sandals vs sneakers
    python -m scripts.smoke_data check FILE    # `munet --json predict` output: better than chance, or exit 1
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def write_shoes(root: Path, per_class: int = 40, held_out: int = 8) -> None:
    """A small real task: Fashion-MNIST sandals vs sneakers, `per_class` images each to learn from,
    `held_out` more to predict, as PNG files in ImageFolder trees."""
    from munet_server.data import offline
    from munet_server.data.images import encode_png

    data = offline.split_fashion_mnist(((5, 7),))[0]
    rng = np.random.default_rng(0)
    for label, name in enumerate(["sandal", "sneaker"]):
        idx = rng.permutation(np.nonzero(data.labels == label)[0])[: per_class + held_out]
        for split, part in (("train", idx[:per_class]), ("held-out", idx[per_class:])):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in part:
                (root / split / name / f"{i}.png").write_bytes(encode_png(data.images[i]))


def held_out_right(predictions: list[dict]) -> int:
    """How many `munet --json predict` rows name their image's folder as the top label."""
    return sum(r["image"].split("/")[-2] == r["labels"][0]["name"] for r in predictions)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "write":
        write_shoes(Path(argv[1]))
        return 0
    if len(argv) == 2 and argv[0] == "check":
        rows = json.loads(Path(argv[1]).read_text())
        right = held_out_right(rows)
        print(f"held-out: {right}/{len(rows)} right")
        return 0 if right > len(rows) // 2 else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
