"""Quality benchmark: the muNet paper's comparison, at small scale, on real packaged data.

A stream of real tasks (Split Fashion-MNIST, MNIST-5k, animal shapes, optionally UCI digits) is
learned task after task from the same pretrained root by:
- muNet at several scale factors s, each in its own system (cross-task seeds, mutations, commit);
- full fine-tuning, linear probe and adapters at every layer: search policies with the same
  per-task budget and root-only parents, each method in its own system;
- sequential fine-tuning of one shared model (a new head per task, the body keeps training).

Reported per task: test accuracy, parameters added (plain, and accounted as the score counts them),
system size, wall time, and forgetting (test accuracy right after learning a task minus after the
whole stream). No search ever sees a test split: validation is carved out of the training part.

    .venv/bin/python -m bench.quality --quick   # ~13 min on 2 CPU cores (all methods)
    .venv/bin/python -m bench.quality --full    # for a GPU: more data, larger budget
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a small shared CPU, spinning threads of another
# process make every torch op wait (measured here: 1.42 s vs 0.18 s per fine-tuning step while a
# second torch process ran). Must be set before torch is first imported; override it from the shell.
# Not for bench.serving: sleeping threads add wake-up latency to every small forward pass.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from munet_server.data import offline
from munet_server.data.dataset import ImageDataset, stratified_split
from munet_server.data.transforms import preprocess
from munet_server.evolve.baselines import SequentialFinetune, SequentialTask, policy_config
from munet_server.evolve.search import EvolutionSearch, SearchConfig
from munet_server.evolve.train import TrainConfig
from munet_server.jobs.spec import Budget
from munet_server.model.hparams import SearchSpace
from munet_server.model.root import RootConfig, load_root
from munet_server.store.store import Store
from munet_server.system import MunetSystem

BENCH_DIR = Path(__file__).resolve().parent
FASHION_PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
STREAM = (*(f"fmnist_{a}_{b}" for a, b in FASHION_PAIRS), "mnist5k", "animals")
METHODS = ("munet_s1.0", "munet_s0.5", "munet_s0.1", "finetune", "linear_probe", "adapters", "sequential")
POLICY_METHODS = ("finetune", "linear_probe", "adapters")


# ---- configuration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
    tasks: tuple[str, ...] = STREAM  # learned in this order
    train_per_class: int = 100  # drawn from the train side; validation is carved out of it
    test_per_class: int = 200  # capped by what the test side holds (MNIST-5k: 100)
    val_fraction: float = 0.2
    holdout_fraction: float = 0.2  # test side for sources without an official test split
    seed: int = 0


def sequential_config(budget: Budget) -> TrainConfig:
    """Sequential fine-tuning trains once per task with the whole budget (all candidates' steps)."""
    total = budget.validations * budget.generations * budget.candidates_per_generation
    return replace(budget.train_config(), validations=total)


@dataclass(frozen=True)
class QualityConfig:
    setting: str
    root: RootConfig = field(default_factory=RootConfig)
    data: DataConfig = field(default_factory=DataConfig)
    budget: Budget = field(default_factory=Budget)
    methods: tuple[str, ...] = METHODS
    device: str = "cpu"
    seed: int = 0


def quick_config() -> QualityConfig:
    # The pretrained Lite0 root at 32-48 px; per task 9 candidates of <= 24 SGD steps (binary tasks:
    # 10, one epoch per validation) keep all seven methods near 15 min on two CPU cores.
    root = RootConfig(image_size=32, min_image_size=32, max_image_size=48)
    return QualityConfig(
        setting="quick",
        root=root,
        data=DataConfig(),
        budget=Budget(generations=3, candidates_per_generation=3, validations=2, steps_per_validation=12),
    )


def full_config() -> QualityConfig:
    data = DataConfig(tasks=(*STREAM, "digits"), train_per_class=500, test_per_class=500)
    budget = Budget(
        generations=8, candidates_per_generation=4, validations=5, steps_per_validation=50, batch_size=64
    )
    return QualityConfig(setting="full", root=RootConfig(), data=data, budget=budget, device="auto")


# ---- data ------------------------------------------------------------------------------------------
@dataclass
class TaskData:
    name: str
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names


def to_dataset(raw: offline.RawImages, size: int) -> ImageDataset:
    """Grey (N, H, W) uint8 -> (N, 3, size, size) uint8 by bilinear resize and channel repeat."""
    x = torch.from_numpy(np.ascontiguousarray(raw.images))[:, None].float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).round().clamp(0, 255)
    images = x.to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return ImageDataset(images, torch.from_numpy(raw.labels.astype(np.int64)), list(raw.class_names))


