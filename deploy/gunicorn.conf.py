"""gunicorn settings for production: `gunicorn -c deploy/gunicorn.conf.py feedback_site.wsgi`.

gunicorn runs behind nginx (deploy/nginx/feedback.conf), which reads each request from the
client in full (headers and body) before passing it on, and reads gunicorn's response in
full before trickling it out to the client. So a worker only ever talks to nginx over
loopback, at memory speed, and the simplest worker model is the right one. Without nginx,
8 clients that send their headers slowly hold every sync worker (tests/test_deploy.py
shows both cases).

Environment (all optional):
  GUNICORN_BIND             where to listen, default 127.0.0.1:8000 (nginx's upstream)
  WEB_CONCURRENCY           worker processes, default 2 x CPUs + 1, at most 12
  GUNICORN_TIMEOUT          seconds a request may take before its worker is killed, default 120
  GUNICORN_ACCESS_LOG       access log file, default "-" (stdout, i.e. the journal)
  GUNICORN_CONTROL_SOCKET   gunicornc's socket, default $RUNTIME_DIRECTORY/gunicorn.ctl
                            (systemd sets RUNTIME_DIRECTORY, see feedback-web.service)
  LOG_LEVEL                 also Django's, default info
"""

import os


def _cpus() -> int:
    # The CPUs this process may run on (a container's or a cgroup's share), not the host's.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Loopback TCP: nginx on the same host is the only client. Never bind a public address:
# sync workers exposed to the internet are stalled by any slow client.
bind = [address.strip() for address in os.environ.get("GUNICORN_BIND", "127.0.0.1:8000").split(",") if address.strip()]

# sync: one request per process at a time. nginx absorbs slow clients, so a worker is
# busy only while Django works; the classic 2 x CPUs + 1 keeps the CPUs busy while some
# workers wait on PostgreSQL. No threads: nothing to share between requests, and a
# worker killed by the timeout takes only its own request with it. Capped because every
# worker holds a PostgreSQL connection (DB_CONN_MAX_AGE) and ~100 MB of memory; raise
# WEB_CONCURRENCY (and PostgreSQL's max_connections) on a big host when the load needs it.
worker_class = "sync"
workers = int(os.environ.get("WEB_CONCURRENCY") or min(2 * _cpus() + 1, 12))

# A sync worker does not report to the arbiter while it handles a request, so `timeout`
# is the longest request allowed: the slowest is a synchronous data import through the
# API (POST /api/v1/projects/<id>/import/, all or nothing in one transaction). Keep
# nginx's proxy_read_timeout above it, or nginx gives up (504) before gunicorn does.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))

# On SIGTERM (systemctl stop/restart) or SIGHUP (reload), in-flight requests get this
# long to finish. An import cut short rolls back and can simply be sent again (importing
# the same file twice is a no-op). TimeoutStopSec in feedback-web.service is longer.
graceful_timeout = 30

# Sync workers close the connection after each response (nginx speaks HTTP/1.0 to the
# upstream and opens a new loopback connection per request, which is cheap). The value
# only matters if someone switches to gthread; it then must stay below nginx's idle
# upstream timeout, or nginx may reuse a connection gunicorn is closing.
keepalive = 2

# Recycle each worker after ~1000 requests (jittered so they do not restart together):
# bounds slow memory growth in long-lived processes.
max_requests = 1000
max_requests_jitter = 100

# Not preloaded: a reload (SIGHUP, systemctl reload) starts fresh workers that import
# the new code; the arbiter itself never imports Django.
preload_app = False

# The heartbeat file lives in tmpfs: a heartbeat on a slow or full disk can get a
# healthy worker killed.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# nginx on loopback sets X-Forwarded-For and X-Forwarded-Proto; trust them from there only
# (gunicorn's default, spelled out). Django reads the scheme through
# SECURE_PROXY_SSL_HEADER_ENABLED=1.
forwarded_allow_ips = "127.0.0.1,::1"

# Request limits against oversized headers (gunicorn's defaults; nginx enforces its own
# first).
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190

# Access log on stdout (the journal under systemd) with the real client address from
# nginx and the time taken (%(M)s, ms). nginx keeps its own access log too.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
access_log_format = '%({x-forwarded-for}i)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms'
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
proc_name = "feedback-web"

# gunicornc's control socket: in the unit's RuntimeDirectory (/run/feedback-web), not in
# the service user's home.
_runtime_dir = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
_control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET") or (
    os.path.join(_runtime_dir, "gunicorn.ctl") if _runtime_dir else ""
)
if _control_socket:
    control_socket = _control_socket
