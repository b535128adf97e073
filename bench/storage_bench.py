#!/usr/bin/python3
"""scan and rewrite at storage speed, next to the way operators rotate without an apiserver.

One throwaway etcd (data on tmpfs) holds N secrets of 1 KiB (default 100,000) under
/registry/secrets/bench/, written as plaintext straight into etcd in Txns of 100 Puts. Then, in
each of R interleaved rounds:

  - rewrite, key k(A) first: re-encrypts all N values (the first round migrates plaintext; the
    later ones rotate from the previous round's key: every value is stale each time);
  - the operator's way today, in the same round: for a sample of keys, read the value through the
    proxy (which decrypts) and write it back through the proxy (which encrypts with the new key),
    one key at a time, each a gRPC round trip (what an `etcdctl get | etcdctl put` loop does,
    minus the process start per key, so it is the generous figure); and an actual
    `etcdctl get | etcdctl put` loop on a smaller sample;
  - scan (prefix classification) and scan --verify (every value decrypted and authenticated).

Every result is checked: rewrite's JSON must say N rewritten and ok, and a scan afterwards must
find N values under the new key and 0 stale; the baseline's written values must read back.
Memory: peak RSS (wait4 ru_maxrss) of scan and rewrite over N/10 keys (a --prefix subset) and
over N keys; "flat" means the two are close. Results: medians of R rounds, keys/s, and ratios.
"""

import argparse
import base64
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import etcdwire as w  # noqa: E402
import harness  # noqa: E402

PREFIX = "/registry/secrets/bench/"
TENTH_PREFIX = PREFIX + "a00"  # a000000..a009999: the first 10,000 keys of 100,000


def key_of(i):
    return "%sa%06d" % (PREFIX, i)


def txn_puts(items):
    """TxnRequest with one Put per (key, value) and no compares."""
    out = b""
    for k, v in items:
        put = w.field_bytes(1, k.encode()) + w.field_bytes(2, v)
        out += w.field_bytes(2, w.field_bytes(2, put))
    return out


