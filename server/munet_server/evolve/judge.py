"""The one rule for every publication: a challenger replaces the champion (the served version) only if
it beats it on images neither was selected on, on the score with its parameter penalty, clearly (more
than a tie or a narrow win). Every challenger is nominated on the holdout; the judged images are the
training part, k-fold: each fold is classified by both recipes retrained on every other labelled image
(the holdout included), so no image is judged by a model that trained on it, nor by the comparison
that nominated the challenger."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from munet_server.evolve.heads import stratified_folds
from munet_server.evolve.recipes import Recipe, RecipeFitter
from munet_server.model.path import TaskPath

JUDGE_FOLDS = 2
# A win counts when the images the challenger alone gets right outnumber those the champion alone gets
# right so clearly that, were the challenger and every one judged before it on these images no better
# than their champions, the luckiest of them would win as clearly with probability at most FALSE_WIN.
# Each test is the exact McNemar test (a one-sided sign test on the images where the two differ; the
# normal approximation passed 3 won and 0 lost, a chance of 1 in 8); the luckiest of a family is
# judged by Westfall-Young's min-p: every image's outcome flipped at once in all of the family's
# tests, which keeps their correlation (challengers of one search are near copies of each other;
# Bonferroni's FALSE_WIN / n treated them as independent and refused what they all agreed on). Tests
# of a family with the same differences are one test. Probes and trained paths are families apart: a
# probe's variants (seed path, image size, decay) say nothing of whether training layers helps.
FALSE_WIN = 0.16
TESTS = "judge"  # the checkpoint's tensors of the family tests, under "judge/<family>"
PERMUTATIONS = 10_000  # the Monte Carlo error of a family p-value near 0.16 is then below 0.004


@functools.lru_cache(maxsize=4096)
def _tails(n: int) -> tuple[float, ...]:
    """P(at least w of n fair coins come up heads), for w = 0..n, exactly."""
    counts, c = [], 1
    for k in range(n + 1):
        counts.append(c)
        c = c * (n - k) // (k + 1)
    tails, total = [], 0
    for c in reversed(counts):
        total += c
        tails.append(total)
    return tuple(t / 2**n for t in reversed(tails))


def p_value(wins: int, losses: int) -> float:
    """The chance that a challenger no better than the champion wins at least `wins` of the images
    where the two differ (each image a fair coin)."""
    return _tails(wins + losses)[wins]


def family_p_value(differences: list[torch.Tensor], observed: float, seed: int) -> float:
    """The chance that the smallest p-value among a family's tests is at most `observed` when no
    challenger is better than its champion. `differences`: one row per test, +1 where the challenger
    alone is right, -1 where the champion alone is, 0 elsewhere, on the same images; under the null
    each image's row signs are a fair coin, flipped together (Westfall & Young 1993, min-p). A family of
    one test is the exact test."""
    if len(differences) == 1:
        return observed
    d = torch.stack(differences).to(torch.float64)
    d = d[:, d.abs().sum(0) > 0]  # images where no test differs decide nothing
    n = d.abs().sum(1).long()
    width = int(n.max()) + 1
    tails = torch.ones(len(n), width, dtype=torch.float64)
    for i, k in enumerate(n.tolist()):
        tails[i, : k + 1] = torch.tensor(_tails(k), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    hits, chunk = 0, 1000
    for start in range(0, PERMUTATIONS, chunk):
        signs = torch.randint(0, 2, (d.shape[1], min(chunk, PERMUTATIONS - start)), generator=g).to(d) * 2 - 1
        wins = ((d @ signs + n[:, None]) / 2).round().long()
        smallest = tails.gather(1, wins).min(0).values
        hits += int((smallest <= observed * (1 + 1e-9)).sum())
    # The identity is one of the flips (a p-value never 0); a single test's exact p bounds it below.
    return max(observed, (hits + 1) / (PERMUTATIONS + 1))


@dataclass(frozen=True)
class Decision:
    """A judgement and its evidence: both recipes on the same `size` images."""

    publish: bool
    size: int
    challenger: int  # member ids
    champion: int
    challenger_accuracy: float
    champion_accuracy: float
    challenger_score: float
    champion_score: float
    wins: int  # images the challenger gets right and the champion wrong
    losses: int
    seconds: float
    p_value: float = 1.0  # of `wins` and `losses` under a challenger no better than the champion
    family_p_value: float = 1.0  # of the luckiest of the family's tests so far winning as clearly
    tests: int = 1  # the family's distinct tests on these images, this one included
    repeat: bool = False  # its differences equal a test's before: not a new test
    family: str = ""  # the challenger's kind; tests are counted per family

    @property
    def reason(self) -> str:
        verdict = "publishes" if self.publish else "keeps the champion"
        seen = "; a test judged before" if self.repeat else ""
        return (f"{self.family or 'a'} challenger {self.challenger_accuracy:.3f} vs champion {self.champion_accuracy:.3f} on {self.size} "
                f"images ({self.wins} won, {self.losses} lost; score {self.challenger_score:.4f} vs "
                f"{self.champion_score:.4f}; p {self.p_value:.3f} alone, {self.family_p_value:.3f} among "
                f"{self.tests} test{'s' * (self.tests != 1)} of its kind, a win needs {FALSE_WIN:.3f}{seen}): {verdict}")  # fmt: skip


class Judge:
    def __init__(
        self,
        fitter: RecipeFitter,
        train_idx: torch.Tensor,
        all_idx: torch.Tensor,
        labels: torch.Tensor,
        seed: int,
        score: Callable[[TaskPath, float], float],
    ) -> None:
        self.fitter, self.all_idx, self.score = fitter, all_idx, score
        parts = stratified_folds(labels[train_idx], JUDGE_FOLDS, seed + 1)
        self.folds = [train_idx[p] for p in parts]
        self.images = torch.cat(self.folds)
        self.seed = seed
        self._right: dict[int, torch.Tensor] = {}  # member id -> right or wrong on each judged image
        self._tests: dict[str, dict[bytes, torch.Tensor]] = {}  # family -> its distinct tests' differences

    def right(self, key: int, recipe: Recipe) -> torch.Tensor:
        """Right or wrong on each judged image, fold by fold (kept: a recipe's retraining is deterministic)."""
        if key not in self._right:
            out = []
            for fold in self.folds:
                out.append(self.fitter.correct(self.fitter.fit(recipe, self.trained_on(fold)), fold))
            self._right[key] = torch.cat(out)
        return self._right[key]

    def trained_on(self, fold: torch.Tensor) -> torch.Tensor:
        """The images a fold's model learns from: every labelled image but the fold's."""
        return self.all_idx[~torch.isin(self.all_idx, fold)]

    def known(self, key: int) -> bool:
        return key in self._right

    def decide(self, challenger: tuple[int, Recipe], champion: tuple[int, Recipe], family: str = "") -> Decision:
        """Judge the challenger against the champion, as one more test of its `family`. OutOfTime when
        the clock runs out first (the champion then stays)."""
        t0 = time.monotonic()
        (ck, cr), (pk, pr) = challenger, champion
        a, b = self.right(pk, pr), self.right(ck, cr)
        difference = b.to(torch.int8) - a.to(torch.int8)
        tests = self._tests.setdefault(family, {})
        key = _key(difference)
        repeat = key in tests
        tests[key] = difference
        acc_c, acc_p = float(b.float().mean()), float(a.float().mean())
        s_c, s_p = self.score(cr.path, acc_c), self.score(pr.path, acc_p)
        wins, losses = int((b & ~a).sum()), int((~b & a).sum())
        p = p_value(wins, losses)
        family_p = family_p_value(list(tests.values()), p, self.seed + len(tests))
        return Decision(
            # a tie, a narrow win, or one bought with parameters keeps the champion
            publish=s_c > s_p and wins > losses and family_p <= FALSE_WIN,
            size=len(b), challenger=ck, champion=pk, challenger_accuracy=acc_c, champion_accuracy=acc_p,
            challenger_score=s_c, champion_score=s_p, wins=wins, losses=losses, p_value=p,
            family_p_value=family_p, tests=len(tests), repeat=repeat, family=family, seconds=time.monotonic() - t0,
        )  # fmt: skip

    def saved_tests(self) -> dict[str, torch.Tensor]:
        """Each family's tests so far, for a checkpoint: a resumed search's next win stays as hard."""
        return {f"{TESTS}/{family}": torch.stack(list(rows.values())) for family, rows in self._tests.items() if rows}

    def restore_tests(self, tensors: dict[str, torch.Tensor]) -> None:
        for key, rows in tensors.items():
            if key.startswith(f"{TESTS}/"):
                family = self._tests.setdefault(key.removeprefix(f"{TESTS}/"), {})
                family.update((_key(r), r) for r in rows.to(torch.int8))

    def retrainings(self) -> float:
        """A judgement and the winner's refit, in units of one training on the training part, by the
        images each retraining sees (k folds on all but one fold each, then all of them)."""
        n_train = max(1, len(self.images))
        return (sum(len(self.all_idx) - len(f) for f in self.folds) + len(self.all_idx)) / n_train


def _key(difference: torch.Tensor) -> bytes:
    """A test's identity: tests with the same differences on the same images are one test."""
    return difference.cpu().numpy().tobytes()
