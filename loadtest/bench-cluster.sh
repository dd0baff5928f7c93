#!/usr/bin/env bash
# The scale-out benchmark suite, end to end: a cluster of N instances behind
# nginx (scripts/cluster), and every figure printed with the command that
# produced it. Whatever happens (a failed step, Ctrl-C), everything it started
# is stopped: the load generator's processes and the cluster (scripts/cluster
# down: nginx, the instances, and Redis if the cluster started it).
#
#   loadtest/bench-cluster.sh [--small] [--skip STEPS]
#
#   (a) hold      SOCKETS_PER_INSTANCE sockets on each of the N instances at once,
#                 split over shard processes (PER_PROC sockets each, their own
#                 127.0.0.x source addresses): memory per socket per instance
#   (b) fanout    one stock_update (FANOUT_UPDATES) to all of them: delay after
#                 commit p50/p99, Redis's CPU time over the update
#   (c) floor     FLOOR_RUNS × tcp-floor --sockets FLOOR_SOCKETS, one after another:
#                 the kernel's own fan-out on this machine, for comparison
#   (e) cross     CROSS_USERS users: draws on the last instance at CROSS_RATE/s,
#                 each user's event timed on the others
#   (d) tls       the cluster shrunk to one instance (scripts/cluster up 1), then
#                 TLS_SOCKETS sockets direct to it, and the same through nginx (WSS):
#                 connect-storm time and fan-out p99, and their ratios
#   (the order is a b c e d: (d) needs the cluster at one instance)
#
#   --small       2 instances × 300 sockets and everything else scaled down: checks
#                 the whole suite in a minute or two
#   --skip a,c    leave steps out
#
# Reports go to $BENCH_OUT (default <repo>/.data/bench-<time>/): every step's
# output (NAME.log), its report as JSON (NAME.json), the commands run
# (commands.txt) and the summary (summary.txt).
#
# Environment (defaults: full scale / --small):
#   INSTANCES (6 / 2)  SOCKETS_PER_INSTANCE (17000 / 300)  PER_PROC (17000 / 300)
#   HOLD_S (unset: three heartbeats / 5)  FANOUT_UPDATES (1)
#   FLOOR_RUNS (6 / 2)  FLOOR_SOCKETS (17000 / 300)  FLOOR_UPDATES (20 / 5)
#   TLS_SOCKETS (18000 / 300)  TLS_UPDATES (20 / 5)
#   CROSS_USERS (1000 / 100)  CROSS_RATE (1000 / 100)  CROSS_DURATION (30 / 5)
#   SERVER_BIN, LT_BIN  the binaries (default: ${CARGO_TARGET_DIR:-<repo>/target}/release/…,
#                       built with cargo if missing)
#   CLUSTER_DATABASE_URL the database, created if missing (default: scripts/db's MariaDB,
#                       database $BENCH_DATABASE, default lt_bench)
#   CLUSTER_DIR (default <repo>/.data/bench-cluster), CLUSTER_BASE_PORT,
#   NGINX_HTTPS_PORT, NGINX_HTTP_PORT, REDIS_PORT, DB_PORT: passed to scripts/cluster.
#   The instances get limits that admit the load (each may be overridden):
#   WS_MAX_CONNECTIONS=19000 HTTP_MAX_CONNECTIONS=20000
#   HTTP_MAX_CONNECTIONS_PER_IP=1000000 RATE_LIMIT_LOGIN=off RATE_LIMIT_REFRESH=off
#   RATE_LIMIT_SEND_CODE=off ADJUST_MAX_PER_DAY=100000000 (cross tops users up).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

SMALL=0
SKIP=","
while (( $# > 0 )); do
    case "$1" in
        --small) SMALL=1 ;;
        --skip) shift; SKIP=",${1:?--skip needs a list like a,c},";;
        -h|--help) sed -n '2,/^set -euo/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" | sed '$d' >&2; exit 0 ;;
        *) die "unknown argument '$1' (try --small, --skip a,b,c,d,e)" ;;
    esac
    shift
done
skipped() { [[ "$SKIP" == *",$1,"* ]]; }

