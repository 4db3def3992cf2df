"""Export judgements as training data, streamed one JSON line at a time.

Formats:
  trl  {"prompt", "chosen", "rejected", "margin"}: plain strings for plain-text prompts,
       the conversational form (lists of messages) for chat and HH prompts.
  hh   {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...} (HH-RLHF).
  raw  every judgement with annotator, choice, ranking, strength, rationale, flags,
       time on task, display order and the texts it compared; each reply carries the
       flags the annotator set on it ("responses": [{"id", "text", "origin", "flags"}],
       and "reply_flags": {"<response id>": [...]}).

A judgement its annotator revised is exported once, as its latest version ("revision"
counts the revisions, "revised_at" dates the last); the earlier versions stay in
JudgementRevision and are never exported.

Pairs come from a judgement's ranking (groups of response ids, best first): every reply
in a better group beats every reply in a worse group. A tie or a both-bad judgement is
one group and so yields no pair; `raw` keeps it. `margin` is the judged strength
(1 slightly .. 4 much better), 0.0 when the judgement carries none (imported labels).

aggregate="majority" gives one row per (task, pair of replies) instead of one per
judgement: x is chosen over y when strictly more judgements rank x above y than rank
y above x, and also strictly more than the judgements that put them level (tie or both
bad). The margin is then the mean strength of the judgements that agreed. Anything else
(a split vote, a majority of ties or both-bad) is left out.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from itertools import groupby

from django.db.models import Prefetch

from .exceptions import InvalidInput
from .importing.formats import render_hh_transcript
from .models import Judgement, JudgementSource, Project, PromptFormat, TaskResponse
from .quality_filter import JudgementFilter
from .selectors import judgements_for

FORMATS = ("trl", "hh", "raw")
AGGREGATES = ("none", "majority")
CHUNK = 1000


def ranked_pairs(ranking: list[list[int]]) -> Iterator[tuple[int, int]]:
    """(better, worse) response ids for every pair the ranking orders."""
    for i, better_group in enumerate(ranking):
        for worse_group in ranking[i + 1 :]:
            for better in better_group:
                for worse in worse_group:
                    yield better, worse


def majority_pairs(judgements: list[Judgement]) -> list[tuple[int, int, float]]:
    """(chosen, rejected, margin) by the majority rule in the module docstring."""
    wins: dict[tuple[int, int], list[int | None]] = defaultdict(list)
    level: dict[frozenset, int] = defaultdict(int)
    for judgement in judgements:
        for better, worse in ranked_pairs(judgement.ranking):
            wins[(better, worse)].append(judgement.strength)
        for group in judgement.ranking:
            for i, x in enumerate(group):
                for y in group[i + 1 :]:
                    level[frozenset((x, y))] += 1
    pairs = []
    for (x, y), strengths in sorted(wins.items()):
        against = len(wins.get((y, x), ()))
        if len(strengths) > against and len(strengths) > level[frozenset((x, y))]:
            known = [s for s in strengths if s is not None]
            pairs.append((x, y, sum(known) / len(known) if known else 0.0))
    return pairs


def _trl_row(prompt, chosen: str, rejected: str, margin: float) -> dict:
    if prompt.source_format == PromptFormat.TEXT:
        return {"prompt": prompt.messages[-1]["content"], "chosen": chosen, "rejected": rejected, "margin": margin}
    return {
        "prompt": prompt.messages,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "margin": margin,
    }


def _hh_row(prompt, chosen: str, rejected: str) -> dict:
    context = render_hh_transcript(prompt.messages)
    return {"chosen": f"{context}\n\nAssistant: {chosen}", "rejected": f"{context}\n\nAssistant: {rejected}"}


def _pair_row(fmt: str, prompt, chosen: str, rejected: str, margin: float) -> dict:
    if fmt == "trl":
        return _trl_row(prompt, chosen, rejected, margin)
    return _hh_row(prompt, chosen, rejected)


def _raw_row(judgement: Judgement, texts: dict[int, str], origins: dict[int, str]) -> dict:
    task = judgement.task
    reply_flags = judgement.reply_flags or {}
    return {
        "judgement_id": judgement.pk,
        "task_id": task.pk,
        "prompt_id": task.prompt_id,
        "project": task.project.name,
        "is_gold": task.is_gold,
        "prompt": task.prompt.messages,
        "responses": [
            {"id": rid, "text": texts[rid], "origin": origins[rid], "flags": reply_flags.get(str(rid), [])} for rid in sorted(texts)
        ],
        "annotator": judgement.annotator.username,
        "source": judgement.source,
        "choice": judgement.choice,
        "ranking": judgement.ranking,
        "strength": judgement.strength,
        "rationale": judgement.rationale,
        "flags": judgement.flags,
        "reply_flags": reply_flags,
        "time_spent_ms": judgement.time_spent_ms,
        "display_order": judgement.display_order,
        "gold_correct": judgement.gold_correct,
        "created_at": judgement.created_at.isoformat(),
        "revision": judgement.revision,
        "revised_at": judgement.revised_at.isoformat() if judgement.revised_at else None,
    }


def iter_export_rows(
    *,
    project: Project,
    fmt: str,
    aggregate: str = "none",
    since: datetime | None = None,
    until: datetime | None = None,
    annotator: str | None = None,
    quality: JudgementFilter | None = None,
    include_simulated: bool = False,
) -> Iterator[dict]:
    """Validate the options now (InvalidInput), then return the lazy row stream.
    `quality` leaves out judgements by the quality filter (labeling.quality_filter). The
    demo's simulated judgements (training/simulated_history.py) are left out unless
    `include_simulated`: a trl or hh file has no field that would say what they are."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}", field="format")
    if aggregate not in AGGREGATES:
        raise InvalidInput(f"must be one of {', '.join(AGGREGATES)}", field="aggregate")
    if fmt == "raw" and aggregate != "none":
        raise InvalidInput("raw lists every judgement; aggregate applies to trl and hh", field="aggregate")
    return _rows(project, fmt, aggregate, since, until, annotator, quality, include_simulated)


