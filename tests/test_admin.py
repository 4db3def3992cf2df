"""Django admin: every labeling model has a working list and change page; judgements are read-only."""

import pytest
from django.urls import reverse

from labeling.models import Assignment, ComparisonTask, Judgement, Project, Prompt, Response
from labeling.services import JudgementInput, assign_next_task, submit_judgement

from .conftest import import_items, make_items

MODELS = [Project, Prompt, Response, ComparisonTask, Assignment, Judgement]


@pytest.fixture
def judged(project, annotator):
    import_items(project, make_items(2))
    assignment = assign_next_task(project=project, annotator=annotator)
    submit_judgement(annotator=annotator, assignment_id=assignment.pk, judgement=JudgementInput("A", 2))


@pytest.mark.parametrize("model", MODELS, ids=[m.__name__ for m in MODELS])
def test_admin_list_and_change_pages(client, admin_user, judged, model):
    admin_user.is_superuser = True
    admin_user.save()
    client.force_login(admin_user)
    opts = model._meta
    listing = client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
    assert listing.status_code == 200
    obj = model.objects.first()
    change = client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]))
    assert change.status_code == 200


def test_judgements_cannot_be_edited_in_admin(client, admin_user, judged):
    client.force_login(admin_user)
    admin_user.is_superuser = True
    admin_user.save()
    judgement = Judgement.objects.get()
    url = reverse("admin:labeling_judgement_change", args=[judgement.pk])
    client.post(url, {"choice": "B", "strength": 4})
    judgement.refresh_from_db()
    assert (judgement.choice, judgement.strength) == ("A", 2)
    assert client.get(reverse("admin:labeling_judgement_add")).status_code == 403


def test_annotators_cannot_open_the_admin(client, annotator):
    client.force_login(annotator)
    assert client.get(reverse("admin:index")).status_code == 302


def test_a_labeling_admin_signs_in_to_the_admin_and_uses_it(client, admin_user, annotator, judged, project):
    """Not a superuser: the labeling_admins group's permissions are what the README promises."""
    assert not admin_user.is_superuser
    signed_in = client.post("/admin/login/?next=/admin/", {"username": "admin", "password": "keeper-of-keys-3", "next": "/admin/"})
    assert signed_in.status_code == 302, signed_in.content[:500]
    home = client.get("/admin/")
    for section in (b"Projects", b"Comparison tasks", b"Judgements", b"Training runs", b"Model versions", b"Periodic tasks", b"Access attempts"):
        assert section in home.content, section
    # edit a project
    change_url = reverse("admin:labeling_project_change", args=[project.pk])
    form = client.get(change_url)
    assert form.status_code == 200 and b'name="_save"' in form.content
    saved = client.post(change_url, {"name": "renamed", "guidelines": "", "overlap_k": 2, "lease_seconds": 600, "gold_rate": 0.1,
                                     "max_responses": 4, "is_active": "on"})
    assert saved.status_code == 302, saved.content[:2000]
    project.refresh_from_db()
    assert project.name == "renamed" and project.overlap_k == 2
    # archive tasks with the admin action
    task = ComparisonTask.objects.filter(project=project).last()
    client.post(reverse("admin:labeling_comparisontask_changelist"), {"action": "archive", "_selected_action": [task.pk]})
    task.refresh_from_db()
    assert task.status == "archived"
    # judgements: readable, not editable, not deletable
    judgement = Judgement.objects.get()
    assert client.get(reverse("admin:labeling_judgement_change", args=[judgement.pk])).status_code == 200
    assert client.post(reverse("admin:labeling_judgement_change", args=[judgement.pk]), {"choice": "B"}).status_code == 403
    assert client.post(reverse("admin:labeling_judgement_delete", args=[judgement.pk]), {"post": "yes"}).status_code == 403
    assert Judgement.objects.get().choice == "A"
    # no deletes that cascade to judgements, no privilege changes
    assert client.post(reverse("admin:labeling_project_delete", args=[project.pk]), {"post": "yes"}).status_code == 403
    assert client.post(reverse("admin:auth_user_change", args=[annotator.pk]), {"is_superuser": "on"}).status_code == 403
    # the retraining schedule is theirs to edit
    assert client.get(reverse("admin:django_celery_beat_periodictask_add")).status_code == 200
