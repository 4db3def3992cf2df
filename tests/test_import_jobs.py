"""Imports run by a worker (#19, part 4): the request stores the file and queues a job; the
worker imports it all or nothing, with progress, an ETA, cancel and the line-numbered report;
the same limits apply to the console and the API. The last test sends the job through Redis
to a real Celery worker process."""

import io
import json
import os
import threading
import time
from datetime import timedelta

import pytest
import redis
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from labeling.importing import jobs
from labeling.models import ComparisonTask, ImportJob, Project, Prompt

from .conftest import TEST_REDIS_URL, make_items, run_queued_imports
from .worker import WorkerProcess, database_url


def jsonl_upload(items, name="data.jsonl") -> io.BytesIO:
    data = io.BytesIO("".join(json.dumps(item) + "\n" for item in items).encode())
    data.name = name
    return data


@pytest.fixture
def api(admin_user):
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=admin_user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def uploaded(items, name="data.jsonl") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, jsonl_upload(items).getvalue())


def post_import(api, project, items, **fields):
    return api.post(f"/api/v1/projects/{project.pk}/import/", {"file": jsonl_upload(items), "format": "jsonl", **fields}, format="multipart")


def test_a_file_over_the_inline_size_is_stored_and_imported_by_the_worker(db, api, project, settings, import_root):
    settings.IMPORT_INLINE_MAX_BYTES = 2000
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1000  # Django spools the upload to a temporary file, which is moved
    small = post_import(api, project, make_items(2, prefix="small"))
    assert small.status_code == 201 and small.json()["tasks_created"] == 2  # small files still import in the request

    response = post_import(api, project, make_items(600, prefix="big"))
    assert response.status_code == 202, response.content
    job = response.json()
    assert response["Location"] == f"/api/v1/imports/{job['id']}/"
    assert job["status"] == "queued" and job["report"] is None and job["requested_by"] == "admin"
    assert job["progress"] == {"bytes_done": 0, "bytes_total": job["size_bytes"], "fraction": 0.0, "eta_seconds": None,
                               "heartbeat_age_seconds": None, "cancelling": False}
    assert (import_root / str(job["id"]) / "upload").stat().st_size == job["size_bytes"]
    assert ComparisonTask.objects.filter(project=project).count() == 2  # nothing of it yet

    assert run_queued_imports() == ["succeeded"]
    done = api.get(response["Location"]).json()
    assert done["status"] == "succeeded" and done["progress"]["fraction"] == 1.0 and done["attempts"] == 1
    assert done["report"]["ok"] and done["report"]["counts"]["tasks_created"] == 600 and done["report"]["errors"] == []
    assert ComparisonTask.objects.filter(project=project).count() == 602
    assert not (import_root / str(job["id"])).exists()  # the stored upload is gone once imported
    listing = api.get("/api/v1/imports/", {"project": project.pk}).json()
    assert [j["id"] for j in listing["results"]] == [job["id"]]
    assert api.get("/api/v1/imports/", {"status": "queued"}).json()["results"] == []


def test_background_can_be_asked_for_but_not_refused_above_the_inline_size(db, api, project, settings):
    forced = post_import(api, project, make_items(2), background="true")
    assert forced.status_code == 202 and forced.json()["status"] == "queued"
    settings.IMPORT_INLINE_MAX_BYTES = 100
    refused = post_import(api, project, make_items(5), background="false")
    assert refused.status_code == 400 and refused.json()["field"] == "background"
    settings.IMPORT_MAX_UPLOAD_BYTES = 200  # the limit the console applies too
    too_big = post_import(api, project, make_items(5))
    assert too_big.status_code == 400 and too_big.json()["field"] == "file" and "at most 200 bytes" in too_big.json()["detail"]
    assert ImportJob.objects.count() == 1 and not Prompt.objects.exists()


