"""The labeling admins' pages (#9), without a browser: projects (create, edit with training
settings, archive, counts, judgements-per-day chart), import in the browser (report with
line numbers, all-or-nothing, progress stream, report download), export downloads, the
task browser (filters, search, disagreement), the task page and the judgement list."""

import io
import json
import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from labeling.console.charts import nice_ticks
from labeling.exporting import iter_export_lines
from labeling.importing.services import import_steps
from labeling.models import Assignment, ComparisonTask, ImportJob, Judgement, Project, Prompt
from labeling.services import JudgementInput, assign_next_task, create_annotator, submit_judgement
from training.models import ModelVersion, ProjectTrainingSettings

from .conftest import import_items, jsonl, make_items, run_queued_imports

PASSWORD = "console-pass-7h2m"


@pytest.fixture
def boss(db):
    return create_annotator(username="boss", password=PASSWORD, is_admin=True)


@pytest.fixture
def kim(db):
    return create_annotator(username="kim", password=PASSWORD)


@pytest.fixture
def lee(db):
    return create_annotator(username="lee", password=PASSWORD)


@pytest.fixture
def admin_client(client, boss):
    client.force_login(boss)
    return client


def judge(project, user, choice="A", strength=2, **extra):
    assignment = assign_next_task(project=project, annotator=user)
    return submit_judgement(annotator=user, assignment_id=assignment.pk, judgement=JudgementInput(choice, strength, **extra))[0]


def text(response) -> str:
    return response.content.decode()


# ----------------------------------------------------------------------------- access


def console_urls(project, task):
    return [
        reverse("console:projects"), reverse("console:project_create"), reverse("console:project", args=[project.pk]),
        reverse("console:project_edit", args=[project.pk]), reverse("console:import", args=[project.pk]),
        reverse("console:export", args=[project.pk]), reverse("console:tasks", args=[project.pk]),
        reverse("console:task", args=[task.pk]), reverse("console:judgements", args=[project.pk]),
    ]


def test_annotators_get_the_apps_403_and_visitors_the_login_page(client, project, tasks, kim):
    for url in console_urls(project, tasks[0]):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url
    client.force_login(kim)
    for url in console_urls(project, tasks[0]):
        response = client.get(url)
        assert response.status_code == 403, url
        assert "for labeling admins" in text(response)
    assert client.post(reverse("console:project_archive", args=[project.pk])).status_code == 403
    assert Project.objects.get(pk=project.pk).is_active


def test_every_console_page_answers_an_admin(admin_client, project, tasks):
    for url in console_urls(project, tasks[0]):
        assert admin_client.get(url).status_code == 200, url


# ----------------------------------------------------------------------------- projects


def project_form(**overrides):
    form = {
        "name": "Helpfulness round 2", "description": "Pick the more helpful answer.", "guidelines": "Prefer **correct** answers.",
        "overlap_k": "3", "gold_rate": "0.05", "lease_seconds": "600", "max_responses": "4", "revision_hours": "12",
        "open_to_all": "on", "task_ordering": "fifo",
        "training-auto_retrain": "on", "training-retrain_min_new_judgements": "200", "training-generate_prompts": "10",
        "training-generate_replies_per_prompt": "2", "training-reward_min_judgements": "80", "training-reward_min_accuracy": "0.55",
        "training-reward_accuracy_margin": "0.02", "training-significance_level": "0.05", "training-ppo_max_kl": "8",
        "training-policy_eval_prompts": "16", "training-reward_config": '{"epochs": 2}', "training-ppo_config": "{}",
        "training-sampling_config": "",
    }
    form.update(overrides)
    return form


