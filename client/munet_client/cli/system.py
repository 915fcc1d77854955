"""The system and its operations: `health`, `system`, `snapshot`, `restore`, `ops`, `wait`, `cancel`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from munet_client.cli.learning import follow
from munet_client.cli.output import bytes_bar, console, fmt_params, print_json
from munet_client.client import MunetClient
from munet_client.types import to_dict


def cmd_health(c: MunetClient, a: argparse.Namespace) -> int:
    status = c.health(a.task or "")
    print_json({"status": status}) if a.json else console.print(status)
    return 0 if status == "SERVING" else 1


def cmd_system(c: MunetClient, a: argparse.Namespace) -> int:
    info = c.system()
    if a.json:
        print_json(to_dict(info))
        return 0
    t = Table(show_header=False, title=f"munet-server {info.version} at {c.target}")
    for k, v in to_dict(info).items():
        t.add_row(k, fmt_params(v) if k.endswith("params") else str(v))
    console.print(t)
    return 0



def cmd_snapshot(c: MunetClient, a: argparse.Namespace) -> int:
    if a.server_dir:
        info = c.snapshot(server_dir=a.server_dir)
    else:
        if not a.file:
            raise ValueError("give a local FILE for the archive, or --server-dir DIR on the server")
        bar, cb = bytes_bar("snapshot", a.json)
        info = c.snapshot(a.file, on_chunk=cb)
        bar.close()
    print_json(to_dict(info)) if a.json else console.print(
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
        bar, cb = bytes_bar("restore", a.json, Path(a.file).stat().st_size)
        info = c.restore(a.file, on_chunk=cb)
        bar.close()
    print_json(to_dict(info)) if a.json else console.print(
        f"restored {info.num_tasks} tasks: {', '.join(info.tasks)}"
    )
    return 0


def cmd_ops(c: MunetClient, a: argparse.Namespace) -> int:
    ops = c.operations(a.task or "")
    if a.json:
        print_json(to_dict(ops))
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
    op = follow(c, c.operation(a.operation), a.json) if not a.timeout_s else c.wait(a.operation, a.timeout_s)
    if a.json:
        print_json(to_dict(op))
    else:
        console.print(f"{op.name}: {op.state} {op.result or op.error}")
    return 0 if op.state == "SUCCEEDED" else 1


def cmd_cancel(c: MunetClient, a: argparse.Namespace) -> int:
    """Ask, then wait (briefly) until the search has stopped, so that what is printed is the outcome."""
    op = c.cancel(a.operation)
    if not op.done:
        op = c.wait(op.name, timeout=30)
    if a.json:
        print_json(to_dict(op))
    elif op.done:
        console.print(f"{op.name}: {op.state} (the system is as it was before {op.task or 'the operation'})")
    else:
        console.print(f"{op.name}: cancellation requested; the search stops at its next check (`munet wait {op.name}`)")
    return 0


# ---- parser --------------------------------------------------------------------------------------
