"""`predict` and `eval`: images and folders through a task (or several)."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from rich.table import Table

from munet_client.cli.output import console, err, print_json
from munet_client.client import MunetClient
from munet_client.folders import (
    CHUNK,
    FilePrediction,
    evaluate_folder,
    image_files,
    plot_confusion,
    predict_files,
)
from munet_client.images import IMAGE_SUFFIXES
from munet_client.progress import progress
from munet_client.types import to_dict


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
        print_json([{"image": str(p.path), "labels": to_dict(p.labels), "error": p.error} for p in preds])
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
        print_json(
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
        print_json(rows)
        return 0
    t = Table("image", *tasks)
    for i, f in enumerate(files):
        t.add_row(
            str(f), *(", ".join(f"{lb.name} {lb.probability:.2f}" for lb in preds[k][i]) for k in tasks)
        )
    console.print(t)
    return 0


