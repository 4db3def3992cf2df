"""Leaderboard (#10, part 4): the Bradley-Terry fit against a direct maximum-likelihood fit
written out here, recovery of known strengths, ties, the win-rate matrix, rankings to
pairs, and speed (no database)."""

import time

import numpy as np
import pytest

from labeling.quality.leaderboard import (
    ELO_BASE,
    ELO_SCALE,
    L2,
    bradley_terry,
    collapse_comparisons,
    fit_leaderboard,
    pairs_from_ranked_arrays,
    pairs_from_rankings,
)

# a small fixed example: 4 sources, every pair compared, both ways, with ties (strongly connected)
EXAMPLE = [
    # a, b, outcome
    (0, 1, 1.0), (0, 1, 1.0), (0, 1, 0.0), (0, 1, 0.5),
    (1, 0, 1.0),
    (0, 2, 1.0), (2, 0, 0.0), (0, 2, 0.0), (0, 2, 1.0),
    (0, 3, 1.0), (3, 0, 1.0), (0, 3, 1.0), (0, 3, 0.5), (3, 0, 0.0),
    (1, 2, 0.5), (1, 2, 1.0), (2, 1, 1.0), (1, 2, 1.0),
    (1, 3, 1.0), (1, 3, 0.0), (3, 1, 0.5),
    (2, 3, 1.0), (2, 3, 0.0), (3, 2, 0.0), (2, 3, 1.0), (2, 3, 0.5),
]  # fmt: skip


def example_rows():
    rows = np.array(EXAMPLE)
    return rows[:, 0].astype(int), rows[:, 1].astype(int), rows[:, 2]


def direct_fit(a, b, outcome, n_sources, l2, iterations=200_000):
    """Maximise the Bradley-Terry log-likelihood written row by row,
    sum_rows [o log sigma(s_a - s_b) + (1 - o) log sigma(s_b - s_a)] - l2/2 |s|^2,
    by plain gradient ascent (a fixed step under 1 / Lipschitz constant), mean kept at 0."""

    def gradient(s):
        p = 1.0 / (1.0 + np.exp(-(s[a] - s[b])))
        g = np.zeros(n_sources)
        np.add.at(g, a, outcome - p)
        np.add.at(g, b, p - outcome)
        return g - l2 * s

    degree = np.bincount(a, minlength=n_sources) + np.bincount(b, minlength=n_sources)
    step = 1.0 / (0.5 * degree.max() + l2)  # the Hessian's norm is at most max degree / 2 + l2
    s = np.zeros(n_sources)
    for _ in range(iterations):
        g = gradient(s)
        if np.abs(g).max() < 1e-13:
            break
        s = s + step * g
        s -= s.mean()
    assert np.abs(gradient(s)).max() < 1e-10  # the reference itself converged
    return s


def log_likelihood(a, b, outcome, s, l2):
    d = s[a] - s[b]
    return float(np.sum(-outcome * np.logaddexp(0, -d) - (1 - outcome) * np.logaddexp(0, d)) - 0.5 * l2 * s @ s)


@pytest.mark.parametrize("l2", [L2, 0.5])
def test_agrees_with_a_direct_penalised_fit(l2):
    a, b, outcome = example_rows()
    expected = direct_fit(a, b, outcome, 4, l2)
    result = bradley_terry(a, b, outcome, n_sources=4, l2=l2, draws=0)
    assert result.converged
    np.testing.assert_allclose(result.score, expected, atol=1e-6)
    assert log_likelihood(a, b, outcome, result.score, l2) >= log_likelihood(a, b, outcome, expected, l2) - 1e-12
    assert result.score.sum() == pytest.approx(0, abs=1e-9)  # the penalty centres the scores
    np.testing.assert_allclose(result.elo, ELO_SCALE * expected + ELO_BASE, atol=1e-4)
    assert list(result.order) == list(np.argsort(-expected))


def test_agrees_with_the_plain_maximum_likelihood_estimate():
    a, b, outcome = example_rows()
    expected = direct_fit(a, b, outcome, 4, 0.0)
    result = bradley_terry(a, b, outcome, n_sources=4, l2=0.0, draws=0)
    assert result.converged
    np.testing.assert_allclose(result.score, expected, atol=1e-6)
    # and the default penalty moves it, but only a little on this data
    penalised = bradley_terry(a, b, outcome, n_sources=4, draws=0).score
    assert 1e-6 < np.abs(penalised - expected).max() < 0.05


