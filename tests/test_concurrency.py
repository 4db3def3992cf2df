"""Many annotators at once on PostgreSQL: k is never exceeded, nothing is stored twice."""

import random
import threading
from collections import Counter

import pytest
from django.db import connection, connections, transaction
from django.db.models import Count

from labeling.exceptions import LabelingError
from labeling.models import Assignment, ComparisonTask, Judgement
from labeling.services import JudgementInput, assign_next_task, create_annotator, submit_judgement

from .conftest import import_items, make_items

THREADS = 16


@pytest.mark.django_db(transaction=True)
def test_sixteen_annotators_at_once_never_exceed_k_or_store_twice(project):
    """Runs on both backends: row locks on PostgreSQL, BEGIN IMMEDIATE on SQLite."""
    project.overlap_k = 3
    project.save()
    import_items(project, make_items(30))
    users = [create_annotator(username=f"worker{i}", password="a-long-test-pass") for i in range(THREADS)]
    start = threading.Barrier(THREADS)
    successes: list[tuple[int, int]] = []  # (judgement id, user id)
    errors: list[str] = []
    lock = threading.Lock()

    def work(user, seed):
        rng = random.Random(seed)
        try:
            start.wait()
            while True:
                assignment = assign_next_task(project=project, annotator=user, rng=rng)
                if assignment is None:
                    return
                key = f"{user.pk}-{assignment.pk}"
                judgement = JudgementInput(choice=rng.choice(["A", "B"]), strength=rng.randint(1, 4), idempotency_key=key)
                stored, created = submit_judgement(annotator=user, assignment_id=assignment.pk, judgement=judgement)
                # a double submit (the same key, at once from a second thread) is stored once
                results = []

                def resubmit():
                    try:
                        results.append(submit_judgement(annotator=user, assignment_id=assignment.pk, judgement=judgement))
                    finally:
                        connections.close_all()

                twins = [threading.Thread(target=resubmit) for _ in range(2)]
                for twin in twins:
                    twin.start()
                for twin in twins:
                    twin.join()
                with lock:
                    if created:
                        successes.append((stored.pk, user.pk))
                    for again, created_again in results:
                        assert not created_again and again.pk == stored.pk
        except (LabelingError, AssertionError) as error:  # pragma: no cover - reported below
            with lock:
                errors.append(repr(error))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(user, i)) for i, user in enumerate(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    per_task = Counter(Judgement.objects.values_list("task_id", flat=True))
    assert max(per_task.values()) <= project.overlap_k
    assert sum(per_task.values()) == 30 * 3  # every slot filled once the queues ran dry
    assert len(successes) == Judgement.objects.count()  # every successful submit stored exactly once
    assert set(pk for pk, _ in successes) == set(Judgement.objects.values_list("pk", flat=True))
    pairs = Judgement.objects.values("task", "annotator").annotate(n=Count("pk")).filter(n__gt=1)
    assert not pairs.exists()
    for task in ComparisonTask.objects.all():
        assert task.judgement_count == per_task[task.pk]
    assert not Assignment.objects.values("task", "annotator").annotate(n=Count("pk")).filter(n__gt=1).exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_task_locked_by_another_request_is_skipped_not_waited_for(project):
    """SKIP LOCKED: while one transaction holds the first task, the next request takes the second at once."""
    assert connection.vendor == "postgresql"
    import_items(project, make_items(2))
    first, second = ComparisonTask.objects.order_by("pk")
    first.priority = 1
    first.save()
    locked, release = threading.Event(), threading.Event()

    def hold_first_task():
        try:
            with transaction.atomic():
                ComparisonTask.objects.select_for_update().get(pk=first.pk)
                locked.set()
                release.wait(timeout=30)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_first_task)
    holder.start()
    try:
        assert locked.wait(timeout=10)
        user = create_annotator(username="eager", password="a-long-test-pass")
        assignment = assign_next_task(project=project, annotator=user)
        assert assignment.task_id == second.pk
    finally:
        release.set()
        holder.join()
    other = create_annotator(username="later", password="a-long-test-pass")
    assert assign_next_task(project=project, annotator=other).task_id == first.pk
