#!/usr/bin/env python3
"""Markdown tables from compare.sh's runs.tsv: every pair, then medians and
the median of the pair ratios (engine / lean, CPU per request).

    python3 benches/hyper-proto/table.py OUT/runs.tsv [NAME=LABEL ...]
"""
import csv
import statistics
import sys

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
labels = dict(a.split("=", 1) for a in sys.argv[2:])
order = ["lean", "hyper", "hyper2"]
label = lambda e: labels.get(e, e)
for s in sorted({r["scenario"] for r in rows}):
    rs = [r for r in rows if r["scenario"] == s]
    engines = sorted({r["engine"] for r in rs}, key=order.index)
    print(f"\n{'HTTP/1.1' if s == 'h1' else 'HTTP/2 over TLS'}:\n")
    print("| pair | engine | req/s | p99 ms | CPU µs/req | user | kernel | vs lean | machine idle % | errors |")
    print("|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    ratios = {e: [] for e in engines}
    for p in sorted({r["pair"] for r in rs}, key=int):
        by = {r["engine"]: r for r in rs if r["pair"] == p}
        for e in engines:
            r = by.get(e)
            if not r:
                continue
            ratio = ""
            if e != "lean" and "lean" in by:
                x = float(r["us/req"]) / float(by["lean"]["us/req"])
                ratios[e].append(x)
                ratio = f"{x:.3f}"
            print(f"| {p} | {label(e)} | {int(float(r['req/s'])):,} | {r['p99_ms']} | {r['us/req']} | {r['user_us']} | "
                  f"{r['kernel_us']} | {ratio} | {r['idle_%']} | {r['errors']} |")
    print()
    print("| median | req/s | p99 ms | CPU µs/req | user | kernel | median of pair ratios |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for e in engines:
        m = lambda k: statistics.median(float(r[k]) for r in rs if r["engine"] == e)
        rr = f"{statistics.median(ratios[e]):.3f} (range {min(ratios[e]):.3f}–{max(ratios[e]):.3f})" if ratios.get(e) else "—"
        print(f"| {label(e)} | {m('req/s'):,.0f} | {m('p99_ms'):.2f} | {m('us/req'):.1f} | {m('user_us'):.1f} | "
              f"{m('kernel_us'):.1f} | {rr} |")
