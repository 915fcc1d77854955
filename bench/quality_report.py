"""The quality benchmark's report: markdown tables for bench/RESULTS.md and three small PNG plots.

Only the `quality` block of RESULTS.md is rewritten (`bench.machine.update_section`, shared with the
other benchmarks); other sections stay. Hand commentary between the notes markers survives a rerun.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

from bench.machine import update_section

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter

NOTES_BEGIN, NOTES_END = "<!-- quality:notes:begin -->", "<!-- quality:notes:end -->"
PLOTS = ("quality_acc_vs_params.png", "quality_acc_per_task.png", "quality_cost_per_task.png")
LABELS = {
    "finetune": "fine-tune",
    "linear_probe": "linear probe",
    "adapters": "adapters",
    "sequential": "sequential FT",
}


def label(method: str) -> str:
    if method.startswith("munet_s"):
        return f"muNet s={method.removeprefix('munet_s')}"
    return LABELS.get(method, method)


def fmt_params(n: float) -> str:
    if math.isnan(n):
        return "–"
    for unit, div in (("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}" if div == 1e6 else f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


# ---- markdown --------------------------------------------------------------------------------------
def summary_table(results: dict[str, Any]) -> str:
    rows = [
        "| method | test acc. after learning (%) | test acc. after stream (%) | forgetting, mean / max (pp) "
        "| params added / task | accounted params / task | system size | train time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, r in results["methods"].items():
        s = r["summary"]
        rows.append(
            f"| {label(m)} | {pct(s['test_acc'])} | {pct(s['test_acc_end'])} "
            f"| {pct(s['forgetting'])} / {pct(s['max_forgetting'])} | {fmt_params(s['params_added'])} "
            f"| {fmt_params(s['accounted_params'])} | {fmt_params(s['system_params'])} | {s['seconds']:.0f} |"
        )
    return "\n".join(rows)


def per_task_table(results: dict[str, Any], cell: Any, title: str) -> str:
    methods = list(results["methods"])
    head = f"| {title} | " + " | ".join(label(m) for m in methods) + " |"
    rows = [head, "|---|" + "---:|" * len(methods)]
    for i, t in enumerate(results["tasks"]):
        cells = [cell(results["methods"][m]["tasks"][i]) for m in methods]
        rows.append(f"| {t['name']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def observations(results: dict[str, Any]) -> list[str]:
    """Facts computed from the numbers, so a rerun's text matches its table."""
    ms = results["methods"]
    out = []
    for m in (k for k in ms if k.startswith("munet_s")):
        f = ms[m]["summary"]
        verified = all(t["verified"] for t in ms[m]["tasks"])
        out.append(
            f"{label(m)}: forgetting max {pct(f['max_forgetting'])} pp; every task's golden digest "
            f"{'re-verified bit-identically' if verified else 'FAILED verification'} after the stream."
        )
    if "munet_s1.0" in ms and "finetune" in ms:
        mu, ft = ms["munet_s1.0"]["tasks"], ms["finetune"]["tasks"]
        lose = [f"{a['task']} ({pct(a['test_acc_end'])} vs {pct(b['test_acc_end'])})"
                for a, b in zip(mu, ft) if a["test_acc_end"] < b["test_acc_end"]]  # fmt: skip
        out.append(
            "muNet s=1.0 is below full fine-tuning on: " + (", ".join(lose) if lose else "no task") + "."
        )
    if "sequential" in ms:
        s = ms["sequential"]["summary"]
        out.append(
            f"Sequential fine-tuning forgets {pct(s['forgetting'])} pp on average "
            f"(max {pct(s['max_forgetting'])} pp) over the stream."
        )
    return out