def test_weights_and_counts_are_repeated_rows():
    a, b, outcome = example_rows()
    doubled = bradley_terry(np.r_[a, a], np.r_[b, b], np.r_[outcome, outcome], n_sources=4, draws=0)
    weighted = bradley_terry(a, b, outcome, np.full(len(a), 2.0), n_sources=4, draws=0)
    counted = bradley_terry(a, b, outcome, n_sources=4, count=np.full(len(a), 2), draws=0)
    np.testing.assert_allclose(weighted.score, doubled.score, atol=1e-9)
    np.testing.assert_allclose(counted.score, doubled.score, atol=1e-9)
    assert counted.n_comparisons == doubled.n_comparisons == 2 * len(a)
    single = bradley_terry(a, b, outcome, n_sources=4, draws=0)
    assert np.abs(single.score - doubled.score).max() > 1e-4  # the penalty weighs less against more data


def test_bootstrap_resamples_weighted_rows_with_their_weights():
    a, b, outcome = simulate(np.array([0.3, 0.0, -0.3]), 3_000, seed=5)
    weight = np.where((a == 0) & (outcome == 1.0), 3.0, 1.0)  # source 0's wins count triple
    weighted = bradley_terry(a, b, outcome, weight, draws=300, seed=2)
    plain = bradley_terry(a, b, outcome, draws=0)
    assert weighted.score[0] > plain.score[0] + 0.3
    assert (weighted.ci_low < weighted.score).all() and (weighted.score < weighted.ci_high).all()


def simulate(strengths, n, seed):
    rng = np.random.default_rng(seed)
    k = len(strengths)
    a = rng.integers(0, k, n)
    b = (a + rng.integers(1, k, n)) % k
    outcome = (rng.random(n) < 1 / (1 + np.exp(-(strengths[a] - strengths[b])))).astype(float)
    return a, b, outcome


def test_recovers_known_strengths_with_calibrated_intervals():
    strengths = np.array([-0.8, -0.3, 0.0, 0.4, 0.7])
    strengths -= strengths.mean()
    a, b, outcome = simulate(strengths, 20_000, seed=7)
    result = bradley_terry(a, b, outcome, names="ABCDE", draws=500, seed=1)
    assert result.converged and result.draws == 500
    assert np.abs(result.score - strengths).max() < 0.05
    assert list(result.order) == [4, 3, 2, 1, 0]
    inside = (result.ci_low < strengths) & (strengths < result.ci_high)
    assert inside.sum() >= 4
    assert (result.ci_low < result.score).all() and (result.score < result.ci_high).all()
    width = result.ci_high - result.ci_low
    assert (0.03 < width).all() and (width < 0.2).all()  # about 4 standard errors of ~0.02
    np.testing.assert_allclose(result.elo_high - result.elo_low, ELO_SCALE * width)

    few = bradley_terry(a[:2_000], b[:2_000], outcome[:2_000], n_sources=5, draws=500, seed=1)
    ratio = (few.ci_high - few.ci_low) / width
    assert (ratio > 2).all() and (ratio < 5).all()  # sqrt(10) = 3.2 times wider with a tenth of the data

    half = bradley_terry(a, b, outcome, n_sources=5, draws=500, seed=1, level=0.5)
    ratio = width / (half.ci_high - half.ci_low)
    assert (ratio > 2.2).all() and (ratio < 3.8).all()  # normal quantiles: 1.96 / 0.674 = 2.9

    again = bradley_terry(a, b, outcome, n_sources=5, draws=500, seed=1)
    np.testing.assert_array_equal(again.ci_low, result.ci_low)  # the seed fixes the interval

    table = result.table()
    assert [row.name for row in table] == list("EDCBA")
    assert [row.rank for row in table] == [1, 2, 3, 4, 5]
    assert table[0].comparisons == result.comparisons[4] and table[0].elo_low == result.elo_low[4]


