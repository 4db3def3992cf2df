"""A large import through the console, as a browser sends it (#19, part 4): the file is posted
to the import form (multipart, as the page's script does), the web request stores it and
queues a job, a Celery worker imports it, and the client polls the job's state for progress
and the ETA until the report.

The app runs as in production: gunicorn with deploy/gunicorn.conf.py (DEBUG=0, timeout
120 s), PostgreSQL, Redis, and one Celery worker process (solo pool) on the `default` queue.
Printed: the file's size, the upload's time (until the job page's URL came back), the
import's time and lines/s, the ETAs shown along the way against the real end, and the peak
resident memory of the worker and of the largest gunicorn worker (from /proc: VmHWM).

    python bench/import_job_bench.py [--lines 1000000] [--pg postgres://postgres@127.0.0.1:5432] [--redis redis://127.0.0.1:6379/3]

It creates (and drops at the start) the database --database (default bench_import_job).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from live_bench import SECRET, collect_static, free_port, setup_database, wait_for  # noqa: E402


def write_file(path: Path, lines: int) -> None:
    """About 130 bytes a line: a prompt and two replies, each from a named model."""
    with path.open("w") as f:
        for i in range(lines):
            f.write(json.dumps({
                "prompt": f"Question {i}: how do I keep basil alive?",
                "responses": [{"text": f"Water it when dry ({i}).", "model": "a"}, {"text": f"Sun, six hours ({i}).", "model": "b"}],
            }) + "\n")


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="bench_import_job")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/3")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="import-job-bench-"))
    data = work / "big.jsonl"
    write_file(data, args.lines)
    size = data.stat().st_size
    database_url = setup_database(args.pg, args.database)
    env = {**os.environ, "DATABASE_URL": database_url, "SECRET_KEY": SECRET, "DEBUG": "0", "SECURE_SSL_REDIRECT": "0",
           "SECURE_COOKIES": "0", "ALLOWED_HOSTS": "127.0.0.1", "LOG_LEVEL": "WARNING", "REDIS_URL": args.redis,
           "IMPORT_ROOT": str(work / "imports"), "DJANGO_SETTINGS_MODULE": "feedback_site.settings",
           "GUNICORN_ACCESS_LOG": "/dev/null", "STATIC_ROOT": collect_static(), "WEB_CONCURRENCY": "2"}
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "REDIS_URL", "IMPORT_ROOT")})
    import redis

    redis.Redis.from_url(args.redis).flushdb()
    port = free_port()
    web = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", "deploy/gunicorn.conf.py", "feedback_site.wsgi"], cwd=ROOT,
                           env={**env, "GUNICORN_BIND": f"127.0.0.1:{port}"})
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "feedback_site", "worker", "-Q", "default", "--pool", "solo",
                               "--without-gossip", "--without-mingle", "--loglevel", "WARNING"], cwd=ROOT, env=env)
    app = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{app}/accounts/login/", web)
        import django

        django.setup()
        from django.test import Client

        from labeling.models import ComparisonTask, ImportJob, Project
        from labeling.services import create_annotator

        project = Project.objects.create(name="import bench", overlap_k=1, gold_rate=0.0)
        admin = create_annotator(username="bench-admin", password="a-long-bench-password-0", is_admin=True)
        login = Client()
        login.force_login(admin)
        cookies = {"sessionid": login.cookies["sessionid"].value, "csrftoken": "b" * 32}
        client = httpx.Client(base_url=app, cookies=cookies, headers={"X-CSRFToken": "b" * 32, "Accept": "application/json"}, timeout=300)

        started = time.perf_counter()
        with data.open("rb") as f:
            posted = client.post(f"/manage/projects/{project.pk}/import/", data={"format": "jsonl"}, files={"file": ("big.jsonl", f, "application/x-ndjson")})
        uploaded = time.perf_counter() - started
        if posted.status_code != 202:
            raise SystemExit(f"upload: HTTP {posted.status_code}: {posted.text[:500]}")
        job_id = ImportJob.objects.latest("pk").pk
        print(f"{args.lines:,} lines, {size / 1e6:.1f} MB: uploaded and queued in {uploaded:.1f} s", flush=True)
        etas: list[tuple[float, float]] = []  # (seconds since the import started, the ETA shown then)
        import_started = None
        last_print = 0.0
        web_peak = 0.0
        while True:
            state = client.get(f"/manage/imports/{job_id}/state/").json()
            now = time.perf_counter()
            web_peak = max([web_peak] + [peak_rss_mb(pid) for pid in children(web.pid)])
            if state["status"] == "running" and import_started is None:
                import_started = now
            if state["eta_seconds"] is not None:
                etas.append((now - import_started, state["eta_seconds"]))
            if now - last_print >= 15:
                last_print = now
                print(f"  {state['status']}: {100 * state['fraction']:.0f}% read, ETA {state['eta_seconds']} s", flush=True)
            if state["finished"]:
                break
            if worker.poll() is not None:
                raise SystemExit("the worker exited")
            time.sleep(0.5)
        ended = time.perf_counter()
        job = ImportJob.objects.get(pk=job_id)
        took = ended - (import_started or started)
        tasks = ComparisonTask.objects.filter(project=project).count()
        print(f"status {job.status}: {tasks:,} tasks; import {took:.0f} s ({args.lines / took:,.0f} lines/s), "
              f"queued to done {ended - started:.0f} s")
        if job.status != "succeeded":
            print(f"  error: {job.error}")
        for fraction in (0.1, 0.25, 0.5, 0.75):
            at = [(t, eta) for t, eta in etas if t >= fraction * took]
            if at:
                t, eta = at[0]
                print(f"  ETA shown at {t:.0f} s ({100 * t / took:.0f}% of the time): {eta:.0f} s; the real rest: {took - t:.0f} s")
        print(f"peak resident memory: worker {peak_rss_mb(worker.pid):.0f} MB, largest web worker {web_peak:.0f} MB")
    finally:
        for proc in (web, worker):
            proc.terminate()
            proc.wait(timeout=60)
        for leftover in work.glob("*"):
            if leftover.is_file():
                leftover.unlink()


if __name__ == "__main__":
    main()
