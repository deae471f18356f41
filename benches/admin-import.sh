#!/usr/bin/env bash
# Admin API at scale: on a gateway with N tenant files (default 100,000),
# time GET /v1/export, a preview of that unchanged export, and its import
# (a no-op), while /healthz is probed every 50 ms (slowest answer shown).
# Then: operator PUTs on A alone, and while a tenant token sends writes
# that fail validation (a name another tenant owns) from 4 loops. Then
# import the same export into an empty gateway (N creates) and show its
# time and peak RSS (VmHWM) before and after, with the body size.
# Usage: benches/admin-import.sh [tenants=100000]
#   IMPORT_ONLY=1 benches/admin-import.sh 185000   export, then only the import into B
#   BIN=/path/to/tenantgate SKIP_BUILD=1 benches/admin-import.sh   another build
# Loopback only; everything it starts is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100000}"
. benches/common.sh

TOKEN="admin-bench-secret-0123456789"
SHA=$(printf '%s' "$TOKEN" | sha256sum | cut -d' ' -f1)
AUTH="Authorization: Bearer $TOKEN"
"$BIN" gen-config --tenants "$N" --upstreams 127.0.0.1:19301 \
  --http-listen 127.0.0.1:18480 --metrics-listen 127.0.0.1:19490 >"$WORK/gen.toml"
