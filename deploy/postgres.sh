#!/usr/bin/env bash
# Starts a PostgreSQL server for the test suite and the benchmark, on a bare machine:
# installs Debian's postgresql when it is missing (as root), creates the cluster
# `chatproj` (trust authentication on loopback only, port $PGPORT, default 54329)
# once, starts it, and prints the DATABASE_URL to use. Idempotent.
set -euo pipefail
PGPORT="${PGPORT:-54329}"
CLUSTER=chatproj

if ! command -v pg_ctlcluster >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "PostgreSQL is not installed: apt-get install postgresql (as root)" >&2
    exit 1
  fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
VERSION="$(ls /usr/lib/postgresql | sort -V | tail -1)"

if ! pg_lsclusters -h | awk '{print $1"/"$2}' | grep -qx "$VERSION/$CLUSTER"; then
  pg_createcluster "$VERSION" "$CLUSTER" --port "$PGPORT" >&2 -- \
    --auth-local=trust --auth-host=trust >/dev/null
fi
if ! pg_lsclusters -h | awk -v c="$CLUSTER" '$2 == c {print $4}' | grep -qx online; then
  pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
fi
PORT="$(pg_lsclusters -h | awk -v c="$CLUSTER" '$2 == c {print $3}')"
for _ in $(seq 1 60); do
  pg_isready -q -h 127.0.0.1 -p "$PORT" && break
  sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$PORT" || { echo "PostgreSQL did not start on $PORT" >&2; exit 1; }
echo "postgres://postgres@127.0.0.1:$PORT/chatproj"
