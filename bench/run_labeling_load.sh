#!/usr/bin/env bash
# Start gunicorn on PostgreSQL (database bench_labeling), run bench/labeling_load.py for
# N = 1, 4, 16 annotators, stop the server. Everything stays on 127.0.0.1.
# MODE=pages drives the HTML pages instead of the API (bench/labeling_load.py --pages);
# APP=DIR serves another checkout (e.g. a git worktree of an older commit) with this script.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=$PWD/bench/labeling_load.py
PY=${PY:-$PWD/.venv/bin/python}
GUNICORN=${GUNICORN:-$PWD/.venv/bin/gunicorn}
cd "${APP:-.}"
export BENCH_APP=$PWD
PORT=${PORT:-8001}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
WORKERS=${WORKERS:-4}
psql -h 127.0.0.1 -U postgres -q -c "drop database if exists bench_labeling" -c "create database bench_labeling"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_labeling
export DEBUG=0 SECRET_KEY=bench-only-secret-key-not-for-production-0123456789 ALLOWED_HOSTS=127.0.0.1
export SECURE_SSL_REDIRECT=0 SECURE_COOKIES=0 LOG_LEVEL=WARNING
$PY manage.py migrate --noinput -v 0
$PY manage.py collectstatic --noinput -v 0
$GUNICORN feedback_site.wsgi --bind 127.0.0.1:$PORT --workers "$WORKERS" --log-level warning &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 30); do curl -s -o /dev/null "http://127.0.0.1:$PORT/accounts/login/" && break; sleep 0.5; done
for n in 1 4 16; do
  $PY "$BENCH" --url "http://127.0.0.1:$PORT" --annotators $n --seconds "$SECONDS_PER_RUN" ${MODE:+--$MODE}
done
