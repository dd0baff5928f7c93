#!/usr/bin/env bash
# The server's draw transaction from a C client: sysbench runs draw.lua (the
# exact statements of one `lottery.draw`, prepared, one transaction per event)
# on THREADS benchmark users for SECONDS, then prints tps and latency
# percentiles. Users are prepared first and removed afterwards (their prize
# stock given back), whatever happens, unless KEEP=1.
#
#   loadtest/sysbench/draw.sh DATABASE [THREADS [SECONDS]]   (default 8 threads, 10 s)
#
# DATABASE is the server's database (migrated, with a valid wheel) on a local
# MariaDB/MySQL. Environment: DB_HOST (127.0.0.1, loopback only), DB_PORT (3307,
# scripts/db's), DB_USER (root), DB_PASSWORD (none), KEEP=1, SYSBENCH_ARGS
# (more sysbench options, e.g. --report-interval=1).
set -euo pipefail

DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
log() { printf 'sysbench-draw: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -ge 1 ]] || die "usage: $0 DATABASE [THREADS [SECONDS]]"
DB="$1"
THREADS="${2:-8}"
SECONDS_="${3:-10}"
HOST="${DB_HOST:-127.0.0.1}"
[[ "$HOST" == localhost || "$HOST" == 127.* ]] || die "DB_HOST must be localhost or 127.x.x.x"
[[ "$THREADS" =~ ^[1-9][0-9]*$ && "$SECONDS_" =~ ^[1-9][0-9]*$ ]] \
    || die "THREADS and SECONDS must be positive integers"
command -v sysbench >/dev/null 2>&1 || die "sysbench not found (apt-get install sysbench)"

args=(--db-driver=mysql --mysql-host="$HOST" --mysql-port="${DB_PORT:-3307}"
      --mysql-user="${DB_USER:-root}" --mysql-db="$DB" --threads="$THREADS")
[[ -n "${DB_PASSWORD:-}" ]] && args+=(--mysql-password="$DB_PASSWORD")

cd "$DIR"
cleanup() {
    [[ "${KEEP:-0}" == 1 ]] && { log "KEEP=1: benchmark users left in place"; return; }
    sysbench draw.lua "${args[@]}" cleanup >/dev/null || log "warning: cleanup failed"
}
trap cleanup EXIT

sysbench draw.lua "${args[@]}" prepare >/dev/null
out="$(mktemp)"
trap 'rm -f "$out"; cleanup' EXIT
# 1213 (deadlock) and 1205 (lock wait timeout) restart the event, as the
# server's runner retries the transaction; any other error stops the run.
# shellcheck disable=SC2086
sysbench draw.lua "${args[@]}" --time="$SECONDS_" --histogram=on --percentile=99 \
    --mysql-ignore-errors=1213,1205 ${SYSBENCH_ARGS:-} run >"$out"

# The summary: sysbench's own figures, and percentiles from its histogram
# (rows "value |*** count", values in ms, ascending).
awk -v threads="$THREADS" '
    /^Latency histogram/ { hist = 1; next }
    hist && /^ *[0-9.]+ \|/ { n++; v[n] = $1; c[n] = $NF; total += $NF; next }
    hist && /^$/ && n > 0 { hist = 0 }
    /transactions:/ { tx = $2; tps = $3; gsub(/[(]/, "", tps) }
    /ignored errors:/ { errors = $3 }
    /total time:/ { t = $3 }
    /max:/ && !max { max = $2 }
    END {
        if (tx == "") { print "sysbench-draw: no summary from sysbench" > "/dev/stderr"; exit 1 }
        split("0.5 0.9 0.99 0.999", q, " ")
        for (i = 1; i <= 4; i++) {
            want = q[i] * total; seen = 0
            for (j = 1; j <= n; j++) { seen += c[j]; if (seen >= want) { p[i] = v[j]; break } }
            if (max != "" && p[i] + 0 > max + 0) p[i] = max
        }
        printf "sysbench draw: %d threads, %s draws in %s: %s tps, %s retried (deadlock/lock wait)\n",
            threads, tx, t, tps, errors
        printf "  latency ms: p50 %s, p90 %s, p99 %s, p99.9 %s, max %s\n", p[1], p[2], p[3], p[4], max
    }' "$out"
