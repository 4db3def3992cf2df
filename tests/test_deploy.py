"""The production setup in deploy/: nginx in front of gunicorn's sync workers.

The nginx site (deploy/nginx/feedback.conf) is rendered with free ports, a throwaway TLS
certificate and a freshly collected STATIC_ROOT, and started (`nginx -p PREFIX -c CONF`,
not daemonized) in front of gunicorn run with deploy/gunicorn.conf.py and DEBUG=0. While
slowloris clients hang on nginx, a normal request still takes well under a second; the
same clients sent straight to gunicorn hold both of its workers and nothing is answered.
"""

import configparser
import grp
import gzip
import http.client
import os
import pwd
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings

from .conftest import find_binary

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
LOGIN = "/accounts/login/"
WORKERS = 2
SLOWLORIS_CLIENTS = 8
SLOW_BODY_CLIENTS = 4
FAST_ENOUGH_S = 1.0
# What nginx adds; sent by hand when a request goes straight to gunicorn (else DEBUG=0's
# SECURE_SSL_REDIRECT answers 301).
AS_IF_PROXIED = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "127.0.0.1"}


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode} before listening on {port}:\n{tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing listens on 127.0.0.1:{port} after {seconds} s:\n{tail(log)}")


def stop(proc: subprocess.Popen | None, sig: int) -> None:
    """Stop a server started here (its own session), then anything it left behind."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def request(port, path, *, tls=None, method="GET", headers=None, body=None, timeout=5.0):
    """One request on a new connection: (status, lower-cased headers, body, seconds)."""
    if tls is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls)
    started = time.perf_counter()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data, time.perf_counter() - started


def warm_up(port, tls=None, headers=None, seconds=30.0, count=4 * WORKERS):
    """Wait until the app answers, then a few more requests so every worker has loaded Django."""
    deadline = time.monotonic() + seconds
    answered = 0
    while answered < count:
        try:
            status = request(port, LOGIN, tls=tls, headers=headers)[0]
            assert status == 200, f"{LOGIN} answered {status} while warming up"
            answered += 1
        except (OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def raw_exchange(port, tls, head: bytes, timeout=5.0) -> bytes:
    """Send a request head (no body) and return the first reply nginx sends."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
    try:
        sock.sendall(head)
        return sock.recv(4096)
    finally:
        sock.close()


class SlowClients:
    """Connections that begin a request and never finish it.

    `header` clients (slowloris) send a partial request header and then one more header
    line a second; `body` clients send a whole header announcing a 1 MB body and then one
    byte of it a second. The trickling runs in a thread until the block ends."""

    def __init__(self, port, tls=None, header=SLOWLORIS_CLIENTS, body=0):
        self.port, self.tls, self.counts = port, tls, (header, body)
        self.socks: list[socket.socket] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.trickle, daemon=True)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_hostname="127.0.0.1")
        self.socks.append(sock)
        return sock

    def __enter__(self):
        header, body = self.counts
        try:
            for _ in range(header):
                self.connect().sendall(f"GET {LOGIN} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\n".encode())
            for _ in range(body):
                # Origin and a CSRF cookie get the POST past Django's header checks to the
                # point where it reads the body for the token: a worker would wait on it.
                self.connect().sendall(
                    f"POST {LOGIN} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow-body\r\n"
                    f"Origin: https://127.0.0.1\r\nCookie: csrftoken={'a' * 32}\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000000\r\n\r\n".encode()
                )
        except BaseException:
            self.close()
            raise
        self.header_socks, self.body_socks = self.socks[:header], self.socks[header:]
        self.thread.start()
        return self

    def trickle(self):
        line = 0
        while not self.stopping.wait(1.0):
            line += 1
            for kind, socks, data in (("header", self.header_socks, f"X-Line-{line}: {line}\r\n".encode()),
                                      ("body", self.body_socks, b"a")):
                for i, sock in enumerate(socks):
                    try:
                        sock.sendall(data)
                    except OSError as exc:
                        self.errors.append(f"{kind} client {i}: {exc!r}")

    def hanging(self) -> list[str]:
        """Stop trickling; describe every connection the server has answered or closed."""
        self.stopping.set()
        self.thread.join(timeout=5)
        problems = list(self.errors)
        for i, sock in enumerate(self.socks):
            sock.setblocking(False)
            try:
                data = sock.recv(4096)
            except (BlockingIOError, ssl.SSLWantReadError):
                continue  # open, nothing received: still waiting for the rest of its request
            except OSError as exc:
                problems.append(f"client {i}: {exc!r}")
                continue
            problems.append(f"client {i}: " + ("closed by the server" if not data else f"answered {data[:60]!r}"))
        return problems

    def close(self):
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        for sock in self.socks:
            sock.close()

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------- fixtures


