#!/usr/bin/python3
"""Throughput, latency and CPU cost of the proxy against etcd reached directly, in one run.

Paths: etcd direct; the proxy with an identity config; the proxy with an aesgcm config; the
proxy with kms v2 and kms v1 configs (etcd-encrypt-kms-plugin with a key file: v2 writes derive
a key per write from one seed the plugin wrapped at start, v1 writes call the plugin's Encrypt
for every value, so its Put rows are bounded by the plugin); and nghttpx as an h2c pass-through (an HTTP/2 proxy that does no gRPC work: the floor for "a hop").
Load: h2load speaking gRPC (POST, content-type application/grpc, te: trailers, a body file =
5-byte gRPC header + a protobuf built by hand from spec 6.2). Rounds are interleaved (every path
once per round) so drift on a shared 2-core machine hits every path alike; medians are printed.

h2load only sees HTTP status, and an etcd error is HTTP 200 with a non-zero grpc-status, so
every cell is verified another way: Puts by etcd's revision delta (one revision per applied
Put) against h2load's successes, Ranges by a gRPC call on the same path before and after each
run that must return grpc-status 0 and the expected decrypted values.
"""

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import time

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import etcdwire as w  # noqa: E402
import harness  # noqa: E402
import kmsfake  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
# name, kind, value size, keys, clients, streams per client
WORKLOADS = [
    ("Put 1 KiB", "put", 1024, 1, 4, 8),
    ("Put 8 KiB", "put", 8192, 1, 4, 8),
    ("Range 1 key (1 KiB)", "range", 1024, 1, 4, 8),
    ("Range 100 keys x 1 KiB", "range", 1024, 100, 4, 8),
    ("Put 1 KiB serial (1x1)", "put", 1024, 1, 1, 1),
]


class Path:
    def __init__(self, name, port, pid=None, range_prefix="/registry/secrets/bench/plain/"):
        self.name, self.port, self.pid, self.range_prefix = name, port, pid, range_prefix
        self.error = None
        self.log = None
        self.metrics_port = None  # scraped once a second while the run lasts


def scrape_forever(paths, stop):
    """What Prometheus does to the admin endpoint: GET /metrics every second."""
    import urllib.request
    while not stop.wait(1.0):
        for p in paths:
            if p.metrics_port:
                try:
                    urllib.request.urlopen("http://127.0.0.1:%d/metrics" % p.metrics_port,
                                           timeout=5).read()
                except OSError:
                    pass


def cpu_seconds(pid):
    if pid is None:
        return 0.0
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def unary(port, method, msg, timeout=10):
    with grpc.insecure_channel("127.0.0.1:%d" % port) as ch:
        return ch.unary_unary("/etcdserverpb.KV/" + method)(msg, timeout=timeout)


def revision(etcd_port):
    return w.response_revision(unary(etcd_port, "Range", w.range_request("/bench-revision-probe")))


def range_body(prefix, keys):
    if keys == 1:
        return w.range_request(prefix + "k000")
    return w.range_request(prefix, w.prefix_end(prefix))


def populate(port, prefix, size, keys, values):
    for i in range(keys):
        key = "%sk%03d" % (prefix, i)
        values.setdefault(key.encode(), os.urandom(size))
        unary(port, "Put", w.put_request(key, values[key.encode()]))


def spot_check(path, keys, values):
    """One gRPC Range on |path|: grpc-status 0 and the expected plaintext values."""
    try:
        kvs = w.range_response_kvs(unary(path.port, "Range", range_body(path.range_prefix, keys)))
    except grpc.RpcError as e:
        return "grpc-status %s" % e.code().value[0]
    if len(kvs) != keys or any(values.get(k) != v for k, v in kvs):
        return "wrong values (%d kvs)" % len(kvs)
    return None


def h2load(port, body_file, clients, streams, seconds, log_file, path):
    cmd = ["h2load", "-c", str(clients), "-m", str(streams), "-D", "%g" % seconds, "-d", body_file,
           "-H", "content-type: application/grpc", "-H", "te: trailers", "--log-file", log_file,
           "http://127.0.0.1:%d%s" % (port, path)]
    out = subprocess.run(cmd, capture_output=True, timeout=seconds + 60).stdout.decode()
    if "req/s" not in out:
        raise RuntimeError("h2load: " + out[-300:])
    rps = float(re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out).group(1))
    succeeded = int(re.search(r"(\d+) succeeded", out).group(1))
    started = int(re.search(r"(\d+) started", out).group(1))
    lat = []
    with open(log_file) as f:
        for line in f:
            cols = line.split("\t")
            if len(cols) >= 3 and cols[1] == "200":
                lat.append(int(cols[2]) / 1000.0)
    os.unlink(log_file)
    lat.sort()
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else (lambda q: float("nan"))
    return rps, succeeded, started, pct(0.50), pct(0.99)


