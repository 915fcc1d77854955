"""`munet`: the command line for munet-server. Tables for people, `--json` for scripts.

munet add-task flowers data/flowers        # ImageFolder tree; progress bars for upload and search
munet predict flowers rose.jpg tulip.png --top-k 3
munet predict flowers,colours rose.jpg      # several tasks, one pass through their shared layers
munet tasks | munet describe flowers | munet delete flowers
munet snapshot system.tar | munet restore system.tar
munet ops | munet wait OP | munet cancel OP
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from munet_client.client import MunetClient
from munet_client.errors import MunetError
from munet_client.images import ImageFolder
from munet_client.types import Operation, TaskInfo, to_dict
from munet_proto.v1.munet_pb2 import SearchBudget

BUDGET_FIELDS = tuple(f.name for f in SearchBudget.DESCRIPTOR.fields)

console = Console()
err = Console(stderr=True)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _fmt_params(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


# ---- commands --------------------------------------------------------------------------------------
def cmd_health(c: MunetClient, a: argparse.Namespace) -> int:
    status = c.health(a.task or "")
    _print_json({"status": status}) if a.json else console.print(status)
    return 0 if status == "SERVING" else 1


def cmd_system(c: MunetClient, a: argparse.Namespace) -> int:
    info = c.system()
    if a.json:
        _print_json(to_dict(info))
        return 0
    t = Table(show_header=False, title=f"munet-server {info.version} at {c.target}")
    for k, v in to_dict(info).items():
        t.add_row(k, _fmt_params(v) if k.endswith("params") else str(v))
    console.print(t)
    return 0


def cmd_add_task(c: MunetClient, a: argparse.Namespace) -> int:
    tree = ImageFolder.scan(a.folder)
    budget = {k: getattr(a, k) for k in BUDGET_FIELDS if getattr(a, k)}
    quiet = a.json or a.quiet
    if not quiet:
        err.print(
            f"uploading {len(tree.files)} images in {len(tree.class_names)} classes: {', '.join(tree.class_names)}"
        )
    bar = tqdm(total=tree.num_bytes, unit="B", unit_scale=True, desc="upload", disable=quiet, file=sys.stderr)

    def on_upload(sent: int, total: int) -> None:
        bar.update(sent - bar.n)

    op = c.add_task(
        a.name,
        tree.class_names,
        tree.examples(),
        budget=budget,
        scale_factor=a.scale_factor,
        validation_fraction=a.validation_fraction,
        seed=a.seed,
        policy=a.policy,
        on_upload=on_upload,
        total_bytes=tree.num_bytes,
    )
    bar.close()
    if a.no_wait:
        _print_json(to_dict(op)) if a.json else console.print(
            f"operation [bold]{op.name}[/] queued; `munet wait {op.name}`"
        )
        return 0
    final = _follow(c, op, quiet)
    return _report_final(c, final, a.json)


def _follow(c: MunetClient, op: Operation, quiet: bool) -> Operation:
    """A bar over the search's time budget: the search stops when its clock does."""
    bar = tqdm(
        total=None,
        desc="learn",
        unit="s",
        disable=quiet,
        file=sys.stderr,
        bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} s{postfix}",
    )
    last = op
    try:
        for last in c.watch(op.name):
            p = last.progress
            if p.budget_seconds and bar.total != round(p.budget_seconds):
                bar.total = round(p.budget_seconds)
            bar.n = min(p.elapsed_seconds, bar.total or p.elapsed_seconds)
            if p.candidates_done:
                bar.set_postfix_str(
                    f"{p.phase}, gen {p.generation}, {p.candidates_done} candidates, "
                    f"best acc {p.best_validation_accuracy:.3f}, +{_fmt_params(p.params_added)} params"
                )
            else:  # queued, or preparing the data: no numbers to show yet
                bar.set_postfix_str(p.phase or last.state.lower())
            bar.refresh()
    except KeyboardInterrupt:
        bar.close()
        err.print(f"\nstopped watching; the operation goes on. `munet cancel {op.name}` stops it.")
        raise SystemExit(130) from None
    bar.close()
    return last if last.done else c.wait(op.name)


