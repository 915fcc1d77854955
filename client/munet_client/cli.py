"""`munet`: the command line for munet-server. Tables for people, `--json` for scripts.

munet add-task flowers data/flowers        # ImageFolder tree; progress bars for upload and search
munet predict flowers rose.jpg tulip.png --top-k 3
munet predict flowers,colours rose.jpg      # several tasks, one pass through their shared layers
munet predict flowers photos/ --csv out.csv # a whole folder; a bad image is reported by name
munet eval flowers test/                    # accuracy, per-class precision/recall, confusion matrix
munet export flowers model/ | munet verify  # standalone ONNX; outputs still bit-identical?
munet tasks | munet describe flowers | munet delete flowers
munet improve flowers                       # search again with what later tasks added: a new version if better
munet versions flowers | munet set-version flowers 1 | munet delete-version flowers 2
munet predict flowers@1 rose.jpg            # a stored version, pinned
munet snapshot system.tar | munet restore system.tar
munet ops | munet wait OP | munet cancel OP
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from munet_client.client import MunetClient
from munet_client.errors import MunetError
from munet_client.folders import (
    CHUNK,
    FilePrediction,
    evaluate_folder,
    image_files,
    plot_confusion,
    predict_files,
)
from munet_client.graph import system_svg
from munet_client.images import IMAGE_SUFFIXES, ImageFolder
from munet_client.progress import progress
from munet_client.types import Operation, TaskInfo, to_dict
from munet_proto.v1.munet_pb2 import SearchBudget

BUDGET_FIELDS = tuple(f.name for f in SearchBudget.DESCRIPTOR.fields)

console = Console(soft_wrap=True)  # a message is one line, however long (logs and grep)
err = Console(stderr=True, soft_wrap=True)


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
    budget = {k: getattr(a, k) for k in BUDGET_FIELDS if getattr(a, k) is not None}
    quiet = a.json or a.quiet
    if not quiet:
        if tree.split:
            err.print(f"{a.folder} holds splits: learning from {tree.root} (the other splits are not uploaded)")
        err.print(
            f"uploading {len(tree.files)} images in {len(tree.class_names)} classes: {', '.join(tree.class_names)}"
        )
        if tree.skipped:
            shown = ", ".join(str(p.relative_to(tree.root)) for p in tree.skipped[:3])
            more = f" and {len(tree.skipped) - 3} more" if len(tree.skipped) > 3 else ""
            err.print(f"skipping {len(tree.skipped)} files that are not images ({shown}{more})")
    bar = progress("upload", tree.num_bytes, "B", disable=quiet, unit_scale=True)

    def on_upload(sent: int, total: int) -> None:
        bar.update(sent - bar.n)

    try:
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
    except MunetError as e:
        bar.leave = False  # a failed upload leaves no bar behind that looks complete
        bar.close()
        raise MunetError(e.code, _name_files(e.message, tree)) from None
    bar.close()
    if a.no_wait:
        _print_json(to_dict(op)) if a.json else console.print(
            f"operation [bold]{op.name}[/] queued; `munet wait {op.name}`"
        )
        return 0
    final = _follow(c, op, quiet)
    return _report_final(c, final, a.json)


def _name_files(message: str, tree: ImageFolder) -> str:
    """The server numbers examples in upload order; a person wants the file: `example 80` -> its path."""

    def name(m: re.Match[str]) -> str:
        i = int(m.group(1))
        return f"{tree.files[i][0]} (example {i})" if 0 <= i < len(tree.files) else m.group(0)

    return re.sub(r"\bexample (\d+)", name, message)


def _follow(c: MunetClient, op: Operation, quiet: bool) -> Operation:
    """A bar over the search's time budget: the search stops when its clock does."""
    bar = progress("learn", None, "s", disable=quiet, bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} s{postfix}")
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
        bar.leave = False
        bar.close()
        err.print(f"stopped watching; the operation goes on. `munet cancel {op.name}` stops it.")
        raise SystemExit(130) from None
    except MunetError as e:
        bar.leave = False
        bar.close()
        if e.code != "UNAVAILABLE":
            raise
        raise MunetError(
            e.code,
            f"lost the server while following operation {op.name}; it is kept and resumes from its last "
            f"generation when the server is back: `munet wait {op.name}`",
        ) from None
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
    files = image_files(a.images)
    if not files:
        raise ValueError(f"no images in {', '.join(a.images)} ({', '.join(sorted(IMAGE_SUFFIXES))})")
    tasks = [t.strip() for t in a.task.split(",") if t.strip()] or [a.task]
    if len(tasks) > 1:
        return _predict_many(c, tasks, files, a)
    bar = progress("predict", len(files), "img", disable=a.json or len(files) <= CHUNK)
    preds = predict_files(c, tasks[0], files, top_k=a.top_k, on_progress=lambda n: bar.update(n - bar.n))
    bar.close()
    failed = [p for p in preds if p.error]
    if a.csv:
        _write_csv(a.csv, preds, a.top_k)
    if a.json:
        _print_json([{"image": str(p.path), "labels": to_dict(p.labels), "error": p.error} for p in preds])
    elif a.csv:
        console.print(f"{len(preds) - len(failed)} of {len(preds)} images classified -> {a.csv}")
    else:
        t = Table("image", "label", "probability", *(["others"] if a.top_k > 1 else []))
        for p in preds:
            if p.error:
                t.add_row(str(p.path), f"[red]error[/] {p.error}", "", *([""] if a.top_k > 1 else []))
                continue
            others = ", ".join(f"{lb.name} {lb.probability:.2f}" for lb in p.labels[1:])
            t.add_row(str(p.path), p.labels[0].name, f"{p.labels[0].probability:.3f}", *([others] if a.top_k > 1 else []))
        console.print(t)
    for p in failed:
        err.print(f"[red]error[/] {p.path}: {p.error}", markup=True, highlight=False)
    return 1 if failed else 0