def _raw_sources(names: tuple[str, ...], cfg: DataConfig) -> dict[str, tuple[offline.RawImages, ...]]:
    """name -> (train side, test side): official splits for Fashion-MNIST, seeded holdout otherwise."""
    out: dict[str, tuple[offline.RawImages, ...]] = {}
    fashion = [n for n in names if n.startswith("fmnist_")]
    if fashion:
        pairs = tuple((int(n.split("_")[1]), int(n.split("_")[2])) for n in fashion)
        trains = offline.split_fashion_mnist(pairs, "train")
        tests = offline.split_fashion_mnist(pairs, "test")
        out.update({n: (tr, te) for n, tr, te in zip(fashion, trains, tests)})
    loaders = {"mnist5k": offline.mnist5k, "animals": offline.animal_shapes, "digits": offline.digits}
    for n in names:
        if n in loaders:
            out[n] = offline.train_test_split(loaders[n](), cfg.holdout_fraction, cfg.seed)
    unknown = set(names) - set(out)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; known: fmnist_A_B, {', '.join(loaders)}")
    return out


def load_stream(cfg: DataConfig, size: int) -> list[TaskData]:
    sources = _raw_sources(cfg.tasks, cfg)
    stream = []
    for i, name in enumerate(cfg.tasks):
        train_raw, test_raw = sources[name]
        seed = cfg.seed + 1000 * i
        train = to_dataset(offline.sample_per_class(train_raw, cfg.train_per_class, seed), size)
        test = to_dataset(offline.sample_per_class(test_raw, cfg.test_per_class, seed + 1), size)
        tr, va = stratified_split(train, cfg.val_fraction, seed + 2)
        stream.append(TaskData(name, tr, va, test))
    return stream


# ---- results ---------------------------------------------------------------------------------------
@dataclass
class TaskOutcome:
    task: str
    val_acc: float
    test_acc: float  # right after the task was learned
    params_added: int  # new parameters stored for this task
    seconds: float  # search (or training) plus commit
    steps: int
    test_acc_end: float = math.nan  # after the whole stream
    accounted_params: float = math.nan  # the score's p at the end of the stream (shared cost split)
    verified: bool | None = None  # golden digest recomputed bit-identically (muNet systems)

    @property
    def forgetting(self) -> float:
        return self.test_acc - self.test_acc_end


@dataclass
class MethodResult:
    method: str
    tasks: list[TaskOutcome]
    system_params: int  # every stored parameter: root (where kept) plus everything added
    seconds: float

    def summary(self) -> dict[str, float]:
        t = self.tasks
        return {
            "test_acc": _mean(o.test_acc for o in t),
            "test_acc_end": _mean(o.test_acc_end for o in t),
            "forgetting": _mean(o.forgetting for o in t),
            "max_forgetting": max(o.forgetting for o in t),
            "params_added": _mean(o.params_added for o in t),
            "accounted_params": _mean(o.accounted_params for o in t),
            "seconds": sum(o.seconds for o in t),
            "system_params": self.system_params,
        }

    def to_dict(self) -> dict[str, Any]:
        tasks = [{**asdict(o), "forgetting": o.forgetting} for o in self.tasks]
        return {"method": self.method, "tasks": tasks, "summary": self.summary(), "seconds": self.seconds}


def _mean(values: Any) -> float:
    v = list(values)
    return float(sum(v) / len(v)) if v else math.nan


@torch.no_grad()
def accuracy(predict: Callable[[torch.Tensor], torch.Tensor], ds: ImageDataset, batch: int = 256) -> float:
    correct = 0
    for i in range(0, len(ds), batch):
        correct += int((predict(ds.images[i : i + batch]).argmax(-1).cpu() == ds.labels[i : i + batch]).sum())
    return correct / max(1, len(ds))


def log(msg: str, t0: float = 0.0) -> None:
    stamp = f"[{time.monotonic() - t0:7.1f}s] " if t0 else ""
    print(f"{stamp}{msg}", flush=True)


