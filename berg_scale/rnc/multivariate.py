"""Multivariate RNC (Gifford et al., Nature Human Behaviour 2025): RSA scores of image batches and the genetic search.

A candidate batch b of K images is scored as the Pearson r between the strictly
lower triangles of two ROIs' train RSM sub-blocks. The sub-blocks come from unit
patterns (see `patterns`): the train RSM is the mean of per-subject Grams, one
(K x V)(V x K) product per subject, evaluated for all candidates of a generation in
batched matrix products. Nothing depends on N except the gather of K rows.

The search and the null draw their batches among a pool of usable images (those with
finite patterns, see `finite`) when one is given: draws are made as positions
0..len(pool)-1 and mapped through the sorted pool, so batches stay sorted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from berg_scale.errors import ConfigError
from berg_scale.rnc.patterns import PatternSet
from berg_scale.rnc.sampling import sample_excluding, sample_subsets

OBJECTIVES = ("align", "disentangle")
MUTATION_FRACTIONS = (0.10, 0.25, 0.50, 0.75)


def mutation_sizes(batch_size: int, fractions: Sequence[float] = MUTATION_FRACTIONS) -> list[int]:
    """Images replaced per mutant: 1 and round(f * K) with Python's half-to-even rounding."""
    return [1] + [int(round(f * batch_size)) for f in fractions]


def _tril_flat_index(k: int, device: torch.device) -> torch.Tensor:
    """Positions of the strictly lower triangle in a flattened K x K matrix."""
    rows, cols = torch.tril_indices(k, k, offset=-1, device=device)
    return rows * k + cols