def test_a_bad_line_fails_the_job_with_the_numbered_report_and_imports_nothing(db, api, project, import_root):
    items = make_items(700)
    lines = [json.dumps(item) for item in items]
    lines[3] = '{"prompt": "one reply", "responses": ["x"]}'
    lines[650] = "{broken"
    upload = io.BytesIO(("\n".join(lines) + "\n").encode())
    upload.name = "bad.jsonl"
    job = api.post(f"/api/v1/projects/{project.pk}/import/", {"file": upload, "format": "jsonl", "background": "true"}, format="multipart").json()
    assert run_queued_imports() == ["failed"]
    failed = api.get(f"/api/v1/imports/{job['id']}/").json()
    assert failed["status"] == "failed" and not failed["report"]["ok"] and failed["report"]["total_errors"] == 2
    assert [e["line"] for e in failed["report"]["errors"]] == [4, 651]
    assert "line 4" in failed["error"] and "nothing was imported" in failed["error"]
    assert not Prompt.objects.filter(project=project).exists()  # the first batch (500 lines) was rolled back too
    assert not (import_root / str(job["id"])).exists()


def test_cancel_a_queued_import_at_once_and_an_ended_one_is_a_conflict(db, api, project, import_root):
    job = post_import(api, project, make_items(3), background="true").json()
    cancelled = api.post(f"/api/v1/imports/{job['id']}/cancel/")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert run_queued_imports() == [] and jobs.execute_job(job["id"]) is None  # a late delivery runs nothing
    assert not Prompt.objects.exists() and not (import_root / str(job["id"])).exists()
    again = api.post(f"/api/v1/imports/{job['id']}/cancel/")
    assert again.status_code == 409 and again.json()["code"] == "already_closed"
    assert api.post("/api/v1/imports/99999999/cancel/").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_cancel_while_importing_rolls_the_whole_file_back(admin_user, import_root):
    """The stored upload is replaced by a pipe, so the test decides when the worker reads on:
    the cancel lands after the first batch of 500 lines was written inside the transaction."""
    project = Project.objects.create(name="cancel me", overlap_k=1, gold_rate=0)
    job = jobs.create_job(project=project, upload=uploaded(make_items(3)), fmt="jsonl", requested_by=admin_user)
    path = jobs.job_dir(job.pk) / "upload"
    path.unlink()
    os.mkfifo(path)
    result = {}
    worker = threading.Thread(target=lambda: (result.setdefault("status", jobs.execute_job(job.pk)), connection.close()))
    worker.start()
    deadline = time.monotonic() + 60
    while ImportJob.objects.get(pk=job.pk).status != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = [json.dumps(item) + "\n" for item in make_items(1200)]
    with open(path, "w") as pipe:
        pipe.writelines(lines[:600])
        pipe.flush()
        running = ImportJob.objects.get(pk=job.pk)
        while jobs.read_progress(running)["bytes_done"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)  # until the first batch is in (not committed)
        assert jobs.read_progress(running)["bytes_done"] > 0
        jobs.request_cancel(running)
        assert jobs.read_progress(running)["cancelling"]
        pipe.writelines(lines[600:])
    worker.join(timeout=60)
    job.refresh_from_db()
    assert result["status"] == "cancelled" and job.status == "cancelled" and "nothing was imported" in job.error
    assert not Prompt.objects.filter(project=project).exists() and not ComparisonTask.objects.exists()


def test_a_job_whose_worker_died_is_reaped_and_a_redelivered_one_starts_over(db, project, admin_user, import_root):
    stale = jobs.create_job(project=project, upload=uploaded(make_items(3)), fmt="jsonl")
    fresh = jobs.create_job(project=project, upload=uploaded(make_items(3, prefix="f")), fmt="jsonl")
    long_ago = timezone.now() - timedelta(minutes=10)
    ImportJob.objects.filter(pk__in=[stale.pk, fresh.pk]).update(status="running", started_at=long_ago, attempts=1)
    (jobs.job_dir(stale.pk) / "progress.json").write_text(json.dumps({"bytes_done": 10, "at": time.time() - 600}))
    (jobs.job_dir(fresh.pk) / "progress.json").write_text(json.dumps({"bytes_done": 10, "at": time.time()}))
    assert jobs.reap_stale_imports(timeout_seconds=120) == [stale.pk]
    stale.refresh_from_db()
    assert stale.status == "failed" and "no heartbeat" in stale.error and not jobs.job_dir(stale.pk).exists()

    # the message of a job whose worker was killed comes back (acks late): it starts over
    assert jobs.execute_job(fresh.pk) == "succeeded"
    fresh.refresh_from_db()
    assert fresh.attempts == 2 and fresh.report["counts"]["tasks_created"] == 3
    # ... but not for ever
    third = jobs.create_job(project=project, upload=uploaded(make_items(2, prefix="t")), fmt="jsonl")
    ImportJob.objects.filter(pk=third.pk).update(status="running", attempts=jobs.MAX_ATTEMPTS)
    assert jobs.execute_job(third.pk) is None
    third.refresh_from_db()
    assert third.status == "failed" and "each of 3 attempts" in third.error
    assert Prompt.objects.filter(project=project).count() == 3
    # left-over folders: of an ended job, and of no job (old) go; one just created (no row yet) stays
    ended, orphan, newborn = jobs.job_dir(fresh.pk), import_root / "999999", import_root / "999998"
    for folder in (ended, orphan, newborn):
        folder.mkdir(parents=True, exist_ok=True)
    os.utime(orphan, (time.time() - 600, time.time() - 600))
    jobs.reap_stale_imports(timeout_seconds=120)
    assert not ended.exists() and not orphan.exists() and newborn.exists()


