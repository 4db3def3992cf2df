"""The live page's streams under the production setup of deploy/: nginx sends the stream URL
to a gunicorn of its own with threads (deploy/gunicorn-live.conf.py), unbuffered. Checked
here with the real nginx site and both gunicorn configs on the test database: an event
reaches the browser while the model is still writing (nothing waits for the end of the
stream), and while more streams are open than the site has sync workers, pages are still
answered."""

import http.client
import json
import signal
import subprocess
import sys
import threading

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

from inference.models import ModelEndpoint
from labeling import live
from labeling.models import Project
from labeling.services import create_annotator

from .test_deploy import DEPLOY, LOGIN, REPO, WORKERS, app_environment, collected, free_port, main_config, render_site, stop, tls, wait_for_port  # noqa: F401
from .conftest import find_binary

pytestmark = [pytest.mark.nginx, pytest.mark.postgres]
STREAMS = WORKERS + 2  # more open streams than the site has sync workers


def database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def gunicorn_process(config: str, env: dict, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", str(DEPLOY / config), "feedback_site.wsgi"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


@pytest.fixture
def stack(collected, tls, tmp_path):  # noqa: F811
    """nginx with the deploy site in front of gunicorn.conf.py (2 sync workers) and gunicorn-live.conf.py."""
    static_root, var_dir = collected
    cert, key, context = tls
    web_port, live_port, http_port, https_port = free_port(), free_port(), free_port(), free_port()
    env = app_environment(static_root, var_dir)
    env.update(DATABASE_URL=database_url(), WEB_CONCURRENCY=str(WORKERS), GUNICORN_BIND=f"127.0.0.1:{web_port}",
               LIVE_BIND=f"127.0.0.1:{live_port}", LIVE_THREADS="16", PROXY_COUNT="1",
               SECRET_KEY=settings.SECRET_KEY)  # the sessions this test signs in with are signed with it
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    site = prefix / "feedback.conf"
    site.write_text(render_site(http_port=http_port, https_port=https_port, upstream=f"127.0.0.1:{web_port}",
                                live_upstream=f"127.0.0.1:{live_port}", static_root=static_root, cert=cert, key=key))
    conf = prefix / "nginx.conf"
    conf.write_text(main_config(prefix, site))
    procs = []
    try:
        with open(tmp_path / "web.log", "wb") as web_log, open(tmp_path / "live.log", "wb") as live_log, open(prefix / "nginx.out", "wb") as out:
            procs.append(gunicorn_process("gunicorn.conf.py", {**env, "GUNICORN_CONTROL_SOCKET": str(tmp_path / "web.ctl")}, web_log))
            procs.append(gunicorn_process("gunicorn-live.conf.py", {**env, "LIVE_CONTROL_SOCKET": str(tmp_path / "live.ctl")}, live_log))
            binary = find_binary("nginx")
            procs.append(subprocess.Popen([binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)],
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        wait_for_port(web_port, procs[0], tmp_path / "web.log")
        wait_for_port(live_port, procs[1], tmp_path / "live.log")
        wait_for_port(https_port, procs[2], prefix / "error.log")
        yield {"port": https_port, "tls": context, "live_log": tmp_path / "live.log"}
    finally:
        for proc, sig in zip(procs, (signal.SIGQUIT, signal.SIGQUIT, signal.SIGTERM)):
            stop(proc, sig)


def signed_in_headers(user, port) -> dict:
    client = Client()
    client.force_login(user)
    token = "x" * 32
    return {
        "Cookie": f"sessionid={client.cookies['sessionid'].value}; csrftoken={token}",
        "X-CSRFToken": token, "Referer": "https://127.0.0.1/", "Host": "127.0.0.1",
    }


def open_stream(port, context, turn_id, headers) -> http.client.HTTPSConnection:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    conn.request("POST", f"/live/turns/{turn_id}/stream/", headers=headers)
    return conn


def read_events(response, until: str) -> list[tuple[str, dict]]:
    """Server-sent events as they come, up to and including the first `until` event."""
    events, block = [], []
    while True:
        line = response.fp.readline()
        if not line:
            return events
        line = line.decode().rstrip("\n")
        if line:
            block.append(line)
            continue
        fields = dict(item.split(": ", 1) for item in block if ": " in item and not item.startswith(":"))
        block = []
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
            if fields["event"] == until:
                return events


def test_streams_pass_nginx_unbuffered_and_leave_the_sync_workers_free(transactional_db, stack, fault_server):
    fault_server.gate.clear()
    port, context = stack["port"], stack["tls"]
    project = Project.objects.create(name="live behind nginx", overlap_k=1, gold_rate=0.0)
    rules = live.live_settings_for(project)
    rules.enabled, rules.turns_per_hour = True, 100
    rules.save()
    rules.endpoints.set([
        ModelEndpoint.objects.create(name="gated", base_url=fault_server.base_url, model="gated", concurrency=16),
        ModelEndpoint.objects.create(name="echo", base_url=fault_server.base_url, model="echo", concurrency=16),
    ])
    streams = []
    try:
        for i in range(STREAMS):
            user = create_annotator(username=f"streamer{i}", password=f"open-the-stream-{i}-now")
            turn = live.say(project=project, annotator=user, text=f"message {i}")
            conn = open_stream(port, context, turn.pk, signed_in_headers(user, port))
            response = conn.getresponse()
            assert response.status == 200, response.read()[:500]
            assert response.getheader("Content-Type").startswith("text/event-stream")
            # the gated model has sent two pieces and waits: they are here before the stream ends
            seen = read_events(response, until="delta")
            assert seen[0][0] == "start" and seen[-1][0] == "delta"
            streams.append((conn, response))
        # every stream is open, more than the site's sync workers: a page is still answered
        page = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        page.request("GET", LOGIN, headers={"Host": "127.0.0.1"})
        answer = page.getresponse()
        assert answer.status == 200 and b"csrfmiddlewaretoken" in answer.read()
    finally:
        fault_server.gate.set()
    for conn, response in streams:
        rest = read_events(response, until="done")
        assert rest and rest[-1][0] == "done", rest
        conn.close()
    assert sorted(set(live.LiveTurn.objects.values_list("status", flat=True))) == ["ready"]
