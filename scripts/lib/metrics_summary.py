#!/usr/bin/env python3
"""Summarises Prometheus text expositions for the quickstart and scripts/bench-platform.

    metrics_summary.py GATEWAY_METRICS_FILE [NAME=SERVICE_METRICS_FILE ...]
    metrics_summary.py --db [--json] [--before BEFORE_FILE] AFTER_FILE

The first form prints the gateway's requests by status (from
`http_request_duration_seconds_count`), the p95 latency of its requests (estimated from the
summed histogram buckets, as Prometheus's histogram_quantile does: linear interpolation inside
the bucket), the database query latency of each service that records
`db_query_duration_seconds` (arq-tenancy), and every non-zero `arq_queue_*` counter and gauge of
the services. Exit 1 when the gateway's file holds no request histogram (the summary would say
nothing).

`gateway_window(after, before)` and `db_summary(after, before)` are also imported by
scripts/bench-platform.

The second form reads one service's `db_query_duration_seconds` (minus BEFORE's, to measure
what happened between two scrapes) and prints the queries' count, p50/p95/p99 (all statements
together, `operation="query"`), the upper bound of the bucket holding the p95, the whole
transactions' p95 and the busiest statements; `--json` prints the same as one JSON object.
Exit 1 when no query was recorded.
"""

import json
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


def bucket_bound(q, buckets):
    """The upper bound (le) of the bucket that holds quantile q: the estimate is at most this."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    for le, count in buckets:
        if count >= rank:
            return le
    return buckets[-1][0]


def db_histograms(path):
    """db_query_duration_seconds buckets of one exposition: (operation, statement) -> {le: count}."""
    out = defaultdict(lambda: defaultdict(float))
    if path is None:
        return out
    for name, labels, v in samples(path):
        if name == "db_query_duration_seconds_bucket":
            le = labels.get("le", "+Inf")
            le = float("inf") if le in ("+Inf", "Inf") else float(le)
            out[(labels.get("operation", "?"), labels.get("statement", "?"))][le] += v
    return out


def db_summary(after, before=None):
    """Query latency between two scrapes (or since start when `before` is None), or None."""
    hist, base = db_histograms(after), db_histograms(before)
    queries = defaultdict(float)
    statements = []
    transactions = []
    for key, buckets in hist.items():
        diff = [(le, c - base.get(key, {}).get(le, 0.0)) for le, c in buckets.items()]
        operation, statement = key
        if operation == "query":
            for le, c in diff:
                queries[le] += c
            n = max(c for _, c in diff)
            if n > 0:
                statements.append((n, statement, quantile(0.95, diff)))
        elif operation == "transaction":
            transactions = diff
    pairs = list(queries.items())
    if not pairs or max(c for _, c in pairs) == 0:
        return None
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    statements.sort(key=lambda s: -s[0])
    return {
        "queries": int(max(c for _, c in pairs)),
        "p50_ms": ms(quantile(0.50, pairs)),
        "p95_ms": ms(quantile(0.95, pairs)),
        "p99_ms": ms(quantile(0.99, pairs)),
        "p95_bucket_le_ms": ms(bucket_bound(0.95, pairs)),
        "transaction_p95_ms": ms(quantile(0.95, transactions)),
        "statements": [
            {"statement": st, "queries": int(n), "p95_ms": ms(p95)} for n, st, p95 in statements[:5]
        ],
    }


def gateway_window(after, before=None):
    """The gateway's requests between two scrapes: count, statuses, p50/p95/p99 over every route
    and per route, or None when no request was recorded."""
    def read(path):
        status = defaultdict(float)
        hist = defaultdict(lambda: defaultdict(float))
        if path is None:
            return status, hist
        for name, labels, v in samples(path):
            if name == "http_request_duration_seconds_count":
                status[labels.get("status_class", "?")] += v
            elif name == "http_request_duration_seconds_bucket":
                le = labels.get("le", "+Inf")
                le = float("inf") if le in ("+Inf", "Inf") else float(le)
                hist[labels.get("route", "?")][le] += v
                hist["all requests"][le] += v
        return status, hist

    (status, hist), (status0, hist0) = read(after), read(before)
    statuses = {k: int(v - status0.get(k, 0.0)) for k, v in status.items() if v - status0.get(k, 0.0) > 0}
    if not statuses:
        return None
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    routes = {}
    for route, buckets in hist.items():
        diff = [(le, c - hist0.get(route, {}).get(le, 0.0)) for le, c in buckets.items()]
        n = int(max(c for _, c in diff))
        if n > 0:
            routes[route] = {"requests": n, "p50_ms": ms(quantile(0.50, diff)),
                             "p95_ms": ms(quantile(0.95, diff)), "p99_ms": ms(quantile(0.99, diff))}
    return {"statuses": statuses, "routes": routes}


def db_main(args):
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    before = None
    if "--before" in args:
        i = args.index("--before")
        if i + 1 >= len(args):
            print("metrics_summary.py --db: --before needs a file", file=sys.stderr)
            sys.exit(2)
        before = args[i + 1]
        del args[i : i + 2]
    if len(args) != 1:
        print("usage: metrics_summary.py --db [--json] [--before BEFORE] AFTER", file=sys.stderr)
        sys.exit(2)
    summary = db_summary(args[0], before)
    if summary is None:
        print(f"{args[0]}: no db_query_duration_seconds queries recorded", file=sys.stderr)
        sys.exit(1)
    if as_json:
        print(json.dumps(summary))
        return
    print(
        f"database queries: {summary['queries']}, p50 {summary['p50_ms']} ms, "
        f"p95 {summary['p95_ms']} ms (bucket <= {summary['p95_bucket_le_ms']} ms), "
        f"p99 {summary['p99_ms']} ms; whole transactions p95 {summary['transaction_p95_ms']} ms"
    )
    for st in summary["statements"]:
        print(f"  {st['queries']:>7} × p95 {st['p95_ms']} ms  {st['statement']}")


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "--db":
        db_main(sys.argv[2:])
        return
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
    for arg in sys.argv[2:]:
        service, _, path = arg.partition("=")
        db = db_summary(path)
        if db is not None:
            print(
                f"{service}: {db['queries']} database queries, p50 {db['p50_ms']:.1f} ms, "
                f"p95 {db['p95_ms']:.1f} ms (db_query_duration_seconds)"
            )
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
