"""Leaderboard of reply sources (#10, part 4): a Bradley-Terry fit over every source of
replies (each imported source, each policy version, the demo set) from all pairwise
judgements, with bootstrap confidence intervals, a win-rate matrix and the number of
comparisons. Pure numpy, no Django: the selectors hand in flat arrays, one row per
pairwise comparison.

Data: `a[i]` and `b[i]` (source indices 0 .. n_sources - 1, a != b), `outcome[i]`
(1.0: a won, 0.0: b won, 0.5: a tie), an optional `weight[i]` (default 1) and an optional
`count[i]` (how many identical comparisons the row stands for, for input already grouped
by SQL, default 1). `pairs_from_rankings` / `pairs_from_ranked_arrays` turn ranked
judgements (groups of reply ids, best first) into such rows.

Model. P(i beats j) = 1 / (1 + exp(-(s_i - s_j))), s the log-strength of each source.
Ties count as half a win for each side (what Chatbot Arena's Bradley-Terry fit does with
ties); the Davidson model is not used: it adds a tie parameter, and with ties counted as
halves the fit stays a plain logistic likelihood whose scores answer the one question a
leaderboard asks (how often is i preferred to j), while the tie rate, which in preference
labelling says as much about the annotator as about the pair, is reported separately.

Collapsing. The likelihood depends on the rows only through W[i, j] = (weight of i's wins
over j) + 0.5 * (weight of their ties), so `collapse_comparisons` reduces any number of
rows to S x S matrices with one bincount (O(rows + S^2)); every iteration of the fit is
then O(S^2) to build the gradient and Hessian, whatever the number of judgements.

Fit. Maximum (penalised) likelihood by Newton's method with a backtracking line search
(the log-likelihood is concave, so this converges in a handful of steps from s = 0 and is
monotone): O(S^3) per step for the linear solve, trivial for the tens of sources a
project has and fine up to a few hundred. The penalty is an L2 term -l2/2 * sum(s_i^2)
with l2 = 0.01 by default, i.e. a N(0, 10^2) prior on each log-strength, worth about
0.04 pseudo-comparisons per source against an average opponent (a comparison at even odds
has curvature 1/4): negligible once a source has a few dozen comparisons, but it keeps a
source that always wins (or always loses) finite and makes the fit unique. l2 = 0 gives
the plain maximum-likelihood estimate, which exists only when every component of the
comparison graph is strongly connected (nobody undefeated); otherwise its scores run off
and `converged` is False. The same happens to any bootstrap resample with an undefeated
source, so use l2 > 0 with draws.

Centring. At the optimum the gradient of the likelihood sums to zero over each connected
component of the comparison graph, so the penalty forces sum(s_i) = 0 over each component:
scores are centred, mean 0, within each connected component (the fit keeps them so for
l2 = 0 too). Scores in different components are not comparable; `component` says which
component each source is in (-1: no comparisons) and `connected` whether there is one. For
display, scores are also given on an Elo-like scale: 400 / ln 10 * s + 1000 (a 400-point
gap is 10:1 odds); the mean Elo of a component is 1000. Sources with no comparisons are
not fitted and get NaN. With a single source there is nothing to compare: all NaN.

Bootstrap. Comparisons are resampled with replacement: rows fall into cells (unordered
pair, outcome) and the number of times each cell appears in a resample is one multinomial
draw over the cells with their row counts, so `draws` resamples of a million rows cost a
(draws x cells) multinomial and a batched Newton refit (warm-started from the full fit,
2-4 steps), not a loop over rows. Intervals are percentile intervals of the resampled
scores (95% by default). A resampled row of a cell carries the cell's mean weight (exact
for unit weights). The resample treats comparisons as independent; the pairs drawn from
one multi-reply ranking are correlated, so for long rankings the interval is somewhat
narrower than a resample of whole judgements would give.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

L2 = 0.01  # default L2 penalty on the log-strengths (see the module docstring)
ELO_SCALE = 400.0 / np.log(10.0)
ELO_BASE = 1000.0

# cell kinds, from the side of the lower-indexed source of the pair
WON, LOST, TIE = 0, 1, 2

_RIDGE = 1e-9  # floor on the Newton matrix's diagonal, so that l2 = 0 never gives a singular solve
_CHUNK_ELEMENTS = 4_000_000  # (draws x S x S) floats held at once during the bootstrap


# --------------------------------------------------------------------------- rows -> counts


@dataclass(frozen=True)
class PairCounts:
    """All comparisons collapsed: S x S matrices plus the (pair, outcome) cells the bootstrap resamples."""

    names: tuple[str, ...]
    beats: np.ndarray  # S x S, beats[i, j]: weight of i's outright wins over j
    ties: np.ndarray  # S x S symmetric, weight of ties between i and j
    rows: int  # comparisons (rows, times their count)
    cell_lo: np.ndarray  # per cell: lower source index of the pair
    cell_hi: np.ndarray  # per cell: higher source index
    cell_kind: np.ndarray  # per cell: WON (lo won), LOST (hi won) or TIE
    cell_rows: np.ndarray  # per cell: number of comparisons
    cell_weight: np.ndarray  # per cell: their total weight

    @property
    def n_sources(self) -> int:
        return len(self.names)

    @property
    def wins(self) -> np.ndarray:
        """S x S, wins[i, j] = i's wins over j + half their ties: the likelihood's data."""
        return self.beats + 0.5 * self.ties

    @property
    def counts(self) -> np.ndarray:
        """S x S symmetric: weight of comparisons between i and j (the diagonal is 0)."""
        return self.beats + self.beats.T + self.ties


def _source_names(n_sources, names, a, b) -> tuple[str, ...]:
    if names is not None:
        names = tuple(str(name) for name in names)
        if n_sources is not None and n_sources != len(names):
            raise ValueError(f"n_sources={n_sources} but {len(names)} names")
        return names
    if n_sources is None:
        n_sources = int(max(a.max(initial=-1), b.max(initial=-1))) + 1
    return tuple(str(i) for i in range(n_sources))


def collapse_comparisons(a, b, outcome, weight=None, *, n_sources: int | None = None, names=None, count=None) -> PairCounts:
    """Collapse pairwise rows into a PairCounts. `outcome` is 1.0 (a won), 0.0 (b won) or
    0.5 (tie); n_sources defaults to len(names), else to the largest index + 1."""
    a = np.asarray(a, dtype=np.int64).reshape(-1)
    b = np.asarray(b, dtype=np.int64).reshape(-1)
    outcome = np.asarray(outcome, dtype=float).reshape(-1)
    n = a.size
    if b.size != n or outcome.size != n:
        raise ValueError("a, b and outcome must have the same length")
    weight = np.ones(n) if weight is None else np.asarray(weight, dtype=float).reshape(-1)
    count = np.ones(n) if count is None else np.asarray(count, dtype=float).reshape(-1)
    if weight.size != n or count.size != n:
        raise ValueError("weight and count must have one entry per row")
    if not (np.isfinite(weight).all() and (weight >= 0).all()):
        raise ValueError("weights must be finite and >= 0")
    if not ((count >= 0).all() and (count == np.round(count)).all()):
        raise ValueError("counts must be whole numbers >= 0")
    names = _source_names(n_sources, names, a, b)
    s = len(names)
    if n and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= s):
        raise ValueError(f"source indices must lie in 0 .. {s - 1}")
    if (a == b).any():
        raise ValueError("a source cannot be compared with itself (a == b)")
    kind = np.full(n, TIE, dtype=np.int64)
    kind[outcome == 1.0] = WON
    kind[outcome == 0.0] = LOST
    if not np.isin(outcome, (0.0, 0.5, 1.0)).all():
        raise ValueError("outcome must be 1.0 (a won), 0.0 (b won) or 0.5 (tie)")
    swap = a > b
    lo, hi = np.where(swap, b, a), np.where(swap, a, b)
    kind = np.where(swap & (kind != TIE), 1 - kind, kind)
    key = (lo * s + hi) * 3 + kind
    total = count * weight
    if s * s * 3 <= 4 * n + 1_000_000:  # dense bincount: no sort
        cell_rows = np.bincount(key, weights=count, minlength=s * s * 3)
        cell_weight = np.bincount(key, weights=total, minlength=s * s * 3)
        cells = np.nonzero(cell_rows)[0]
        cell_rows, cell_weight = cell_rows[cells], cell_weight[cells]
    else:
        cells, inverse = np.unique(key, return_inverse=True)
        cell_rows = np.bincount(inverse.reshape(-1), weights=count, minlength=cells.size)
        cell_weight = np.bincount(inverse.reshape(-1), weights=total, minlength=cells.size)
        keep = cell_rows > 0
        cells, cell_rows, cell_weight = cells[keep], cell_rows[keep], cell_weight[keep]
    cell_kind = cells % 3
    cell_lo, cell_hi = np.divmod(cells // 3, s)
    beats = np.zeros(s * s)
    ties = np.zeros(s * s)
    np.add.at(beats, cell_lo * s + cell_hi, np.where(cell_kind == WON, cell_weight, 0.0))
    np.add.at(beats, cell_hi * s + cell_lo, np.where(cell_kind == LOST, cell_weight, 0.0))
    np.add.at(ties, cell_lo * s + cell_hi, np.where(cell_kind == TIE, cell_weight, 0.0))
    ties = ties.reshape(s, s)
    return PairCounts(
        names=names,
        beats=beats.reshape(s, s),
        ties=ties + ties.T,
        rows=int(cell_rows.sum()),
        cell_lo=cell_lo,
        cell_hi=cell_hi,
        cell_kind=cell_kind,
        cell_rows=cell_rows.astype(np.int64),
        cell_weight=cell_weight,
    )


# --------------------------------------------------------------------------- the fit


def _objective(wins: np.ndarray, s: np.ndarray, l2: float) -> np.ndarray:
    """Penalised log-likelihood per batch entry: sum W_ij log sigma(s_i - s_j) - l2/2 |s|^2."""
    d = s[:, :, None] - s[:, None, :]
    return -(wins * np.logaddexp(0.0, -d)).sum(axis=(1, 2)) - 0.5 * l2 * (s * s).sum(axis=1)


def _newton(wins: np.ndarray, s0: np.ndarray, l2: float, fix: np.ndarray, tol: float, max_iter: int):
    """Batched damped Newton: wins (D x k x k), start s0 (D x k); fix is the projector onto
    the component indicators (it pins each component's mean, which the steps keep at 0).
    Returns the scores (D x k) and whether each fit converged (D,)."""
    n = wins + wins.swapaxes(1, 2)
    s = s0.copy()
    f = _objective(wins, s, l2)
    done = np.zeros(len(s), dtype=bool)
    k = s.shape[1]
    diag = np.arange(k)
    for _ in range(max_iter):
        todo = np.nonzero(~done)[0]
        if todo.size == 0:
            break
        w, nn, st, ft = wins[todo], n[todo], s[todo], f[todo]
        p = 0.5 * (1.0 + np.tanh(0.5 * (st[:, :, None] - st[:, None, :])))  # sigma(s_i - s_j)
        grad = (w - nn * p).sum(axis=2) - l2 * st
        c = nn * p * (1.0 - p)
        matrix = fix - c
        matrix[:, diag, diag] += c.sum(axis=2) + max(l2, _RIDGE)
        step = np.linalg.solve(matrix, grad[:, :, None])[:, :, 0]
        t = np.ones(todo.size)
        slack = 1e-12 * (np.abs(ft) + 1.0)
        for _ in range(50):  # backtracking: halve the step where the objective fell
            candidate = st + t[:, None] * step
            fc = _objective(w, candidate, l2)
            worse = fc < ft - slack
            if not worse.any():
                break
            t[worse] *= 0.5
        s[todo] = candidate
        f[todo] = fc
        done[todo[np.abs(step).max(axis=1, initial=0.0) < tol]] = True
    return s, done


def _components(adjacent: np.ndarray) -> np.ndarray:
    """Connected-component label per node of a symmetric boolean adjacency matrix."""
    k = len(adjacent)
    label = np.full(k, -1, dtype=np.int64)
    current = 0
    for start in range(k):
        if label[start] >= 0:
            continue
        frontier = np.zeros(k, dtype=bool)
        frontier[start] = True
        seen = frontier.copy()
        while frontier.any():
            frontier = adjacent[frontier].any(axis=0) & ~seen
            seen |= frontier
        label[seen] = current
        current += 1
    return label


@dataclass(frozen=True)
class SourceRating:
    """One row of the leaderboard."""

    index: int
    name: str
    rank: int  # 1 = best; sources with no comparisons come last
    score: float  # log-strength, mean 0 within its component; NaN: no comparisons
    ci_low: float
    ci_high: float
    elo: float  # 400 / ln 10 * score + 1000
    elo_low: float
    elo_high: float
    comparisons: float  # weight of its comparisons (their number with unit weights)
    wins: float
    losses: float
    ties: float
    win_rate: float  # (wins + ties / 2) / comparisons; NaN: none
    component: int  # -1: no comparisons


@dataclass(frozen=True)
class Leaderboard:
    """Bradley-Terry leaderboard; every per-source array is indexed by source."""

    names: tuple[str, ...]
    score: np.ndarray  # log-strength, mean 0 within each connected component; NaN: no comparisons
    ci_low: np.ndarray  # percentile bootstrap interval of the score; NaN without draws
    ci_high: np.ndarray
    comparisons: np.ndarray  # weight of each source's comparisons
    wins: np.ndarray
    losses: np.ndarray
    ties: np.ndarray
    win_matrix: np.ndarray  # S x S: (i's wins over j + ties / 2) / comparisons of i and j; NaN: none
    count_matrix: np.ndarray  # S x S symmetric: weight of the comparisons of i and j
    order: np.ndarray  # source indices, best score first, unfitted sources last
    component: np.ndarray  # connected component of the comparison graph; -1: no comparisons
    n_comparisons: int  # rows (comparisons) fitted
    draws: int  # bootstrap resamples behind the interval
    level: float
    l2: float
    converged: bool  # the full fit and every resample

    @property
    def n_sources(self) -> int:
        return len(self.names)

    @property
    def elo(self) -> np.ndarray:
        return ELO_SCALE * self.score + ELO_BASE

    @property
    def elo_low(self) -> np.ndarray:
        return ELO_SCALE * self.ci_low + ELO_BASE

    @property
    def elo_high(self) -> np.ndarray:
        return ELO_SCALE * self.ci_high + ELO_BASE

    @property
    def win_rate(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.comparisons > 0, (self.wins + 0.5 * self.ties) / self.comparisons, np.nan)

    @property
    def connected(self) -> bool:
        """All compared sources form one component, so every pair of scores is comparable."""
        return int(self.component.max(initial=-1)) <= 0

    def table(self) -> list[SourceRating]:
        """The leaderboard's rows, best first."""
        elo, elo_low, elo_high, rate = self.elo, self.elo_low, self.elo_high, self.win_rate
        return [
            SourceRating(
                index=int(i),
                name=self.names[i],
                rank=rank,
                score=float(self.score[i]),
                ci_low=float(self.ci_low[i]),
                ci_high=float(self.ci_high[i]),
                elo=float(elo[i]),
                elo_low=float(elo_low[i]),
                elo_high=float(elo_high[i]),
                comparisons=float(self.comparisons[i]),
                wins=float(self.wins[i]),
                losses=float(self.losses[i]),
                ties=float(self.ties[i]),
                win_rate=float(rate[i]),
                component=int(self.component[i]),
            )
            for rank, i in enumerate(self.order, start=1)
        ]


def fit_leaderboard(
    counts: PairCounts,
    *,
    l2: float = L2,
    draws: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    tol: float = 1e-10,
    max_iter: int = 200,
) -> Leaderboard:
    """Bradley-Terry scores of collapsed comparisons, with a bootstrap interval (draws=0 skips it)."""
    if l2 < 0:
        raise ValueError("l2 must be >= 0")
    if not 0 < level < 1:
        raise ValueError("level must lie strictly between 0 and 1")
    size = counts.n_sources
    pair_counts = counts.counts
    comparisons = pair_counts.sum(axis=1)
    active = np.nonzero(comparisons > 0)[0]
    k = active.size
    score = np.full(size, np.nan)
    ci_low = np.full(size, np.nan)
    ci_high = np.full(size, np.nan)
    component = np.full(size, -1, dtype=np.int64)
    converged = True
    used_draws = 0
    if k:
        wins = counts.wins[np.ix_(active, active)]
        label = _components(pair_counts[np.ix_(active, active)] > 0)
        component[active] = label
        same = label[:, None] == label[None, :]
        fix = same / np.bincount(label)[label][None, :]  # projector onto the component indicators
        fitted, ok = _newton(wins[None], np.zeros((1, k)), l2, fix, tol, max_iter)
        score[active] = fitted[0]
        converged = bool(ok[0])
        if draws > 0:
            samples, ok = _bootstrap(counts, active, fitted[0], l2, fix, draws, seed, tol, max_iter)
            converged = converged and bool(ok.all())
            tail = (1.0 - level) / 2.0
            ci_low[active], ci_high[active] = np.quantile(samples, [tail, 1.0 - tail], axis=0)
            used_draws = draws
    with np.errstate(divide="ignore", invalid="ignore"):
        win_matrix = np.where(pair_counts > 0, counts.wins / pair_counts, np.nan)
    order = np.argsort(np.where(np.isnan(score), np.inf, -score), kind="stable")
    return Leaderboard(
        names=counts.names,
        score=score,
        ci_low=ci_low,
        ci_high=ci_high,
        comparisons=comparisons,
        wins=counts.beats.sum(axis=1),
        losses=counts.beats.sum(axis=0),
        ties=counts.ties.sum(axis=1),
        win_matrix=win_matrix,
        count_matrix=pair_counts,
        order=order,
        component=component,
        n_comparisons=counts.rows,
        draws=used_draws,
        level=level,
        l2=l2,
        converged=converged,
    )


def _bootstrap(counts: PairCounts, active, start, l2, fix, draws, seed, tol, max_iter):
    """(draws x k) refitted scores of multinomial resamples of the comparisons."""
    k = active.size
    position = np.full(counts.n_sources, -1, dtype=np.int64)
    position[active] = np.arange(k)
    useful = counts.cell_weight > 0  # zero-weight rows carry nothing: leave them out of the resample
    lo = position[counts.cell_lo[useful]]
    hi = position[counts.cell_hi[useful]]
    kind = counts.cell_kind[useful]
    rows = counts.cell_rows[useful]
    per_row = counts.cell_weight[useful] / rows
    # each cell adds to W[lo, hi] and/or W[hi, lo]: one entry per (cell, target) with a coefficient
    cell = np.arange(rows.size)
    target = np.concatenate([lo * k + hi, hi * k + lo])
    coefficient = np.concatenate(
        [np.select([kind == WON, kind == TIE], [1.0, 0.5], 0.0), np.select([kind == LOST, kind == TIE], [1.0, 0.5], 0.0)]
    )
    entry_cell = np.concatenate([cell, cell])
    keep = coefficient > 0
    target, coefficient, entry_cell = target[keep], coefficient[keep], entry_cell[keep]
    by_target = np.argsort(target, kind="stable")
    target, coefficient, entry_cell = target[by_target], coefficient[by_target], entry_cell[by_target]
    targets, starts = np.unique(target, return_index=True)
    entry_scale = per_row[entry_cell] * coefficient
    total = int(rows.sum())
    p = rows / total
    rng = np.random.default_rng(seed)
    chunk = max(1, min(draws, _CHUNK_ELEMENTS // max(k * k, entry_cell.size, 1)))
    samples = np.empty((draws, k))
    converged = np.empty(draws, dtype=bool)
    for first in range(0, draws, chunk):
        m = min(chunk, draws - first)
        drawn = rng.multinomial(total, p, size=m)  # m x cells: how often each cell is resampled
        wins = np.zeros((m, k * k))
        wins[:, targets] = np.add.reduceat(drawn[:, entry_cell] * entry_scale, starts, axis=1)
        fitted, ok = _newton(wins.reshape(m, k, k), np.tile(start, (m, 1)), l2, fix, tol, max_iter)
        samples[first : first + m] = fitted
        converged[first : first + m] = ok
    return samples, converged


def bradley_terry(
    a,
    b,
    outcome,
    weight=None,
    *,
    n_sources: int | None = None,
    names=None,
    count=None,
    l2: float = L2,
    draws: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Leaderboard:
    """The leaderboard of pairwise rows: collapse_comparisons, then fit_leaderboard."""
    counts = collapse_comparisons(a, b, outcome, weight, n_sources=n_sources, names=names, count=count)
    return fit_leaderboard(counts, l2=l2, draws=draws, level=level, seed=seed)


# --------------------------------------------------------------------------- rankings -> pairs


@dataclass(frozen=True)
class PairwiseRows:
    """Pairwise rows for collapse_comparisons / bradley_terry (a's outcome against b)."""

    a: np.ndarray
    b: np.ndarray
    outcome: np.ndarray  # 1.0: a ranked above b, 0.5: same group
    judgement: np.ndarray  # which judgement each pair came from


def pairs_from_ranked_arrays(judgement, source, rank_group) -> PairwiseRows:
    """Pairs from flat arrays, one entry per ranked reply: its judgement, its reply's source
    index and its group (lower = better; replies of one group are tied). Every pair of
    replies in one judgement gives a row: the better group wins, the same group ties; pairs
    of replies from one source are skipped. Vectorised: one pass per position offset, so
    O(replies x the longest ranking)."""
    judgement = np.asarray(judgement).reshape(-1)
    source = np.asarray(source, dtype=np.int64).reshape(-1)
    rank_group = np.asarray(rank_group).reshape(-1)
    if not judgement.size == source.size == rank_group.size:
        raise ValueError("judgement, source and rank_group must have the same length")
    order = np.lexsort((rank_group, judgement))  # by judgement, better groups first
    j, s, g = judgement[order], source[order], rank_group[order]
    firsts, seconds = [], []
    offset = 1
    while offset < j.size:
        same = np.nonzero(j[offset:] == j[:-offset])[0]
        if same.size == 0:
            break
        firsts.append(same)
        seconds.append(same + offset)
        offset += 1
    first = np.concatenate(firsts) if firsts else np.zeros(0, dtype=np.int64)
    second = np.concatenate(seconds) if seconds else np.zeros(0, dtype=np.int64)
    keep = s[first] != s[second]
    first, second = first[keep], second[keep]
    outcome = np.where(g[first] < g[second], 1.0, 0.5)  # sorted: first's group is never worse
    return PairwiseRows(s[first], s[second], outcome, j[first])


def pairs_from_rankings(rankings, source_of) -> PairwiseRows:
    """Pairs from ranked judgements, each a list of groups of reply ids, best first, tied
    replies in one group (e.g. [[12], [10, 11]]); source_of maps a reply id to its source
    index. The judgements are flattened by a Python loop over their replies (about a
    microsecond each); for many judgements hand flat arrays to pairs_from_ranked_arrays."""
    judgement, source, group = [], [], []
    for index, ranking in enumerate(rankings):
        for position, replies in enumerate(ranking):
            for reply in replies:
                judgement.append(index)
                source.append(source_of[reply])
                group.append(position)
    return pairs_from_ranked_arrays(
        np.asarray(judgement, dtype=np.int64), np.asarray(source, dtype=np.int64), np.asarray(group, dtype=np.int64)
    )