def seeds_table(runs: list[dict[str, Any]]) -> str:
    """Mean and spread over seed runs: each seed draws other data and seeds other searches."""
    rows = [
        "| method | seeds | test acc. after stream (%), mean ± sd | min – max | forgetting, mean (pp) "
        "| params added / task | accounted params / task |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in runs[0]["methods"]:
        ss = [r["methods"][m]["summary"] for r in runs if m in r["methods"]]
        acc = [100 * s["test_acc_end"] for s in ss]
        rows.append(
            f"| {label(m)} | {len(ss)} | {_mean(acc):.1f} ± {_sd(acc):.1f} | {min(acc):.1f} – {max(acc):.1f} "
            f"| {_mean([100 * s['forgetting'] for s in ss]):.1f} "
            f"| {fmt_params(_mean([s['params_added'] for s in ss]))} "
            f"| {fmt_params(_mean([s['accounted_params'] for s in ss]))} |"
        )
    return "\n".join(rows)


def paired_text(runs: list[dict[str, Any]]) -> list[str]:
    """muNet s=0.5 against each baseline, paired by seed (same data, same budget)."""
    ref = "munet_s0.5"
    if ref not in runs[0]["methods"]:
        return []
    out = []
    for m in runs[0]["methods"]:
        if m == ref:
            continue
        diffs = [
            100 * (r["methods"][ref]["summary"]["test_acc_end"] - r["methods"][m]["summary"]["test_acc_end"])
            for r in runs
            if ref in r["methods"] and m in r["methods"]
        ]
        wins = sum(d > 0 for d in diffs)
        out.append(
            f"{label(ref)} minus {label(m)}: {_mean(diffs):+.1f} pp mean over {len(diffs)} seeds "
            f"(ahead on {wins} of {len(diffs)}; per seed {', '.join(f'{d:+.1f}' for d in diffs)})."
        )
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _sd(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    mu = _mean(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1))


def load_text(results: dict[str, Any]) -> str:
    """The machine's 1-min load average after each method: above ~2, other processes shared the cores."""
    loads = [r.get("loadavg_1min_after") for r in results["methods"].values()]
    if any(v is None for v in loads) or not loads:
        return ""
    return (
        f"; 1-min load average after each method {', '.join(f'{v:.1f}' for v in loads)} "
        "(this benchmark alone is ~2: higher means other processes shared the two cores and the "
        "times below are inflated)"
    )


def settings_text(results: dict[str, Any]) -> str:
    c, mach = results["config"], results["machine"]
    b, d, r = c["budget"], c["data"], c["root"]
    steps = b["validations"] * b["steps_per_validation"]
    return "\n".join(
        [
            f"- Machine: **{mach['label']}** ({mach['cpu']}, {mach['cores']} cores, "
            f"torch {mach['torch']}, {mach['threads']} threads, Python {mach['python']}).",
            f"- Setting `{c['setting']}`: whole run {results['wall_seconds'] / 60:.1f} min for all methods"
            f"{load_text(results)}.",
            f"- Root: `{r['model_name']}`, weights `{r['weights']}` (ImageNet-pretrained), default image "
            f"size {r['image_size']} px, searched {r['min_image_size']}-{r['max_image_size']} px.",
            f"- Budget per task and method: {b['generations']} generations x {b['candidates_per_generation']} candidates, "
            f"each {b['validations']} validations x up to {b['steps_per_validation']} SGD steps "
            f"(at most one epoch between validations; <= {steps} steps per candidate), batch "
            f"{b['batch_size']}. Sequential fine-tuning trains once per task with the same total "
            f"steps ({b['generations'] * b['candidates_per_generation']} x {b['validations']} validations).",
            f"- Data, in stream order: {', '.join(t['name'] for t in results['tasks'])}. "
            f"{d['train_per_class']} examples per class drawn (seed {d['seed']}) from the train side, "
            f"{pct(d['val_fraction'])}% of them carved out for validation (`stratified_split`); "
            f"up to {d['test_per_class']} test examples per class from Fashion-MNIST's official test "
            f"split, or from a seeded {pct(d['holdout_fraction'])}% holdout (`train_test_split`) for "
            "MNIST-5k, animal shapes and digits. No search sees a test example.",
        ]
    )


def seeds_section(runs: list[dict[str, Any]]) -> list[str]:
    if len(runs) < 2:
        return []
    seeds = ", ".join(str(r["config"]["seed"]) for r in runs)
    minutes = ", ".join(f"{r['wall_seconds'] / 60:.1f}" for r in runs)
    return [
        "### Across seeds (mean over tasks, then over seeds)",
        f"Seeds {seeds}: each draws its own training, validation and test examples and seeds its own "
        f"searches (`--seed N`); same budget and data sizes. Whole runs took {minutes} min. The tables "
        "below this one detail seed 0.",
        seeds_table(runs),
        "\n".join(f"- {line}" for line in paired_text(runs)),
    ]


def markdown(results: dict[str, Any], notes: str, runs: list[dict[str, Any]] | None = None) -> str:
    acc = per_task_table(results, lambda t: pct(t["test_acc_end"]), "test acc. after stream (%)")
    added = per_task_table(
        results,
        lambda t: f"{fmt_params(t['params_added'])} / {fmt_params(t['accounted_params'])}",
        "params added / accounted",
    )
    secs = per_task_table(results, lambda t: f"{t['seconds']:.0f}", "train time (s)")
    obs = "\n".join(f"- {o}" for o in observations(results))
    return "\n\n".join(
        [
            "## Quality",
            "The muNet paper's comparison at small scale on real packaged data: a stream of tasks learned "
            "one after another from the same pretrained root. Reproduce with "
            f"`.venv/bin/python -m bench.quality --{results['setting']}` (raw results: "
            f"`bench/out/quality-{results['setting']}.json`).",
            settings_text(results),
            *seeds_section(runs or [results]),
            "### Summary of seed 0 (mean over tasks)"
            if runs and len(runs) > 1
            else "### Summary (mean over tasks)",
            summary_table(results),
            "*Params added*: parameters stored new for the task. *Accounted*: the score's p after the "
            "whole stream (each component's parameters divided by the number of tasks using it, so "
            "sharing is rewarded). *System size*: every stored parameter, root included (sequential "
            "fine-tuning keeps one moving body plus its heads). *Forgetting*: test accuracy right after "
            "learning a task minus after the whole stream.",
            "### Test accuracy per task (after the whole stream)",
            acc,
            "### Parameters per task (added / accounted)",
            added,
            "### Training wall time per task (search + commit)",
            secs,
            "### Observations (computed)",
            obs,
            "### Commentary",
            f"{NOTES_BEGIN}\n{notes.strip()}\n{NOTES_END}",
            "![accuracy vs parameters](quality_acc_vs_params.png)\n"
            "![accuracy per task](quality_acc_per_task.png)\n"
            "![cost per task](quality_cost_per_task.png)",
        ]
    )


def write_markdown(results: dict[str, Any], path: Path, runs: list[dict[str, Any]] | None = None) -> Path:
    old = path.read_text() if path.exists() else ""
    notes = "(to be written)"
    if NOTES_BEGIN in old and NOTES_END in old:
        notes = old.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0]
    update_section(str(path), "quality", markdown(results, notes, runs))
    return path


