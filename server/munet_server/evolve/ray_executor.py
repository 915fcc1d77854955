"""Train a generation's candidates in parallel on Ray (docs/RAY.md).

What goes where:
- once per search (driver -> object store): the labelled images, labels and the train/holdout split,
  and the frozen components the candidates reference, one object per component id
  (content-addressed, so never stale);
- per candidate (task argument): component specs, hparams, the draft components' initial tensors,
  the views, the seed, the head's weight decay, the time left;
- back (task result): only the trained draft tensors and the `TrainResult`; the driver loads them
  into the candidate's own draft modules, so the rest of the search cannot tell the executors apart.

A worker rebuilds the architecture from the root config (random skeleton: every tensor it uses is
shipped), keeps frozen modules in an LRU cache by component id and its own frozen-prefix feature
cache per dataset, and trains with the local executor's `CandidateTrainer`: on CPU with the same
torch thread count the result is bitwise that of `LocalExecutor`. Ray is an optional extra,
imported lazily.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from munet_server.allocator import keep_freed_memory
from munet_server.errors import Cancelled, FailedPrecondition
from munet_server.evolve.clock import Clock
from munet_server.evolve.features import FeatureCache, View
from munet_server.evolve.train import Batches, CandidateTrainer, TrainConfig, TrainResult
from munet_server.model.components import Component, ComponentSpec, tensors_of
from munet_server.model.path import TaskPath
from munet_server.model.root import RootConfig, load_root

if TYPE_CHECKING:
    from munet_server.evolve.executors import Candidate, TrainContext
    from munet_server.model.arch import Architecture

log = logging.getLogger(__name__)


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise FailedPrecondition(
            "the Ray executor needs the optional ray extra: pip install 'munet-server[ray]' "
            "(or run the server with --executor local)"
        ) from e
    return ray


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: start a local Ray instance; "ray://head:10001"; "auto"
    num_cpus_per_candidate: float = 1.0
    num_gpus_per_candidate: float = 0.0  # fractions share a GPU (e.g. 0.25: four candidates per GPU)
    local_num_cpus: int | None = None  # CPUs of a local instance (address None); None: all
    torch_threads: int | None = None  # per task; None: max(1, int(num_cpus_per_candidate))
    max_retries: int = 1  # re-runs of a candidate whose worker or node died (exceptions: never)
    poll_seconds: float = 0.2  # how often the cancel event is checked while waiting
    force_cancel: bool = False  # True kills the workers instead of interrupting the tasks
    cancel_grace_seconds: float = 5.0  # an interrupted task still running after this is killed
    worker_cache_mb: float = 2048.0  # frozen modules a worker keeps between tasks
    runtime_env: dict[str, Any] | None = None  # e.g. {"py_modules": [...]} if workers lack the package
    log_to_driver: bool = False  # forward worker stdout/stderr (quiet by default)

    def __post_init__(self) -> None:
        if self.num_cpus_per_candidate < 0 or self.num_gpus_per_candidate < 0:
            raise ValueError("resources per candidate must be >= 0")
        if self.num_cpus_per_candidate == 0 and self.num_gpus_per_candidate == 0:
            raise ValueError("a candidate needs some CPU or GPU")
        if self.max_retries < 0 or self.poll_seconds <= 0:
            raise ValueError("max_retries must be >= 0 and poll_seconds > 0")

    @property
    def threads(self) -> int:
        return self.torch_threads or max(1, int(self.num_cpus_per_candidate))


# ---- what travels ------------------------------------------------------------------------------
@dataclass
class _Part:
    """One component of a candidate path, as shipped to a worker."""

    spec: dict[str, Any]
    frozen: bool
    key: str = ""  # object-store key of a shared frozen component ("" = tensors inline)
    state: dict[str, torch.Tensor] | None = None  # initial tensors of a draft (or a derived frozen one)
    no_grad: list[str] = field(default_factory=list)  # draft parameters with requires_grad False
    id: str = ""


@dataclass
class _Data:
    """The search's labelled examples, shipped once."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    train: torch.Tensor
    holdout: torch.Tensor


@dataclass
class _CandidateTask:
    root: dict[str, Any]  # RootConfig.to_dict(): the worker rebuilds the architecture from it
    hparams: dict[str, Any]
    parts: list[_Part]
    frozen: dict[str, Any]  # key -> ObjectRef of its state dict (nested: resolved by the worker)
    data: list[Any]  # [ObjectRef of _Data] (nested, so cached workers skip the fetch)
    views: list[View]
    train: TrainConfig
    seed: int
    head_wd: float
    fit_head_first: bool
    seconds_left: float  # on the search's clock when the task was sent
    threads: int
    gpu: bool
    cache_bytes: int
    channels_last: bool


@dataclass
class _Shipped:
    """Object-store refs held for one search: data once, frozen components once each."""

    data: Any
    frozen: dict[str, Any] = field(default_factory=dict)


