"""Load benchmark: N simulated annotators over HTTP against a running server.

Each annotator loops: POST next-task, then POST submit (with an idempotency key), until
the time or request budget is spent or its queue is empty. Prints annotations per
second, p50/p95/p99 latency of next-task and of submit, errors, and checks that the
number of judgements stored equals the number of successful submits.

With --pages each annotator is a browser instead: it signs in through the login form
(session and CSRF cookies) and loops GET the comparison page, POST its form (choice,
strength, idempotency key), as the pages do without the API; label_ms and
submit_ms are then the page timings. The page flow works on every version of the app
that has the comparison form, so the same script measures before and after a change.

Set-up (project, tasks, accounts, tokens) and the final count use the ORM on the same
DATABASE_URL as the server; all timed traffic is HTTP.

    DATABASE_URL=postgres://... python bench/labeling_load.py --url http://127.0.0.1:8001 \
        --annotators 16 --seconds 20 [--pages]
"""

from __future__ import annotations

import argparse
import http.client
import re
from http.cookies import SimpleCookie
from urllib.parse import urlencode
import json
import os
import random
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, os.environ.get("BENCH_APP") or str(Path(__file__).resolve().parent.parent))  # the app under test
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedback_site.settings")


def setup(project_name: str, tasks: int, annotators: int, overlap_k: int) -> tuple[int, list[tuple[str, str, str]]]:
    import django

    django.setup()
    from rest_framework.authtoken.models import Token

    from labeling.importing.services import import_stream
    from labeling.models import Project
    from labeling.services import create_annotator
    import io

    Project.objects.filter(name=project_name).delete()
    project = Project.objects.create(name=project_name, overlap_k=overlap_k, gold_rate=0.0)
    lines = "".join(
        json.dumps({"prompt": f"bench prompt {i}: explain topic {i}", "responses": [f"answer A {i} " * 20, f"answer B {i} " * 20]}) + "\n"
        for i in range(tasks)
    )
    import_stream(project=project, stream=io.BytesIO(lines.encode()), fmt="jsonl", source="bench")
    accounts = []
    for i in range(annotators):
        password = uuid.uuid4().hex
        user = create_annotator(username=f"bench-{i}", password=password)
        accounts.append((Token.objects.get(user=user).key, user.username, password))
    return project.pk, accounts


def stored_judgements(project_id: int) -> int:
    from labeling.models import Judgement

    return Judgement.objects.filter(task__project_id=project_id).count()


class Annotator(threading.Thread):
    def __init__(self, base_url: str, token: str, project_id: int, deadline: float, max_requests: int, seed: int):
        super().__init__(daemon=True)
        self.url = urlsplit(base_url)
        self.headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
        self.project_id, self.deadline, self.max_requests = project_id, deadline, max_requests
        self.rng = random.Random(seed)
        self.next_ms: list[float] = []
        self.submit_ms: list[float] = []
        self.submitted = 0
        self.errors: list[str] = []

    def call(self, path: str, body: dict | None) -> tuple[int, bytes, float]:
        connection = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=60)
        start = time.perf_counter()
        connection.request("POST", path, body=json.dumps(body or {}), headers=self.headers)
        response = connection.getresponse()
        payload = response.read()
        elapsed = (time.perf_counter() - start) * 1000
        connection.close()
        return response.status, payload, elapsed

    def run(self):
        requests = 0
        while time.monotonic() < self.deadline and requests < self.max_requests:
            try:
                status, payload, ms = self.call(f"/api/v1/projects/{self.project_id}/next-task/", None)
                requests += 1
                self.next_ms.append(ms)
                if status == 204:
                    return
                if status != 200:
                    self.errors.append(f"next {status} {payload[:120]!r}")
                    continue
                assignment = json.loads(payload)["assignment_id"]
                body = {"choice": self.rng.choice(["A", "B"]), "strength": self.rng.randint(1, 4), "idempotency_key": uuid.uuid4().hex}
                status, payload, ms = self.call(f"/api/v1/assignments/{assignment}/submit/", body)
                requests += 1
                self.submit_ms.append(ms)
                if status == 201:
                    self.submitted += 1
                else:
                    self.errors.append(f"submit {status} {payload[:120]!r}")
            except OSError as error:
                self.errors.append(f"connection: {error}")


