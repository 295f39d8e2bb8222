#!/usr/bin/env bash
# A private PostgreSQL on loopback for the store tests; prints the URL to export.
#
#   eval "$(.ci/postgres.sh)"      # stdout is only the export line; progress goes to stderr
#
# Idempotent: installs Debian's postgresql if no server binaries are found, creates a data
# directory under /tmp once (initdb), starts the server unless it runs already, and creates
# the role and database lwm_test. Needs no systemd: pg_ctl starts the server directly, as
# the postgres user when run as root. Trust authentication on 127.0.0.1 only, and fsync off:
# a throw-away test server, never a deployment.
# Settings: LWM_PG_PORT (54329), LWM_PG_DIR (/tmp/lwm-pg).
set -euo pipefail

PORT=${LWM_PG_PORT:-54329}
DIR=${LWM_PG_DIR:-/tmp/lwm-pg}
DATA=$DIR/data
NAME=lwm_test

log() { echo "postgres.sh: $*" >&2; }

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

BIN=$(bindir)
if [[ -z $BIN || ! -x $BIN/initdb ]]; then
    log "installing Debian's postgresql (apt-get)"
    SUDO=()
    [[ $(id -u) == 0 ]] || SUDO=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq >&2
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends postgresql >&2
    BIN=$(bindir)
fi
[[ -n $BIN && -x $BIN/initdb ]] || { log "no PostgreSQL server binaries found"; exit 1; }

# initdb and postgres refuse to run as root.
AS=()
if [[ $(id -u) == 0 ]]; then
    AS=(runuser -u postgres --)
    mkdir -p "$DIR"
    chown postgres:postgres "$DIR"
else
    mkdir -p "$DIR"
fi

if [[ ! -s $DATA/PG_VERSION ]]; then
    log "initdb $DATA"
    rm -rf "$DATA"
    "${AS[@]}" "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 \
        --no-locale >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; exit 1; }
fi

if "${AS[@]}" "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    log "server already running on 127.0.0.1:$PORT"
else
    log "starting the server on 127.0.0.1:$PORT"
    "${AS[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 start -o \
        "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off \
         -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >&2 \
        || { tail -n 20 "$DIR/server.log" >&2; exit 1; }
fi

psql_admin() {
    "${AS[@]}" "$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d postgres \
        -v ON_ERROR_STOP=1 -qAt "$@"
}
if [[ -z $(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$NAME'") ]]; then
    psql_admin -c "CREATE ROLE $NAME LOGIN" >&2
fi
if [[ -z $(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$NAME'") ]]; then
    psql_admin -c "CREATE DATABASE $NAME OWNER $NAME" >&2
fi

echo "export LWM_TEST_POSTGRES_URL=postgresql+psycopg://$NAME@127.0.0.1:$PORT/$NAME"