def populate(port, n, size):
    with grpc.insecure_channel("127.0.0.1:%d" % port) as ch:
        txn = ch.unary_unary("/etcdserverpb.KV/Txn")
        for start in range(0, n, 100):
            items = [(key_of(i), os.urandom(size // 2).hex().encode()[:size])
                     for i in range(start, min(n, start + 100))]
            txn(txn_puts(items), timeout=30)


def write_config(path, keys):
    lines = ["apiVersion: apiserver.config.k8s.io/v1", "kind: EncryptionConfiguration",
             "resources:", "  - resources: [secrets]", "    providers:", "      - aesgcm:",
             "          keys:"]
    for name, secret in keys:
        lines += ["            - name: %s" % name, "              secret: %s" % secret]
    lines += ["      - identity: {}"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def run_tool(argv):
    """Runs a storage command; returns (exit status, stdout, stderr, seconds)."""
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr, time.monotonic() - t0


def peak_rss_kib(argv):
    """The command's own peak RSS, from GNU time's %M."""
    r = subprocess.run(["/usr/bin/time", "-f", "%M"] + argv, capture_output=True, text=True)
    return int(r.stderr.strip().splitlines()[-1])


def operator_way(proxy_port, n, sample, deadline_s):
    """Read + write back through the proxy, one round trip each; returns keys/s."""
    step = max(1, n // sample)
    keys = [key_of(i) for i in range(0, n, step)][:sample]
    done = 0
    t0 = time.monotonic()
    with grpc.insecure_channel("127.0.0.1:%d" % proxy_port) as ch:
        rng = ch.unary_unary("/etcdserverpb.KV/Range")
        put = ch.unary_unary("/etcdserverpb.KV/Put")
        for k in keys:
            kvs = w.range_response_kvs(rng(w.range_request(k), timeout=10))
            put(w.put_request(k, kvs[0][1]), timeout=10)
            done += 1
            if time.monotonic() - t0 > deadline_s:
                break
    return done / (time.monotonic() - t0)


def etcdctl_way(proxy_port, n, sample):
    """The same with etcdctl processes (get --print-value-only | put), as a shell loop does."""
    env = dict(os.environ, ETCDCTL_API="3")
    ep = "--endpoints=127.0.0.1:%d" % proxy_port
    t0 = time.monotonic()
    for i in range(sample):
        k = key_of(i * max(1, n // sample) + 1)
        v = subprocess.run([harness.ETCDCTL, ep, "get", k, "--print-value-only"],
                           capture_output=True, env=env, check=True).stdout[:-1]
        subprocess.run([harness.ETCDCTL, ep, "put", k], input=v, capture_output=True, env=env,
                       check=True)
    return sample / (time.monotonic() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=100000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sample", type=int, default=3000)
    ap.add_argument("--binary", default=harness.binary())
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    d = harness.workdir("ep-storage-bench")
    etcd = harness.Etcd(d, extra_args=["--quota-backend-bytes", str(8 << 30)]).start()
    t0 = time.monotonic()
    populate(etcd.port, args.keys, args.size)
    print("populated %d keys in %.1fs" % (args.keys, time.monotonic() - t0), flush=True)

    secrets = [("k%d" % i, base64.b64encode(os.urandom(32)).decode())
               for i in range(args.rounds + 1)]
    ep = ["--endpoints", etcd.url]
    rows = {"rewrite": [], "scan": [], "scan --verify": [], "operator (gRPC round trips)": [],
            "operator (etcdctl get, put)": []}
    failures = []
    for r in range(args.rounds):
        config = os.path.join(d, "round%d.yaml" % r)
        write_config(config, [secrets[r], secrets[r - 1]] if r > 0 else [secrets[0]])
        base = [args.binary]
        rc, out, err, secs = run_tool(base + ["rewrite"] + ep + ["--encryption-provider-config",
                                                                   config, "-o", "json"])
        res = json.loads(out) if out else {}
        want = args.keys
        if rc != 0 or res.get("rewritten") != want:
            failures.append("round %d rewrite: rc=%d %s %s" % (r, rc, res, err[-300:]))
        rows["rewrite"].append(want / secs)
        for name, extra in (("scan", []), ("scan --verify", ["--verify"])):
            rc, out, err, secs = run_tool(base + ["scan"] + ep + ["--encryption-provider-config",
                                                                    config, "-o", "json",
                                                                    "--fail-on-stale"] + extra)
            res = json.loads(out) if out else {}
            stored = {c["as"]: c["keys"] for rr in res.get("resources", []) for c in rr["stored"]}
            if rc != 0 or stored.get("aesgcm:" + secrets[r][0]) != want:
                failures.append("round %d %s: rc=%d %s %s" % (r, name, rc, stored, err[-300:]))
            rows[name].append(want / secs)
        proxy = harness.Proxy(d, [etcd.url], config, workers=2)
        proxy.start(timeout=30)
        rows["operator (gRPC round trips)"].append(operator_way(proxy.port, args.keys, args.sample,
                                                                30))
        rows["operator (etcdctl get, put)"].append(etcdctl_way(proxy.port, args.keys, 100))
        proxy.stop()
        print("round %d: %s" % (r, {k: round(v[-1]) for k, v in rows.items()}), flush=True)

    # memory: everything stale (a new first key), a tenth of the keys vs all of them
    config = os.path.join(d, "memory.yaml")
    write_config(config, [("kmem", base64.b64encode(os.urandom(32)).decode()),
                          secrets[args.rounds - 1]])
    rss = {}
    for label, prefix in (("N/10", TENTH_PREFIX), ("N", PREFIX)):
        for cmd in ("scan", "rewrite"):
            rss[(cmd, label)] = peak_rss_kib([args.binary, cmd] + ep + [
                "--encryption-provider-config", config, "--prefix", prefix, "-o", "json"] +
                (["--dry-run"] if cmd == "rewrite" else []))

    med = {k: statistics.median(v) for k, v in rows.items()}
    base_rate = med["operator (gRPC round trips)"]
    lines = ["# scan and rewrite, %s" % datetime.date.today().isoformat(), "",
             "`bench/storage_bench.py --keys %d --size %d --rounds %d` (etcd 3.4 on tmpfs, 2 cores;"
             " medians of %d interleaved rounds)." % (args.keys, args.size, args.rounds,
                                                      args.rounds), "",
             "| job | keys/s (median) | rounds | x operator gRPC loop |", "|---|---|---|---|"]
    for k, v in rows.items():
        lines.append("| %s | %s | %s | %.1fx |" % (k, "{:,.0f}".format(med[k]),
                                                   ", ".join("{:,.0f}".format(x) for x in v),
                                                   med[k] / base_rate))
    lines += ["", "Peak RSS (KiB, /usr/bin/time %%M): scan %d (N/10) vs %d (N); rewrite --dry-run "
              "%d (N/10) vs %d (N)." % (rss[("scan", "N/10")], rss[("scan", "N")],
                                        rss[("rewrite", "N/10")], rss[("rewrite", "N")]), ""]
    if failures:
        lines += ["FAILED checks:"] + ["- " + f for f in failures]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text)
    harness.cleanup()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
