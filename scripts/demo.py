"""The main job, end to end on real offline data, through the real server and client.

Starts `munet-server` on the embedded default (offline ImageNet-pretrained EfficientNet-Lite0 root)
with a fresh store, adds three tasks built from data that ships inside packages, shows their
accuracy and the parameters each added, predicts held-out images (also every task at once with
PredictMany), takes a snapshot, restores it into a second fresh server and checks that predictions
there are identical.

Run: `bash scripts/demo.sh` (sets everything up first).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from munet_client import MunetClient
from munet_server.data import offline
from munet_server.data.images import encode_png

console = Console()
HELD_OUT = 50  # test images per class, never uploaded
BUDGET = {"seconds": 60}  # per task; the server's default is 90 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path, port: int) -> subprocess.Popen:
    # Idle improvement off: the demo compares a snapshot's predictions with a restored copy's.
    cmd = [sys.executable, "-m", "munet_server", "--store", str(store), "--port", str(port), "--no-idle-improvement"]
    with open(store.parent / f"server-{port}.log", "w") as log:  # the child keeps its own copy
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    target = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early; see {store.parent}/server-{port}.log")
        try:
            with MunetClient(target, timeout=2) as c:
                c.health()
                return proc
        except Exception:
            time.sleep(0.5)
    raise SystemExit("server did not become healthy in 180 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def tasks(per_class: int, seed: int) -> list[tuple[str, offline.RawImages, offline.RawImages]]:
    """Three real tasks: two Split-Fashion-MNIST pairs (if installed), MNIST-5k digits, animal shapes."""
    out = []
    if offline.available().get("fashion_mnist"):
        pairs = offline.split_fashion_mnist(
            pairs=((0, 2), (7, 9))
        )  # T-shirt vs pullover, sneaker vs ankle boot
        for name, raw in zip(("fmnist-tops", "fmnist-shoes"), pairs):
            out.append((name, raw))
    out.append(("mnist-digits", offline.mnist5k()))
    if len(out) < 3:
        out.append(("animal-shapes", offline.animal_shapes()))
    result = []
    for name, raw in out[:3]:
        sub = offline.sample_per_class(raw, per_class + HELD_OUT, seed)
        train, test = offline.train_test_split(
            sub, test_fraction=HELD_OUT / (per_class + HELD_OUT), seed=seed
        )
        result.append((name, train, test))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=60, help="training images per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="keep stores and logs here")
    ap.add_argument("--port", type=int, default=0, help="the demo server's port (default: a free one)")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="munet-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]muNet server demo")
    console.print(f"work dir: {work}")
    port = args.port or free_port()
    proc = start_server(work / "store", port)
    target = f"127.0.0.1:{port}"
    try:
        with MunetClient(target, timeout=600) as client:
            sysinfo = client.system()
            console.print(
                f"root: [bold]{sysinfo.root_model}[/] ({sysinfo.root_params:,} params) on {sysinfo.device}"
            )
            stream = tasks(args.per_class, args.seed)
            tests: dict[str, offline.RawImages] = {}
            for name, train, test in stream:
                folder = offline.write_image_folder(train, work / "data" / name)
                console.print(
                    f"\n[bold]add-task {name}[/]: {len(train.labels)} images, classes {train.class_names}"
                )
                for c, cls in enumerate(train.class_names):
                    if (folder_name := offline.safe_dirname(cls, c)) != cls:
                        console.print(f"  class {cls!r} is the folder {folder_name!r} (a folder name can't hold it); "
                                      "the task answers with the folder's name")  # fmt: skip
                op = client.add_task_from_folder(name, folder, budget=BUDGET, seed=args.seed)
                published = 0
                for update in client.watch(op.name):
                    p = update.progress
                    if p.published > published:  # a version serves: the first within seconds, then better ones
                        published = p.published
                        when = f"{p.first_served_seconds:.1f} s after the upload" if published == 1 else f"at {p.elapsed_seconds:.0f} s"
                        console.print(f"  serving version {p.serving_version} {when}: {p.serving_kind}, "
                                      f"validation accuracy {p.serving_accuracy:.3f}")  # fmt: skip
                final = client.wait(op.name)
                if final.state != "SUCCEEDED":
                    raise SystemExit(f"{name}: {final.state} {final.error}")
                console.print(f"  {final.result}")
                tests[name] = test
            show_tasks(client)
            preds = predict_all(client, tests)
            ask_every_task(client, tests)
            snap = work / "system.munet.tar"
            client.snapshot(dest_file=snap)
            console.print(f"\nsnapshot: {snap} ({snap.stat().st_size / 1e6:.1f} MB)")
    finally:
        stop_server(proc)

    console.rule("restore into a fresh server")
    port2 = free_port()
    proc2 = start_server(work / "store-restored", port2)
    try:
        with MunetClient(f"127.0.0.1:{port2}", timeout=600) as client:
            client.restore(src_file=snap)
            again = predict_all(client, tests, quiet=True)
            same = all(preds[t] == again[t] for t in preds)
            console.print(
                f"restored {len(client.list_tasks())} tasks; predictions identical: [bold]{same}[/]"
            )
            if not same:
                raise SystemExit("restored predictions differ")
    finally:
        stop_server(proc2)
    console.rule("[green]demo done")


def show_tasks(client: MunetClient) -> None:
    table = Table(title="tasks in the system")
    for col in ("task", "serving", "classes", "val acc", "gain over probe", "params added", "params accounted",
                "shared components"):  # fmt: skip
        table.add_column(col)
    for t in client.list_tasks():
        info = client.describe_task(t.name)
        shared = sum(1 for c in info.path if c.shared)
        table.add_row(
            info.name,
            f"v{info.served_version} ({info.kind})",
            str(len(info.class_names)),
            f"{info.validation_accuracy:.3f}",
            f"{100 * info.gain_over_probe:+.1f} pt",
            f"{info.params_added:,}",
            f"{info.params_accounted:,.0f}",
            f"{shared}/{len(info.path)}",
        )
    console.print(table)


def ask_every_task(client: MunetClient, tests: dict) -> None:
    """PredictMany: three images, every task, one call; layers the paths share run once."""
    names = list(tests)
    images = [encode_png(tests[n].images[0]) for n in names]
    answers = client.predict_many(names, images)
    table = Table(title="one PredictMany call: each image through every task")
    table.add_column("image from")
    for n in names:
        table.add_column(n)
    for i, source in enumerate(names):
        table.add_row(source, *(f"{answers[n][i][0].name} {answers[n][i][0].probability:.2f}" for n in names))
    console.print(table)


def predict_all(client: MunetClient, tests: dict, quiet: bool = False) -> dict[str, list[str]]:
    out = {}
    for name, test in tests.items():
        images = [encode_png(img) for img in test.images]
        preds = client.predict(name, images, top_k=1)
        labels = [p[0].name for p in preds]
        # Class names come back as the ImageFolder folder names (`T-shirt/top` -> `T-shirt_top`).
        truth = [offline.safe_dirname(test.class_names[y], int(y)) for y in test.labels]
        acc = sum(lbl == t for lbl, t in zip(labels, truth)) / len(labels)
        out[name] = labels
        if not quiet:
            console.print(f"predict {name}: {len(labels)} held-out images, accuracy {acc:.3f}")
    return out


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
