"""Creating a child path from a parent: the muNet mutation actions (MUNET_METHOD §1-3).

- layer cloning: each inherited component is copied (trainable) with probability μ, else referenced
  frozen; `norm` is always cloned when mutating; a component the parent is still training is
  always copied (parents are never modified);
- layer insertion: a zero-initialised residual adapter before block i, probability μ per position;
- layer removal / re-addition: `num_layers` steps by ±1; re-added layers come from the nearest
  ancestor that has them, ultimately the root;
- hyperparameter change: each `opt_*`, `num_layers` and `adapter_dim` steps to a neighbour with
  probability μ; `ds_*` keys are sampled once per generation (shared input pipeline).

Policies reuse the same machinery for the baselines: `finetune` clones everything, `linear_probe`
clones nothing, `adapters` puts an adapter at every layer; all three keep the architecture fixed.

With `learned_mu` (µ2Net+), every action has its own probability stored in the path's hparams as
`_mu_|<action>`; before each use it takes a neighbour step itself with probability μ, so useful
mutation rates are inherited and evolve.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Any

from munet_server.model.arch import Architecture
from munet_server.model.components import Component
from munet_server.model.hparams import DS_KEYS, OPT_KEYS, SearchSpace, mu_step
from munet_server.model.path import Path

POLICIES = ("munet", "finetune", "linear_probe", "adapters")


@dataclass(frozen=True)
class MutationConfig:
    mu: float = 0.1  # muNet's mutation probability on every benchmark
    learned_mu: bool = False  # µ2Net+ per-action learned mutation probability
    policy: str = "munet"
    force_clone: tuple[str, ...] = ("norm",)  # encoder_norm is always fine-tuned
    adapter_dim: int = 32  # for the `adapters` baseline

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if not 0.0 <= self.mu <= 1.0:
            raise ValueError(f"mu must be in [0, 1], got {self.mu}")


class Mutator:
    def __init__(self, arch: Architecture, space: SearchSpace, cfg: MutationConfig, rng: random.Random):
        self.arch = arch
        self.space = space
        self.cfg = cfg
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
        if self.cfg.policy == "munet":
            for k in ("num_layers", "adapter_dim"):
                if self._fires(f"hp:{k}", hp):
                    hp[k] = self.space.step(k, hp[k], self.rng)
            adapters = {int(i) for i in hp.get("adapters", [])}
            for i in range(int(hp["num_layers"])):
                if i not in adapters and self._fires(f"add:adapter_{i}", hp):
                    adapters.add(i)
            hp["adapters"] = sorted(a for a in adapters if a < int(hp["num_layers"]))
        hp.update(ds)
        return self.fix_architecture(hp)

    def fix_architecture(self, hp: dict[str, Any]) -> dict[str, Any]:
        """Baselines keep every layer; `adapters` puts one before each block."""
        if self.cfg.policy != "munet":
            hp["num_layers"] = self.arch.num_blocks
            if self.cfg.policy == "adapters":
                hp["adapter_dim"] = self.cfg.adapter_dim
                hp["adapters"] = list(range(self.arch.num_blocks))
            else:
                hp["adapters"] = []
        return hp

    # ---- components ----------------------------------------------------------------------------
    def _clone(self, c: Component, mutate: bool, hp: dict[str, Any]) -> bool:
        if not c.frozen:
            return True  # still being trained by this task: children always get a copy
        if not mutate:
            return False
        policy = self.cfg.policy
        if policy == "finetune":
            return True
        if policy == "linear_probe":
            return False
        if c.spec.name in self.cfg.force_clone:
            return True
        if policy == "adapters":
            return False
        return self._fires(f"clone:{c.spec.name}", hp)

    def make_child(self, parent: Path, task: str, num_classes: int, hp: dict[str, Any], mutate: bool) -> Path:
        """Build the child's components for hparams `hp` by walking the parent's ancestors."""
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
                comps.append(Component(spec, self.arch.fresh(spec), frozen=False))
            elif self._clone(src, mutate, hp):
                comps.append(src.clone())
            else:
                comps.append(src)
        return Path(task=task, hparams=hp, components=comps, parent=parent)
