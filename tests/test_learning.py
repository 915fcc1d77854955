"""The learning engine's parts: converged probe heads, the feature cache, frozen BatchNorm statistics,
the refit, and the time budget (docs/LEARNING.md)."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from munet_server.data.transforms import preprocess
from munet_server.evolve.budget import Budget
from munet_server.evolve.features import FeatureCache, View, pool
from munet_server.evolve.heads import cross_validate, fit_head, stratified_folds
from munet_server.evolve.mutations import MutationConfig, Mutator
from munet_server.evolve.search import EvolutionSearch, Member, OutOfTime, SearchConfig
from munet_server.evolve.train import Batches, CandidateTrainer, TrainConfig, split_path
from munet_server.model.root_config import RootConfig
from munet_server.store.store import Store
from munet_server.system import MunetSystem
from tests.conftest import digits_dataset
from tests.helpers import TINY_BUDGET, learn


@pytest.fixture(scope="module")
def vit_system(tmp_path_factory, tiny_vit) -> MunetSystem:
    return MunetSystem.open(Store(tmp_path_factory.mktemp("learning") / "s"), tiny_vit, device="cpu")


@pytest.fixture(scope="module")
def cnn_system(tmp_path_factory) -> MunetSystem:
    """A small EfficientNet-Lite0 with random weights: a CNN root with BatchNorm everywhere."""
    root = RootConfig(weights="random", image_size=32, min_image_size=32, max_image_size=32)
    return MunetSystem.open(Store(tmp_path_factory.mktemp("cnn") / "s"), root, device="cpu")


def _probe_features(system: MunetSystem, images: torch.Tensor) -> torch.Tensor:
    rp = system.root_path
    split = split_path(
        Mutator(system.arch, system.space, MutationConfig(), __import__("random").Random(0)).make_child(
            rp, "t", 10, dict(rp.hparams), mutate=False
        ),
        system.arch,
    )
    cache = FeatureCache(images, system.device)
    return cache.get(split.prefix, split.prefix_ids, View(int(rp.hparams["ds_image_size"])), pooled=True)


def test_probe_head_is_a_converged_logistic_regression(vit_system):
    """Our L-BFGS head and scikit-learn's logistic regression at the same regularisation agree."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    ds = digits_dataset()
    x = _probe_features(vit_system, ds.images).double()
    y = ds.labels
    train, test = torch.arange(len(y)) % 4 != 0, torch.arange(len(y)) % 4 == 0
    wd = 1e-2
    ours = fit_head(x[train], y[train], 10, wd, max_iter=500)
    n = int(train.sum())
    scaler = StandardScaler().fit(x[train].numpy())
    ref = LogisticRegression(C=1.0 / (n * wd), max_iter=5000, tol=1e-8).fit(scaler.transform(x[train].numpy()), y[train].numpy())
    a = ours.logits(x[test]).argmax(1).numpy()
    b = ref.predict(scaler.transform(x[test].numpy()))
    acc_ours = float((a == y[test].numpy()).mean())
    acc_ref = float((b == y[test].numpy()).mean())
    assert abs(acc_ours - acc_ref) <= 0.01, (acc_ours, acc_ref)
    assert (a == b).mean() >= 0.98  # the same classifier, not just the same score
    # Cross-validation picks a decay and reports an out-of-fold estimate over every image.
    cv = cross_validate([x], y, 10, stratified_folds(y, 5, 0))
    assert cv.weight_decay in cv.per_decay and 0.5 < cv.evaluation.accuracy <= 1.0


def test_head_fit_in_the_row_space_is_the_full_fit():
    """Fewer images than features: fitting on the coordinates of the rows' span gives the same head
    as fitting every feature (the optimum and the iterates lie in that span)."""
    from munet_server.evolve.heads import _fit_in_row_space, row_space

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(60, 200, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (60,), generator=gen)
    q = row_space(z)
    assert q is not None and q.shape == (200, 60)
    assert row_space(z[:, :50]) is None  # more rows than features: nothing to save
    full = _fit_in_row_space(z, y, 4, 1e-2, None, 500, None)
    reduced = _fit_in_row_space(z, y, 4, 1e-2, None, 500, q)
    a, b = z @ full[0].T + full[1], z @ reduced[0].T + reduced[1]
    assert torch.allclose(a, b, atol=1e-2)  # both stop at L-BFGS's gradient tolerance
    assert torch.allclose(full[0], reduced[0], atol=1e-3) and torch.equal(a.argmax(1), b.argmax(1))


