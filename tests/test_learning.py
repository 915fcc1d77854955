"""The learning engine's parts (docs/LEARNING.md): converged probe heads, the feature cache, frozen
BatchNorm statistics; and the anytime search: the first probe serves at once, one rule publishes
(a challenger beats the champion on images neither was selected on, by more than a tie), refits
are published only when sound, and the search's state round-trips through its checkpoint."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import replace

import pytest
import torch

from munet_server.data.transforms import preprocess
from munet_server.evolve.budget import Budget
from munet_server.evolve.executors import Candidate
from munet_server.evolve.features import FeatureCache, View, pool
from munet_server.evolve.heads import cross_validate, fit_head, stratified_folds
from munet_server.evolve.judge import family_p_value, p_value
from munet_server.evolve.mutations import FirstGeneration, MutationConfig, Mutator
from munet_server.evolve.offspring import Brood, first_generation
from munet_server.evolve.population import Kind
from munet_server.evolve.recipes import RecipeFitter
from munet_server.evolve.search import Search, SearchConfig, SearchState
from munet_server.evolve.state import from_json, to_json
from munet_server.evolve.train import Batches, CandidateTrainer, TrainConfig, split_path
from munet_server.model.root_config import RootConfig
from munet_server.store.store import Store
from munet_server.system import MunetSystem
from tests.helpers import TINY_BUDGET, digits_dataset, learn


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


def _search(system: MunetSystem, name: str, ds, seed: int = 1, published: list | None = None, **budget) -> Search:
    """A search whose publications are recorded, not committed (the engine is what is under test)."""
    out = published if published is not None else []

    def publish(path, member, pub):
        out.append((path, member, pub))
        return len(out)

    b = Budget(**{**TINY_BUDGET, **budget})
    return Search(system, name, ds, SearchConfig(budget=b, seed=seed), publish=publish)


def test_the_probes_include_the_root_without_its_top_blocks(vit_system):
    """Earlier features can suit a task better than the root's last ones: the probe generation fits
    the root one and two blocks shallower too, at the best size, each a head-only probe with its CV."""
    ds = digits_dataset(classes=5)
    # A budget the probes' share of it never cuts, however slow the machine (generations=0 ends the search).
    search = _search(vit_system, "shallow", ds, generations=0, seconds=3600.0)
    search.run()
    depth = int(vit_system.root_path.hparams["num_layers"])
    probes = search.population.probes()
    layers = [int(m.path.hparams["num_layers"]) for m in probes]
    assert depth in layers and all(layers.count(n) == 1 for n in (depth - 1, depth - 2) if n >= 1)
    assert min(layers) == max(1, depth - 2)  # the tiny root has 2 blocks: one shallower probe
    best_size = max((m for m in probes if int(m.path.hparams["num_layers"]) == depth), key=lambda m: m.cv.key())
    for m in probes:
        if int(m.path.hparams["num_layers"]) < depth:
            assert [c.spec.name for c in m.path.trainable()] == ["head"] and m.cv is not None
            assert m.path.hparams["ds_image_size"] == best_size.path.hparams["ds_image_size"]
            assert len([c for c in m.path.components if c.spec.kind == "block"]) == int(m.path.hparams["num_layers"])


def test_a_child_that_trains_only_its_head_is_fitted_as_a_probe(vit_system):
    """SGD on a head alone only moves it off the converged fit (and the best of its checkpoints on the
    holdout flatters it), so such a child gets its head by L-BFGS like a probe, with CV weight decay,
    and trains nothing."""
    ds = digits_dataset(classes=5)
    search = _search(vit_system, "headonly", ds, generations=0)
    search.run()
    probe = max(search.population.probes(), key=lambda m: m.key())
    child = search.mutator.make_child(probe.path, "headonly", ds.num_classes, dict(probe.path.hparams), mutate=False)
    assert [c.spec.name for c in child.trainable()] == ["head"]
    before, steps = len(search.population.probes()), search.state.steps
    cand = Candidate(child, probe.path, probe, probe.head_wd, fit_head_first=False, seed=0)
    search._train_generation([cand])
    assert search.state.steps == steps and len(search.population.probes()) == before + 1
    m = search.population.probes()[-1]
    assert m.path is child and m.kind == Kind.PROBE and m.cv is not None
    # The same path and views as its parent probe: the same converged head, the same holdout score.
    assert m.head_wd == probe.head_wd and m.evaluation == probe.evaluation


def test_a_new_task_serves_its_first_probe_while_the_search_goes_on(tmp_path, tiny_vit):
    """Version 1 is the first converged probe, published (committed and answering) before the search
    has trained anything; later versions only replace it by winning a judgement."""
    system = MunetSystem.open(Store(tmp_path / "s"), tiny_vit, device="cpu")
    ds = digits_dataset(classes=4, per_class=40)
    seen = []

    def on_publish(record):  # the system as a Predict caller sees it at each publication
        seen.append((record.version, record.metrics["kind"], system.entry("first").record.version,
                     system.logits("first", ds.images[:4]).shape, record.metrics["candidates"]))  # fmt: skip

    from munet_server.learn import learn as learn_task
    from munet_server.spec import AddTaskSpec

    spec = AddTaskSpec(name="first", class_names=ds.class_names, budget=Budget(**TINY_BUDGET), seed=0)
    learned = learn_task(system, spec, ds, on_publish=on_publish)
    version, kind, served, shape, candidates = seen[0]
    assert (version, kind, served, shape) == (1, "probe", 1, (4, 4))
    assert candidates == 1 and learned.state.generation > 1  # published after one probe; the search went on
    assert [s[0] for s in seen] == [r.version for r in learned.records] == list(range(1, len(seen) + 1))
    for record in learned.records[1:]:  # every later version won its judgement against the one before
        d = record.metrics["decision"]
        assert d["publish"] and d["wins"] > d["losses"] and d["challenger_score"] > d["champion_score"]
        assert record.metrics["improved_from"] == record.version - 1
    assert all(system.verify_task(f"first@{r.version}") for r in learned.records)
    system.store.close()


def test_a_tie_keeps_the_champion(vit_system):
    """A challenger that gets exactly the champion's images right (here: the champion's own recipe)
    is not published, nor is one that adds parameters for the same answers."""
    ds = digits_dataset(classes=4, per_class=40)
    search = _search(vit_system, "tie", ds, generations=0)
    search.run()
    champion = search.population[search.state.champion]
    same = search.recipe(champion)
    d = search.judge.decide((999, same), (champion.id, same))
    assert not d.publish and d.wins == d.losses == 0 and d.challenger_accuracy == d.champion_accuracy
    # A trained challenger with the champion's answers and an adapter more: its parameters lose the score too.
    hp = search.mutator.fix_architecture({**champion.path.hparams, "adapters": [0]})
    bigger = replace(same, path=search.mutator.make_child(champion.path, "tie", 4, hp, True))
    search.judge._right[998] = search.judge.right(champion.id, same).clone()
    d = search.judge.decide((998, bigger), (champion.id, same))
    assert not d.publish and d.challenger_score < d.champion_score


def _judged(vit_system, name: str):
    """A search's judge, without the tests its search made, and a recipe to hand it (the answers under
    test are set by hand)."""
    search = _search(vit_system, name, digits_dataset(classes=4, per_class=40), generations=0)
    search.run()
    search.judge._tests.clear()
    return search.judge, search.recipe(search.population[search.state.champion]), torch.arange(len(search.judge.images))


def test_a_win_gets_harder_with_independent_tests_on_the_same_images(vit_system):
    """Four more images right and none fewer (a chance of 1 in 16 for a challenger no better than the
    champion): a win at a family's first test, not at its tenth when the ten won on different images,
    where the luckiest of ten equals would win by as much (1 - (15/16)^10 = 0.48)."""
    judge, same, i = _judged(vit_system, "margin")
    judge._right[900] = i >= 50  # the champion: all but the first fifty right
    decisions = []
    for k in range(10):  # challenger k gets four of the champion's wrong images k*5..k*5+4 right
        judge._right[901 + k] = judge._right[900] | ((i >= 5 * k) & (i < 5 * k + 4))
        decisions.append(judge.decide((901 + k, same), (900, same), "trained"))
    first, tenth = decisions[0], decisions[-1]
    assert (first.wins, first.losses) == (tenth.wins, tenth.losses) == (4, 0)
    assert first.p_value == tenth.p_value == 1 / 16 and first.family_p_value == 1 / 16
    assert first.publish and not tenth.publish and tenth.tests == 10
    assert 0.4 < tenth.family_p_value < 0.56  # ten independent coins of 1/16 (Monte Carlo error ~0.005)


def test_near_copies_of_a_challenger_do_not_raise_the_bar(vit_system):
    """Ten challengers that win on the same six images and each lose a different one (6 won, 1 lost,
    p 1/16 each) are nearly one test: the tenth still publishes, where Bonferroni's 0.16 / 10 refused
    it. The luckiest of them wins as clearly by chance when all six shared images fall its way (1/64)
    or five do and its own loss turns (6/64): 7/64."""
    judge, same, i = _judged(vit_system, "copies")
    judge._right[900] = i >= 6
    for k in range(10):
        judge._right[901 + k] = (judge._right[900] | (i < 6)) & (i != 6 + k)
        d = judge.decide((901 + k, same), (900, same), "trained")
    assert (d.wins, d.losses, d.tests) == (6, 1, 10) and d.p_value == 1 / 16
    assert d.publish and abs(d.family_p_value - 7 / 64) < 0.02 and d.family_p_value > 0.16 / 10


def test_a_win_is_judged_by_the_exact_test():
    """Three won and none lost happens by chance 1 time in 8, which the normal approximation passed
    at 1.4 SD; the exact sign test does not, nor a family of one test (its permutations' p is the
    exact p)."""
    assert p_value(3, 0) == 1 / 8 and p_value(5, 2) == 29 / 128 and p_value(0, 0) == 1.0
    assert p_value(14, 6) == sum(math.comb(20, k) for k in range(14, 21)) / 2**20
    one = torch.tensor([1, 1, 1, 1, 1, 0, -1, 0], dtype=torch.int8)  # 5 won, 1 lost: 7/64
    assert family_p_value([one], p_value(5, 1), seed=0) == pytest.approx(7 / 64, abs=0.01)
    assert family_p_value([one, one.clone()], p_value(5, 1), seed=0) == pytest.approx(7 / 64, abs=0.01)


def test_tests_judged_before_and_other_kinds_do_not_raise_the_bar(vit_system):
    """A challenger whose differences from the champion equal an earlier challenger's repeats that
    test rather than adding one, and a challenger whose answers equal the champion's wins nothing;
    probe tests do not make a trained path's win harder (the bound holds per kind)."""
    judge, same, i = _judged(vit_system, "repeat")
    right = judge._right
    right[900] = i >= 3
    right[901] = right[900] | (i < 2)
    right[902] = right[901].clone()  # another recipe, the same answers
    right[903] = right[900].clone()  # the champion's answers
    new = judge.decide((901, same), (900, same), "trained")
    again = judge.decide((902, same), (900, same), "trained")
    tie = judge.decide((903, same), (900, same), "trained")
    assert not new.repeat and again.repeat and (again.wins, again.losses) == (new.wins, new.losses)
    assert again.family_p_value == new.family_p_value == 1 / 4
    assert tie.tests == 2 and not tie.publish and tie.wins == tie.losses == 0
    right[904] = right[900] | (i < 3)  # 3 won, 0 lost: 1/8 alone
    probe = judge.decide((904, same), (900, same), "probe")
    assert probe.tests == 1 and probe.family_p_value == 1 / 8 and probe.publish


