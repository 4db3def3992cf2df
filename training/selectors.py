"""Read paths of the training app: training data out of the labeling tables, runs and
versions for the dashboard."""

from __future__ import annotations

import random

from django.db.models import Count, Prefetch
from django.utils import timezone

from labeling.models import Choice, Judgement, Project, Prompt, TaskResponse
from labeling.quality_filter import JudgementFilter
from training.ml.data import Judgement as TrainingJudgement

from .models import ModelVersion, RunKind, RunStatus, TrainingRun


def _with_replies(judgements):
    return judgements.select_related("task__prompt").prefetch_related(
        Prefetch("task__task_responses", queryset=TaskResponse.objects.select_related("response"))
    )


def _reply_texts(judgement) -> dict[str, str]:
    return {str(tr.response_id): tr.response.text for tr in judgement.task.task_responses.all()}


def training_judgements(project: Project, quality: JudgementFilter | None = None) -> list[TrainingJudgement]:
    """Every judgement of the project (people's and imported labels) in the engine's form,
    less what the quality filter leaves out (run config key "filter")."""
    judgements = Judgement.objects.filter(task__project=project)
    if quality is not None and quality.active:
        judgements = quality.apply(judgements, project)
    out = []
    for judgement in _with_replies(judgements.order_by("pk")).iterator(chunk_size=1000):
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


def versions_for(project: Project | None = None):
    versions = ModelVersion.objects.select_related("project", "produced_by").order_by("project", "kind", "-number")
    if project is not None:
        versions = versions.filter(project=project)
    return versions


def first_replies(prompts: list[Prompt]) -> dict[int, str]:
    """Per prompt, the first reply of its first comparison task (one query for all prompts)."""
    first: dict[int, str] = {}
    rows = (
        TaskResponse.objects.filter(task__prompt__in=prompts)
        .order_by("task__prompt_id", "task_id", "position")
        .values_list("task__prompt_id", "response__text")
    )
    for prompt_id, text in rows:
        first.setdefault(prompt_id, text)
    return first


TYPICAL_RUNS = 5  # the last this many succeeded runs of a kind tell how long one takes


def typical_duration(run: TrainingRun) -> float | None:
    """The median duration of the project's last succeeded runs of this kind (top-level ones:
    a cycle's stages are counted with their cycle), or None without any."""
    finished = (
        TrainingRun.objects.filter(project_id=run.project_id, kind=run.kind, parent=None, status=RunStatus.SUCCEEDED,
                                   started_at__isnull=False, finished_at__isnull=False)
        .exclude(pk=run.pk).order_by("-finished_at").values_list("started_at", "finished_at")[:TYPICAL_RUNS]
    )
    durations = sorted((end - start).total_seconds() for start, end in finished)
    if not durations:
        return None
    middle = len(durations) // 2
    return durations[middle] if len(durations) % 2 else (durations[middle - 1] + durations[middle]) / 2


def eta_seconds(run: TrainingRun, now=None, typical: float | None = None) -> float | None:
    """Seconds left for a running run. Early on, progress says little (a cycle spends its first
    seconds loading models: 286 s shown, rising to 548 s, for a cycle of 78 s, #20), so the
    estimate starts from what such runs took here before (`typical`, the median of the last
    ones) and moves to the extrapolation from progress as the run goes (fully from half way).
    Without earlier runs: the extrapolation alone, once 1% is done."""
    if run.status != RunStatus.RUNNING or run.started_at is None:
        return None
    elapsed = ((now or timezone.now()) - run.started_at).total_seconds()
    from_progress = elapsed * (1 - run.progress) / run.progress if run.progress >= 0.01 else None
    if typical is None or run.progress >= 0.5:
        return None if from_progress is None else max(0.0, from_progress)
    from_history = max(0.0, typical - elapsed) if elapsed < typical else None
    if from_history is None:  # slower than usual: only its own progress can say
        return None if from_progress is None else max(0.0, from_progress)
    if from_progress is None:
        return from_history
    weight = run.progress / 0.5
    return max(0.0, (1 - weight) * from_history + weight * from_progress)


def duration_seconds(run: TrainingRun, now=None) -> float | None:
    """How long the run took (finished - started); for a running run, the time so far."""
    if run.started_at is None:
        return None
    end = run.finished_at or ((now or timezone.now()) if run.status == RunStatus.RUNNING else None)
    return None if end is None else max(0.0, (end - run.started_at).total_seconds())


