#!/usr/bin/env bash
# tenantgate's lean path next to the hyper prototype (benches/hyper-proto),
# interleaved A B A B, in the hot-path scenario (benches/hot-path.sh:
# HTTP/1.1 keep-alive, wrk -t2 -c64, Host rotating over 10,000 tenants, two
# echo backends, access log off) and the peers harness's HTTP/2 scenario
# (benches/peers/run.sh: h2load -c 64 -m 10 -t 2 over TLS, one tenant host).
#
#   benches/hyper-proto/compare.sh [h1|h2|both] [PAIRS] [SECONDS]
#
# Per run: CPU µs per request (utime+stime of the proxy process over the
# run / requests served), split user/kernel, req/s, p99 (wrk --latency;
# HTTP/2: from h2load's per-request log), machine idle %. Both proxies run
# side by side for the whole call (the one not loaded is idle), so each pair
# sees the same backends and the same machine.
#
# Env: TENANTS (10000), CONNS (64), BIN (target/release/tenantgate),
# PROTO (benches/hyper-proto/target/release/hyper-proto), PROTO_ARGS (extra
# prototype arguments, e.g. "--client legacy"), PROTO2_ARGS (when set, a
# second prototype with these arguments joins the rotation as "hyper2":
# lean hyper hyper2 lean ...), WARMUP (2 s), OUT (temp dir, kept),
# PROFILE=perf (a flat perf profile of the proxy per run, cpu-clock at
# 999 Hz, into OUT/perf-SCENARIO-PAIR-ENGINE.data) or PROFILE=syscalls
# (strace -c -f per run, system calls per request; strace slows the proxy
# down, so that run's CPU figures mean nothing) or PROFILE=callgrind (both
# proxies under valgrind's callgrind, instrumented during each measured run
# only: user-space instructions per request, which contention does not move;
# the kernel's share is not counted; use CONNS=8 and short runs).
# ABBA=1: every second pair runs in the reverse order (B A), so an order
# effect inside a pair cancels out. Everything runs on 127.0.0.1 and is stopped by PID on exit.
set -euo pipefail

SCEN="${1:-both}"
PAIRS="${2:-3}"
SECS="${3:-10}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${BIN:-$ROOT/target/release/tenantgate}"
PROTO="${PROTO:-$ROOT/benches/hyper-proto/target/release/hyper-proto}"
PROTO_ARGS="${PROTO_ARGS:-}"
PROTO2_ARGS="${PROTO2_ARGS:-}"
TENANTS="${TENANTS:-10000}"
CONNS="${CONNS:-64}"
WARMUP="${WARMUP:-2}"
case "$SCEN" in h1 | h2 | both) ;; *) echo "usage: $0 [h1|h2|both] [PAIRS] [SECONDS]" >&2; exit 2 ;; esac
for t in wrk h2load openssl curl python3; do command -v "$t" >/dev/null || { echo "compare.sh: needs $t" >&2; exit 2; }; done
[ -x "$BIN" ] || { echo "compare.sh: build tenantgate: cargo build --release" >&2; exit 2; }
[ -x "$PROTO" ] || { echo "compare.sh: build the prototype: (cd benches/hyper-proto && cargo build --release)" >&2; exit 2; }

OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/hyper-compare.XXXXXX")}"
mkdir -p "$OUT"
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

read -r P_A P_B P_TG P_TGS P_HY P_HYS P_HY2 P_HY2S < <(python3 - <<'PY'
import random, socket
held, ports = [], []
for port in random.sample(range(20000, 32000), 400):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close(); continue
    held.append(s); ports.append(port)
    if len(ports) == 8: break
print(*ports)
PY
)

seq -f "t%05g.example.test" 1 "$TENANTS" >"$OUT/hosts.txt"
# tenantgate's TLS listener: one ECDSA P-256 certificate for *.example.test,
# as the peers harness makes it.
mkdir -p "$OUT/tls" "$OUT/tg-certs"
openssl ecparam -name prime256v1 -genkey -noout -out "$OUT/tls/ca.key" 2>/dev/null
openssl req -x509 -new -key "$OUT/tls/ca.key" -subj "/CN=compare CA" -days 2 -out "$OUT/tls/ca.pem" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$OUT/tls/leaf.key" 2>/dev/null
openssl req -new -key "$OUT/tls/leaf.key" -subj "/CN=*.example.test" -out "$OUT/tls/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:*.example.test\n' >"$OUT/tls/san.ext"
openssl x509 -req -in "$OUT/tls/leaf.csr" -CA "$OUT/tls/ca.pem" -CAkey "$OUT/tls/ca.key" -CAcreateserial \
  -days 2 -extfile "$OUT/tls/san.ext" -out "$OUT/tls/leaf.pem" 2>/dev/null