class PageAnnotator(Annotator):
    """The same loop through the HTML pages: sign in, GET the comparison page, POST its form."""

    FORM = re.compile(rb'action="(/assignments/\d+/submit/)"')
    KEY = re.compile(rb'name="idempotency_key" value="([0-9a-f]+)"')
    CSRF = re.compile(rb'name="csrfmiddlewaretoken" value="([^"]+)"')

    def __init__(self, base_url, username, password, project_id, deadline, max_requests, seed):
        super().__init__(base_url, "", project_id, deadline, max_requests, seed)
        self.username, self.password = username, password
        self.cookies: dict[str, str] = {}

    def http(self, method: str, path: str, form: dict | None = None) -> tuple[int, bytes, float]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items()), "Referer": f"{self.url.scheme}://{self.url.netloc}{path}"}
        body = None
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=60)
        start = time.perf_counter()
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        elapsed = (time.perf_counter() - start) * 1000
        for header in response.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                self.cookies[name] = morsel.value
        connection.close()
        return response.status, payload, elapsed

    def sign_in(self) -> bool:
        status, page, _ = self.http("GET", "/accounts/login/")
        csrf = self.CSRF.search(page)
        status, _, _ = self.http("POST", "/accounts/login/", {
            "csrfmiddlewaretoken": csrf.group(1).decode() if csrf else "", "username": self.username, "password": self.password,
        })
        if status != 302:
            self.errors.append(f"login {status}")
            return False
        return True

    def run(self):
        if not self.sign_in():
            return
        requests = 0
        label = f"/projects/{self.project_id}/label/"
        while time.monotonic() < self.deadline and requests < self.max_requests:
            try:
                status, page, ms = self.http("GET", label)
                requests += 1
                self.next_ms.append(ms)
                form = self.FORM.search(page)
                if status == 200 and form is None:
                    return  # the queue is empty
                if status != 200:
                    self.errors.append(f"label {status}")
                    continue
                fields = {
                    "csrfmiddlewaretoken": self.CSRF.search(page).group(1).decode(),
                    "idempotency_key": self.KEY.search(page).group(1).decode(),
                    "choice": self.rng.choice(["A", "B"]),
                    "strength": str(self.rng.randint(1, 4)),
                    "rationale": "",
                    "time_spent_ms": "1500",
                }
                status, payload, ms = self.http("POST", form.group(1).decode(), fields)
                requests += 1
                self.submit_ms.append(ms)
                if status in (200, 302):
                    self.submitted += 1
                else:
                    self.errors.append(f"submit {status} {payload[:120]!r}")
            except OSError as error:
                self.errors.append(f"connection: {error}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8001")
    parser.add_argument("--annotators", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-requests", type=int, default=5000, help="per annotator")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--overlap-k", type=int, default=3)
    parser.add_argument("--pages", action="store_true", help="drive the HTML pages (sign-in, comparison page, form post) instead of the API")
    args = parser.parse_args()

    project_id, accounts = setup(f"bench-{args.annotators}", args.tasks, args.annotators, args.overlap_k)
    deadline = time.monotonic() + args.seconds
    if args.pages:
        workers = [PageAnnotator(args.url, name, password, project_id, deadline, args.max_requests, i) for i, (_, name, password) in enumerate(accounts)]
    else:
        workers = [Annotator(args.url, token, project_id, deadline, args.max_requests, i) for i, (token, _, _) in enumerate(accounts)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=args.seconds + 120)
    wall = time.perf_counter() - started

    submitted = sum(w.submitted for w in workers)
    errors = [e for w in workers for e in w.errors]
    next_ms = [v for w in workers for v in w.next_ms]
    submit_ms = [v for w in workers for v in w.submit_ms]
    stored = stored_judgements(project_id)
    timed = "label_ms" if args.pages else "next_ms"
    result = {
        "mode": "pages" if args.pages else "api",
        "annotators": args.annotators,
        "seconds": round(wall, 2),
        "annotations": submitted,
        "annotations_per_s": round(submitted / wall, 1),
        timed: {q: round(percentile(next_ms, q), 1) for q in (50, 95, 99)},
        "submit_ms": {q: round(percentile(submit_ms, q), 1) for q in (50, 95, 99)},
        f"mean_{timed}": round(statistics.fmean(next_ms), 1) if next_ms else None,
        "errors": len(errors),
        "stored_judgements": stored,
        "stored_equals_submitted": stored == submitted,
    }
    print(json.dumps(result))
    for error in errors[:10]:
        print("error:", error, file=sys.stderr)
    return 0 if stored == submitted and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