def test_challengers_are_nominated_on_the_holdout_only(vit_system):
    """A probe's cross-validation counts the images the judge will see, so a probe is nominated by its
    holdout score like every member, and one of each kind is judged per round."""
    search = _search(vit_system, "nominate", digits_dataset(classes=4, per_class=40), generations=0)
    search.run()
    champion = search.population[search.state.champion]
    assert champion.cv is not None
    for m in search.population.members:
        m.judged = True
    base = replace(champion, judged=False)
    holdout_better = search.population.add(replace(base, id=0, score=champion.score + 0.1,
                                                   cv=replace(champion.cv, accuracy=0.0)))  # fmt: skip
    cv_better = search.population.add(replace(base, id=0, score=champion.score - 0.1,
                                              cv=replace(champion.cv, accuracy=1.0)))  # fmt: skip
    also_better = search.population.add(replace(base, id=0, score=champion.score + 0.05))
    assert search._challengers() == [holdout_better]
    assert cv_better not in search._challengers() and also_better.judged is False


def test_a_judgement_sees_no_image_a_model_trained_on(vit_system, monkeypatch):
    """Each judged image is classified by both recipes retrained on every other labelled image, and
    the judged images are the training part (not the holdout that chose the challenger)."""
    ds = digits_dataset(classes=4, per_class=40)
    search = _search(vit_system, "fair", ds, generations=0)
    search.run()
    fits, judged = [], []
    real_fit, real_correct = RecipeFitter.fit, RecipeFitter.correct
    monkeypatch.setattr(RecipeFitter, "fit", lambda self, r, idx: fits.append(idx) or real_fit(self, r, idx))
    monkeypatch.setattr(RecipeFitter, "correct", lambda self, p, idx: judged.append(idx) or real_correct(self, p, idx))
    champion = search.population[search.state.champion]
    other = next(m for m in search.population.members if m is not champion)
    search.judge._right.clear()
    d = search.judge.decide((other.id, search.recipe(other)), (champion.id, search.recipe(champion)))
    assert len(fits) == len(judged) == 2 * len(search.judge.folds)
    for fit, fold in zip(fits, judged):
        assert not set(fit.tolist()) & set(fold.tolist())
        assert not set(fold.tolist()) & set(search.holdout_idx.tolist())
    assert sorted(torch.cat(judged[: len(search.judge.folds)]).tolist()) == search.train_idx.tolist()
    assert d.size == len(search.train_idx) and d.wins + d.losses <= d.size


