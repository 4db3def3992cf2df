"""Imports run by a worker: an uploaded file is stored, then imported by a Celery task.

The web request only stores the file (IMPORT_ROOT/<job id>/upload) and queues the job, so
an import of any size never runs inside a request (gunicorn's timeout would kill it half
way). The worker imports it exactly as an import in the request does (import_steps: one
transaction, all or nothing, the same limits and the same line-numbered report).

The import's transaction hides its rows, and on SQLite it holds the write lock, so the
job's progress and a cancel request pass through its folder instead of the database:

- `progress.json`: bytes read so far and when; a heartbeat thread rewrites it every few
  seconds while the import runs, so a job whose worker died is found (reap_stale_imports);
- `cancel`: created by the web on request; the worker checks it after every batch and
  rolls the whole import back.

A job is claimed queued -> running under a row lock, so a message delivered twice runs it
once; a job whose worker was killed is delivered again (acks late) and starts over, at
most MAX_ATTEMPTS times.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ..exceptions import ImportFailed, InvalidInput, LabelingError
from ..models import ImportJob, ImportStatus, Project
from .formats import FORMATS, REPLIES_FORMAT
from .services import LABELLED_FORMATS, SOURCE_CHARS, import_steps

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
HEARTBEAT_SECONDS = 5
PROGRESS_SECONDS = 0.25
COPY_CHUNK = 1024 * 1024


class ImportCancelled(Exception):
    pass


def job_dir(job_id: int) -> Path:
    return Path(settings.IMPORT_ROOT) / str(int(job_id))


def check_options(*, fmt: str, with_labels: bool, size: int) -> None:
    """The checks both paths make before anything is stored (InvalidInput names the field)."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", field="format")
    if with_labels and fmt not in LABELLED_FORMATS:
        raise InvalidInput(f"needs a format that carries a preference ({', '.join(LABELLED_FORMATS)})", field="with_labels")
    if size > settings.IMPORT_MAX_UPLOAD_BYTES:
        raise InvalidInput(
            f"the file has {size:,} bytes; at most {settings.IMPORT_MAX_UPLOAD_BYTES:,} bytes can be imported "
            "(IMPORT_MAX_UPLOAD_BYTES; larger files: manage.py import_data on the server)",
            field="file",
        )
    if size == 0:
        raise InvalidInput("the file is empty", field="file")


def create_job(*, project: Project, upload, fmt: str, with_labels: bool = False, skip_invalid: bool = False,
               pairs_per_prompt: int | None = None, requested_by=None) -> ImportJob:
    """Store `upload` (a Django UploadedFile) and queue its import; the worker starts once the
    caller's transaction commits."""
    size = upload.size or 0
    check_options(fmt=fmt, with_labels=with_labels, size=size)
    job = ImportJob.objects.create(
        project=project, requested_by=requested_by, file_name=os.path.basename(upload.name or "upload")[:SOURCE_CHARS] or "upload",
        size_bytes=size, format=fmt, with_labels=with_labels, skip_invalid=skip_invalid,
        pairs_per_prompt=pairs_per_prompt if fmt == REPLIES_FORMAT else None,
    )
    folder = job_dir(job.pk)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "upload"
    try:
        if hasattr(upload, "temporary_file_path"):  # spooled to disk by Django: move it, no copy on one file system
            shutil.move(upload.temporary_file_path(), target)
            try:
                upload.close()  # it would delete the temporary file, which is gone
            except FileNotFoundError:
                pass
        else:
            upload.seek(0)
            with target.open("wb") as out:
                for chunk in upload.chunks(COPY_CHUNK):
                    out.write(chunk)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        job.delete()
        raise InvalidInput(f"the upload could not be stored ({exc.strerror or exc})", field="file") from exc
    transaction.on_commit(lambda: enqueue_job(job.pk))
    return job


def enqueue_job(job_id: int) -> None:
    """Send the job to the broker (queue `default`); if the broker is unreachable the job fails visibly."""
    from ..tasks import run_import

    try:
        run_import.apply_async(args=[job_id], queue="default", retry=False)
    except Exception as exc:  # noqa: BLE001 - any broker error must end up on the job
        log.exception("could not enqueue import %s", job_id)
        _finish(job_id, ImportStatus.FAILED, error=f"could not reach the task broker: {exc}; nothing was imported")


