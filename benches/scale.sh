#!/usr/bin/env bash
# Scale: start-up time and memory with N tenants (default 100,000, each with
# a platform subdomain and two custom domains), reload time at that size, and
# requests failed during reloads under load (must be 0).
# Usage: benches/scale.sh [tenants=100000] [reloads=5]
# Needs wrk. Loopback only; bounded in time; everything it starts is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100000}"
RELOADS="${2:-5}"
command -v wrk >/dev/null || { echo "install wrk"; exit 1; }
. benches/common.sh

"$BIN" backend --listen 127.0.0.1:19201 --name a >/dev/null & PIDS+=($!)
"$BIN" backend --listen 127.0.0.1:19202 --name b >/dev/null & PIDS+=($!)
CONFIG="$WORK/big.toml"
"$BIN" gen-config --tenants "$N" --upstreams 127.0.0.1:19201,127.0.0.1:19202 \
  --http-listen 127.0.0.1:18280 --metrics-listen 127.0.0.1:19290 >"$CONFIG"
sed -i 's/^\[gateway\]$/[gateway]\nshutdown_grace_secs = 0/' "$CONFIG"
echo "config: $N tenants, $(grep -c '^\[\[tenants\]\]' "$CONFIG") [[tenants]], $(du -h "$CONFIG" | cut -f1)"

metric() { curl -s http://127.0.0.1:19290/metrics | awk -v m="$1" '$1 == m {print $2}'; }
status() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }

start=$(date +%s.%N)
"$BIN" serve --config "$CONFIG" 2>"$WORK/gw.log" & GW=$!; PIDS+=($GW)
wait_port 18280 "$GW" "$WORK/gw.log"
listening=$(since "$start")
echo "start-up: listening after ${listening} s; RSS $(( $(status "$GW" VmRSS) / 1024 )) MB, peak $(( $(status "$GW" VmHWM) / 1024 )) MB"

# Load over every tenth tenant's platform host while the file changes.
seq 1 10 "$N" | awk '{printf "t%06d.saas.example\n", $1}' >"$WORK/hosts.txt"
DURATION=$(( RELOADS * 3 + 4 ))
wrk -t 2 -c 32 -d "${DURATION}s" -s benches/peers/hosts.lua http://127.0.0.1:18280/ -- "$WORK/hosts.txt" >"$WORK/wrk.log" 2>&1 &
WRK=$!; PIDS+=($WRK)
durations=()
rss_after=()
for i in $(seq 1 "$RELOADS"); do
  sleep 3
  # Edit as deploy tools do: write a new file, rename it over the old one.
  cp "$CONFIG" "$WORK/next.toml"
  printf '\n[[tenants]]\nid = "added%d"\ndomains = ["added%d.example.org"]\npool = "shared"\n' "$i" "$i" >>"$WORK/next.toml"
  mv "$WORK/next.toml" "$CONFIG"
  want=$(( i + 1 ))
  for _ in $(seq 1 200); do [ "$(metric tenantgate_config_generation)" = "$want" ] && break; sleep 0.05; done
  [ "$(metric tenantgate_config_generation)" = "$want" ] || { echo "reload $i not applied:"; tail "$WORK/gw.log"; exit 1; }
  durations+=("$(metric tenantgate_config_last_reload_duration_seconds)")
  rss_after+=("$(( $(status "$GW" VmRSS) / 1024 ))")
done
wait "$WRK" || true
echo "reload times (s): ${durations[*]}"
echo "RSS after each reload (MB): ${rss_after[*]}"
echo "RSS after $RELOADS reloads: $(( $(status "$GW" VmRSS) / 1024 )) MB, peak $(( $(status "$GW" VmHWM) / 1024 )) MB"
grep -E "requests in|Requests/sec|Non-2xx|Socket errors" "$WORK/wrk.log" | sed 's/^ */load: /'
if grep -qE "Non-2xx|Socket errors" "$WORK/wrk.log"; then echo "FAILED requests during reloads"; exit 1; fi
echo "failed requests during reloads: 0"