def test_create_a_project_with_its_training_settings(admin_client):
    response = admin_client.post(reverse("console:project_create"), project_form())
    project = Project.objects.get(name="Helpfulness round 2")
    assert response.status_code == 302 and response["Location"] == reverse("console:project", args=[project.pk])
    assert (project.overlap_k, project.gold_rate, project.lease_seconds, project.revision_hours) == (3, 0.05, 600, 12)
    training = ProjectTrainingSettings.objects.get(project=project)
    assert training.retrain_min_new_judgements == 200 and training.reward_min_judgements == 80
    assert training.reward_config == {"epochs": 2} and training.sampling_config == {}
    page = text(admin_client.get(response["Location"]))
    assert "Helpfulness round 2" in page and "created" in page


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("overlap_k", "0", "Ensure this value is greater than or equal to 1"),
        ("name", "  ", "This field is required"),
        ("gold_rate", "1.5", "less than or equal to 1"),
        ("training-reward_config", '{"lr": "fast"}', "reward.lr"),
        ("training-reward_config", '{"epochs": 2', "Enter valid JSON"),
        ("training-ppo_config", '[1, 2]', "must be a JSON object"),
        ("training-significance_level", "2", "between 0 and 1"),
    ],
)
def test_an_invalid_project_form_saves_nothing_and_keeps_what_was_typed(admin_client, field, value, message):
    response = admin_client.post(reverse("console:project_create"), project_form(**{field: value, "description": "kept <b>text</b>"}))
    assert response.status_code == 200
    page = text(response)
    assert message in page
    assert "Nothing was saved" in page
    assert "kept &lt;b&gt;text&lt;/b&gt;" in page  # what was typed, escaped
    assert not Project.objects.exists() and not ProjectTrainingSettings.objects.exists()


def test_a_duplicate_name_is_a_form_error(admin_client, project):
    response = admin_client.post(reverse("console:project_create"), project_form(name=project.name))
    assert response.status_code == 200 and "already exists" in text(response)
    assert Project.objects.count() == 1


def test_edit_settings(admin_client, project):
    url = reverse("console:project_edit", args=[project.pk])
    page = text(admin_client.get(url))
    assert 'value="test project"' in page and "Be **careful**." in page
    response = admin_client.post(
        url, project_form(name="renamed", overlap_k="5", guidelines="New rules", open_to_all="", **{"training-auto_retrain": ""})
    )
    assert response.status_code == 302
    project.refresh_from_db()
    assert (project.name, project.overlap_k, project.guidelines, project.open_to_all) == ("renamed", 5, "New rules", False)
    assert "assigned annotators only (0)" in text(admin_client.get(reverse("console:project", args=[project.pk])))
    assert ProjectTrainingSettings.objects.get(project=project).auto_retrain is False


def test_archive_hides_the_project_from_annotators_and_restore_brings_it_back(client, admin_client, project, tasks, kim):
    url = reverse("console:project_archive", args=[project.pk])
    assert admin_client.get(url).status_code == 405
    assert admin_client.post(url).status_code == 302
    project.refresh_from_db()
    assert not project.is_active and ComparisonTask.objects.filter(project=project).count() == 5  # nothing deleted
    listing = text(admin_client.get(reverse("console:projects")))
    assert f'data-project="{project.pk}"' not in listing and "Show archived (1)" in listing
    assert f'data-project="{project.pk}"' in text(admin_client.get(reverse("console:projects") + "?archived=1"))
    from django.test import Client

    annotator = Client()
    annotator.force_login(kim)
    assert "test project" not in text(annotator.get(reverse("labeling:home")))
    admin_client.post(url, {"restore": "1"})
    project.refresh_from_db()
    assert project.is_active
    assert "test project" in text(annotator.get(reverse("labeling:home")))