def test_cached_forward_equals_the_uncached_path(vit_system):
    images = digits_dataset().images[:48]
    system = vit_system
    rp = system.root_path
    m = Mutator(system.arch, system.space, MutationConfig(mu=0.0), __import__("random").Random(0))
    child = m.make_child(rp, "t", 10, dict(rp.hparams), mutate=True)  # norm and head train: block outputs cached
    split = split_path(child, system.arch)
    assert split.prefix and split.suffix
    cache = FeatureCache(images, system.device)
    size = int(rp.hparams["ds_image_size"])
    with torch.no_grad():
        held = cache.get(split.prefix, split.prefix_ids, View(size))
        cached = held
        for _, fn in split.suffix:
            cached = fn(cached)
        direct = child.build(system.arch).eval()(preprocess(images, size))
    assert torch.equal(cached, direct)
    # The longer prefix continues from the shorter one the cache already holds, with the same result.
    again = cache.get(split.prefix, split.prefix_ids, View(size))
    assert again is held and cache.hits == 1
    flipped = cache.get(split.prefix, split.prefix_ids, View(size, "flip"))
    assert not torch.equal(flipped, held)


def test_draft_batchnorm_statistics_do_not_move(cnn_system):
    """Cloned CNN blocks train their weights, never their running statistics (batches of a few small
    images would overwrite them: measured in docs/LEARNING.md)."""
    system = cnn_system
    ds = digits_dataset(classes=3, per_class=20)
    rp = system.root_path
    last = f"block_{system.arch.num_blocks - 1}"
    m = Mutator(system.arch, system.space, MutationConfig(mu=0.0), __import__("random").Random(0))
    child = m.make_child(rp, "t", 3, dict(rp.hparams), mutate=True, clone=(last,))
    block = child.component(last)
    bns = [mod for mod in block.module.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    before = [(b.running_mean.clone(), b.running_var.clone()) for b in bns]
    weights = [p.detach().clone() for p in block.module.parameters()]
    idx = torch.arange(len(ds))
    data = Batches(FeatureCache(ds.images, system.device), ds.labels, 3, idx[idx % 4 != 0], idx[idx % 4 == 0],
                   [View(32), View(32, "flip")])  # fmt: skip
    result = CandidateTrainer(child, system.arch, data, TrainConfig(epochs=3), seed=0, head_wd=1e-3).run()
    assert result.steps > 0 and result.evaluation is not None
    for b, (mean, var) in zip(bns, before):
        assert torch.equal(b.running_mean, mean) and torch.equal(b.running_var, var)
    assert any(not torch.equal(a, p) for a, p in zip(weights, block.module.parameters()))


def test_refit_changes_the_winner_and_no_other_task(vit_system, monkeypatch):
    system = vit_system
    learn(system, "first", digits_dataset(classes=4), generations=0)
    golden = system.tasks["first"].record.golden_digest
    snapshots = []
    real = EvolutionSearch._refit

    def spy(self, member):
        snapshots.append([t.clone() for c in member.path.trainable() for t in c.module.state_dict().values()])
        return real(self, member)

    monkeypatch.setattr(EvolutionSearch, "_refit", spy)
    learned = learn(system, "second", digits_dataset(classes=6), seed=3)
    committed = [
        t for c in learned.result.best.components if c.owner == "second" for t in c.module.state_dict().values()
    ]
    assert committed and len(snapshots) == 1
    # Refitted on the holdout images too: the committed tensors are not the candidate that was validated.
    assert any(not torch.equal(a, b) for a, b in zip(snapshots[0], committed) if a.shape == b.shape)
    assert system.tasks["first"].record.golden_digest == golden and system.verify_task("first")
    assert system.verify_task("second")


def test_a_trained_winner_is_confirmed_on_images_the_search_did_not_select_on(vit_system, monkeypatch):
    """The holdout picks the luckiest of many candidates, so a trained winner replaces the probe only
    after both are retrained fold by fold and judged on training-part images: never on the holdout,
    never by a model that trained on the image; the committed estimate is that judgement's."""
    ds = digits_dataset(classes=6)
    search = EvolutionSearch(vit_system, "confirmed", ds, SearchConfig(budget=Budget(**TINY_BUDGET), seed=1))
    search._probe_generation()
    search._end_generation()
    candidates = search._first_generation()
    for c in candidates:
        c.parent_member = None  # every trained candidate joins the population, better or not
    search._train_generation(candidates)
    trained = max((m for m in search.population if m.kind == "trained"), key=lambda m: m.key())
    probe = max(search.probes, key=lambda m: m.key())
    # A trained parent's children repeat its epochs when confirmed: with no time left they are not drawn.
    assert search._finishable(trained, left=1e6) and not search._finishable(trained, left=0.0)
    assert search._finishable(probe, left=0.0)
    # Its set-up (LP-FT head fit, prefix cache) is measured apart and paid once per retraining, not
    # once per epoch of the lineage: the finishing estimate grows by set-up-free epochs.
    assert 0 < trained.setup_seconds < trained.seconds
    assert search._epoch_seconds(trained) < trained.seconds / trained.epochs_run
    slope = search._finish_seconds(trained, 11) - search._finish_seconds(trained, 10)
    assert slope == pytest.approx(search._finish_scale() * search._epoch_seconds(trained))
    fits, judged = [], []
    real_fit, real_correct = EvolutionSearch._fit, EvolutionSearch._correct
    monkeypatch.setattr(
        EvolutionSearch, "_fit", lambda self, m, idx, *a: fits.append((m.kind, idx)) or real_fit(self, m, idx, *a)
    )
    monkeypatch.setattr(
        EvolutionSearch,
        "_correct",
        lambda self, m, idx: judged.append((m.kind, idx)) or real_correct(self, m, idx),
    )
    # A judgement whose first fold would not end in time is refused before it trains anything (by
    # the recipe's known pace), rather than run to the budget's end to learn it.
    fold_seconds = search._recipe_seconds(trained) * (1 - 1 / search.cfg.confirm_folds)
    with pytest.raises(OutOfTime):
        search._judge(trained, ends_by=time.monotonic() + 0.5 * fold_seconds)
    assert not fits
    conf = search._confirm(trained, probe)
    assert len(fits) == len(judged) == 2 * search.cfg.confirm_folds
    for (kind_f, trained_on), (kind_j, seen) in zip(fits, judged):
        assert kind_f == kind_j
        assert not set(seen.tolist()) & set(trained_on.tolist())  # never judged by a model trained on it
        assert not set(seen.tolist()) & set(search.holdout_idx.tolist())  # nor on the selection images
        assert set(trained_on.tolist()) | set(seen.tolist()) == set(range(len(ds)))
    assert (
        sorted(torch.cat([idx for k, idx in judged if k == "trained"]).tolist()) == search.train_idx.tolist()
    )
    assert conf.size == len(search.train_idx) and conf.wins + conf.losses <= conf.size
    assert conf.kept == (
        search._score(trained.path, conf.trained_accuracy) > search._score(probe.path, conf.probe_accuracy)
    )


def test_a_child_that_trains_only_its_head_is_fitted_as_a_probe(vit_system):
    """SGD on a head alone only moves it off the converged fit (and the best of its checkpoints on the
    holdout flatters it), so such a child gets its head by L-BFGS like a probe, with CV weight decay,
    and trains nothing."""
    ds = digits_dataset(classes=5)
    search = EvolutionSearch(vit_system, "headonly", ds, SearchConfig(budget=Budget(**TINY_BUDGET), seed=1))
    search._probe_generation()
    search._end_generation()
    probe = max(search.probes, key=lambda m: m.key())
    child = search.mutator.make_child(probe.path, "headonly", ds.num_classes, dict(probe.path.hparams), mutate=False)
    assert [c.spec.name for c in child.trainable()] == ["head"]
    before = len(search.probes)
    search._train_generation([search._candidate(child, probe.path, probe, mutated=True)])
    assert search.steps == 0 and len(search.probes) == before + 1
    m = search.probes[-1]
    assert m.path is child and m.kind == "probe" and m in search.population and m.cv is not None
    # The same path and views as its parent probe: the same converged head, the same holdout score.
    assert m.head_wd == probe.head_wd and m.evaluation == probe.evaluation
    torch.testing.assert_close(child.components[-1].module.fc.weight, probe.path.components[-1].module.fc.weight)


def force_a_trained_winner(monkeypatch) -> None:
    """Every child joins the population and a trained path is the winner and the finalist, so that
    the confirmation (and the refit of a trained path) runs even on a tiny root."""
    real_train, real_best = EvolutionSearch._train_generation, EvolutionSearch.best

    def accept_all(self, candidates):
        for c in candidates:
            c.parent_member = None
        return real_train(self, candidates)

    def prefer_trained(self):
        trained = [m for m in self.population if m.kind == "trained"]
        return max(trained, key=Member.key) if trained else real_best(self)

    monkeypatch.setattr(EvolutionSearch, "_train_generation", accept_all)
    monkeypatch.setattr(EvolutionSearch, "best", prefer_trained)
    monkeypatch.setattr(EvolutionSearch, "_finalist", lambda self: prefer_trained(self) if self.probes else None)


def test_the_committed_estimate_is_the_confirmations(vit_system, monkeypatch):
    """Whichever path the confirmation keeps, the task's validation estimate is the confirmation's."""
    force_a_trained_winner(monkeypatch)
    ds = digits_dataset(classes=5, per_class=60)
    learned = learn(vit_system, "estimated", ds, seed=2)
    conf, m = learned.result.confirmation, learned.record.metrics
    assert conf is not None and conf.size == len(ds) - len(learned.result.holdout_idx)
    assert m["holdout_size"] == conf.size and m["confirmation"]["kept"] == conf.kept
    kept = conf.kept and not m["refit_failed"]  # a refit below its estimate gives way to the probe
    assert m["validation_accuracy"] == (conf.trained_accuracy if kept else conf.probe_accuracy)
    assert m["kind"] == ("trained" if kept else "probe")
    assert m["gain_over_probe"] == m["validation_accuracy"] - conf.probe_accuracy
    assert m["selection_holdout_accuracy"] == learned.result.member.evaluation.accuracy


def test_a_winner_too_late_to_confirm_gives_way_to_the_probe(vit_system, monkeypatch):
    """A trained path is committed only when confirmed: when the budget has no time left to confirm it
    (here: the clock by which judging must end has just passed), the probe is committed, in time."""
    force_a_trained_winner(monkeypatch)
    real_confirm = EvolutionSearch._confirm
    monkeypatch.setattr(  # the judgement must end 10 ms from when it starts: too soon for a retraining
        EvolutionSearch, "_confirm", lambda self, t, p, ends_by=None: real_confirm(self, t, p, time.monotonic() + 0.01)
    )
    learned = learn(vit_system, "late", digits_dataset(classes=4, per_class=40), seed=2, generations=1, epochs=2)
    m = learned.record.metrics
    assert m["out_of_time"] == "confirmation" and m["confirmation"] is None
    assert m["kind"] == "probe" and learned.result.member is learned.result.probe
    assert m["validation_accuracy"] == learned.result.probe.evaluation.accuracy


def test_a_refit_below_its_estimate_is_not_committed(vit_system, monkeypatch):
    """The winner's refit on every labelled image must get those images at least as right as its
    recipe got unseen ones in the confirmation; one that does not has diverged (here: its head is
    turned around after the real refit), and the probe is committed instead."""
    real_confirm, real_refit = EvolutionSearch._confirm, EvolutionSearch._refit

    def diverging(self, m):
        real_refit(self, m)
        if m.kind == "trained":  # the least likely class everywhere: what a diverged refit may answer
            fc = m.path.components[-1].module.fc
            fc.weight.data.neg_()
            fc.bias.data.neg_()

    force_a_trained_winner(monkeypatch)
    monkeypatch.setattr(  # the confirmation keeps the trained path, so that its refit is committed
        EvolutionSearch, "_confirm", lambda self, t, p, ends_by=None: replace(real_confirm(self, t, p, ends_by), kept=True)
    )
    monkeypatch.setattr(EvolutionSearch, "_refit", diverging)
    ds = digits_dataset(classes=4, per_class=40)
    learned = learn(vit_system, "diverged", ds, seed=2, generations=1, epochs=2)
    m, conf = learned.record.metrics, learned.result.confirmation
    assert conf is not None and conf.kept
    assert m["refit_failed"] and m["refit_train_accuracy"] < conf.trained_accuracy
    assert m["kind"] == "probe" and learned.result.member is learned.result.probe
    assert m["validation_accuracy"] == conf.probe_accuracy
    served = vit_system.logits("diverged", ds.images).argmax(1)
    assert (served == ds.labels).float().mean() > 0.5  # the probe, refitted on every image, serves


def test_the_time_budget_is_honoured(vit_system):
    ds = digits_dataset()
    t0 = time.monotonic()
    learned = learn(vit_system, "timed", ds, seconds=8.0, generations=1000, candidates_per_generation=4, epochs=30)
    took = time.monotonic() - t0
    m = learned.record.metrics
    # The root's first probe runs to the end, then candidates stop on the clock, a winner is confirmed
    # only if that fits, and the refit fits in what was kept.
    assert m["search_seconds"] < 8.0 * 1.5 + 2.0, m["search_seconds"]
    assert took < 8.0 * 1.5 + 10.0  # commit included
    assert np.isfinite(m["validation_accuracy"]) and m["candidates"] >= 1


def test_pool_averages_feature_maps_only():
    assert pool(torch.ones(2, 3, 4, 4)).shape == (2, 3)
    assert pool(torch.ones(2, 5)).shape == (2, 5)
