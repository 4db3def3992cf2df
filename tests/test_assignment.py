"""assign_next_task: overlap k, leases, never twice, gold mixing, display order."""

import random
from datetime import timedelta

import pytest
from django.utils import timezone

from labeling.models import Assignment, ComparisonTask
from labeling.services import JudgementInput, assign_next_task, create_annotator, skip_task, submit_judgement
from labeling.selectors import annotator_stats, tasks_left_for

from .conftest import import_items, make_items

A_BETTER = JudgementInput(choice="A", strength=2)


def judge(project, user, choice=A_BETTER, now=None):
    assignment = assign_next_task(project=project, annotator=user, now=now)
    assert assignment is not None
    submit_judgement(annotator=user, assignment_id=assignment.pk, judgement=choice, now=now)
    return assignment


def test_each_task_gets_at_most_k_judgements_and_each_annotator_once(project, tasks):
    users = [create_annotator(username=f"u{i}", password="a-long-test-pass") for i in range(4)]
    for user in users:
        seen = set()
        while (assignment := assign_next_task(project=project, annotator=user)) is not None:
            assert assignment.task_id not in seen
            seen.add(assignment.task_id)
            submit_judgement(annotator=user, assignment_id=assignment.pk, judgement=A_BETTER)
    counts = sorted(ComparisonTask.objects.values_list("judgement_count", flat=True))
    assert counts == [2] * len(tasks)  # k = 2 each, 4 annotators share 10 slots
    assert all(t.status == "complete" for t in ComparisonTask.objects.all())


def test_reload_resumes_the_lease_instead_of_taking_a_new_task(project, tasks, annotator):
    first = assign_next_task(project=project, annotator=annotator)
    again = assign_next_task(project=project, annotator=annotator)
    assert again.pk == first.pk
    assert Assignment.objects.filter(annotator=annotator).count() == 1


def test_live_leases_count_toward_k_and_expired_ones_return_to_the_pool(project, annotator):
    import_items(project, make_items(1))
    project.overlap_k = 1
    project.save()
    other = create_annotator(username="carol", password="a-long-test-pass")
    now = timezone.now()
    held = assign_next_task(project=project, annotator=annotator, now=now)
    assert held is not None
    assert assign_next_task(project=project, annotator=other, now=now) is None  # the only slot is leased
    later = now + timedelta(seconds=project.lease_seconds + 1)
    taken = assign_next_task(project=project, annotator=other, now=later)
    assert taken is not None and taken.task_id == held.task_id
    # the annotator whose lease expired is never served the task again
    assert assign_next_task(project=project, annotator=annotator, now=later) is None


def test_skipped_task_is_never_served_again_but_others_get_it(project, annotator, other_annotator):
    import_items(project, make_items(1))
    assignment = assign_next_task(project=project, annotator=annotator)
    skip_task(annotator=annotator, assignment_id=assignment.pk, reason="not my language")
    assert assign_next_task(project=project, annotator=annotator) is None
    assert assign_next_task(project=project, annotator=other_annotator).task_id == assignment.task_id


def test_priority_first_then_least_judged(project, annotator, other_annotator):
    import_items(project, make_items(3))
    low, high, mid = ComparisonTask.objects.order_by("pk")
    high.priority, mid.priority = 10, 5
    high.save(), mid.save()
    assert assign_next_task(project=project, annotator=annotator).task_id == high.pk


def test_display_order_is_a_recorded_shuffle_of_the_task_replies(project, annotator):
    import_items(project, make_items(1, replies=4))
    task = ComparisonTask.objects.get()
    orders = set()
    for seed in range(12):
        user = create_annotator(username=f"s{seed}", password="a-long-test-pass")
        assignment = assign_next_task(project=project, annotator=user, rng=random.Random(seed))
        assert sorted(assignment.display_order) == sorted(task.responses.values_list("pk", flat=True))
        orders.add(tuple(assignment.display_order))
        skip_task(annotator=user, assignment_id=assignment.pk)
    assert len(orders) > 3


def test_gold_tasks_are_mixed_in_at_the_gold_rate_and_accuracy_is_kept(project):
    import_items(project, make_items(40, prefix="regular") + make_items(40, prefix="gold"))
    for task in ComparisonTask.objects.filter(prompt__messages__0__content__startswith="gold"):
        task.is_gold = True
        task.gold_response = task.task_responses.get(position=0).response
        task.save()
    project.gold_rate, project.overlap_k = 0.25, 5
    project.save()
    user = create_annotator(username="gina", password="a-long-test-pass")
    rng = random.Random(7)
    served_gold = 0
    for _ in range(40):
        assignment = assign_next_task(project=project, annotator=user, rng=rng)
        task = assignment.task
        if task.is_gold:
            served_gold += 1
            # always pick the reply shown as A; right when A is the gold reply
        submit_judgement(annotator=user, assignment_id=assignment.pk, judgement=A_BETTER)
    assert 4 <= served_gold <= 18  # 25% of 40 = 10, binomial spread
    stats = annotator_stats(project=project, annotator=user)[0]
    gold_judgements = user.judgements.filter(task__is_gold=True)
    expected_correct = sum(
        1 for j in gold_judgements if j.display_order[0] == j.task.gold_response_id
    )
    assert stats["gold_seen"] == served_gold
    assert stats["gold_correct"] == expected_correct
    assert stats["gold_accuracy"] == pytest.approx(expected_correct / served_gold)


def test_tasks_left_counts_what_this_annotator_can_still_get(project, tasks, annotator, other_annotator):
    assert tasks_left_for(project=project, annotator=annotator) == 5
    judge(project, annotator)
    assert tasks_left_for(project=project, annotator=annotator) == 4
    assert tasks_left_for(project=project, annotator=other_annotator) == 5