if (( SMALL )); then
    : "${INSTANCES:=2}" "${SOCKETS_PER_INSTANCE:=300}" "${PER_PROC:=300}" "${HOLD_S:=5}"
    : "${FLOOR_RUNS:=2}" "${FLOOR_SOCKETS:=300}" "${FLOOR_UPDATES:=5}"
    : "${TLS_SOCKETS:=300}" "${TLS_UPDATES:=5}"
    : "${CROSS_USERS:=100}" "${CROSS_RATE:=100}" "${CROSS_DURATION:=5}"
else
    : "${INSTANCES:=6}" "${SOCKETS_PER_INSTANCE:=17000}" "${PER_PROC:=17000}" "${HOLD_S:=}"
    : "${FLOOR_RUNS:=6}" "${FLOOR_SOCKETS:=17000}" "${FLOOR_UPDATES:=20}"
    : "${TLS_SOCKETS:=18000}" "${TLS_UPDATES:=20}"
    : "${CROSS_USERS:=1000}" "${CROSS_RATE:=1000}" "${CROSS_DURATION:=30}"
fi
: "${FANOUT_UPDATES:=1}"
for v in INSTANCES SOCKETS_PER_INSTANCE PER_PROC FANOUT_UPDATES FLOOR_RUNS FLOOR_SOCKETS \
         FLOOR_UPDATES TLS_SOCKETS TLS_UPDATES CROSS_USERS CROSS_RATE CROSS_DURATION; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
(( INSTANCES >= 2 )) || die "INSTANCES must be at least 2 (cross needs two)"
TOTAL=$(( INSTANCES * SOCKETS_PER_INSTANCE ))
PROCS=$(( (TOTAL + PER_PROC - 1) / PER_PROC ))
(( PER_PROC <= 19000 )) || die "PER_PROC above 19000: one process has 20,000 open files"

# The cluster's place and ports (scripts/cluster reads them from the environment).
export CLUSTER_DIR="${CLUSTER_DIR:-$ROOT/.data/bench-cluster}"
BASE_PORT="${CLUSTER_BASE_PORT:-3001}"
export WS_MAX_CONNECTIONS="${WS_MAX_CONNECTIONS:-19000}"
export HTTP_MAX_CONNECTIONS="${HTTP_MAX_CONNECTIONS:-20000}"
export HTTP_MAX_CONNECTIONS_PER_IP="${HTTP_MAX_CONNECTIONS_PER_IP:-1000000}"
export RATE_LIMIT_LOGIN="${RATE_LIMIT_LOGIN:-off}"
export RATE_LIMIT_REFRESH="${RATE_LIMIT_REFRESH:-off}"
export RATE_LIMIT_SEND_CODE="${RATE_LIMIT_SEND_CODE:-off}"
export ADJUST_MAX_PER_DAY="${ADJUST_MAX_PER_DAY:-100000000}"

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
SERVER_BIN="${SERVER_BIN:-$TARGET/release/restaurant-points}"
LT="${LT_BIN:-$TARGET/release/loadtest}"
if [[ ! -x "$SERVER_BIN" || ! -x "$LT" ]]; then
    log "building the release server and load generator"
    (cd "$ROOT" && SQLX_OFFLINE="${SQLX_OFFLINE:-true}" \
        cargo build --release -p restaurant-points -p loadtest --bins >&2)
fi
[[ -x "$SERVER_BIN" && -x "$LT" ]] || die "no executable at $SERVER_BIN or $LT"
export SERVER_BIN
command -v python3 >/dev/null 2>&1 || die "python3 not found (it reads the JSON reports)"

if [[ -z "${CLUSTER_DATABASE_URL:-}" ]]; then
    db_env="$("$ROOT/scripts/db" --print-env)" || die "scripts/db failed"
    DB_URL="$(eval "$db_env"; printf '%s' "$DB_URL")"
    DB_SOCKET="$(eval "$db_env"; printf '%s' "$DB_SOCKET")"
    BENCH_DATABASE="${BENCH_DATABASE:-lt_bench}"
    [[ "$BENCH_DATABASE" =~ ^[A-Za-z0-9_]+$ ]] || die "BENCH_DATABASE must be letters, digits and _"
    mariadb --no-defaults --socket="$DB_SOCKET" -uroot -e \
        "CREATE DATABASE IF NOT EXISTS \`$BENCH_DATABASE\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci" \
        || die "could not create the database $BENCH_DATABASE"
    export CLUSTER_DATABASE_URL="$DB_URL/$BENCH_DATABASE"
