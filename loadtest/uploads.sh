#!/usr/bin/env bash
# Receipt uploads at once, and what they cost the server's memory: COUNT
# guests (the first COUNT tokens of a `loadtest users` file, one upload each)
# send one real JPEG of about MIB MiB to POST /api/photo/upload all at the
# same moment; the server's RSS is sampled every 20 ms meanwhile. Prints the
# answers by HTTP status and code, and the server's RSS before, at its peak
# and after.
#
#   loadtest/uploads.sh SERVER_URL SERVER_PID TOKENS [COUNT [MIB]]   (100 guests, 4.8 MiB)
#
# SERVER_URL must be on this machine (http://127.x.x.x:port). Run the server
# with RATE_LIMIT_UPLOAD=off, or the per-address limit (bursts of 20) answers
# most of them first. The image is made once with Pillow (python3-pil,
# installed with apt-get when missing) from random pixels, so it does not
# compress, and kept in .data/bench-receipt-MIB.jpg.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
log() { printf 'uploads: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -ge 3 ]] || die "usage: $0 SERVER_URL SERVER_PID TOKENS [COUNT [MIB]]"
URL="${1%/}"
PID="$2"
TOKENS="$3"
COUNT="${4:-100}"
MIB="${5:-4.8}"
[[ "$URL" =~ ^http://(localhost|127\.[0-9.]+)(:[0-9]+)?$ ]] || die "SERVER_URL must be http://127.x.x.x:port"
[[ -r "/proc/$PID/status" ]] || die "no process $PID"
[[ "$COUNT" =~ ^[1-9][0-9]*$ ]] || die "COUNT must be a positive integer"
[[ "$MIB" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "MIB must be a number"
(( $(wc -l <"$TOKENS") >= COUNT )) || die "$TOKENS has fewer than $COUNT tokens"
command -v curl >/dev/null 2>&1 || die "curl not found"

# Debian's python3 (where python3-pil goes), whatever else is first on PATH.
PY=/usr/bin/python3
[[ -x "$PY" ]] || PY=python3
if ! "$PY" -c 'import PIL' 2>/dev/null; then
    command -v apt-get >/dev/null 2>&1 || die "python3-pil is missing and apt-get is not available"
    log "installing python3-pil"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pil; } >&2 \
        || die "could not install python3-pil"
fi

mkdir -p "$ROOT/.data"
IMAGE="$ROOT/.data/bench-receipt-$MIB.jpg"
if [[ ! -s "$IMAGE" ]]; then
    "$PY" - "$IMAGE" "$MIB" <<'EOF'
import os, sys
from PIL import Image
path, mib = sys.argv[1], float(sys.argv[2])
target = int(mib * 1024 * 1024)
# Random RGB pixels at quality 95 take about 0.95 bytes per pixel's channel
# triple; grow the picture until it is just under the target.
side = 1024
while True:
    img = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    img.save(path, "JPEG", quality=95)
    size = os.path.getsize(path)
    if size >= target * 0.97:
        break
    side = int(side * (target / size) ** 0.5) + 8
while os.path.getsize(path) > target:
    side -= 16
    img = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    img.save(path, "JPEG", quality=95)
EOF
fi
log "image $IMAGE: $(stat -c %s "$IMAGE") bytes"

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$PID/status"; }
OUT="$(mktemp -d)"
trap 'kill "${SAMPLER:-}" 2>/dev/null || true; rm -rf "$OUT"' EXIT

BEFORE=$(rss)
( peak=0
  while [[ ! -e "$OUT/done" ]]; do
      r=$(rss) || break
      (( r > peak )) && { peak=$r; echo "$peak" >"$OUT/peak"; }
      sleep 0.02
  done ) &
SAMPLER=$!

# Every curl waits at the same barrier (a FIFO opened by all, written once).
mkfifo "$OUT/go"
head -n "$COUNT" "$TOKENS" | python3 -c 'import json,sys; [print(json.loads(l)["access_token"]) for l in sys.stdin]' \
    >"$OUT/tokens"
i=0
PIDS=()
while read -r token; do
    i=$((i + 1))
    ( read -r _ <"$OUT/go" || true
      curl -s -o "$OUT/body.$i" -w '%{http_code}\n' -H "Authorization: Bearer $token" \
          -F "image=@$IMAGE;type=image/jpeg" -F amount=88.00 "$URL/api/photo/upload" >"$OUT/status.$i" || echo 000 >"$OUT/status.$i"
    ) &
    PIDS+=($!)
done <"$OUT/tokens"
sleep 1
START=$(date +%s.%N)
# One line per reader: each subshell's `read` takes one.
printf 'go\n%.0s' $(seq "$COUNT") >"$OUT/go"
for p in "${PIDS[@]}"; do wait "$p" || true; done
END=$(date +%s.%N)
touch "$OUT/done"
wait "$SAMPLER" 2>/dev/null || true
sleep 1
AFTER=$(rss)
PEAK=$(cat "$OUT/peak" 2>/dev/null || echo "$BEFORE")

log "$COUNT uploads at once of $(stat -c %s "$IMAGE") bytes in $(python3 -c "print(f'{$END-$START:.2f}')") s"
for f in "$OUT"/status.*; do
    n="${f##*.}"
    code=$(python3 -c 'import json,sys
try: print(json.load(open(sys.argv[1])).get("code"))
except Exception: print("-")' "$OUT/body.$n")
    echo "HTTP $(cat "$f") code $code"
done | sort | uniq -c | sed 's/^/  /'
echo "  server RSS $BEFORE → $PEAK (peak) → $AFTER KiB (1 s after)"
