"""Faults, tested with real servers: a private PostgreSQL (initdb in a temporary folder, its
own port) and a private redis-server, started for these tests and restarted by them; the
shared servers are never touched.

1. PostgreSQL restarted (twice: stopped for a moment, then `pg_ctl restart -m fast`) while
   annotator threads submit judgements over HTTP to a real gunicorn process: every
   answer is 2xx or 503 with Retry-After (no 500, no dropped connection); the same web
   process serves again after each restart; a submission retried with its idempotency
   key yields exactly one judgement; nothing is half-written.
2. Redis restarted while a training run is queued, and again while one is running, under
   a real Celery worker: the run completes (a lost task message is sent again by the
   reaper, and a duplicate delivery is skipped); nothing is promoted twice.

The quick tests at the top start no server: the 503 answers themselves, and the reaper's
re-sending of queued runs (on the test database).
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from django.db import InterfaceError, OperationalError
from django.test import RequestFactory

from .conftest import find_binary

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- no server


def test_middleware_answers_503_with_retry_after_for_a_lost_database():
    from feedback_site.db_errors import DatabaseUnavailableMiddleware

    middleware = DatabaseUnavailableMiddleware(lambda request: None)
    api = middleware.process_exception(RequestFactory().post("/api/v1/x/"), OperationalError("server closed the connection"))
    assert api.status_code == 503 and int(api["Retry-After"]) > 0
    assert json.loads(api.content)["code"] == "database_unavailable"
    page = middleware.process_exception(RequestFactory().get("/label/1/"), InterfaceError("connection already closed"))
    assert page.status_code == 503 and page["Retry-After"] and page["Content-Type"].startswith("text/html")
    assert middleware.process_exception(RequestFactory().get("/"), ValueError("not ours")) is None


def test_api_exception_handler_answers_503_for_a_lost_database():
    from labeling.api.errors import exception_handler

    response = exception_handler(OperationalError("the database system is shutting down"), {"request": None})
    assert response.status_code == 503 and int(response["Retry-After"]) > 0
    assert response.data["code"] == "database_unavailable"


def test_reaper_sends_lost_queued_runs_again_once_per_interval(db, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    from labeling.models import Project
    from training import services
    from training.models import RunStatus, TrainingRun

    sent = []
    monkeypatch.setattr(services, "enqueue_run", sent.append)
    project = Project.objects.create(name="lost messages")
    lost = services.start_run(project=project, kind="generate", enqueue=False)
    fresh = services.start_run(project=project, kind="sft", enqueue=False)
    running = services.start_run(project=project, kind="ppo", enqueue=False)
    stage = TrainingRun.objects.create(project=project, kind="reward", parent=running)  # runs inside its parent
    TrainingRun.objects.filter(pk=running.pk).update(status=RunStatus.RUNNING)
    now = timezone.now()
    TrainingRun.objects.exclude(pk=fresh.pk).update(created_at=now - timedelta(seconds=600))

    assert services.resend_lost_runs(now=now, after_seconds=300) == [lost.pk] and sent == [lost.pk]
    assert services.resend_lost_runs(now=now + timedelta(seconds=200), after_seconds=300) == []  # sent 200 s ago
    assert sorted(services.resend_lost_runs(now=now + timedelta(seconds=301), after_seconds=300)) == [lost.pk, fresh.pk]
    assert stage.pk not in sent and running.pk not in sent


# ----------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class PrivatePostgres:
    """initdb into a temporary folder and run it on a free port. PostgreSQL refuses to run
    as root, so under root the cluster belongs to the `postgres` account (runuser)."""

    def __init__(self):
        self.port = free_port()
        self.as_user: list[str] = []
        owner = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no `postgres` account to run PostgreSQL as")
            self.as_user = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]
        self.home = Path(tempfile.mkdtemp(prefix="faults-pg-"))
        self.data, self.sockets, self.logfile = self.home / "data", self.home / "sock", self.home / "server.log"
        self.sockets.mkdir()
        self.logfile.touch()
        if owner is not None:
            for path in (self.home, self.sockets, self.logfile):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._run(find_binary("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")

    def _run(self, *command, check=True):
        return subprocess.run([*self.as_user, *command], capture_output=True, text=True, check=check, timeout=60)

    def _pg_ctl(self, *args):
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        return self._run(find_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "30", "-o", options, *args)

    def start(self):
        self._pg_ctl("start")

    def stop(self):
        self._pg_ctl("-m", "fast", "stop")

    def restart(self):
        self._pg_ctl("-m", "fast", "restart")

    def url(self, name: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def query(self, sql: str, db: str = "faults", params=()):
        import psycopg

        with psycopg.connect(self.url(db), autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def remove(self):
        if (self.data / "postmaster.pid").exists():
            self._run(find_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.home, ignore_errors=True)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")[-4000:]


class PrivateRedis:
    """redis-server without persistence: a restart loses every queued message, the worst case."""

    def __init__(self, folder: Path):
        self.port, self.folder = free_port(), folder
        self.process: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [find_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(self.folder)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_until(self._pong, 15, "redis-server to answer PING")

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)

    def restart(self, down_seconds: float = 1.0):
        self.stop()
        time.sleep(down_seconds)
        self.start()


def base_env(database_url: str, **extra) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "CELERY_BROKER_URL")}
    env.update({"DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra})
    return env


def manage(env: dict, *args, timeout: float = 180) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"manage.py {args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def shell(env: dict, code: str) -> dict:
    """Run `code` in `manage.py shell`; it prints one line `RESULT <json>`."""
    out = manage(env, "shell", "--no-imports", "-c", textwrap.dedent(code))
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def private_postgres():
    server = PrivatePostgres()
    try:
        server.start()
        server.query("CREATE DATABASE faults", db="postgres")
        env = base_env(server.url("faults"))
        started = time.monotonic()
        manage(env, "migrate", "--noinput")
        print(f"\n[faults] private PostgreSQL on port {server.port}; migrate took {time.monotonic() - started:.1f} s")
        yield server
    finally:
        server.remove()


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


# ----------------------------------------------------------------------------- PostgreSQL


ANNOTATORS = 4
SETUP_PROJECT = """
import io, json
from labeling.importing.services import import_stream
from labeling.models import Project
from labeling.services import create_annotator
from rest_framework.authtoken.models import Token