elif [[ "$CLUSTER_DATABASE_URL" =~ ^mysql://([^:@/]+)(:([^@/]*))?@(localhost|127\.[0-9.]+):([0-9]+)/([A-Za-z0-9_]+)$ ]]; then
    # A database on a server of this machine: create it if missing.
    args=(--no-defaults -h"${BASH_REMATCH[4]}" -P"${BASH_REMATCH[5]}" -u"${BASH_REMATCH[1]}")
    [[ -n "${BASH_REMATCH[3]}" ]] && args+=(-p"${BASH_REMATCH[3]}")
    mariadb "${args[@]}" -e "CREATE DATABASE IF NOT EXISTS \`${BASH_REMATCH[6]}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci" \
        || die "could not create the database of CLUSTER_DATABASE_URL"
fi

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(( $(ulimit -n) >= PER_PROC + 600 )) || die "open-files limit $(ulimit -n) is too low for PER_PROC=$PER_PROC"
if [[ -s "$CLUSTER_DIR/size" && "$(cat "$CLUSTER_DIR/size")" != 0 ]]; then
    die "a cluster already runs in $CLUSTER_DIR (memory figures need fresh instances): CLUSTER_DIR=$CLUSTER_DIR scripts/cluster down"
fi

OUT="$(realpath -m -- "${BENCH_OUT:-$ROOT/.data/bench-$(date +%Y%m%d-%H%M%S)}")"
mkdir -p "$OUT"
TOKENS="$OUT/tokens.jsonl"
: >"$OUT/commands.txt"

CLUSTER_UP=0
RUN_PID=""
FAILED=()
cleanup() {
    local rc=$?
    if [[ -n "$RUN_PID" ]] && kill -0 "$RUN_PID" 2>/dev/null; then
        log "stopping the load generator (process group $RUN_PID)"
        kill -TERM -- "-$RUN_PID" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$RUN_PID" 2>/dev/null || true
    fi
    if (( CLUSTER_UP )); then
        log "stopping the cluster (scripts/cluster down)"
        "$ROOT/scripts/cluster" down >>"$OUT/cluster.log" 2>&1 || log "warning: scripts/cluster down failed (see $OUT/cluster.log)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A command as it can be typed again: words quoted only when they need it,
# the load generator's path shortened to `loadtest`.
show() {
    local w out=()
    for w in "$@"; do
        [[ "$w" == "$LT" ]] && w=loadtest
        if [[ "$w" =~ ^[A-Za-z0-9_./:,=@%+-]+$ ]]; then out+=("$w"); else out+=("$(printf '%q' "$w")"); fi
    done
    printf '%s' "${out[*]}"
}

# run NAME CMD...: prints the command and runs it in its own process group
# (so that a stop takes its shard children too), its output on the terminal
# and in NAME.log. Returns its exit code.
run() {
    local name=$1 rc=0
    shift
    local shown
    shown="$(show "$@")"
    printf '\n$ %s\n' "$shown" | tee -a "$OUT/commands.txt"
    printf '%s\t%s\n' "$name" "$shown" >>"$OUT/commands.tsv"
    setsid "$@" > >(tee "$OUT/$name.log") 2>&1 &
    RUN_PID=$!
    wait "$RUN_PID" || rc=$?
    RUN_PID=""
    # Let tee finish writing.
    sleep 0.2
    return "$rc"
}

step() {
    local id=$1 name=$2
    shift 2
    if skipped "$id"; then
        log "($id) skipped"
        return 0
    fi
    printf '\n==== (%s) %s ====\n' "$id" "$*"
    if ! "$name"; then
        FAILED+=("$id")
        log "($id) FAILED; going on with the next step"
    fi
}

cluster_up() {
    printf '\n$ %s\n' "CLUSTER_DIR=$CLUSTER_DIR SERVER_BIN=$SERVER_BIN CLUSTER_DATABASE_URL=$CLUSTER_DATABASE_URL scripts/cluster up $1" \
        | tee -a "$OUT/commands.txt"
    CLUSTER_UP=1
    "$ROOT/scripts/cluster" up "$1" >"$OUT/cluster-$1.env" 2>>"$OUT/cluster.log" \
        || { tail -n 30 "$OUT/cluster.log" >&2; die "scripts/cluster up $1 failed"; }
    INSTANCE_URLS="$(sed -n 's/^CLUSTER_INSTANCES=//p' "$OUT/cluster-$1.env")"
    HTTPS_URL="$(sed -n 's/^CLUSTER_HTTPS_URL=//p' "$OUT/cluster-$1.env")"
    CA="$(sed -n 's/^CLUSTER_CA=//p' "$OUT/cluster-$1.env")"
    PIDS=""
    local i
    for (( i = 1; i <= $1; i++ )); do
        PIDS+="${PIDS:+,}$(cat "$CLUSTER_DIR/instances/$i.pid")"
    done
    REDIS_PID="$("$ROOT/scripts/redis" status | sed -n 's/^running: pid \([0-9]*\),.*/\1/p')"
    [[ -n "$INSTANCE_URLS" && -n "$HTTPS_URL" && -n "$REDIS_PID" ]] \
        || die "could not read the cluster's addresses (see $OUT/cluster-$1.env)"
    log "instances $INSTANCE_URLS (pids $PIDS), nginx $HTTPS_URL, redis pid $REDIS_PID"
}

common=(--tokens "$TOKENS")

step_users() {
    run users "$LT" users --server "$INSTANCE_URLS" --count "$TOTAL" --reuse "${common[@]}"
}

step_hold() {
    local hold=()
    [[ -n "$HOLD_S" ]] && hold=(--hold "$HOLD_S")
    run hold "$LT" shard --procs "$PROCS" --save "$OUT/hold.json" -- hold --server "$INSTANCE_URLS" \
        --sockets "$TOTAL" --server-pid "$PIDS" "${hold[@]}" "${common[@]}"
}

step_fanout() {
    run fanout "$LT" shard --procs "$PROCS" --save "$OUT/fanout.json" -- fanout --server "$INSTANCE_URLS" \
        --sockets "$TOTAL" --updates "$FANOUT_UPDATES" --redis-pid "$REDIS_PID" "${common[@]}"
}

step_floor() {
    local i
    for (( i = 1; i <= FLOOR_RUNS; i++ )); do
        run "floor-$i" "$LT" tcp-floor --sockets "$FLOOR_SOCKETS" --updates "$FLOOR_UPDATES" \
            --save "$OUT/floor-$i.json" || return 1
    done
}

step_cross() {
    run cross "$LT" cross --server "$INSTANCE_URLS" --users "$CROSS_USERS" --rate "$CROSS_RATE" \
        --duration "$CROSS_DURATION" --save "$OUT/cross.json" "${common[@]}"
}

step_tls() {
    cluster_up 1
    local direct="http://127.0.0.1:$BASE_PORT"
    # Fresh tokens through the instance itself: nginx rate-limits logins.
    run tls-users "$LT" users --server "$direct" --count "$TLS_SOCKETS" --reuse "${common[@]}" || return 1
    run tls-direct "$LT" fanout --server "$direct" --sockets "$TLS_SOCKETS" \
        --updates "$TLS_UPDATES" --save "$OUT/tls-direct.json" "${common[@]}" || return 1
    run tls-wss "$LT" fanout --server "$HTTPS_URL" --ca "$CA" --sockets "$TLS_SOCKETS" \
        --updates "$TLS_UPDATES" --save "$OUT/tls-wss.json" "${common[@]}"
}

log "output in $OUT; $INSTANCES instances × $SOCKETS_PER_INSTANCE sockets = $TOTAL over $PROCS process(es)"
cluster_up "$INSTANCES"
step users step_users "log in $TOTAL users"
step a step_hold "hold $SOCKETS_PER_INSTANCE sockets on each of $INSTANCES instances"
step b step_fanout "$FANOUT_UPDATES stock_update(s) to $TOTAL sockets on $INSTANCES instances"
step c step_floor "$FLOOR_RUNS × tcp-floor --sockets $FLOOR_SOCKETS"
step e step_cross "cross: $CROSS_USERS users, $CROSS_RATE draws/s for $CROSS_DURATION s"
step d step_tls "$TLS_SOCKETS sockets direct to one instance, then through nginx (WSS)"

# Every figure, with the command that produced it.
python3 - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, os, sys
out = sys.argv[1]
cmds = {}
for line in open(os.path.join(out, "commands.tsv")) if os.path.exists(os.path.join(out, "commands.tsv")) else []:
    name, _, cmd = line.rstrip("\n").partition("\t")
    cmds[name] = cmd

def load(name):
    p = os.path.join(out, name + ".json")
    return json.load(open(p)) if os.path.exists(p) else None

def h(x):
    return f"p50 {x['p50_ms']:.1f} ms, p90 {x['p90_ms']:.1f} ms, p99 {x['p99_ms']:.1f} ms, max {x['max_ms']:.1f} ms"

print("\n==== summary ====")
r = load("hold")
if r:
    print(f"(a) $ {cmds.get('hold', '?')}")
    print(f"    {r['connected']}/{r['sockets']} sockets held, {r['alive_at_end']} alive at the end; "
          f"connected in {r['connect_s']:.1f} s ({r['connects_per_s']:.0f}/s)")
    for i in r.get("instances", []):
        print(f"    {i['server']}: {i['connected']} sockets, {i['bytes_per_socket'] or 0:.0f} bytes/socket")
    if r.get("bytes_per_socket") is not None:
        print(f"    all instances: {r['bytes_per_socket']:.0f} bytes/socket; load generator "
              f"{r.get('client_bytes_per_socket') or 0:.0f} bytes/socket")
r = load("fanout")
if r:
    print(f"(b) $ {cmds.get('fanout', '?')}")
    print(f"    {r['updates']} update(s) to {r['connected']} sockets: delivered {r['delivered']}/{r['expected']}")
    print(f"    after commit {h(r['delay_commit'])}")
    for s in r.get("by_server", []):
        print(f"      {s['server']}: {s['delivered']} delivered, after commit p50 {s['delay_commit']['p50_ms']:.1f} ms, p99 {s['delay_commit']['p99_ms']:.1f} ms")
    c = r.get("redis_cpu")
    if c:
        print(f"    redis: {c['cpu_s']:.2f} CPU s over {c['wall_s']:.2f} s = {c['percent_of_core']:.1f}% of one core")
floors = [(n, load(n)) for n in sorted(f[:-5] for f in os.listdir(out) if f.startswith("floor-") and f.endswith(".json"))]
for n, r in floors:
    print(f"(c) $ {cmds.get(n, '?')}")
    print(f"    {r['sockets']} sockets × {r['updates']}: delay after go {h(r['delay'])}")
r = load("cross")
if r:
    print(f"(e) $ {cmds.get('cross', '?')}")
    print(f"    {r['commands_per_s']:.0f} commands/s (target {r['rate_target']:.0f}), {r['successes']} successes, "
          f"{r['delivered']} delivered, {r['lost']} lost, {r['listeners_in_order']}/{r['listeners_checked']} listeners in order")
    print(f"    frame on A − reply on B: {h(r['after_reply'])}")
    print(f"    frame on A − event time: {h(r['after_commit'])}")
    for s in r.get("by_server", []):
        print(f"      {s['server']}: {s['delivered']} delivered, {s['lost']} lost, after reply p99 {s['after_reply']['p99_ms']:.1f} ms")
d, w = load("tls-direct"), load("tls-wss")
for name, r in (("tls-direct", d), ("tls-wss", w)):
    if r:
        print(f"(d) $ {cmds.get(name, '?')}")
        print(f"    {r['connected']}/{r['sockets']} connected in {r['connect_s']:.2f} s; "
              f"after commit {h(r['delay_commit'])}; load generator {r.get('client_bytes_per_socket') or 0:.0f} bytes/socket")
if d and w:
    cs = w["connect_s"] / max(d["connect_s"], 1e-9)
    p99 = w["delay_commit"]["p99_ms"] / max(d["delay_commit"]["p99_ms"], 1e-9)
    print(f"    WSS through nginx / direct: connect storm ×{cs:.2f}, fan-out p99 ×{p99:.2f}")
EOF

if (( ${#FAILED[@]} > 0 )); then
    log "failed steps: ${FAILED[*]}"
    exit 1
fi
log "done; reports in $OUT"