def app_environment(static_root: Path, var_dir: Path) -> dict:
    """Production settings (DEBUG=0) as the env file in deploy/ sets them, on loopback."""
    env = {k: v for k, v in os.environ.items() if k not in {"RUNTIME_DIRECTORY", "NOTIFY_SOCKET"}}
    env.update(
        DEBUG="0",
        SECRET_KEY="test-deploy-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECURE_PROXY_SSL_HEADER_ENABLED="1",
        STATIC_ROOT=str(static_root),
        VAR_DIR=str(var_dir),
        DB_CONN_MAX_AGE="0",
        LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE="feedback_site.settings",
    )
    return env


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """A STATIC_ROOT filled by `manage.py collectstatic` with the production storage."""
    base = tmp_path_factory.mktemp("deploy-static")
    static_root, var_dir = base / "static", base / "var"
    env = app_environment(static_root, var_dir)
    result = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (static_root / "staticfiles.json").exists()
    return static_root, var_dir


@pytest.fixture
def gunicorn(collected, tmp_path):
    """gunicorn with deploy/gunicorn.conf.py and DEBUG=0, two sync workers, on a free port."""
    static_root, var_dir = collected
    port = free_port()
    log, access_log = tmp_path / "gunicorn.log", tmp_path / "gunicorn-access.log"
    env = app_environment(static_root, var_dir)
    env.update(
        GUNICORN_BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY=str(WORKERS),
        GUNICORN_ACCESS_LOG=str(access_log),
        GUNICORN_CONTROL_SOCKET=str(tmp_path / "gunicorn.ctl"),
    )
    proc = None
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--config", str(DEPLOY / "gunicorn.conf.py"), "feedback_site.wsgi"],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        wait_for_port(port, proc, log)
        yield {"port": port, "access_log": access_log, "log": log, "static_root": static_root}
    finally:
        stop(proc, signal.SIGQUIT)  # quick shutdown: no in-flight request matters here


def render_site(*, http_port, https_port, upstream, static_root, cert, key, live_upstream=None) -> str:
    template = (DEPLOY / "nginx" / "feedback.conf").read_text()
    values = {
        "@SERVER_NAME@": "127.0.0.1 localhost",
        "@HTTP_LISTEN@": f"127.0.0.1:{http_port}",
        "@HTTPS_LISTEN@": f"127.0.0.1:{https_port}",
        "@SSL_CERTIFICATE@": str(cert),
        "@SSL_CERTIFICATE_KEY@": str(key),
        "@UPSTREAM@": upstream,
        "@LIVE_UPSTREAM@": live_upstream or upstream,
        "@STATIC_ROOT@": str(static_root),
    }
    for placeholder, value in values.items():
        assert placeholder in template, f"{placeholder} is gone from the nginx site"
        template = template.replace(placeholder, value)
    left = re.findall(r"@[A-Z_]+@", template)
    assert not left, f"placeholders the test does not know: {left}"
    return template