def test_the_import_api_is_for_admins(db, project, annotator):
    client = APIClient()
    client.force_authenticate(annotator)
    assert client.get("/api/v1/imports/").status_code == 403
    job = jobs.create_job(project=project, upload=uploaded(make_items(1)), fmt="jsonl")
    assert client.get(f"/api/v1/imports/{job.pk}/").status_code == 403
    assert client.post(f"/api/v1/imports/{job.pk}/cancel/").status_code == 403


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_imports_what_the_api_queued(admin_user, tmp_path, settings):
    from feedback_site.celery import app

    from .test_worker_e2e import use_broker

    redis.Redis.from_url(TEST_REDIS_URL).flushdb()
    previous = app.conf.broker_url
    use_broker(app, TEST_REDIS_URL)
    worker = WorkerProcess(tmp_path / "worker.log", {
        "DATABASE_URL": database_url(), "REDIS_URL": TEST_REDIS_URL, "IMPORT_ROOT": str(settings.IMPORT_ROOT), "DB_CONN_MAX_AGE": "0",
    })
    try:
        worker.start()
        project = Project.objects.create(name="worker import", overlap_k=1, gold_rate=0)
        api = APIClient()
        api.force_authenticate(admin_user)
        response = post_import(api, project, make_items(1500, prefix="w"), background="true")
        assert response.status_code == 202
        deadline = time.monotonic() + 120
        while (state := api.get(response["Location"]).json())["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert state["status"] == "succeeded", (state, worker.log())
        assert state["report"]["counts"]["tasks_created"] == 1500 and state["started_at"] <= state["finished_at"]
        assert ComparisonTask.objects.filter(project=project).count() == 1500
    finally:
        worker.stop()
        use_broker(app, previous)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_import_refreshes_the_statistics_and_never_waits_on_another_import(caplog):
    """The import ANALYZEs the tables it writes inside its transaction (else PostgreSQL plans
    its lookups as if they were empty and slows down as they grow); when another import holds
    that lock, it goes on without waiting for it."""
    import psycopg

    from labeling.importing.services import import_stream

    from .conftest import jsonl

    settings_dict = connection.settings_dict
    other = psycopg.connect(host=settings_dict["HOST"] or "127.0.0.1", port=settings_dict["PORT"] or 5432,
                            user=settings_dict["USER"], dbname=settings_dict["NAME"])
    try:
        other.execute('ANALYZE "labeling_prompt"')  # holds ANALYZE's lock until it commits, as a running import does
        project = Project.objects.create(name="stats", overlap_k=1, gold_rate=0)
        with caplog.at_level("INFO", logger="labeling.importing.services"):
            report = import_stream(project=project, stream=jsonl(make_items(1200, prefix="s")), fmt="jsonl")
        assert report.tasks_created == 1200
        assert "statistics not refreshed" in caplog.text and "lock timeout" in caplog.text
    finally:
        other.rollback()
        other.close()
    with connection.cursor() as cursor:  # alone, it analyzes: the planner knows its rows
        import_stream(project=project, stream=jsonl(make_items(1200, prefix="t")), fmt="jsonl")
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = 'labeling_prompt'")
        assert cursor.fetchone()[0] >= 500