def _rows(project, fmt, aggregate, since, until, annotator, quality=None, include_simulated=False) -> Iterator[dict]:
    judgements = judgements_for(project=project, since=since, until=until, annotator=annotator)
    if not include_simulated:
        judgements = judgements.exclude(source=JudgementSource.SIMULATED)
    if quality is not None and quality.active:
        judgements = quality.apply(judgements, project)
    judgements = (
        judgements
        .select_related("task__prompt", "task__project", "annotator")
        .prefetch_related(
            Prefetch("task__task_responses", queryset=TaskResponse.objects.select_related("response"))
        )
    )
    if aggregate == "majority":
        judgements = judgements.order_by("task_id", "pk")

    def replies(judgement):
        task_responses = judgement.task.task_responses.all()
        return (
            {tr.response_id: tr.response.text for tr in task_responses},
            {tr.response_id: tr.response.origin for tr in task_responses},
        )

    stream = judgements.iterator(chunk_size=CHUNK)
    if aggregate == "majority":
        for _, task_judgements in groupby(stream, key=lambda j: j.task_id):
            task_judgements = list(task_judgements)
            texts, _ = replies(task_judgements[0])
            for chosen, rejected, margin in majority_pairs(task_judgements):
                yield _pair_row(fmt, task_judgements[0].task.prompt, texts[chosen], texts[rejected], margin)
        return
    for judgement in stream:
        texts, origins = replies(judgement)
        if fmt == "raw":
            yield _raw_row(judgement, texts, origins)
            continue
        margin = float(judgement.strength) if judgement.strength is not None else 0.0
        for chosen, rejected in ranked_pairs(judgement.ranking):
            yield _pair_row(fmt, judgement.task.prompt, texts[chosen], texts[rejected], margin)


def iter_export_lines(**options) -> Iterator[str]:
    """JSON Lines of iter_export_rows; options are validated before the first line."""
    rows = iter_export_rows(**options)
    return (json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
