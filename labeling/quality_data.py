"""The database side of the quality statistics (#10): human judgements of a project read
into flat numpy arrays, handed to the pure modules in labeling/quality/.

Each judgement is read once, as a few columns (values_list, chunked), never as a model
instance. Verdicts are put in the task's own reply order (task positions), so that two
annotators who saw the replies in different orders are compared on the same scale.

Scales:
* nominal, pairwise tasks: 0 = reply #1 better, 1 = reply #2 better, 2 = tie, 3 = both bad;
* ordinal, pairwise tasks, choice x strength: 0 .. 8 from "#1 much better" (0) through
  "#1 slightly better" (3), "no preference" (4: tie or both bad) to "#2 much better" (8);
  a winner without a strength (the API allows it) is left out of this scale only;
* ordinal, ranking tasks (K > 2): the unit is one reply of one task, the value its rank
  group (0 = best; tied replies share a group).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import date

import numpy as np
from django.contrib.auth import get_user_model

from .models import AnnotatorPause, Project, ProjectQualitySettings, Response
from .quality.agreement import agreement_with_majority, alpha_by_period, cohen_kappa_pairs, krippendorff_alpha, majority_flags
from .quality.annotators import AnnotatorReport, Thresholds, annotator_report, wilson_interval
from .quality.leaderboard import bradley_terry, pairs_from_ranked_arrays
from .quality_table import JudgementTable, build_table, fetch_columns, is_in_sorted, lookup_sorted

CHUNK = 5000
NOMINAL = ("#1 better", "#2 better", "tie", "both bad")


def judgement_table(project: Project) -> JudgementTable:
    """The project's human judgements as columns (labeling.quality_table), read once per
    report: the summaries below take it as `table`."""
    return build_table(project)


def judgement_arrays(project: Project, *, table: JudgementTable | None = None) -> dict[str, np.ndarray]:
    """Human judgements of the project as arrays (see the module docstring for the scales)."""
    table = judgement_table(project) if table is None else table
    pairwise = table.nominal >= 0
    out = {
        "pair_task": table.task[pairwise], "pair_annotator": table.annotator[pairwise], "pair_nominal": table.nominal[pairwise],
        "pair_ordinal": table.ordinal[pairwise], "pair_day": table.day[pairwise],
    }
    out.update({f"rank_{k}": table.rank[k] for k in ("unit_task", "unit_position", "annotator", "rank", "day")})
    return out


def _alpha(result) -> dict:
    return asdict(result)


def _week_start(days: np.ndarray) -> np.ndarray:
    """Monday of each day's week, as a proleptic ordinal (date.toordinal: Monday = 1 mod 7)."""
    return days - (days - 1) % 7


def agreement_summary(project: Project, *, draws: int = 1000, seed: int = 0, table: JudgementTable | None = None) -> dict:
    """Alpha (nominal, ordinal, rankings) with bootstrap CIs, alpha per week, Cohen's kappa
    for every pair of annotators, agreement with the majority of the others."""
    data = judgement_arrays(project, table=table)
    task, annotator = data["pair_task"], data["pair_annotator"]
    nominal, ordinal = data["pair_nominal"], data["pair_ordinal"]
    has_ordinal = ordinal >= 0
    rank_units = data["rank_unit_task"] * 16 + data["rank_unit_position"]  # K <= 8: a unique id per (task, reply)
    weeks = _week_start(data["pair_day"])
    by_week = alpha_by_period(task, nominal, weeks, len(NOMINAL), "nominal") if task.size else {}
    usernames = dict(get_user_model().objects.filter(pk__in=np.unique(annotator).tolist()).values_list("pk", "username"))
    kappas = cohen_kappa_pairs(task, annotator, nominal, len(NOMINAL)) if task.size else []
    usable, agreed = majority_flags(task, nominal, len(NOMINAL))
    over_time = []
    for week in np.unique(weeks):
        in_week = weeks == week
        pairs = cohen_kappa_pairs(task[in_week], annotator[in_week], nominal[in_week], len(NOMINAL))
        weighted = [(p.kappa, p.shared) for p in pairs if p.kappa is not None]
        compared = int(usable[in_week].sum())
        over_time.append({
            "week": date.fromordinal(int(week)).isoformat(),
            "judgements": int(in_week.sum()),
            "majority_rate": float(agreed[in_week].sum() / compared) if compared else None,
            "mean_kappa": float(sum(k * n for k, n in weighted) / sum(n for _, n in weighted)) if weighted else None,
        })
    majority = agreement_with_majority(task, annotator, nominal, len(NOMINAL)) if task.size else []
    return {
        "pairwise_judgements": int(task.size),
        "ranking_judgement_replies": int(rank_units.size),
        "alpha": {
            "nominal": _alpha(krippendorff_alpha(task, nominal, 4, "nominal", draws=draws, seed=seed)),
            "ordinal_strength": _alpha(krippendorff_alpha(task[has_ordinal], ordinal[has_ordinal], 9, "ordinal", draws=draws, seed=seed)),
            "ordinal_rankings": _alpha(krippendorff_alpha(rank_units, data["rank_rank"], 8, "ordinal", draws=draws, seed=seed)),
        },
        "by_week": over_time,  # agreement with the majority and kappa (pairs weighted by shared tasks) per week of judging
        "alpha_by_week": [
            {"week": date.fromordinal(int(week)).isoformat(), **_alpha(result)} for week, result in sorted(by_week.items())
        ],
        "kappa_pairs": [
            {
                "annotator_a": usernames.get(p.coder_a, str(p.coder_a)),
                "annotator_b": usernames.get(p.coder_b, str(p.coder_b)),
                "shared": p.shared,
                "observed": p.observed,
                "kappa": p.kappa,
            }
            for p in sorted(kappas, key=lambda p: -p.shared)
        ],
        "majority_agreement": [
            {"annotator": usernames.get(m.coder, str(m.coder)), "compared": m.compared, "agreed": m.agreed, "rate": m.rate}
            for m in sorted(majority, key=lambda m: usernames.get(m.coder, ""))
        ],
    }


