"""Annotator quality and bias (#10, part 2): Wilson intervals against published values,
the exact binomial test against exact rational arithmetic, and every per-annotator figure
and flag on simulated and hand-made judgements (no database)."""

import math
import os
import time
from fractions import Fraction
from statistics import NormalDist

import numpy as np
import pytest

from labeling.quality.annotators import (
    EXACT_MAX,
    Thresholds,
    annotator_report,
    binom_cdf,
    binom_pmf,
    binomial_test,
    flag_annotators,
    gold_accuracy,
    length_bias,
    normal_two_sided,
    poisson_binomial_test,
    position_bias,
    speed,
    straight_lining,
    two_proportion_z_test,
    wilson_interval,
    z_for_level,
)

# --------------------------------------------------------------------------- Wilson intervals

# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I,
# method 3 (Wilson score without continuity correction); 0/10 and 10/10 from the same formula
# as tabulated in Agresti & Coull (1998).
PUBLISHED_WILSON = [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (0, 10, 0.0000, 0.2775),
    (10, 10, 0.7225, 1.0000),
]


@pytest.mark.parametrize("k, n, low, high", PUBLISHED_WILSON)
def test_wilson_interval_matches_published_values(k, n, low, high):
    got_low, got_high = wilson_interval(k, n)
    assert got_low == pytest.approx(low, abs=1e-4)
    assert got_high == pytest.approx(high, abs=1e-4)


