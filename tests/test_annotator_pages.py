"""Annotator polish (#9) without a browser: no lost input (post/redirect/get), the progress
counter, key legends per task type, per-reply flags (form, API, export), revising recent
judgements with history, the admin's 403 for annotators, the favicon, the home page."""

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from labeling.exceptions import AlreadyClosed, InvalidJudgement
from labeling.exporting import iter_export_rows
from labeling.models import Assignment, Judgement, JudgementRevision, Project
from labeling.services import JudgementInput, assign_next_task, create_annotator, revise_judgement, submit_judgement

from .conftest import import_items, make_items

PASSWORD = "annotator-pass-8f3k"


@pytest.fixture
def kim(db):
    return create_annotator(username="kim", password=PASSWORD)


@pytest.fixture
def lee(db):
    return create_annotator(username="lee", password=PASSWORD)


def api(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def label_url(project):
    return reverse("labeling:label", args=[project.pk])


def lease(client, project):
    page = client.get(label_url(project))
    assert page.status_code == 200
    return Assignment.objects.get(annotator=page.wsgi_request.user, state="leased"), page.content.decode()


# ----------------------------------------------------------------------------- 1. no lost input


def test_invalid_ranking_keeps_every_choice_rank_flag_and_rationale(client, project, kim):
    import_items(project, make_items(1, replies=3))
    client.force_login(kim)
    assignment, _ = lease(client, project)
    form = {
        "choice": "ranking", "rank_0": "1", "rank_1": "1", "rank_2": "1", "strength": "3",  # equal ranks with a strength: invalid
        "reply_flags_1": ["unsafe", "other"], "reply_flags_2": ["factually_wrong"],
        "rationale": "B is <b>rude</b> & wrong", "time_spent_ms": "4321", "idempotency_key": "k1",
    }
    response = client.post(reverse("labeling:submit", args=[assignment.pk]), form)
    assert response.status_code == 302 and response["Location"] == label_url(project)
    for _ in range(2):  # the page, and a reload of it
        html = client.get(label_url(project)).content.decode()
        assert 'id="form-error"' in html and "<strong>strength</strong>" in html
        assert 'value="ranking" id="choice-ranking" checked' in html
        assert 'value="3" id="strength-3" checked' in html
        for letter in "ABC":
            select = re.search(rf'<select name="rank_\d" id="rank-{letter}">(.*?)</select>', html, re.S).group(1)
            assert re.findall(r'<option value="(\d)" selected>', select) == ["1"]
        assert 'id="flag-B-unsafe" checked' in html and 'id="flag-B-other" checked' in html
        assert 'id="flag-C-factually_wrong" checked' in html and 'id="flag-A-unsafe" checked' not in html
        assert "B is &lt;b&gt;rude&lt;/b&gt; &amp; wrong</textarea>" in html
        assert 'data-time-offset="4321"' in html
    assert Judgement.objects.count() == 0
    # fixed: saved, and the kept input is gone
    form.update(strength="", rank_1="2", rank_2="2")
    response = client.post(reverse("labeling:submit", args=[assignment.pk]), form)
    assert response.status_code == 302
    judgement = Judgement.objects.get()
    order = assignment.display_order
    assert judgement.ranking == [[order[0]], sorted([order[1], order[2]])]  # tied replies are stored sorted
    assert judgement.reply_flags == {str(order[1]): ["unsafe", "other"], str(order[2]): ["factually_wrong"]}
    assert judgement.flags == ["unsafe", "other", "factually_wrong"]
    assert judgement.rationale == "B is <b>rude</b> & wrong"
    assert "labeling.draft" not in client.session


def test_submit_and_skip_urls_answer_get_with_the_task_not_405(client, project, kim):
    import_items(project, make_items(1))
    client.force_login(kim)
    assignment, _ = lease(client, project)
    for name in ("submit", "skip"):
        response = client.get(reverse(f"labeling:{name}", args=[assignment.pk]))
        assert response.status_code == 302 and response["Location"] == label_url(project)
    assert Assignment.objects.get().state == "leased"


def test_kept_input_belongs_to_its_task_only(client, project, kim):
    import_items(project, make_items(2))
    client.force_login(kim)
    assignment, _ = lease(client, project)
    client.post(reverse("labeling:submit", args=[assignment.pk]), {"choice": "A", "rationale": "draft text"})
    client.post(reverse("labeling:skip", args=[assignment.pk]))
    html = client.get(label_url(project)).content.decode()
    assert "draft text" not in html and 'id="form-error"' not in html


# ----------------------------------------------------------------------------- 2. progress


def test_comparison_page_counts_done_today_and_left_for_me(client, project, kim):
    import_items(project, make_items(4))
    client.force_login(kim)
    assignment, html = lease(client, project)
    assert re.search(r'class="count-today"[^>]*>0<', html) and re.search(r'class="count-left">4<', html)
    client.post(reverse("labeling:submit", args=[assignment.pk]), {"choice": "tie", "idempotency_key": "p1"})
    _, html = lease(client, project)
    assert re.search(r'class="count-today"[^>]*>1<', html) and re.search(r'class="count-left">3<', html)


def test_the_project_list_and_the_comparison_page_give_the_same_count_and_say_when_one_is_capped(client, project, kim, monkeypatch):
    from labeling import selectors

    import_items(project, make_items(6))
    client.force_login(kim)
    home = client.get(reverse("labeling:home")).content.decode()
    assert re.search(r'class="tasks-left">6<', home)
    _, html = lease(client, project)  # the lease it holds still counts as left for it
    assert re.search(r'class="count-left">6<', html)
    monkeypatch.setattr(selectors, "PAGE_LEFT_CAP", 4)  # a queue longer than the page counts
    _, html = lease(client, project)
    assert re.search(r'class="count-left" title="more than 4: your project list gives the exact count">4\+<', html)


def test_done_today_counts_every_project_and_a_long_queue_shows_as_capped(project, kim, lee):
    from labeling import selectors

    other = Project.objects.create(name="other project", overlap_k=1, gold_rate=0)
    import_items(other, make_items(2, prefix="other"))
    import_items(project, make_items(5))
    assignment = assign_next_task(project=other, annotator=kim)
    submit_judgement(annotator=kim, assignment_id=assignment.pk, judgement=JudgementInput("tie"))
    progress = selectors.project_progress(project=project, annotator=kim, holding=False, cap=3)
    assert progress == {"judged_today": 1, "tasks_left": 3, "tasks_left_capped": True}  # 5 left: shown as "3+"
    assert selectors.project_progress(project=project, annotator=kim, holding=False, cap=5)["tasks_left_capped"] is False
    # at or below the cap the count is exact, live leases of others included
    project.overlap_k = 1
    project.save()
    assign_next_task(project=project, annotator=lee)  # k = 1: lee's lease fills that task for now
    exact = selectors.project_progress(project=project, annotator=kim, holding=False, cap=5)
    assert exact == {"judged_today": 1, "tasks_left": 4, "tasks_left_capped": False}


# ----------------------------------------------------------------------------- 3. readable replies


def test_highlighter_is_bundled_locally_and_loaded_by_compare_js_only(client, project, kim):
    import_items(project, [{"prompt": "code?", "responses": ["```python\nprint('<img src=x onerror=alert(1)>')\n```", "no code"]}])
    client.force_login(kim)
    _, html = lease(client, project)
    vendor = Path(settings.BASE_DIR) / "static/labeling/vendor/highlight"
    assert (vendor / "highlight.min.js").stat().st_size > 50_000 and "BSD" in (vendor / "LICENSE").read_text()
    assert 'data-highlighter="/static/labeling/vendor/highlight/highlight.min.js"' in html
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/labeling/highlight.js">', '<script src="/static/labeling/compare.js">']
    assert "http://" not in re.sub(r'xmlns="http://www.w3.org/2000/svg"', "", "".join(re.findall(r"<(?:link|script)[^>]*>", html)))
    assert "print(&#x27;&lt;img src=x onerror=alert(1)&gt;&#x27;)" in html or "print('&lt;img src=x onerror=alert(1)&gt;')" in html
    assert 'id="wrap-toggle"' in html


# ----------------------------------------------------------------------------- 5. guidelines


def test_key_legend_fits_the_task_type(client, project, kim):
    import_items(project, make_items(1))
    ranking = Project.objects.create(name="ranking project", overlap_k=1, gold_rate=0, max_responses=4)
    import_items(ranking, make_items(1, replies=4))
    client.force_login(kim)
    _, html = lease(client, project)
    assert 'data-kind="pairwise"' in html and 'data-kind="ranking"' not in html
    html = client.get(label_url(ranking)).content.decode()
    legend = re.search(r'<section class="key-legend" data-kind="ranking".*?</section>', html, re.S).group(0)
    assert "strength (optional)" in legend and "Shift" in legend and "every reply has the same rank" in legend
    assert "<kbd>A</kbd>–<kbd>D</kbd>" in legend
    assert 'data-kind="pairwise"' not in html
    guidelines = client.get(reverse("labeling:guidelines", args=[ranking.pk])).content.decode()
    assert 'data-kind="ranking"' in guidelines and 'data-kind="pairwise"' not in guidelines
    guidelines = client.get(reverse("labeling:guidelines", args=[project.pk])).content.decode()
    assert 'data-kind="pairwise"' in guidelines and 'data-kind="ranking"' not in guidelines


# ----------------------------------------------------------------------------- 4. per-reply flags


def test_api_reply_flags_are_stored_by_reply_and_exported(project, kim, admin_user):
    import_items(project, make_items(1))
    assignment = assign_next_task(project=project, annotator=kim)
    url = f"/api/v1/assignments/{assignment.pk}/submit/"
    bad = api(kim).post(url, {"choice": "A", "strength": 2, "reply_flags": {"C": ["unsafe"]}}, format="json")
    assert bad.status_code == 400 and bad.json()["field"] == "reply_flags"
    bad = api(kim).post(url, {"choice": "A", "strength": 2, "reply_flags": {"B": ["rude"]}}, format="json")
    assert bad.status_code == 400
    body = {"choice": "A", "strength": 2, "reply_flags": {"B": ["factually_wrong", "unsafe"]}, "flags": ["other"], "idempotency_key": "r1"}
    first = api(kim).post(url, body, format="json")
    assert first.status_code == 201, first.content
    assert first.json()["reply_flags"] == {"B": ["unsafe", "factually_wrong"]} and first.json()["revision"] == 0
    assert first.json()["flags"] == ["other", "unsafe", "factually_wrong"]
    again = api(kim).post(url, body, format="json")
    assert again.status_code == 200 and again.json() == first.json()
    changed = api(kim).post(url, {**body, "reply_flags": {"A": ["unsafe"]}}, format="json")
    assert changed.status_code == 409 and "reply_flags" in changed.json()["detail"]
    plain = api(kim).post(url, {k: v for k, v in body.items() if k != "reply_flags"}, format="json")
    assert plain.status_code == 409  # a replay must repeat the reply flags too

    b_id = assignment.display_order[1]
    assert Judgement.objects.get().reply_flags == {str(b_id): ["unsafe", "factually_wrong"]}
    (row,) = iter_export_rows(project=project, fmt="raw")
    assert row["reply_flags"] == {str(b_id): ["unsafe", "factually_wrong"]}
    flags_by_id = {reply["id"]: reply["flags"] for reply in row["responses"]}
    assert flags_by_id == {b_id: ["unsafe", "factually_wrong"], assignment.display_order[0]: []}
    admin_rows = api(admin_user).get(f"/api/v1/judgements/?project={project.pk}").json()["results"]
    assert admin_rows[0]["reply_flags"] == {str(b_id): ["unsafe", "factually_wrong"]}


def test_old_api_clients_still_work_without_reply_flags(project, kim):
    import_items(project, make_items(1))
    assignment = assign_next_task(project=project, annotator=kim)
    response = api(kim).post(f"/api/v1/assignments/{assignment.pk}/submit/", {"choice": "B", "strength": 1, "flags": ["unsafe"]}, format="json")
    assert response.status_code == 201
    assert response.json()["flags"] == ["unsafe"] and response.json()["reply_flags"] == {}
    assert Judgement.objects.get().reply_flags == {}


# ----------------------------------------------------------------------------- 6. review


def judge(project, user, choice="A", strength=2, **extra):
    assignment = assign_next_task(project=project, annotator=user)
    return submit_judgement(annotator=user, assignment_id=assignment.pk, judgement=JudgementInput(choice, strength, **extra))[0]


def test_my_judgements_shows_prompts_as_text_not_markdown(client, project, kim):
    """#20: the list showed "**Explain** `zip`" with its markdown; it shows the text, escaped."""
    project.overlap_k = 1
    project.save()
    import_items(project, [{"prompt": "**Explain** `zip` in <b>Python</b>\n\n```python\nzip(a, b)\n```", "responses": ["one", "two"]}])
    judge(project, kim, "A", 2)
    client.force_login(kim)
    listing = client.get(reverse("labeling:my_judgements")).content.decode()
    cell = listing.split('<td class="prompt">')[1].split("</td>")[0]
    assert cell == "Explain zip in &lt;b&gt;Python&lt;/b&gt;"


def test_revision_keeps_history_and_export_shows_only_the_latest(client, project, kim):
    project.overlap_k = 1
    project.save()
    import_items(project, make_items(2))
    first = judge(project, kim, "A", 3, rationale="first try", idempotency_key="orig")
    other = judge(project, kim, "tie", None)
    client.force_login(kim)
    listing = client.get(reverse("labeling:my_judgements")).content.decode()
    assert listing.index(f'data-judgement="{other.pk}"') < listing.index(f'data-judgement="{first.pk}"')  # newest first
    assert "A is better (significantly)" in listing and "first try" in listing
    page = client.get(reverse("labeling:revise", args=[first.pk])).content.decode()
    assert 'value="A" id="choice-A" checked' in page and 'value="3" id="strength-3" checked' in page
    assert "first try</textarea>" in page and "Save revision" in page and 'id="skip-button"' not in page

    # invalid: back to the revise page with the input kept
    response = client.post(reverse("labeling:revise", args=[first.pk]), {"choice": "B", "rationale": "second thoughts"})
    assert response.status_code == 302 and response["Location"] == reverse("labeling:revise", args=[first.pk])
    page = client.get(response["Location"]).content.decode()
    assert 'id="form-error"' in page and 'value="B" id="choice-B" checked' in page and "second thoughts</textarea>" in page
    response = client.post(
        reverse("labeling:revise", args=[first.pk]),
        {"choice": "B", "strength": "1", "rationale": "second thoughts", "reply_flags_0": ["unsafe"]},
    )
    assert response.status_code == 302 and response["Location"] == reverse("labeling:my_judgements")

    first.refresh_from_db()
    assert (first.choice, first.strength, first.rationale, first.revision) == ("B", 1, "second thoughts", 1)
    assert first.ranking == [[first.display_order[1]], [first.display_order[0]]]
    assert first.reply_flags == {str(first.display_order[0]): ["unsafe"]} and first.flags == ["unsafe"]
    (old,) = JudgementRevision.objects.filter(judgement=first)
    assert (old.number, old.choice, old.strength, old.rationale, old.flags) == (0, "A", 3, "first try", [])
    assert old.made_at == first.created_at and old.replaced_at == first.revised_at
    assert first.task.judgement_count == 1 and Judgement.objects.count() == 2

    rows = [row for row in iter_export_rows(project=project, fmt="raw") if row["judgement_id"] == first.pk]
    assert len(rows) == 1 and rows[0]["choice"] == "B" and rows[0]["revision"] == 1 and rows[0]["revised_at"]
    pairs = list(iter_export_rows(project=project, fmt="trl"))
    assert len(pairs) == 1 and pairs[0]["margin"] == 1.0  # the tie yields no pair; the revised judgement one

    # the same revision again writes nothing; a replay of the original submission is still recognised
    client.post(reverse("labeling:revise", args=[first.pk]), {"choice": "B", "strength": "1", "rationale": "second thoughts", "reply_flags_0": ["unsafe"]})
    assert JudgementRevision.objects.count() == 1
    replay = api(kim).post(
        f"/api/v1/assignments/{first.assignment_id}/submit/",
        {"choice": "A", "strength": 3, "rationale": "first try", "idempotency_key": "orig"}, format="json",
    )
    assert replay.status_code == 200 and replay.json()["choice"] == "B"


def test_revision_only_while_the_project_allows_it(client, project, kim, lee):
    project.overlap_k = 2
    project.save()
    import_items(project, make_items(3))
    judgement = judge(project, kim)
    again = JudgementInput("B", 1)
    # another annotator's judgement: not found, and nothing changes
    client.force_login(lee)
    assert client.get(reverse("labeling:revise", args=[judgement.pk])).status_code == 404
    assert client.post(reverse("labeling:revise", args=[judgement.pk]), {"choice": "tie"}).status_code == 404
    # outside the window
    with pytest.raises(AlreadyClosed, match="revised for 24 h"):
        revise_judgement(annotator=kim, judgement_id=judgement.pk, judgement=again, now=timezone.now() + timedelta(hours=25))
    # a project that allows none
    project.revision_hours = 0
    project.save()
    client.force_login(kim)
    listing = client.get(reverse("labeling:my_judgements")).content.decode()
    assert "does not allow revisions" in listing and ">Revise<" not in listing
    page = client.get(reverse("labeling:revise", args=[judgement.pk])).content.decode()
    assert 'id="readonly-notice"' in page and '<fieldset class="plain" disabled>' in page
    response = client.post(reverse("labeling:revise", args=[judgement.pk]), {"choice": "B", "strength": "1"}, follow=True)
    assert "Not revised" in response.content.decode()
    # a closed project
    project.revision_hours = 24
    project.is_active = False
    project.save()
    with pytest.raises(AlreadyClosed, match="closed"):
        revise_judgement(annotator=kim, judgement_id=judgement.pk, judgement=again)
    # invalid input is refused before anything is written
    project.is_active = True
    project.save()
    with pytest.raises(InvalidJudgement):
        revise_judgement(annotator=kim, judgement_id=judgement.pk, judgement=JudgementInput("A"))
    assert Judgement.objects.get(pk=judgement.pk).choice == "A" and not JudgementRevision.objects.exists()


def test_only_the_last_n_judgements_can_be_revised(project, kim, monkeypatch):
    from labeling import services

    monkeypatch.setattr(services, "REVIEW_LIMIT", 2)
    import_items(project, make_items(3))
    oldest, _, newest = (judge(project, kim) for _ in range(3))
    with pytest.raises(AlreadyClosed, match="last 2"):
        revise_judgement(annotator=kim, judgement_id=oldest.pk, judgement=JudgementInput("B", 1), now=timezone.now())
    assert revise_judgement(annotator=kim, judgement_id=newest.pk, judgement=JudgementInput("B", 1))[1] is True


# ----------------------------------------------------------------------------- 7. odds and ends


def test_annotator_gets_the_apps_403_for_admin_pages_and_staff_keep_the_admin(client, kim, admin_user):
    # not signed in: the admin's own login form, as before
    assert 'id="login-form"' in client.get("/admin/", follow=True).content.decode()
    client.force_login(kim)
    for url in ("/admin/", "/admin/labeling/judgement/", "/training/", "/admin/login/"):
        response = client.get(url, follow=True)
        html = response.content.decode()
        assert response.status_code == 403, url
        assert "<h1>Not allowed</h1>" in html and 'class="topbar"' in html and 'id="login-form"' not in html
    client.force_login(admin_user)
    assert client.get("/admin/").status_code == 200
    assert client.get("/training/").status_code == 200


def test_favicon(client, kim):
    client.force_login(kim)
    html = client.get(reverse("labeling:home")).content.decode()
    assert '<link rel="icon" href="/static/labeling/favicon.svg" type="image/svg+xml">' in html
    response = client.get("/favicon.ico")
    assert response.status_code == 302 and response["Location"] == "/static/labeling/favicon.svg"
    assert (Path(settings.BASE_DIR) / "static/labeling/favicon.svg").read_text().startswith("<svg")


def test_home_shows_description_or_guidelines_summary_and_counts(client, kim):
    described = Project.objects.create(name="described", description="Rate <b>helpfulness</b> of coding answers.", overlap_k=1, gold_rate=0)
    import_items(described, make_items(2))
    Project.objects.create(name="from guidelines", guidelines="Prefer **honest** replies.\n\nSecond paragraph stays out.", gold_rate=0)
    client.force_login(kim)
    html = client.get(reverse("labeling:home")).content.decode()
    assert "Rate &lt;b&gt;helpfulness&lt;/b&gt; of coding answers." in html
    assert "Prefer honest replies." in html and "Second paragraph" not in html
    assert re.search(r'class="tasks-left">2<', html) and "Nothing left" in html
    assert 'href="/judgements/"' in html


def test_api_schema_still_builds(client, kim):
    client.force_login(kim)
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    components = json.loads(schema.content)["components"]["schemas"]
    assert "reply_flags" in components["JudgementInput"]["properties"]
    assert {"reply_flags", "revision", "revised_at"} <= set(components["JudgementOutput"]["properties"])


def test_tasks_left_counts_the_same_as_the_per_task_lease_query(project, kim, lee):
    """selectors.tasks_left_for evaluates live leases only for leased tasks; same count as evaluating them per task."""
    from django.db.models import F

    from labeling import selectors
    from labeling.models import ComparisonTask

    project.overlap_k = 2
    project.save()
    import_items(project, make_items(9))
    tasks = list(ComparisonTask.objects.filter(project=project).order_by("pk"))
    sam = create_annotator(username="sam", password=PASSWORD)
    now = timezone.now()

    def lease_to(user, task, minutes=10, state="leased"):
        Assignment.objects.create(task=task, annotator=user, display_order=[], leased_at=now, expires_at=now + timedelta(minutes=minutes), state=state)

    lease_to(lee, tasks[0]); lease_to(sam, tasks[0])           # full by two live leases
    lease_to(lee, tasks[1])                                     # one slot left
    lease_to(lee, tasks[2], minutes=-5)                         # expired: does not count
    ComparisonTask.objects.filter(pk=tasks[3].pk).update(judgement_count=2); lease_to(lee, tasks[3])  # full by judgements (k lowered under a lease)
    ComparisonTask.objects.filter(pk=tasks[4].pk).update(judgement_count=1); lease_to(sam, tasks[4])  # full by both
    lease_to(kim, tasks[5], state="skipped")                    # seen by kim
    ComparisonTask.objects.filter(pk=tasks[6].pk).update(status="complete")
    ComparisonTask.objects.filter(pk=tasks[7].pk).update(is_gold=True, gold_response=tasks[7].responses.first())

    def per_task_query(user):
        return (
            selectors.unseen_tasks(project, user).filter(is_gold=False)
            .alias(leases=selectors.active_lease_count(now))
            .filter(judgement_count__lt=project.overlap_k - F("leases")).count()
        )

    for user, expected in ((kim, 3), (lee, 2), (sam, 4)):  # kim: 1, 2, 8; lee: 5, 8; sam: 1, 2, 5, 8
        assert selectors.tasks_left_for(project=project, annotator=user, now=now, holding=False) == per_task_query(user) == expected


def test_project_api_and_admin_form_without_the_new_fields_still_work(client, admin_user):
    created = api(admin_user).post("/api/v1/projects/", {"name": "old client", "overlap_k": 2}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["revision_hours"] == 24 and created.json()["description"] == ""
    project = Project.objects.get(name="old client")
    project.revision_hours = 48
    project.save()
    patched = api(admin_user).patch(f"/api/v1/projects/{project.pk}/", {"description": "Short text.", "revision_hours": 0}, format="json")
    assert patched.status_code == 200 and patched.json()["revision_hours"] == 0
    assert api(admin_user).patch(f"/api/v1/projects/{project.pk}/", {"revision_hours": None}, format="json").status_code == 400
    # the admin's change form: left out keeps the value, emptied means the default
    client.force_login(admin_user)
    url = reverse("admin:labeling_project_change", args=[project.pk])
    form = {"name": "old client", "guidelines": "", "overlap_k": 2, "lease_seconds": 600, "gold_rate": 0.1, "max_responses": 4, "is_active": "on"}
    assert client.post(url, form).status_code == 302
    project.refresh_from_db()
    assert project.revision_hours == 0 and project.description == ""
    assert client.post(url, {**form, "revision_hours": ""}).status_code == 302
    project.refresh_from_db()
    assert project.revision_hours == 24
