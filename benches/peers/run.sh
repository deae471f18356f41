#!/usr/bin/env bash
# tenantgate next to nginx and HAProxy: the same 10,000-tenant host routing
# table, the same echo backends, the same wrk load, measured the same way.
# See benches/peers/README.md for what is measured and the caveats.
#
# Usage: benches/peers/run.sh [--quick] [--runs N] [--duration S] [options]
#   --quick          1 run of 3 s per target, no results file; exit 1 unless every
#                    target answered with 2xx only and no socket errors (for CI)
#   --runs N         measured runs per target (default 3; targets interleaved)
#   --duration S     seconds per run (default 10)
#   --warmup S       unmeasured warm-up per target before the first run (default 2; quick 1)
#   --connections C  wrk connections (default 64)
#   --tenants N      tenants in the routing table (default 10000)
#   --out FILE       results file (default benches/results/peers-YYYY-MM-DD.md; quick: none)
#   --no-install     do not apt-get install missing tools
#   --no-build       use the existing target/release/tenantgate
#   --keep           keep the temp dir (configs, logs, wrk output) and print its path
#   --no-tls         skip the TLS scenarios (new handshakes, HTTP/2 over TLS)
#
# Scenarios: HTTP/1.1 keep-alive with Host rotating over every tenant, through
# nginx, HAProxy, tenantgate, tenantgate with a generous plan on every tenant
# (limits on, nothing refused), and direct to a backend (the ceiling); then,
# unless --no-tls, per proxy: new full TLS handshakes per second (ECDSA P-256,
# no session resumption; openssl s_time) and HTTP/2 over TLS (h2load,
# 64 connections x 10 streams, one tenant host).
#
# Needs Linux, 2+ CPUs, root for the package install (Debian/Ubuntu: nginx,
# haproxy, wrk, nghttp2-client). Every process is started here, on 127.0.0.1,
# with configs in a temp dir, and stopped by PID on exit. The system nginx and
# haproxy services and /etc are never touched.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/benches/peers"

RUNS=3 DURATION=10 WARMUP=2 CONNS=64 TENANTS=10000 QUICK=0 INSTALL=1 BUILD=1 KEEP=0 OUT="" TLS=1
SET_RUNS="" SET_DURATION="" SET_WARMUP=""
WRK_THREADS=2

die() { echo "run.sh: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
posint() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 wants a positive integer, got '$2'"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --runs) posint "$1" "${2-}"; SET_RUNS="$2"; shift ;;
    --duration) posint "$1" "${2-}"; SET_DURATION="$2"; shift ;;
    --warmup) [[ "${2-}" =~ ^[0-9]+$ ]] || die "--warmup wants seconds"; SET_WARMUP="$2"; shift ;;
    --connections) posint "$1" "${2-}"; CONNS="$2"; shift ;;
    --tenants) posint "$1" "${2-}"; TENANTS="$2"; shift ;;
    --out) [ -n "${2-}" ] || die "--out wants a file"; OUT="$2"; shift ;;
    --no-install) INSTALL=0 ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    --no-tls) TLS=0 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
[ "$TENANTS" -ge 2 ] || die "--tenants must be at least 2"
[ "$TENANTS" -le 99999 ] || die "--tenants must be at most 99999 (names are tNNNNN)"
if [ "$QUICK" = 1 ]; then RUNS=1 DURATION=3 WARMUP=1; fi
RUNS="${SET_RUNS:-$RUNS}" DURATION="${SET_DURATION:-$DURATION}" WARMUP="${SET_WARMUP:-$WARMUP}"
if [ -z "$OUT" ] && [ "$QUICK" = 0 ]; then OUT="$ROOT/benches/results/peers-$(date +%F).md"; fi

[ "$(uname -s)" = Linux ] || die "needs Linux (/proc is read for CPU time and RSS)"
NPROC="$(nproc)"
[ "$NPROC" -ge 2 ] || die "needs 2+ CPUs (nginx, HAProxy and tenantgate run 2 workers each); this box has $NPROC"
export PATH="$PATH:/usr/sbin:/sbin"
log() { printf '== %s\n' "$*" >&2; }