# ---- plots -----------------------------------------------------------------------------------------
def _colors(methods: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def plot_acc_vs_params(results: dict[str, Any], path: Path) -> Path:
    ms = results["methods"]
    colors = _colors(list(ms))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, key, xlabel in (
        (axes[0], "accounted_params", "accounted params per task (score's p)"),
        (axes[1], "system_params", "total system size (params)"),
    ):
        for m, r in ms.items():
            s = r["summary"]
            ax.scatter(s[key], 100 * s["test_acc_end"], color=colors[m], s=40, label=label(m))
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean test acc. after stream (%)")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.suptitle(f"Quality vs size ({results['setting']}, {results['machine']['label']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _grouped_bars(
    ax: Any, results: dict[str, Any], value: Any, colors: dict[str, Any], tick: Any = None
) -> None:
    """One bar per task and method; `tick` optionally marks a second value on each bar."""
    tasks = [t["name"] for t in results["tasks"]]
    ms = list(results["methods"])
    width = 0.8 / len(ms)
    for j, m in enumerate(ms):
        rows = results["methods"][m]["tasks"]
        xs = [i + (j - (len(ms) - 1) / 2) * width for i in range(len(tasks))]
        ax.bar(xs, [value(t) for t in rows], width, color=colors[m], label=label(m))
        if tick is not None:
            ax.hlines([tick(t) for t in rows], [x - width / 2 for x in xs], [x + width / 2 for x in xs],
                      colors="black", linewidth=1)  # fmt: skip
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=20, fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_acc_per_task(results: dict[str, Any], path: Path) -> Path:
    colors = _colors(list(results["methods"]))
    fig, ax = plt.subplots(figsize=(11, 3.8))
    _grouped_bars(ax, results, lambda t: 100 * t["test_acc_end"], colors, lambda t: 100 * t["test_acc"])
    ax.set_ylabel("test acc. after stream (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(
        f"Test accuracy per task ({results['setting']}): bars after the whole stream, "
        "black ticks right after learning the task",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_cost_per_task(results: dict[str, Any], path: Path) -> Path:
    colors = _colors(list(results["methods"]))
    fig, axes = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    _grouped_bars(axes[0], results, lambda t: max(1, t["params_added"]), colors)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("params added")
    axes[0].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.0), frameon=False)
    _grouped_bars(axes[1], results, lambda t: t["seconds"], colors)
    axes[1].set_ylabel("train time (s)")
    axes[0].set_title(f"Cost per task ({results['setting']}, {results['machine']['label']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(
    results: dict[str, Any], bench_dir: Path, runs: list[dict[str, Any]] | None = None
) -> list[Path]:
    """`results` is detailed (seed 0); `runs`, every seed including it, is summarised."""
    return [
        write_markdown(results, bench_dir / "RESULTS.md", runs),
        plot_acc_vs_params(results, bench_dir / PLOTS[0]),
        plot_acc_per_task(results, bench_dir / PLOTS[1]),
        plot_cost_per_task(results, bench_dir / PLOTS[2]),
    ]