project = Project.objects.create(name="faults: postgres restart", overlap_k=1, gold_rate=0.0)
items = [{{"prompt": f"question {{i}}", "responses": [f"first answer {{i}}", f"second answer {{i}}"]}} for i in range({tasks})]
import_stream(project=project, stream=io.BytesIO("".join(json.dumps(i) + "\\n" for i in items).encode()), fmt="jsonl", source="faults")
tokens = {{}}
for n in range({annotators}):
    user = create_annotator(username=f"fault-annotator-{{n}}", password="Tulip-Gravel-Orbit-9271")
    tokens[user.username] = Token.objects.get_or_create(user=user)[0].key
print("RESULT " + json.dumps({{"project": project.pk, "tokens": tokens}}))
"""


class WebServer:
    """gunicorn, one worker process with threads: the process that must survive."""

    def __init__(self, env: dict, log_path: Path):
        self.port = free_port()
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "feedback_site.wsgi:application", "--bind", f"127.0.0.1:{self.port}",
             "--workers", "1", "--threads", str(ANNOTATORS + 2), "--worker-class", "gthread", "--timeout", "60",
             "--graceful-timeout", "5", "--access-logfile", "-"],
            cwd=ROOT, env=env, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, 60, "gunicorn to answer")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"gunicorn exited:\n{self.log()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/api/v1/me/stats/")
            return conn.getresponse().status in (401, 403)
        except OSError:
            return False

    def worker_pids(self) -> set[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(pid) for pid in children.read_text().split()} if children.exists() else set()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Annotator(threading.Thread):
    """Leases and submits over HTTP until told to stop; a 503 is retried (after a short
    pause: this test does not wait the full Retry-After) with the same idempotency key."""

    def __init__(self, name: str, token: str, port: int, project_id: int, stop: threading.Event, log: list):
        super().__init__(name=name, daemon=True)
        self.token, self.port, self.project_id, self.stop, self.log = token, port, project_id, stop, log
        self.accepted: list[dict] = []
        self.conn = None

    def call(self, path: str, body: dict | None = None) -> tuple[int, dict, dict | None]:
        """POST; returns (status, headers, json). A dropped connection is recorded as status 0."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = json.dumps(body).encode() if body is not None else b""
        headers = {"Authorization": f"Token {self.token}", "Content-Type": "application/json"}
        try:
            self.conn.request("POST", path, body=data, headers=headers)
            response = self.conn.getresponse()
            raw = response.read()
            status, response_headers = response.status, {k.lower(): v for k, v in response.getheaders()}
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            self.conn = None
            self.log.append({"at": time.monotonic(), "who": self.name, "path": path, "status": 0, "error": repr(exc)})
            return 0, {}, None
        entry = {"at": time.monotonic(), "who": self.name, "path": path, "status": status, "retry_after": response_headers.get("retry-after")}
        if status >= 500 and status != 503 or status == 503 and not response_headers.get("retry-after"):
            entry["body"] = raw[:500].decode(errors="replace")
        self.log.append(entry)
        try:
            return status, response_headers, json.loads(raw) if raw else None
        except ValueError:
            return status, response_headers, None

    def run(self):
        while not self.stop.is_set():
            status, _, task = self.call(f"/api/v1/projects/{self.project_id}/next-task/")
            if status in (0, 503):
                time.sleep(0.1)
                continue
            if status != 200:
                return  # 204: queue empty; anything else is in the log and fails the test
            key = f"{self.name}-{task['assignment_id']}"
            body = {"choice": "A", "strength": 2, "idempotency_key": key}
            attempts = 0
            while True:
                attempts += 1
                status, _, stored = self.call(f"/api/v1/assignments/{task['assignment_id']}/submit/", body)
                if status not in (0, 503) or attempts > 300:
                    break
                time.sleep(0.1)
            if status not in (200, 201):
                return
            self.accepted.append({"key": key, "assignment": task["assignment_id"], "judgement": stored["id"], "attempts": attempts})