# ---------------------------------------------------------------- tools
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  [ "$INSTALL" = 1 ] || die "missing: ${need[*]} (run without --no-install, or install them)"
  [ "$(id -u)" = 0 ] || die "missing: ${need[*]}; run as root to apt-get install them"
  command -v apt-get >/dev/null || die "missing: ${need[*]}; no apt-get here, install them by hand"
  log "installing ${need[*]}"
  # Packages like nginx start their service on install unless policy-rc.d says
  # no. If the box has none, put one in place for the install only, so no
  # system service is started (or touched) by this script.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, from tenantgate benches/peers/run.sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  install_rc=0
  { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"; } >&2 || install_rc=$?
  if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  [ "$install_rc" = 0 ] || die "apt-get failed ($install_rc)"
fi

# ---------------------------------------------------------------- build
if [ "$BUILD" = 1 ]; then
  log "cargo build --release"
  (cd "$ROOT" && cargo build --release) >&2
fi
BIN="${TENANTGATE_BIN:-$ROOT/target/release/tenantgate}"
[ -x "$BIN" ] || die "$BIN not found (build it or drop --no-build)"

# ---------------------------------------------------------------- processes
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tenantgate-peers.XXXXXX")"
chmod 755 "$WORK" # nginx workers drop to an unprivileged user
PIDS=()      # every process started here, stopped in reverse order on exit
WRK_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$WRK_PID" ]; then kill -TERM "$WRK_PID" 2>/dev/null || true; fi
  local i p
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[i]}" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [ "$KEEP" = 1 ]; then echo "run.sh: kept $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Free ports below the ephemeral range (so no client socket takes them).
read -r P_A P_B P_NGINX P_HAPROXY P_TG P_TGL P_NGINX_TLS P_HAPROXY_TLS P_TG_TLS < <(python3 - <<'PY'
import random, socket
held, ports = [], []
for port in random.sample(range(20000, 32000), 400):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    held.append(s)
    ports.append(port)
    if len(ports) == 9:
        break
print(*ports)
PY
)
[ -n "${P_TG_TLS:-}" ] || die "could not find 9 free ports"

descendants() { # PID and all its descendants
  local p=$1 c
  echo "$p"
  for c in $(pgrep -P "$p" || true); do descendants "$c"; done
}
cpu_ticks() { # utime+stime of the given PIDs (whole processes, all threads)
  local t=0 p s
  for p in "$@"; do
    s="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
    s="${s##*) }"
    # shellcheck disable=SC2086
    set -- $s
    t=$((t + ${12} + ${13}))
  done
  echo "$t"
}
rss_kb() { local p; for p in "$@"; do awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null; done | awk '{s += $1} END {print s + 0}'; }
sys_cpu() { awk '/^cpu / {print $5 + $6, $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; } # idle steal total
pss_kb() { local p; for p in "$@"; do awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null; done | awk '{s += $1} END {print s + 0}'; }

wait_port() { # port pid name
  local i
  for i in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || { echo "run.sh: $3 exited during start-up:" >&2; tail -n 20 "$WORK/$3.log" >&2 || true; exit 1; }
    sleep 0.05
  done
  echo "run.sh: $3 is not listening on 127.0.0.1:$1 after 10 s" >&2
  tail -n 20 "$WORK/$3.log" >&2 || true
  exit 1
}

# ---------------------------------------------------------------- routing table
# The same table for every proxy: t00001..tNNNNN.example.test, odd -> a, even -> b.
seq -f 't%05g.example.test' 1 "$TENANTS" >"$WORK/hosts.txt"
head -n 1 "$WORK/hosts.txt" >"$WORK/host-one.txt"
LAST_HOST="$(tail -n 1 "$WORK/hosts.txt")"
LAST_POOL=$([ $((TENANTS % 2)) = 1 ] && echo a || echo b)

# One ECDSA P-256 certificate for *.example.test, from a throwaway CA, for
# every proxy's TLS listener.
mkdir -p "$WORK/tls"
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/tls/ca.key" 2>/dev/null
openssl req -x509 -new -key "$WORK/tls/ca.key" -subj "/CN=peers bench CA" -days 2 -out "$WORK/tls/ca.pem" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/tls/leaf.key" 2>/dev/null
openssl req -new -key "$WORK/tls/leaf.key" -subj "/CN=*.example.test" -out "$WORK/tls/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:*.example.test\n' >"$WORK/tls/san.ext"
openssl x509 -req -in "$WORK/tls/leaf.csr" -CA "$WORK/tls/ca.pem" -CAkey "$WORK/tls/ca.key" -CAcreateserial \
  -days 2 -extfile "$WORK/tls/san.ext" -out "$WORK/tls/leaf.pem" 2>/dev/null
cat "$WORK/tls/leaf.pem" "$WORK/tls/leaf.key" >"$WORK/tls/haproxy.pem"
mkdir -p "$WORK/tg-certs"
cat "$WORK/tls/leaf.pem" "$WORK/tls/leaf.key" >"$WORK/tg-certs/wildcard.pem"
chmod -R a+rX "$WORK/tls"

# nginx
mkdir -p "$WORK/nginx/tmp"
NGINX_USER=""
if [ "$(id -u)" = 0 ]; then
  if getent passwd www-data >/dev/null; then NGINX_USER="user www-data;"; else NGINX_USER="user nobody;"; fi
fi
{
  cat <<EOF
$NGINX_USER
worker_processes 2;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    map_hash_max_size $((TENANTS * 4 > 2048 ? TENANTS * 4 : 2048));
    map_hash_bucket_size 64;

    upstream a { server 127.0.0.1:$P_A; keepalive 64; keepalive_requests 1000000; keepalive_timeout 60s; }
    upstream b { server 127.0.0.1:$P_B; keepalive 64; keepalive_requests 1000000; keepalive_timeout 60s; }

    # \$host: from the Host header, lowercased, without the port.
    map \$host \$backend {
        default "";
EOF
  awk '{ printf "        %s %s;\n", $0, (NR % 2 ? "a" : "b") }' "$WORK/hosts.txt"
  cat <<EOF
    }

    server {
        listen 127.0.0.1:$P_NGINX default_server;
        listen 127.0.0.1:$P_NGINX_TLS ssl http2 default_server;
        server_name _;
        ssl_certificate $WORK/tls/leaf.pem;
        ssl_certificate_key $WORK/tls/leaf.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / {
            if (\$backend = "") { return 421; }
            proxy_pass http://\$backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
            proxy_set_header X-Request-Id \$request_id;
        }
    }
}
EOF
} >"$WORK/nginx/nginx.conf"