def reclaim(port):
    """Compacts etcd's history and defragments, so Put cells never fill its quota."""
    ep = "127.0.0.1:%d" % port
    env = dict(os.environ, ETCDCTL_API="3")
    subprocess.run(["etcdctl", "--endpoints", ep, "compact", str(revision(port)), "--physical"],
                   env=env, capture_output=True, timeout=60)
    subprocess.run(["etcdctl", "--endpoints", ep, "defrag", "--command-timeout=60s"], env=env,
                   capture_output=True, timeout=90)


def start_plugin(d):
    """The reference KMS plugin with a fresh key file; returns its socket path."""
    plugin = harness.kms_plugin_binary()
    key, sock = os.path.join(d, "kek"), os.path.join(d, "kms.sock")
    with open(key, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(key, 0o600)
    harness.spawn([plugin, "--listen", "unix://" + sock, "--key-file", key],
                  os.path.join(d, "kms-plugin.log"))
    harness.wait_for(lambda: os.path.exists(sock), 10)
    return sock


def start_proxy(d, etcd, args, name, config, prefix, admin=False, binary=None):
    extra, mport = [], None
    if admin:
        mport = harness.free_port()
        extra = ["--listen-metrics-urls", "http://127.0.0.1:%d" % mport]
    p = harness.Proxy(d, [etcd.url], config, workers=args.workers, extra=extra)
    if binary:
        args_of = p.args
        p.args = lambda: [binary] + args_of()[1:]
    path = Path(name, p.port, range_prefix=prefix)
    path.metrics_port = mport
    path.log = p.log
    try:
        p.start(timeout=30)
        path.pid = p.proc.pid
    except RuntimeError as e:
        path.error = str(e).splitlines()[0]
    return path


def start_paths(d, args):
    # Put cells write gigabytes of history; a larger quota plus a compact+defrag before each
    # Put cell keep etcd from raising its NOSPACE alarm (2 GiB by default) mid-run.
    etcd = harness.Etcd(d, extra_args=["--quota-backend-bytes", str(8 << 30)]).start()
    paths = [Path("etcd direct", etcd.port)]
    for provider in ("identity", "aesgcm"):
        config = os.path.join(d, "%s.yaml" % provider)
        harness.write_encryption_config(config, provider)
        prefix = "/registry/secrets/bench/%s/" % ("enc" if provider == "aesgcm" else "plain")
        paths.append(start_proxy(d, etcd, args, "proxy " + provider, config, prefix))
        if provider == "aesgcm" and args.admin:
            paths.append(start_proxy(d, etcd, args, "proxy aesgcm +scraped", config, prefix,
                                     admin=True))
        if provider == "aesgcm" and args.baseline:
            paths.append(start_proxy(d, etcd, args, "proxy aesgcm baseline", config, prefix,
                                     binary=args.baseline))
    if args.no_kms:
        return finish_paths(d, args, etcd, paths)
    sock = start_plugin(d)
    for version in ("v2", "v1"):
        config = os.path.join(d, "kms-%s.yaml" % version)
        kmsfake.write_kms_config(config, [kmsfake.kms_provider_yaml("bench-" + version, version,
                                                                    sock)])
        paths.append(start_proxy(d, etcd, args, "proxy kms-" + version, config,
                                 "/registry/secrets/bench/kms-%s/" % version))
    return finish_paths(d, args, etcd, paths)


def finish_paths(d, args, etcd, paths):
    port = harness.free_port()
    proc = harness.spawn(["nghttpx", "--conf=/dev/null", "--single-process",
                          "--workers=%d" % args.workers, "--errorlog-file=" + os.path.join(d, "nghttpx.log"),
                          "--frontend=127.0.0.1,%d;no-tls" % port,
                          "--backend=127.0.0.1,%d;;proto=h2" % etcd.port], os.path.join(d, "nghttpx.out"))
    ng = Path("nghttpx h2c", port, proc.pid)
    if not harness.wait_for(lambda: harness.tcp_accepts(port), 10):
        ng.error = "nghttpx did not start"
    paths.append(ng)
    return etcd, paths


def run(args):
    d = harness.workdir("ep-bench")
    etcd, paths = start_paths(d, args)
    live = [p for p in paths if not p.error]
    values = {}
    for wl in WORKLOADS:
        if wl[1] == "range":
            populate(etcd.port, "/registry/secrets/bench/plain/", wl[2], wl[3], values)
            for enc in live:
                if enc.range_prefix != "/registry/secrets/bench/plain/":
                    populate(enc.port, enc.range_prefix, wl[2], wl[3], values)
    bodies = {}
    for name, kind, size, keys, _, _ in WORKLOADS:
        for prefix in sorted({p.range_prefix for p in paths}):
            msg = (w.put_request("/registry/secrets/bench/put-%d" % size, os.urandom(size))
                   if kind == "put" else range_body(prefix, keys))
            bodies[(name, prefix)] = os.path.join(d, "body-%d.bin" % len(bodies))
            with open(bodies[(name, prefix)], "wb") as f:
                f.write(w.grpc_frame(msg))
    cells = {}  # (workload, path) -> list of (rps, ok, p50, p99, cpu, bad)
    import threading
    stop = threading.Event()
    scraper = threading.Thread(target=scrape_forever, args=(live, stop), daemon=True)
    scraper.start()
    for rnd in range(args.rounds):
        for name, kind, size, keys, clients, streams in WORKLOADS:
            # Each cell starts from a compacted, defragmented etcd, and the path that goes first
            # rotates per round: the cell right after a write-heavy one otherwise pays for
            # etcd's background work (seen as direct etcd at half speed on Range 1 key).
            for p in live[rnd % len(live):] + live[:rnd % len(live)]:
                reclaim(etcd.port)
                bad = spot_check(p, keys, values) if kind == "range" else None
                rev0, cpu0 = revision(etcd.port), cpu_seconds(p.pid)
                rps, ok, started, p50, p99 = h2load(p.port, bodies[(name, p.range_prefix)], clients, streams,
                                           args.seconds, os.path.join(d, "h2load.log"),
                                           "/etcdserverpb.KV/" + ("Put" if kind == "put" else "Range"))
                cpu = cpu_seconds(p.pid) - cpu0
                if kind == "put":
                    # Requests still in flight when h2load stops are applied by etcd but not
                    # counted by h2load, so the delta may exceed the successes by those (at most
                    # started - succeeded); a delta below the successes means failed Puts.
                    delta = revision(etcd.port) - rev0
                    if not ok <= delta <= started:
                        bad = "revision delta %d outside [%d HTTP OK, %d started]" % (
                            delta, ok, started)
                else:
                    bad = bad or spot_check(p, keys, values)
                cells.setdefault((name, p.name), []).append((rps, ok, p50, p99, cpu, bad))
                print("round %d  %-24s %-16s %9.0f req/s  p50 %.2f ms  p99 %.2f ms%s" % (
                    rnd + 1, name, p.name, rps, p50, p99, ("  FAILED: " + bad) if bad else ""),
                    file=sys.stderr, flush=True)
    stop.set()
    scraper.join()
    return paths, cells


def report(args, paths, cells):
    print("# etcd-encrypt-proxy benchmark, %s" % datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
    print()
    print("%d cores; %s; proxies and nghttpx with %d workers; h2load gRPC, %d interleaved rounds "
          "of %g s per path per workload; medians. CPU = the proxy process's utime+stime / "
          "successful requests." % (os.cpu_count(), subprocess.run(
              [harness.ETCD, "--version"], capture_output=True).stdout.decode().splitlines()[0],
              args.workers, args.rounds, args.seconds))
    print()
    print("| workload | path | req/s | x direct | p50 ms | p99 ms | CPU us/req | verified |")
    print("|---|---|---|---|---|---|---|---|")
    failed = False
    for name, *_ in WORKLOADS:
        direct = cells.get((name, "etcd direct"))
        base = statistics.median(c[0] for c in direct) if direct else None
        for p in paths:
            runs = cells.get((name, p.name))
            if not runs:
                print("| %s | %s | n/a | | | | | %s |" % (name, p.name, p.error or "not run"))
                failed = True
                continue
            rps = statistics.median(c[0] for c in runs)
            ok = sum(c[1] for c in runs)
            cpu = "%.0f" % (sum(c[4] for c in runs) * 1e6 / ok) if p.pid and ok else ""
            bad = [c[5] for c in runs if c[5]]
            failed |= bool(bad)
            print("| %s | %s | %.0f | %.2fx | %.2f | %.2f | %s | %s |" % (
                name, p.name, rps, rps / base if base else float("nan"),
                statistics.median(c[2] for c in runs), statistics.median(c[3] for c in runs), cpu,
                bad[0] if bad else "ok"))
    targets(paths, cells)
    return kms_encrypt_check(paths) or failed


def gcm_floor_us(values=100, size=1024):
    """What `openssl speed` says AES-256-GCM decryption of |values| x |size| bytes costs on one
    core (median of 3), the floor of a Range of that many encrypted values."""
    rates = []
    for _ in range(3):
        out = subprocess.run(["openssl", "speed", "-decrypt", "-evp", "aes-256-gcm", "-bytes",
                              str(size), "-seconds", "2"], capture_output=True, text=True).stdout
        line = [l for l in out.splitlines() if l.lower().startswith("aes-256-gcm")][-1]
        rates.append(float(line.split()[1].rstrip("k")) * 1000)  # bytes per second
    return values * size / statistics.median(rates) * 1e6


def med(cells, name, path, i):
    runs = cells.get((name, path))
    return statistics.median(c[i] for c in runs) if runs else None


def cpu_per_req(cells, name, path):
    runs = cells.get((name, path))
    ok = sum(c[1] for c in runs) if runs else 0
    return sum(c[4] for c in runs) * 1e6 / ok if ok else None


def targets(paths, cells):
    """The performance issue's targets, met or not, from this run."""
    names = {p.name for p in paths}
    if "proxy aesgcm" not in names or "nghttpx h2c" not in names:
        return
    floor = gcm_floor_us()
    print()
    print("Targets (proxy aesgcm against nghttpx in this run; Range 100's CPU bound is nghttpx's "
          "plus the AES-GCM floor, %.0f us for 100 x 1 KiB by `openssl speed -decrypt`):" % floor)
    print()
    print("| workload | req/s proxy / nghttpx | CPU us/req proxy / bound | identity CPU / 0.7 x nghttpx |"
          " met |")
    print("|---|---|---|---|---|")
    for name, *_ in WORKLOADS:
        rp, rn = med(cells, name, "proxy aesgcm", 0), med(cells, name, "nghttpx h2c", 0)
        cp, cn = cpu_per_req(cells, name, "proxy aesgcm"), cpu_per_req(cells, name, "nghttpx h2c")
        ci = cpu_per_req(cells, name, "proxy identity")
        if None in (rp, rn, cp, cn):
            continue
        bound = cn + (floor if name.startswith("Range 100") else 0)
        met = rp >= rn and cp <= bound and (ci is None or ci <= 0.7 * cn)
        print("| %s | %.0f / %.0f | %.0f / %.0f | %s | %s |" % (
            name, rp, rn, cp, bound, "%.0f / %.0f" % (ci, 0.7 * cn) if ci is not None else "",
            "yes" if met else "no"))
    d50 = med(cells, "Put 1 KiB serial (1x1)", "etcd direct", 2)
    p50 = med(cells, "Put 1 KiB serial (1x1)", "proxy aesgcm", 2)
    if d50 is not None and p50 is not None:
        print()
        print("Serial Put p50: proxy %.0f us, direct %.0f us: %+.0f us (target within 50 us)." % (
            p50 * 1000, d50 * 1000, (p50 - d50) * 1000))


def kms_encrypt_check(paths):
    """KMS v2 must call the plugin's Encrypt once per process start (and key_id rotation, none
    here), however many writes it served: the proxy logs one "new write state" per Encrypt.
    Returns True when that failed."""
    v2 = next((p for p in paths if p.name == "proxy kms-v2" and p.log), None)
    if v2 is None:
        return False
    with open(v2.log, "rb") as f:
        n = f.read().count(b"new write state")
    print()
    print("KMS v2 plugin Encrypt calls during the whole run (one process start): %d (want 1)" % n)
    return n != 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-admin", dest="admin", action="store_false",
                    help="leave out the aesgcm proxy with its admin endpoint scraped each second")
    ap.add_argument("--baseline", help="another proxy binary (an older build) run as a further "
                    "aesgcm path, to compare builds in one run")
    ap.add_argument("--no-kms", action="store_true", help="leave out the kms v1/v2 paths")
    ap.add_argument("--binary", default=os.environ.get("EP_BINARY") or
                    os.path.join(HERE, "..", "build", "etcd-encrypt-proxy"))
    args = ap.parse_args()
    os.environ["EP_BINARY"] = args.binary  # what harness.Proxy starts
    started = time.monotonic()
    try:
        paths, cells = run(args)
        failed = report(args, paths, cells)
    finally:
        harness.cleanup()
    print("\n(total %.0f s)" % (time.monotonic() - started), file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