def request_cancel(job: ImportJob) -> ImportJob:
    """A queued job is cancelled at once; a running one rolls back at its next batch."""
    if job.status == ImportStatus.QUEUED:
        updated = ImportJob.objects.filter(pk=job.pk, status=ImportStatus.QUEUED).update(
            status=ImportStatus.CANCELLED, finished_at=timezone.now(), error="cancelled before it started; nothing was imported"
        )
        if updated:
            shutil.rmtree(job_dir(job.pk), ignore_errors=True)
            job.refresh_from_db()
            return job
        job.refresh_from_db()
    if job.status == ImportStatus.RUNNING:
        folder = job_dir(job.pk)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cancel").touch()
    return job


def cancel_requested(job_id: int) -> bool:
    return (job_dir(job_id) / "cancel").exists()


def read_progress(job: ImportJob) -> dict:
    """{"bytes_done", "bytes_total", "fraction", "eta_seconds", "heartbeat_age_seconds", "cancelling"}
    for a job page or the API."""
    done, beat = 0, None
    if job.status == ImportStatus.RUNNING:
        try:
            data = json.loads((job_dir(job.pk) / "progress.json").read_text())
            done, beat = int(data.get("bytes_done", 0)), float(data.get("at"))
        except (OSError, ValueError, TypeError):
            pass
    elif job.status == ImportStatus.SUCCEEDED:
        done = job.size_bytes
    total = max(job.size_bytes, 1)
    done = min(done, job.size_bytes)
    eta = None
    if job.status == ImportStatus.RUNNING and job.started_at and done > 0:
        elapsed = (timezone.now() - job.started_at).total_seconds()
        if elapsed >= 1:
            eta = round((job.size_bytes - done) * elapsed / done, 1)
    return {
        "bytes_done": done,
        "bytes_total": job.size_bytes,
        "fraction": round(done / total, 4),
        "eta_seconds": eta,
        "heartbeat_age_seconds": round(time.time() - beat, 1) if beat else None,
        "cancelling": job.status == ImportStatus.RUNNING and cancel_requested(job.pk),
    }


class _Heartbeat:
    """Writes progress.json (atomically): after a batch, at most every PROGRESS_SECONDS, and
    every HEARTBEAT_SECONDS from a thread, so a long batch or the final commit still beats."""

    def __init__(self, folder: Path):
        self.folder, self.bytes_done, self.written_at = folder, 0, 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="import-heartbeat")

    def write(self) -> None:
        with self._lock:
            tmp = self.folder / "progress.json.tmp"
            try:
                tmp.write_text(json.dumps({"bytes_done": self.bytes_done, "at": time.time()}))
                os.replace(tmp, self.folder / "progress.json")
            except OSError:
                log.warning("could not write the progress of %s", self.folder, exc_info=True)
            self.written_at = time.monotonic()

    def update(self, bytes_done: int) -> None:
        self.bytes_done = bytes_done
        if time.monotonic() - self.written_at >= PROGRESS_SECONDS:
            self.write()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self.write()

    def __enter__(self):
        self.write()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _claim(job_id: int) -> ImportJob | None:
    """queued (or running, when its worker died and the message came back) -> running."""
    with transaction.atomic():
        job = ImportJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.finished:
            return None
        if cancel_requested(job.pk):
            job.status, job.finished_at, job.error = ImportStatus.CANCELLED, timezone.now(), "cancelled before it started; nothing was imported"
            job.save(update_fields=["status", "finished_at", "error"])
            return None
        if job.attempts >= MAX_ATTEMPTS:
            job.status, job.finished_at = ImportStatus.FAILED, timezone.now()
            job.error = f"the worker stopped during each of {job.attempts} attempts (killed, or out of memory); nothing was imported"
            job.save(update_fields=["status", "finished_at", "error"])
            return None
        job.status, job.started_at, job.attempts = ImportStatus.RUNNING, timezone.now(), job.attempts + 1
        job.save(update_fields=["status", "started_at", "attempts"])
    return job


def fail_job(job_id: int, error: str) -> None:
    _finish(job_id, ImportStatus.FAILED, error=error)