# HAProxy
awk '{ printf "%s %s\n", $0, (NR % 2 ? "be_a" : "be_b") }' "$WORK/hosts.txt" >"$WORK/haproxy.map"
cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 2
    maxconn 4096
    tune.ssl.cachesize 0

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 60s
    option http-keep-alive
    http-reuse always

frontend fe
    bind 127.0.0.1:$P_HAPROXY
    bind 127.0.0.1:$P_HAPROXY_TLS ssl crt $WORK/tls/haproxy.pem alpn h2,http/1.1 no-tls-tickets ssl-min-ver TLSv1.2
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    unique-id-format %[uuid()]
    unique-id-header X-Request-Id
    # Host without the port, lowercased; unknown hosts go to be_unknown.
    use_backend %[req.hdr(host),field(1,:),lower,map($WORK/haproxy.map,be_unknown)]

backend be_a
    server a 127.0.0.1:$P_A

backend be_b
    server b 127.0.0.1:$P_B

backend be_unknown
    http-request return status 421 content-type text/plain string "unknown host"
EOF

# tenantgate: the plain one (with the TLS listener: the operator certificate
# for *.example.test, no ACME, no redirect), and one with a generous plan on
# every tenant (every limit on, nothing refused).
tenantgate_config() { # http_port extra_gateway_lines extra_sections
  cat <<EOF
[gateway]
http_listen = "127.0.0.1:$1"
threads = 2
shutdown_grace_secs = 0
$2

[telemetry]
access_log = false
$3

[pools.a]
upstreams = ["127.0.0.1:$P_A"]

[pools.b]
upstreams = ["127.0.0.1:$P_B"]
EOF
  awk '{ printf "\n[[tenants]]\nid = \"%s\"\ndomains = [\"%s\"]\npool = \"%s\"\n", substr($0, 1, 6), $0, (NR % 2 ? "a" : "b") }' "$WORK/hosts.txt"
}
tenantgate_config "$P_TG" "https_listen = \"127.0.0.1:$P_TG_TLS\"" "
[tls]
issuer = \"none\"
certs_dir = \"$WORK/tg-certs\"
state_dir = \"$WORK/tg-state\"
default_sni = \"t00001.example.test\"
redirect_http = false" >"$WORK/tenantgate.toml"
tenantgate_config "$P_TGL" "" "
[limits]
default_plan = \"generous\"
quota_file = \"$WORK/tg-quotas.json\"

