"""Broker folder: with the file-system broker (no REDIS_URL, `make run` without Redis), the
web server, worker and beat of tools/run_all.py write only under var/, never into the
repository root (kombu's defaults would put ./control there and consumed messages in the
system temp folder).

Run from a fresh copy of the checkout, so that the real one is never written to."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIPPED_AT_TOP = {".git", ".venv", "var", ".pytest_cache", "node_modules"}


def copy_checkout(target: Path) -> None:
    def ignore(folder, names):
        skipped = {n for n in names if n == "__pycache__" or n.endswith(".pyc")}
        if Path(folder) == ROOT:
            skipped |= SKIPPED_AT_TOP & set(names)
        return skipped

    shutil.copytree(ROOT, target, ignore=ignore, symlinks=True)


def tree(root: Path) -> set[str]:
    return {
        str(path.relative_to(root))
        for path in root.rglob("*")
        if "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text(errors='replace')[-5000:]}")


def test_worker_and_beat_write_only_under_var(tmp_path):
    checkout = tmp_path / "checkout"
    copy_checkout(checkout)
    before = tree(checkout)
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "VAR_DIR", "STATIC_ROOT", "ARTIFACT_ROOT", "PYTHONPATH")}
    env.update({"PYTHONDONTWRITEBYTECODE": "1", "HOST": "127.0.0.1", "PORT": str(free_port()), "OMP_NUM_THREADS": "1",
                "BOOTSTRAP_MODELS": "0"})  # the background build has its own test (test_bootstrap.py)

    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=checkout, env=env,
                             capture_output=True, text=True, timeout=180)
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]

    log_path = tmp_path / "run_all.log"
    with log_path.open("wb") as log:
        everything = subprocess.Popen([sys.executable, "tools/run_all.py"], cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b" ready." in log_path.read_bytes() and b"beat: Starting" in log_path.read_bytes(), 90,
                 "the worker and beat to start", log_path)
        # one message through the queue: written to var/broker/queue, consumed by the worker
        sent = subprocess.run([sys.executable, "-m", "celery", "-A", "feedback_site", "call", "training.tasks.reap_stale_runs"],
                              cwd=checkout, env=env, capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_for(lambda: re.search(rb"reap_stale_runs\[[-0-9a-f]+\] succeeded", log_path.read_bytes()), 60,
                 "the worker to run the task", log_path)
        assert everything.poll() is None, log_path.read_text(errors="replace")[-3000:]
    finally:
        if everything.poll() is None:
            everything.send_signal(signal.SIGTERM)
            try:
                everything.wait(timeout=30)
            except subprocess.TimeoutExpired:
                everything.kill()

    new = sorted(tree(checkout) - before)
    outside = [path for path in new if path != "var" and not path.startswith("var/")]
    assert not outside, f"written outside var/: {outside}"
    broker = checkout / "var" / "broker"
    assert any((broker / "control").glob("*.exchange")), sorted(tree(broker))
    assert any((broker / "processed").glob("*.msg")), "the consumed message did not stay under var/broker/processed"
    assert not any((broker / "queue").glob("*.msg"))
