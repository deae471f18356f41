#!/usr/bin/env bash
# CPU cost of one proxied request through tenantgate, in the peers scenario
# (benches/peers/run.sh): HTTP/1.1 keep-alive, Host rotating over N tenants,
# two echo backends, access log off. Figures that contention on a shared box
# does not distort much:
#
#   benches/hot-path.sh cpu [SECONDS]      CPU µs per request (utime+stime of the gateway / requests)
#   benches/hot-path.sh perf [SECONDS]     the same, plus a perf profile (cpu-clock, call graphs)
#   benches/hot-path.sh callgrind [SECS]   instructions per request under callgrind, one worker thread
#   benches/hot-path.sh syscalls [SECS]    system calls per request (strace -c; slows the gateway down)
#
# Env: TENANTS (10000), CONNS (64 cpu/perf, 8 callgrind), THREADS (2; callgrind: 1),
# WORK_STEALING (unset: the gateway's default; true or false),
# JWT (off; "required": every tenant checks an ES256 token, one per tenant,
# from a jwks_file; needs python3-cryptography),
# HEALTH (off; "on": active health checks on both pools, every HEALTH_INTERVAL_MS
# (1000) ms, on the backends' /healthz),
# BIN (target/release/tenantgate), OUT (a temp dir; kept, path printed).
# Everything runs on 127.0.0.1 and is stopped by PID on exit.
set -euo pipefail

MODE="${1:-cpu}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${BIN:-$ROOT/target/release/tenantgate}"
TENANTS="${TENANTS:-10000}"
case "$MODE" in
  cpu | perf | syscalls) SECS="${2:-5}"; CONNS="${CONNS:-64}"; THREADS="${THREADS:-2}" ;;
  callgrind) SECS="${2:-20}"; CONNS="${CONNS:-8}"; THREADS="${THREADS:-1}" ;;
  *) echo "usage: $0 cpu|perf|callgrind|syscalls [SECONDS]" >&2; exit 2 ;;
esac
command -v wrk >/dev/null || { echo "hot-path.sh: needs wrk" >&2; exit 2; }
[ -x "$BIN" ] || { echo "hot-path.sh: build first: cargo build --release" >&2; exit 2; }

OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/tenantgate-hot.XXXXXX")}"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
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

JWT="${JWT:-off}"
seq -f "t%05g.example.test" 1 "$TENANTS" >"$OUT/hosts.txt"
{
  printf '[gateway]\nhttp_listen = "127.0.0.1:%s"\nthreads = %s\n' "$P_TG" "$THREADS"
  [ -n "${WORK_STEALING:-}" ] && printf 'work_stealing = %s\n' "$WORK_STEALING"
  printf '\n[telemetry]\naccess_log = false\n\n'
  [ "$JWT" = off ] || printf '[identity.jwt]\njwks_file = "jwks.json"\naudience = "tenantgate"\n\n'
  printf '[pools.a]\nupstreams = ["127.0.0.1:%s"]\n\n[pools.b]\nupstreams = ["127.0.0.1:%s"]\n' "$P_A" "$P_B"
  if [ "${HEALTH:-off}" = on ]; then
    for p in a b; do
      printf '\n[pools.%s.health]\npath = "/healthz"\ninterval_ms = %s\ntimeout_ms = 500\n' "$p" "${HEALTH_INTERVAL_MS:-1000}"
    done
  fi
  awk -v jwt="$JWT" '{ printf "\n[[tenants]]\nid = \"%s\"\ndomains = [\"%s\"]\npool = \"%s\"\njwt = \"%s\"\n", substr($0, 1, 6), $0, (NR % 2 ? "a" : "b"), jwt }' "$OUT/hosts.txt"
} >"$OUT/tenantgate.toml"
if [ "$JWT" != off ]; then
  # One ES256 key in jwks.json, and one token per tenant beside its host.
  python3 - "$OUT" <<'PY'
import base64, json, sys, time
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
out = sys.argv[1]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
key = ec.generate_private_key(ec.SECP256R1())
n = key.public_key().public_numbers()
jwk = {"kty": "EC", "crv": "P-256", "kid": "bench", "x": b64(n.x.to_bytes(32, "big")), "y": b64(n.y.to_bytes(32, "big"))}
json.dump({"keys": [jwk]}, open(f"{out}/jwks.json", "w"))
head = b64(json.dumps({"alg": "ES256", "kid": "bench", "typ": "JWT"}).encode())
lines = []
for host in open(f"{out}/hosts.txt").read().split():
    claims = {"sub": "user-" + host[:6], "aud": "tenantgate", "exp": int(time.time()) + 86400, "tenant": host[:6]}
    signing = head + "." + b64(json.dumps(claims).encode())
    r, s = decode_dss_signature(key.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
    lines.append(f"{host}\t{signing}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}")
open(f"{out}/hosts.txt", "w").write("\n".join(lines) + "\n")
PY
fi

"$BIN" backend --listen "127.0.0.1:$P_A" --name a >"$OUT/backend-a.log" 2>&1 & PIDS+=($!)
"$BIN" backend --listen "127.0.0.1:$P_B" --name b >"$OUT/backend-b.log" 2>&1 & PIDS+=($!)
case "$MODE" in
  callgrind)
    valgrind --tool=callgrind --instr-atstart=no --trace-children=no \
      --callgrind-out-file="$OUT/callgrind.out" \
      "$BIN" serve --config "$OUT/tenantgate.toml" >"$OUT/tenantgate.log" 2>&1 &
    ;;
  *) "$BIN" serve --config "$OUT/tenantgate.toml" >"$OUT/tenantgate.log" 2>&1 & ;;