def test_a_publication_is_refitted_on_every_image_and_changes_no_other_task(vit_system):
    system = vit_system
    learn(system, "other", digits_dataset(classes=4), generations=0)
    golden = system.tasks["other"].record.golden_digest
    published = []
    search = _search(system, "refitted", digits_dataset(classes=5, per_class=40), published=published, generations=0)
    search.run()
    path, member, pub = published[0]
    assert pub.version == 1 and pub.kind == Kind.PROBE and pub.decision is None
    # The published head was fitted on every labelled image; the member keeps the one fitted on the
    # training part, which its holdout evaluation describes.
    assert not torch.equal(path.components[-1].module.fc.weight, member.path.components[-1].module.fc.weight)
    assert system.tasks["other"].record.golden_digest == golden and system.verify_task("other")


def test_a_refit_below_its_estimate_is_not_published(vit_system, monkeypatch):
    """A trained challenger's refit must get its own training images at least as right as its recipe
    got unseen ones in the judgement; one that does not has diverged (here: its head turned around)."""
    ds = digits_dataset(classes=4, per_class=40)
    published = []
    search = _search(vit_system, "diverged", ds, published=published, generations=0, epochs=2)
    search.run()
    base = search.population.probes()[0]
    cands = first_generation(Brood("diverged", 4, 1, 0), base, search.mutator, FirstGeneration.STRUCTURED, 1)
    for c in cands:
        c.parent_member = None  # joins whatever its holdout score
    search._train_generation(cands)
    trained = max((m for m in search.population.members if m.kind == Kind.TRAINED), key=lambda m: m.key())
    real_fit = RecipeFitter.fit

    def diverging(self, recipe, idx):
        path = real_fit(self, recipe, idx)
        if len(idx) == len(ds):  # the refit on every image: the least likely class everywhere
            fc = path.components[-1].module.fc
            fc.weight.data.neg_()
            fc.bias.data.neg_()
        return path

    monkeypatch.setattr(RecipeFitter, "fit", diverging)
    before = len(published)
    winning = dataclasses.replace(search.state.decisions[0] if search.state.decisions else _decision(), publish=True,
                                  challenger=trained.id, challenger_accuracy=0.5)  # fmt: skip
    search._publish(trained, winning)
    assert len(published) == before and search.state.champion != trained.id