# ---- methods ---------------------------------------------------------------------------------------
def method_search_config(method: str, cfg: QualityConfig) -> SearchConfig:
    if method.startswith("munet_s"):
        return cfg.budget.search_config(float(method.removeprefix("munet_s")), cfg.seed)
    if method in POLICY_METHODS:
        return policy_config(cfg.budget.search_config(1.0, cfg.seed), method)
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def run_system_method(method: str, stream: list[TaskData], cfg: QualityConfig, workdir: Path) -> MethodResult:
    """muNet or a search-policy baseline: every task searched, then committed into this method's store."""
    t0 = time.monotonic()
    torch.manual_seed(cfg.seed)
    system = MunetSystem.open(Store(workdir / method), cfg.root, device=cfg.device)
    base = method_search_config(method, cfg)
    outcomes = []
    for i, task in enumerate(stream):
        t_task = time.monotonic()
        search = EvolutionSearch(
            system, task.name, task.num_classes, task.train, task.val, replace(base, seed=cfg.seed + i)
        )
        result = search.run()
        best = result.best
        metrics = {"validation_accuracy": best.quality, "score": best.score}
        record = system.commit(
            task.name, task.class_names, best, metrics, f"bench:{task.name}", task.val.images
        )
        seconds = time.monotonic() - t_task
        acc = accuracy(lambda x, n=task.name: system.logits(n, x), task.test)
        outcomes.append(
            TaskOutcome(
                task.name, best.quality, acc, int(record.metrics["params_added"]), seconds, result.steps
            )
        )
        log(f"{method:>12} {task.name:>10}: val {best.quality:.3f} test {acc:.3f} "
            f"+{record.metrics['params_added']:,} params {seconds:5.1f}s", t0)  # fmt: skip
    for o in outcomes:  # after the whole stream: re-measure, re-verify, final shared accounting
        entry = system.tasks[o.task]
        o.test_acc_end = accuracy(lambda x, n=o.task: system.logits(n, x), _task(stream, o.task).test)
        o.verified = system.verify_task(o.task)
        o.accounted_params = float(system.accounted_params(entry.path, o.task))
    size = sum(c.num_params for c in system.pool.values())
    system.store.close()
    return MethodResult(method, outcomes, size, time.monotonic() - t0)


def run_sequential(stream: list[TaskData], cfg: QualityConfig) -> MethodResult:
    """One shared body fine-tuned on each task in turn; earlier heads sit on a body that keeps moving."""
    t0 = time.monotonic()
    torch.manual_seed(cfg.seed)
    root = load_root(cfg.root)
    arch, rc = root.arch, cfg.root
    hp = SearchSpace.for_root(arch.num_blocks, arch.patch_multiple, rc.min_image_size, rc.max_image_size)
    hp = hp.defaults(rc.image_size)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else "cpu")
    seq = SequentialFinetune(arch, hp, device)
    train_cfg = sequential_config(cfg.budget)
    outcomes = []
    body = sum(c.num_params for c in seq.body)
    for i, task in enumerate(stream):
        t_task = time.monotonic()
        res = seq.add_task(
            SequentialTask(task.name, task.train, task.val, task.num_classes), train_cfg, cfg.seed + i
        )
        seconds = time.monotonic() - t_task
        acc = accuracy(_seq_predict(seq, task.name, hp, device), task.test)
        head = seq.paths[task.name].components[-1].num_params
        added = head + (body if i == 0 else 0)  # the first task replaces the root by a trainable copy
        outcomes.append(TaskOutcome(task.name, res.quality, acc, added, seconds, res.steps))
        log(f"{'sequential':>12} {task.name:>10}: val {res.quality:.3f} test {acc:.3f} {seconds:5.1f}s", t0)
    for o in outcomes:
        o.test_acc_end = accuracy(_seq_predict(seq, o.task, hp, device), _task(stream, o.task).test)
        head = seq.paths[o.task].components[-1].num_params
        o.accounted_params = body / len(outcomes) + head
    return MethodResult("sequential", outcomes, seq.total_params(), time.monotonic() - t0)


def _seq_predict(seq: SequentialFinetune, task: str, hp: dict[str, Any], device: torch.device) -> Callable:
    model = seq.model(task)
    size = int(hp["ds_image_size"])
    return lambda x: model(preprocess(x, size).to(device)).float()


def _task(stream: list[TaskData], name: str) -> TaskData:
    return next(t for t in stream if t.name == name)