[plans.generous]
requests_per_second = 1000000
burst = 1000000
max_concurrent = 100000
requests_per_day = 1000000000
requests_per_month = 10000000000" >"$WORK/tenantgate-limits.toml"

log "checking configs ($TENANTS tenants)"
nginx -t -q -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx.log" >&2 || { cat "$WORK/nginx.log" >&2; die "nginx config refused"; }
haproxy -c -q -f "$WORK/haproxy.cfg" >&2 || die "haproxy config refused"
"$BIN" check "$WORK/tenantgate.toml" >/dev/null || die "tenantgate config refused"
"$BIN" check "$WORK/tenantgate-limits.toml" >/dev/null || die "tenantgate (limits) config refused"

# ---------------------------------------------------------------- start
log "starting backends a :$P_A, b :$P_B; nginx :$P_NGINX, haproxy :$P_HAPROXY, tenantgate :$P_TG"
"$BIN" backend --listen "127.0.0.1:$P_A" --name a >"$WORK/backend-a.log" 2>&1 &
PID_A=$!; PIDS+=("$PID_A")
"$BIN" backend --listen "127.0.0.1:$P_B" --name b >"$WORK/backend-b.log" 2>&1 &
PID_B=$!; PIDS+=("$PID_B")
nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx.log" -g 'daemon off;' >>"$WORK/nginx.log" 2>&1 &
PID_NGINX=$!; PIDS+=("$PID_NGINX")
haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
PID_HAPROXY=$!; PIDS+=("$PID_HAPROXY")
"$BIN" serve --config "$WORK/tenantgate.toml" >"$WORK/tenantgate.log" 2>&1 &
PID_TG=$!; PIDS+=("$PID_TG")
"$BIN" serve --config "$WORK/tenantgate-limits.toml" >"$WORK/tenantgate-limits.log" 2>&1 &
PID_TGL=$!; PIDS+=("$PID_TGL")

wait_port "$P_A" "$PID_A" backend-a
wait_port "$P_B" "$PID_B" backend-b
wait_port "$P_NGINX" "$PID_NGINX" nginx
wait_port "$P_HAPROXY" "$PID_HAPROXY" haproxy
wait_port "$P_TG" "$PID_TG" tenantgate
wait_port "$P_TG_TLS" "$PID_TG" tenantgate
wait_port "$P_TGL" "$PID_TGL" tenantgate-limits
# nginx workers: wait until both are forked, and stop them on exit too.
for _ in $(seq 1 100); do [ "$(pgrep -c -P "$PID_NGINX" || true)" -ge 2 ] && break; sleep 0.05; done
for p in $(pgrep -P "$PID_NGINX" || true); do PIDS+=("$p"); done

TARGETS=(nginx haproxy tenantgate tglimits direct)
PROXIES=(nginx haproxy tenantgate tglimits)
declare -A PORT=([nginx]=$P_NGINX [haproxy]=$P_HAPROXY [tenantgate]=$P_TG [tglimits]=$P_TGL [direct]=$P_A)
declare -A TLS_PORT=([nginx]=$P_NGINX_TLS [haproxy]=$P_HAPROXY_TLS [tenantgate]=$P_TG_TLS)
declare -A PID=([nginx]=$PID_NGINX [haproxy]=$PID_HAPROXY [tenantgate]=$PID_TG [tglimits]=$PID_TGL)
declare -A HOSTS=([nginx]="$WORK/hosts.txt" [haproxy]="$WORK/hosts.txt" [tenantgate]="$WORK/hosts.txt" [tglimits]="$WORK/hosts.txt" [direct]="$WORK/host-one.txt")
declare -A LABEL=([nginx]=nginx [haproxy]=haproxy [tenantgate]=tenantgate [tglimits]="tenantgate, limits on" [direct]="backend a, direct")
declare -A SCENARIO=([nginx]="proxy, Host over $TENANTS tenants" [haproxy]="proxy, Host over $TENANTS tenants"
  [tenantgate]="proxy, Host over $TENANTS tenants" [tglimits]="proxy, Host over $TENANTS tenants, generous plan"
  [direct]="no proxy (ceiling), fixed Host")

