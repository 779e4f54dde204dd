#!/usr/bin/env bash
# The PostgreSQL stand-in's entrypoint: what the official postgres image's entrypoint does for `postgres`, written
# here. On an empty PGDATA it runs initdb with POSTGRES_USER as the superuser and POSTGRES_PASSWORD as its
# password (scram-sha-256 for every host connection, trust over the local socket, as the official image does),
# creates POSTGRES_DB, then runs the server as the postgres user, listening on every address of the container.
# Any other command runs as given.
set -euo pipefail
export PATH="/usr/lib/postgresql/15/bin:$PATH"
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export PGDATA

if [[ $# -eq 0 || "$1" != "postgres" ]]; then
  exec "$@"
fi
if [[ "$(id -u)" == "0" ]]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

user="${POSTGRES_USER:-postgres}"
database="${POSTGRES_DB:-$user}"
if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  if [[ -z "${POSTGRES_PASSWORD:-}" ]]; then
    echo "postgres: POSTGRES_PASSWORD is empty: refusing to create a database without a password" >&2
    exit 1
  fi
  initdb --username="$user" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
  printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
  pg_ctl --wait --silent --options="-c listen_addresses=''" start
  if [[ "$database" != "postgres" ]]; then
    psql --no-psqlrc --quiet --username="$user" --dbname=postgres --set=ON_ERROR_STOP=1 \
      --command="CREATE DATABASE \"$database\""
  fi
  pg_ctl --wait --silent --mode=fast stop
  echo "postgres: initialised $PGDATA (superuser $user, database $database)"
fi
shift
exec postgres -c listen_addresses='*' "$@"
