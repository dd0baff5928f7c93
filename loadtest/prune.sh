#!/usr/bin/env bash
# One pruning pass of the real server, timed on a full table: fills ROWS
# expired rows into each of idempotency_keys and user_events (older than
# their retention: keys 48 hours, events EVENT_RETENTION_DAYS, see
# src/maintenance.rs), starts the release server on the database with a short
# MAINTENANCE_INTERVAL_S, waits for its "pruned old rows" log line (the first
# pass runs one interval after start), prints rows, ms and rows/s, and stops
# the server — whatever happens.
#
#   loadtest/prune.sh DATABASE [ROWS]        (default 1,000,000 rows per table)
#
# DATABASE is created if missing and migrated by the server itself (a first
# start with a long interval, so nothing is pruned before the rows are in);
# use a database of your own (e.g. lt_prune): APP_ENV=development seeds demo
# data into an empty one. The rows are written with INSERT … SELECT from a
# recursive CTE (0..999, squared), BATCH rows per statement, for synthetic
# users (ids from 9·10^12 + this run's start time) that no guest has; the
# pass deletes them all.
#
# Environment:
#   DB_HOST (127.0.0.1; loopback only), DB_PORT (3307, scripts/db's), DB_USER (root),
#   DB_PASSWORD (none)
#   SERVER_BIN        the server (default: $CARGO_TARGET_DIR or <repo>/target, release;
#                     built with cargo if missing)
#   PRUNE_PORT        the server's port on 127.0.0.1 (default 3290)
#   MAINTENANCE_INTERVAL_S  (default 2)   EVENT_RETENTION_DAYS (default 30)
#   BATCH             rows per INSERT (default 100000)
#   PRUNE_TIMEOUT     seconds to wait for the pass's log line (default 900)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
log() { printf 'prune: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -ge 1 && $# -le 2 ]] || die "usage: $0 DATABASE [ROWS]"
DB="$1"
ROWS="${2:-1000000}"
[[ "$DB" =~ ^[A-Za-z0-9_]+$ ]] || die "DATABASE must be letters, digits and _"
[[ "$ROWS" =~ ^[1-9][0-9]*$ ]] || die "ROWS must be a positive integer"
HOST="${DB_HOST:-127.0.0.1}"
PORT_DB="${DB_PORT:-3307}"
[[ "$HOST" == localhost || "$HOST" == 127.* ]] || die "DB_HOST must be localhost or 127.x.x.x"
PORT="${PRUNE_PORT:-3290}"
INTERVAL="${MAINTENANCE_INTERVAL_S:-2}"
RETENTION_DAYS="${EVENT_RETENTION_DAYS:-30}"
BATCH="${BATCH:-100000}"
TIMEOUT="${PRUNE_TIMEOUT:-900}"
[[ "$BATCH" =~ ^[1-9][0-9]*$ && "$INTERVAL" =~ ^[1-9][0-9]*$ && "$RETENTION_DAYS" =~ ^[1-9][0-9]*$ ]] \
    || die "BATCH, MAINTENANCE_INTERVAL_S and EVENT_RETENTION_DAYS must be positive integers"
command -v mariadb >/dev/null 2>&1 || die "mariadb client not found (apt-get install mariadb-client)"
command -v python3 >/dev/null 2>&1 || die "python3 not found (it reads the server's JSON log)"

sql() {
    local args=(--no-defaults -h"$HOST" -P"$PORT_DB" -u"${DB_USER:-root}" --batch --skip-column-names)
    [[ -n "${DB_PASSWORD:-}" ]] && args+=(-p"$DB_PASSWORD")
    mariadb "${args[@]}" "$@"
}
URL="mysql://${DB_USER:-root}${DB_PASSWORD:+:$DB_PASSWORD}@$HOST:$PORT_DB/$DB"

if [[ -z "${SERVER_BIN:-}" ]]; then
    SERVER_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/restaurant-points"
    if [[ ! -x "$SERVER_BIN" ]]; then
        log "building the release server (cargo build --release --bin restaurant-points)"
        (cd "$ROOT" && SQLX_OFFLINE="${SQLX_OFFLINE:-true}" cargo build --release --bin restaurant-points >&2)
    fi
fi
[[ -x "$SERVER_BIN" ]] || die "SERVER_BIN=$SERVER_BIN is not an executable"

WORK="$(mktemp -d)"
SERVER_PID=""
stop_server() {
    [[ -n "$SERVER_PID" ]] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}
cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# $1: maintenance interval (s); $2: log file. The server's own environment
# only: nothing from the caller's (a REDIS_URL, a DATABASE_URL) leaks in.
start_server() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        die "port $PORT is taken; set PRUNE_PORT"
    fi
    env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
        APP_ENV=development DATABASE_URL="$URL" BIND_ADDR="127.0.0.1:$PORT" \
        LOG_FORMAT=json LOG_LEVEL=info MAINTENANCE_INTERVAL_S="$1" \
        EVENT_RETENTION_DAYS="$RETENTION_DAYS" UPLOAD_DIR="$WORK/uploads" \
        "$SERVER_BIN" >"$2" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 600); do
        curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/health" 2>/dev/null && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$2" >&2; die "the server exited during start-up"; }
        sleep 0.2
    done
    tail -n 20 "$2" >&2
    die "the server did not answer /health within 120 s"
}

