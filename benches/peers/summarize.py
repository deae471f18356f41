#!/usr/bin/env python3
"""Aggregate the runs recorded by benches/peers/run.sh into one markdown table.

Input (tab-separated, written by run.sh):
  runs.tsv  target  scenario  run  wrk_log  proxy_cpu_ticks  backend_cpu_ticks  rss_load_kb  pss_load_kb
            idle_ticks/total_ticks  steal_ticks/total_ticks   (whole machine, /proc/stat)
  idle.tsv  target  rss_idle_kb  pss_idle_kb
Targets appear in the table in the order of their first line in runs.tsv.

  tls.tsv   target  handshakes|h2  run  count  proxy_cpu_ticks  seconds  failed   (with --tls)

Prints the table on stdout. With --raw, prints one line per run instead.
With --tls, summarises tls.tsv: per proxy, new handshakes and HTTP/2
requests per second and server CPU per handshake or request.
Exit status 1 if any target answered no request, or any run saw non-2xx/3xx
responses or socket errors (wrk's "Non-2xx or 3xx responses" and
"Socket errors" lines); the reasons go to stderr.
"""

import argparse
import re
import statistics
import sys

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unknown latency {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(path):
    """Requests, req/s, p50 and p99 (ms), non-2xx/3xx count, socket errors."""
    out = {"requests": 0, "rps": 0.0, "p50": None, "p99": None, "non2xx": 0, "sockerr": 0}
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    for line in text.splitlines():
        s = line.strip()
        if m := re.match(r"(\d+) requests in ", s):
            out["requests"] = int(m.group(1))
        elif s.startswith("Requests/sec:"):
            out["rps"] = float(s.split()[1])
        elif s.startswith("50% "):
            out["p50"] = to_ms(s.split()[1])
        elif s.startswith("99% "):
            out["p99"] = to_ms(s.split()[1])
        elif s.startswith("Non-2xx or 3xx responses:"):
            out["non2xx"] = int(s.split()[-1])
        elif s.startswith("Socket errors:"):
            out["sockerr"] = sum(int(x) for x in re.findall(r"\d+", s))
    return out


def ratio(text):
    """'a/b' -> 100*a/b, or None."""
    a, _, b = text.partition("/")
    return 100.0 * int(a) / int(b) if b and int(b) > 0 else None


def fmt(x, digits):
    return "—" if x is None else f"{x:,.{digits}f}"


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def tls_table(path, clk_tck):
    """The TLS table; exit status 1 if a run failed requests or completed none."""
    runs, order = {}, []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            target, kind, _run, count, ticks, secs, failed = line.rstrip("\n").split("\t")
            key = (target, kind)
            if key not in runs:
                order.append(key)
                runs[key] = []
            runs[key].append((int(count), int(ticks), float(secs), int(failed)))
    label = {"handshakes": "new TLS handshakes", "h2": "HTTP/2 over TLS requests"}
    print("| target | scenario | per second (median) | per second (min–max) | server CPU µs each (median) | failed |")
    print("|---|---|--:|--:|--:|--:|")
    problems = []
    for target, kind in order:
        rs = runs[(target, kind)]
        rates = [c / s for c, _, s, _ in rs]
        cpu = [t / clk_tck * 1e6 / c for c, t, _, _ in rs if c > 0]
        failed = sum(f for *_, f in rs)
        print(f"| {target} | {label[kind]} | {fmt(median(rates), 0)} | {fmt(min(rates), 0)}–{fmt(max(rates), 0)} "
              f"| {fmt(median(cpu), 1)} | {failed} |")
        if failed or any(c == 0 for c, *_ in rs):
            problems.append(f"{target}: {label[kind]}: {failed} failed, or a run completed none")
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    return 1 if problems else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("idle", nargs="?")
    ap.add_argument("--clk-tck", type=int, default=100)
    ap.add_argument("--raw", action="store_true")
    ap.add_argument("--tls", action="store_true", help="summarise tls.tsv (given as RUNS)")
    args = ap.parse_args()
    if args.tls:
        return tls_table(args.runs, args.clk_tck)

    order, rows, scenario = [], {}, {}
    with open(args.runs) as f:
        for line in f:
            if not line.strip():
                continue
            target, scen, run, log, pcpu, bcpu, rss, pss, idle_f, steal_f = line.rstrip("\n").split("\t")
            r = parse_wrk(log)
            r.update(
                run=int(run),
                proxy_ticks=None if pcpu == "-" else int(pcpu),
                backend_ticks=int(bcpu),
                rss=int(rss) if rss != "-" else None,
                pss=int(pss) if pss != "-" else None,
                idle_pct=ratio(idle_f),
                steal_pct=ratio(steal_f),
            )
            per_req = lambda t: None if t is None or r["requests"] == 0 else t / args.clk_tck * 1e6 / r["requests"]
            r["proxy_us"] = per_req(r["proxy_ticks"])
            r["backend_us"] = per_req(r["backend_ticks"])
            if target not in rows:
                order.append(target)
                rows[target] = []
                scenario[target] = scen
            rows[target].append(r)

    idle = {}
    with open(args.idle) as f:
        for line in f:
            if line.strip():
                target, rss, pss = line.rstrip("\n").split("\t")
                idle[target] = (int(rss) if rss != "-" else None, int(pss) if pss != "-" else None)

    problems = []
    for t in order:
        for r in rows[t]:
            if r["requests"] == 0:
                problems.append(f"{t} run {r['run']}: no request completed")
            if r["non2xx"]:
                problems.append(f"{t} run {r['run']}: {r['non2xx']} non-2xx/3xx responses")
            if r["sockerr"]:
                problems.append(f"{t} run {r['run']}: {r['sockerr']} socket errors")

    mb = lambda kb: None if kb is None else kb / 1024
    if args.raw:
        print("target\trun\trequests\treq/s\tp50_ms\tp99_ms\tproxy_cpu_us_per_req\tbackends_cpu_us_per_req\trss_load_MB\tpss_load_MB\tmachine_idle_%\tsteal_%\tnon2xx\tsocket_errors")
        for t in order:
            for r in rows[t]:
                print("\t".join([
                    t, str(r["run"]), str(r["requests"]), fmt(r["rps"], 0), fmt(r["p50"], 3), fmt(r["p99"], 3),
                    fmt(r["proxy_us"], 1), fmt(r["backend_us"], 1), fmt(mb(r["rss"]), 1), fmt(mb(r["pss"]), 1),
                    fmt(r["idle_pct"], 1), fmt(r["steal_pct"], 1), str(r["non2xx"]), str(r["sockerr"]),
                ]))
    else:
        print("| target | scenario | req/s (median) | req/s (min–max) | p50 ms | p99 ms | proxy CPU µs/req | backends CPU µs/req | RSS idle MB | RSS load MB | errors |")
        print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for t in order:
            rs = rows[t]
            rps = [r["rps"] for r in rs]
            loads = [r["rss"] for r in rs if r["rss"] is not None]
            errors = sum(r["non2xx"] + r["sockerr"] for r in rs)
            idle_rss = idle.get(t, (None, None))[0]
            print("| " + " | ".join([
                t,
                scenario[t],
                fmt(median(rps), 0),
                f"{min(rps):,.0f}–{max(rps):,.0f}",
                fmt(median([r["p50"] for r in rs]), 2),
                fmt(median([r["p99"] for r in rs]), 2),
                fmt(median([r["proxy_us"] for r in rs]), 1),
                fmt(median([r["backend_us"] for r in rs]), 1),
                fmt(mb(idle_rss), 1),
                fmt(mb(max(loads)) if loads else None, 1),
                str(errors),
            ]) + " |")

    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