# ---------------------------------------------------------------- parity
log "functional parity"
parity_fail=0
expect_backend() { # target host want
  local body
  body="$(curl -s --max-time 5 -H "Host: $2" "http://127.0.0.1:${PORT[$1]}/" || true)"
  if [[ "$body" == *"\"backend\":\"$3\""* ]]; then
    printf '   %-10s Host %-28s -> backend %s  ok\n' "$1" "$2" "$3" >&2
  else
    printf '   %-10s Host %-28s -> want backend %s, got: %.120s  FAIL\n' "$1" "$2" "$3" "$body" >&2
    parity_fail=1
  fi
}
expect_status() { # target host want
  local code
  code="$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' -H "Host: $2" "http://127.0.0.1:${PORT[$1]}/" || true)"
  if [ "$code" = "$3" ]; then
    printf '   %-10s Host %-28s -> %s  ok\n' "$1" "$2" "$3" >&2
  else
    printf '   %-10s Host %-28s -> want %s, got %s  FAIL\n' "$1" "$2" "$3" "$code" >&2
    parity_fail=1
  fi
}
for t in "${PROXIES[@]}"; do
  expect_backend "$t" t00001.example.test a
  expect_backend "$t" t00002.example.test b
  expect_backend "$t" "$LAST_HOST" "$LAST_POOL"
  expect_backend "$t" T00001.Example.TEST:8080 a
  expect_status "$t" unknown.example.test 421
done
if [ "$TLS" = 1 ]; then
  for t in nginx haproxy tenantgate; do
    body="$(curl -s --max-time 5 --http2 --cacert "$WORK/tls/ca.pem" --resolve "t00002.example.test:${TLS_PORT[$t]}:127.0.0.1" \
      -w ' %{http_version}' "https://t00002.example.test:${TLS_PORT[$t]}/" || true)"
    if [[ "$body" == *'"backend":"b"'*' 2' ]]; then
      printf '   %-10s HTTPS h2 t00002.example.test      -> backend b  ok\n' "$t" >&2
    else
      printf '   %-10s HTTPS h2 t00002.example.test      -> want backend b over h2, got: %.120s  FAIL\n' "$t" "$body" >&2
      parity_fail=1
    fi
  done
fi
[ "$parity_fail" = 0 ] || { echo "run.sh: functional parity failed; not measuring" >&2; exit 1; }


# ---------------------------------------------------------------- load
declare -A IDLE_RSS IDLE_PSS
for t in "${PROXIES[@]}"; do
  pids=$(descendants "${PID[$t]}")
  # shellcheck disable=SC2086
  IDLE_RSS[$t]=$(rss_kb $pids); IDLE_PSS[$t]=$(pss_kb $pids)
done
: >"$WORK/idle.tsv"
for t in "${PROXIES[@]}"; do
  printf '%s\t%s\t%s\n' "${LABEL[$t]}" "${IDLE_RSS[$t]}" "${IDLE_PSS[$t]}" >>"$WORK/idle.tsv"
done
printf '%s\t-\t-\n' "${LABEL[direct]}" >>"$WORK/idle.tsv"

mkdir -p "$WORK/wrk"
# Sample RSS under load 1 s before the end of a run (half-way for 1 s runs).
SAMPLE_AT=$(awk -v d="$DURATION" 'BEGIN { print (d > 2 ? d - 1 : d / 2) }')

wrk_run() { # target seconds log
  wrk -t "$WRK_THREADS" -c "$CONNS" -d "${2}s" --latency -s "$HERE/hosts.lua" \
    "http://127.0.0.1:${PORT[$1]}/" -- "${HOSTS[$1]}" >"$3" 2>&1 &
  WRK_PID=$!
}

if [ "$WARMUP" -gt 0 ]; then
  log "warm-up: ${WARMUP}s per target"
  for t in "${TARGETS[@]}"; do
    wrk_run "$t" "$WARMUP" "$WORK/wrk/warmup-$t.log"
    wait "$WRK_PID" || true
    WRK_PID=""
  done
fi