ANSWER_CODES = {"A": 0, "B": 1, "tie": 2, "both_bad": 3}  # rankings: 10 + the display position of the top reply (9: tied top)


def quality_settings_for(project: Project) -> ProjectQualitySettings:
    settings_row, _ = ProjectQualitySettings.objects.get_or_create(project=project)
    return settings_row


def thresholds_for(settings_row: ProjectQualitySettings) -> Thresholds:
    return Thresholds(
        min_gold_accuracy=settings_row.min_gold_accuracy,
        position_bias_margin=settings_row.position_bias_margin,
        max_fast_share=settings_row.max_fast_share,
        max_straight_share=settings_row.max_straight_share,
        min_judgements=settings_row.min_judgements,
    )


def annotator_arrays(project: Project, *, table: JudgementTable | None = None) -> dict[str, np.ndarray]:
    """Per human judgement, in the annotator's own terms (what they saw): the display
    position that won, how many replies were shown, whether the longer reply won, the
    key pressed (for straight-lining), time on task, gold outcome, time."""
    table = judgement_table(project) if table is None else table
    answer = np.where((table.choice >= 0) & (table.choice <= 3), table.choice, np.where(table.shown_winner >= 0, 10 + table.shown_winner, 9))
    return {
        "annotator": table.annotator, "time_ms": table.time_ms, "winner_position": table.shown_winner, "n_replies": table.n_shown,
        "chose_longer": table.chose_longer, "answer": answer, "order": table.epoch, "gold": table.gold,
    }


def annotator_quality(project: Project, settings_row: ProjectQualitySettings | None = None, *, table: JudgementTable | None = None) -> AnnotatorReport:
    settings_row = settings_row or quality_settings_for(project)
    data = annotator_arrays(project, table=table)
    return annotator_report(
        data["annotator"], time_ms=data["time_ms"], winner_position=data["winner_position"], n_replies=data["n_replies"],
        chose_longer=data["chose_longer"], answer_code=data["answer"], order=data["order"], gold_correct=data["gold"],
        min_time_ms=settings_row.min_time_ms, thresholds=thresholds_for(settings_row), min_run=settings_row.straight_run_length,
    )


def flagged_annotators(project: Project) -> dict[int, list[str]]:
    """{annotator id: reasons} for the annotators the project's thresholds flag now."""
    return {row.annotator: list(row.flags) for row in annotator_quality(project).flagged}