def auto_chunk(patterns: PatternSet, batch_size: int, budget_bytes: int | None = None) -> int:
    """Candidates per gather so that one gathered block stays near a memory budget:
    64 MB on the CPU (the gather is memory-bound there), 1 GB on a GPU (fewer launches)."""
    if budget_bytes is None:
        budget_bytes = (64 if patterns.device.type == "cpu" else 1024) * 1024 * 1024
    widest = max(int(b.shape[1]) for b in patterns.blocks)
    return max(1, budget_bytes // max(1, batch_size * widest * 4))


def weighted_tril(
    patterns: PatternSet, batches: torch.Tensor, weights: Mapping[int, float], chunk: int | None = None
) -> torch.Tensor:
    """Lower triangles (B, K(K-1)/2) of sum_s w_s Z_s[b] Z_s[b]^T, in float32.

    Gathered rows are promoted to float32 before the product on every device: reduced
    precision storage saves memory and gather traffic, while the Gram entries (which
    differ by little between similar batches) keep float32 accuracy.
    """
    b, k = batches.shape
    flat = _tril_flat_index(k, patterns.device)
    out = torch.zeros((b, flat.numel()), dtype=torch.float32, device=patterns.device)
    chunk = chunk or auto_chunk(patterns, k)
    for start in range(0, b, chunk):
        idx = batches[start : start + chunk]
        acc = out[start : start + chunk]
        for subject, weight in weights.items():
            if weight == 0:
                continue
            block = patterns.block(subject)
            x = block.index_select(0, idx.reshape(-1)).view(idx.shape[0], k, block.shape[1]).to(torch.float32)
            gram = torch.bmm(x, x.transpose(1, 2)).flatten(1).index_select(1, flat)
            acc.add_(gram, alpha=weight)
    return out


def per_subject_tril(patterns: PatternSet, batches: torch.Tensor) -> torch.Tensor:
    """(S, B, K(K-1)/2): every subject's sub-RSM lower triangle, for all folds at once."""
    return torch.stack([weighted_tril(patterns, batches, {s: 1.0}) for s in patterns.subjects])


def rowwise_pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson r of corresponding rows; NaN where a row is constant."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    num = (a * b).sum(dim=1)
    den = torch.sqrt((a * a).sum(dim=1) * (b * b).sum(dim=1))
    return torch.where(den > 0, num / den, torch.full_like(num, float("nan")))


@dataclass
class PairScorer:
    """Scores batches for one ROI pair under a subject weighting (a fold's train or test set)."""

    roi1: PatternSet
    roi2: PatternSet
    chunk: int | None = None  # candidates per gather; None sizes it from the pattern width

    def score(self, batches: np.ndarray | torch.Tensor, subjects: Sequence[int]) -> np.ndarray:
        idx = torch.as_tensor(np.asarray(batches), dtype=torch.long, device=self.roi1.device)
        if idx.ndim == 1:
            idx = idx[None]
        weights = {s: 1.0 / len(subjects) for s in subjects}
        v1 = weighted_tril(self.roi1, idx, weights, self.chunk)
        v2 = weighted_tril(self.roi2, idx, weights, self.chunk)
        return rowwise_pearson(v1, v2).double().cpu().numpy()


def fitness_key(scores: np.ndarray, objective: str) -> np.ndarray:
    """Lower is better: -r for align, |r| for disentangle; NaN scores rank last."""
    if objective == "align":
        key = -scores
    elif objective == "disentangle":
        key = np.abs(scores)
    else:
        raise ConfigError(f"objective must be one of {OBJECTIVES}, not {objective!r}")
    return np.where(np.isfinite(key), key, np.inf)


@dataclass(frozen=True)
class GAParams:
    population: int = 200
    batch_size: int = 50
    generations: int = 2000
    mutants_per_parent: int = 5
    mutation_fractions: tuple[float, ...] = MUTATION_FRACTIONS
    seed: int = 20200220


@dataclass
class GAResult:
    objective: str
    best_batches: np.ndarray  # (G, K) sorted image numbers, best of each generation
    best_scores: np.ndarray  # (G,) train score of that batch
    population: np.ndarray = field(repr=False)  # final (P, K)
    population_scores: np.ndarray = field(repr=False)


def mutate(rng: np.random.Generator, parents: np.ndarray, sizes: Sequence[int], n_images: int) -> np.ndarray:
    """One mutant per (parent, size): `size` positions replaced by images not in the parent."""
    p, k = parents.shape
    size_array = np.asarray(sizes, dtype=np.int64)
    base = np.repeat(parents, size_array.size, axis=0).astype(np.int64)
    counts = np.tile(size_array, p)
    positions = np.argsort(rng.random(base.shape), axis=1)  # uniform without replacement
    new = sample_excluding(rng, n_images, base, counts)
    replace = np.arange(new.shape[1])[None, :] < counts[:, None]
    rows = np.repeat(np.arange(base.shape[0]), replace.sum(axis=1))
    base[rows, positions[:, : new.shape[1]][replace]] = new[replace]
    return np.sort(base, axis=1)


def genetic_search(
    score: Callable[[np.ndarray], np.ndarray],
    n_images: int,
    objective: str,
    params: GAParams = GAParams(),
    rng: np.random.Generator | None = None,
    log: Callable[[int, float], None] | None = None,
    images: np.ndarray | None = None,
) -> GAResult:
    """The published GA: mutants of every parent, as many immigrants, truncation to P.

    Candidates are [parents, mutants, immigrants] in that order and the stable sort
    keeps earlier candidates on ties, so selection is deterministic and elitist (the
    parents' cached scores compete with their offspring). With `images` (sorted image
    numbers) the search runs over those images only; `n_images` must be their count.
    """
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {OBJECTIVES}, not {objective!r}")
    if images is not None:
        pool = np.asarray(images, dtype=np.int64)
        if pool.size != n_images:
            raise ValueError(f"n_images is {n_images} but {pool.size} images are given")
        result = genetic_search(lambda batches: score(pool[batches]), n_images, objective, params, rng, log)
        return GAResult(objective, pool[result.best_batches], result.best_scores, pool[result.population],
                        result.population_scores)
    rng = rng or np.random.default_rng(params.seed)
    k, p = params.batch_size, params.population
    sizes = mutation_sizes(k, params.mutation_fractions)[: params.mutants_per_parent]
    if max(sizes) > n_images - k:
        raise ConfigError(
            f"{n_images} images are too few for batches of {k} with mutations of up to "
            f"{max(sizes)} images"
        )
    population = sample_subsets(rng, n_images, k, p).astype(np.int64)
    scores = score(population)
    best_batches = np.empty((params.generations, k), dtype=np.int64)
    best_scores = np.empty(params.generations)
    for generation in range(params.generations):
        mutants = mutate(rng, population, sizes, n_images)
        immigrants = sample_subsets(rng, n_images, k, p + mutants.shape[0]).astype(np.int64)
        offspring = np.concatenate([mutants, immigrants])
        candidates = np.concatenate([population, offspring])
        candidate_scores = np.concatenate([scores, score(offspring)])
        keep = np.argsort(fitness_key(candidate_scores, objective), kind="stable")[:p]
        population, scores = candidates[keep], candidate_scores[keep]
        best_batches[generation] = population[0]
        best_scores[generation] = scores[0]
        if log:
            log(generation, float(scores[0]))
    return GAResult(objective, best_batches, best_scores, population, scores)


@dataclass
class MultivariateNull:
    """Train and test scores of the same random batches for every fold.

    Per-subject sub-RSM triangles are computed once per batch; each fold's train
    score uses their mean over its train subjects and its test score the held-out
    subject's, so one pass serves all folds.
    """

    train: dict[int | None, np.ndarray]  # fold held-out subject (None = all) -> (B,)
    test: dict[int | None, np.ndarray]
    n_images: int  # images the batches are drawn from
    batch_size: int
    seed: int
    chunk: int
    pool: np.ndarray | None = field(default=None, repr=False)  # their image numbers (None: 0..n_images-1)

    def batch(self, b: int) -> np.ndarray:
        chunk_id, row = divmod(int(b), self.chunk)
        total = next(iter(self.train.values())).shape[0]
        count = min(self.chunk, total - chunk_id * self.chunk)
        rng = np.random.default_rng([self.seed, 3, chunk_id])
        batch = sample_subsets(rng, self.n_images, self.batch_size, count)[row].astype(np.int64)
        return batch if self.pool is None else self.pool[batch]


def multivariate_null(
    roi1: PatternSet,
    roi2: PatternSet,
    folds: Sequence[tuple[tuple[int, ...], int | None]],
    n_batches: int,
    batch_size: int,
    seed: int,
    chunk: int = 2048,
    pool: np.ndarray | None = None,
) -> MultivariateNull:
    """Score `n_batches` random batches (among `pool`, if given) on every fold's train and test RSMs."""
    n = roi1.n_images if pool is None else int(pool.size)
    subjects = roi1.subjects
    train = {h: np.empty(n_batches, dtype=np.float32) for _, h in folds}
    test = {h: np.full(n_batches, np.nan, dtype=np.float32) for _, h in folds}
    for chunk_id, start in enumerate(range(0, n_batches, chunk)):
        count = min(chunk, n_batches - start)
        rng = np.random.default_rng([seed, 3, chunk_id])
        drawn = sample_subsets(rng, n, batch_size, count)
        if pool is not None:
            drawn = pool[drawn]
        batches = torch.as_tensor(drawn, dtype=torch.long, device=roi1.device)
        t1 = per_subject_tril(roi1, batches)
        t2 = per_subject_tril(roi2, batches)
        for train_subjects, heldout in folds:
            slots = [subjects.index(s) for s in train_subjects]
            r = rowwise_pearson(t1[slots].mean(dim=0), t2[slots].mean(dim=0))
            train[heldout][start : start + count] = r.cpu().numpy()
            if heldout is not None:
                h = subjects.index(heldout)
                test[heldout][start : start + count] = rowwise_pearson(t1[h], t2[h]).cpu().numpy()
    return MultivariateNull(train, test, n, batch_size, seed, chunk, pool)


def choose_multivariate_baseline(null: MultivariateNull, heldout: int | None) -> tuple[int, float, float]:
    """(batch number, train score, test score) of the batch nearest the train null mean.

    Batches whose score is undefined (every pattern in it constant, say) are left out
    of the mean and never chosen; if no batch has a score the choice would be arbitrary,
    so it is refused.
    """
    train = null.train[heldout].astype(np.float64)
    finite = np.isfinite(train)
    if not finite.any():
        raise ConfigError(
            "no random batch has a defined RSA score (all sub-RSM entries constant): "
            "check that the voxel patterns vary across images"
        )
    mu = float(train[finite].mean())
    b = int(np.argmin(np.where(finite, np.abs(train - mu), np.inf)))
    return b, float(train[b]), float(null.test[heldout][b])


def difference_null(test_null: np.ndarray, objective: str, n_iter: int) -> np.ndarray:
    """Differences of disjoint slices of the saved test null (docs/rnc.md, "Choices where the published
    description leaves room").

    align: null[n:2n] - null[0:n]; disentangle: null[2n:3n] - null[0:n], with n the
    requested iterations, capped at a third of the null's length. Differences involving
    an undefined (NaN) score are dropped, so the p-value counts only defined draws.
    """
    n = min(n_iter, test_null.shape[0] // 3)
    other = test_null[n : 2 * n] if objective == "align" else test_null[2 * n : 3 * n]
    diff = other.astype(np.float64) - test_null[:n].astype(np.float64)
    return diff[np.isfinite(diff)]