def _report_final(c: MunetClient, op: Operation, as_json: bool) -> int:
    if op.state != "SUCCEEDED":
        if as_json:
            _print_json(to_dict(op))
        else:
            err.print(f"[red]{op.state}[/]: {op.error_code} {op.error}")
        return 1
    info = c.describe_task(op.task)
    if as_json:
        _print_json(to_dict(info))
    else:
        _describe(info)
    return 0


def cmd_predict(c: MunetClient, a: argparse.Namespace) -> int:
    files = [Path(p) for p in a.images]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise MunetError("INVALID_ARGUMENT", f"no such image file: {', '.join(missing[:5])}")
    tasks = [t.strip() for t in a.task.split(",") if t.strip()] or [a.task]
    if len(tasks) > 1:
        return _predict_many(c, tasks, files, a)
    preds = c.predict(tasks[0], files, top_k=a.top_k)
    if a.json:
        _print_json([{"image": str(f), "labels": to_dict(p)} for f, p in zip(files, preds)])
        return 0
    t = Table("image", "label", "probability", *(["others"] if a.top_k > 1 else []))
    for f, p in zip(files, preds):
        others = ", ".join(f"{lb.name} {lb.probability:.2f}" for lb in p[1:])
        t.add_row(str(f), p[0].name, f"{p[0].probability:.3f}", *([others] if a.top_k > 1 else []))
    console.print(t)
    return 0


def _predict_many(c: MunetClient, tasks: list[str], files: list[Path], a: argparse.Namespace) -> int:
    """One call for several tasks: the layers their paths share run once per image."""
    preds = c.predict_many(tasks, files, top_k=a.top_k)
    if a.json:
        rows = [
            {"image": str(f), "tasks": {t: to_dict(preds[t][i]) for t in tasks}} for i, f in enumerate(files)
        ]
        _print_json(rows)
        return 0
    t = Table("image", *tasks)
    for i, f in enumerate(files):
        t.add_row(
            str(f), *(", ".join(f"{lb.name} {lb.probability:.2f}" for lb in preds[k][i]) for k in tasks)
        )
    console.print(t)
    return 0


def cmd_tasks(c: MunetClient, a: argparse.Namespace) -> int:
    tasks = c.list_tasks()
    if a.json:
        _print_json(to_dict(tasks))
        return 0
    t = Table(
        "task", "classes", "val acc", "probe", "gain", "params added", "params accounted", "reused layers",
        "search s",
    )  # fmt: skip
    for i in tasks:
        shared = sum(1 for p in i.path if p.shared)
        acc = f"{i.validation_accuracy:.3f}" + (" [yellow](near chance)[/]" if i.near_chance else "")
        t.add_row(
            i.name if not i.state.startswith("DAMAGED") else f"{i.name} [red]({i.state.lower()})[/]",
            str(len(i.class_names)),
            acc,
            f"{i.probe_validation_accuracy:.3f}",
            f"{i.gain_over_probe:+.3f}",
            _fmt_params(i.params_added),
            _fmt_params(i.params_accounted),
            f"{shared}/{len(i.path)}",
            f"{i.search_seconds:.0f}",
        )
    console.print(t if tasks else "no tasks yet: `munet add-task NAME FOLDER`")
    return 0


def _describe(info: TaskInfo) -> None:
    console.print(
        f"[bold]{info.name}[/]  {len(info.class_names)} classes: {', '.join(info.class_names[:10])}"
        f"{' ...' if len(info.class_names) > 10 else ''}"
    )
    console.print(
        f"validation accuracy {info.validation_accuracy:.3f} on {info.holdout_size} held-out images "
        f"(linear probe {info.probe_validation_accuracy:.3f}, gain {info.gain_over_probe:+.3f}; "
        f"chance {info.chance_accuracy:.3f})  image size {info.image_size}  score {info.score:.3f}"
    )
    console.print(
        f"params added {info.params_added:,}  accounted {info.params_accounted:,.0f}  "
        f"path total {info.params_total:,}  learned in {info.search_seconds:.0f} s"
    )
    _warn_if_near_chance(info)
    t = Table("slot", "component", "params", "owner", "shared with", title="path")
    for p in info.path:
        mark = "[green]new[/]" if p.created_by_task else p.owner
        t.add_row(p.name, p.id[:12], _fmt_params(p.num_params), mark, ", ".join(p.shared_with) or "-")
    console.print(t)
    hp = {k: v for k, v in info.hparams.items() if not k.startswith("_")}
    console.print("hyperparameters: " + ", ".join(f"{k}={v}" for k, v in hp.items()))


