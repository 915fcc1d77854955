"""`add-task` and `improve`: upload, then follow the search as it publishes versions."""

from __future__ import annotations

import argparse
import re

from munet_client.cli.output import console, err, print_json, say
from munet_client.cli.tasks import describe
from munet_client.client import MunetClient
from munet_client.errors import MunetError
from munet_client.images import ImageFolder
from munet_client.progress import progress
from munet_client.types import Operation, to_dict
from munet_proto.v1.munet_pb2 import SearchBudget

BUDGET_FIELDS = tuple(f.name for f in SearchBudget.DESCRIPTOR.fields)


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
        print_json(to_dict(op)) if a.json else console.print(
            f"operation [bold]{op.name}[/] queued; `munet wait {op.name}`"
        )
        return 0
    final = follow(c, op, quiet, until_serving=a.until_serving)
    if a.until_serving and not final.done:
        info = c.describe_task(op.task)
        print_json(to_dict(info)) if a.json else console.print(
            f"[bold]{op.task}[/] serves version {info.served_version}; the search goes on: `munet wait {op.name}`"
        )
        return 0
    return report_final(c, final, a.json)


def _name_files(message: str, tree: ImageFolder) -> str:
    """The server numbers examples in upload order; a person wants the file: `example 80` -> its path."""

    def name(m: re.Match[str]) -> str:
        i = int(m.group(1))
        return f"{tree.files[i][0]} (example {i})" if 0 <= i < len(tree.files) else m.group(0)

    return re.sub(r"\bexample (\d+)", name, message)


def follow(c: MunetClient, op: Operation, quiet: bool, until_serving: bool = False) -> Operation:
    """A bar over the search's time budget (the search stops when its clock does), and a line each
    time a version is published. `until_serving`: return once a version serves."""
    bar = progress("learn", None, "s", disable=quiet, bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} s{postfix}")
    last = op
    seen = 0
    try:
        for last in c.watch(op.name):
            p = last.progress
            if p.published > seen and p.serving_version:
                seen = p.published
                when = f"after {p.first_served_seconds:.1f} s" if seen == 1 and p.first_served_seconds else f"at {p.elapsed_seconds:.0f} s"
                say(bar, quiet, f"serving version {p.serving_version} {when} ({p.serving_kind}, validation accuracy "
                     f"{p.serving_accuracy:.3f})" + ("; the search goes on" if not last.done else ""))  # fmt: skip
                if until_serving:
                    bar.close()
                    return last
            if p.budget_seconds and bar.total != round(p.budget_seconds):
                bar.total = round(p.budget_seconds)
            bar.n = min(p.elapsed_seconds, bar.total or p.elapsed_seconds)
            if p.candidates_done:
                bar.set_postfix_str(
                    f"{p.phase}, gen {p.generation}, {p.candidates_done} candidates, "
                    f"serving v{p.serving_version or '-'}"
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



def report_final(c: MunetClient, op: Operation, as_json: bool) -> int:
    if op.state != "SUCCEEDED":
        if as_json:
            print_json(to_dict(op))
        else:
            err.print(f"[red]{op.state}[/]: {op.error_code} {op.error}")
        return 1
    info = c.describe_task(op.task)
    if as_json:
        print_json(to_dict(info))
    else:
        describe(info)
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
        final = follow(c, op, quiet)
        finals.append(final)
        if not a.json:
            if final.state == "SUCCEEDED":
                console.print(f"{name}: {final.result}")
            else:
                err.print(f"[red]{name}: {final.state}[/] {final.error_code} {final.error}")
    if a.json:
        print_json(to_dict(finals))
    elif a.no_wait:
        for op in finals:
            console.print(f"{op.task}: operation [bold]{op.name}[/] queued; `munet wait {op.name}`")
    return 0 if all(o.state in ("SUCCEEDED", "QUEUED", "RUNNING") for o in finals) else 1