def _decision():
    from munet_server.evolve.judge import Decision

    return Decision(True, 1, 0, 0, 0.5, 0.5, 0.5, 0.5, 1, 0, 0.0)


def test_the_search_state_round_trips_with_a_field_added(vit_system):
    """The checkpoint is derived from the dataclasses: a resumed search has the same members, history
    and judgements, and its judge the tests that make its next win harder; a field added later is
    written and read without a hand-written list, and an older checkpoint without it takes the default."""
    ds = digits_dataset(classes=4, per_class=30)
    search = _search(vit_system, "resumable", ds, generations=1, epochs=1)
    search.run()
    i, recipe = torch.arange(len(search.judge.images)), search.recipe(search.population[search.state.champion])
    search.judge._right.update({990: i >= 2, 991: i >= 0})
    search.judge.decide((991, recipe), (990, recipe), "trained")
    saved, tensors = search.checkpoint()
    again = _search(vit_system, "resumable", ds, generations=1, epochs=1)
    again.restore(saved, tensors)
    assert to_json(again.state) == to_json(search.state)
    tests = search.judge.saved_tests()
    assert tests.keys() == again.judge.saved_tests().keys() and "judge/trained" in tests
    assert all(torch.equal(tests[k], again.judge.saved_tests()[k]) for k in tests)
    for a, b in zip(again.population.members, search.population.members, strict=True):
        assert [c.id for c in a.path.components if c.frozen] == [c.id for c in b.path.components if c.frozen]
        for x, y in zip(a.path.trainable(), b.path.trainable(), strict=True):
            assert all(torch.equal(p, q) for p, q in zip(x.module.state_dict().values(), y.module.state_dict().values()))
        assert (a.path.parent is None) == (b.parent is None)

    @dataclasses.dataclass
    class Later(SearchState):
        note: str = "default"
        seen: list[int] = dataclasses.field(default_factory=list)

    later = Later(**{f.name: getattr(search.state, f.name) for f in dataclasses.fields(SearchState)}, note="x", seen=[1])
    back = from_json(Later, to_json(later))
    assert to_json(back) == to_json(later) and back.note == "x" and back.seen == [1]
    assert all(isinstance(m.kind, Kind) for m in back.members)  # typed again, not strings
    assert from_json(Later, to_json(search.state)).note == "default"  # an older checkpoint


def test_pool_averages_feature_maps_only():
    assert pool(torch.ones(2, 3, 4, 4)).shape == (2, 3)
    assert pool(torch.ones(2, 5)).shape == (2, 5)