class RayExecutor:
    """Trains each generation's candidates as parallel Ray tasks; same results as `LocalExecutor`."""

    def __init__(
        self,
        address: str | None = None,
        num_cpus_per_candidate: float = 1.0,
        num_gpus_per_candidate: float = 0.0,
        **options: Any,
    ) -> None:
        self.cfg = RayConfig(
            address=address,
            num_cpus_per_candidate=num_cpus_per_candidate,
            num_gpus_per_candidate=num_gpus_per_candidate,
            **options,
        )
        self._ray = import_ray()
        self._owns = False
        if not self._ray.is_initialized():
            kw: dict[str, Any] = dict(
                ignore_reinit_error=True,
                logging_level=logging.WARNING,
                log_to_driver=self.cfg.log_to_driver,
                runtime_env=self.cfg.runtime_env,
            )
            if self.cfg.address is None:
                kw.update(num_cpus=self.cfg.local_num_cpus, include_dashboard=False)
            else:
                kw["address"] = self.cfg.address
            self._ray.init(**kw)
            self._owns = True
        self._remote = self._ray.remote(_train_task)
        # Keyed by the search's feature cache: one per search, gone with it.
        self._shipped: weakref.WeakKeyDictionary[FeatureCache, _Shipped] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()  # one executor may serve concurrent searches (operations)
        self.root_config: dict[str, Any] | None = None

    def close(self) -> None:
        """Drop shipped objects; shut Ray down if this executor started it."""
        with self._lock:
            self._shipped.clear()
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- driver --------------------------------------------------------------------------------
    def train(
        self, candidates: list[Candidate], ctx: TrainContext, report: Callable[[int, float], None]
    ) -> list[TrainResult | None]:
        ray = self._ray
        tasks = [self._task(c, ctx) for c in candidates]
        remote = self._remote.options(
            num_cpus=self.cfg.num_cpus_per_candidate,
            num_gpus=self.cfg.num_gpus_per_candidate,
            max_retries=self.cfg.max_retries,
            retry_exceptions=False,
        )
        refs = [remote.remote(t) for t in tasks]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[TrainResult | None] = [None] * len(refs)
        pending = list(refs)
        try:
            while pending:
                if ctx.cancel is not None and ctx.cancel.is_set():
                    raise Cancelled("the operation was cancelled")
                if ctx.clock.stopped:  # an idle round yielding: what has not finished is dropped
                    break
                ready, pending = ray.wait(pending, num_returns=1, timeout=self.cfg.poll_seconds)
                for ref in ready:
                    i = index[ref]
                    results[i] = self._collect(ref, candidates[i], i)
                    report(i, 1.0)
        finally:
            self._cancel(pending)
        return results

    def _cancel(self, pending: list[Any]) -> None:
        """Free the cluster: interrupt the tasks now, and in the background kill the workers of those
        that have not stopped after the grace period (an interrupt waits for Python code to run; a
        loaded machine once kept both workers busy for over 15 s). The caller does not wait."""
        ray = self._ray
        for ref in pending:
            ray.cancel(ref, force=self.cfg.force_cancel)
        if self.cfg.force_cancel or not pending:
            return

        def escalate() -> None:
            _, still = ray.wait(pending, num_returns=len(pending), timeout=self.cfg.cancel_grace_seconds)
            for ref in still:
                log.warning("a cancelled candidate did not stop within %.0f s; killing its worker",
                            self.cfg.cancel_grace_seconds)  # fmt: skip
                ray.cancel(ref, force=True)

        threading.Thread(target=escalate, name="munet-ray-cancel", daemon=True).start()

    def _collect(self, ref: Any, cand: Candidate, i: int) -> TrainResult | None:
        ray = self._ray
        try:
            names, states, result = ray.get(ref)
        except ray.exceptions.RayError as e:  # task raised, worker or node died, object lost
            cause = getattr(e, "cause", None) or e
            lines = str(cause).strip().splitlines()
            log.warning(
                "candidate %d of the generation failed on Ray and is dropped: %s: %s",
                i,
                type(cause).__name__,
                lines[-1] if lines else "",
            )
            log.debug("candidate failure", exc_info=e)
            return None
        drafts = cand.path.trainable()
        if names != [c.spec.name for c in drafts]:
            raise RuntimeError(f"worker trained {names}, the candidate has {[c.spec.name for c in drafts]}")
        for c, state in zip(drafts, states):
            c.module.load_state_dict(state)
        return result

    def _task(self, cand: Candidate, ctx: TrainContext) -> _CandidateTask:
        ray = self._ray
        b = ctx.batches
        if ctx.root is None:
            raise FailedPrecondition("the Ray executor needs the root config in the train context")
        with self._lock:
            shipped = self._shipped.get(b.cache)
            if shipped is None:
                data = _Data(b.cache.images, b.labels, b.num_classes, b.train, b.holdout)
                shipped = _Shipped(data=ray.put(data))
                self._shipped[b.cache] = shipped
            parts, frozen = [], {}
            for c in cand.path.components:
                spec = c.spec.to_dict()
                if c.frozen and c.id and c.id in ctx.shared_ids:
                    if c.id not in shipped.frozen:
                        shipped.frozen[c.id] = ray.put(tensors_of(c.module))
                    frozen[c.id] = shipped.frozen[c.id]
                    parts.append(_Part(spec, frozen=True, key=c.id, id=c.id))
                else:
                    no_grad = [n for n, p in c.module.named_parameters() if not p.requires_grad]
                    parts.append(
                        _Part(spec, frozen=c.frozen, state=tensors_of(c.module), no_grad=no_grad, id=c.id)
                    )
        return _CandidateTask(
            root=ctx.root,
            hparams=cand.path.hparams,
            parts=parts,
            frozen=frozen,
            data=[shipped.data],
            views=list(b.views),
            train=ctx.config,
            seed=cand.seed,
            head_wd=cand.head_wd,
            fit_head_first=cand.fit_head_first,
            seconds_left=ctx.clock.left(),
            threads=self.cfg.threads,
            gpu=self.cfg.num_gpus_per_candidate > 0,
            cache_bytes=int(self.cfg.worker_cache_mb * 2**20),
            channels_last=b.cache.channels_last,
        )


