#!/usr/bin/env python3
"""Load test of `emotune serve` over loopback: N requests from C concurrent clients.

    python bench/load.py --url http://127.0.0.1:8080 [--requests 10000] [--clients 32]
        [--max-seconds 600] [--pid PID] [--runs 1] [--api-key KEY] [--json]

Each client keeps one HTTP/1.1 connection and posts `{"inputs": text}` to /predict, texts
drawn in turn from a fixed list of short and long sentences. Bounded: it stops after
--requests requests or --max-seconds, whichever comes first, and refuses any host but
loopback. Reports per run: requests, errors (no answer), non-2xx answers by status,
latency p50/p90/p99 in ms, requests/s, and with --pid the server's resident memory before
and after the run (from /proc). Standard library only.
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse

TEXTS = [
    "i feel wonderful today",
    "i am so angry that they cancelled the trip without telling anyone",
    "this is scary",
    "i miss my grandmother and the smell of her kitchen on sunday mornings",
    "what a surprise to see you here",
    "i love the way the light falls on the river in the evening, it makes me feel calm and grateful",
    "ugh",
    "i could not stop crying after the film ended",
]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[i]


class Run:
    def __init__(self, host, port, headers, total, deadline):
        self.host, self.port, self.headers = host, port, headers
        self.total, self.deadline = total, deadline
        self.next = 0
        self.lock = threading.Lock()
        self.latencies, self.statuses, self.errors = [], {}, []

    def take(self):
        with self.lock:
            if self.next >= self.total or time.monotonic() > self.deadline:
                return None
            self.next += 1
            return self.next - 1

    def client(self):
        conn = None
        while (i := self.take()) is not None:
            body = json.dumps({"inputs": TEXTS[i % len(TEXTS)]})
            started = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                conn.request("POST", "/predict", body=body, headers=self.headers)
                resp = conn.getresponse()
                resp.read()
                took = time.perf_counter() - started
                with self.lock:
                    self.latencies.append(took)
                    self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.errors.append(f"{type(e).__name__}: {e}")
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


def one_run(args, host, port):
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    before = rss_kib(args.pid) if args.pid else None
    run = Run(host, port, headers, args.requests, time.monotonic() + args.max_seconds)
    started = time.perf_counter()
    threads = [threading.Thread(target=run.client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    lat = sorted(x * 1000 for x in run.latencies)
    done = len(run.latencies) + len(run.errors)
    return {
        "requests": done,
        "clients": args.clients,
        "errors": len(run.errors),
        "first_errors": run.errors[:5],
        "status_counts": {str(k): v for k, v in sorted(run.statuses.items())},
        "non_2xx": sum(v for k, v in run.statuses.items() if not 200 <= k < 300),
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "mean_ms": statistics.fmean(lat) if lat else None,
        "requests_per_s": done / elapsed if elapsed > 0 else None,
        "seconds": elapsed,
        "stopped_by_time_limit": done < args.requests,
        "rss_before_kib": before,
        "rss_after_kib": rss_kib(args.pid) if args.pid else None,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--requests", type=int, default=10000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max-seconds", type=float, default=600)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--pid", type=int, help="the server's pid, to report its memory")
    p.add_argument("--api-key")
    p.add_argument("--json", action="store_true", help="one JSON object per run on stdout")
    args = p.parse_args()
    url = urllib.parse.urlparse(args.url)
    if url.scheme != "http" or url.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"--url must be http:// on loopback (got {args.url!r}): this script only loads local servers")
    if not (1 <= args.requests <= 1_000_000 and 1 <= args.clients <= 1024 and 0 < args.max_seconds <= 3600):
        sys.exit("--requests must be 1..1000000, --clients 1..1024, --max-seconds in (0, 3600]")
    failed = False
    for r in range(args.runs):
        report = one_run(args, url.hostname, url.port or 80)
        report["run"] = r + 1
        failed |= report["errors"] > 0 or report["non_2xx"] > 0
        if args.json:
            print(json.dumps(report), flush=True)
        else:
            mem = ""
            if report["rss_before_kib"] is not None:
                mem = f", server RSS {report['rss_before_kib'] / 1024:.1f} -> {report['rss_after_kib'] / 1024:.1f} MiB"
            print(f"run {r + 1}: {report['requests']} requests from {args.clients} clients in {report['seconds']:.1f} s: "
                  f"{report['requests_per_s']:.1f} req/s, p50 {report['p50_ms']:.1f} ms, p99 {report['p99_ms']:.1f} ms, "
                  f"{report['errors']} errors, {report['non_2xx']} non-2xx {report['status_counts']}{mem}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