def _warn_if_near_chance(info: TaskInfo) -> None:
    if info.near_chance:
        err.print(
            f"[yellow]warning[/]: {info.name}'s validation accuracy {info.validation_accuracy:.3f} is near "
            f"chance ({info.chance_accuracy:.3f}): the images may not show what tells the classes apart, "
            "or there are too few of them; add more images per class"
        )


def cmd_describe(c: MunetClient, a: argparse.Namespace) -> int:
    info = c.describe_task(a.task)
    _print_json(to_dict(info)) if a.json else _describe(info)
    return 0


def cmd_delete(c: MunetClient, a: argparse.Namespace) -> int:
    freed, params = c.delete_task(a.task)
    if a.json:
        _print_json({"freed_components": freed, "params_freed": params})
    else:
        console.print(f"deleted {a.task}: freed {len(freed)} components ({params:,} params)")
    return 0


def _bytes_bar(desc: str, quiet: bool, total: int = 0) -> tuple[tqdm, Callable[[int, int], None]]:
    bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=desc, disable=quiet, file=sys.stderr)
    return bar, lambda done, _total: bar.update(done - bar.n)


def cmd_snapshot(c: MunetClient, a: argparse.Namespace) -> int:
    if a.server_dir:
        info = c.snapshot(server_dir=a.server_dir)
    else:
        if not a.file:
            raise MunetError("INVALID_ARGUMENT", "give a local FILE for the archive, or --server-dir DIR")
        bar, cb = _bytes_bar("snapshot", a.json)
        info = c.snapshot(a.file, on_chunk=cb)
        bar.close()
    _print_json(to_dict(info)) if a.json else console.print(
        f"snapshot written: {info.path} ({info.num_bytes:,} bytes)"
    )
    return 0


def cmd_restore(c: MunetClient, a: argparse.Namespace) -> int:
    if a.server_dir:
        info = c.restore(server_dir=a.server_dir)
    else:
        if not a.file or not Path(a.file).is_file():
            raise MunetError("INVALID_ARGUMENT", f"snapshot archive {a.file!r} does not exist")
        bar, cb = _bytes_bar("restore", a.json, Path(a.file).stat().st_size)
        info = c.restore(a.file, on_chunk=cb)
        bar.close()
    _print_json(to_dict(info)) if a.json else console.print(
        f"restored {info.num_tasks} tasks: {', '.join(info.tasks)}"
    )
    return 0


def cmd_ops(c: MunetClient, a: argparse.Namespace) -> int:
    ops = c.operations(a.task or "")
    if a.json:
        _print_json(to_dict(ops))
        return 0
    t = Table("operation", "task", "state", "progress", "best acc", "error")
    for o in ops:
        p = o.progress
        t.add_row(
            o.name,
            o.task,
            o.state,
            f"{p.phase} {p.elapsed_seconds:.0f}/{p.budget_seconds:.0f} s",
            f"{p.best_validation_accuracy:.3f}",
            o.error,
        )
    console.print(t)
    return 0


def cmd_wait(c: MunetClient, a: argparse.Namespace) -> int:
    op = _follow(c, c.operation(a.operation), a.json) if not a.timeout_s else c.wait(a.operation, a.timeout_s)
    if a.json:
        _print_json(to_dict(op))
    else:
        console.print(f"{op.name}: {op.state} {op.error}")
    return 0 if op.state == "SUCCEEDED" else 1


def cmd_cancel(c: MunetClient, a: argparse.Namespace) -> int:
    op = c.cancel(a.operation)
    _print_json(to_dict(op)) if a.json else console.print(f"{op.name}: {op.state}")
    return 0


