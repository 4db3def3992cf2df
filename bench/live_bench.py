"""The live page's overhead: time to first token and total time of a turn through the app,
against the same endpoints called directly, at 1, 8 and 32 concurrent annotators.

Setup: a fixed-rate OpenAI-compatible server (bench/stream_server.py: TOKENS pieces, one every
INTERVAL_MS) stands for both models; the app runs as in production for the stream URL
(gunicorn with deploy/gunicorn-live.conf.py, DEBUG=0) on PostgreSQL. Each simulated annotator
repeats: send a message (POST .../live/say/), stream the turn (POST /live/turns/N/stream/:
both replies as server-sent events, then the task written), start a new conversation. The
direct baseline opens the same two streams to the server itself, from the same kind of client.

- time to first token: from sending the request to the first piece of either reply;
- total: from sending it to the end of both replies (through the app: to the `done` event,
  which comes after the comparison task is written).

    python bench/live_bench.py [--concurrency 1 8 32] [--turns 10] [--tokens 32] [--interval-ms 10]

It creates (and drops at the start) the database --database (default bench_live) on the
PostgreSQL of --pg (default postgres://postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SECRET = "live-bench-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[:3]} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# --------------------------------------------------------------------------- the two sides


def stream_direct(client: httpx.Client, base_url: str, model: str, started: float, first: list, body: dict) -> None:
    with client.stream("POST", f"{base_url}/chat/completions", json={**body, "model": model}) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and '"content"' in line and not first:
                first.append(time.perf_counter() - started)


def direct_turn(client: httpx.Client, base_url: str) -> tuple[float, float]:
    body = {"messages": [{"role": "user", "content": "a benchmark message"}], "stream": True, "max_tokens": 512}
    first: list[float] = []
    started = time.perf_counter()
    other = threading.Thread(target=stream_direct, args=(client, base_url, "b", started, first, body))
    other.start()
    stream_direct(client, base_url, "a", started, first, body)
    other.join()
    return first[0], time.perf_counter() - started


def app_turn(client: httpx.Client, app: str, project_id: int) -> tuple[float, float]:
    said = client.post(f"{app}/projects/{project_id}/live/say/", data={"message": f"benchmark message {time.perf_counter_ns()}"})
    if said.status_code != 201:
        raise RuntimeError(f"say: HTTP {said.status_code}: {said.text[:300]}")
    first = None
    started = time.perf_counter()
    event = ""
    with client.stream("POST", f"{app}{said.json()['stream_url']}") as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and line == "event: delta":
                first = time.perf_counter() - started
            if line == "event: done":
                total = time.perf_counter() - started
                break
            if event == "event: error":
                client.post(f"{app}/projects/{project_id}/live/new/")
                raise RuntimeError(line)
            event = line
    closed = client.post(f"{app}/projects/{project_id}/live/new/")
    if closed.status_code != 302:
        raise RuntimeError(f"new conversation: HTTP {closed.status_code}: {closed.text[:300]}")
    return first, total


def run(concurrency: int, turns: int, one_turn, clients: list[httpx.Client]) -> tuple[list[float], list[float]]:
    firsts: list[float] = []
    totals: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def annotator(client):
        for _ in range(turns):
            try:
                first, total = one_turn(client)
            except Exception as error:  # noqa: BLE001 - counted and shown
                errors.append(repr(error))
                continue
            with lock:
                firsts.append(first)
                totals.append(total)

    threads = [threading.Thread(target=annotator, args=(clients[i],)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        print(f"  {len(errors)} errors, e.g. {errors[0]}", flush=True)
    return firsts, totals


# --------------------------------------------------------------------------- setup


def collect_static() -> str:
    """DEBUG=0 pages need the collected static files' manifest."""
    import tempfile

    root = tempfile.mkdtemp(prefix="live-bench-static-")
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, check=True,
                   env={**os.environ, "DEBUG": "0", "SECRET_KEY": SECRET, "STATIC_ROOT": root})
    return root


def setup_database(pg: str, name: str) -> str:
    import psycopg

    with psycopg.connect(f"{pg}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{pg}/{name}"
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True,
                   env={**os.environ, "DATABASE_URL": url, "SECRET_KEY": SECRET})
    return url


