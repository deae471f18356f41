#!/usr/bin/env bash
# Provisioning: on a gateway with N tenants (default 100,000, one tenant file
# each under tenants/, as the admin API writes them), time PUT
# /v1/tenants/{id} and the first proxied request on the new tenant's host
# after the PUT returns. Prints median, p90 and max of each.
# Usage: benches/provision.sh [tenants=100000] [puts=20]
#   benches/provision.sh 0 10000   provisions 10,000 tenants one PUT at a time
#                                  on an empty gateway
#   FLEET=1 benches/provision.sh   fleet mode: gateway A (with the tenant files)
#                                  and B (none) share one redis-server; B
#                                  loads the registry from Redis, and the
#                                  timing is from the PUT on A returning to
#                                  the first routed request on B
# Loopback only; bounded in time; everything it starts is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100000}"
PUTS="${2:-20}"
. benches/common.sh

"$BIN" backend --listen 127.0.0.1:19301 --name a >/dev/null & PIDS+=($!)
TOKEN="provision-bench-secret-0123456789"
SHA=$(printf '%s' "$TOKEN" | sha256sum | cut -d' ' -f1)
"$BIN" gen-config --tenants "$N" --upstreams 127.0.0.1:19301 \
  --http-listen 127.0.0.1:18380 --metrics-listen 127.0.0.1:19390 >"$WORK/gen.toml"
# The main file: everything before the first tenant, plus the admin API.
awk '/^\[\[tenants\]\]/ {exit} {print}' "$WORK/gen.toml" >"$WORK/tenantgate.toml"
sed -i 's/^\[gateway\]$/[gateway]\nadmin_listen = "127.0.0.1:19391"\nshutdown_grace_secs = 0/' "$WORK/tenantgate.toml"
printf '\n[[admin.tokens]]\nname = "bench"\nscope = "operator"\nsha256 = "%s"\n' "$SHA" >>"$WORK/tenantgate.toml"
# One file per tenant, as the admin API writes them.
mkdir -p "$WORK/tenants"
awk -v dir="$WORK/tenants" '
  /^\[\[tenants\]\]/ { if (f) close(f); f = ""; next }
  /^id = / { id = $3; gsub(/"/, "", id); f = dir "/" id ".toml" }
  f && NF { print > f }
' "$WORK/gen.toml"
echo "config: $N tenants as $(find "$WORK/tenants" -name '*.toml' | wc -l) tenant files"
PROXY_PORT=18380
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
if [ -n "${FLEET:-}" ]; then
  command -v redis-server >/dev/null || { echo "install redis-server"; exit 1; }
  mkdir -p "$WORK/redis"
  redis-server --bind 127.0.0.1 --port 19379 --save "" --appendonly no --dir "$WORK/redis" >/dev/null & PIDS+=($!)
  until redis-cli -p 19379 ping >/dev/null 2>&1; do sleep 0.05; done
  printf '\n[store]\nredis_url = "redis://127.0.0.1:19379"\n' >>"$WORK/tenantgate.toml"
  mkdir -p "$WORK/b/tenants"
  sed 's/127.0.0.1:18380/127.0.0.1:18381/; s/127.0.0.1:19390/127.0.0.1:19392/; s/127.0.0.1:19391/127.0.0.1:19393/' \
    "$WORK/tenantgate.toml" >"$WORK/b/tenantgate.toml"
  PROXY_PORT=18381
fi

start=$(date +%s.%N)
"$BIN" serve --config "$WORK/tenantgate.toml" 2>"$WORK/gw.log" & GW=$!; PIDS+=($GW)
wait_port 19391 "$GW" "$WORK/gw.log"
echo "start-up: admin API listening after $(since "$start") s"
echo "RSS before: $(( $(awk '$1 == "VmRSS:" {print $2}' "/proc/$GW/status") / 1024 )) MB"
if [ -n "${FLEET:-}" ]; then
  echo "A: registry store version $(metric 19390 tenantgate_registry_store_version) (seeded from its files)"
  start=$(date +%s.%N)
  "$BIN" serve --config "$WORK/b/tenantgate.toml" 2>"$WORK/b.log" & B=$!; PIDS+=($B)
  until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: t$(printf %06d "$N").saas.example" http://127.0.0.1:18381/ 2>/dev/null)" = 200 ]; do
    kill -0 "$B" 2>/dev/null || { echo "gateway B exited:"; tail "$WORK/b.log"; exit 1; }
    sleep 0.05
  done
  echo "B: started with no tenant files, routing all $N from Redis after $(since "$start") s; RSS $(( $(awk '$1 == "VmRSS:" {print $2}' "/proc/$B/status") / 1024 )) MB"
fi

timeout 1800 python3 - "$TOKEN" "$PUTS" "$PROXY_PORT" <<'EOF'
import http.client, json, statistics, sys, time

token, puts, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
proxy = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
put_ms, first_ms, tries = [], [], []
began = time.perf_counter()
for i in range(puts):
    tid = f"new{i:04d}"
    host = f"{tid}.example.org"
    admin = http.client.HTTPConnection("127.0.0.1", 19391, timeout=60)
    body = json.dumps({"domains": [host], "pool": "shared"})
    t0 = time.perf_counter()
    admin.request("PUT", f"/v1/tenants/{tid}", body,
                  {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    r = admin.getresponse()
    r.read()
    t1 = time.perf_counter()
    if r.status not in (200, 201):
        sys.exit(f"PUT {tid}: {r.status}")
    n = 0
    while True:
        n += 1
        proxy.request("GET", "/", headers={"Host": host})
        p = proxy.getresponse()
        p.read()
        if p.status == 200:
            break
        if time.perf_counter() - t1 > 10:
            sys.exit(f"{host}: still {p.status} 10 s after the PUT returned")
    t2 = time.perf_counter()
    put_ms.append((t1 - t0) * 1e3)
    first_ms.append((t2 - t1) * 1e3)
    tries.append(n)

def line(name, xs):
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(len(xs) * 0.9))]
    print(f"{name}: median {statistics.median(xs):.1f} ms, p90 {p90:.1f} ms, max {xs[-1]:.1f} ms")

print(f"{puts} PUTs of new tenants, one at a time: {time.perf_counter() - began:.1f} s in all")
line("PUT /v1/tenants/{id} (validate, write the file, swap)", put_ms)
line(f"PUT returned -> first proxied 200 on the new host (port {port})", first_ms)
print(f"requests needed for the first 200: max {max(tries)} (1 = routed on the first request)")
EOF
echo "RSS after: $(( $(awk '$1 == "VmRSS:" {print $2}' "/proc/$GW/status") / 1024 )) MB"