cat "$OUT/tls/leaf.pem" "$OUT/tls/leaf.key" >"$OUT/tg-certs/wildcard.pem"
{
  printf '[gateway]\nhttp_listen = "127.0.0.1:%s"\nhttps_listen = "127.0.0.1:%s"\nthreads = 2\nshutdown_grace_secs = 0\n\n' "$P_TG" "$P_TGS"
  printf '[telemetry]\naccess_log = false\n\n'
  printf '[tls]\nissuer = "none"\ncerts_dir = "%s"\nstate_dir = "%s"\ndefault_sni = "t00001.example.test"\nredirect_http = false\n\n' \
    "$OUT/tg-certs" "$OUT/tg-state"
  printf '[pools.a]\nupstreams = ["127.0.0.1:%s"]\n\n[pools.b]\nupstreams = ["127.0.0.1:%s"]\n' "$P_A" "$P_B"
  awk '{ printf "\n[[tenants]]\nid = \"%s\"\ndomains = [\"%s\"]\npool = \"%s\"\n", substr($0, 1, 6), $0, (NR % 2 ? "a" : "b") }' "$OUT/hosts.txt"
} >"$OUT/tenantgate.toml"

"$BIN" backend --listen "127.0.0.1:$P_A" --name a >"$OUT/backend-a.log" 2>&1 & PIDS+=($!)
"$BIN" backend --listen "127.0.0.1:$P_B" --name b >"$OUT/backend-b.log" 2>&1 & PIDS+=($!)
WRAP=()
if [ "${PROFILE:-}" = callgrind ]; then
  WRAP=(valgrind --tool=callgrind --instr-atstart=no --trace-children=no --callgrind-out-file="$OUT/callgrind-%p.out")
fi
"${WRAP[@]}" "$BIN" serve --config "$OUT/tenantgate.toml" >"$OUT/tenantgate.log" 2>&1 & PID_TG=$!; PIDS+=("$PID_TG")
# shellcheck disable=SC2086
"${WRAP[@]}" "$PROTO" --http "127.0.0.1:$P_HY" --https "127.0.0.1:$P_HYS" --pool-a "127.0.0.1:$P_A" --pool-b "127.0.0.1:$P_B" \
  --tenants "$TENANTS" --threads 2 $PROTO_ARGS >"$OUT/hyper.log" 2>&1 & PID_HY=$!; PIDS+=("$PID_HY")

declare -A PID=([lean]=$PID_TG [hyper]=$PID_HY)
declare -A PORT=([lean]=$P_TG [hyper]=$P_HY)
declare -A TLS_PORT=([lean]=$P_TGS [hyper]=$P_HYS)
ENGINES=(lean hyper)
if [ -n "$PROTO2_ARGS" ]; then
  # shellcheck disable=SC2086
  "${WRAP[@]}" "$PROTO" --http "127.0.0.1:$P_HY2" --https "127.0.0.1:$P_HY2S" --pool-a "127.0.0.1:$P_A" --pool-b "127.0.0.1:$P_B" \
    --tenants "$TENANTS" --threads 2 $PROTO2_ARGS >"$OUT/hyper2.log" 2>&1 & PID[hyper2]=$!; PIDS+=("${PID[hyper2]}")
  PORT[hyper2]=$P_HY2; TLS_PORT[hyper2]=$P_HY2S
  ENGINES+=(hyper2)
fi