def test_counts_per_project(admin_client, project, kim, lee):
    project.overlap_k = 1
    project.save()
    import_items(project, make_items(6))
    import_items(project, [{"prompt": "gold question", "responses": ["right", "wrong"], "metadata": {}}])
    gold = ComparisonTask.objects.get(prompt__messages__icontains="gold question")
    gold.is_gold, gold.gold_response = True, gold.responses.first()
    gold.save()
    judge(project, kim)  # one complete (k = 1)
    judge(project, lee)  # another complete
    assign_next_task(project=project, annotator=kim)  # one leased: in progress
    expired = assign_next_task(project=project, annotator=lee)
    Assignment.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(minutes=1))  # lapsed: not in progress
    row = re.search(r'data-project="%d">(.*?)</tr>' % project.pk, text(admin_client.get(reverse("console:projects"))), re.S).group(1)
    numbers = dict(re.findall(r'class="num ([a-z-]+)">(\d+)<', row))
    assert numbers == {"tasks": "6", "judged": "2", "in-progress": "1", "left": "3", "gold": "1", "judgements": "2"}
    page = text(admin_client.get(reverse("console:project", args=[project.pk])))
    assert re.search(r'id="count-left">3<', page) and re.search(r'id="count-in-progress">1<', page)


def test_nice_ticks():
    assert nice_ticks(0) == [0, 1]
    assert nice_ticks(3) == [0, 1, 2, 3]
    assert nice_ticks(7) == [0, 2, 4, 6, 8]
    assert nice_ticks(230) == [0, 50, 100, 150, 200, 250]
    assert nice_ticks(1000) == [0, 200, 400, 600, 800, 1000]


def test_judgements_per_day_chart_has_a_bar_per_day_with_axes_and_ticks(admin_client, project, kim, lee):
    project.overlap_k = 2
    project.save()
    import_items(project, make_items(3))
    today = timezone.localdate()
    for user in (kim, lee):
        judge(project, user)
    judgement = judge(project, kim)
    Judgement.objects.filter(pk=judgement.pk).update(created_at=timezone.now() - timedelta(days=3))
    page = text(admin_client.get(reverse("console:project", args=[project.pk])))
    svg = re.search(r"<svg class=\"chart\".*?</svg>", page, re.S).group(0)
    bars = dict(re.findall(r"<title>(\d{4}-\d\d-\d\d): (\d+)</title>", svg))
    assert len(bars) == 30
    assert bars[today.isoformat()] == "2"
    assert bars[(today - timedelta(days=3)).isoformat()] == "1"
    assert sum(int(n) for n in bars.values()) == 3
    ticks = re.findall(r'class="tick"[^>]*text-anchor="end"[^>]*>([^<]+)<', svg)
    assert ticks == ["0", "1", "2"]
    assert "axis-title" in svg and ">judgements<" in svg
    date_labels = re.findall(r'text-anchor="middle">([A-Z][a-z]{2} \d+)<', svg)
    assert 4 <= len(date_labels) <= 8  # a label every few days, never one per bar


def test_markdown_preview_is_sanitized(admin_client):
    url = reverse("console:markdown_preview")
    assert admin_client.get(url).status_code == 405
    html = text(admin_client.post(url, {"text": "**bold** <script>alert(1)</script> <img src=x onerror=alert(2)>"}))
    assert "<strong>bold</strong>" in html
    assert "<script" not in html and "<img" not in html  # shown as text, never as tags


# ----------------------------------------------------------------------------- import


def upload(name, lines: list[str]):
    data = io.BytesIO(("\n".join(lines) + "\n").encode())
    data.name = name
    return data


GOOD = [json.dumps(item) for item in make_items(3)]


def imported(admin_client, project, name, lines, **options):
    """Post the console's import form, let the worker run the job, and return its page."""
    before = Prompt.objects.count()
    response = admin_client.post(reverse("console:import", args=[project.pk]), {"file": upload(name, lines), "format": "jsonl"} | options)
    assert response.status_code == 302 and response["Location"].startswith("/manage/imports/")
    job = ImportJob.objects.latest("pk")
    assert job.status == "queued" and Prompt.objects.count() == before  # the request only stored the file
    assert "Waiting for a worker." in text(admin_client.get(response["Location"]))
    run_queued_imports()
    return job, text(admin_client.get(response["Location"]))