def test_wilson_interval_vectorised_level_and_empty():
    ks = np.array([k for k, *_ in PUBLISHED_WILSON])
    ns = np.array([n for _, n, *_ in PUBLISHED_WILSON])
    lows, highs = wilson_interval(ks, ns)
    assert np.allclose(lows, [row[2] for row in PUBLISHED_WILSON], atol=1e-4)
    assert np.allclose(highs, [row[3] for row in PUBLISHED_WILSON], atol=1e-4)
    low95, high95 = wilson_interval(81, 263, 0.95)
    low99, high99 = wilson_interval(81, 263, 0.99)
    assert low99 < low95 - 0.01 and high99 > high95 + 0.01
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_z_for_level():
    assert z_for_level(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert z_for_level(0.99) == pytest.approx(2.575829, abs=1e-6)
    assert z_for_level(0.90) == pytest.approx(1.644854, abs=1e-6)
    with pytest.raises(ValueError):
        z_for_level(1.0)


# --------------------------------------------------------------------------- the binomial test


def exact_two_sided(k, n, p):
    """The oracle: the 'minlike' two-sided p-value in exact rational arithmetic."""
    p = Fraction(p)
    pmf = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
    return float(sum(x for x in pmf if x <= pmf[k]))


def test_binomial_test_hand_values():
    assert binomial_test(9, 10, 0.5) == pytest.approx(0.021484375, rel=1e-12)  # 22 / 1024
    assert binomial_test(1, 10, 0.5) == pytest.approx(0.021484375, rel=1e-12)
    assert binomial_test(10, 10, 0.5) == pytest.approx(2 / 1024, rel=1e-12)
    assert binomial_test(5, 10, 0.5) == 1.0
    assert binomial_test(0, 0, 0.5) == 1.0
    assert binomial_test(0, 5, 0.0) == 1.0 and binomial_test(1, 5, 0.0) == 0.0
    with pytest.raises(ValueError):
        binomial_test(11, 10, 0.5)


@pytest.mark.parametrize(
    "k, n, p",
    [(7, 20, Fraction(1, 4)), (0, 12, Fraction(1, 3)), (9, 12, Fraction(1, 3)), (3, 40, Fraction(1, 10)), (33, 60, Fraction(1, 2))],
)
def test_binomial_test_against_exact_fractions(k, n, p):
    assert binomial_test(k, n, float(p)) == pytest.approx(exact_two_sided(k, n, p), rel=1e-9)


def test_binomial_pmf_and_cdf_exact():
    for k in range(11):
        assert binom_pmf(k, 10, 0.3) == pytest.approx(math.comb(10, k) * 0.3**k * 0.7 ** (10 - k), rel=1e-12)
    exact_cdf = float(sum(math.comb(30, i) * Fraction(1, 3) ** i * Fraction(2, 3) ** (30 - i) for i in range(8)))
    assert binom_cdf(7, 30, 1 / 3) == pytest.approx(exact_cdf, rel=1e-10)
    assert binom_cdf(-1, 30, 1 / 3) == 0.0 and binom_cdf(30, 30, 1 / 3) == 1.0
    assert binom_pmf(11, 10, 0.3) == 0.0


def test_binomial_normal_approximation_close_to_exact_for_large_n():
    for k, n, p in [(25_250, 50_000, 0.5), (30_300, 90_000, 1 / 3), (25_100, 50_000, 0.5)]:
        exact = binomial_test(k, n, p)
        approx = binomial_test(k, n, p, exact_max=0)
        assert approx == pytest.approx(exact, rel=0.01)
    # above EXACT_MAX the test is the normal approximation
    n = EXACT_MAX + 1000
    k = n // 2 + 300
    assert binomial_test(k, n, 0.5) == normal_two_sided(k, n / 2, n / 4)
    assert binomial_test(k, n, 0.5) == pytest.approx(binomial_test(k, n, 0.5, exact_max=n), rel=0.01)


def test_poisson_binomial_normal_approximation_close_to_exact():
    rng = np.random.default_rng(1)
    chances = 1 / rng.integers(2, 5, 300)
    pmf = np.array([1.0])
    for c in chances:  # the exact Poisson-binomial distribution by convolution
        pmf = np.convolve(pmf, [1 - c, c])
    mean, sd = chances.sum(), math.sqrt((chances * (1 - chances)).sum())
    for k in (int(mean + 2 * sd), int(mean - 2.5 * sd), int(mean + 3.5 * sd)):
        exact = min(1.0, pmf[pmf <= pmf[k] * (1 + 1e-7)].sum())
        assert poisson_binomial_test(k, chances) == pytest.approx(exact, rel=0.25)
    assert poisson_binomial_test(int(round(mean)), chances) == 1.0


def test_two_proportion_z_test_hand_value():
    # 60/100 vs 45/100: pooled 0.525, se = sqrt(0.525 * 0.475 * 0.02) = 0.070622, z = 2.1240
    assert two_proportion_z_test(60, 100, 45, 100) == pytest.approx(0.033672, abs=1e-5)
    assert two_proportion_z_test(60, 100, 45, 100) == pytest.approx(2 * (1 - NormalDist().cdf(0.15 / 0.0706223)), abs=1e-5)
    assert two_proportion_z_test(5, 10, 0, 0) is None
    assert two_proportion_z_test(10, 10, 20, 20) == 1.0


# --------------------------------------------------------------------------- position bias


def test_always_first_annotator_is_flagged_fair_one_is_not():
    rng = np.random.default_rng(7)
    n = 200
    annotator = np.repeat([1, 2, 3], n)
    winner = np.concatenate([
        np.zeros(n, dtype=int),  # always the first shown
        rng.integers(0, 2, n),  # fair
        np.ones(n, dtype=int),  # always the second shown
    ])
    winner[::10] = -1  # ties / both bad are left out
    report = annotator_report(annotator, winner_position=winner, n_replies=np.full(3 * n, 2))
    rows = report.by_annotator()
    biased, fair, last = rows[1], rows[2], rows[3]
    assert biased.position.n == 180 and biased.position.first == 180
    assert biased.position.share == 1.0 and biased.position.chance == 0.5
    assert biased.position.method == "exact"
    assert biased.position.p_value < 1e-6
    assert biased.position.p_value == pytest.approx(2 * 0.5**180, rel=1e-9)
    assert any("first-shown reply in 100% of 180 judgements (chance 50%" in r for r in biased.flags)
    assert fair.position.p_value > 1e-3 and fair.flags == ()
    assert last.position.share == 0.0 and any("first-shown" in r for r in last.flags)
    assert report.project.position.n == 540
    assert report.project.position.share == pytest.approx((180 + fair.position.first) / 540)


def test_rankings_use_chance_one_over_k_and_mixed_k_uses_normal():
    rng = np.random.default_rng(3)
    n = 300
    # annotator 1: K = 3 rankings, top-ranked position uniform -> fair, exact test at 1/3
    # annotator 2: K mixed 2..4, always the first shown -> biased, Poisson-binomial normal test
    # annotator 3: K = 4, always the first shown, but with ties for best (-1) and a 1-reply task
    k2 = rng.integers(2, 5, n)
    annotator = np.repeat([1, 2, 3], n)
    n_replies = np.concatenate([np.full(n, 3), k2, np.full(n, 4)])
    winner = np.concatenate([rng.integers(0, 3, n), np.zeros(n, dtype=int), np.zeros(n, dtype=int)])
    winner[2 * n: 2 * n + 100] = -1
    n_replies[-1] = 1
    rows = position_bias(annotator, winner, n_replies)
    fair, mixed, four = rows[1], rows[2], rows[3]
    assert fair.chance == pytest.approx(1 / 3) and fair.method == "exact"
    assert fair.p_value == pytest.approx(binomial_test(fair.first, n, 1 / 3), rel=1e-12)
    assert fair.p_value > 1e-3
    assert mixed.method == "normal" and mixed.chance == pytest.approx(np.mean(1 / k2))
    assert mixed.p_value == pytest.approx(poisson_binomial_test(n, 1 / k2), rel=1e-9) and mixed.p_value < 1e-6
    assert four.n == 199 and four.chance == 0.25 and four.method == "exact"
    assert four.p_value == pytest.approx(2 * 0.25**199, rel=1e-6) or four.p_value < 1e-100
    with pytest.raises(ValueError):
        position_bias([1], [2], [2])


# --------------------------------------------------------------------------- length bias


def test_length_bias_against_the_rest_of_the_project():
    rng = np.random.default_rng(11)
    n = 300
    others = 10
    annotator = np.repeat(np.arange(others + 1), n)
    chose = (rng.random((others + 1) * n) < 0.55).astype(int)
    chose[:n] = 1  # annotator 0 always picks the longer reply
    chose[::7] = -1  # equal lengths / no winner / not pairwise
    report = annotator_report(annotator, chose_longer=chose)
    rows = report.by_annotator()
    always = rows[0].length
    valid = chose >= 0
    rest = valid & (annotator != 0)
    assert always.n == int(valid[:n].sum()) and always.longer == always.n and always.rate == 1.0
    assert always.others_rate == pytest.approx(chose[rest].mean())
    assert 0.5 < always.others_rate < 0.6
    assert always.p_value == two_proportion_z_test(always.longer, always.n, int(chose[rest].sum()), int(rest.sum()))
    assert always.p_value < 1e-6
    assert any("longer reply in 100%" in r and "rest of project" in r for r in rows[0].flags)
    assert report.project.length.rate == pytest.approx(chose[valid].mean())
    for a in range(1, others + 1):
        assert not any("longer" in r for r in rows[a].flags), rows[a]
    # the same figures from the section function
    by_annotator, project = length_bias(annotator, chose)
    assert by_annotator[0] == always and project == report.project.length


# --------------------------------------------------------------------------- straight-lining


def test_straight_lining_runs_per_annotator_in_time_order():
    # annotator 7 in time order: A A A B B A A A A  (runs 3, 2, 4)
    # annotator 9 in time order: B A A A B          (runs 1, 3, 1)
    # rows interleaved in time and handed in shuffled order
    seven = list("AAABBAAAA")
    nine = list("BAAAB")
    rows = [(7, 10 * i, c) for i, c in enumerate(seven)] + [(9, 10 * i + 5, c) for i, c in enumerate(nine)]
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    annotator = np.array([r[0] for r in rows])
    when = np.array([r[1] for r in rows])
    code = np.array([r[2] for r in rows])
    result = straight_lining(annotator, code, when, min_run=3)
    assert result[7].judgements == 9 and result[7].longest_run == 4
    assert result[7].long_runs == 2 and result[7].share == pytest.approx(7 / 9)
    assert result[9].longest_run == 3 and result[9].long_runs == 1 and result[9].share == pytest.approx(3 / 5)
    # in global time order the two annotators alternate: a global run count would find no run of 3
    result = straight_lining(annotator, code, when, min_run=4)
    assert (result[7].long_runs, result[7].share) == (1, pytest.approx(4 / 9))
    assert (result[9].long_runs, result[9].share) == (0, 0.0)
    # datetime64 order keys and string annotator ids work too
    stamps = np.datetime64("2024-01-01T00:00:00") + when.astype("timedelta64[s]")
    result = straight_lining(np.where(annotator == 7, "ann", "bob"), code, stamps, min_run=3)
    assert result["ann"].longest_run == 4 and result["bob"].long_runs == 1


def test_straight_lining_flag():
    n = 100
    annotator = np.repeat([1, 2], n)
    codes = np.array(["A"] * 50 + ["B", "A"] * 25 + list(np.random.default_rng(2).choice(["A", "B", "tie"], n)))
    report = annotator_report(annotator, answer_code=codes, order=np.arange(2 * n), min_run=10)
    rows = report.by_annotator()
    assert rows[1].straight.longest_run == 50 and rows[1].straight.share == pytest.approx(0.5)
    assert rows[1].straight.long_runs == 1
    assert any("50% of judgements in 1 runs of 10 or more identical answers (longest 50" in r for r in rows[1].flags)
    assert rows[2].straight.share < 0.3 and rows[2].flags == ()


# --------------------------------------------------------------------------- speed, gold, newcomers


def test_median_time_and_fast_share():
    annotator = np.array([1, 1, 1, 2, 2, 2, 2, 2, 3])
    times = np.array([300, 100, 200, 400, 100, 300, 200, np.nan, -1])
    result = speed(annotator, times, min_time_ms=250)
    assert (result[1].timed, result[1].median_ms, result[1].fast) == (3, 200.0, 2)
    assert result[1].fast_share == pytest.approx(2 / 3)
    assert (result[2].timed, result[2].median_ms, result[2].fast, result[2].fast_share) == (4, 250.0, 2, 0.5)
    assert (result[3].timed, result[3].median_ms, result[3].fast_share) == (0, None, None)
    assert speed(annotator, times)[1].fast_share is None  # no minimum time set
    report = annotator_report(annotator, time_ms=times, min_time_ms=250)
    assert report.project.speed.median_ms == 200.0 and report.project.speed.fast_share == pytest.approx(4 / 7)


def test_fast_annotator_flagged_and_gold_flag_uses_upper_bound():
    n = 60
    annotator = np.repeat([1, 2, 3, 4], n)
    times = np.concatenate([np.full(n, 800.0), np.full(n, 9000.0), np.full(n, 9000.0), np.full(n, 9000.0)])
    gold = np.full(4 * n, -1)
    gold[n: n + 25] = [1] * 10 + [0] * 15  # annotator 2: 10 of 25 -> CI 23-59%
    gold[2 * n: 2 * n + 3] = [1, 0, 0]  # annotator 3: 1 of 3 -> upper bound 79%, not flagged
    gold[3 * n: 3 * n + 30] = [1] * 24 + [0] * 6  # annotator 4: 80%
    report = annotator_report(annotator, time_ms=times, gold_correct=gold, min_time_ms=3000,
                              thresholds=Thresholds(min_gold=0))
    rows = report.by_annotator()
    assert rows[1].speed.fast_share == 1.0
    assert rows[1].flags == ("100% of 60 judgements faster than 3 s (median 0.8 s; at most 20% allowed)",)
    low, high = wilson_interval(10, 25)
    assert (rows[2].gold.n, rows[2].gold.correct, rows[2].gold.low, rows[2].gold.high) == (25, 10, low, high)
    assert rows[2].flags == ("gold accuracy 40% (95% CI 23-59%, 25 gold tasks) below 70%",)
    assert rows[3].gold.accuracy == pytest.approx(1 / 3) and rows[3].gold.high > 0.7 and rows[3].flags == ()
    assert rows[4].flags == ()
    assert report.project.gold.n == 58 and report.project.gold.correct == 35
    assert gold_accuracy(annotator, gold)[2] == rows[2].gold


def test_min_judgements_prevents_flags_for_newcomers():
    annotator = np.repeat([1], 8)
    winner = np.zeros(8, dtype=int)
    times = np.full(8, 100.0)
    quiet = annotator_report(annotator, winner_position=winner, time_ms=times, min_time_ms=3000,
                             thresholds=Thresholds(max_position_bias_p=0.05))
    assert quiet.annotators[0].flags == ()
    (warning,) = quiet.annotators[0].warnings  # the bias test already shows evidence; the speed share waits
    assert warning.startswith("early warning (8 judgements; flags start at 30): chose the first-shown reply in 100% of 8")
    loud = annotator_report(annotator, winner_position=winner, time_ms=times, min_time_ms=3000,
                            thresholds=Thresholds(max_position_bias_p=0.05, min_judgements=5))
    assert len(loud.annotators[0].flags) == 2  # position (p = 2 / 256) and speed
    assert flag_annotators(loud.annotators, Thresholds(min_judgements=9)) == {1: []}


def test_a_careless_start_is_an_early_warning_on_evidence_not_a_flag():
    """#20: 1 s per task, the first-shown reply every time. Under the default thresholds
    (p < 0.001, 30 judgements before a flag) 12 such judgements are evidence (p = 2 / 4096)
    and warn; 8 are not yet (p = 0.0078)."""
    for n, warned in ((8, False), (12, True)):
        report = annotator_report(np.repeat([1], n), winner_position=np.zeros(n, dtype=int), time_ms=np.full(n, 1000.0),
                                  min_time_ms=3000, thresholds=Thresholds())
        row = report.annotators[0]
        assert row.flags == ()  # a flag (and an automatic pause) still waits for 30 judgements
        assert bool(row.warnings) is warned
    assert row.warnings == ("early warning (12 judgements; flags start at 30): chose the first-shown reply in 100% of 12 judgements"
                            " (chance 50%, p = 0.00049)",)


def test_reasons_are_plain_text_and_missing_inputs_leave_figures_empty():
    annotator = np.repeat([1, 2], 50)
    report = annotator_report(annotator, winner_position=np.zeros(100, dtype=int),
                              chose_longer=np.r_[np.ones(50), np.zeros(50)].astype(int),
                              answer_code=np.full(100, "A"), time_ms=np.full(100, 10.0), min_time_ms=50,
                              gold_correct=np.zeros(100, dtype=int))
    reasons = [r for row in report.annotators for r in row.flags]
    assert len(reasons) == 10  # every check for both (annotator 2 always picks the shorter reply)
    assert all(isinstance(r, str) and not set(r) & set("<>&\"'") for r in reasons)
    empty = annotator_report(annotator).annotators[0]
    assert empty.judgements == 50
    assert empty.gold.accuracy is None and empty.speed.median_ms is None and empty.position.p_value is None
    assert empty.length.rate is None and empty.straight.share is None and empty.flags == ()
    with pytest.raises(ValueError):
        annotator_report(annotator, time_ms=np.zeros(99))


# --------------------------------------------------------------------------- speed on many judgements


def test_speed_on_many_judgements_matches_per_annotator_reference():
    n = int(os.environ.get("AQ_SPEED_N", 200_000))
    rng = np.random.default_rng(5)
    annotator = rng.integers(0, 200, n)
    times = rng.lognormal(9, 1, n)
    n_replies = rng.choice([2, 2, 2, 3, 4], n)
    winner = rng.integers(-1, 2, n)
    chose = rng.integers(-1, 2, n)
    code = rng.choice(np.array(["A", "B", "tie"]), n, p=[0.45, 0.45, 0.1])
    order = rng.permutation(n)
    gold = rng.choice([-1, -1, -1, 0, 1, 1], n)
    start = time.perf_counter()
    report = annotator_report(annotator, time_ms=times, winner_position=winner, n_replies=n_replies,
                              chose_longer=chose, answer_code=code, order=order, gold_correct=gold,
                              min_time_ms=3000, min_run=5)
    elapsed = time.perf_counter() - start
    print(f"\nannotator_report: {n:,} judgements by 200 annotators in {elapsed:.3f} s")
    assert len(report.annotators) == 200 and sum(r.judgements for r in report.annotators) == n
    rows = report.by_annotator()
    for a in (0, 57, 199):  # the slow way, one annotator at a time
        mine = annotator == a
        row = rows[a]
        assert row.speed.median_ms == pytest.approx(np.median(times[mine]))
        assert row.speed.fast == int((times[mine] < 3000).sum())
        assert row.gold.correct == int((gold[mine] == 1).sum()) and row.gold.n == int((gold[mine] >= 0).sum())
        counted = mine & (winner >= 0)
        assert row.position.n == int(counted.sum()) and row.position.first == int((counted & (winner == 0)).sum())
        assert row.position.chance == pytest.approx(np.mean(1 / n_replies[counted]))
        seq = code[mine][np.argsort(order[mine])]
        runs, length = [], 1
        for prev, cur in zip(seq[:-1], seq[1:]):
            if cur == prev:
                length += 1
            else:
                runs.append(length)
                length = 1
        runs.append(length)
        assert row.straight.longest_run == max(runs)
        assert row.straight.long_runs == sum(r >= 5 for r in runs)
        assert row.straight.share == pytest.approx(sum(r for r in runs if r >= 5) / len(seq))