for t in "${ENGINES[@]}"; do
  for _ in $(seq 1 1800); do
    curl -s -o /dev/null -H "Host: t00001.example.test" "http://127.0.0.1:${PORT[$t]}/" && break
    kill -0 "${PID[$t]}" 2>/dev/null || { echo "compare.sh: $t exited" >&2; cat "$OUT"/*.log >&2; exit 1; }
    sleep 0.1
  done
  # Parity: the right backend, the trusted headers, and HTTP/2 over TLS.
  body=$(curl -s -H "Host: T00002.Example.TEST:8080" -H "X-Tenant-Id: evil" -H "X-Forwarded-For: 6.6.6.6" \
    "http://127.0.0.1:${PORT[$t]}/")
  case "$body" in *'"backend":"b"'*) ;; *) echo "compare.sh: $t: want backend b, got $body" >&2; exit 1 ;; esac
  h2=$(curl -s -k --http2 --resolve "t00001.example.test:${TLS_PORT[$t]}:127.0.0.1" -w ' %{http_version}' \
    "https://t00001.example.test:${TLS_PORT[$t]}/")
  case "$h2" in *'"backend":"a"'*' 2') ;; *) echo "compare.sh: $t: HTTP/2 want backend a, got $h2" >&2; exit 1 ;; esac
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: unknown.example.test" "http://127.0.0.1:${PORT[$t]}/")
  [ "$code" = 421 ] || { echo "compare.sh: $t: unknown host got $code, want 421" >&2; exit 1; }
  printf '%s\n%s\n' "$body" "$h2" >"$OUT/parity-$t.txt"
done

ticks() { awk '{ print $14, $15 }' "/proc/$1/stat"; }
# Context switches of all a process's threads: voluntary, involuntary.
ctxsw() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ { v += $2 } /^nonvoluntary_ctxt_switches/ { n += $2 } END { print v + 0, n + 0 }'; }
machine() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat; }
HZ=$(getconf CLK_TCK)

load_h1() { # target seconds log
  wrk -t2 -c"$CONNS" -d"${2}s" --latency -s "$ROOT/benches/peers/hosts.lua" "http://127.0.0.1:${PORT[$1]}/" -- "$OUT/hosts.txt" >"$3" 2>&1
}
load_h2() { # target seconds log [per-request log]
  h2load -c "$CONNS" -m 10 -t 2 -D "$2" -H ':authority: t00001.example.test' ${4:+--log-file="$4"} \
    "https://127.0.0.1:${TLS_PORT[$1]}/" >"$3" 2>&1 || true
}

# One measured run: prints a TSV row.
run() { # scenario pair target
  local s=$1 pair=$2 t=$3 log="$OUT/$1-$2-$3.log" u0 s0 u1 s1 m0 i0 m1 i1 v0 n0 v1 n1 reqs rps p99 errs
  local prof=""
  case "${PROFILE:-}" in
    perf) perf record -e cpu-clock -F 999 -p "${PID[$t]}" -o "$OUT/perf-$s-$pair-$t.data" -- sleep "$SECS" \
      >"$OUT/perf-$s-$pair-$t.log" 2>&1 & prof=$! ;;
    syscalls) strace -c -f -p "${PID[$t]}" -o "$OUT/strace-$s-$pair-$t.txt" 2>/dev/null & prof=$!; sleep 0.5 ;;
    callgrind) callgrind_control -i on "${PID[$t]}" >/dev/null ;;
  esac
  read -r u0 s0 < <(ticks "${PID[$t]}")
  read -r m0 i0 < <(machine)
  read -r v0 n0 < <(ctxsw "${PID[$t]}")
  if [ "$s" = h1 ]; then
    load_h1 "$t" "$SECS" "$log"
  else
    load_h2 "$t" "$SECS" "$log" "$OUT/$s-$pair-$t.req.tsv"
  fi
  read -r u1 s1 < <(ticks "${PID[$t]}")
  read -r m1 i1 < <(machine)
  read -r v1 n1 < <(ctxsw "${PID[$t]}")
  if [ -n "$prof" ]; then
    [ "$PROFILE" = syscalls ] && kill -INT "$prof" 2>/dev/null
    wait "$prof" || true
  fi
  if [ "${PROFILE:-}" = callgrind ]; then
    callgrind_control -d "${PID[$t]}" >/dev/null
    callgrind_control -i off "${PID[$t]}" >/dev/null
  fi
  if [ "$s" = h1 ]; then
    reqs=$(awk '/requests in/ { print $1 }' "$log")
    rps=$(awk '/Requests\/sec/ { print $2 }' "$log")
    p99=$(awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub("us", "", v); v /= 1000 } else if (v ~ /ms$/) { sub("ms", "", v) } else if (v ~ /s$/) { sub("s", "", v); v *= 1000 }; printf "%.2f", v }' "$log")
    errs=$(awk '/Non-2xx/ { n += $NF } /Socket errors/ { n += 1 } END { print n + 0 }' "$log")
  else
    reqs=$(awk '/^status codes:/ { gsub(",", "", $3); print $3 + 0 }' "$log")
    rps=$(awk '/^finished in/ { gsub(",", "", $4); print $4 + 0 }' "$log")
    p99=$(python3 - "$OUT/$s-$pair-$t.req.tsv" <<'PY'
import sys
v = sorted(int(l.split("\t")[2]) for l in open(sys.argv[1]) if l.strip())
print("%.2f" % (v[int(len(v) * 0.99) - 1] / 1000) if v else "nan")
PY
)
    rm -f "$OUT/$s-$pair-$t.req.tsv"
    errs=$(awk '/^requests:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^errored/) print $i + 0 }' "$log")
  fi
  if [ "${PROFILE:-}" = callgrind ]; then
    sleep 1
    local f ir
    f=$(ls -t "$OUT/callgrind-${PID[$t]}.out".* | head -n 1)
    ir=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
    mv "$f" "$OUT/callgrind-$s-$pair-$t.out"
    awk -v ir="$ir" -v n="$reqs" -v t="$t" -v s="$s" 'BEGIN { printf "%s %s: %d instructions, %.0f per request\n", s, t, ir, ir / n }' \
      | tee "$OUT/instructions-$s-$pair-$t.txt" >&2
  fi
  if [ "${PROFILE:-}" = syscalls ]; then
    awk -v n="$reqs" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ { printf "%-16s %6.2f per request\n", $NF, $4 / n }' \
      "$OUT/strace-$s-$pair-$t.txt" | sort -k2 -rn | head -12 >"$OUT/syscalls-$s-$pair-$t.txt"
  fi
  awk -v s="$s" -v pair="$pair" -v t="$t" -v n="$reqs" -v rps="$rps" -v p99="$p99" -v e="${errs:-0}" \
    -v dv="$((v1 - v0))" -v dn="$((n1 - n0))" -v du="$((u1 - u0))" -v ds="$((s1 - s0))" -v dm="$((m1 - m0))" -v di="$((i1 - i0))" -v hz="$HZ" \
    'BEGIN { printf "%s\t%s\t%s\t%d\t%.0f\t%s\t%.2f\t%.1f\t%.1f\t%.1f\t%s\t%d\t%.3f\t%.3f\n", s, pair, t, n, rps, p99, (du + ds) / hz,
      (du + ds) / hz * 1e6 / n, du / hz * 1e6 / n, ds / hz * 1e6 / n, (dm + di) ? sprintf("%.1f", 100 * di / (dm + di)) : "-", e,
      dv / n, dn / n }'
}

scenarios=(h1 h2)
[ "$SCEN" = both ] || scenarios=("$SCEN")
RES="$OUT/runs.tsv"
printf 'scenario\tpair\tengine\trequests\treq/s\tp99_ms\tcpu_s\tus/req\tuser_us\tkernel_us\tidle_%%\terrors\tvol_cs/req\tinvol_cs/req\n' >"$RES"
for s in "${scenarios[@]}"; do
  if [ "$WARMUP" -gt 0 ]; then
    for t in "${ENGINES[@]}"; do
      if [ "$s" = h1 ]; then load_h1 "$t" "$WARMUP" /dev/null; else load_h2 "$t" "$WARMUP" /dev/null; fi
    done
  fi
  for pair in $(seq 1 "$PAIRS"); do
    order=("${ENGINES[@]}")
    if [ "${ABBA:-0}" = 1 ] && [ $((pair % 2)) = 0 ]; then
      order=(); for ((k = ${#ENGINES[@]} - 1; k >= 0; k--)); do order+=("${ENGINES[k]}"); done
    fi
    for t in "${order[@]}"; do
      row=$(run "$s" "$pair" "$t")
      printf '%s\n' "$row" >>"$RES"
      printf '%s  (load %s)\n' "$row" "$(cut -d' ' -f1 /proc/loadavg)" >&2
    done
  done
done
for t in "${ENGINES[@]}"; do kill -0 "${PID[$t]}" 2>/dev/null || { echo "compare.sh: $t died during the load" >&2; exit 1; }; done

python3 - "$RES" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
for s in sorted({r["scenario"] for r in rows}):
    rs = [r for r in rows if r["scenario"] == s]
    print(f"\n{s}: pair  engine  req/s  p99_ms  us/req (user+kernel)  idle%  errors")
    ratios, ratios2 = [], []
    for p in sorted({r["pair"] for r in rs}, key=int):
        by = {r["engine"]: r for r in rs if r["pair"] == p}
        for e in ("lean", "hyper", "hyper2"):
            r = by.get(e)
            if r:
                print(f"  {p}  {e:5}  {r['req/s']:>7}  {r['p99_ms']:>6}  {r['us/req']:>5} ({r['user_us']}+{r['kernel_us']})  {r['idle_%']}  {r['errors']}")
        if "lean" in by and "hyper" in by:
            ratios.append(float(by["hyper"]["us/req"]) / float(by["lean"]["us/req"]))
            print(f"     hyper/lean CPU per request: {ratios[-1]:.3f}")
        if "lean" in by and "hyper2" in by:
            ratios2.append(float(by["hyper2"]["us/req"]) / float(by["lean"]["us/req"]))
            print(f"     hyper2/lean CPU per request: {ratios2[-1]:.3f}")
    med = lambda e, k: statistics.median(float(r[k]) for r in rs if r["engine"] == e)
    for e in sorted({r["engine"] for r in rs}, key=["lean", "hyper", "hyper2"].index):
        print(f"  median {e:5}: {med(e, 'req/s'):.0f} req/s, p99 {med(e, 'p99_ms'):.2f} ms, {med(e, 'us/req'):.1f} us/req"
              f" (user {med(e, 'user_us'):.1f}, kernel {med(e, 'kernel_us'):.1f})")
    if ratios:
        print(f"  median of pair ratios hyper/lean: {statistics.median(ratios):.3f}")
    if ratios2:
        print(f"  median of pair ratios hyper2/lean: {statistics.median(ratios2):.3f}")
PY
echo "kept: $OUT" >&2
