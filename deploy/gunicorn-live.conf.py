"""gunicorn for the live page's streams: `gunicorn -c deploy/gunicorn-live.conf.py feedback_site.wsgi`.

The live chat-and-compare page streams two model replies to the annotator as server-sent
events (labeling/live_views.py), for as long as the models take: seconds to minutes. On the
site's sync workers (deploy/gunicorn.conf.py) every open stream would hold a whole worker
process, and a few annotators would starve everybody else's pages. So nginx sends the stream
URL, and only it, to this second gunicorn: the same Django app with threads (gthread), one
thread per open stream, and its own timeout rules:

- `worker_class = "gthread"`: a stream waits on the model endpoints (network I/O, no CPU), so
  a thread is enough; its two endpoint calls run in two more threads (inference.client).
- one process by default (LIVE_WORKERS): the endpoints' concurrency limits (inference.limits)
  are per process, so with one process they hold for the whole site. LIVE_THREADS streams at
  once (default 64); the next waits in the listen queue. Each thread may hold a PostgreSQL
  connection: count them against max_connections.
- `timeout` is not a limit on a request for gthread workers (the worker's main loop
  heartbeats while threads stream); a stream ends when both replies are in, or fails when an
  endpoint is silent for its timeout.

Everything else (logging, proxy trust, request limits) is deploy/gunicorn.conf.py's.

Environment (all optional):
  LIVE_BIND       where to listen, default 127.0.0.1:8002 (the nginx site's @LIVE_UPSTREAM@)
  LIVE_WORKERS    processes, default 1
  LIVE_THREADS    streams at once per process, default 64
"""

import os
from pathlib import Path

exec(compile(Path(__file__).with_name("gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"))

bind = [address.strip() for address in os.environ.get("LIVE_BIND", "127.0.0.1:8002").split(",") if address.strip()]
worker_class = "gthread"
workers = int(os.environ.get("LIVE_WORKERS") or 1)
threads = int(os.environ.get("LIVE_THREADS") or 64)
# keep-alive between nginx and gunicorn stays off (nginx speaks HTTP/1.0 upstream): a stream
# ends with its connection
keepalive = 2
# never recycle a process because it served many streams (a restart would cut the open ones)
max_requests = 0
max_requests_jitter = 0
proc_name = "feedback-live"
_runtime_dir = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
_control_socket = os.environ.get("LIVE_CONTROL_SOCKET") or (os.path.join(_runtime_dir, "gunicorn.ctl") if _runtime_dir else "")
if _control_socket:
    control_socket = _control_socket
