#!/usr/bin/env bash
# What TLS to a backend costs (#19): req/s and gateway CPU µs per request
# through tenantgate to the same nginx backend, plain and over TLS (ECDSA
# P-256 certificate from a private CA, verified; kept-alive connections;
# TLS 1.3 offered by both sides), in interleaved runs so drift on a shared
# box hits both alike. nginx's CPU per request is printed too: on one box
# the backend's own TLS work takes cores from the gateway and wrk.
#
#   benches/upstream-tls.sh [ROUNDS] [SECONDS]    (default 4 rounds of 5 s each way)
#
# Env: CONNS (32), THREADS (2), BIN (target/release/tenantgate), OUT (a temp
# dir; kept, path printed). Needs wrk, nginx and openssl. Everything runs on
# 127.0.0.1 and is stopped by PID on exit.
set -euo pipefail

ROUNDS="${1:-4}"
SECS="${2:-5}"
CONNS="${CONNS:-32}"
THREADS="${THREADS:-2}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${BIN:-$ROOT/target/release/tenantgate}"
for t in wrk nginx openssl; do command -v "$t" >/dev/null || { echo "upstream-tls.sh: needs $t" >&2; exit 2; }; done
[ -x "$BIN" ] || { echo "upstream-tls.sh: build first: cargo build --release" >&2; exit 2; }

OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/tenantgate-upstream-tls.XXXXXX")}"
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

read -r P_PLAIN P_TLS P_TG < <(python3 - <<'PY'
import random, socket
ports = []
for port in random.sample(range(20000, 32000), 200):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    ports.append(port)
    if len(ports) == 3: break
print(*ports)
PY
)

# A private CA and the backend's certificate.
cd "$OUT"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -subj "/CN=bench CA" -days 2 -out ca.pem 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out backend.key 2>/dev/null
openssl req -new -key backend.key -subj "/CN=backend.internal" -out backend.csr 2>/dev/null
printf 'subjectAltName=DNS:backend.internal\nbasicConstraints=CA:FALSE\n' >ext.cnf
openssl x509 -req -in backend.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out backend.pem 2>/dev/null
cd - >/dev/null

mkdir -p "$OUT/nginx/logs"
cat >"$OUT/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path $OUT/nginx;
  proxy_temp_path $OUT/nginx;
  fastcgi_temp_path $OUT/nginx;
  uwsgi_temp_path $OUT/nginx;
  scgi_temp_path $OUT/nginx;
  server { listen 127.0.0.1:$P_PLAIN; location / { return 200 "hello from the backend\n"; } }
  server {
    listen 127.0.0.1:$P_TLS ssl;
    ssl_certificate $OUT/backend.pem;
    ssl_certificate_key $OUT/backend.key;
    # nginx before 1.23.4 offers TLS 1.0-1.2 only by default.
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { return 200 "hello from the backend\n"; }
    location = /tls { return 200 "\$ssl_protocol \$ssl_cipher\n"; }
  }
}
CONF
nginx -p "$OUT/nginx" -c "$OUT/nginx.conf" & PID_NGINX=$!; PIDS+=("$PID_NGINX")

cat >"$OUT/tenantgate.toml" <<CONF
[gateway]
http_listen = "127.0.0.1:$P_TG"
threads = $THREADS

[telemetry]
access_log = false

[pools.plain]
upstreams = ["127.0.0.1:$P_PLAIN"]

[pools.tls]
upstreams = ["127.0.0.1:$P_TLS"]
tls = true
tls_server_name = "backend.internal"
tls_ca_file = "ca.pem"

[[tenants]]
id = "plain"
domains = ["plain.example.test"]
pool = "plain"

[[tenants]]
id = "tls"
domains = ["tls.example.test"]
pool = "tls"
CONF
"$BIN" serve --config "$OUT/tenantgate.toml" >"$OUT/tenantgate.log" 2>&1 & PID_TG=$!; PIDS+=("$PID_TG")
for host in plain tls; do
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $host.example.test" "http://127.0.0.1:$P_TG/")" = 200 ] && break
    kill -0 "$PID_TG" 2>/dev/null || { cat "$OUT/tenantgate.log" >&2; exit 1; }
    sleep 0.1
  done
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $host.example.test" "http://127.0.0.1:$P_TG/")" = 200 ] ||
    { echo "upstream-tls.sh: $host does not answer 200" >&2; cat "$OUT/tenantgate.log" >&2; exit 1; }
done

ticks() { awk '{ print $14 + $15 }' "/proc/${1:-$PID_TG}/stat"; }
HZ=$(getconf CLK_TCK)
# One run: prints "req/s gateway_cpu_us_per_request nginx_cpu_us_per_request".
run() {
  local t0 t1 n0 n1 out rps n
  t0=$(ticks); n0=$(ticks "$PID_NGINX")
  out=$(wrk -t2 -c"$CONNS" -d"${SECS}s" -H "Host: $1.example.test" "http://127.0.0.1:$P_TG/")
  t1=$(ticks); n1=$(ticks "$PID_NGINX")
  rps=$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")
  n=$(awk '/requests in/ { print $1 }' <<<"$out")
  awk -v r="$rps" -v n="$n" -v d=$((t1 - t0)) -v dn=$((n1 - n0)) -v hz="$HZ" \
    'BEGIN { printf "%.0f %.1f %.1f\n", r, d / hz * 1e6 / n, dn / hz * 1e6 / n }'
}
# Warm-up: kept-alive backend connections both ways.
wrk -t2 -c"$CONNS" -d2s -H "Host: plain.example.test" "http://127.0.0.1:$P_TG/" >/dev/null
wrk -t2 -c"$CONNS" -d2s -H "Host: tls.example.test" "http://127.0.0.1:$P_TG/" >/dev/null

echo "| round | plain req/s | TLS req/s | TLS/plain | plain µs CPU/req | TLS µs CPU/req | nginx plain µs/req | nginx TLS µs/req |"
echo "|---|---|---|---|---|---|---|---|"
SUM_P=0; SUM_T=0
for r in $(seq 1 "$ROUNDS"); do
  # Alternate which goes first.
  if [ $((r % 2)) -eq 1 ]; then read -r RP CP NP < <(run plain); read -r RT CT NT < <(run tls)
  else read -r RT CT NT < <(run tls); read -r RP CP NP < <(run plain); fi
  SUM_P=$((SUM_P + RP)); SUM_T=$((SUM_T + RT))
  awk -v r="$r" -v rp="$RP" -v rt="$RT" -v cp="$CP" -v ct="$CT" -v np="$NP" -v nt="$NT" \
    'BEGIN { printf "| %d | %d | %d | %.3f | %s | %s | %s | %s |\n", r, rp, rt, rt / rp, cp, ct, np, nt }'
done
awk -v p="$SUM_P" -v t="$SUM_T" -v n="$ROUNDS" \
  'BEGIN { printf "| all | %.0f | %.0f | %.3f (TLS costs %.1f %% req/s) | | | | |\n", p / n, t / n, t / p, (1 - t / p) * 100 }'
echo "negotiated between the gateway and nginx: $(curl -s -H "Host: tls.example.test" "http://127.0.0.1:$P_TG/tls")"
BACKEND_CONNS=$(ss -Htn state established "( dport = :$P_TLS )" | wc -l)
echo
echo "established gateway→backend TLS connections at the end: $BACKEND_CONNS (kept alive, not one per request)"
echo "output kept in $OUT"
