"""`tasks`, `describe`, `versions` and what changes a task: `set-version`, `delete-version`, `delete`,
`graph`, `verify`, `export`."""

from __future__ import annotations

import argparse
import sys
import time

from rich.table import Table

from munet_client.cli.output import console, err, fmt_params, print_json
from munet_client.client import MunetClient
from munet_client.graph import system_svg
from munet_client.types import TaskInfo, to_dict


def cmd_tasks(c: MunetClient, a: argparse.Namespace) -> int:
    tasks = c.list_tasks()
    if a.json:
        print_json(to_dict(tasks))
        return 0
    t = Table(
        "task", "serving", "kind", "classes", "val acc", "probe", "gain", "params added", "params accounted",
        "reused layers", "search s",
    )  # fmt: skip
    for i in tasks:
        shared = sum(1 for p in i.path if p.shared)
        acc = f"{i.validation_accuracy:.3f}" + (" [yellow](near chance)[/]" if i.near_chance else "")
        t.add_row(
            i.name if not i.state.startswith("DAMAGED") else f"{i.name} [red]({i.state.lower()})[/]",
            f"v{i.served_version}" + (" [cyan](improving)[/]" if i.improving else ""),
            i.kind,
            str(len(i.class_names)),
            acc,
            f"{i.probe_validation_accuracy:.3f}",
            f"{i.gain_over_probe:+.3f}",
            fmt_params(i.params_added),
            fmt_params(i.params_accounted),
            f"{shared}/{len(i.path)}",
            f"{i.search_seconds:.0f}",
        )
    console.print(t if tasks else "no tasks yet: `munet add-task NAME FOLDER`")
    return 0


def describe(info: TaskInfo) -> None:
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
    warn_if_near_chance(info)
    t = Table("slot", "component", "params", "owner", "shared with", title="path")
    for p in info.path:
        mark = "[green]new[/]" if p.created_by_task else p.owner
        t.add_row(p.name, p.id[:12], fmt_params(p.num_params), mark, ", ".join(p.shared_with) or "-")
    console.print(t)
    hp = {k: v for k, v in info.hparams.items() if not k.startswith("_")}
    console.print("hyperparameters: " + ", ".join(f"{k}={v}" for k, v in hp.items()))


def warn_if_near_chance(info: TaskInfo) -> None:
    if info.near_chance:
        err.print(
            f"[yellow]warning[/]: {info.name}'s validation accuracy {info.validation_accuracy:.3f} is near "
            f"chance ({info.chance_accuracy:.3f}): the images may not show what tells the classes apart, "
            "or there are too few of them; add more images per class"
        )


def cmd_describe(c: MunetClient, a: argparse.Namespace) -> int:
    info = c.describe_task(a.task)
    print_json(to_dict(info)) if a.json else describe(info)
    return 0



def cmd_versions(c: MunetClient, a: argparse.Namespace) -> int:
    info = c.describe_task(a.task)
    if a.json:
        print_json(to_dict(info.versions))
        return 0
    t = Table("version", "served", "val acc", "kind", "params added", "created", "improved from", "golden digest",
              title=f"{info.name}: versions")  # fmt: skip
    for v in info.versions:
        t.add_row(
            str(v.version),
            "[green]yes[/]" if v.served else "",
            f"{v.validation_accuracy:.3f}",
            v.kind,
            fmt_params(v.params_added),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(v.created_at)),
            str(v.improved_from or "-"),
            v.golden_digest[:16],
        )
    console.print(t)
    return 0


def cmd_set_version(c: MunetClient, a: argparse.Namespace) -> int:
    info = c.set_task_version(a.task, a.version)
    if a.json:
        print_json(to_dict(info))
    else:
        console.print(f"{info.name} now serves version {info.served_version} "
                      f"(validation accuracy {info.validation_accuracy:.3f})")  # fmt: skip
    return 0


def cmd_delete_version(c: MunetClient, a: argparse.Namespace) -> int:
    return _report_freed(a, f"version {a.version} of {a.task}", *c.delete_task_version(a.task, a.version))


def cmd_delete(c: MunetClient, a: argparse.Namespace) -> int:
    return _report_freed(a, a.task, *c.delete_task(a.task))


def _report_freed(a: argparse.Namespace, what: str, freed: list[str], params: int) -> int:
    if a.json:
        print_json({"freed_components": freed, "params_freed": params})
    else:
        console.print(f"deleted {what}: freed {len(freed)} components ({params:,} params)")
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
        print_json(to_dict(results))
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
        print_json({"task": a.task, "dir": str(a.out), "files": sizes})
    else:
        files = ", ".join(f"{f} ({n:,} bytes)" for f, n in sizes.items())
        console.print(f"exported {a.task} to {a.out}: {files}")
        console.print("  run it with onnxruntime (model.onnx: input 'image', RGB in [0, 1] at the size in its")
        console.print("  metadata), or in PyTorch: munet_client.load_exported(DIR) (needs torch and timm)")
    return 0


