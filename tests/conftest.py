"""Shared fixtures, and the loud list of tests skipped for a missing service."""

import io
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
from django.db import connection

from labeling.importing.services import import_stream
from labeling.models import ComparisonTask, Project
from labeling.services import create_annotator
from training.ml.bootstrap import DefaultModelConfig, new_policy, save_new_model, train_bpe_tokenizer
from training.ml.synthetic import corpus

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


def _no_nagle_in_the_live_server() -> None:
    """The live server (Django's WSGIServer) writes a response's headers and body in separate
    sends; with Nagle's algorithm and the client's delayed ACK each response then waited ~40 ms,
    which was most of the schema fuzz's 7 minutes (#20). TCP_NODELAY sends them at once."""
    from django.core.servers.basehttp import WSGIRequestHandler

    if getattr(WSGIRequestHandler, "_no_nagle", False):
        return
    setup = WSGIRequestHandler.setup

    def setup_without_nagle(self):
        setup(self)
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    WSGIRequestHandler.setup = setup_without_nagle
    WSGIRequestHandler._no_nagle = True

    # One request per connection: on a kept-alive connection the development server can read
    # what a malformed request left behind as the next request line (an HTTP/0.9 request, and
    # an answer without a status line); seen under the schema fuzz. Production runs gunicorn.
    from django.core.servers.basehttp import ServerHandler

    cleanup_headers = ServerHandler.cleanup_headers

    def cleanup_headers_closing(self):
        cleanup_headers(self)
        self.headers["Connection"] = "close"
        self.request_handler.close_connection = True

    ServerHandler.cleanup_headers = cleanup_headers_closing


_no_nagle_in_the_live_server()
SERVICE_SKIPS: list[str] = []
# the real human preference data the training defaults are checked on (read in place, never copied)
SHARED_HH_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-harmless-1000.jsonl"


def find_binary(name: str) -> str | None:
    """A server binary on PATH or in Debian's versioned PostgreSQL folders (initdb, pg_ctl)."""
    import glob

    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def redis_reachable(url: str = TEST_REDIS_URL) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def pytest_collection_modifyitems(config, items):
    on_postgres = connection.vendor == "postgresql"
    has_browser = os.path.exists(CHROMIUM) or shutil.which("chromium")
    has_redis = redis_reachable()
    has_gpu = torch.cuda.is_available()
    has_nginx = find_binary("nginx") is not None
    fault_binaries = [name for name in ("initdb", "pg_ctl", "postgres", "redis-server") if find_binary(name) is None]
    for item in items:
        if item.get_closest_marker("gpu") and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)"))
            SERVICE_SKIPS.append(f"{item.nodeid}  [no CUDA GPU]")
        if "redis" in item.keywords and not has_redis:
            item.add_marker(pytest.mark.skip(reason=f"needs Redis at {TEST_REDIS_URL}"))
            SERVICE_SKIPS.append(f"{item.nodeid}  [no Redis]")
        if "postgres" in item.keywords and not on_postgres:
            item.add_marker(pytest.mark.skip(reason="needs PostgreSQL (DATABASE_URL); running on SQLite"))
            SERVICE_SKIPS.append(f"{item.nodeid}  [no PostgreSQL]")
        if "nginx" in item.keywords and not has_nginx:
            item.add_marker(pytest.mark.skip(reason="needs nginx (apt-get install nginx)"))
            SERVICE_SKIPS.append(f"{item.nodeid}  [no nginx]")
        if "faults" in item.keywords and fault_binaries:
            item.add_marker(pytest.mark.skip(reason=f"needs the server binaries {', '.join(fault_binaries)}"))
            SERVICE_SKIPS.append(f"{item.nodeid}  [no {', '.join(fault_binaries)}]")
        if "shared_data" in item.keywords and not SHARED_HH_FILE.exists():
            item.add_marker(pytest.mark.skip(reason=f"the shared HH-RLHF sample is missing: {SHARED_HH_FILE}"))
            SERVICE_SKIPS.append(f"{item.nodeid}  [no {SHARED_HH_FILE}]")
        if "browser" in item.keywords and not has_browser:
            item.add_marker(pytest.mark.skip(reason=f"needs chromium at {CHROMIUM}"))
            SERVICE_SKIPS.append(f"{item.nodeid}  [no chromium]")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if SERVICE_SKIPS:
        bar = "!" * 78
        terminalreporter.write_line(bar, red=True, bold=True)
        terminalreporter.write_line(
            f"{len(SERVICE_SKIPS)} TESTS SKIPPED BECAUSE A SERVICE, A DEVICE OR THE SHARED DATA IS MISSING:", red=True, bold=True
        )
        for line in SERVICE_SKIPS:
            terminalreporter.write_line(f"  SKIPPED {line}", red=True)
        terminalreporter.write_line(bar, red=True, bold=True)