def setup_app_data(annotators: int, base_url: str) -> tuple[int, list[dict]]:
    """The project with its live page on two endpoints of the stream server; annotators with sessions."""
    import django

    django.setup()
    from django.test import Client

    from inference.models import ModelEndpoint
    from labeling import live
    from labeling.models import Project
    from labeling.services import create_annotator

    project = Project.objects.create(name="live bench", overlap_k=1, gold_rate=0.0)
    rules = live.live_settings_for(project)
    rules.enabled, rules.turns_per_hour, rules.max_tokens = True, 100_000, 512
    rules.save()
    rules.endpoints.set([
        ModelEndpoint.objects.create(name=f"stream {model}", base_url=base_url, model=model, concurrency=256, timeout_seconds=60)
        for model in ("a", "b")
    ])
    cookies = []
    for i in range(annotators):
        user = create_annotator(username=f"bench{i}", password=f"a-long-bench-password-{i}")
        client = Client()
        client.force_login(user)
        cookies.append({"sessionid": client.cookies["sessionid"].value, "csrftoken": "b" * 32})
    return project.pk, cookies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--turns", type=int, default=10, help="turns per annotator at each concurrency")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--interval-ms", type=float, default=10.0)
    parser.add_argument("--live-workers", type=int, default=1, help="processes of the stream server (LIVE_WORKERS)")
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="bench_live")
    args = parser.parse_args()

    database_url = setup_database(args.pg, args.database)
    env = {**os.environ, "DATABASE_URL": database_url, "SECRET_KEY": SECRET, "DEBUG": "0", "SECURE_SSL_REDIRECT": "0",
           "SECURE_COOKIES": "0", "ALLOWED_HOSTS": "127.0.0.1", "LOG_LEVEL": "WARNING", "DB_CONN_MAX_AGE": "60",
           "DJANGO_SETTINGS_MODULE": "feedback_site.settings", "GUNICORN_ACCESS_LOG": "/dev/null", "STATIC_ROOT": collect_static()}
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE")})
    stream_port, app_port = free_port(), free_port()
    procs = [subprocess.Popen([sys.executable, "bench/stream_server.py", "--port", str(stream_port), "--tokens", str(args.tokens),
                               "--interval-ms", str(args.interval_ms)], cwd=ROOT, stdout=subprocess.DEVNULL)]
    procs.append(subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", "deploy/gunicorn-live.conf.py", "feedback_site.wsgi"], cwd=ROOT,
                                  env={**env, "LIVE_BIND": f"127.0.0.1:{app_port}", "LIVE_THREADS": str(max(args.concurrency) * 2 + 8),
                                       "LIVE_WORKERS": str(args.live_workers)}))
    base_url, app = f"http://127.0.0.1:{stream_port}/v1", f"http://127.0.0.1:{app_port}"
    try:
        wait_for(f"http://127.0.0.1:{stream_port}/health", procs[0])
        wait_for(f"{app}/accounts/login/", procs[1])
        project_id, cookies = setup_app_data(max(args.concurrency), base_url)
        limits = httpx.Limits(max_connections=16)
        app_clients = [httpx.Client(cookies=c, headers={"X-CSRFToken": c["csrftoken"]}, timeout=60, limits=limits) for c in cookies]
        direct_clients = [httpx.Client(timeout=60, limits=limits) for _ in cookies]
        run(1, 2, lambda client: app_turn(client, app, project_id), app_clients)  # warm up both sides
        run(1, 2, lambda client: direct_turn(client, base_url), direct_clients)
        print(f"\nlive page overhead: {args.tokens} pieces per reply, one every {args.interval_ms:g} ms, {args.turns} turns per annotator, "
              f"{args.live_workers} stream server process(es)")
        print("annotators | first token direct / app p50 (ms) | overhead p50 | total direct / app p50 (ms) | overhead p50 | app p95 first / total")
        for n in args.concurrency:
            direct = run(n, args.turns, lambda client: direct_turn(client, base_url), direct_clients)
            through = run(n, args.turns, lambda client: app_turn(client, app, project_id), app_clients)
            d_first, a_first = statistics.median(direct[0]) * 1000, statistics.median(through[0]) * 1000
            d_total, a_total = statistics.median(direct[1]) * 1000, statistics.median(through[1]) * 1000
            print(f"{n:>10} | {d_first:8.1f} / {a_first:8.1f} | {a_first - d_first:+7.1f} | {d_total:8.1f} / {a_total:8.1f} | "
                  f"{a_total - d_total:+7.1f} | {percentile(through[0], .95) * 1000:.1f} / {percentile(through[1], .95) * 1000:.1f}", flush=True)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)


if __name__ == "__main__":
    main()
