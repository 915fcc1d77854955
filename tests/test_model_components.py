"""Root decomposition and mutation semantics on real timm models."""

from __future__ import annotations

import random

import pytest
import timm
import torch

from munet_server.evolve.mutations import MutationConfig, Mutator
from munet_server.evolve.scoring import ScoreConfig, accounted_params, score
from munet_server.model.components import Component, ComponentSpec, content_id, tensors_of
from munet_server.model.hparams import SearchSpace
from munet_server.model.layers import ConvAdapter, TokenAdapter
from munet_server.model.path import TaskPath
from munet_server.model.root import RootConfig, WeightsMismatch, load_root


def _root_path(root, space, size):
    arch = root.arch
    comps = [Component(s, arch.root_modules[s.name], frozen=True).freeze("root") for s in arch.root_specs()]
    return TaskPath(task="root", hparams=space.defaults(size), components=comps)


def _setup(cfg: RootConfig):
    root = load_root(cfg)
    space = SearchSpace.for_root(
        root.arch.num_blocks, root.arch.patch_multiple, cfg.min_image_size, cfg.max_image_size
    )
    return root, space, _root_path(root, space, cfg.image_size)


@pytest.mark.parametrize("which", ["vit", "cnn"])
def test_root_path_computes_what_timm_computes(which, tiny_vit):
    cfg = tiny_vit if which == "vit" else RootConfig(image_size=64)
    root, _space, rp = _setup(cfg)
    x = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    with torch.no_grad():
        feats = root.arch.forward([c.module for c in rp.components] + [torch.nn.Identity()], x)
        if feats.dim() == 4:
            feats = feats.mean((2, 3))
        ref = root.model.forward_head(root.model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(feats, ref, rtol=0, atol=1e-5)


def test_offline_root_is_pretrained_and_strict(tmp_path):
    root = load_root(RootConfig())
    assert root.family == "cnn" and root.arch.num_blocks == 16
    assert root.weights_sha256.startswith("579344248a93")  # the packaged Lite0 checkpoint
    bad = tmp_path / "bad.pth"
    sd = timm.create_model("vit_tiny_patch16_224", num_classes=0, depth=2).state_dict()
    torch.save(sd, bad)
    with pytest.raises(WeightsMismatch, match="missing"):
        load_root(RootConfig(weights=str(bad)))


def test_vit_weights_file_roundtrip(tmp_path, tiny_vit):
    from safetensors.torch import save_file

    src = timm.create_model(tiny_vit.model_name, num_classes=0, **tiny_vit.model_kwargs)
    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, f)
    cfg = RootConfig(**{**tiny_vit.to_dict(), "weights": str(f)})
    root = load_root(cfg)
    torch.testing.assert_close(
        root.model.blocks[1].mlp.fc1.weight, src.blocks[1].mlp.fc1.weight, rtol=0, atol=0
    )


@pytest.mark.parametrize("adapter", [TokenAdapter(64, 8), ConvAdapter(16, 8)])
def test_inserted_adapter_is_identity(adapter):
    x = torch.randn(3, 5, 64) if isinstance(adapter, TokenAdapter) else torch.randn(3, 16, 4, 4)
    adapter.eval()
    assert torch.equal(adapter(x), x)


def test_mutations_clone_insert_remove(tiny_vit):
    root, space, rp = _setup(tiny_vit)
    rng = random.Random(0)
    m = Mutator(root.arch, space, MutationConfig(mu=0.0), rng)
    # unmutated seed child: every inherited component referenced frozen, new zero head
    probe = m.make_child(rp, "t", 7, dict(rp.hparams), mutate=False)
    assert [c.spec.name for c in probe.trainable()] == ["head"]
    head = probe.component("head")
    assert head.spec.get("num_classes") == 7 and torch.count_nonzero(head.module.fc.weight) == 0
    assert all(a is b for a, b in zip(probe.components[:-1], rp.components))
    # mutate with mu=0: only the forced `norm` clone and the head train
    child = m.make_child(rp, "t", 7, dict(rp.hparams), mutate=True)
    assert sorted(c.spec.name for c in child.trainable()) == ["head", "norm"]
    # insertion + removal: adapter before block 1 with num_layers=2, then drop to 1 layer
    hp = {**rp.hparams, "adapters": [1]}
    with_adapter = m.make_child(rp, "t", 7, hp, mutate=False)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            with_adapter.build(root.arch)(x), probe.build(root.arch)(x), rtol=0, atol=0
        )
    shorter = m.make_child(with_adapter, "t", 7, {**hp, "num_layers": 1, "adapters": []}, mutate=False)
    assert [c.spec.name for c in shorter.components] == ["embed", "posembed", "block_0", "norm", "head"]
    # the finetune baseline clones everything; the parent's tensors stay untouched after training
    ft = Mutator(root.arch, space, MutationConfig(policy="finetune"), rng).make_child(
        rp, "t", 7, hp, mutate=True
    )
    assert all(not c.frozen for c in ft.components)


