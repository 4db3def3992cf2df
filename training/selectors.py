"""Read paths of the training app: training data out of the labeling tables, runs and
versions for the dashboard."""

from __future__ import annotations

import random

from django.db.models import Count, Prefetch

from labeling.models import Choice, ComparisonTask, Judgement, Project, Prompt, TaskResponse
from training.ml.data import Judgement as TrainingJudgement

from .models import ModelVersion, TrainingRun


def _with_replies(judgements):
    return judgements.select_related("task__prompt").prefetch_related(
        Prefetch("task__task_responses", queryset=TaskResponse.objects.select_related("response"))
    )


def _reply_texts(judgement) -> dict[str, str]:
    return {str(tr.response_id): tr.response.text for tr in judgement.task.task_responses.all()}


def training_judgements(project: Project) -> list[TrainingJudgement]:
    """Every judgement of the project (people's and imported labels) in the engine's form."""
    out = []
    for judgement in _with_replies(Judgement.objects.filter(task__project=project).order_by("pk")).iterator(chunk_size=1000):
        texts = _reply_texts(judgement)
        out.append(
            TrainingJudgement(
                prompt_id=str(judgement.task.prompt_id),
                messages=judgement.task.prompt.messages,
                replies=texts,
                ranking=[[str(i) for i in group] for group in judgement.ranking],
                choice=judgement.choice,
                strength=judgement.strength,
            )
        )
    return out


def demonstrations(project: Project) -> list[tuple[list[dict], str]]:
    """(conversation, reply) for replies that won a judgement clearly (strength 2 or more)."""
    clear_wins = Judgement.objects.filter(task__project=project, choice__in=[Choice.A, Choice.B], strength__gte=2).order_by("pk")
    return [
        (judgement.task.prompt.messages, _reply_texts(judgement)[str(judgement.ranking[0][0])])
        for judgement in _with_replies(clear_wins).iterator(chunk_size=1000)
    ]


def prompts_for_generation(project: Project, limit: int, seed: int) -> list[Prompt]:
    """Prompts with the fewest comparison tasks first (ties broken by a seeded order)."""
    prompts = list(Prompt.objects.filter(project=project).annotate(n_tasks=Count("tasks")).order_by("n_tasks", "pk")[: limit * 3])
    random.Random(seed).shuffle(prompts)
    prompts.sort(key=lambda p: p.n_tasks)
    return prompts[:limit]


def policy_prompts(project: Project, limit: int = 1000) -> list[list[dict]]:
    return list(Prompt.objects.filter(project=project).order_by("pk").values_list("messages", flat=True)[:limit])


def runs_for(project: Project | None = None, limit: int = 50):
    runs = TrainingRun.objects.select_related("project", "requested_by").order_by("-created_at")
    if project is not None:
        runs = runs.filter(project=project)
    return runs[:limit]


def versions_for(project: Project | None = None):
    versions = ModelVersion.objects.select_related("project", "produced_by").order_by("project", "kind", "-number")
    if project is not None:
        versions = versions.filter(project=project)
    return versions


def existing_reply_for(prompt: Prompt) -> str | None:
    task = ComparisonTask.objects.filter(prompt=prompt).first()
    if task is None:
        return None
    first = task.task_responses.select_related("response").first()
    return first.response.text if first else None
