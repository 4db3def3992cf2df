"""A fixed-rate OpenAI-compatible chat-completions server for the endpoint benchmarks.

It answers every request with TOKENS pieces, one every INTERVAL_MS (streamed as server-sent
events, or whole after the same time), so that what a benchmark measures on top of it is the
caller's own overhead: the same server is called directly and through the app.

    python bench/stream_server.py --port 8900 --tokens 32 --interval-ms 10
"""

from __future__ import annotations

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(tokens: int, interval: float):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            body = b'{"status": "ok"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            model = str(request.get("model", "m"))[:20]  # two models, two different replies
            pieces = [f" {model}{i}" for i in range(min(tokens, int(request.get("max_tokens") or tokens)))]
            if not request.get("stream"):
                time.sleep(interval * len(pieces))
                body = json.dumps({
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)}, "finish_reason": "length"}],
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for piece in pieces:
                    time.sleep(interval)
                    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                final = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
                self.wfile.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True

    return Handler


def serve(port: int, tokens: int, interval_ms: float) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(tokens, interval_ms / 1000))
    server.daemon_threads = True
    server.request_queue_size = 256
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--interval-ms", type=float, default=10.0)
    args = parser.parse_args()
    server = serve(args.port, args.tokens, args.interval_ms)
    print(f"stream server on http://127.0.0.1:{args.port}/v1: {args.tokens} pieces, one every {args.interval_ms} ms", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