def test_training_a_child_never_changes_frozen_tensors(tiny_vit):
    root, space, rp = _setup(tiny_vit)
    before = {c.id: {k: v.clone() for k, v in tensors_of(c.module).items()} for c in rp.components}
    m = Mutator(root.arch, space, MutationConfig(mu=0.5), random.Random(1))
    child = m.make_child(rp, "t", 3, dict(rp.hparams), mutate=True)
    model = child.build(root.arch).train()
    opt = torch.optim.SGD(child.trainable_parameters(), lr=0.5)
    for _ in range(3):
        loss = model(torch.rand(4, 3, 32, 32)).logsumexp(-1).mean() + sum(
            p.sum() for p in child.trainable_parameters()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    for c in rp.components:
        for k, v in tensors_of(c.module).items():
            assert torch.equal(v, before[c.id][k]), f"{c.spec.name}.{k} changed"
        assert content_id(c.spec, tensors_of(c.module)) == c.id
    # train() switched the drafts' every module and left every frozen module in eval mode
    frozen = [c for c in child.components if c.frozen]
    assert frozen and all(not m.training for c in frozen for m in c.module.modules())
    assert all(m.training for c in child.trainable() for m in c.module.modules())
    model.eval()
    assert not any(m.training for c in child.components for m in c.module.modules())


def test_a_path_over_modules_left_in_train_mode_puts_them_in_eval(tiny_vit):
    """Frozen modules already in eval are skipped (start-up with 1,000 tasks); one that is not, is switched."""
    root, _space, rp = _setup(tiny_vit)
    for c in rp.components:
        c.module.train()
    rp.build(root.arch)
    assert not any(m.training for c in rp.components for m in c.module.modules())


def test_posembed_interpolation(tiny_vit):
    root, space, rp = _setup(tiny_vit)
    hp = {**rp.hparams, "ds_image_size": 64}
    child = Mutator(root.arch, space, MutationConfig(mu=0.0), random.Random(0)).make_child(
        rp, "t", 2, hp, mutate=False
    )
    pos = child.component("posembed")
    # The probe's resampled embedding is a fixed function of the root's: frozen, with a content id.
    assert pos.frozen and pos.id and pos.spec.get("grid") == (8, 8)
    mutated = Mutator(root.arch, space, MutationConfig(mu=0.0), random.Random(0)).make_child(
        rp, "t", 2, hp, mutate=True
    )
    assert not mutated.component("posembed").frozen  # a mutated child trains its own
    assert pos.module.table.shape == (1, 1 + 64, 64)
    # the class-token slot is kept as is
    torch.testing.assert_close(pos.module.table[:, 0], rp.component("posembed").module.table[:, 0])
    with torch.no_grad():
        assert child.build(root.arch)(torch.rand(1, 3, 64, 64)).shape == (1, 2)


def test_hparam_steps_are_neighbours(tiny_vit):
    _root, space, _ = _setup(tiny_vit)
    rng = random.Random(0)
    lrs = list(space.lists["opt_lr"])
    for _ in range(50):
        v = rng.choice(lrs)
        assert abs(lrs.index(space.step("opt_lr", v, rng)) - lrs.index(v)) <= 1
    assert space.step("opt_lr", lrs[0], random.Random(3)) in lrs[:2]


def test_score_accounting_with_shared_components():
    spec = ComponentSpec.make("block_0", "block")
    shared = Component(spec, torch.nn.Linear(10, 10), frozen=True)  # 110 params
    own = Component(ComponentSpec.make("head", "head"), torch.nn.Linear(10, 2), frozen=False)  # 22 params
    users = {id(shared): 1}  # one committed task already uses the shared block
    p = accounted_params([shared, own], lambda c: users.get(id(c), 0))
    assert p == pytest.approx(110 / 2 + 22)
    cfg = ScoreConfig(scale_factor=0.5, root_params=132)
    assert score(0.8, p, cfg) == pytest.approx(0.8 * 0.5 ** (77 / 132))
    assert score(0.8, p, ScoreConfig(root_params=132)) == 0.8  # s = 1: no penalty
