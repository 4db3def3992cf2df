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
from django.utils import timezone

from .models import Judgement, JudgementSource, Project, TaskResponse
from .quality.agreement import agreement_with_majority, alpha_by_period, cohen_kappa_pairs, krippendorff_alpha

CHUNK = 5000
NOMINAL = ("#1 better", "#2 better", "tie", "both bad")


def _positions(project: Project) -> dict[int, dict[int, int]]:
    """task id -> {response id: task position}."""
    positions: dict[int, dict[int, int]] = {}
    for task_id, response_id, position in TaskResponse.objects.filter(task__project=project).values_list(
        "task_id", "response_id", "position"
    ).iterator(chunk_size=CHUNK):
        positions.setdefault(task_id, {})[response_id] = position
    return positions


def judgement_arrays(project: Project, *, since=None) -> dict[str, np.ndarray]:
    """Human judgements of the project as arrays (see the module docstring for the scales)."""
    positions = _positions(project)
    rows = Judgement.objects.filter(task__project=project, source=JudgementSource.ANNOTATOR)
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    pair = {k: [] for k in ("task", "annotator", "nominal", "ordinal", "day")}
    rank = {k: [] for k in ("unit_task", "unit_position", "annotator", "rank", "day")}
    for task_id, annotator_id, choice, strength, ranking, created_at in rows.values_list(
        "task_id", "annotator_id", "choice", "strength", "ranking", "created_at"
    ).iterator(chunk_size=CHUNK):
        where = positions.get(task_id, {})
        day = timezone.localtime(created_at).date().toordinal()
        if len(where) == 2:
            if choice == "tie":
                nominal, ordinal = 2, 4
            elif choice == "both_bad":
                nominal, ordinal = 3, 4
            else:
                winner = where.get(ranking[0][0]) if ranking and ranking[0] else None
                if winner not in (0, 1):
                    continue
                nominal = winner
                ordinal = (4 - strength if winner == 0 else 4 + strength) if strength else -1
            pair["task"].append(task_id)
            pair["annotator"].append(annotator_id)
            pair["nominal"].append(nominal)
            pair["ordinal"].append(ordinal)
            pair["day"].append(day)
        elif len(where) > 2:
            for group_index, group in enumerate(ranking or []):
                for response_id in group:
                    if response_id in where:
                        rank["unit_task"].append(task_id)
                        rank["unit_position"].append(where[response_id])
                        rank["annotator"].append(annotator_id)
                        rank["rank"].append(group_index)
                        rank["day"].append(day)
    out = {f"pair_{k}": np.asarray(v, dtype=np.int64) for k, v in pair.items()}
    out.update({f"rank_{k}": np.asarray(v, dtype=np.int64) for k, v in rank.items()})
    return out


def _alpha(result) -> dict:
    return asdict(result)


def _week_start(days: np.ndarray) -> np.ndarray:
    """Monday of each day's week, as a proleptic ordinal (date.toordinal: Monday = 1 mod 7)."""
    return days - (days - 1) % 7


def agreement_summary(project: Project, *, draws: int = 1000, seed: int = 0) -> dict:
    """Alpha (nominal, ordinal, rankings) with bootstrap CIs, alpha per week, Cohen's kappa
    for every pair of annotators, agreement with the majority of the others."""
    data = judgement_arrays(project)
    task, annotator = data["pair_task"], data["pair_annotator"]
    nominal, ordinal = data["pair_nominal"], data["pair_ordinal"]
    has_ordinal = ordinal >= 0
    rank_units = data["rank_unit_task"] * 16 + data["rank_unit_position"]  # K <= 8: a unique id per (task, reply)
    weeks = _week_start(data["pair_day"])
    by_week = alpha_by_period(task, nominal, weeks, len(NOMINAL), "nominal") if task.size else {}
    usernames = dict(
        Judgement.objects.filter(task__project=project, source=JudgementSource.ANNOTATOR)
        .values_list("annotator_id", "annotator__username")
        .distinct()
    )
    kappas = cohen_kappa_pairs(task, annotator, nominal, len(NOMINAL)) if task.size else []
    majority = agreement_with_majority(task, annotator, nominal, len(NOMINAL)) if task.size else []
    return {
        "pairwise_judgements": int(task.size),
        "ranking_judgement_replies": int(rank_units.size),
        "alpha": {
            "nominal": _alpha(krippendorff_alpha(task, nominal, 4, "nominal", draws=draws, seed=seed)),
            "ordinal_strength": _alpha(krippendorff_alpha(task[has_ordinal], ordinal[has_ordinal], 9, "ordinal", draws=draws, seed=seed)),
            "ordinal_rankings": _alpha(krippendorff_alpha(rank_units, data["rank_rank"], 8, "ordinal", draws=draws, seed=seed)),
        },
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


def quality_report(project: Project) -> dict:
    """Everything the quality page shows, as plain JSON."""
    return {"project": project.pk, "agreement": agreement_summary(project)}
