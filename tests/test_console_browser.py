"""The labeling admins' flows (#9) in a real browser (Debian's chromium through playwright):
create a project with a previewed guideline, upload a file with errors and download the
report, upload with the progress bar, browse and search tasks, open a task, export.

Set SCREENSHOT_DIR to keep screenshots of the pages."""

import json
import os
import threading
import time

import pytest
from django.db import connection

from labeling.importing import jobs
from labeling.models import ComparisonTask, ImportJob, Project
from labeling.services import JudgementInput, assign_next_task, create_annotator, submit_judgement
from training.models import ProjectTrainingSettings

from .conftest import import_items, make_items, run_queued_imports
from .test_browser import browser  # noqa: F401 - the chromium fixture

pytestmark = [pytest.mark.browser]

PASSWORD = "console-browser-5t8w"


def shot(page, name):
    if os.environ.get("SCREENSHOT_DIR"):
        page.screenshot(path=os.path.join(os.environ["SCREENSHOT_DIR"], name), full_page=True)


@pytest.fixture
def admin_page(browser, live_server, transactional_db):  # noqa: F811
    create_annotator(username="boss", password=PASSWORD, is_admin=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", "boss")
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.press("#id_password", "Enter")
    page.js_errors = errors
    yield page
    assert errors == []


def test_create_a_project_with_previewed_guidelines(admin_page, live_server):
    page = admin_page
    page.goto(f"{live_server.url}/")
    page.click("text=Manage")
    page.click("#new-project")
    page.fill("#id_name", "Browser project")
    page.fill("#id_description", "Made in the browser")
    page.fill("#id_guidelines", "Prefer **honest** replies.\n\n<script>window.__xss = 1</script>")
    page.wait_for_selector("#guidelines-preview strong")
    assert page.inner_text("#guidelines-preview strong") == "honest"
    assert page.evaluate("window.__xss") is None
    assert page.query_selector("#guidelines-preview script") is None
    page.fill("#id_overlap_k", "0")  # invalid: the form comes back with everything typed
    page.fill("#id_training-retrain_min_new_judgements", "150")
    shot(page, "console-project-form.png")
    page.click("#save-project")
    page.wait_for_selector("#form-errors")
    assert "greater than or equal to 1" in page.inner_text("#field-overlap_k")
    assert page.input_value("#id_name") == "Browser project"
    assert page.input_value("#id_training-retrain_min_new_judgements") == "150"
    assert not Project.objects.filter(name="Browser project").exists()
    page.fill("#id_overlap_k", "2")
    page.click("#save-project")
    page.wait_for_selector("#counts")
    project = Project.objects.get(name="Browser project")
    assert project.overlap_k == 2 and ProjectTrainingSettings.objects.get(project=project).retrain_min_new_judgements == 150
    assert "created" in page.inner_text(".messages")
    assert page.query_selector("#per-day-chart svg .axis") is not None
    shot(page, "console-project.png")
    # archive, with a confirmation
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#archive")
    page.wait_for_selector("#restore")
    project.refresh_from_db()
    assert not project.is_active


def test_upload_with_an_error_report_then_a_good_file_with_the_jobs_progress(admin_page, live_server, tmp_path):
    """The upload goes to a job page; a worker (here this test's thread, running what the Celery
    task runs) imports it while the page polls the job's progress."""
    page = admin_page
    project = Project.objects.create(name="Uploads", overlap_k=1, gold_rate=0)
    bad = tmp_path / "bad.jsonl"
    good_lines = [json.dumps(item) for item in make_items(3)]
    bad.write_text("\n".join([good_lines[0], '{"prompt": "only one reply", "responses": ["x"]}', "{broken", *good_lines[1:]]) + "\n")
    page.goto(f"{live_server.url}/manage/projects/{project.pk}/import/")
    page.set_input_files("#id_file", str(bad))
    page.select_option("#id_format", "jsonl")
    page.click("#import-button")
    page.wait_for_selector("#job-detail:has-text('Waiting for a worker.')")
    run_queued_imports()
    page.wait_for_selector("#report-errors")  # the page polls, then reloads with the report
    shot(page, "console-import-errors.png")
    assert "Rejected: nothing was imported." in page.inner_text("#report-outcome")
    lines = page.eval_on_selector_all("#report-errors tbody tr td.num", "cells => cells.map(c => c.textContent)")
    assert lines == ["2", "3"]
    assert not ComparisonTask.objects.filter(project=project).exists()
    with page.expect_download() as download_info:
        page.click("#report-download")
    report = open(download_info.value.path()).read()
    assert "line 2: " in report and "line 3: malformed JSON" in report

    page.goto(f"{live_server.url}/manage/projects/{project.pk}/import/")
    assert "bad.jsonl" in page.inner_text("#import-jobs")
    items = [json.dumps(item) + "\n" for item in make_items(3000, prefix="bulk")]
    big = tmp_path / "big.jsonl"
    big.write_text("".join(items))
    page.set_input_files("#id_file", str(big))
    page.check("#id_skip_invalid")
    page.click("#import-button")
    page.wait_for_selector("#job-detail:has-text('Waiting for a worker.')")
    job = ImportJob.objects.latest("pk")
    fifo = jobs.job_dir(job.pk) / "upload"  # the worker reads the file as this test feeds it
    fifo.unlink()
    os.mkfifo(fifo)
    worker = threading.Thread(target=lambda: (jobs.execute_job(job.pk), connection.close()))
    worker.start()
    with open(fifo, "w") as pipe:
        pipe.writelines(items[:1200])
        pipe.flush()
        # the first batch of 500 lines is in (not committed): the page shows part of the file read
        deadline = time.monotonic() + 30  # (wait_for_function would eval a string, which the CSP refuses)
        while page.eval_on_selector("#job-progress", "bar => bar.value") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert 0 < page.eval_on_selector("#job-progress", "bar => bar.value") < 1
        assert " read (" in page.inner_text("#job-detail")  # e.g. "97.6 KB of 295.6 KB read (33%)"
        assert page.inner_text("#job-status") == "importing"
        shot(page, "console-import-running.png")
        pipe.writelines(items[1200:])
    worker.join(timeout=60)
    page.wait_for_selector("#report-outcome:has-text('Imported: 3000 new tasks')", timeout=30000)
    assert ComparisonTask.objects.filter(project=project).count() == 3000
    shot(page, "console-import-done.png")


def test_browse_search_open_a_task_and_export(admin_page, live_server):
    page = admin_page
    project = Project.objects.create(name="Browse", overlap_k=2, gold_rate=0)
    import_items(project, make_items(4) + [{"prompt": "Tell me about <b>volcanoes</b>", "responses": ["Hot <script>window.__xss=3</script>\n\n```python\ndef erupt():\n    return 1\n```", "Cold"]}])
    kim = create_annotator(username="kim", password=PASSWORD)
    volcano = ComparisonTask.objects.get(prompt__messages__icontains="volcanoes")
    ComparisonTask.objects.filter(project=project).exclude(pk=volcano.pk).update(priority=-1)
    assignment = assign_next_task(project=project, annotator=kim)
    assert assignment.task_id == volcano.pk
    submit_judgement(annotator=kim, assignment_id=assignment.pk, judgement=JudgementInput("A", 3, rationale="clearer <i>answer</i>", time_spent_ms=4200))

    page.goto(f"{live_server.url}/manage/projects/{project.pk}/")
    page.click(".subnav >> text=Tasks")
    assert len(page.query_selector_all("#tasks tbody tr")) == 5
    page.fill("#filter-q", "volcano")
    page.click("#apply-filters")
    page.wait_for_selector("#task-count:has-text('1 task match')")
    rows = page.query_selector_all("#tasks tbody tr")
    assert len(rows) == 1 and "<b>volcanoes</b>" in rows[0].inner_text()  # the prompt as text
    shot(page, "console-tasks.png")
    page.click(f"#tasks a[href$='/tasks/{volcano.pk}/']")
    page.wait_for_selector("#task-judgements")
    row = page.inner_text("#task-judgements tbody tr")
    assert "kim" in row and "clearer <i>answer</i>" in row and "4 s" in row and "significantly" in row
    assert page.evaluate("window.__xss") is None
    page.wait_for_selector(".reply code.hljs .hljs-keyword", timeout=15000)  # code highlighted as on the comparison page
    shot(page, "console-task.png")

    page.click(".subnav >> text=Export")
    page.select_option("#id_format", "raw")
    with page.expect_download() as download_info:
        page.click("#download")
    rows = [json.loads(line) for line in open(download_info.value.path())]
    assert [row["annotator"] for row in rows] == ["kim"] and rows[0]["rationale"] == "clearer <i>answer</i>"
    page.select_option("#id_aggregate", "majority")
    page.click("#download")  # raw + majority: the page says why, nothing downloads
    page.wait_for_selector("#field-aggregate .field-error")
    assert "raw lists every judgement" in page.inner_text("#field-aggregate")