main() { # $1: folder, $2: admin port, $3: http port, $4: metrics port
  mkdir -p "$1"
  awk '/^\[\[tenants\]\]/ {exit} {print}' "$WORK/gen.toml" |
    sed "s/127.0.0.1:18480/127.0.0.1:$3/; s/127.0.0.1:19490/127.0.0.1:$4/" >"$1/tenantgate.toml"
  sed -i "s/^\[gateway\]$/[gateway]\nadmin_listen = \"127.0.0.1:$2\"\nshutdown_grace_secs = 0/" "$1/tenantgate.toml"
  printf '\n[[admin.tokens]]\nname = "bench"\nscope = "operator"\nsha256 = "%s"\n' "$SHA" >>"$1/tenantgate.toml"
}
main "$WORK/a" 19491 18480 19490
TTOKEN="tenant-bench-secret-0123456789"
TSHA=$(printf '%s' "$TTOKEN" | sha256sum | cut -d' ' -f1)
# The tenant token has the default limits (10/s, burst 20, 2 at once);
# NOLIMIT=1 lifts them, to see what the checks outside the lock do alone.
printf '\n[[admin.tokens]]\nname = "t1"\nscope = "tenant:t000001"\nsha256 = "%s"\n' "$TSHA" >>"$WORK/a/tenantgate.toml"
[ -z "${NOLIMIT:-}" ] || printf 'requests_per_second = 100000\nmax_concurrent = 100\n' >>"$WORK/a/tenantgate.toml"
mkdir -p "$WORK/a/tenants"
awk -v dir="$WORK/a/tenants" '
  /^\[\[tenants\]\]/ { if (f) close(f); f = ""; next }
  /^id = / { id = $3; gsub(/"/, "", id); f = dir "/" id ".toml" }
  f && NF { print > f }
' "$WORK/gen.toml"
main "$WORK/b" 19493 18481 19492

hwm() { awk '$1 == "VmHWM:" {print int($2 / 1024)}' "/proc/$1/status"; }
rss() { awk '$1 == "VmRSS:" {print int($2 / 1024)}' "/proc/$1/status"; }
# Probes /healthz on port $1 every 50 ms until killed; the slowest time goes to $2.
probe() {
  local worst=0 t
  while :; do
    t=$(curl -s -o /dev/null -m 60 -w '%{time_total}' "http://127.0.0.1:$1/healthz" || echo 60)
    worst=$(awk -v a="$worst" -v b="$t" 'BEGIN {print (b > a) ? b : a}')
    echo "$worst" >"$2"
    sleep 0.05
  done
}
# Times `curl $@` (the admin call), with /healthz probed meanwhile on port $1.
timed() {
  local port=$1; shift
  echo 0 >"$WORK/worst"
  probe "$port" "$WORK/worst" & local P=$!
  local start; start=$(date +%s.%N)
  local code; code=$(curl -s -o "$WORK/out.json" -w '%{http_code}' "$@")
  local took; took=$(since "$start")
  sleep 0.1; kill "$P" 2>/dev/null; wait "$P" 2>/dev/null || true
  echo "$took s, HTTP $code, slowest /healthz meanwhile $(awk '{printf "%.3f", $1}' "$WORK/worst") s"
}

"$BIN" serve --config "$WORK/a/tenantgate.toml" 2>"$WORK/a.log" & A=$!; PIDS+=($A)
wait_port 19491 "$A" "$WORK/a.log"
echo "gateway A: $N tenant files, RSS $(rss $A) MB"
echo -n "export: "; timed 19491 -H "$AUTH" "http://127.0.0.1:19491/v1/export"
cp "$WORK/out.json" "$WORK/export.json"
echo "  export body $(( $(stat -c %s "$WORK/export.json") / 1024 )) KiB"
if [ -z "${IMPORT_ONLY:-}" ]; then
echo -n "preview of the unchanged export: "
timed 19491 -H "$AUTH" -H 'Content-Type: application/json' --data-binary @"$WORK/export.json" \
  "http://127.0.0.1:19491/v1/import?preview=true"
echo "  diff entries: $(grep -o '"action"' "$WORK/out.json" | wc -l)"
echo -n "import of the unchanged export (no-op): "
timed 19491 -H "$AUTH" -H 'Content-Type: application/json' --data-binary @"$WORK/export.json" \
  "http://127.0.0.1:19491/v1/import?prune=true"
echo "  $(head -c 120 "$WORK/out.json")"
echo "gateway A: peak RSS $(hwm $A) MB"

# Operator PUTs of tenant t000002, alone and under a tenant token's refused writes.
puts() {
  local i start total=0
  for i in 1 2 3 4 5; do
    start=$(date +%s.%N)
    curl -s -o /dev/null -X PUT -H "$AUTH" -H 'Content-Type: application/json' \
      --data "{\"pool\":\"shared\",\"domains\":[\"op$i.t000002.example.com\"]}" "http://127.0.0.1:19491/v1/tenants/t000002"
    total=$(awk -v a="$total" -v b="$(since "$start")" 'BEGIN {print a + b}')
  done
  awk -v t="$total" 'BEGIN {printf "%.2f s per PUT", t / 5}'
}
echo "operator PUT alone: $(puts)"
hammer() {
  while :; do
    curl -s -o /dev/null -X PUT -H "Authorization: Bearer $TTOKEN" -H 'Content-Type: application/json' \
      --data '{"pool":"shared","subdomain":"t000001","domains":["d0.t000003.example.com"]}' "http://127.0.0.1:19491/v1/tenants/t000001"
    sleep 0.05 # 20 attempts a second per loop, so that curl itself does not take the CPU
  done
}
HP=()
for _ in 1 2 3 4; do hammer & HP+=($!); done
sleep 1
echo "operator PUT while a tenant token's conflicting writes run in 4 loops: $(puts)"
kill "${HP[@]}" 2>/dev/null; wait "${HP[@]}" 2>/dev/null || true
fi
kill "$A"

"$BIN" serve --config "$WORK/b/tenantgate.toml" 2>"$WORK/b.log" & B=$!; PIDS+=($B)
wait_port 19493 "$B" "$WORK/b.log"
echo "gateway B: empty, RSS $(rss $B) MB, peak $(hwm $B) MB"
echo -n "import of the export into B ($N creates): "
timed 19493 -H "$AUTH" -H 'Content-Type: application/json' --data-binary @"$WORK/export.json" \
  "http://127.0.0.1:19493/v1/import?prune=true"
echo "gateway B: after the import RSS $(rss $B) MB, peak $(hwm $B) MB (body $(( $(stat -c %s "$WORK/export.json") / 1048576 )) MiB)"
