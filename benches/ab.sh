#!/usr/bin/env bash
# Two tenantgate binaries side by side, interleaved: HTTP/2 over TLS (h2load
# -c 64 -m 10, the peers scenario) and HTTP/1.1 keep-alive (wrk -c 64), one
# tenant, one echo backend, access log off. Per pair and binary: req/s and
# the gateway's CPU per request (utime+stime / requests); RSS idle, right
# after the load and 3 s later.
#
#   benches/ab.sh OLD_BIN NEW_BIN [PAIRS (5)] [SECONDS (8)]
#
# Everything runs on 127.0.0.1 (ports 21000-21999) and is stopped on exit.
set -euo pipefail
OLD="${1:?usage: $0 OLD_BIN NEW_BIN [PAIRS] [SECONDS]}"
NEW="${2:?usage: $0 OLD_BIN NEW_BIN [PAIRS] [SECONDS]}"
N="${3:-5}"
D="${4:-8}"
command -v h2load >/dev/null && command -v wrk >/dev/null || { echo "ab.sh: needs h2load and wrk" >&2; exit 2; }
W="$(mktemp -d "${TMPDIR:-/tmp}/tenantgate-ab.XXXXXX")"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$W/leaf.key" -out "$W/leaf.pem" \
  -days 2 -subj /CN=t00001.example.test -addext "subjectAltName=DNS:*.example.test" 2>/dev/null
config() { # name http_port https_port
  mkdir -p "$W/$1-certs" "$W/$1-state"
  cat "$W/leaf.pem" "$W/leaf.key" >"$W/$1-certs/wildcard.pem"
  cat >"$W/$1.toml" <<EOT
[gateway]
http_listen = "127.0.0.1:$2"
https_listen = "127.0.0.1:$3"
threads = 2
shutdown_grace_secs = 0

[telemetry]
access_log = false

[tls]
issuer = "none"
certs_dir = "$W/$1-certs"
state_dir = "$W/$1-state"
default_sni = "t00001.example.test"
redirect_http = false

[pools.a]
upstreams = ["127.0.0.1:21001"]

[[tenants]]
id = "t00001"
domains = ["t00001.example.test"]
pool = "a"
EOT
}
config old 21080 21443
config new 21081 21444
"$OLD" backend --listen 127.0.0.1:21001 --name a >"$W/backend.log" 2>&1 & PIDS+=($!)
"$OLD" serve --config "$W/old.toml" >"$W/old.log" 2>&1 & PO=$!; PIDS+=($PO)
"$NEW" serve --config "$W/new.toml" >"$W/new.log" 2>&1 & PN=$!; PIDS+=($PN)
sleep 2

cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
per_req() { python3 -c "print(round(($2-$1)*1e6/$(getconf CLK_TCK)/$3,1))"; }
h2() { # port pid
  local t0 t1 out ok rps
  t0=$(cpu "$2")
  out=$(h2load -c 64 -m 10 -t 2 -D "$D" -H ':authority: t00001.example.test' "https://127.0.0.1:$1/" 2>&1)
  t1=$(cpu "$2")
  ok=$(awk '/^status codes:/{print $3}' <<<"$out")
  rps=$(awk '/^finished in/{print $4}' <<<"$out")
  echo "rps=$rps ok=$ok cpu_us_per_req=$(per_req "$t0" "$t1" "$ok")"
}
h1() { # port pid
  local t0 t1 out n rps p99
  t0=$(cpu "$2")
  out=$(wrk -t 2 -c 64 -d "${D}s" --latency -H 'Host: t00001.example.test' "http://127.0.0.1:$1/" 2>&1)
  t1=$(cpu "$2")
  n=$(awk '/requests in/{print $1}' <<<"$out")
  rps=$(awk '/^Requests\/sec/{print $2}' <<<"$out")
  p99=$(awk '/ 99%/{print $2}' <<<"$out")
  echo "rps=$rps p99=$p99 cpu_us_per_req=$(per_req "$t0" "$t1" "$n")"
}
echo "idle RSS KiB: old $(rss $PO) new $(rss $PN)"
for i in $(seq 1 "$N"); do
  echo "pair $i h2 old $(h2 21443 $PO)"
  echo "pair $i h2 new $(h2 21444 $PN)"
  echo "pair $i h1 old $(h1 21080 $PO)"
  echo "pair $i h1 new $(h1 21081 $PN)"
done
echo "RSS KiB right after the load: old $(rss $PO) new $(rss $PN)"
sleep 3
echo "RSS KiB 3 s after the load: old $(rss $PO) new $(rss $PN)"
