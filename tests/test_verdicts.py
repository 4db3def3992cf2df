"""One definition of a verdict (labeling/verdicts.py) for the ordering, the min_task_agreement
filter, the task browser and its task page; and task order `uncertainty` without an active
reward model (#19, part 3)."""

import json

import pytest

from labeling.exporting import iter_export_lines
from labeling.models import ComparisonTask, Judgement, Project
from labeling.ordering import task_verdicts
from labeling.quality_filter import JudgementFilter, low_agreement_tasks
from labeling.services import JudgementInput, assign_next_task, create_annotator, submit_judgement
from labeling.verdicts import level_expression, top_share, verdict_key
from training.scoring import update_order_scores

from .conftest import import_items, make_items

pytestmark = pytest.mark.django_db


def judged(choices: list[str]) -> tuple[Project, ComparisonTask]:
    """A one-task project judged by len(choices) annotators, each choice as they saw it."""
    project = Project.objects.create(name="verdicts", overlap_k=len(choices), gold_rate=0.0)
    import_items(project, make_items(1))
    for i, choice in enumerate(choices):
        annotator = create_annotator(username=f"judge{i}", password="a-long-test-pass")
        assignment = assign_next_task(project=project, annotator=annotator)
        strength = 2 if choice in ("A", "B") else None
        submit_judgement(annotator=annotator, assignment_id=assignment.pk, judgement=JudgementInput(choice=choice, strength=strength))
    return project, ComparisonTask.objects.get(project=project)


def test_tie_and_both_bad_are_different_verdicts_everywhere(admin_user, client):
    project, task = judged(["tie", "tie", "both_bad"])  # the repro of #19
    keys = task_verdicts([task.pk])[task.pk]
    assert top_share(keys) == pytest.approx(2 / 3)
    assert low_agreement_tasks(project, 1.0) == [task.pk]  # min_task_agreement = 1 leaves it out
    exported = list(iter_export_lines(project=project, fmt="raw", quality=JudgementFilter(min_task_agreement=1.0)))
    assert exported == []
    client.force_login(admin_user)
    browser = client.get(f"/manage/projects/{project.pk}/tasks/?disagreement=yes").content.decode()
    assert f"/manage/tasks/{task.pk}/" in browser
    assert "disagree" in client.get(f"/manage/tasks/{task.pk}/").content.decode().lower()


def test_the_same_preference_seen_in_other_orders_is_one_verdict(admin_user, client):
    project, task = judged(["A", "B", "A"])  # display orders are shuffled per annotator
    rankings = list(Judgement.objects.filter(task=task).values_list("ranking", flat=True))
    keys = [verdict_key("A", ranking) for ranking in rankings]
    expected_agree = len(set(keys)) == 1
    assert (low_agreement_tasks(project, 1.0) == []) == expected_agree
    client.force_login(admin_user)
    listed = client.get(f"/manage/projects/{project.pk}/tasks/?disagreement=yes").content.decode()
    assert (f"/manage/tasks/{task.pk}/" in listed) == (not expected_agree)


def test_the_sql_form_agrees_with_the_python_one():
    project, task = judged(["tie", "both_bad", "A", "B"])
    rows = Judgement.objects.filter(task=task).annotate(level=level_expression()).values_list("choice", "ranking", "level")
    for choice, ranking, level in rows:
        assert verdict_key(choice, ranking) == (level, tuple(tuple(group) for group in ranking))


def test_uncertainty_without_a_reward_model_falls_back_to_fifo(admin_user, client):
    project = Project.objects.create(name="uncertain", overlap_k=1, gold_rate=0.0, task_ordering="uncertainty")
    import_items(project, make_items(3))
    ComparisonTask.objects.filter(project=project).update(order_score=700)  # left by an earlier ordering
    assert update_order_scores(project) == 3
    assert set(ComparisonTask.objects.filter(project=project).values_list("order_score", flat=True)) == {0}
    client.force_login(admin_user)
    page = client.get(f"/manage/projects/{project.pk}/").content.decode()
    assert 'id="uncertainty-waits"' in page and "served in order" in page
    Project.objects.filter(pk=project.pk).update(task_ordering="fifo")
    assert 'id="uncertainty-waits"' not in client.get(f"/manage/projects/{project.pk}/").content.decode()


def test_export_keeps_agreeing_tasks():
    project, task = judged(["tie", "tie"])
    rows = [json.loads(line) for line in iter_export_lines(project=project, fmt="raw", quality=JudgementFilter(min_task_agreement=1.0))]
    assert len(rows) == 2