def test_ties_count_as_half_a_win():
    # 0 and 1 only tie each other: equal scores
    only_ties = bradley_terry([0, 1, 0], [1, 0, 1], [0.5, 0.5, 0.5], draws=0)
    np.testing.assert_allclose(only_ties.score, [0.0, 0.0], atol=1e-12)
    assert list(only_ties.ties) == [3, 3] and list(only_ties.wins) == [0, 0]
    # two sources with the same record against a third and only ties between them: equal scores
    a = [0, 1, 0, 0, 0, 0, 1, 1, 1, 1]
    b = [1, 0, 2, 2, 2, 2, 2, 2, 2, 2]
    o = [0.5, 0.5, 1, 1, 1, 0, 1, 1, 1, 0]
    same = bradley_terry(a, b, o, draws=0)
    assert same.score[0] == pytest.approx(same.score[1], abs=1e-12) and same.score[0] > same.score[2]
    # a tie is exactly half a win and half a loss
    a, b, outcome = example_rows()
    tie = outcome == 0.5
    split_a = np.r_[a[~tie], a[tie], a[tie]]
    split_b = np.r_[b[~tie], b[tie], b[tie]]
    split_o = np.r_[outcome[~tie], np.ones(tie.sum()), np.zeros(tie.sum())]
    split_w = np.r_[np.ones((~tie).sum()), np.full(2 * tie.sum(), 0.5)]
    np.testing.assert_allclose(
        bradley_terry(split_a, split_b, split_o, split_w, draws=0).score, bradley_terry(a, b, outcome, draws=0).score, atol=1e-12
    )
    # ... and not nothing: dropping the ties changes the fit
    without_ties = bradley_terry(a[~tie], b[~tie], outcome[~tie], draws=0).score
    assert np.abs(without_ties - bradley_terry(a, b, outcome, draws=0).score).max() > 1e-3


