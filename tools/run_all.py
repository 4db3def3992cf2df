"""`make run`: the web server, a Celery worker (queues default + training), Celery beat and
the policy server (`manage.py serve_policies`: the app's policies over the OpenAI protocol,
what the live page and the built-in endpoints talk to), together; Ctrl-C (or SIGTERM) stops
them all. The web process never imports torch: the policy server is a process of its own.

The built-in default policy is built at the same time, in the background (`manage.py
bootstrap_models`, niced; BOOTSTRAP_MODELS=0 leaves it out), so the pages answer within
seconds of the install (#20): the dashboard shows the build's progress and ETA, and runs
that start from the policy say they wait for it. It exits when done; the rest keeps running."""

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
# processes that end by themselves: their exit stops nothing
ONESHOT = {"bootstrap": [PY, "manage.py", "bootstrap_models", "--no-progress"]}


def _lower_priority() -> None:  # runs in the child: the build must not slow the pages down
    os.nice(10)


def main() -> int:
    children = {name: subprocess.Popen(command) for name, command in PROCESSES.items()}
    oneshots = {}
    if os.environ.get("BOOTSTRAP_MODELS", "1") not in ("0", "false", "no"):
        oneshots = {name: subprocess.Popen(command, preexec_fn=_lower_priority) for name, command in ONESHOT.items()}
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"web, worker, beat and the policy server running; open http://{HOST}:{PORT}/ (Ctrl-C stops all)"
          + ("; the default policy is being built in the background (see Training)" if oneshots else ""), flush=True)
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                print(f"{name} exited with {child.returncode}; stopping the others", flush=True)
                stopping = True
        for name, child in list(oneshots.items()):
            if child.poll() is not None:
                outcome = "done" if child.returncode == 0 else f"failed (exit {child.returncode}); the dashboard says what to do"
                print(f"{name}: {outcome}", flush=True)
                del oneshots[name]
        time.sleep(0.5)
    everything = list(children.values()) + list(oneshots.values())
    for child in everything:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + 15
    for child in everything:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
