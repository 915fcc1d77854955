"""Creating a child path from a parent: the muNet mutation actions (docs/METHOD.md §1-3), and the
policies that reuse them for the baselines.

- layer cloning: each inherited component is copied (trainable) with probability μ, else referenced
  frozen; `norm` is always cloned when mutating; a component the parent is still training is
  always copied (parents are never modified);
- layer insertion: a zero-initialised residual adapter before block i, probability μ per position;
- layer removal / re-addition: `num_layers` steps by ±1; re-added layers come from the nearest
  ancestor that has them, ultimately the root;
- hyperparameter change: each `opt_*`, `num_layers` and `adapter_dim` steps to a neighbour with
  probability μ; `ds_*` keys are sampled once per generation (shared input pipeline).

A compute floor (`MutationConfig.clone_floor`) keeps the early, expensive, parameter-light layers
frozen on a CPU: no cloning and no adapters below that block, so every candidate's frozen prefix
can be cached (docs/LEARNING.md). With `learned_mu` (µ2Net+), every action has its own probability
stored in the path's hparams as `_mu_|<action>`; before each use it takes a neighbour step itself
with probability μ, so useful mutation rates are inherited and evolve.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from enum import Enum
from typing import Any

from munet_server.errors import InvalidArgument
from munet_server.model.arch import Architecture
from munet_server.model.components import Component, content_id, tensors_of
from munet_server.model.hparams import DS_KEYS, OPT_KEYS, SearchSpace, mu_step
from munet_server.model.path import TaskPath


class FirstGeneration(str, Enum):
    """What a search trains right after the probes."""

    STRUCTURED = "structured"  # muNet's actions from the best probe: top blocks cloned, adapters, ...
    FINETUNE = "finetune"  # a fine-tuning baseline's learning-rate sweep
    ADAPTERS = "adapters"  # an adapter baseline's learning-rate sweep
    NONE = ""  # nothing: the probes only


@dataclass(frozen=True)
class Policy:
    """How a search builds candidates: muNet itself, or a baseline run through the same machinery
    (the official code's `exp_config_set_baseline_*`: baselines are mutation settings)."""

    name: str
    description: str
    cross_task_seeds: bool = True  # other tasks' paths are seeds (else the root only)
    first_generation: FirstGeneration = FirstGeneration.STRUCTURED
    mutate_architecture: bool = True  # later generations clone, insert and remove layers
    clone_prob: float | None = None  # None: μ per component; 1.0: every component (fine-tuning)
    force_clone: tuple[str, ...] = ("norm",)  # muNet's always fine-tuned `encoder_norm`
    adapters_everywhere: bool = False
    evolve: bool = True  # generations after the first (else: probes and the first generation only)


POLICIES: dict[str, Policy] = {}


def register_policy(policy: Policy) -> Policy:
    if policy.name in POLICIES:
        raise ValueError(f"policy {policy.name!r} is already registered")
    POLICIES[policy.name] = policy
    return policy


register_policy(Policy("munet", "muNet: probes of every seed, structured first generation, then evolution"))
register_policy(
    Policy(
        "finetune",
        "fine-tune every layer of the root (a standard transfer baseline)",
        cross_task_seeds=False,
        first_generation=FirstGeneration.FINETUNE,
        mutate_architecture=False,
        clone_prob=1.0,
    )
)
register_policy(
    Policy(
        "linear_probe",
        "a converged linear head on the frozen root",
        cross_task_seeds=False,
        first_generation=FirstGeneration.NONE,
        mutate_architecture=False,
        clone_prob=0.0,
        force_clone=(),
        evolve=False,
    )
)
register_policy(
    Policy(
        "adapters",
        "residual adapters before every block, plus the final norm and the head",
        cross_task_seeds=False,
        first_generation=FirstGeneration.ADAPTERS,
        mutate_architecture=False,
        clone_prob=0.0,
        adapters_everywhere=True,
    )
)


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name or "munet"]
    except KeyError:
        raise InvalidArgument(f"policy {name!r} is not one of {', '.join(POLICIES)}") from None


@dataclass(frozen=True)
class MutationConfig:
    mu: float = 0.1  # muNet's mutation probability on every benchmark
    learned_mu: bool = False  # µ2Net+ per-action learned mutation probability
    policy: str = "munet"
    adapter_dim: int = 32  # for the `adapters` baseline
    clone_floor: int = 0  # blocks below this index are never cloned or adapted
    clone_stem: bool = True  # the stem (and ViT position embedding) may be cloned

    def __post_init__(self) -> None:
        get_policy(self.policy)
        if not 0.0 <= self.mu <= 1.0:
            raise InvalidArgument(f"mu must be in [0, 1], got {self.mu}")

    @property
    def rules(self) -> Policy:
        return get_policy(self.policy)


