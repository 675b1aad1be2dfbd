#!/usr/bin/env python3
"""Summarises Prometheus text expositions for the quickstart.

    metrics_summary.py GATEWAY_METRICS_FILE [NAME=SERVICE_METRICS_FILE ...]

Prints the gateway's requests by status (from `http_request_duration_seconds_count`), the p95
latency of its requests (estimated from the summed histogram buckets, as Prometheus's
histogram_quantile does: linear interpolation inside the bucket), and every non-zero
`arq_queue_*` counter and gauge of the services. Exit 1 when the gateway's file holds no request
histogram (the summary would say nothing).
"""

import re
import sys
from collections import defaultdict

LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                continue
            m = LINE.match(line)
            if not m:
                continue
            name, labels, value = m.groups()
            try:
                v = float(value)
            except ValueError:
                continue
            yield name, dict(LABEL.findall(labels or "")), v


def quantile(q, buckets):
    """histogram_quantile over cumulative (le, count) pairs."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def main():
    if len(sys.argv) < 2:
        print("usage: metrics_summary.py GATEWAY_METRICS [NAME=FILE ...]", file=sys.stderr)
        sys.exit(2)
    by_status = defaultdict(float)
    buckets = defaultdict(lambda: defaultdict(float))  # route -> le -> cumulative count
    for name, labels, v in samples(sys.argv[1]):
        if name == "http_request_duration_seconds_count":
            by_status[labels.get("status_class", "?")] += v
        elif name == "http_request_duration_seconds_bucket":
            le = labels.get("le", "+Inf")
            le = float("inf") if le in ("+Inf", "Inf") else float(le)
            route = labels.get("route", "?")
            buckets[route][le] += v
            buckets["all requests"][le] += v
    if not by_status:
        print("the gateway's /metrics has no http_request_duration_seconds histogram", file=sys.stderr)
        sys.exit(1)
    total = int(sum(by_status.values()))
    statuses = ", ".join(f"{s}: {int(n)}" for s, n in sorted(by_status.items()))
    print(f"gateway requests: {total} by status class ({statuses})")
    print("gateway latency (time to response headers, from the histogram buckets):")
    for route in sorted(buckets, key=lambda r: (r != "all requests", r)):
        pairs = list(buckets[route].items())
        n = int(max(c for _, c in pairs))
        p50, p95 = quantile(0.50, pairs), quantile(0.95, pairs)
        if p95 is None:
            continue
        note = " (refused before routing: 429s, unknown paths)" if route == "unmatched" else ""
        print(f"  {route}: {n} requests, p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms{note}")
    queue_lines = []
    for arg in sys.argv[2:]:
        service, _, path = arg.partition("=")
        for name, labels, v in samples(path):
            if name.startswith("arq_queue_") and not name.endswith(("_bucket", "_sum")) and v:
                what = ",".join(f"{k}={val}" for k, val in sorted(labels.items()))
                queue_lines.append(f"  {service}: {name}{{{what}}} {v:g}")
    if queue_lines:
        print("queue counters:")
        print("\n".join(queue_lines))
    else:
        print("queue counters: none recorded by the services yet")


if __name__ == "__main__":
    main()
