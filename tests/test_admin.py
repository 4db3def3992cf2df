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
