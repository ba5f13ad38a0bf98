#!/usr/bin/env bash
# The project's test command (README, "Run the tests"; .ci/run calls it).
# Runs the Python suite against SQLite, and against PostgreSQL and MariaDB
# when they are reachable on loopback (it starts them if they are installed
# but stopped), then checks the shipped rulesets as a user's CI would.
set -uo pipefail
cd "$(dirname "$0")/.."

pg_url_default="postgresql+psycopg://postgres@127.0.0.1:5432/test"
my_url_default="mysql+pymysql://root@127.0.0.1:3306/test"

start_servers() {
  if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    if [ -d /etc/postgresql ]; then
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start >/dev/null 2>&1 || true
    fi
  fi
  if [ -x /usr/sbin/mariadbd ] && ! mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1; then
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd >/dev/null 2>&1 || true
  fi
  for _ in $(seq 1 30); do
    pg_ok=1; my_ok=1
    command -v pg_isready >/dev/null 2>&1 && { pg_isready -q -h 127.0.0.1 -p 5432 || pg_ok=0; }
    [ -x /usr/sbin/mariadbd ] && { mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1 || my_ok=0; }
    [ $pg_ok = 1 ] && [ $my_ok = 1 ] && break
    sleep 1
  done
}

# On a machine with the servers installed (this project's machines, CI), the
# database tests run against them; elsewhere set the URLs yourself or leave
# them unset to run on SQLite only.
if [ -z "${TAGDSL_TEST_POSTGRES_URL+x}" ] && command -v pg_isready >/dev/null 2>&1; then
  start_servers
  export TAGDSL_TEST_POSTGRES_URL="$pg_url_default"
fi
if [ -z "${TAGDSL_TEST_MYSQL_URL+x}" ] && [ -x /usr/sbin/mariadbd ]; then
  start_servers
  export TAGDSL_TEST_MYSQL_URL="$my_url_default"
fi
echo "PostgreSQL: ${TAGDSL_TEST_POSTGRES_URL:-(not set: skipped)}"
echo "MariaDB:    ${TAGDSL_TEST_MYSQL_URL:-(not set: skipped)}"

status=0
python -m pytest -q "$@" || status=$?

# The shipped rulesets, checked the way a user's CI checks theirs.
if [ $# -eq 0 ]; then
  for step in "tagdsl lint --strict rulesets" "tagdsl fmt --check rulesets" "tagdsl test rulesets"; do
    echo "+ $step"
    $step || status=1
  done
fi
exit $status