def test_win_rate_matrix_and_counts_by_hand():
    # 0 beats 1 twice, 1 beats 0 once, 0 and 1 tie once; 1 and 2 tie once; 0 and 2 never meet; 3 never plays
    a = [0, 1, 1, 0, 2]
    b = [1, 0, 0, 1, 1]
    o = [1.0, 0.0, 1.0, 0.5, 0.5]
    result = bradley_terry(a, b, o, n_sources=4, draws=50)
    nan = np.nan
    np.testing.assert_array_equal(
        result.win_matrix,
        [[nan, 0.625, nan, nan], [0.375, nan, 0.5, nan], [nan, 0.5, nan, nan], [nan, nan, nan, nan]],
    )
    np.testing.assert_array_equal(result.count_matrix, [[0, 4, 0, 0], [4, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(result.comparisons, [4, 5, 1, 0])
    np.testing.assert_array_equal(result.wins, [2, 1, 0, 0])
    np.testing.assert_array_equal(result.losses, [1, 2, 0, 0])
    np.testing.assert_array_equal(result.ties, [1, 2, 1, 0])
    np.testing.assert_allclose(result.win_rate, [0.625, 0.4, 0.5, nan])
    assert result.n_comparisons == 5
    counts = collapse_comparisons(a, b, o, n_sources=4)
    np.testing.assert_array_equal(counts.wins[:2, :2], [[0, 2.5], [1.5, 0]])
    assert sorted(zip(counts.cell_lo, counts.cell_hi, counts.cell_kind, counts.cell_rows)) == [
        (0, 1, 0, 2),  # 0 won twice
        (0, 1, 1, 1),  # 1 won once
        (0, 1, 2, 1),  # one tie
        (1, 2, 2, 1),
    ]


def test_pairs_from_rankings_by_hand():
    source_of = {10: 0, 11: 1, 12: 2, 20: 0, 21: 0, 22: 1}
    rankings = [
        [[12], [10, 11]],  # 12 beats 10 and 11, which tie
        [[20, 21], [22]],  # 20 and 21 tie but share source 0: skipped; both beat 22
    ]
    pairs = pairs_from_rankings(rankings, source_of)
    got = sorted(zip(pairs.a.tolist(), pairs.b.tolist(), pairs.outcome.tolist(), pairs.judgement.tolist()))
    assert got == [(0, 1, 0.5, 0), (0, 1, 1.0, 1), (0, 1, 1.0, 1), (2, 0, 1.0, 0), (2, 1, 1.0, 0)]
    # the flat-array form, judgements interleaved and groups out of order, gives the same pairs
    flat = pairs_from_ranked_arrays(
        judgement=[1, 0, 0, 1, 0, 1], source=[1, 0, 1, 0, 2, 0], rank_group=[1, 1, 1, 0, 0, 0]
    )
    assert sorted(zip(flat.a.tolist(), flat.b.tolist(), flat.outcome.tolist(), flat.judgement.tolist())) == got
    # and they feed the fit: source 2 won everything it played
    result = bradley_terry(pairs.a, pairs.b, pairs.outcome, n_sources=3, draws=0)
    assert result.order[0] == 2
    assert pairs_from_rankings([], {}).a.size == 0
    assert pairs_from_rankings([[[10, 20]]], source_of).a.size == 0  # one source only


def test_undefeated_source_stays_finite_and_missing_source_is_nan():
    a = [0] * 10 + [1, 2, 1, 2]
    b = [1] * 10 + [2, 1, 2, 1]
    o = [1.0] * 10 + [1.0, 1.0, 0.0, 0.5]
    result = bradley_terry(a, b, o, n_sources=4, draws=200)
    fitted = result.score[:3]
    assert np.isfinite(fitted).all() and np.isfinite(result.ci_low[:3]).all() and np.isfinite(result.ci_high[:3]).all()
    assert result.converged
    assert result.order[0] == 0 and fitted[0] > fitted[1] + 2
    assert fitted[0] < 15  # the penalty holds it
    stronger = bradley_terry([0] * 100 + a[10:], [1] * 100 + b[10:], [1.0] * 100 + o[10:], n_sources=4, draws=0)
    assert fitted[0] < stronger.score[0] < 20  # more wins, higher, still finite
    # source 3 never played: NaN, unfitted, last
    assert np.isnan(result.score[3]) and np.isnan(result.ci_low[3]) and np.isnan(result.elo[3])
    assert result.comparisons[3] == 0 and result.component[3] == -1 and result.order[-1] == 3
    assert result.table()[-1].name == "3" and np.isnan(result.table()[-1].win_rate)
    # without the penalty the maximum-likelihood estimate does not exist
    assert not bradley_terry(a, b, o, n_sources=4, l2=0.0, draws=0).converged


def test_disconnected_graph_and_degenerate_inputs():
    # {0, 1} and {2, 3} never meet: each component is centred on its own
    a = [0, 0, 1, 2, 3, 3, 3]
    b = [1, 1, 0, 3, 2, 2, 2]
    o = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]  # 0 beats 1 two to one, 3 beats 2 three to one
    result = bradley_terry(a, b, o, draws=100)
    assert result.component[0] == result.component[1] != result.component[2] == result.component[3]
    assert not result.connected
    assert result.score[0] + result.score[1] == pytest.approx(0, abs=1e-9)
    assert result.score[2] + result.score[3] == pytest.approx(0, abs=1e-9)
    assert result.score[0] > 0 and result.score[3] > 0 and result.converged
    assert bradley_terry([0, 1], [1, 2], [1.0, 0.0], draws=0).connected
    # a single source, or nothing at all: no comparisons, nothing fitted
    single = bradley_terry([], [], [], names=["demo"], draws=100)
    assert single.n_sources == 1 and np.isnan(single.score).all() and single.draws == 0
    assert single.table()[0].name == "demo" and single.table()[0].comparisons == 0
    assert bradley_terry([], [], [], draws=10).n_sources == 0
    with pytest.raises(ValueError):
        bradley_terry([0], [0], [1.0])  # a source against itself
    with pytest.raises(ValueError):
        bradley_terry([0], [1], [0.7])  # only wins, losses and ties
    with pytest.raises(ValueError):
        bradley_terry([0], [2], [1.0], n_sources=2)
    with pytest.raises(ValueError):
        bradley_terry([0], [1], [1.0], names=["x", "y"], n_sources=3)


def test_speed_on_many_comparisons():
    rng = np.random.default_rng(3)
    strengths = rng.normal(0, 0.5, 50)
    strengths -= strengths.mean()
    a, b, outcome = simulate(strengths, 200_000, seed=4)
    outcome[rng.random(outcome.size) < 0.1] = 0.5
    started = time.perf_counter()
    counts = collapse_comparisons(a, b, outcome, n_sources=50)
    result = fit_leaderboard(counts, draws=200, seed=0)
    elapsed = time.perf_counter() - started
    print(f"\n200,000 comparisons, 50 sources, fit + 200 bootstrap draws: {elapsed:.2f} s")
    assert result.converged and result.draws == 200 and result.n_comparisons == 200_000
    # ties shrink the scores toward 0 (a tie is half a win whoever is stronger), but the order holds
    assert np.corrcoef(result.score, strengths)[0, 1] > 0.98
    assert np.isfinite(result.ci_low).all() and (result.ci_low < result.ci_high).all()