def main_config(prefix: Path, site: Path) -> str:
    """A minimal nginx.conf (Debian's, reduced) that includes the site, with every path in PREFIX."""
    user = ""
    if os.geteuid() == 0:  # else workers would run as nobody, who cannot read the temp dirs
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    mime = "include /etc/nginx/mime.types;" if Path("/etc/nginx/mime.types").exists() else (
        "types { text/html html; text/css css; application/javascript js; }"
    )
    temp = "\n".join(f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""
{user}
daemon off;
worker_processes 1;
pid {prefix / 'nginx.pid'};
error_log {prefix / 'error.log'} warn;
events {{ worker_connections 256; }}
http {{
    {mime}
    default_type application/octet-stream;
    sendfile on;
    access_log {prefix / 'access.log'};
{temp}
    include {site};
}}
"""


@pytest.fixture
def tls(tmp_path):
    """A self-signed certificate for 127.0.0.1, and a client context that trusts only it."""
    openssl = find_binary("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command line to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    context = ssl.create_default_context(cafile=str(cert))
    return cert, key, context


@pytest.fixture
def nginx(gunicorn, tls, tmp_path):
    cert, key, context = tls
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    http_port, https_port = free_port(), free_port()
    site = prefix / "feedback.conf"
    site.write_text(render_site(
        http_port=http_port, https_port=https_port, upstream=f"127.0.0.1:{gunicorn['port']}",
        static_root=gunicorn["static_root"], cert=cert, key=key,
    ))
    conf = prefix / "nginx.conf"
    conf.write_text(main_config(prefix, site))
    binary = find_binary("nginx")
    command = [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
    checked = subprocess.run([*command, "-t", "-q"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, f"nginx -t rejects the rendered site:\n{checked.stderr}\n{site.read_text()}"
    log = prefix / "nginx.out"
    proc = None
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(https_port, proc, prefix / "error.log")
        wait_for_port(http_port, proc, prefix / "error.log")
        yield {"port": https_port, "http_port": http_port, "tls": context, "error_log": prefix / "error.log"}
    finally:
        stop(proc, signal.SIGTERM)  # fast shutdown


# ----------------------------------------------------------------------------- tests


@pytest.mark.nginx
def test_nginx_answers_while_slow_clients_hang(gunicorn, nginx, record_property):
    port, context = nginx["port"], nginx["tls"]
    warm_up(port, tls=context)

    quiet = [request(port, LOGIN, tls=context)[3] for _ in range(3)]

    with SlowClients(port, tls=context, header=SLOWLORIS_CLIENTS, body=SLOW_BODY_CLIENTS) as slow:
        time.sleep(1.5)  # each has trickled once: they hang as they would for nginx's 10 s
        try:
            answers = [request(port, LOGIN, tls=context) for _ in range(3)]
        except TimeoutError:
            pytest.fail(f"no answer in 5 s while {SLOWLORIS_CLIENTS + SLOW_BODY_CLIENTS} slow clients hang")
        problems = slow.hanging()

    busy = [seconds for *_, seconds in answers]
    record_property("login_seconds_quiet", quiet)
    record_property("login_seconds_with_slow_clients", busy)
    print(f"\nGET {LOGIN} through nginx: {', '.join(f'{s:.4f}' for s in quiet)} s; with "
          f"{SLOWLORIS_CLIENTS} slowloris + {SLOW_BODY_CLIENTS} slow-body clients: {', '.join(f'{s:.4f}' for s in busy)} s")

    assert not problems, f"the slow clients did not hang until the end: {problems}"
    for status, headers, body, seconds in answers:
        # DEBUG=0 redirects plain HTTP to HTTPS: a 200 shows X-Forwarded-Proto reached Django.
        assert status == 200, (status, headers)
        assert "strict-transport-security" in headers
        assert b'name="csrfmiddlewaretoken"' in body
        assert seconds < FAST_ENOUGH_S, f"answered in {seconds:.2f} s while slow clients hang"

    lines = gunicorn["access_log"].read_text().splitlines()
    # nginx passed none of the unfinished requests on, and the client's address in X-Forwarded-For.
    assert not [line for line in lines if "slowloris" in line or "slow-body" in line]
    logins = [line for line in lines if f"GET {LOGIN} " in line]
    assert len(logins) >= 6 and all(line.startswith("127.0.0.1 ") for line in logins), logins[:3]


@pytest.mark.nginx
def test_nginx_serves_static_files_and_limits(gunicorn, nginx):
    port, context = nginx["port"], nginx["tls"]
    static_root = gunicorn["static_root"]
    warm_up(port, tls=context, count=1)

    status, _, page, _ = request(port, LOGIN, tls=context)
    assert status == 200
    hashed = re.search(rb'href="(/static/labeling/app\.[0-9a-f]{12}\.css)"', page)
    assert hashed, "the login page links no hashed stylesheet (ManifestStaticFilesStorage)"
    hashed = hashed.group(1).decode()
    on_disk = (static_root / hashed.removeprefix("/static/")).read_bytes()

    # A hashed name: served from STATIC_ROOT, the precompressed .gz, cached for a year.
    assert Path(f"{static_root}/{hashed.removeprefix('/static/')}.gz").exists()
    status, headers, body, _ = request(port, hashed, tls=context, headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers.get("content-encoding") == "gzip" and gzip.decompress(body) == on_disk
    assert "immutable" in headers["cache-control"] and headers["x-content-type-options"] == "nosniff"
    assert headers["content-type"].startswith("text/css")
    # The same file under its plain name: an hour.
    status, headers, body, _ = request(port, "/static/labeling/app.css", tls=context)
    assert status == 200 and body == (static_root / "labeling" / "app.css").read_bytes()
    assert headers["cache-control"] == "public, max-age=3600"
    assert request(port, "/static/labeling/no-such-file.css", tls=context)[0] == 404
    # None of them reached gunicorn.
    log = gunicorn["access_log"].read_text()
    assert f"GET {LOGIN} " in log and "/static/" not in log

    # Plain HTTP only redirects to HTTPS.
    status, headers, _, _ = request(nginx["http_port"], LOGIN)
    assert status == 301 and headers["location"].startswith("https://127.0.0.1")

    # Bodies: 16 MiB in general, refused from the Content-Length alone; imports may be larger.
    big = "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\nExpect: 100-continue\r\n\r\n"
    reply = raw_exchange(port, context, big.format(path=LOGIN, size=17 * 2**20).encode())
    assert reply.startswith(b"HTTP/1.1 413"), reply[:80]
    reply = raw_exchange(port, context, big.format(path="/api/v1/projects/1/import/", size=100 * 2**20).encode())
    assert reply.startswith(b"HTTP/1.1 100 Continue"), reply[:80]


@pytest.mark.nginx
def test_gunicorn_alone_stalls_under_slowloris(gunicorn, record_property):
    """Why nginx is there: 8 slowloris clients hold both sync workers, and nothing is answered."""
    port = gunicorn["port"]
    warm_up(port, headers=AS_IF_PROXIED)
    quiet = request(port, LOGIN, headers=AS_IF_PROXIED)[3]
    with SlowClients(port, header=SLOWLORIS_CLIENTS):
        time.sleep(0.5)
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            request(port, LOGIN, headers=AS_IF_PROXIED, timeout=2.0)
        waited = time.perf_counter() - started
    # Once they are gone gunicorn answers again.
    status, _, _, after = request(port, LOGIN, headers=AS_IF_PROXIED, timeout=10.0)
    assert status == 200
    record_property("gunicorn_alone_seconds", [quiet, waited, after])
    print(f"\nGET {LOGIN} straight to gunicorn ({WORKERS} sync workers): {quiet:.4f} s; with "
          f"{SLOWLORIS_CLIENTS} slowloris clients: no answer in {waited:.1f} s; after they left: {after:.4f} s")


def test_systemd_units_match_the_app():
    """The units start what tools/run_all.py starts, with the env file, as a dedicated user."""
    units = {}
    for name in ("feedback-web", "feedback-worker", "feedback-beat", "feedback-live", "feedback-policies"):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str
        parser.read(DEPLOY / "systemd" / f"{name}.service")
        units[name] = parser["Service"]
        service = units[name]
        assert service["EnvironmentFile"] == "/etc/feedback/feedback.env"
        assert service["Restart"] == "on-failure"
        assert service["User"] == "feedback" and service["WorkingDirectory"] == "/srv/feedback"
        assert parser["Install"]["WantedBy"] == "multi-user.target"

    assert "--config deploy/gunicorn.conf.py feedback_site.wsgi" in units["feedback-web"]["ExecStart"]
    worker = units["feedback-worker"]
    assert "-m celery -A feedback_site worker -Q ${CELERY_QUEUES}" in worker["ExecStart"]
    defaults = dict(item.split("=", 1) for item in worker["Environment"].split())
    queues = set(defaults["CELERY_QUEUES"].split(","))
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    assert {settings.CELERY_TASK_DEFAULT_QUEUE, *routed} <= queues
    assert "-m celery -A feedback_site beat" in units["feedback-beat"]["ExecStart"]
    assert "--config deploy/gunicorn-live.conf.py feedback_site.wsgi" in units["feedback-live"]["ExecStart"]
    assert units["feedback-policies"]["ExecStart"].endswith("manage.py serve_policies")
    live = {"__file__": str(DEPLOY / "gunicorn-live.conf.py")}
    exec(compile((DEPLOY / "gunicorn-live.conf.py").read_text(), "gunicorn-live.conf.py", "exec"), live)
    assert (live["worker_class"], live["bind"], live["workers"], live["threads"]) == ("gthread", ["127.0.0.1:8002"], 1, 64)
    assert live["accesslog"] == "-" and live["forwarded_allow_ips"] == "127.0.0.1,::1"  # the site's own settings, shared

    # The gunicorn config loads, and its timeouts agree with the nginx site's.
    config: dict = {}
    exec(compile((DEPLOY / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"), config)
    site = (DEPLOY / "nginx" / "feedback.conf").read_text()
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", site).group(1))
    assert config["worker_class"] == "sync" and config["timeout"] < read_timeout
    assert config["bind"] == ["127.0.0.1:8000"] and "@UPSTREAM@" in site and "@LIVE_UPSTREAM@" in site