# ---- worker ------------------------------------------------------------------------------------
class _WorkerState:
    """Per worker process, reused across tasks: the architecture, the data and its feature cache,
    frozen modules."""

    def __init__(self) -> None:
        self.root_key = ""
        self.arch: Architecture | None = None
        self.data_key = ""
        self.data: _Data | None = None
        self.cache: FeatureCache | None = None
        self.frozen: OrderedDict[str, tuple[Component, int]] = OrderedDict()  # LRU, with sizes

    def architecture(self, root: dict[str, Any]) -> Architecture:
        key = repr(sorted(root.items()))
        if self.arch is None or key != self.root_key:
            # A random skeleton: only the layout and module shapes are used; every tensor is shipped.
            skeleton = RootConfig.from_dict({**root, "weights": "random"})
            self.arch, self.root_key = load_root(skeleton).arch, key
            self.frozen.clear()
        return self.arch

    def dataset(self, ray: Any, ref: Any, task: _CandidateTask, device: torch.device) -> tuple[_Data, FeatureCache]:
        if self.data is None or self.cache is None or ref.hex() != self.data_key:
            self.data = ray.get(ref)
            self.data_key = ref.hex()
            self.cache = FeatureCache(
                self.data.images, device, max_bytes=task.cache_bytes, channels_last=task.channels_last
            )
        return self.data, self.cache

    def frozen_component(
        self, ray: Any, arch: Architecture, spec: ComponentSpec, key: str, ref: Any, device: torch.device
    ) -> Component:
        ck = f"{key}@{device}"
        if ck in self.frozen:
            self.frozen.move_to_end(ck)
            return self.frozen[ck][0]
        state = ray.get(ref)
        module = arch.fresh(spec)
        module.load_state_dict(state)
        comp = Component(spec, module.to(device), frozen=True, id=key)
        self.frozen[ck] = (comp, sum(t.numel() * t.element_size() for t in state.values()))
        return comp

    def evict(self, keep: set[str], limit: int) -> None:
        total = sum(n for _, n in self.frozen.values())
        for ck in list(self.frozen):
            if total <= limit:
                break
            if ck not in keep:
                total -= self.frozen.pop(ck)[1]


_STATE = _WorkerState()


def _train_task(task: _CandidateTask) -> tuple[list[str], list[dict[str, torch.Tensor]], TrainResult]:
    """Ray task: rebuild the candidate path, train its drafts, return their tensors and the result."""
    import ray

    torch.set_num_threads(task.threads)
    keep_freed_memory()  # as the server does: a worker process is a fresh interpreter
    device = torch.device("cuda" if task.gpu and torch.cuda.is_available() else "cpu")
    arch = _STATE.architecture(task.root)
    data, cache = _STATE.dataset(ray, task.data[0], task, device)
    comps = []
    for part in task.parts:
        spec = ComponentSpec.from_dict(part.spec)
        if part.key:
            comps.append(_STATE.frozen_component(ray, arch, spec, part.key, task.frozen[part.key], device))
            continue
        module = arch.fresh(spec)
        assert part.state is not None
        module.load_state_dict(part.state)
        for n, p in module.named_parameters():  # as on the driver (a frozen copy stays frozen)
            p.requires_grad_(n not in part.no_grad)
        comps.append(Component(spec, module.to(device), frozen=part.frozen, id=part.id))
    _STATE.evict({f"{p.key}@{device}" for p in task.parts if p.key}, task.cache_bytes)
    path = TaskPath(task="", hparams=task.hparams, components=comps)
    batches = Batches(cache, data.labels, data.num_classes, data.train, data.holdout, task.views)
    trainer = CandidateTrainer(
        path,
        arch,
        batches,
        task.train,
        seed=task.seed,
        head_wd=task.head_wd,
        fit_head_first=task.fit_head_first,
        clock=Clock(task.seconds_left),
    )
    result = trainer.run()
    drafts = path.trainable()
    return [c.spec.name for c in drafts], [tensors_of(c.module) for c in drafts], result


__all__ = ["RayConfig", "RayExecutor", "import_ray"]