def _finish(job_id: int, status: str, *, report: dict | None = None, error: str = "") -> None:
    ImportJob.objects.filter(pk=job_id).update(status=status, report=report or {}, error=error, finished_at=timezone.now())
    shutil.rmtree(job_dir(job_id), ignore_errors=True)


def execute_job(job_id: int) -> str | None:
    """Run one import job (what the Celery task does); returns its final status, or None when
    there was nothing to run (unknown, finished or already cancelled)."""
    job = _claim(job_id)
    if job is None:
        return None
    folder = job_dir(job.pk)
    path = folder / "upload"
    counts: dict = {}
    try:
        with path.open("rb") as stream, _Heartbeat(folder) as beat:
            steps = import_steps(
                project=job.project, stream=stream, fmt=job.format, source=job.file_name, with_labels=job.with_labels,
                skip_invalid=job.skip_invalid, pairs_per_prompt=job.pairs_per_prompt,
            )
            try:
                while True:
                    beat.update(next(steps))
                    if cancel_requested(job.pk):
                        steps.throw(ImportCancelled())
            except StopIteration as done:
                report = done.value
                counts = {k: v for k, v in report.as_dict().items() if isinstance(v, int)}
    except ImportCancelled:
        _finish(job.pk, ImportStatus.CANCELLED, error="cancelled while importing; nothing was imported")
        return ImportStatus.CANCELLED
    except ImportFailed as failed:
        _finish(job.pk, ImportStatus.FAILED, report=report_dict(ok=False, errors=failed.errors, total_errors=failed.total_errors),
                error=failed.message)
        return ImportStatus.FAILED
    except LabelingError as error:
        _finish(job.pk, ImportStatus.FAILED, report=report_dict(ok=False, errors=[(0, error.message)], total_errors=1), error=error.message)
        return ImportStatus.FAILED
    except FileNotFoundError:
        _finish(job.pk, ImportStatus.FAILED, error="the stored upload is gone (IMPORT_ROOT must be shared by the web servers and the workers); nothing was imported")
        return ImportStatus.FAILED
    _finish(job.pk, ImportStatus.SUCCEEDED, report=report_dict(ok=True, counts=counts, errors=report.skipped, total_errors=report.skipped_count))
    return ImportStatus.SUCCEEDED


def report_dict(*, ok: bool, counts: dict | None = None, errors: list, total_errors: int) -> dict:
    return {
        "ok": ok,
        "counts": counts or {},
        "errors": [{"line": line, "reason": reason} for line, reason in errors],
        "total_errors": total_errors,
    }


def reap_stale_imports(*, timeout_seconds: int | None = None) -> list[int]:
    """Mark failed the running imports whose heartbeat stopped (their worker died: the
    transaction died with it, nothing was imported), and drop the folders of ended jobs."""
    timeout = timeout_seconds if timeout_seconds is not None else settings.IMPORT_HEARTBEAT_TIMEOUT
    now = timezone.now()
    reaped = []
    for job in ImportJob.objects.filter(status=ImportStatus.RUNNING, started_at__lt=now - timedelta(seconds=timeout)):
        age = read_progress(job)["heartbeat_age_seconds"]
        if age is None or age > timeout:
            updated = ImportJob.objects.filter(pk=job.pk, status=ImportStatus.RUNNING).update(
                status=ImportStatus.FAILED, finished_at=now,
                error=f"no heartbeat for more than {timeout} s: the worker died or was killed; nothing was imported",
            )
            if updated:
                shutil.rmtree(job_dir(job.pk), ignore_errors=True)
                reaped.append(job.pk)
                log.warning("reaped stale import %s", job.pk)
    root = Path(settings.IMPORT_ROOT)
    folders = {int(entry.name): entry for entry in root.iterdir() if entry.is_dir() and entry.name.isdigit()} if root.is_dir() else {}
    statuses = dict(ImportJob.objects.filter(pk__in=folders).values_list("pk", "status"))  # only the jobs that have a folder
    for job_id, folder in folders.items():
        status = statuses.get(job_id)
        if status is None and time.time() - folder.stat().st_mtime < timeout:
            continue  # a job being created right now (its row not committed yet)
        if status is None or status in (ImportStatus.SUCCEEDED, ImportStatus.FAILED, ImportStatus.CANCELLED):
            shutil.rmtree(folder, ignore_errors=True)
    return reaped