def jsonl(items) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(item) + "\n" for item in items).encode())


def import_items(project, items, fmt="jsonl", **options):
    return import_stream(project=project, stream=jsonl(items), fmt=fmt, source="test", **options)


def make_items(n, replies=2, prefix="prompt"):
    return [
        {"prompt": f"{prefix} {i}: say something", "responses": [f"reply {j} to {prefix} {i}" for j in range(replies)]}
        for i in range(n)
    ]


@pytest.fixture
def project(db):
    return Project.objects.create(name="test project", overlap_k=2, gold_rate=0.0, guidelines="Be **careful**.")


@pytest.fixture
def annotator(db):
    return create_annotator(username="alice", password="wonderland-key-1")


@pytest.fixture
def other_annotator(db):
    return create_annotator(username="bob", password="builder-key-2")


@pytest.fixture
def admin_user(db):
    return create_annotator(username="admin", password="keeper-of-keys-3", is_admin=True)


@pytest.fixture
def tasks(project):
    import_items(project, make_items(5))
    return list(ComparisonTask.objects.filter(project=project).order_by("pk"))


@pytest.fixture(autouse=True)
def import_root(settings, tmp_path):
    """Each test's stored uploads in its own folder (IMPORT_ROOT)."""
    settings.IMPORT_ROOT = tmp_path / "imports"
    return settings.IMPORT_ROOT


def run_queued_imports() -> list:
    """Do what a worker does with the queued imports (labeling.tasks.run_import runs the same
    function); the statuses, oldest first."""
    from labeling.importing.jobs import execute_job
    from labeling.models import ImportJob

    return [execute_job(pk) for pk in ImportJob.objects.filter(status="queued").order_by("pk").values_list("pk", flat=True)]


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    # Tests create many accounts; the production hasher is slow on purpose.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# ----------------------------------------------------------------------------- tiny models
# Built here, saved with save_pretrained, and loaded through the same code path as a
# user's checkpoint folder.

TINY = DefaultModelConfig(vocab_size=600, n_layer=2, n_embd=64, n_head=2, n_positions=256)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_bpe_tokenizer(corpus(), TINY.vocab_size)


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory, tiny_tokenizer):
    """A random-init 2-layer GPT-2 and its BPE tokenizer, as a checkpoint folder."""
    path = tmp_path_factory.mktemp("models") / "tiny-policy"
    save_new_model(new_policy(tiny_tokenizer, TINY), tiny_tokenizer, path)
    return path


@pytest.fixture(autouse=True)
def default_policy_built(settings, tiny_policy_dir):
    """The built-in default policy exists, as after `make run`'s background build: runs that
    start from it are accepted (tests of the build itself point DEFAULT_POLICY_PATH elsewhere)."""
    settings.DEFAULT_POLICY_PATH = tiny_policy_dir


@pytest.fixture(autouse=True)
def two_threads():
    torch.set_num_threads(2)


# ----------------------------------------------------------------------------- model servers
# One `transformers serve` for the whole session (it starts in ~5 s and loads a tiny policy
# in ~1 s), serving two tiny random-init policies: two "models" for the batch runs and the
# live page. The fault server misbehaves on purpose (tests/model_servers.py).


class PolicyServer:
    def __init__(self, base_url: str, policies: list):
        self.base_url, self.policies = base_url, policies


@pytest.fixture(scope="session")
def policy_server(tmp_path_factory, tiny_tokenizer):
    from dataclasses import replace

    from tests.model_servers import start_policy_server, stop

    root = tmp_path_factory.mktemp("served")
    policies = []
    for seed in (1, 2):
        path = root / f"policy-{seed}"
        save_new_model(new_policy(tiny_tokenizer, replace(TINY, seed=seed)), tiny_tokenizer, path)
        policies.append(path)
    process, base_url = start_policy_server(root, root / "serve.log")
    try:
        yield PolicyServer(base_url, policies)
    finally:
        stop(process)


@pytest.fixture(scope="session")
def _fault_server_of_the_session():
    from tests.model_servers import FaultServer

    with FaultServer() as server:
        yield server


@pytest.fixture
def fault_server(_fault_server_of_the_session):
    """The session's fault server, as every test first finds it: tests change its delay,
    failure count and gate, and no test may see another's."""
    server = _fault_server_of_the_session
    server.delay, server.fails = 2.0, 2
    server.reset()
    server.gate.clear()
    yield server
    server.gate.set()  # a test that failed half way must not leave a stream waiting