class Mutator:
    def __init__(self, arch: Architecture, space: SearchSpace, cfg: MutationConfig, rng: random.Random):
        self.arch = arch
        self.space = space
        self.cfg = cfg
        self.policy = cfg.rules
        self.rng = rng

    # ---- probabilities -------------------------------------------------------------------------
    def _p(self, action: str, hp: dict[str, Any]) -> float:
        if not self.cfg.learned_mu:
            return self.cfg.mu
        key = f"_mu_|{action}"
        mu = float(hp.get(key, self.cfg.mu))
        if self.rng.random() < mu:
            mu = mu_step(mu, self.rng)
        hp[key] = mu
        return mu

    def _fires(self, action: str, hp: dict[str, Any]) -> bool:
        return self.rng.random() < self._p(action, hp)

    def below_floor(self, name: str) -> bool:
        """Layers the compute floor keeps frozen: the stem and blocks before `clone_floor`."""
        floor = self.cfg.clone_floor
        if name in ("embed", "posembed"):
            return floor > 0 or not self.cfg.clone_stem
        kind, _, index = name.rpartition("_")
        return kind in ("block", "adapter") and int(index) < floor

    # ---- hyperparameters -----------------------------------------------------------------------
    def sample_data_hparams(self, best: dict[str, Any]) -> dict[str, Any]:
        """Data hparams for one generation: the current best path's, each stepped with prob μ."""
        ds = {k: best[k] for k in DS_KEYS}
        for k in DS_KEYS:
            if self.rng.random() < self.cfg.mu:
                ds[k] = self.space.step(k, ds[k], self.rng)
        return ds

    def mutate_hparams(self, parent_hp: dict[str, Any], ds: dict[str, Any]) -> dict[str, Any]:
        hp = copy.deepcopy(parent_hp)
        for k in OPT_KEYS:
            if self._fires(f"hp:{k}", hp):
                hp[k] = self.space.step(k, hp[k], self.rng)
        if self.policy.mutate_architecture:
            for k in ("num_layers", "adapter_dim"):
                if self._fires(f"hp:{k}", hp):
                    hp[k] = self.space.step(k, hp[k], self.rng)
            adapters = {int(i) for i in hp.get("adapters", [])}
            for i in range(int(hp["num_layers"])):
                if i not in adapters and not self.below_floor(f"adapter_{i}") and self._fires(f"add:adapter_{i}", hp):
                    adapters.add(i)
            hp["adapters"] = sorted(a for a in adapters if a < int(hp["num_layers"]))
        hp.update(ds)
        return self.fix_architecture(hp)

    def fix_architecture(self, hp: dict[str, Any]) -> dict[str, Any]:
        """Baselines keep every layer; `adapters` puts one before each block."""
        if not self.policy.mutate_architecture:
            hp["num_layers"] = self.arch.num_blocks
            if self.policy.adapters_everywhere:
                hp["adapter_dim"] = self.cfg.adapter_dim
                hp["adapters"] = list(range(self.arch.num_blocks))
            else:
                hp["adapters"] = []
        return hp

    # ---- components ----------------------------------------------------------------------------
    def _clone(self, c: Component, mutate: bool, hp: dict[str, Any], forced: tuple[str, ...]) -> bool:
        if not c.frozen:
            return True  # still being trained by this task: children always get a copy
        if not mutate:
            return False
        p = self.policy
        if p.clone_prob is not None and p.clone_prob >= 1.0:
            return True
        if c.spec.name in forced:
            return True
        if p.clone_prob is not None or self.below_floor(c.spec.name):
            return False
        return self._fires(f"clone:{c.spec.name}", hp)

    def make_child(
        self,
        parent: TaskPath,
        task: str,
        num_classes: int,
        hp: dict[str, Any],
        mutate: bool,
        clone: tuple[str, ...] = (),
    ) -> TaskPath:
        """Build the child's components for hparams `hp` by walking the parent's ancestors.

        `clone` names components to clone in addition to the policy's forced ones (the structured
        first generation). Without mutation (a seed's probe) a component no ancestor holds at that
        shape, such as a position embedding resampled to a new image size, is created frozen: it is
        a deterministic function of the root's, and the probe then trains its head alone."""
        forced = (*self.policy.force_clone, *clone)
        comps: list[Component] = []
        for spec in self.arch.layout(hp, num_classes):
            src: Component | None = None
            for anc in parent.ancestors():
                if spec.kind == "head" and anc.task != task:
                    continue  # another task's head is never inherited
                c = anc.component(spec.name)
                if c is not None and c.spec == spec:
                    src = c
                    break
            if src is None:
                module = self.arch.fresh(spec)
                if not mutate and spec.kind == "posembed":
                    comps.append(Component(spec, module, frozen=True, id=content_id(spec, tensors_of(module))))
                else:
                    comps.append(Component(spec, module, frozen=False))
            elif self._clone(src, mutate, hp, forced):
                comps.append(src.clone())
            else:
                comps.append(src)
        return TaskPath(task=task, hparams=hp, components=comps, parent=parent)