sql -e "CREATE DATABASE IF NOT EXISTS \`$DB\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
if [[ "$(sql -e "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '$DB' AND table_name IN ('user_events', 'idempotency_keys')")" != 2 ]]; then
    log "migrating $DB (the server, once, with pruning far off)"
    start_server 86400 "$WORK/migrate.log"
    stop_server
fi

# Synthetic users of this run only: no collision with guests or earlier runs.
BASE=$(( 9000000000000 + $(date +%s) * 1000 ))
KEY_HOURS_OLD=72
EVENT_DAYS_OLD=$(( RETENTION_DAYS + 10 ))
log "filling $ROWS expired rows into idempotency_keys (${KEY_HOURS_OLD} h old) and user_events (${EVENT_DAYS_OLD} days old), $BATCH per statement"
fill_started=$(date +%s.%N)
for (( start = 0; start < ROWS; start += BATCH )); do
    count=$(( ROWS - start < BATCH ? ROWS - start : BATCH ))
    hi=$(( (count + 999) / 1000 ))
    numbers="WITH RECURSIVE k (n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM k WHERE n < 999)
             SELECT $start + hi.n * 1000 + lo.n AS i FROM k hi JOIN k lo
             WHERE hi.n < $hi AND hi.n * 1000 + lo.n < $count"
    sql "$DB" -e "
        INSERT INTO idempotency_keys (user_id, idem_key, fingerprint, response, created_at)
        SELECT $BASE + g.i DIV 1000, CONCAT('prune-', g.i), 'prune', '', NOW(3) - INTERVAL $KEY_HOURS_OLD HOUR
        FROM ($numbers) AS g;
        INSERT INTO user_events (user_id, seq, type, frame, created_at)
        SELECT $BASE + g.i DIV 1000, g.i MOD 1000 + 1, 'points_update', '{\"type\":\"points_update\"}',
               NOW(3) - INTERVAL $EVENT_DAYS_OLD DAY
        FROM ($numbers) AS g;"
done
fill_s=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$fill_started" "$(date +%s.%N)")
read -r keys_in events_in < <(sql "$DB" -e "
    SELECT (SELECT COUNT(*) FROM idempotency_keys WHERE created_at < NOW(3) - INTERVAL 48 HOUR),
           (SELECT COUNT(*) FROM user_events WHERE created_at < NOW(3) - INTERVAL $RETENTION_DAYS DAY)")
log "filled in $fill_s s; expired now: $keys_in keys, $events_in events"

log "starting the server with MAINTENANCE_INTERVAL_S=$INTERVAL; waiting for its first pass"
start_server "$INTERVAL" "$WORK/server.log"
line=""
deadline=$(( SECONDS + TIMEOUT ))
while (( SECONDS < deadline )); do
    line="$(grep -m1 '"pruned old rows"' "$WORK/server.log" || true)"
    [[ -n "$line" ]] && break
    grep -q '"pruning failed' "$WORK/server.log" && { tail -n 5 "$WORK/server.log" >&2; die "the server says pruning failed"; }
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$WORK/server.log" >&2; die "the server exited"; }
    sleep 0.2
done
[[ -n "$line" ]] || die "no \"pruned old rows\" line within $TIMEOUT s"
stop_server
left="$(sql "$DB" -e "SELECT (SELECT COUNT(*) FROM idempotency_keys WHERE user_id >= $BASE AND user_id < $BASE + 1000000000) + (SELECT COUNT(*) FROM user_events WHERE user_id >= $BASE AND user_id < $BASE + 1000000000)")"

python3 - "$line" "$ROWS" "$fill_s" "$left" <<'EOF'
import json, sys
line, rows, fill_s, left = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
f = json.loads(line)["fields"]
keys, events, tokens, ms = f["keys"], f["events"], f.get("refresh_tokens", 0), f["ms"]
total = keys + events + tokens
print(f"prune: one pass of the server over {rows} expired rows per table (filled in {fill_s} s)")
print(f"  deleted {keys} idempotency keys, {events} user events, {tokens} refresh tokens in {ms} ms")
print(f"  {total / max(ms, 1) * 1000:,.0f} rows/s; this run's rows left: {left}")
EOF
