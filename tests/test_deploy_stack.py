"""The production setup of deploy/ on the test database: the real nginx site in front of both
gunicorn configs (the site's sync workers and the live streams' threads), with PROXY_COUNT=1.

- The live page's streams: an event reaches the browser while the model is still writing
  (nothing waits for the end of the stream), and while more streams are open than the site
  has sync workers, pages are still answered.
- The sign-in throttle tells clients apart behind nginx: one client's failed sign-ins lock
  out that client, not everybody (clients on two loopback addresses, 127.0.0.2 and 127.0.0.1).
"""

import http.client
import re
import json
import secrets
import signal
import subprocess
import sys

import pytest
from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connection
from django.test import Client

from inference.models import ModelEndpoint
from labeling import live
from labeling.models import Project
from labeling.services import api_token, create_annotator

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


def request_from(address: str, stack, method: str, path: str, headers: dict | None = None, body: str | None = None):
    conn = http.client.HTTPSConnection("127.0.0.1", stack["port"], context=stack["tls"], timeout=15, source_address=(address, 0))
    conn.request(method, path, body=body, headers={"Host": "127.0.0.1", **(headers or {})})
    response = conn.getresponse()
    content = response.read()
    conn.close()
    return response, content


def test_one_clients_failed_sign_ins_lock_out_that_client_only(transactional_db, stack):
    """The attacker's reproduction from #19: five wrong tokens from one client used to lock
    every client out for 15 minutes (nginx made them all 127.0.0.1)."""
    user = create_annotator(username="victim", password="the-right-password-1")
    # hashed as production does (the tests' own hasher is a fast one the stack does not know)
    user.password = PBKDF2PasswordHasher().encode("the-right-password-1", PBKDF2PasswordHasher().salt())
    user.save(update_fields=["password"])
    token = api_token(user).key
    answers = [
        request_from("127.0.0.2", stack, "GET", "/api/v1/me/stats/", {"Authorization": f"Token {secrets.token_hex(20)}"})[0].status
        for _ in range(5)
    ]
    assert answers[:4] == [401] * 4 and answers[4] in (401, 429), answers  # the fifth failure locks
    response, _ = request_from("127.0.0.2", stack, "GET", "/api/v1/me/stats/", {"Authorization": f"Token {token}"})
    assert response.status == 429  # the attacker's address is locked, even with a valid token
    # everybody else is not: a valid token and a correct password from another address
    response, _ = request_from("127.0.0.1", stack, "GET", "/api/v1/me/stats/", {"Authorization": f"Token {token}"})
    assert response.status == 200
    page, content = request_from("127.0.0.1", stack, "GET", "/accounts/login/")
    cookie = page.getheader("Set-Cookie").split(";")[0]
    form_token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', content).group(1).decode()
    body = f"csrfmiddlewaretoken={form_token}&username=victim&password=the-right-password-1"
    signed_in, _ = request_from("127.0.0.1", stack, "POST", "/accounts/login/", {
        "Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded", "Referer": "https://127.0.0.1/accounts/login/",
    }, body)
    assert signed_in.status == 302 and signed_in.getheader("Location") == "/"
