"""The demo's simulated judgement history (#20): what `seed_demo --simulated-history` and the
dashboard's "simulated judgements (demo)" run load, so that a newcomer's first full cycle
has judgements of the policy's own replies to learn from.

The run (runner.stage_simulate) has the project's policy write several replies to each demo
prompt; here they become ranking tasks, and simulated annotators rank them by their word
overlap with the demo's reference answer (training/ml/simulated.py says how, and why).
Everything is marked: the judgements' source is "simulated" (never counted as people's:
not in the quality statistics, not "new human judgements"), their annotators are inactive
accounts named simulated-annotator-N that cannot log in, and every judgement's reason says
what made it. All of it is written in one transaction.
"""

from __future__ import annotations

import json
import random

from django.contrib.auth import get_user_model
from django.db import transaction

from labeling.models import Choice, ComparisonTask, Judgement, JudgementSource, Project, TaskStatus
from labeling.services import GeneratedReply, comparison_task_of

from .defaults import demo_demonstrations
from .exceptions import InvalidTrainingRequest
from .ml.simulated import DEFAULT_TEMPERATURE, noisy_ranking, reference_overlap

ANNOTATOR_PREFIX = "simulated-annotator-"
REPLIES_PER_PROMPT, ANNOTATORS = 4, 3


def _key(messages: list[dict]) -> str:
    return json.dumps([{"role": m.get("role"), "content": m.get("content")} for m in messages], sort_keys=True)


def demo_references(project: Project) -> list[tuple[object, str]]:
    """(prompt, reference answer) for every prompt of the project that is a demo prompt: the
    demo author's best reply is the reference the simulated annotators judge by."""
    references = {_key(messages): best for messages, best in demo_demonstrations()}
    prompts = demo_prompts(project).order_by("pk")
    return [(prompt, references[_key(prompt.messages)]) for prompt in prompts if _key(prompt.messages) in references]


def demo_prompts(project: Project):
    """The project's prompts that came from the demo file (seed_demo): they carry a demo_id."""
    return project.prompts.filter(metadata__has_key="demo_id")


def has_demo_prompts(project: Project) -> bool:
    return demo_prompts(project).exists()


def check_possible(project: Project, config: dict) -> None:
    """Refuse, at request time, a simulated history for a project without demo prompts, or
    with fewer than two replies per prompt (nothing to rank)."""
    if options(config)["replies_per_prompt"] < 2:
        raise InvalidTrainingRequest("simulated annotators rank at least 2 replies per prompt", field="replies_per_prompt")
    if not has_demo_prompts(project) or not demo_references(project):
        raise InvalidTrainingRequest(
            "simulated judgements need the demo's prompts and reference answers: this project has none "
            "(load the demo with `manage.py seed_demo`; real projects learn from people's judgements)",
            field="kind",
        )


def options(config: dict) -> dict:
    """The run config's replies_per_prompt and seed (plain keys, checked by run_config), over
    the defaults; the annotators and their temperature are fixed."""
    return {
        "replies_per_prompt": int(config.get("replies_per_prompt", REPLIES_PER_PROMPT)), "seed": int(config.get("seed", 0)),
        "annotators": ANNOTATORS, "temperature": DEFAULT_TEMPERATURE,
    }


def simulated_annotators(n: int) -> list:
    """n inactive accounts that cannot log in, made on first use."""
    users = []
    for i in range(1, n + 1):
        user, created = get_user_model().objects.get_or_create(username=f"{ANNOTATOR_PREFIX}{i}", defaults={"is_active": False})
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        users.append(user)
    return users


def record(project: Project, references: list[tuple[object, str]], replies: list[list[str]], *, origin: str, version_id: int | None,
           params: dict, annotators: int, temperature: float, seed: int) -> dict:
    """One ranking task per prompt of the replies, ranked by each simulated annotator; all or nothing.

    A prompt whose replies are fewer than two distinct texts, or already a task with the same
    replies, gets no task. Returns the counts and the mean overlap of the best and the worst reply."""
    rng = random.Random(seed)
    people = simulated_annotators(annotators)
    tasks = judgements = 0
    best_sum = worst_sum = 0.0
    with transaction.atomic():
        for (prompt, reference), texts in zip(references, replies):
            generated = [GeneratedReply(text, origin, version_id, params) for text in texts]
            task, responses = comparison_task_of(prompt=prompt, replies=generated, status=TaskStatus.COMPLETE)
            if task is None:
                continue
            qualities = [reference_overlap(r.text, reference) for r in responses]
            best_sum, worst_sum = best_sum + max(qualities), worst_sum + min(qualities)
            rows = []
            for person in people:
                order = noisy_ranking(qualities, rng, temperature)
                shown = [r.pk for r in responses]
                rng.shuffle(shown)
                rows.append(Judgement(
                    task=task, annotator=person, choice=Choice.RANKING if len(responses) > 2 else (Choice.A if shown[0] == responses[order[0]].pk else Choice.B),
                    ranking=[[responses[i].pk] for i in order], display_order=shown, source=JudgementSource.SIMULATED,
                    rationale="simulated annotator: ranked by word overlap with the demo's reference answer ("
                    + ", ".join(f"{qualities[i]:.2f}" for i in order) + ")",
                ))
            Judgement.objects.bulk_create(rows)
            ComparisonTask.objects.filter(pk=task.pk).update(judgement_count=len(rows))
            tasks, judgements = tasks + 1, judgements + len(rows)
    return {
        "tasks_created": tasks, "simulated_judgements": judgements, "annotators": annotators,
        "mean_best_overlap": round(best_sum / tasks, 4) if tasks else None,
        "mean_worst_overlap": round(worst_sum / tasks, 4) if tasks else None,
    }
