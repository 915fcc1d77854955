"""The one rule for every publication: a challenger replaces the champion (the served version) only if
it beats it on images neither was selected on, on the score with its parameter penalty, clearly (more
than a tie or a narrow win). Every challenger is nominated on the holdout; the judged images are the
training part, k-fold: each fold is classified by both recipes retrained on every other labelled image
(the holdout included), so no image is judged by a model that trained on it, nor by the comparison
that nominated the challenger."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from munet_server.evolve.heads import stratified_folds
from munet_server.evolve.recipes import Recipe, RecipeFitter
from munet_server.model.path import TaskPath

JUDGE_FOLDS = 2
# A win counts when the images the challenger alone gets right outnumber those the champion alone gets
# right so clearly that a challenger no better than the champion would do so with probability at most
# FALSE_WIN / n (exact McNemar: a one-sided sign test on the images where they differ; the normal
# approximation passed 3 won and 0 lost, a chance of 1 in 8), n the distinct tests on these images so
# far: a search judges many challengers on the same images, and the luckiest of n equals would
# otherwise win (Bonferroni). Answers equal to ones judged before (the champion's or an earlier
# challenger's) are the same test again: they count once. Probes and trained paths are counted apart
# (`family`): a probe's variants (seed path, image size, decay) say nothing of whether training layers
# helps, so they do not raise a trained path's bar; the bound then holds per family.
FALSE_WIN = 0.16


def level(tests: int) -> float:
    """The chance of a false win allowed at a family's `tests`-th distinct test."""
    return FALSE_WIN / max(1, tests)


def p_value(wins: int, losses: int) -> float:
    """The chance that a challenger no better than the champion wins at least `wins` of the images
    where the two differ (each image a fair coin)."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


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
    level: float = FALSE_WIN  # the p-value a win needed (it falls with the tests before it)
    repeat: bool = False  # its answers equal ones judged before: not a new test
    family: str = ""  # the challenger's kind; tests are counted per family

    @property
    def reason(self) -> str:
        verdict = "publishes" if self.publish else "keeps the champion"
        seen = "; answers judged before" if self.repeat else ""
        return (f"{self.family or 'a'} challenger {self.challenger_accuracy:.3f} vs champion {self.champion_accuracy:.3f} on {self.size} "
                f"images ({self.wins} won, {self.losses} lost; score {self.challenger_score:.4f} vs "
                f"{self.champion_score:.4f}; p {self.p_value:.3f}, a win needs {self.level:.3f}{seen}): {verdict}")  # fmt: skip


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
        self._right: dict[int, torch.Tensor] = {}  # member id -> right or wrong on each judged image
        self._seen: set[bytes] = set()  # the answers judged so far, champions' and challengers'

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

    def decide(
        self, challenger: tuple[int, Recipe], champion: tuple[int, Recipe], tests_before: int = 0, family: str = ""
    ) -> Decision:
        """`tests_before`: the distinct tests of the challenger's family on these images before this
        one. OutOfTime when the clock runs out first (the champion then stays)."""
        t0 = time.monotonic()
        (ck, cr), (pk, pr) = challenger, champion
        a, b = self.right(pk, pr), self.right(ck, cr)
        self._seen.add(_answers(a))
        repeat = _answers(b) in self._seen
        self._seen.add(_answers(b))
        acc_c, acc_p = float(b.float().mean()), float(a.float().mean())
        s_c, s_p = self.score(cr.path, acc_c), self.score(pr.path, acc_p)
        wins, losses = int((b & ~a).sum()), int((~b & a).sum())
        alpha, p = level(tests_before + (0 if repeat else 1)), p_value(wins, losses)
        clear = wins > losses and p <= alpha
        return Decision(
            publish=s_c > s_p and clear,  # a tie, a narrow win, or one bought with parameters keeps the champion
            size=len(b), challenger=ck, champion=pk, challenger_accuracy=acc_c, champion_accuracy=acc_p,
            challenger_score=s_c, champion_score=s_p, wins=wins, losses=losses, p_value=p, level=alpha, repeat=repeat, family=family,
            seconds=time.monotonic() - t0,
        )  # fmt: skip

    def retrainings(self) -> float:
        """A judgement and the winner's refit, in units of one training on the training part, by the
        images each retraining sees (k folds on all but one fold each, then all of them)."""
        n_train = max(1, len(self.images))
        return (sum(len(self.all_idx) - len(f) for f in self.folds) + len(self.all_idx)) / n_train


def _answers(right: torch.Tensor) -> bytes:
    return right.cpu().numpy().tobytes()