def test_import_a_file_and_see_the_report(admin_client, project):
    job, page = imported(admin_client, project, "batch.jsonl", GOOD)
    assert ComparisonTask.objects.filter(project=project).count() == 3
    assert "import of batch.jsonl" in page and "Imported: 3 new tasks" in page
    job, page = imported(admin_client, project, "batch.jsonl", GOOD)
    assert ComparisonTask.objects.filter(project=project).count() == 3
    assert "3 tasks were already there" in page
    listing = text(admin_client.get(reverse("console:import", args=[project.pk])))
    assert listing.count("batch.jsonl") == 2 and "3 new tasks" in listing and "0 new tasks" in listing


def test_a_bad_line_rejects_the_file_with_a_line_numbered_report_to_download(admin_client, project):
    lines = GOOD[:1] + ['{"prompt": "no replies"}', "not json <b>"] + GOOD[1:]
    job, page = imported(admin_client, project, "bad.jsonl", lines)
    assert not ComparisonTask.objects.filter(project=project).exists()  # all or nothing
    assert "Rejected: nothing was imported." in page
    rows = re.findall(r'<tr><td class="num">(\d+)</td><td>(.*?)</td></tr>', page)
    assert [line for line, _ in rows] == ["2", "3"]
    assert "<b>" not in page.split('id="report"')[1]  # the line's text is escaped if quoted
    report = admin_client.get(reverse("console:import_report", args=[job.pk]))
    assert report.status_code == 200 and report["Content-Type"].startswith("text/plain")
    assert report["Content-Disposition"].startswith("attachment;") and ".txt" in report["Content-Disposition"]
    body = text(report)
    assert "rejected: nothing imported" in body
    assert re.search(r"^line 2: ", body, re.M) and re.search(r"^line 3: malformed JSON", body, re.M)

    job, page = imported(admin_client, project, "bad.jsonl", lines, skip_invalid="on")
    assert ComparisonTask.objects.filter(project=project).count() == 3
    body = text(admin_client.get(reverse("console:import_report", args=[job.pk])))
    assert "tasks created 3" in body and "invalid lines: 2" in body


def test_the_scripted_import_answers_the_jobs_page_whose_state_shows_progress(admin_client, project):
    url = reverse("console:import", args=[project.pk])
    many = [json.dumps(item) for item in make_items(1200)]
    response = admin_client.post(url, {"file": upload("big.jsonl", many), "format": "jsonl"}, HTTP_ACCEPT="application/json")
    assert response.status_code == 202
    job = ImportJob.objects.get()
    assert response.json() == {"job": reverse("console:import_job", args=[job.pk])}
    state_url = reverse("console:import_job_state", args=[job.pk])
    state = admin_client.get(state_url).json()
    assert state["status"] == "queued" and not state["finished"] and state["bytes_total"] == job.size_bytes > 0
    assert admin_client.get(reverse("console:import_report", args=[job.pk])).status_code == 409  # not ended yet
    run_queued_imports()
    state = admin_client.get(state_url).json()
    assert state["finished"] and state["status"] == "succeeded" and state["fraction"] == 1
    assert ComparisonTask.objects.filter(project=project).count() == 1200
    assert "Imported: 1200 new tasks" in text(admin_client.get(reverse("console:import_job", args=[job.pk])))


