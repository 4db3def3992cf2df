"""Model servers for the tests.

- `start_policy_server(...)`: the real thing, `transformers serve` (the command
  `manage.py serve_policies` runs), serving tiny local checkpoints on the CPU. The batch
  runs, the live page (in chromium too) and the official `openai` client are tested
  against it.
- `FaultServer`: a small OpenAI-compatible server that misbehaves on purpose, one way per
  model name, for the failures a real server shows only by chance: down, slow, 429 with
  Retry-After, 500, a malformed or cut stream, a reply over the size limit, a wrong key,
  markup in a reply.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

RIGHT_KEY = "sk-test-right-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout: float = 120.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def start_policy_server(var_dir: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """`transformers serve` on a free loopback port, as serve_policies starts it; returns
    (process, base URL ".../v1") once its /health answers."""
    from training.management.commands.serve_policies import serve_command, serve_environment

    port = free_port()
    command = serve_command(host="127.0.0.1", port=port, device="cpu", model_timeout=3600)
    env = serve_environment(var_dir)
    env["OMP_NUM_THREADS"] = "1"  # two cores: leave one to the tests
    log = open(log_path, "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", process=process)
    except RuntimeError:
        process.kill()
        raise RuntimeError(f"transformers serve did not start: {log_path.read_text(errors='replace')[-2000:]}") from None
    return process, f"http://127.0.0.1:{port}/v1"


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


# --------------------------------------------------------------------------- the fault server

# model name -> behaviour
# ok            streams "Hello from the fault server." (or answers it whole)
# echo          the last user message, reversed word by word (tells prompts apart)
# xss           a reply made of markup: <script>, an <img onerror>, a javascript: link
# slow          waits `delay` seconds before the first byte
# stall         sends two pieces, then waits `delay` seconds
# drip          one piece every `delay` seconds, 20 pieces (a long, healthy stream)
# 429           answers 429 with Retry-After: 1 to the first `fails` requests, then as ok
# 500           always 500
# flaky500      500 to the first `fails` requests, then as ok
# cut           streams two pieces and closes without finish_reason
# malformed     streams a piece, then an event that is not JSON
# huge          streams (or answers) a reply of 200,000 characters
# auth          401 unless the key is RIGHT_KEY; the 401 echoes the key it got (as some servers do)
# gated         streams two pieces, then waits until the test sets `gate`, then the rest
REPLY = "Hello from the fault server."
GATED_REPLY = "Held at the gate, then let go."
XSS_REPLY = (
    '<script>window.__xss = 1</script> <img src=x onerror="window.__xss = 2"> '
    '[click](javascript:window.__xss=3) **bold** and the end'
)


class FaultServer:
    def __init__(self, delay: float = 3.0, fails: int = 2):
        self.delay, self.fails = delay, fails
        self.requests: list[dict] = []
        self.gate = threading.Event()
        self.in_flight: dict[str, int] = {}
        self.most_in_flight: dict[str, int] = {}  # per model: the most requests it had at once
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, model: str) -> int:
        with self._lock:
            return self._counts.get(model, 0)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self.requests.clear()
            self.most_in_flight.clear()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _json(self, status: int, body: dict, headers: dict | None = None) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

            def _stream_start(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()

            def _event(self, payload) -> None:
                data = payload if isinstance(payload, str) else json.dumps(payload)
                self.wfile.write(f"data: {data}\n\n".encode())
                self.wfile.flush()

            def _piece(self, text: str, finish: str | None = None) -> dict:
                return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]}

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": []})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self):
                model = "?"
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = json.loads(self.rfile.read(length) or b"{}")
                    model = body.get("model", "ok")
                    with server._lock:
                        server.in_flight[model] = server.in_flight.get(model, 0) + 1
                        server.most_in_flight[model] = max(server.most_in_flight.get(model, 0), server.in_flight[model])
                    self._answer(body)
                finally:
                    with server._lock:
                        server.in_flight[model] = server.in_flight.get(model, 1) - 1

            def _answer(self, body):
                model, stream = body.get("model", "ok"), bool(body.get("stream"))
                with server._lock:
                    server._counts[model] = server._counts.get(model, 0) + 1
                    seen = server._counts[model]
                    server.requests.append({"model": model, "body": body, "authorization": self.headers.get("Authorization", "")})
                if model == "auth":
                    key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    if key != RIGHT_KEY:
                        return self._json(401, {"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error"}})
                if model == "429" and seen <= server.fails:
                    return self._json(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})
                if model == "500" or (model == "flaky500" and seen <= server.fails):
                    return self._json(500, {"error": {"message": "the model crashed"}})
                if model == "slow":
                    time.sleep(server.delay)
                reply = {"xss": XSS_REPLY, "huge": "x" * 200_000, "gated": GATED_REPLY}.get(model, REPLY)
                if model == "echo":
                    last = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"][-1]
                    reply = "echo: " + " ".join(reversed(last.split()))
                if not stream:
                    return self._json(200, {
                        "object": "chat.completion", "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
                    })
                self._stream_start()
                try:
                    self._event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
                    words = reply.split(" ")
                    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
                    if model == "huge":
                        pieces = ["x" * 10_000] * 20
                    if model == "drip":
                        pieces = [f"piece{i} " for i in range(20)]
                    for i, piece in enumerate(pieces):
                        if model in ("cut", "stall", "malformed") and i == 2:
                            if model == "malformed":
                                self._event("{this is not json")
                            if model == "stall":
                                time.sleep(server.delay)
                            return
                        if model == "gated" and i == 2:
                            server.gate.wait(timeout=60)
                        self._event(self._piece(piece))
                        if model == "drip":
                            time.sleep(server.delay)
                    self._event(self._piece("", "stop"))
                    self._event("[DONE]")
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    self.close_connection = True

        return Handler
