#!/usr/bin/env bash
# Load on one gateway: plain HTTP/1.1 keep-alive (wrk), new full TLS
# handshakes per second (no resumption), and HTTP/2 requests per second over
# TLS (h2load), against a release build on loopback.
# Usage: benches/tls-load.sh [seconds per run, default 10]
# Needs: wrk, h2load (nghttp2-client), openssl. Everything it starts is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-10}"
command -v h2load >/dev/null || { echo "install nghttp2-client (h2load)"; exit 1; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q
BIN="$PWD/target/release/tenantgate"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; [ -n "${KEEP_LOG:-}" ] && cp "$WORK/gw.log" "$KEEP_LOG"; rm -rf "$WORK"; }
trap cleanup EXIT

"$BIN" backend --listen 127.0.0.1:19001 --name b1 >/dev/null & PIDS+=($!)
cat > "$WORK/bench.toml" <<TOML
[gateway]
http_listen = "127.0.0.1:18080"
https_listen = "127.0.0.1:18443"
threads = ${THREADS:-2}
shutdown_grace_secs = 0

[telemetry]
access_log = false

[tls]
issuer = "internal"
state_dir = "state"
default_sni = "app.bench.example"
redirect_http = false

[pools.p]
upstreams = ["127.0.0.1:19001"]

[[tenants]]
id = "bench"
domains = ["app.bench.example"]
pool = "p"
TOML
"$BIN" serve --config "$WORK/bench.toml" 2>"$WORK/gw.log" & GW=$!; PIDS+=($GW)
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/18443) 2>/dev/null && break; sleep 0.1; done

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# Warm the certificate cache.
openssl s_client -connect 127.0.0.1:18443 -servername app.bench.example </dev/null >/dev/null 2>&1 || true

if command -v wrk >/dev/null; then
  echo "== plain HTTP/1.1 keep-alive (wrk, 64 connections, ${SECS}s)"
  c0=$(cpu_ticks $GW)
  wrk -t 2 -c 64 -d "${SECS}s" --latency -H 'Host: app.bench.example' http://127.0.0.1:18080/ >"$WORK/wrk.log" 2>&1 || true
  c1=$(cpu_ticks $GW)
  grep -E "Requests/sec|^\s+99%|^\s+50%|Non-2xx|Socket errors" "$WORK/wrk.log"
  reqs=$(awk '/requests in/ {print $1}' "$WORK/wrk.log")
  awk -v d=$((c1-c0)) -v t="$TICK" -v r="${reqs:-0}" 'BEGIN { if (r>0) printf "server CPU per request: %.1f us\n", d/t*1e6/r }'
fi

echo "== new TLS handshakes (openssl s_time -new, 2 clients, ${SECS}s, ECDSA P-256, TLS 1.3)"
c0=$(cpu_ticks $GW)
for i in 1 2; do
  openssl s_time -connect 127.0.0.1:18443 -new -time "$SECS" >"$WORK/st$i.log" 2>&1 &
  ST[$i]=$!
done
wait "${ST[1]}" "${ST[2]}" || true
c1=$(cpu_ticks $GW)
conns=$(grep -h "connections in" "$WORK"/st*.log | awk '{s+=$1} END {print s+0}')
rate=$(awk -v c="$conns" -v s="$SECS" 'BEGIN {printf "%.0f", c/s}')
cpu_us=$(awk -v d=$((c1-c0)) -v t="$TICK" -v c="$conns" 'BEGIN { if (c>0) printf "%.0f", d/t*1e6/c; else print "n/a" }')
echo "handshakes: $conns in ${SECS}s = ${rate}/s; server CPU per handshake: ${cpu_us} us"

echo "== HTTP/2 over TLS (h2load, 64 connections x 10 streams, ${SECS}s)"
c0=$(cpu_ticks $GW)
h2load -c 64 -m 10 -t 2 -D "$SECS" -H ':authority: app.bench.example' https://127.0.0.1:18443/ >"$WORK/h2.log" 2>&1 || true
c1=$(cpu_ticks $GW)
grep -E "^finished in|^requests:|^status codes:" "$WORK/h2.log"
reqs=$(awk '/^status codes:/ {gsub(",","",$3); print $3}' "$WORK/h2.log")
awk -v d=$((c1-c0)) -v t="$TICK" -v r="${reqs:-0}" 'BEGIN { if (r>0) printf "server CPU per request: %.1f us\n", d/t*1e6/r }'