def test_import_form_errors_name_the_field(admin_client, project, settings):
    url = reverse("console:import", args=[project.pk])
    response = admin_client.post(url, {"format": "jsonl"}, HTTP_ACCEPT="application/json")
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "file"
    response = admin_client.post(url, {"file": upload("x.csv", ["prompt,response_1,response_2"]), "format": "csv", "with_labels": "on"})
    assert response.status_code == 400 and "needs a format that carries a preference" in text(response)
    response = admin_client.post(url, {"file": upload("x.jsonl", GOOD), "format": "xml"})
    assert response.status_code == 400 and "Select a valid choice" in text(response)
    settings.IMPORT_MAX_UPLOAD_BYTES = 100  # the limit the API applies too
    response = admin_client.post(url, {"file": upload("x.jsonl", GOOD), "format": "jsonl"}, HTTP_ACCEPT="application/json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "file" and "at most 100 bytes" in response.json()["errors"][0]["message"]
    assert not ComparisonTask.objects.exists() and not ImportJob.objects.exists()
    assert admin_client.get(reverse("console:import_report", args=[999999])).status_code == 404


def test_a_replies_file_from_the_console_samples_pairs_per_prompt(admin_client, project):
    lines = [json.dumps({"prompt": f"q{p}", "model": m, "response": f"{m} answers q{p}"}) for p in range(3) for m in ("x", "y", "z")]
    job, page = imported(admin_client, project, "replies.jsonl", lines, format="replies", pairs_per_prompt="1")
    assert job.pairs_per_prompt == 1 and "Imported: 3 new tasks" in page  # one of the 3 pairs per prompt
    job, page = imported(admin_client, project, "replies.jsonl", lines, format="replies")
    assert ComparisonTask.objects.filter(project=project).count() == 9  # every pair


def test_an_import_stopped_half_way_leaves_nothing(project):
    steps = import_steps(project=project, stream=jsonl(make_items(1200)), fmt="jsonl")
    assert next(steps) > 0  # the first batch of 500 is written, inside the transaction
    steps.close()  # the client went away
    assert not Prompt.objects.filter(project=project).exists()


# ----------------------------------------------------------------------------- export


def test_export_downloads_what_the_api_and_cli_give(admin_client, project, kim, lee):
    import_items(project, make_items(2))
    judge(project, kim, "A", 2)
    judge(project, lee, "B", 1)
    url = reverse("console:export", args=[project.pk])
    page = text(admin_client.get(url))
    assert 'name="format"' in page and "majority" in page
    download = admin_client.get(url, {"format": "trl", "aggregate": "none", "download": "1"})
    assert download.status_code == 200 and "attachment" in download["Content-Disposition"]
    body = b"".join(download.streaming_content).decode()
    assert body == "".join(iter_export_lines(project=project, fmt="trl", aggregate="none"))
    assert len(body.splitlines()) == 2
    only_kim = b"".join(admin_client.get(url, {"format": "raw", "annotator": "kim", "download": "1"}).streaming_content).decode()
    assert [json.loads(line)["annotator"] for line in only_kim.splitlines()] == ["kim"]
    future = b"".join(admin_client.get(url, {"format": "hh", "since": "2999-01-01", "download": "1"}).streaming_content)
    assert future == b""
    shown = text(admin_client.get(url, {"format": "trl", "aggregate": "majority"}))
    assert "export_preferences --project &#x27;test project&#x27; --format trl --aggregate majority" in shown
    assert "format=trl&amp;aggregate=majority" in shown
    # names with quotes, spaces or & stay one shell word and one query value
    project.name = "kim's project"
    project.save()
    shown = text(admin_client.get(url, {"format": "raw", "annotator": "a&b c", "exclude_paused": "on"}))
    assert "--project &#x27;kim&#x27;&quot;&#x27;&quot;&#x27;s project&#x27;" in shown and "--annotator &#x27;a&amp;b c&#x27; --exclude-paused" in shown
    assert "annotator=a%26b+c&amp;exclude_paused=true" in shown


@pytest.mark.parametrize(
    "query, field, message",
    [
        ({"format": "raw", "aggregate": "majority"}, "aggregate", "raw lists every judgement"),
        ({"format": "csv"}, "format", "Select a valid choice"),
        ({"format": "trl", "since": "2026-13-01"}, "since", "Enter a valid date"),
        ({"format": "trl", "since": "2026-05-02", "until": "2026-05-01"}, "until", "must not be before"),
    ],
)
def test_bad_export_options_are_a_400_naming_the_field(admin_client, project, query, field, message):
    response = admin_client.get(reverse("console:export", args=[project.pk]), {**query, "download": "1"})
    assert response.status_code == 400
    page = text(response)
    assert message in page and f'id="field-{field}"' in page


# ----------------------------------------------------------------------------- task browser


@pytest.fixture
def browsable(project, kim, lee, boss):
    """Two sources, a generated reply from policy v1, a gold task, a task with disagreement."""
    project.overlap_k = 2
    project.save()
    import_stream_items = [
        {"prompt": "How do I bake sourdough bread?", "responses": ["Use a starter.", "Buy yeast."]},
        {"prompt": "Explain recursion", "responses": ["A function calling itself.", "Loops forever."]},
    ]
    import_items(project, import_stream_items)
    from labeling.importing.services import import_stream

    import_stream(project=project, stream=jsonl([{"prompt": "Name a prime", "responses": ["7", "The answer is banana-split"]}]), fmt="jsonl", source="second.jsonl")
    version = ModelVersion.objects.create(project=project, kind="policy", number=1, artifact_path="/tmp/x", status="active")
    prime = ComparisonTask.objects.get(prompt__source="second.jsonl")
    prime.responses.filter(text="7").update(model_version=version)
    bread = ComparisonTask.objects.get(prompt__messages__icontains="sourdough")
    recursion = ComparisonTask.objects.get(prompt__messages__icontains="recursion")
    recursion.is_gold, recursion.gold_response = True, recursion.responses.get(text="A function calling itself.")
    recursion.save()
    # bread: kim and lee disagree (whatever order they saw the replies in)
    for user, wants in ((kim, "Use a starter."), (lee, "Buy yeast.")):
        assignment = Assignment.objects.create(
            task=bread, annotator=user, display_order=[r.pk for r in bread.responses.order_by("pk")],
            leased_at=timezone.now(), expires_at=timezone.now() + timedelta(minutes=5),
        )
        letter = "A" if assignment.display_order[0] == bread.responses.get(text=wants).pk else "B"
        submit_judgement(annotator=user, assignment_id=assignment.pk, judgement=JudgementInput(letter, 2, rationale=f"{user.username} says <script>x</script>"))
    return {"bread": bread, "recursion": recursion, "prime": prime, "version": version}


def task_ids(admin_client, project, **query):
    response = admin_client.get(reverse("console:tasks", args=[project.pk]), query)
    assert response.status_code == 200, text(response)
    return {int(t) for t in re.findall(r'data-task="(\d+)"', text(response))}


def test_task_filters_and_search(admin_client, project, browsable):
    bread, recursion, prime = browsable["bread"].pk, browsable["recursion"].pk, browsable["prime"].pk
    assert task_ids(admin_client, project) == {bread, recursion, prime}
    assert task_ids(admin_client, project, q="SOURDOUGH") == {bread}  # prompts, any case
    assert task_ids(admin_client, project, q="banana-split") == {prime}  # replies
    assert task_ids(admin_client, project, q="nothing like this") == set()
    assert task_ids(admin_client, project, gold="yes") == {recursion}
    assert task_ids(admin_client, project, gold="no") == {bread, prime}
    assert task_ids(admin_client, project, source="second.jsonl") == {prime}
    assert task_ids(admin_client, project, version=str(browsable["version"].pk)) == {prime}
    assert task_ids(admin_client, project, version="imported") == {bread, recursion}
    assert task_ids(admin_client, project, disagreement="yes") == {bread}
    assert task_ids(admin_client, project, disagreement="no") == {recursion, prime}
    assert task_ids(admin_client, project, status="complete", q="bread") == {bread}  # k = 2 judgements: complete
    assert task_ids(admin_client, project, status="open") == {recursion, prime}


def test_agreeing_judgements_in_different_display_orders_are_not_a_disagreement(admin_client, project, kim, lee):
    import_items(project, [{"prompt": "tie me", "responses": ["one", "two"]}])
    task = ComparisonTask.objects.get(project=project)
    ids = [r.pk for r in task.responses.order_by("pk")]
    for user, order in ((kim, ids), (lee, ids[::-1])):
        assignment = Assignment.objects.create(task=task, annotator=user, display_order=order, leased_at=timezone.now(), expires_at=timezone.now() + timedelta(minutes=5))
        submit_judgement(annotator=user, assignment_id=assignment.pk, judgement=JudgementInput("tie"))
    assert task_ids(admin_client, project, disagreement="yes") == set()
    assert task_ids(admin_client, project, disagreement="no") == {task.pk}


@pytest.mark.parametrize(
    "query, field",
    [({"page": "abc"}, "page"), ({"page": "0"}, "page"), ({"version": "x1"}, "version"), ({"status": "zzz"}, "status"),
     ({"gold": "maybe"}, "gold"), ({"q": "a\x00b"}, "q"), ({"q": "x" * 201}, "q")],
)
def test_bad_task_filters_are_a_400_naming_the_field(admin_client, project, query, field):
    response = admin_client.get(reverse("console:tasks", args=[project.pk]), query)
    assert response.status_code == 400
    assert re.search(rf"<li>{field}: ", text(response))


def test_task_pages_paginate(admin_client, project):
    import_items(project, make_items(60))
    first = task_ids(admin_client, project)
    second = task_ids(admin_client, project, page="2")
    assert len(first) == 50 and len(second) == 10 and not first & second
    assert task_ids(admin_client, project, page="99") == second  # past the end: the last page


def test_the_task_page_names_each_replys_source_once(admin_client, project):
    from labeling.services import GeneratedReply, add_comparison_task

    import_items(project, make_items(1))
    prompt = Prompt.objects.filter(project=project).first()
    version = ModelVersion.objects.create(project=project, kind="policy", number=3, artifact_path="/nowhere")
    task = add_comparison_task(prompt=prompt, replies=[
        GeneratedReply("from the policy", "policy v3", version.pk), GeneratedReply("from an endpoint", "my server", version.pk),
    ])
    page = text(admin_client.get(reverse("console:task", args=[task.pk])))
    assert "policy v3 · policy v3" not in page and "policy v3</span>" in page  # the name once
    assert "my server · policy v3" in page  # another origin: the version after it


def test_the_task_page_shows_every_judgement(admin_client, project, browsable):
    bread = browsable["bread"]
    page = text(admin_client.get(reverse("console:task", args=[bread.pk])))
    rows = re.findall(r'<tr data-judgement="\d+">(.*?)</tr>', page, re.S)
    assert len(rows) == 2
    assert "kim" in rows[0] and "lee" in rows[1]
    starter = bread.task_responses.get(response__text="Use a starter.").position + 1
    yeast = 3 - starter
    assert f"#{starter} &gt; #{yeast}" in rows[0] and f"#{yeast} &gt; #{starter}" in rows[1]
    assert "better" in rows[0]  # strength 2
    assert "kim says &lt;script&gt;x&lt;/script&gt;" in rows[0]  # rationale escaped
    assert "A = #1, B = #2" in rows[0]  # display order
    assert "annotators disagree" in page


def test_the_judgement_list_filters_by_annotator_and_date(admin_client, project, browsable, kim):
    url = reverse("console:judgements", args=[project.pk])
    both = re.findall(r'data-judgement="(\d+)"', text(admin_client.get(url)))
    assert len(both) == 2
    only_kim = text(admin_client.get(url, {"annotator": "kim"}))
    assert len(re.findall(r'data-judgement="(\d+)"', only_kim)) == 1 and "kim says" in only_kim and "lee says" not in only_kim
    Judgement.objects.filter(annotator=kim).update(created_at=timezone.now() - timedelta(days=10))
    recent = text(admin_client.get(url, {"since": (timezone.localdate() - timedelta(days=2)).isoformat()}))
    assert "lee says" in recent and "kim says" not in recent
    old = text(admin_client.get(url, {"until": (timezone.localdate() - timedelta(days=5)).isoformat()}))
    assert "kim says" in old and "lee says" not in old
    bad = admin_client.get(url, {"since": "yesterday"})
    assert bad.status_code == 400 and "since: " in text(bad)


def test_tied_replies_are_stored_in_one_order(project, kim):
    import_items(project, make_items(1, replies=3))
    task = ComparisonTask.objects.get(project=project)
    ids = sorted(r.pk for r in task.responses.all())
    assignment = Assignment.objects.create(task=task, annotator=kim, display_order=ids[::-1], leased_at=timezone.now(), expires_at=timezone.now() + timedelta(minutes=5))
    judgement, _ = submit_judgement(annotator=kim, assignment_id=assignment.pk, judgement=JudgementInput("ranking", ranks=[2, 1, 2]))
    assert judgement.ranking == [[ids[1]], [ids[0], ids[2]]]


def test_the_migration_sorts_stored_groups(project, kim):
    from importlib import import_module

    from django.apps import apps

    import_items(project, make_items(1, replies=3))
    task = ComparisonTask.objects.get(project=project)
    judgement = Judgement.objects.create(task=task, annotator=kim, choice="tie", ranking=[[9, 3, 5]], display_order=[9, 3, 5])
    import_module("labeling.migrations.0006_canonical_rankings").sort_groups(apps, None)
    judgement.refresh_from_db()
    assert judgement.ranking == [[3, 5, 9]]


# ----------------------------------------------------------------------------- no 5xx on any input

BIG = "9" * 30


@pytest.mark.parametrize(
    "field, value",
    [
        ("overlap_k", BIG), ("gold_rate", "nan"), ("gold_rate", "inf"), ("lease_seconds", BIG), ("revision_hours", BIG),
        ("max_responses", "-1"), ("training-retrain_min_new_judgements", BIG), ("training-ppo_max_kl", "nan"),
        ("training-ppo_max_kl", "1e400"), ("training-generate_prompts", "-5"), ("training-reward_config", '{"epochs": ' + BIG + "}"),
        ("training-reward_config", '{"lr": NaN}'), ("training-reward_config", "[" * 5000 + "]" * 5000),
        ("training-sampling_config", '{"top_p": Infinity}'), ("name", "x" * 300), ("name", "a\x00b"), ("guidelines", "\x00"),
    ],
)
def test_extreme_form_values_are_form_errors(admin_client, field, value):
    response = admin_client.post(reverse("console:project_create"), project_form(**{field: value}))
    assert response.status_code == 200 and "Nothing was saved" in text(response)
    assert not Project.objects.exists()


@pytest.mark.parametrize(
    "path",
    [
        "/manage/tasks/99999999999999999999999/", "/manage/projects/99999999999999999999999/",
        "/manage/projects/99999999999999999999999/tasks/", "/manage/imports/99999999999999999999999/report.txt",
        "/manage/imports/99999999999999999999999/", "/manage/imports/99999999999999999999999/state/",
        "/manage/projects/{p}/tasks/?version=99999999999999999999", "/manage/projects/{p}/tasks/?q=%00",
        "/manage/projects/{p}/judgements/?annotator=%00", "/manage/projects/{p}/export/?format=trl&annotator=%00&download=1",
        "/manage/projects/{p}/tasks/?source=%ff", "/manage/projects/{p}/judgements/?page=-1",
    ],
)
def test_odd_urls_are_never_a_server_error(admin_client, project, path):
    response = admin_client.get(path.format(p=project.pk))
    assert response.status_code in (200, 400, 404), response.status_code


def test_interval_chart_ticks_are_multiples_of_the_step():
    from labeling.console.charts import interval_chart

    svg = str(interval_chart([("w1", 0.5, 0.4, 0.6)], title="t", y_label="alpha", x_label="week", y_min=-0.2, y_max=1.0))
    assert re.findall(r'text-anchor="end"[^>]*>([^<]+)<', svg) == ["-0.2", "0", "0.2", "0.4", "0.6", "0.8", "1"]