esac
PID_TG=$!; PIDS+=("$PID_TG")

for _ in $(seq 1 600); do
  curl -s -o /dev/null -H "Host: t00001.example.test" "http://127.0.0.1:$P_TG/" && break
  kill -0 "$PID_TG" 2>/dev/null || { cat "$OUT/tenantgate.log" >&2; exit 1; }
  sleep 0.1
done
AUTH=()
[ "$JWT" = off ] || AUTH=(-H "Authorization: Bearer $(awk -F'\t' 'NR == 2 { print $2 }' "$OUT/hosts.txt")")
[ "$(curl -s -o /dev/null -w '%{http_code}' "${AUTH[@]}" -H "Host: t00002.example.test" "http://127.0.0.1:$P_TG/")" = 200 ] ||
  { echo "hot-path.sh: gateway does not answer 200" >&2; exit 1; }

wrk_run() { wrk -t2 -c"$CONNS" "$@" -s "$ROOT/benches/peers/hosts.lua" "http://127.0.0.1:$P_TG/" -- "$OUT/hosts.txt"; }
# Warm-up: upstream connections, allocator, caches.
wrk_run -d1s >/dev/null

# utime and stime of a process, in clock ticks.
user_sys() { awk '{ print $14, $15 }' "/proc/$1/stat"; }
# Busy and idle ticks of the whole machine (all CPUs).
machine() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat; }
[ "$MODE" = callgrind ] && callgrind_control -i on "$PID_TG" >/dev/null
read -r U0 S0 < <(user_sys "$PID_TG")
T0=$((U0 + S0))
read -r M0 I0 < <(machine)
if [ "$MODE" = perf ]; then
  perf record -e cpu-clock -F 2000 -g --call-graph dwarf,16384 -p "$PID_TG" -o "$OUT/perf.data" -- sleep "$SECS" \
    >"$OUT/perf.log" 2>&1 &
  PERF=$!
elif [ "$MODE" = syscalls ]; then
  strace -c -f -p "$PID_TG" -o "$OUT/strace.txt" & PERF=$!
  sleep 0.5
fi
wrk_run -d"${SECS}s" --latency >"$OUT/wrk.txt"
read -r U1 S1 < <(user_sys "$PID_TG")
T1=$((U1 + S1))
read -r M1 I1 < <(machine)
RSS=$(awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$PID_TG/status")
[ "$MODE" = perf ] && wait "$PERF"
if [ "$MODE" = syscalls ]; then kill -INT "$PERF"; wait "$PERF" || true; fi
[ "$MODE" = callgrind ] && { callgrind_control -d "$PID_TG" >/dev/null; callgrind_control -i off "$PID_TG" >/dev/null; }

REQS=$(awk '/requests in/ { print $1 }' "$OUT/wrk.txt")
RPS=$(awk '/Requests\/sec/ { print $2 }' "$OUT/wrk.txt")
P99=$(awk '$1 == "99%" { print $2 }' "$OUT/wrk.txt")
ERRS=$(awk '/Non-2xx|Socket errors/' "$OUT/wrk.txt")
HZ=$(getconf CLK_TCK)
echo "mode=$MODE threads=$THREADS conns=$CONNS secs=$SECS requests=$REQS req/s=$RPS p99=$P99 ${ERRS:+errors: $ERRS}"
awk -v t0="$T0" -v t1="$T1" -v hz="$HZ" -v n="$REQS" \
  'BEGIN { printf "gateway CPU: %.2f s, %.1f us/request\n", (t1 - t0) / hz, (t1 - t0) / hz * 1e6 / n }'
awk -v u="$((U1 - U0))" -v s="$((S1 - S0))" -v hz="$HZ" -v n="$REQS" \
  'BEGIN { printf "gateway CPU split: user %.1f us, kernel %.1f us per request\n", u / hz * 1e6 / n, s / hz * 1e6 / n }'
awk -v m="$((M1 - M0))" -v i="$((I1 - I0))" -v g="$((T1 - T0))" -v hz="$HZ" -v n="$REQS" \
  'BEGIN { printf "rest of the machine (wrk, backends): %.1f us per request; machine idle %.1f %%\n", (m - g) / hz * 1e6 / n, 100 * i / (m + i) }'
echo "gateway RSS after the run: $RSS MB"
if [ "$MODE" = callgrind ]; then
  sleep 1
  F="$OUT/callgrind.out.1"
  IR=$(callgrind_annotate "$F" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
  awk -v ir="$IR" -v n="$REQS" 'BEGIN { printf "instructions: %d, %.0f per request\n", ir, ir / n }'
fi
if [ "$MODE" = syscalls ]; then
  awk -v n="$REQS" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ { printf "%-16s %6.2f per request\n", $NF, $4 / n }' "$OUT/strace.txt" | sort -k2 -rn | head -12
fi
echo "kept: $OUT"