: >"$WORK/runs.tsv"
total=$((RUNS * ${#TARGETS[@]}))
n=0
for run in $(seq 1 "$RUNS"); do
  for t in "${TARGETS[@]}"; do
    n=$((n + 1))
    log "run $run/$RUNS: ${LABEL[$t]} (${DURATION}s, $CONNS connections) [$n/$total]"
    if [ "$t" = direct ]; then ppids=""; else ppids=$(descendants "${PID[$t]}"); fi
    bpids="$PID_A $PID_B"
    # shellcheck disable=SC2086
    { p0=$(cpu_ticks $ppids); b0=$(cpu_ticks $bpids); read -r i0 s0 t0 < <(sys_cpu); }
    logf="$WORK/wrk/$t-$run.log"
    wrk_run "$t" "$DURATION" "$logf"
    sleep "$SAMPLE_AT"
    if [ "$t" = direct ]; then rss="-" pss="-"; else
      # shellcheck disable=SC2086
      { rss=$(rss_kb $ppids); pss=$(pss_kb $ppids); }
    fi
    wrk_rc=0
    wait "$WRK_PID" || wrk_rc=$?
    WRK_PID=""
    # shellcheck disable=SC2086
    { p1=$(cpu_ticks $ppids); b1=$(cpu_ticks $bpids); read -r i1 s1 t1 < <(sys_cpu); }
    [ "$wrk_rc" = 0 ] || { echo "run.sh: wrk failed ($wrk_rc):" >&2; cat "$logf" >&2; }
    if [ "$t" = direct ]; then pcpu="-"; else pcpu=$((p1 - p0)); fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "${LABEL[$t]}" "${SCENARIO[$t]}" "$run" "$logf" \
      "$pcpu" "$((b1 - b0))" "$rss" "$pss" "$((i1 - i0))/$((t1 - t0))" "$((s1 - s0))/$((t1 - t0))" >>"$WORK/runs.tsv"
    grep -E "Requests/sec|Non-2xx|Socket errors" "$logf" | sed 's/^/   /' >&2 || true
  done
done
# ---------------------------------------------------------------- TLS
# Per run and proxy: new full handshakes (2 openssl s_time clients, no
# resumption, no SNI: every proxy serves its one certificate) and HTTP/2
# over TLS (h2load). Proxies interleaved like the HTTP runs.
: >"$WORK/tls.tsv"
if [ "$TLS" = 1 ]; then
  for run in $(seq 1 "$RUNS"); do
    for t in nginx haproxy tenantgate; do
      ppids=$(descendants "${PID[$t]}")
      log "run $run/$RUNS: ${LABEL[$t]} new TLS handshakes (${DURATION}s)"
      # shellcheck disable=SC2086
      p0=$(cpu_ticks $ppids)
      for i in 1 2; do
        openssl s_time -connect "127.0.0.1:${TLS_PORT[$t]}" -new -time "$DURATION" >"$WORK/st-$t-$run-$i.log" 2>&1 &
        ST[$i]=$!
      done
      wait "${ST[1]}" "${ST[2]}" || true
      # shellcheck disable=SC2086
      p1=$(cpu_ticks $ppids)
      conns=$(grep -h "connections in" "$WORK"/st-"$t"-"$run"-*.log | awk '{s += $1} END {print s + 0}')
      printf '%s\thandshakes\t%s\t%s\t%s\t%s\t0\n' "$t" "$run" "$conns" "$((p1 - p0))" "$DURATION" >>"$WORK/tls.tsv"
      log "   $conns handshakes"
      log "run $run/$RUNS: ${LABEL[$t]} HTTP/2 over TLS (${DURATION}s, 64 connections x 10 streams)"
      # shellcheck disable=SC2086
      p0=$(cpu_ticks $ppids)
      h2load -c 64 -m 10 -t "$WRK_THREADS" -D "$DURATION" -H ':authority: t00001.example.test' \
        "https://127.0.0.1:${TLS_PORT[$t]}/" >"$WORK/h2-$t-$run.log" 2>&1 || true
      # shellcheck disable=SC2086
      p1=$(cpu_ticks $ppids)
      ok=$(awk '/^status codes:/ {gsub(",", "", $3); print $3 + 0}' "$WORK/h2-$t-$run.log")
      bad=$(awk '/^status codes:/ {gsub(",", "", $5); gsub(",", "", $7); gsub(",", "", $9); print $5 + $7 + $9}' "$WORK/h2-$t-$run.log")
      errored=$(awk '/^requests:/ {for (i = 1; i < NF; i++) if ($(i + 1) ~ /^errored/) print $i + 0}' "$WORK/h2-$t-$run.log")
      printf '%s\th2\t%s\t%s\t%s\t%s\t%s\n' "$t" "$run" "${ok:-0}" "$((p1 - p0))" "$DURATION" "$(( ${bad:-0} + ${errored:-0} ))" >>"$WORK/tls.tsv"
      log "   ${ok:-0} 2xx, $(( ${bad:-0} + ${errored:-0} )) not 2xx or errored"
    done
  done
fi

for t in "${PROXIES[@]}"; do
  kill -0 "${PID[$t]}" 2>/dev/null || { echo "run.sh: $t died during the load" >&2; exit 1; }
done


# ---------------------------------------------------------------- report
CLK_TCK=$(getconf CLK_TCK)
check_rc=0
python3 "$HERE/summarize.py" --clk-tck "$CLK_TCK" "$WORK/runs.tsv" "$WORK/idle.tsv" >"$WORK/table.md" 2>"$WORK/check.txt" || check_rc=$?
: >"$WORK/tls.md"
if [ -s "$WORK/tls.tsv" ]; then
  python3 "$HERE/summarize.py" --tls --clk-tck "$CLK_TCK" "$WORK/tls.tsv" >"$WORK/tls.md" 2>>"$WORK/check.txt" || check_rc=1
fi
echo
cat "$WORK/table.md"
echo
if [ -s "$WORK/tls.md" ]; then cat "$WORK/tls.md"; echo; fi

if [ -n "$OUT" ]; then
  mkdir -p "$(dirname "$OUT")"
  cpu_model="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  mem="$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  os="$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-}")"
  rev="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  dirty="$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ", with uncommitted changes" || true)"
  {
    echo "# tenantgate next to nginx and HAProxy, $(date +%F)"
    echo
    echo "Command: \`benches/peers/run.sh$( [ -n "$SET_RUNS" ] && echo " --runs $RUNS")$( [ -n "$SET_DURATION" ] && echo " --duration $DURATION")\`"
    echo "($RUNS runs × ${DURATION} s per target, interleaved; ${WARMUP} s warm-up each; wrk ${WRK_THREADS} threads, $CONNS connections, HTTP/1.1 keep-alive; $TENANTS tenants)."
    echo "What the columns mean and the caveats: [benches/peers/README.md](../peers/README.md)."
    echo
    echo "Machine: $NPROC CPUs (\`nproc\`), $cpu_model, $mem RAM, Linux $(uname -r)${os:+ ($os)}."
    echo "Everything (wrk, the proxy under test, both echo backends) shares those CPUs."
    echo
    echo "Versions: $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v 2>/dev/null | head -n 1 | awk '{print "HAProxy " $3}'),"
    echo "$("$BIN" --version) (release build of $rev$dirty), $(wrk -v 2>&1 | head -n 1 | awk '{print "wrk " $2}')."
    echo
    cat "$WORK/table.md"
    echo
    if [ -s "$WORK/tls.md" ]; then
      echo "TLS, the same proxies ($RUNS runs × ${DURATION} s each, interleaved): new full handshakes from 2 \`openssl s_time -new\` clients"
      echo "(ECDSA P-256, TLS 1.3, no session resumption), and HTTP/2 over TLS from \`h2load -c 64 -m 10\` on one tenant host."
      echo "Server CPU is the proxy's utime+stime over the run divided by the handshakes or requests."
      echo
      cat "$WORK/tls.md"
      echo
    fi
    echo "Per run (machine_idle_% and steal_%: whole machine, all CPUs, from /proc/stat over the run;"
    echo "steal is time the hypervisor gave to other guests; both high or varying mean a noisy run):"
    echo
    echo '```'
    python3 "$HERE/summarize.py" --raw --clk-tck "$CLK_TCK" "$WORK/runs.tsv" "$WORK/idle.tsv" 2>/dev/null | column -t -s $'\t' || true
    echo '```'
    echo
    echo "Idle PSS (RSS with shared pages split between processes): $(awk -F'\t' '$2 != "-" { printf "%s%s %.1f MB", sep, $1, $3 / 1024; sep = ", " }' "$WORK/idle.tsv")."
    if [ -s "$WORK/check.txt" ]; then echo; echo "Problems:"; echo; sed 's/^/- /' "$WORK/check.txt"; fi
  } >"$OUT"
  echo "written: ${OUT#"$ROOT"/}"
fi

if [ "$check_rc" != 0 ]; then
  cat "$WORK/check.txt" >&2
  echo "run.sh: FAILED: some target had errors (see above)" >&2
  exit 1
fi
if [ "$QUICK" = 1 ]; then echo "quick check: ok (every target answered 2xx, no socket errors; TLS handshakes and HTTP/2 requests completed)"; fi