# ---- the benchmark ---------------------------------------------------------------------------------
def run_benchmark(
    cfg: QualityConfig,
    workdir: Path,
    stream: list[TaskData] | None = None,
    on_method: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every method on the same stream; returns the raw results (JSON-able).

    `on_method` gets the results so far after each method (to save partial results).
    """
    t0 = time.monotonic()
    load_before = os.getloadavg()[0]
    if stream is None:
        size = cfg.root.max_image_size  # the systems' storage size
        stream = load_stream(cfg.data, size)
    log(f"stream: {', '.join(f'{t.name} ({len(t.train)}/{len(t.val)}/{len(t.test)})' for t in stream)}")
    results: dict[str, Any] = {
        "setting": cfg.setting,
        "config": _config_dict(cfg),
        "machine": machine_info(cfg.device),
        "tasks": [_task_info(t) for t in stream],
        "methods": {},
        "wall_seconds": 0.0,
    }
    methods = results["methods"]
    for method in cfg.methods:
        if method == "sequential":
            res = run_sequential(stream, cfg)
        else:
            res = run_system_method(method, stream, cfg, workdir)
        methods[method] = {**res.to_dict(), "loadavg_1min_after": os.getloadavg()[0]}
        s = res.summary()
        log(f"== {method}: test {s['test_acc']:.3f} -> {s['test_acc_end']:.3f} after the stream, "
            f"system {s['system_params']:,} params, {res.seconds:.0f}s", t0)  # fmt: skip
        results["wall_seconds"] = time.monotonic() - t0
        if on_method is not None:
            on_method(results)
    # Other processes on the machine slow the timings down: record the load around the run.
    results["machine"]["loadavg_1min"] = [load_before, os.getloadavg()[0]]
    return results


def _config_dict(cfg: QualityConfig) -> dict[str, Any]:
    return {
        "setting": cfg.setting,
        "root": cfg.root.to_dict(),
        "data": asdict(cfg.data),
        "budget": asdict(cfg.budget),
        "methods": list(cfg.methods),
        "device": cfg.device,
        "seed": cfg.seed,
    }


def _task_info(t: TaskData) -> dict[str, Any]:
    return {
        "name": t.name,
        "classes": t.class_names,
        "train": len(t.train),
        "val": len(t.val),
        "test": len(t.test),
    }


def machine_info(device: str) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), model
        )
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if device != "cpu" and torch.cuda.is_available() else None
    label = f"{cores}-core CPU, " + (f"GPU {gpu}" if gpu else "no GPU")
    return {
        "label": label,
        "cpu": model,
        "cores": cores,
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="the 2-CPU setting (default)")
    group.add_argument("--full", action="store_true", help="the GPU setting: more data, larger budget")
    ap.add_argument("--methods", default="", help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="draws the data and seeds the searches; RESULTS.md reports all seeds",
    )
    ap.add_argument("--no-report", action="store_true", help="skip RESULTS.md and the plots")
    ap.add_argument("--report-only", action="store_true", help="rebuild the report from the saved JSON")
    args = ap.parse_args(argv)
    cfg = full_config() if args.full else quick_config()
    cfg = replace(cfg, seed=args.seed, data=replace(cfg.data, seed=args.seed))
    out = result_path(cfg.setting, args.seed)
    if args.report_only:
        _report(cfg.setting)
        return 0
    if args.methods:
        cfg = replace(cfg, methods=tuple(m.strip() for m in args.methods.split(",")))
        out = out.with_name(f"{out.stem}-{'+'.join(cfg.methods)}.json")  # never replaces a full run
    if cfg.device == "cpu":
        torch.set_num_threads(2)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.json")
    with tempfile.TemporaryDirectory(prefix="munet-quality-") as tmp:
        results = run_benchmark(cfg, Path(tmp), on_method=lambda r: _save(r, partial))
    _save(results, out)
    partial.unlink(missing_ok=True)
    log(f"wrote {out} ({results['wall_seconds']:.0f}s in all)")
    if not args.no_report:
        _report(cfg.setting)
    return 0


def result_path(setting: str, seed: int) -> Path:
    return (
        BENCH_DIR / "out" / (f"quality-{setting}.json" if seed == 0 else f"quality-{setting}-seed{seed}.json")
    )


def seed_runs(setting: str) -> list[dict[str, Any]]:
    """Every saved run of this setting whose budget, data sizes and methods match seed 0's."""
    main = json.loads(result_path(setting, 0).read_text())

    def same(c: dict[str, Any]) -> bool:
        data = {k: v for k, v in c["data"].items() if k != "seed"}
        ref = {k: v for k, v in main["config"]["data"].items() if k != "seed"}
        return c["budget"] == main["config"]["budget"] and data == ref and c["root"] == main["config"]["root"]

    runs = [main]
    seed_file = re.compile(rf"quality-{re.escape(setting)}-seed\d+\.json")  # not partial or subset runs
    for path in sorted(result_path(setting, 0).parent.glob(f"quality-{setting}-seed*.json")):
        if not seed_file.fullmatch(path.name):
            continue
        run = json.loads(path.read_text())
        if same(run["config"]):
            runs.append(run)
        else:
            log(f"skipping {path.name}: its budget or data differ from seed 0's")
    return runs


def _report(setting: str) -> None:
    """RESULTS.md details seed 0 and summarises every seed run of the same setting."""
    from bench.quality_report import write_report

    runs = seed_runs(setting)
    for path in write_report(runs[0], BENCH_DIR, runs):
        log(f"wrote {path}")


def _save(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=1, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, float | np.floating):
        return float(o)
    if isinstance(o, np.integer):
        return int(o)
    raise TypeError(f"not JSON-able: {type(o)}")


if __name__ == "__main__":
    sys.exit(main())