@pytest.mark.faults
def test_postgres_restart_while_annotators_submit(private_postgres, tmp_path):
    pg = private_postgres
    env = base_env(pg.url("faults"), DEBUG="0", SECRET_KEY="faults-test-secret-key-" + "x" * 40, ALLOWED_HOSTS="127.0.0.1",
                   SECURE_SSL_REDIRECT="0", SECURE_COOKIES="0", LOG_LEVEL="WARNING")
    setup = shell(env, SETUP_PROJECT.format(tasks=800, annotators=ANNOTATORS))
    web = WebServer(env, tmp_path / "gunicorn.log")
    try:
        workers_before = web.worker_pids()
        assert len(workers_before) == 1
        stop, log = threading.Event(), []
        annotators = [Annotator(name, token, web.port, setup["project"], stop, log) for name, token in setup["tokens"].items()]
        for annotator in annotators:
            annotator.start()

        def accepted() -> int:
            return sum(len(a.accepted) for a in annotators)

        def no_bad_answer():
            bad = [e for e in list(log) if e["status"] not in (200, 201, 204, 503)]
            assert not bad, f"answers other than 2xx / 503: {bad[:5]}\n{web.log()}"

        def all_served_since(moment: float) -> float | None:
            """When every annotator had a 2xx again after `moment` (None: not yet)."""
            no_bad_answer()
            firsts = []
            for annotator in annotators:
                times = [e["at"] for e in list(log) if e["who"] == annotator.name and 200 <= e["status"] < 300 and e["at"] > moment]
                if not times:
                    return None
                firsts.append(min(times))
            return max(firsts)

        wait_until(lambda: accepted() >= 3 * ANNOTATORS, 60, "the first submissions")

        # 1. stopped for a moment (connections refused), then started again
        down_at = time.monotonic()
        pg.stop()
        time.sleep(1.5)
        pg.start()
        up_at = time.monotonic()
        recovered_1 = wait_until(lambda: all_served_since(up_at), 30, "every annotator to be served after the first restart")
        # 2. pg_ctl restart -m fast: open connections are terminated mid-use
        restart_at = time.monotonic()
        pg.restart()
        restarted_at = time.monotonic()
        recovered_2 = wait_until(lambda: all_served_since(restarted_at), 30, "every annotator to be served after the second restart")
        after = accepted()
        wait_until(lambda: no_bad_answer() or accepted() >= after + 2 * ANNOTATORS, 30, "more submissions after the restarts")
        stop.set()
        for annotator in annotators:
            annotator.join(timeout=60)
            assert not annotator.is_alive()

        statuses = [e["status"] for e in log]
        unavailable = [e for e in log if e["status"] == 503]
        summary = {
            "requests": len(log),
            "accepted": accepted(),
            "503": len(unavailable),
            "503_around_stop_start": sum(down_at <= e["at"] < restart_at for e in unavailable),
            "503_after_fast_restart": sum(e["at"] >= restart_at for e in unavailable),
            "submissions_retried_after_503": sum(a["attempts"] > 1 for an in annotators for a in an.accepted),
            "down_s": round(up_at - down_at, 2),
            "recovery_after_start_s": round(recovered_1 - up_at, 2),
            "recovery_after_fast_restart_s": round(recovered_2 - restarted_at, 2),
        }
        print(f"\n[faults] postgres restart: {json.dumps(summary)}")

        # no 500, no dropped connection, every 503 says when to retry
        no_bad_answer()
        assert all(e["retry_after"] and int(e["retry_after"]) > 0 for e in unavailable), unavailable[:3]
        assert unavailable, "the restarts produced no 503 at all: the test did not catch an outage"
        assert statuses[-1] in (200, 201, 204)
        # the same web process, never restarted
        assert web.process.poll() is None and web.worker_pids() == workers_before

        # a submission retried with its key (again, now) gives back the same single judgement
        records = [record for annotator in annotators for record in annotator.accepted]
        by_name = {a.name: a for a in annotators}
        for record in records[:: max(1, len(records) // 40)] + [r for r in records if r["attempts"] > 1]:
            annotator = by_name[record["key"].rsplit("-", 1)[0]]
            status, _, again = annotator.call(f"/api/v1/assignments/{record['assignment']}/submit/",
                                              {"choice": "A", "strength": 2, "idempotency_key": record["key"]})
            assert status == 200 and again["id"] == record["judgement"], (status, again, record)
    finally:
        web.stop()

    # nothing half-written: one judgement per accepted submission, each with its assignment
    # closed and its task counted
    rows = pg.query(
        "SELECT j.id, j.idempotency_key, a.state, a.completed_at IS NOT NULL FROM labeling_judgement j "
        "JOIN labeling_comparisontask t ON t.id = j.task_id LEFT JOIN labeling_assignment a ON a.id = j.assignment_id "
        "WHERE t.project_id = %s",
        params=(setup["project"],),
    )
    assert sorted((r[0], r[1]) for r in rows) == sorted((r["judgement"], r["key"]) for r in records)
    assert len({r["key"] for r in records}) == len(records)
    assert all(state == "submitted" and completed for _, _, state, completed in rows)
    miscounted = pg.query(
        "SELECT t.id, t.judgement_count, t.status, count(j.id) FROM labeling_comparisontask t "
        "LEFT JOIN labeling_judgement j ON j.task_id = t.id WHERE t.project_id = %s GROUP BY t.id "
        "HAVING t.judgement_count <> count(j.id) OR (count(j.id) >= 1) <> (t.status = 'complete')",
        params=(setup["project"],),
    )
    assert not miscounted, miscounted[:5]
    orphans = pg.query(
        "SELECT a.id FROM labeling_assignment a JOIN labeling_comparisontask t ON t.id = a.task_id "
        "LEFT JOIN labeling_judgement j ON j.assignment_id = a.id WHERE t.project_id = %s AND a.state = 'submitted' AND j.id IS NULL",
        params=(setup["project"],),
    )
    assert not orphans, orphans[:5]


# ----------------------------------------------------------------------------- Redis


TINY_REWARD = {"lr": 1e-3, "epochs": 3, "batch_size": 16}
SETUP_TRAINING = """
import io, json
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from labeling.importing.services import import_stream
from labeling.models import Project
from training import services
from training.ml.synthetic import preference_judgements

# the reaper every second (60 s in production); no automatic retraining cycles here
every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
PeriodicTask.objects.filter(task="training.tasks.reap_stale_runs").update(interval=every_second, enabled=True)
PeriodicTask.objects.filter(task="training.tasks.check_retraining").update(enabled=False)
rows = []
for judgement in preference_judgements(100, seed=5):
    better, worse = judgement.ranking[0][0], judgement.ranking[1][0]
    rows.append({{"prompt": judgement.messages[0]["content"], "chosen": judgement.replies[better], "rejected": judgement.replies[worse]}})
data = "".join(json.dumps(row) + "\\n" for row in rows).encode()
projects = {{}}
for name in {names!r}:
    project = Project.objects.create(name=f"faults: {{name}}", overlap_k=1, gold_rate=0)
    import_stream(project=project, stream=io.BytesIO(data), fmt="trl", source="faults", with_labels=True)
    rules = services.training_settings_for(project)
    rules.reward_config, rules.auto_retrain = {reward!r}, False
    rules.save()
    projects[name] = project.pk
print("RESULT " + json.dumps(projects))
"""
START_RUN = """
import json
from labeling.models import Project
from training import services
run = services.start_run(project=Project.objects.get(pk={project}), kind="reward", config={config!r})
print("RESULT " + json.dumps({{"run": run.pk}}))
"""


class CeleryProcess:
    """`celery worker` or `celery beat` as tools/run_all.py starts them."""

    def __init__(self, role: str, env: dict, log_path: Path, ready: bytes | None):
        command = [sys.executable, "-m", "celery", "-A", "feedback_site", role, "--loglevel", "INFO"]
        if role == "worker":
            command += ["-Q", "default,training", "-c", "1", "--hostname", f"faults-{time.time_ns()}@%h"]
        self.log_path = log_path
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_path.open("ab"), stderr=subprocess.STDOUT)
        if ready:
            wait_until(lambda: self._ready(ready), 90, f"celery {role} to start", interval=0.3)

    def _ready(self, marker: bytes) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"celery exited:\n{self.log()}")
        return marker in self.log_path.read_bytes()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:]

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.mark.faults
def test_redis_restart_while_a_run_is_queued_and_while_one_is_running(private_postgres, private_redis, tiny_policy_dir, tmp_path):
    import redis

    pg, broker = private_postgres, redis.Redis.from_url(private_redis.url)
    env = base_env(pg.url("faults"), REDIS_URL=private_redis.url, DEFAULT_POLICY_PATH=str(tiny_policy_dir), REWARD_BACKBONE="policy",
                   ARTIFACT_ROOT=str(tmp_path / "artifacts"), TRAINING_HEARTBEAT_SECONDS="1", TRAINING_QUEUED_RESEND_SECONDS="3",
                   DB_CONN_MAX_AGE="0", OMP_NUM_THREADS="2", TRAINING_DEVICE="cpu")
    projects = shell(env, SETUP_TRAINING.format(names=["first", "second"], reward=TINY_REWARD))

    def run_row(run_id: int) -> dict:
        status, progress, error = pg.query("SELECT status, progress, error FROM training_trainingrun WHERE id = %s", params=(run_id,))[0]
        return {"status": status, "progress": progress, "error": error}

    def finished(run_id: int) -> dict | None:
        row = run_row(run_id)
        return row if row["status"] in ("succeeded", "failed", "cancelled") else None

    worker = CeleryProcess("worker", env, tmp_path / "worker.log", b" ready.")
    beat = CeleryProcess("beat", env, tmp_path / "beat.log", None)
    timings = {}
    try:
        # the worker takes the first run (long enough to restart Redis under it; prefetch 1);
        # the second waits in the queue
        first = shell(env, START_RUN.format(project=projects["first"], config={"reward": {"epochs": 60}}))["run"]
        second = shell(env, START_RUN.format(project=projects["second"], config={"reward": {"epochs": 60}}))["run"]
        wait_until(lambda: run_row(first)["status"] == "running" and run_row(first)["progress"] > 0, 60, "the first run to be running")
        assert run_row(second)["status"] == "queued" and broker.llen("training") == 1

        # restart 1: the first run is running, the second queued (its message is lost: no persistence)
        started = time.monotonic()
        private_redis.restart()
        assert broker.llen("training") == 0
        assert run_row(first)["status"] == "running", run_row(first)
        done = wait_until(lambda: finished(first), 300, f"the first run to end\n{worker.log()}", interval=0.5)
        timings["first_run_end_after_restart_s"] = round(time.monotonic() - started, 1)
        assert done["status"] == "succeeded", f"{done}\n{worker.log()}"

        # the reaper sends the lost run again; restart 2 while it runs
        wait_until(lambda: run_row(second)["status"] == "running" and run_row(second)["progress"] > 0, 60, f"the second run to start\n{worker.log()}\n{beat.log()}", interval=0.3)
        timings["second_run_started_after_restart_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        private_redis.restart()
        assert run_row(second)["status"] == "running", run_row(second)
        done = wait_until(lambda: finished(second), 300, f"the second run to end\n{worker.log()}", interval=0.5)
        timings["second_run_end_after_restart_s"] = round(time.monotonic() - started, 1)
        assert done["status"] == "succeeded", f"{done}\n{worker.log()}"

        # a duplicate delivery of a finished run (a redelivered message) is skipped
        shell(env, f"""
            import json
            from training.tasks import run_training
            run_training.apply_async(args=[{first}], queue="training")
            print("RESULT " + json.dumps({{}}))
        """)
        wait_until(lambda: b"is not queued" in worker.log_path.read_bytes(), 30, f"the duplicate to be skipped\n{worker.log()}")
        assert worker.process.poll() is None and beat.process.poll() is None
    finally:
        worker.stop()
        beat.stop()
    print(f"\n[faults] redis restart: {json.dumps(timings)}")

    # one version per run (a second delivery would register and promote another), promoted
    # at most once; at most one active reward model per project
    versions = pg.query(
        "SELECT produced_by_id, project_id, status, promoted_at IS NOT NULL, promotion_note FROM training_modelversion "
        "WHERE project_id IN (%s, %s)",
        params=tuple(projects.values()),
    )
    assert sorted(v[0] for v in versions) == sorted([first, second]), versions
    log_text = worker.log_path.read_text(errors="replace")
    for run_id, project, status, promoted, note in versions:
        assert (status == "active") == promoted, versions
        assert log_text.count(f"run {run_id}: reward v1 promoted") == int(promoted), versions
    promoted = sum(v[3] for v in versions)
    assert promoted >= 1, f"no run passed the promotion gate, so promotion was not exercised: {versions}"
    print(f"[faults] versions: {[(v[0], v[2]) for v in versions]}")
