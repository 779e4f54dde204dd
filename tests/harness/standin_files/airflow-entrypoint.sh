#!/usr/bin/env bash
# The Airflow stand-in's /entrypoint: what the official image's entrypoint does for the commands the compose file
# runs, written here (the image's own script is not copied).
# - `bash ...` and `python ...` run as given; `airflow X ...` and a bare Airflow sub-command `X ...` run `airflow X ...`.
# - Before an Airflow command, the metadata database is waited for (`airflow db check`, CONNECTION_CHECK_MAX_COUNT
#   tries, CONNECTION_CHECK_SLEEP_TIME seconds apart; 0 tries skips it).
# - _AIRFLOW_DB_MIGRATE=true migrates the database; _AIRFLOW_WWW_USER_CREATE=true creates the admin from
#   _AIRFLOW_WWW_USER_USERNAME / _AIRFLOW_WWW_USER_PASSWORD (kept when it exists).
set -euo pipefail

wait_for_database() {
  local tries="${CONNECTION_CHECK_MAX_COUNT:-20}" pause="${CONNECTION_CHECK_SLEEP_TIME:-3}" attempt=1
  [[ "$tries" -gt 0 ]] || return 0
  until airflow db check >/dev/null 2>&1; do
    if [[ "$attempt" -ge "$tries" ]]; then
      echo "entrypoint: the metadata database did not answer after $tries tries" >&2
      airflow db check >&2 || true
      exit 1
    fi
    echo "entrypoint: waiting for the metadata database ($attempt/$tries)" >&2
    attempt=$((attempt + 1))
    sleep "$pause"
  done
}

create_admin() {
  local username="${_AIRFLOW_WWW_USER_USERNAME:-admin}"
  if [[ -z "${_AIRFLOW_WWW_USER_PASSWORD:-}" ]]; then
    echo "entrypoint: _AIRFLOW_WWW_USER_CREATE is set but _AIRFLOW_WWW_USER_PASSWORD is empty" >&2
    exit 1
  fi
  if airflow users list --output plain 2>/dev/null | awk '{print $2}' | grep -qx "$username"; then
    echo "entrypoint: the admin $username exists" >&2
    return 0
  fi
  airflow users create --username "$username" --password "$_AIRFLOW_WWW_USER_PASSWORD" \
    --firstname "${_AIRFLOW_WWW_USER_FIRSTNAME:-Airflow}" --lastname "${_AIRFLOW_WWW_USER_LASTNAME:-Admin}" \
    --email "${_AIRFLOW_WWW_USER_EMAIL:-airflowadmin@example.com}" --role "${_AIRFLOW_WWW_USER_ROLE:-Admin}" >/dev/null
  echo "entrypoint: created the admin $username" >&2
}

if [[ $# -eq 0 ]]; then
  exec bash
fi
case "$1" in
  bash | python | python3)
    exec "$@"
    ;;
  airflow)
    shift
    ;;
esac
wait_for_database
if [[ "${_AIRFLOW_DB_MIGRATE:-false}" == "true" ]]; then
  airflow db migrate
fi
if [[ "${_AIRFLOW_WWW_USER_CREATE:-false}" == "true" ]]; then
  create_admin
fi
exec airflow "$@"