def _plain(value):
    """Dataclasses to JSON-ready dicts; NaN to None."""
    if hasattr(value, "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in value.__dataclass_fields__}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def annotator_summary(project: Project, *, table: JudgementTable | None = None) -> dict:
    report = annotator_quality(project, table=table)
    usernames = dict(get_user_model().objects.filter(pk__in=[row.annotator for row in report.annotators]).values_list("pk", "username"))
    paused = dict(AnnotatorPause.objects.filter(project=project, lifted_at__isnull=True).values_list("annotator_id", "reason"))
    rows = []
    for row in report.annotators:
        plain = _plain(row)
        plain.update(username=usernames.get(row.annotator, str(row.annotator)), paused=row.annotator in paused, pause_reason=paused.get(row.annotator))
        rows.append(plain)
    return {"annotators": rows, "project": _plain(report.project), "thresholds": _plain(report.thresholds), "min_time_ms": report.min_time_ms}


def reply_sources(project: Project) -> tuple[dict[int, int], list[str]]:
    """{response id: source index} and the source names: the policy version that wrote a
    reply ("policy v3"), else its recorded origin (an imported file, "existing reply", ...)."""
    names: list[str] = []
    index: dict[str, int] = {}
    source_of: dict[int, int] = {}
    rows = Response.objects.filter(prompt__project=project).values_list("pk", "origin", "model_version__kind", "model_version__number")
    for pk, origin, kind, number in rows.iterator(chunk_size=CHUNK):
        name = f"{kind} v{number}" if number is not None else (origin or "imported")
        if name not in index:
            index[name] = len(names)
            names.append(name)
        source_of[pk] = index[name]
    return source_of, names


def leaderboard_summary(project: Project, *, draws: int = 1000, seed: int = 0, table: JudgementTable | None = None) -> dict:
    """Bradley-Terry over reply sources from every human judgement (ties half a win each),
    with bootstrap intervals, the win-rate matrix and the comparison counts."""
    table = judgement_table(project) if table is None else table
    names = table.source_names
    sources = table.lookup(table.entry_response, table.response_source, -1)
    known = sources >= 0
    pairs = pairs_from_ranked_arrays(table.entry_row[known], sources[known], table.entry_group[known])
    if not names or pairs.a.size == 0:
        return {"sources": [], "names": names, "order": [], "win_matrix": [], "count_matrix": [], "comparisons": 0, "connected": True,
                "level": 0.95, "ties": "half a win for each side"}
    board = bradley_terry(pairs.a, pairs.b, pairs.outcome, n_sources=len(names), names=names, draws=draws, seed=seed)
    return {
        "sources": [_plain(row) for row in board.table()],
        "names": list(board.names),
        "order": [int(i) for i in board.order],
        "win_matrix": _plain(board.win_matrix.tolist()),
        "count_matrix": _plain(board.count_matrix.tolist()),
        "comparisons": int(board.n_comparisons),
        "connected": bool(board.connected),
        "level": board.level,
        "ties": "half a win for each side",
    }


def reward_vs_people(project: Project, *, table: JudgementTable | None = None) -> dict:
    """Per reward-model version and per day of judging: how many of people's pairwise
    preferences (winner over loser; ties left out) the version's rewards order the same way
    (equal rewards count half), with a 95% Wilson interval. The scores come from
    training.scoring (the periodic task scores judged replies with the active reward model)."""
    from training.models import ModelVersion

    table = judgement_table(project) if table is None else table
    replies = table.response_id
    if replies.size == 0:
        return {"versions": []}
    version_ids, response_ids, rewards = fetch_columns(  # the scores of the range of the project's reply ids, then its own
        "SELECT s.version_id, s.response_id, s.reward FROM training_replyscore s WHERE s.response_id BETWEEN %s AND %s",
        [int(replies[0]), int(replies[-1])], "iif", order_by=2,
    )
    mine = is_in_sorted(replies, response_ids)
    version_ids, response_ids, rewards = version_ids[mine], response_ids[mine], rewards[mine]
    if version_ids.size == 0:
        return {"versions": []}
    versions = {v.pk: v for v in ModelVersion.objects.filter(pk__in=np.unique(version_ids).tolist())}
    # people's strict preferences: one row per (better reply, worse reply) of a judgement
    pairs = pairs_from_ranked_arrays(table.entry_row, table.entry_response, table.entry_group)
    strict = pairs.outcome == 1.0
    better, worse, day = pairs.a[strict], pairs.b[strict], table.day[pairs.judgement[strict]]
    tallies: dict[int, dict[int, list[float]]] = {}
    for version_id in np.unique(version_ids).tolist():
        mine = version_ids == version_id
        keys, values = response_ids[mine], rewards[mine]
        r_better = lookup_sorted(keys, values, better, np.nan)
        r_worse = lookup_sorted(keys, values, worse, np.nan)
        scored = ~(np.isnan(r_better) | np.isnan(r_worse))
        agree = np.where(r_better > r_worse, 1.0, np.where(r_better == r_worse, 0.5, 0.0))[scored]
        days, inverse = np.unique(day[scored], return_inverse=True)
        inverse = inverse.reshape(-1)
        tallies[version_id] = {
            int(d): [float(a), float(k)]
            for d, a, k in zip(days, np.bincount(inverse, weights=agree, minlength=days.size), np.bincount(inverse, minlength=days.size))
        }
    out = []
    for version_id, by_day in tallies.items():
        if not by_day:
            continue
        days = sorted(by_day)
        agree = np.array([by_day[d][0] for d in days])
        n = np.array([by_day[d][1] for d in days])
        low, high = wilson_interval(np.round(agree), n)
        total_low, total_high = wilson_interval(round(agree.sum()), n.sum())
        version = versions[version_id]
        out.append({
            "version": str(version), "status": version.status, "number": version.number,
            "promoted_at": version.promoted_at.isoformat() if version.promoted_at else None,
            "pairs": int(n.sum()), "rate": float(agree.sum() / n.sum()), "low": float(total_low), "high": float(total_high),
            "days": [
                {"day": date.fromordinal(d).isoformat(), "pairs": int(k), "rate": float(a / k), "low": float(lo), "high": float(hi)}
                for d, a, k, lo, hi in zip(days, agree, n, low, high)
            ],
        })
    return {"versions": sorted(out, key=lambda row: -row["number"])}


def quality_report(project: Project) -> dict:
    """Everything the quality page shows, as plain JSON."""
    table = judgement_table(project)
    return {
        "project": project.pk,
        "agreement": agreement_summary(project, table=table),
        "annotators": annotator_summary(project, table=table),
        "leaderboard": leaderboard_summary(project, table=table),
        "reward_vs_people": reward_vs_people(project, table=table),
    }