STAGE_WORDS = {RunKind.REWARD: "the reward model", RunKind.PPO: "PPO", RunKind.RLOO: "RLOO", RunKind.GRPO: "GRPO",
               RunKind.DPO: "DPO", RunKind.SFT: "SFT", RunKind.GENERATE: "generation"}


def _stage_outcome(kind: str, metrics: dict) -> tuple[str, bool]:
    """(what a stage did, in words; whether the cycle went on after it)."""
    what = STAGE_WORDS.get(kind, kind)
    if "skipped" in metrics:
        return f"{what} skipped ({metrics['skipped']})", True
    if kind == RunKind.GENERATE:
        return f"{metrics.get('tasks_created', 0)} new comparison tasks", True
    if "promoted" not in metrics:
        return "", True
    version = f" v{metrics['version']}" if metrics.get("version") is not None else ""
    noun = "reward model" if kind == RunKind.REWARD else f"{what} policy"
    if metrics["promoted"]:
        return f"{noun}{version} promoted", True
    because = f", because {metrics['promotion_note']}" if metrics.get("promotion_note") else ""
    return f"{noun}{version} not promoted{because}", False


def run_outcome(run: TrainingRun) -> str:
    """What a finished run achieved, in words, for its row: a cycle that stopped early says
    after which stage and why (#20: "succeeded" alone hid that nothing was promoted)."""
    if run.status != RunStatus.SUCCEEDED or not isinstance(run.metrics, dict):
        return ""
    if run.kind == RunKind.ENDPOINTS:
        failed = run.metrics.get("prompts_failed") or 0
        return f"{run.metrics.get('tasks_created', 0)} new comparison tasks" + (f"; {failed} prompts failed" if failed else "")
    if run.kind == RunKind.SIMULATE:
        m = run.metrics
        return (f"{m.get('simulated_judgements', 0)} simulated judgements of {m.get('policy', 'the policy')}'s replies "
                f"on {m.get('tasks_created', 0)} new tasks ({m.get('annotators', 0)} simulated annotators)")
    if run.kind != RunKind.CYCLE:
        return _stage_outcome(run.kind, run.metrics)[0]
    parts = []
    order = [RunKind.REWARD, RunKind.SFT, RunKind.DPO, RunKind.PPO, RunKind.RLOO, RunKind.GRPO, RunKind.GENERATE]  # as a cycle runs them
    stages = sorted(((kind, result) for kind, result in run.metrics.items() if isinstance(result, dict) and kind in order),
                    key=lambda item: order.index(item[0]))  # (jsonb keeps no key order)
    for kind, result in stages:
        text, went_on = _stage_outcome(kind, result)
        if not went_on:
            after = "the policy was not trained" if kind == RunKind.REWARD else "no new replies were generated"
            return "; ".join(parts + [f"stopped after {STAGE_WORDS.get(kind, kind)}: {text}; {after}"])
        if text:
            parts.append(text)
    return "; ".join(parts)


# What a cycle's row shows of each stage (the dashboard labels them).
STAGE_KEY_METRICS = {
    RunKind.REWARD: ("val_accuracy", "val_pairs", "version", "promoted"),
    RunKind.PPO: ("reward_gain", "kl", "version", "promoted"),
    RunKind.RLOO: ("reward_gain", "kl", "version", "promoted"),
    RunKind.GRPO: ("reward_gain", "kl", "version", "promoted"),
    RunKind.DPO: ("dpo_val_accuracy", "kl", "version", "promoted"),
    RunKind.GENERATE: ("tasks_created",),
    RunKind.SFT: ("train_loss", "version", "promoted"),
}


def stage_summaries(run: TrainingRun) -> list[dict]:
    """A cycle's child runs in the order they ran, each with its key metrics only, so that
    the cycle's row can say what the cycle did without the client loading every child."""
    if run.kind != RunKind.CYCLE:
        return []
    stages = sorted(run.stages.all(), key=lambda stage: stage.pk)  # prefetched by the API views
    return [
        {
            "id": stage.pk,
            "kind": stage.kind,
            "status": stage.status,
            "metrics": {k: stage.metrics[k] for k in STAGE_KEY_METRICS.get(stage.kind, ()) if k in (stage.metrics or {})},
        }
        for stage in stages
    ]