def _write_csv(path: Path, preds: list[FilePrediction], top_k: int) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        head = ["image", "label", "probability"]
        for k in range(2, top_k + 1):
            head += [f"label_{k}", f"probability_{k}"]
        w.writerow([*head, "error"])
        for p in preds:
            cells: list[Any] = [str(p.path)]
            for k in range(top_k):
                lb = p.labels[k] if k < len(p.labels) else None
                cells += [lb.name, f"{lb.probability:.6f}"] if lb else ["", ""]
            w.writerow([*cells, p.error])


def cmd_eval(c: MunetClient, a: argparse.Namespace) -> int:
    ev = evaluate_folder(c, a.task, a.folder)
    if a.plot:
        plot_confusion(ev, a.plot, f"{a.task} on {a.folder}: accuracy {ev.accuracy:.3f} ({ev.total} images)")
    names = ev.class_names
    if a.json:
        _print_json(
            {
                "task": a.task,
                "accuracy": ev.accuracy,
                "images": ev.total,
                "classes": {
                    n: {"precision": ev.precision(k), "recall": ev.recall(k), "support": ev.support(k)}
                    for k, n in enumerate(names)
                },
                "confusion": ev.confusion,
                "errors": {str(p.path): p.error for p in ev.errors},
            }
        )
    else:
        console.print(f"[bold]{a.task}[/] on {a.folder}: accuracy [bold]{ev.accuracy:.3f}[/] over {ev.total} images")
        t = Table("class", "precision", "recall", "images")
        for k, n in enumerate(names):
            t.add_row(n, f"{ev.precision(k):.3f}", f"{ev.recall(k):.3f}", str(ev.support(k)))
        console.print(t)
        cm = Table("true \\ predicted", *names, title="confusion matrix")
        for k, n in enumerate(names):
            cm.add_row(n, *(f"[bold]{v}[/]" if j == k else str(v) for j, v in enumerate(ev.confusion[k])))
        console.print(cm)
        if a.plot:
            console.print(f"confusion matrix plotted to {a.plot}")
    for p in ev.errors:
        err.print(f"[red]error[/] {p.path}: {p.error}", highlight=False)
    return 1 if ev.errors else 0


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
        "task", "version", "classes", "val acc", "probe", "gain", "params added", "params accounted",
        "reused layers", "search s",
    )  # fmt: skip
    for i in tasks:
        shared = sum(1 for p in i.path if p.shared)
        acc = f"{i.validation_accuracy:.3f}" + (" [yellow](near chance)[/]" if i.near_chance else "")
        t.add_row(
            i.name if not i.state.startswith("DAMAGED") else f"{i.name} [red]({i.state.lower()})[/]",
            str(i.served_version),
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
    served = "served" if info.version == info.served_version else f"not served: version {info.served_version} is"
    console.print(
        f"[bold]{info.name}[/] version {info.version} ({served})  {len(info.class_names)} classes: "
        f"{', '.join(info.class_names[:10])}{' ...' if len(info.class_names) > 10 else ''}"
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


def cmd_improve(c: MunetClient, a: argparse.Namespace) -> int:
    """One task, or every task in turn (muNet's outer loop: each visit can use what the others added)."""
    if bool(a.task) == a.all:
        raise ValueError("name a TASK to improve, or give --all")
    names = [a.task] if a.task else [t.name for t in c.list_tasks() if not t.state.startswith("DAMAGED")]
    budget = {k: getattr(a, k) for k in BUDGET_FIELDS if getattr(a, k, None) is not None}
    quiet = a.json or a.quiet
    finals = []
    for name in names:
        op = c.improve_task(name, budget=budget, seed=a.seed)
        if a.no_wait:
            finals.append(op)
            continue
        if not quiet:
            err.print(f"improving {name} (operation {op.name})")
        final = _follow(c, op, quiet)
        finals.append(final)
        if not a.json:
            if final.state == "SUCCEEDED":
                console.print(f"{name}: {final.result}")
            else:
                err.print(f"[red]{name}: {final.state}[/] {final.error_code} {final.error}")
    if a.json:
        _print_json(to_dict(finals))
    elif a.no_wait:
        for op in finals:
            console.print(f"{op.task}: operation [bold]{op.name}[/] queued; `munet wait {op.name}`")
    return 0 if all(o.state in ("SUCCEEDED", "QUEUED", "RUNNING") for o in finals) else 1


def cmd_versions(c: MunetClient, a: argparse.Namespace) -> int:
    info = c.describe_task(a.task)
    if a.json:
        _print_json(to_dict(info.versions))
        return 0
    t = Table("version", "served", "val acc", "kind", "params added", "created", "improved from", "golden digest",
              title=f"{info.name}: versions")  # fmt: skip
    for v in info.versions:
        t.add_row(
            str(v.version),
            "[green]yes[/]" if v.served else "",
            f"{v.validation_accuracy:.3f}",
            v.kind,
            _fmt_params(v.params_added),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(v.created_at)),
            str(v.improved_from or "-"),
            v.golden_digest[:16],
        )
    console.print(t)
    return 0


def cmd_set_version(c: MunetClient, a: argparse.Namespace) -> int:
    info = c.set_task_version(a.task, a.version)
    if a.json:
        _print_json(to_dict(info))
    else:
        console.print(f"{info.name} now serves version {info.served_version} "
                      f"(validation accuracy {info.validation_accuracy:.3f})")  # fmt: skip
    return 0


def cmd_delete_version(c: MunetClient, a: argparse.Namespace) -> int:
    freed, params = c.delete_task_version(a.task, a.version)
    if a.json:
        _print_json({"freed_components": freed, "params_freed": params})
    else:
        console.print(f"deleted version {a.version} of {a.task}: freed {len(freed)} components ({params:,} params)")
    return 0


def cmd_delete(c: MunetClient, a: argparse.Namespace) -> int:
    freed, params = c.delete_task(a.task)
    if a.json:
        _print_json({"freed_components": freed, "params_freed": params})
    else:
        console.print(f"deleted {a.task}: freed {len(freed)} components ({params:,} params)")
    return 0


def cmd_graph(c: MunetClient, a: argparse.Namespace) -> int:
    tasks = [t for t in c.list_tasks() if t.state != "DAMAGED"]
    svg = system_svg(tasks, f"{c.system().root_model}: {len(tasks)} tasks")
    if a.out is None:
        sys.stdout.write(svg + "\n")
        return 0
    a.out.write_text(svg)
    shared = len({p.id for t in tasks for p in t.path if p.num_shared_with > 0})
    console.print(f"wrote {a.out}: {len(tasks)} tasks, {shared} layers used by more than one task or the root")
    return 0


def cmd_verify(c: MunetClient, a: argparse.Namespace) -> int:
    names = [a.task] if a.task else [t.name for t in c.list_tasks() if t.state != "DAMAGED"]
    results = [c.verify_task(n) for n in names]
    if a.json:
        _print_json(to_dict(results))
    else:
        t = Table("task", "outputs", "probe images", "golden digest (commit)", "digest (now)")
        for r in results:
            verdict = "[green]bit-identical[/]" if r.identical else "[red]CHANGED[/]"
            t.add_row(r.name, verdict, str(r.probe_images), r.golden_digest[:16], r.digest[:16])
        console.print(t)
        if not results:
            console.print("no tasks to verify")
    return 0 if all(r.identical for r in results) else 1


def cmd_export(c: MunetClient, a: argparse.Namespace) -> int:
    sizes = c.export_task(a.task, a.out, overwrite=a.overwrite)
    if a.json:
        _print_json({"task": a.task, "dir": str(a.out), "files": sizes})
    else:
        files = ", ".join(f"{f} ({n:,} bytes)" for f, n in sizes.items())
        console.print(f"exported {a.task} to {a.out}: {files}")
        console.print("  run it with onnxruntime (model.onnx: input 'image', RGB in [0, 1] at the size in its")
        console.print("  metadata), or in PyTorch: munet_client.load_exported(DIR) (needs torch and timm)")
    return 0


def _bytes_bar(desc: str, quiet: bool, total: int = 0) -> tuple[Any, Callable[[int, int], None]]:
    bar = progress(desc, total or None, "B", disable=quiet, unit_scale=True)
    return bar, lambda done, _total: bar.update(done - bar.n)


def cmd_snapshot(c: MunetClient, a: argparse.Namespace) -> int:
    if a.server_dir:
        info = c.snapshot(server_dir=a.server_dir)
    else:
        if not a.file:
            raise ValueError("give a local FILE for the archive, or --server-dir DIR on the server")
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
        if not a.file:
            raise ValueError("give the snapshot archive to restore (FILE), or --server-dir DIR on the server")
        if not Path(a.file).is_file():
            raise FileNotFoundError(f"snapshot archive {a.file} does not exist")
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
    t = Table("operation", "kind", "task", "state", "progress", "best acc", "result or error")
    for o in ops:
        p = o.progress
        t.add_row(
            o.name,
            o.kind,
            o.task,
            o.state,
            f"{p.phase} {p.elapsed_seconds:.0f}/{p.budget_seconds:.0f} s",
            f"{p.best_validation_accuracy:.3f}",
            o.result or o.error,
        )
    console.print(t)
    return 0


def cmd_wait(c: MunetClient, a: argparse.Namespace) -> int:
    op = _follow(c, c.operation(a.operation), a.json) if not a.timeout_s else c.wait(a.operation, a.timeout_s)
    if a.json:
        _print_json(to_dict(op))
    else:
        console.print(f"{op.name}: {op.state} {op.result or op.error}")
    return 0 if op.state == "SUCCEEDED" else 1


def cmd_cancel(c: MunetClient, a: argparse.Namespace) -> int:
    """Ask, then wait (briefly) until the search has stopped, so that what is printed is the outcome."""
    op = c.cancel(a.operation)
    if not op.done:
        op = c.wait(op.name, timeout=30)
    if a.json:
        _print_json(to_dict(op))
    elif op.done:
        console.print(f"{op.name}: {op.state} (the system is as it was before {op.task or 'the operation'})")
    else:
        console.print(f"{op.name}: cancellation requested; the search stops at its next check (`munet wait {op.name}`)")
    return 0


# ---- parser --------------------------------------------------------------------------------------
EXIT_CODES = (
    "exit codes: 0 done; 1 the server answered with an error, or the result is not good "
    "(a failed operation, a task not serving, outputs that changed); 2 a local problem (bad arguments, "
    "missing or existing files); 130 interrupted"
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("munet-server")
    except PackageNotFoundError:
        return "unknown"

class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's help shows its default, unless it has none worth showing (None, False, '')."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        h = action.help or ""
        if "%(default)" in h or action.default in (None, False, "", argparse.SUPPRESS) or not action.option_strings:
            return h
        return f"{h} (default: %(default)s)"


def _global_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options every command takes, before or after its name (`munet tasks --json`). Given after,
    they override; the sub-command's copies carry no defaults so they never undo one given before."""

    def d(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    p.add_argument(
        "--target",
        default=d(os.environ.get("MUNET_TARGET", "127.0.0.1:50051")),
        help="server host[:port]; the port defaults to 50051 [env MUNET_TARGET]",
    )
    p.add_argument("--token", default=d(None), help="admin or predict token [env MUNET_TOKEN]")
    p.add_argument(
        "--tls-ca",
        type=Path,
        default=d(os.environ.get("MUNET_TLS_CA") or None),
        help="CA certificate: use TLS [env MUNET_TLS_CA]",
    )
    p.add_argument(
        "--tls-server-name",
        default=d(os.environ.get("MUNET_TLS_SERVER_NAME", "")),
        help="the name in the server's certificate, when not the target's host [env MUNET_TLS_SERVER_NAME]",
    )
    p.add_argument("--timeout", type=float, default=d(60.0), help="seconds per call")
    p.add_argument("--json", action="store_true", default=d(False), help="machine-readable output")
    p.add_argument("-q", "--quiet", action="store_true", default=d(False), help="no progress output")


def _budget_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--seconds", type=float, help="wall-clock budget of the search (server default: 90)")
    sp.add_argument("--generations", type=int, help="cap on evolved generations; 0: the linear probe only (server default: 100)")
    sp.add_argument("--candidates-per-generation", type=int, help="server default: 4")
    sp.add_argument("--epochs", type=int, help="epochs per trained candidate (server default: 10)")
    sp.add_argument("--views", type=int, help="cached views per image: clean, mirrored, crops (default: 2)")
    sp.add_argument("--batch-size", type=int, help="server default: 32")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="munet", description=__doc__, epilog=EXIT_CODES, formatter_class=_Help)
    p.add_argument("--version", action="version", version=f"munet {_version()}")
    _global_options(p, defaults=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do (COMMAND --help for its options)")

    def add(name: str, fn: Callable, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help, epilog=EXIT_CODES, formatter_class=_Help)
        _global_options(sp, defaults=False)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("health", cmd_health, "is the server (or one task) serving?")
    sp.add_argument("task", nargs="?", help="one task (default: the whole server)")
    add("system", cmd_system, "root model, device and sizes")
    sp = add("add-task", cmd_add_task, "upload an ImageFolder tree and evolve a path for it")
    sp.add_argument("name", help="the new task's name (letters, digits, - _ .)")
    sp.add_argument(
        "folder", type=Path, help="one sub-folder per class, images inside (or a dataset with train/ and test/)"
    )
    _budget_options(sp)
    sp.add_argument(
        "--scale-factor", type=float, help="s in (0, 1]: lower favours reusing layers (default: 0.95)"
    )
    sp.add_argument(
        "--validation-fraction", type=float, help="images held out to compare candidates (default: 0.3 / 0.2)"
    )
    sp.add_argument("--seed", type=int, help="the search's seed (default: 0)")
    sp.add_argument(
        "--policy", default="munet", choices=("munet", "finetune", "linear_probe", "adapters"),
        help="muNet, or a baseline run through the same machinery",
    )  # fmt: skip
    sp.add_argument("--no-wait", action="store_true", help="return once the upload is stored")
    sp = add("predict", cmd_predict, "classify image files with a task (or several: a,b,c)")
    sp.add_argument("task", help="a task, or several joined by commas: one call, shared layers run once")
    sp.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...) or folders (searched recursively)")
    sp.add_argument("--top-k", type=int, default=1, help="labels per image, most probable first")
    sp.add_argument("--csv", type=Path, help="write every image's labels to this CSV file")
    sp = add("eval", cmd_eval, "accuracy, per-class precision/recall and confusion matrix on a labelled folder")
    sp.add_argument("task", help="the task's name")
    sp.add_argument("folder", type=Path, help="an ImageFolder tree whose class folders are named as the task's classes")
    sp.add_argument("--plot", type=Path, help="also draw the confusion matrix into this image (needs matplotlib)")
    add("tasks", cmd_tasks, "list tasks with accuracy and parameters")
    sp = add("describe", cmd_describe, "a task's path, sharing and hyperparameters")
    sp.add_argument("task", help="the task's name")
    sp = add("improve", cmd_improve, "search again for a task with what later tasks added; a new version if better")
    sp.add_argument("task", nargs="?", help="the task (or --all)")
    sp.add_argument("--all", action="store_true", help="every task in turn, as muNet's outer loop")
    _budget_options(sp)
    sp.add_argument("--seed", type=int, help="the search's seed (default: the served version's number)")
    sp.add_argument("--no-wait", action="store_true", help="return once the operation is queued")
    sp = add("versions", cmd_versions, "a task's stored versions: which is served, accuracy, parameters")
    sp.add_argument("task", help="the task's name")
    sp = add("set-version", cmd_set_version, "serve another stored version of a task (roll back)")
    sp.add_argument("task", help="the task's name")
    sp.add_argument("version", type=int, help="the version to serve (see `munet versions TASK`)")
    sp = add("delete-version", cmd_delete_version, "delete a version the task does not serve")
    sp.add_argument("task", help="the task's name")
    sp.add_argument("version", type=int, help="the version to delete")
    sp = add("delete", cmd_delete, "delete a task and free the components only it used")
    sp.add_argument("task", help="the task's name")
    sp = add("graph", cmd_graph, "draw the system: the root's layers, each task's path, what tasks share (SVG)")
    sp.add_argument("--out", type=Path, help="write the SVG to this file (default: standard output)")
    sp = add("verify", cmd_verify, "recompute tasks' outputs and check they are bit-identical to their commit")
    sp.add_argument("task", nargs="?", help="one task (default: every task)")
    sp = add("export", cmd_export, "write a standalone copy of a task: ONNX, safetensors + JSON")
    sp.add_argument("task", help="the task to export")
    sp.add_argument("out", type=Path, help="folder to write model.onnx, model.safetensors, model.json into")
    sp.add_argument("--overwrite", action="store_true", help="replace an earlier export in that folder")
    sp = add("snapshot", cmd_snapshot, "copy the whole system to a local archive (or a server dir)")
    sp.add_argument("file", nargs="?", help="the local tar archive to write (must not exist)")
    sp.add_argument("--server-dir", default="", help="write into this directory on the server instead")
    sp = add("restore", cmd_restore, "replace the whole system with a snapshot")
    sp.add_argument("file", nargs="?", help="a local tar archive written by `munet snapshot`")
    sp.add_argument("--server-dir", default="", help="restore from this directory on the server instead")
    sp = add("ops", cmd_ops, "list operations")
    sp.add_argument("--task", default="", help="only this task's")
    sp = add("wait", cmd_wait, "follow an operation until it is done")
    sp.add_argument("operation", help="its name, as add-task printed it")
    sp.add_argument("--timeout-s", type=float, default=0.0, help="give up after this long (0: follow it to the end)")
    sp = add("cancel", cmd_cancel, "cancel an operation (the system stays as it was)")
    sp.add_argument("operation", help="its name, as add-task printed it")
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
