#!/usr/bin/env bash
# Cost of per-tenant limits on proxied throughput: the same gateway config
# with a generous plan (every limit on, nothing refused) against no plan,
# and the same plan in fleet mode (a local redis-server, leases spent
# locally), interleaved A B C A B C ... so drift hits all alike.
# Usage: benches/limits-cost.sh [runs=3] [seconds=5]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"; SECS="${2:-5}"
command -v wrk >/dev/null || { echo "install wrk"; exit 1; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q
BIN="$PWD/target/release/tenantgate"
WORK="$(mktemp -d)"; PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
"$BIN" backend --listen 127.0.0.1:19101 --name b >/dev/null & PIDS+=($!)
command -v redis-server >/dev/null || { echo "install redis-server"; exit 1; }
redis-server --bind 127.0.0.1 --port 16399 --save "" --appendonly no >/dev/null & PIDS+=($!)

write_config() { # $1 = file, $2 = plan line
  cat > "$1" <<TOML
[gateway]
http_listen = "127.0.0.1:18180"
threads = 2
shutdown_grace_secs = 0
[telemetry]
access_log = false
[plans.generous]
requests_per_second = 1000000
burst = 1000000
max_concurrent = 100000
requests_per_day = 1000000000
requests_per_month = 10000000000
[limits]
quota_file = "$WORK/quotas.json"
[pools.p]
upstreams = ["127.0.0.1:19101"]
[[tenants]]
id = "bench"
domains = ["bench.example.com"]
pool = "p"
$2
TOML
}
write_config "$WORK/on.toml" 'plan = "generous"'
write_config "$WORK/off.toml" 'plan = "unlimited"'
write_config "$WORK/fleet.toml" 'plan = "generous"'
printf '[store]\nredis_url = "redis://127.0.0.1:16399"\n' >>"$WORK/fleet.toml"

run() { # $1 = config; prints req/s
  "$BIN" serve --config "$1" 2>/dev/null & local gw=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/18180) 2>/dev/null && break; sleep 0.05; done
  wrk -t 2 -c 64 -d "${SECS}s" -H 'Host: bench.example.com' http://127.0.0.1:18180/ 2>/dev/null | awk '/Requests\/sec/ {print $2}'
  kill "$gw"; wait "$gw" 2>/dev/null || true
}
on=(); off=(); fleet=()
for i in $(seq 1 "$RUNS"); do
  off+=("$(run "$WORK/off.toml")"); on+=("$(run "$WORK/on.toml")"); fleet+=("$(run "$WORK/fleet.toml")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
m_off=$(median "${off[@]}"); m_on=$(median "${on[@]}"); m_fleet=$(median "${fleet[@]}")
echo "limits off:   ${off[*]} req/s (median $m_off)"
echo "limits on:    ${on[*]} req/s (median $m_on)"
echo "fleet limits: ${fleet[*]} req/s (median $m_fleet)"
awk -v a="$m_off" -v b="$m_on" 'BEGIN {printf "cost of limits: %.1f%%\n", (a-b)/a*100}'
awk -v a="$m_off" -v b="$m_fleet" 'BEGIN {printf "cost of fleet limits: %.1f%%\n", (a-b)/a*100}'
