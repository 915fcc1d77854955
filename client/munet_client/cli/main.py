"""The parser and the entry point: every command's options, global options before or after it."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from munet_client.cli.learning import cmd_add_task, cmd_improve
from munet_client.cli.output import err
from munet_client.cli.predicting import cmd_eval, cmd_predict
from munet_client.cli.system import (
    cmd_cancel,
    cmd_health,
    cmd_ops,
    cmd_restore,
    cmd_snapshot,
    cmd_system,
    cmd_wait,
)
from munet_client.cli.tasks import (
    cmd_delete,
    cmd_delete_version,
    cmd_describe,
    cmd_export,
    cmd_graph,
    cmd_set_version,
    cmd_tasks,
    cmd_verify,
    cmd_versions,
)
from munet_client.client import MunetClient
from munet_client.errors import MunetError

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


def budget_options(sp: argparse.ArgumentParser) -> None:
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

    _learning_commands(add)
    _task_and_system_commands(add)
    return p


Add = Callable[[str, Callable, str], argparse.ArgumentParser]


def _learning_commands(add: Add) -> None:
    """health and system; adding, predicting, evaluating and improving tasks."""
    sp = add("health", cmd_health, "is the server (or one task) serving?")
    sp.add_argument("task", nargs="?", help="one task (default: the whole server)")
    add("system", cmd_system, "root model, device and sizes")
    sp = add("add-task", cmd_add_task, "upload an ImageFolder tree and evolve a path for it")
    sp.add_argument("name", help="the new task's name (letters, digits, - _ .)")
    sp.add_argument(
        "folder", type=Path, help="one sub-folder per class, images inside (or a dataset with train/ and test/)"
    )
    budget_options(sp)
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
    sp.add_argument(
        "--until-serving", action="store_true",
        help="return once version 1 serves (seconds), leaving the search to improve it",
    )  # fmt: skip
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
    budget_options(sp)
    sp.add_argument("--seed", type=int, help="the search's seed (default: the served version's number)")
    sp.add_argument("--no-wait", action="store_true", help="return once the operation is queued")


def _task_and_system_commands(add: Add) -> None:
    """versions, deletion, graph, verification, export, snapshots and operations."""
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
