#!/usr/bin/python3
"""Where the proxy's CPU goes, per workload: perf on the proxy (and on nghttpx, the pass-through
reference) while h2load drives the same workloads as proxy_bench.py.

For each workload and each profiled process: h2load runs for --seconds while `perf record -g`
samples that process only; `perf report --no-children` then gives the top functions by self
time (and which shared object they are in). The markdown it prints is what bench/results keeps.
"""

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import etcdwire as w  # noqa: E402
import harness  # noqa: E402
import proxy_bench as pb  # noqa: E402


def report(perf_data, sort, limit):
    out = subprocess.run(["perf", "report", "-i", perf_data, "--no-children", "--stdio",
                          "--sort", sort, "-g", "none", "--percent-limit", str(limit)],
                         capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "%" not in line:
            continue
        parts = line.split()
        if parts[0].endswith("%"):
            rows.append(parts)
    return rows


def top(perf_data, n):
    """Top functions by self time: (share, object, function)."""
    rows = []
    for parts in report(perf_data, "dso,symbol", 0.5):
        if len(parts) >= 4:
            kind = "k:" if parts[2] == "[k]" else ""
            rows.append((parts[0], parts[1], kind + parts[3]))
    return rows[:n]


def by_object(perf_data):
    """Self time per shared object: (share, object)."""
    return [(parts[0], parts[1]) for parts in report(perf_data, "dso", 0.5) if len(parts) >= 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--binary", default=None)
    ap.add_argument("--workloads", default="all", help="comma-separated workload name prefixes")
    ap.add_argument("--provider", default="aesgcm")
    ap.add_argument("--keep", default=None, help="directory to keep each perf.data in")
    ap.add_argument("--dwarf", action="store_true", help="record DWARF call graphs (callers of "
                    "libc's memmove/memset); bigger and slower")
    args = ap.parse_args()
    args.admin = False
    args.baseline = None
    args.no_kms = True
    d = harness.workdir("ep-profile")
    etcd = harness.Etcd(d, extra_args=["--quota-backend-bytes", str(8 << 30)]).start()
    config = os.path.join(d, "%s.yaml" % args.provider)
    harness.write_encryption_config(config, args.provider)
    prefix = "/registry/secrets/bench/enc/"
    proxy = pb.start_proxy(d, etcd, args, "proxy " + args.provider, config, prefix,
                           binary=args.binary)
    if proxy.error:
        sys.exit("proxy: " + proxy.error)
    _, paths = pb.finish_paths(d, args, etcd, [])
    ng = paths[0]
    ng.range_prefix = "/registry/secrets/bench/plain/"
    values = {}
    lines = ["# Profile of the proxy (%s) and nghttpx, %s" % (args.provider,
                                                            datetime.date.today().isoformat()),
             "", "`bench/proxy_profile.py --seconds %g` : perf record -g on one process while "
             "h2load drives it; self time, top entries (>= 0.8%%)." % args.seconds, ""]
    for name, kind, size, keys, clients, streams in pb.WORKLOADS:
        if args.workloads != "all" and not any(name.startswith(x) for x in
                                               args.workloads.split(",")):
            continue
        if kind == "range":
            pb.populate(etcd.port, ng.range_prefix, size, keys, values)
            pb.populate(proxy.port, prefix, size, keys, values)
        for p in (proxy, ng):
            body = os.path.join(d, "body.bin")
            msg = (w.put_request("/registry/secrets/bench/put-%d" % size, os.urandom(size))
                   if kind == "put" else pb.range_body(p.range_prefix, keys))
            with open(body, "wb") as f:
                f.write(w.grpc_frame(msg))
            pb.reclaim(etcd.port)
            data = os.path.join(d, "perf.data")
            graph = ["--call-graph", "dwarf,16384"] if args.dwarf else ["-g"]
            perf = subprocess.Popen(["perf", "record", "-F", "1000" if args.dwarf else "2000"] +
                                    graph + ["-o", data, "-p", str(p.pid)],
                                    stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            cpu0 = pb.cpu_seconds(p.pid)
            rps, ok, started, p50, p99 = pb.h2load(
                p.port, body, clients, streams, args.seconds, os.path.join(d, "h2load.log"),
                "/etcdserverpb.KV/" + ("Put" if kind == "put" else "Range"))
            cpu = pb.cpu_seconds(p.pid) - cpu0
            perf.send_signal(2)
            perf.wait(30)
            lines += ["## %s: %s (%.0f req/s, %.1f us CPU/req)" % (name, p.name, rps,
                                                                   cpu / max(ok, 1) * 1e6), "",
                      "| self | object | function |", "|---|---|---|"]
            if args.keep:
                os.makedirs(args.keep, exist_ok=True)
                kept = os.path.join(args.keep, "%s-%s.data" % (
                    name.split(" (")[0].replace(" ", "_"), p.name.replace(" ", "_")))
                shutil.move(data, kept)
                data = kept
            lines += ["| %s | %s | %s |" % r for r in top(data, args.top)]
            lines += ["", "By object: " + ", ".join("%s %s" % (o, share) for share, o in
                                                   by_object(data)), ""]
            print("\n".join(lines[-(args.top + 5):]), file=sys.stderr, flush=True)
    print("\n".join(lines))
    harness.cleanup()


if __name__ == "__main__":
    main()
