"""`make run`: the web server, a Celery worker (queues default + training), Celery beat and
the policy server (`manage.py serve_policies`: the app's policies over the OpenAI protocol,
what the live page and the built-in endpoints talk to), together; Ctrl-C (or SIGTERM) stops
them all. The web process never imports torch: the policy server is a process of its own."""

import os
import signal
import subprocess
import sys
import time

HOST = os.environ.get("HOST", "127.0.0.1")
PORT = os.environ.get("PORT", "8000")
PY = sys.executable
PROCESSES = {
    "web": [PY, "manage.py", "runserver", f"{HOST}:{PORT}", "--noreload"],
    "worker": [PY, "-m", "celery", "-A", "feedback_site", "worker", "-Q", "default,training", "-c", "1", "--loglevel", "INFO"],
    "beat": [PY, "-m", "celery", "-A", "feedback_site", "beat", "--loglevel", "INFO"],
    "policies": [PY, "manage.py", "serve_policies"],
}


def main() -> int:
    children = {name: subprocess.Popen(command) for name, command in PROCESSES.items()}
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"web, worker, beat and the policy server running; open http://{HOST}:{PORT}/ (Ctrl-C stops all)", flush=True)
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                print(f"{name} exited with {child.returncode}; stopping the others", flush=True)
                stopping = True
        time.sleep(0.5)
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + 15
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