# ---- parser --------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="munet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--target",
        default=os.environ.get("MUNET_TARGET", "127.0.0.1:50051"),
        help="server host:port [env MUNET_TARGET]",
    )
    p.add_argument("--token", default=None, help="admin or predict token [env MUNET_TOKEN]")
    p.add_argument(
        "--tls-ca",
        type=Path,
        default=os.environ.get("MUNET_TLS_CA") or None,
        help="CA certificate: use TLS [env MUNET_TLS_CA]",
    )
    p.add_argument(
        "--tls-server-name",
        default=os.environ.get("MUNET_TLS_SERVER_NAME", ""),
        help="the name in the server's certificate, when not the target's host [env MUNET_TLS_SERVER_NAME]",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("health", cmd_health, "is the server (or one task) serving?")
    sp.add_argument("task", nargs="?")
    add("system", cmd_system, "root model, device and sizes")
    sp = add("add-task", cmd_add_task, "upload an ImageFolder tree and evolve a path for it")
    sp.add_argument("name")
    sp.add_argument("folder", type=Path, help="one sub-folder per class, images inside")
    sp.add_argument("--seconds", type=float, help="wall-clock budget of the search (server default: 90)")
    sp.add_argument("--generations", type=int, help="cap on evolved generations; 0: the linear probe only")
    sp.add_argument("--candidates-per-generation", type=int, help="server default: 4")
    sp.add_argument("--epochs", type=int, help="epochs per trained candidate (server default: 10)")
    sp.add_argument("--views", type=int, help="cached views per image: clean, mirrored, crops (default: 2)")
    sp.add_argument("--batch-size", type=int, help="server default: 32")
    sp.add_argument(
        "--scale-factor", type=float, help="s in (0, 1]: lower favours reusing layers (default: 0.95)"
    )
    sp.add_argument(
        "--validation-fraction", type=float, help="images held out to compare candidates (default: 0.3 / 0.2)"
    )
    sp.add_argument("--seed", type=int, help="the search's seed (default: 0)")
    sp.add_argument(
        "--policy", default="", choices=("", "munet", "finetune", "linear_probe", "adapters"),
        help="munet (default), or a baseline run through the same machinery",
    )  # fmt: skip
    sp.add_argument("--no-wait", action="store_true", help="return once the upload is stored")
    sp.add_argument("-q", "--quiet", action="store_true")
    sp = add("predict", cmd_predict, "classify image files with a task (or several: a,b,c)")
    sp.add_argument("task", help="a task, or several joined by commas: one call, shared layers run once")
    sp.add_argument("images", nargs="+")
    sp.add_argument("--top-k", type=int, default=1)
    add("tasks", cmd_tasks, "list tasks with accuracy and parameters")
    sp = add("describe", cmd_describe, "a task's path, sharing and hyperparameters")
    sp.add_argument("task")
    sp = add("delete", cmd_delete, "delete a task and free the components only it used")
    sp.add_argument("task")
    sp = add("snapshot", cmd_snapshot, "copy the whole system to a local archive (or a server dir)")
    sp.add_argument("file", nargs="?")
    sp.add_argument("--server-dir", default="")
    sp = add("restore", cmd_restore, "replace the whole system with a snapshot")
    sp.add_argument("file", nargs="?")
    sp.add_argument("--server-dir", default="")
    sp = add("ops", cmd_ops, "list operations")
    sp.add_argument("--task", default="")
    sp = add("wait", cmd_wait, "follow an operation until it is done")
    sp.add_argument("operation")
    sp.add_argument("--timeout-s", type=float, default=0.0)
    sp = add("cancel", cmd_cancel, "cancel an operation (the system stays as it was)")
    sp.add_argument("operation")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with MunetClient(
            args.target,
            token=args.token,
            timeout=args.timeout,
            tls_ca=args.tls_ca,
            tls_server_name=args.tls_server_name,
        ) as c:
            return args.fn(c, args)
    except MunetError as e:
        err.print(f"[red]error[/] {e.code}: {e.message}")
        return 1
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        err.print(f"[red]error[/]: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
