#!/usr/bin/env bash
# Run the whole test suite. Uses PostgreSQL at 127.0.0.1:5432 when it answers (or
# DATABASE_URL when set); otherwise SQLite, and the PostgreSQL-only tests are skipped
# and listed loudly at the end. Browser tests need Debian's chromium: installed here
# when missing and we may use apt, skipped loudly otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

if [ ! -x /usr/bin/chromium ] && [ -z "${CHROMIUM_PATH:-}" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing Debian's chromium for the browser tests..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "!!! could not install chromium: browser tests will be SKIPPED"
fi

if [ -z "${DATABASE_URL:-}" ]; then
  PG_URL=postgres://postgres@127.0.0.1:5432/test
  if $PY -c "import psycopg,sys; psycopg.connect('postgresql://postgres@127.0.0.1:5432/test', connect_timeout=3).close()" 2>/dev/null; then
    export DATABASE_URL=$PG_URL
    echo "tests run on PostgreSQL ($PG_URL)"
  else
    echo "!!! PostgreSQL is not reachable at 127.0.0.1:5432: tests run on SQLite;"
    echo "!!! the PostgreSQL-only tests are SKIPPED and listed at the end."
  fi
fi

# Connections that outlive a request would keep the test database busy at teardown.
export DB_CONN_MAX_AGE=${DB_CONN_MAX_AGE:-0}
$PY -m pytest "$@"
status=$?
if [ $status -eq 5 ]; then
  echo "pytest collected no tests" >&2
fi
exit $status
