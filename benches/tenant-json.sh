#!/usr/bin/env bash
# tenant.json against a proxied request, peers-style (benches/peers): HTTP/1.1
# keep-alive, Host rotating over N tenants, access log off, one echo backend
# per pool. Runs A (GET / proxied to the backend) and B (GET
# /.well-known/tenant.json answered by the gateway) in ABBA order, ROUNDS
# times, and prints req/s and the gateway's CPU per request for each run.
#
#   benches/tenant-json.sh [SECONDS]
#
# Env: TENANTS (10000), CONNS (64), THREADS (2), ROUNDS (2),
# BIN (target/release/tenantgate), OUT (a temp dir; kept, path printed).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${BIN:-$ROOT/target/release/tenantgate}"
SECS="${1:-5}"
TENANTS="${TENANTS:-10000}"
CONNS="${CONNS:-64}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-2}"
command -v wrk >/dev/null || { echo "tenant-json.sh: needs wrk" >&2; exit 2; }
[ -x "$BIN" ] || { echo "tenant-json.sh: build first: cargo build --release" >&2; exit 2; }
OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/tenantgate-tj.XXXXXX")}"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

read -r P_A P_B P_TG < <(python3 - <<'PY'
import random, socket
held, ports = [], []
for port in random.sample(range(20000, 32000), 200):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close(); continue
    held.append(s); ports.append(port)
    if len(ports) == 3: break
print(*ports)
PY
)

seq -f "t%05g.example.test" 1 "$TENANTS" >"$OUT/hosts.txt"
{
  printf '[gateway]\nhttp_listen = "127.0.0.1:%s"\nthreads = %s\n\n[telemetry]\naccess_log = false\n\n' "$P_TG" "$THREADS"
  printf '[pools.a]\nupstreams = ["127.0.0.1:%s"]\n\n[pools.b]\nupstreams = ["127.0.0.1:%s"]\n' "$P_A" "$P_B"
  printf '\n[plans.pro]\nfeatures = ["sso", "reports"]\nlocale = { language = "de", currency = "EUR", timezone = "Europe/Berlin" }\n'
  awk '{ printf "\n[[tenants]]\nid = \"%s\"\ndomains = [\"%s\"]\npool = \"%s\"\nplan = \"pro\"\nbranding = { name = \"Tenant %s\", primary_color = \"#0a7\" }\n", substr($0, 1, 6), $0, (NR % 2 ? "a" : "b"), NR }' "$OUT/hosts.txt"
} >"$OUT/tenantgate.toml"

"$BIN" backend --listen "127.0.0.1:$P_A" --name a >"$OUT/backend-a.log" 2>&1 & PIDS+=($!)
"$BIN" backend --listen "127.0.0.1:$P_B" --name b >"$OUT/backend-b.log" 2>&1 & PIDS+=($!)
"$BIN" serve --config "$OUT/tenantgate.toml" >"$OUT/tenantgate.log" 2>&1 & PID_TG=$!; PIDS+=("$PID_TG")
for _ in $(seq 1 600); do
  curl -s -o /dev/null -H "Host: t00001.example.test" "http://127.0.0.1:$P_TG/" && break
  sleep 0.1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: t00002.example.test" "http://127.0.0.1:$P_TG/.well-known/tenant.json")" = 200 ] ||
  { echo "tenant-json.sh: tenant.json does not answer 200" >&2; exit 1; }

user_sys() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
run() { # $1: label, $2: path
  local t0 t1
  t0=$(user_sys "$PID_TG")
  wrk -t2 -c"$CONNS" -d"${SECS}s" -s "$ROOT/benches/peers/hosts.lua" "http://127.0.0.1:$P_TG$2" -- "$OUT/hosts.txt" >"$OUT/wrk-$1.txt"
  t1=$(user_sys "$PID_TG")
  local reqs rps errs
  reqs=$(awk '/requests in/ { print $1 }' "$OUT/wrk-$1.txt")
  rps=$(awk '/Requests\/sec/ { print $2 }' "$OUT/wrk-$1.txt")
  errs=$(awk '/Non-2xx|Socket errors/' "$OUT/wrk-$1.txt")
  awk -v l="$1" -v r="$rps" -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" -v n="$reqs" -v e="$errs" \
    'BEGIN { printf "%-12s req/s=%s gateway_cpu=%.1f us/request %s\n", l, r, t / hz * 1e6 / n, e }'
}
wrk -t2 -c"$CONNS" -d1s -s "$ROOT/benches/peers/hosts.lua" "http://127.0.0.1:$P_TG/" -- "$OUT/hosts.txt" >/dev/null
for r in $(seq 1 "$ROUNDS"); do
  run "proxied-$r-1" /
  run "tenantjson-$r-1" /.well-known/tenant.json
  run "tenantjson-$r-2" /.well-known/tenant.json
  run "proxied-$r-2" /
done
echo "out: $OUT"
