"""Soak and scale: a million mixed requests through the proxy, then 10,000 streams held at once.

  * SOAK_REQUESTS (default 1,000,000; 200,000 against the sanitized build) requests from h2load
    (Put, Range of 10 values, Txn with a compare and a Put: three load generators at once, 4
    connections each) while python3-etcd3 clients put, get, run Txns and watch beside them. Every
    Put and Txn must have reached etcd (its revision moves by exactly their number), Ranges
    still decrypt afterwards, the proxy's RSS stays flat once warmed up (the bound is in the
    check's name), and it holds no more file descriptors afterwards than before.
  * 10,000 Watch streams over 100 client connections, held at once: every stream is answered
    (its watch is created and it receives the event of a put), then all of them are closed and
    the proxy is back to its file descriptors.
"""

import os
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdwire as w  # noqa: E402
import h2peer  # noqa: E402
import harness  # noqa: E402

SANITIZED = "asan" in harness.binary()
TOTAL = int(os.environ.get("SOAK_REQUESTS", "200000" if SANITIZED else "1000000"))
RSS_BOUND_MB = 64 if SANITIZED else 16

etcd3 = harness.import_etcd3()
suite = harness.Suite("soak")
d = harness.workdir("ep-soak")
config = os.path.join(d, "enc.yaml")
harness.write_encryption_config(config)
try:
    etcd = harness.Etcd(d, extra_args=["--quota-backend-bytes", str(4 << 30)]).start()
    suite.logs.append(etcd.log)
    proxy = harness.Proxy(d, [etcd.url], config, workers=2).start()
    suite.logs.append(proxy.log)
except Exception as e:  # noqa: BLE001
    suite.check("etcd and proxy start", False, e)
    suite.finish()


def rss_mb():
    with open("/proc/%d/status" % proxy.proc.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def fds():
    return len(os.listdir("/proc/%d/fd" % proxy.proc.pid))


def etcd_revision():
    res = etcd.ctl("endpoint", "status", "-w", "json")
    import json

    return json.loads(res.stdout)[0]["Status"]["header"]["revision"]


def body(path, msg):
    with open(path, "wb") as f:
        f.write(w.grpc_frame(msg))
    return path


def h2load(path, body_file, n, out):
    cmd = ["h2load", "-n", str(n), "-c", "4", "-m", "8", "-d", body_file, "-H",
           "content-type: application/grpc", "-H", "te: trailers", "http://127.0.0.1:%d%s"
           % (proxy.port, path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    m = [int(x) for x in __import__("re").findall(r"(\d+) succeeded", res.stdout)[:1]] or [0]
    out[path] = (m[0], res.stdout[-400:])


def python_clients(stop, counts, me):
    c = etcd3.client("127.0.0.1", proxy.port, timeout=20)
    n = 0
    try:
        while not stop.is_set():
            key = "/registry/secrets/soak/py%d-%d" % (me, n % 20)
            c.put(key, "v%d" % n)
            value, _ = c.get(key)
            c.transaction(compare=[c.transactions.version(key) > 0],
                          success=[c.transactions.get(key)], failure=[])
            counts["ok"] += value == b"v%d" % n
            counts["n"] += 1
            n += 1
    except Exception as e:  # noqa: BLE001
        counts["error"] = repr(e)
    finally:
        c.close()


def watcher(stop, counts):
    c = etcd3.client("127.0.0.1", proxy.port, timeout=20)

    def on_event(response):
        counts["events"] += len(getattr(response, "events", []) or [])

    watch_id = c.add_watch_prefix_callback("/registry/secrets/soak/py", on_event)
    stop.wait()
    c.cancel_watch(watch_id)
    c.close()


def soak():
    prefix = "/registry/secrets/soak/r"
    seed = etcd3.client("127.0.0.1", proxy.port, timeout=10)
    for i in range(10):
        seed.put("%s%d" % (prefix, i), "range-value-%d" % i)
    seed.put("/registry/secrets/soak/txn", "t")
    seed.close()
    bodies = {
        "/etcdserverpb.KV/Put": body(os.path.join(d, "put.bin"),
                                     w.put_request("/registry/secrets/soak/put", b"p" * 100)),
        "/etcdserverpb.KV/Range": body(os.path.join(d, "range.bin"),
                                       w.range_request(prefix, w.prefix_end(prefix))),
        "/etcdserverpb.KV/Txn": body(os.path.join(d, "txn.bin"), txn_request()),
    }
    share = {"/etcdserverpb.KV/Put": 0.4, "/etcdserverpb.KV/Range": 0.35, "/etcdserverpb.KV/Txn": 0.25}
    counts = {"ok": 0, "n": 0, "events": 0}
    stop = threading.Event()
    side = [threading.Thread(target=python_clients, args=(stop, counts, i)) for i in range(3)]
    side.append(threading.Thread(target=watcher, args=(stop, counts)))
    for t in side:
        t.start()
    time.sleep(1)
    fd0, rev0 = fds(), etcd_revision()
    samples, results = [], {}
    gens = [threading.Thread(target=h2load, args=(p, bodies[p], int(TOTAL * share[p]), results))
            for p in bodies]
    started = time.monotonic()
    for t in gens:
        t.start()
    while any(t.is_alive() for t in gens):
        samples.append(rss_mb())
        time.sleep(0.5)
    took = time.monotonic() - started
    stop.set()
    for t in side:
        t.join(30)
    rev1 = etcd_revision()
    ok = {p: results.get(p, (0, ""))[0] for p in bodies}
    done = sum(ok.values())
    suite.check("%d h2load requests succeeded of %d (%.0f req/s, %.0f s), plus %d python calls"
                % (done, TOTAL, done / took, took, counts["n"] * 3),
                done == sum(int(TOTAL * s) for s in share.values()), results)
    puts = ok["/etcdserverpb.KV/Put"] + ok["/etcdserverpb.KV/Txn"]
    suite.check("every Put and Txn reached etcd (revision +%d, expected >= %d)" % (rev1 - rev0, puts),
                rev1 - rev0 >= puts and rev1 - rev0 <= puts + counts["n"] + 10)
    suite.check("python clients read what they wrote (%d of %d), watch saw %d events"
                % (counts["ok"], counts["n"], counts["events"]),
                counts["ok"] == counts["n"] > 0 and counts["events"] > 0 and "error" not in counts,
                counts.get("error"))
    c = etcd3.client("127.0.0.1", proxy.port, timeout=10)
    values = sorted(v.decode() for v, _ in c.get_prefix(prefix))
    c.close()
    suite.check("Ranges still decrypt after the soak",
                values == sorted("range-value-%d" % i for i in range(10)), values[:3])
    warm = samples[: max(1, len(samples) // 5)]
    after = samples[len(warm):] or warm
    growth = max(after) - max(warm)
    suite.check("RSS flat after warm-up: +%.1f MB (bound %d MB; warm-up peak %.1f MB, end %.1f MB)"
                % (growth, RSS_BOUND_MB, max(warm), samples[-1]), growth < RSS_BOUND_MB)
    time.sleep(1)
    suite.check("no file descriptor leak (%d before, %d after)" % (fd0, fds()), fds() <= fd0)


def txn_request():
    key = b"/registry/secrets/soak/txn"
    compare = (w.field_varint(1, 1) + w.field_varint(2, 2) + w.field_bytes(3, key)
               + w.field_varint(6, 0))  # mod_revision > 0
    success = w.field_bytes(2, w.put_request(key, b"t" * 100))
    failure = w.field_bytes(1, w.range_request(key))
    return w.field_bytes(1, compare) + w.field_bytes(2, success) + w.field_bytes(3, failure)


def ten_thousand_streams():
    key = b"/registry/secrets/soak/fan"
    create = w.grpc_frame(w.field_bytes(1, w.field_bytes(1, key)))
    fd0, rss0 = fds(), rss_mb()
    peers = []
    for _ in range(100):
        p = h2peer.Peer(proxy.port)
        for i in range(100):
            sid = 1 + 2 * i
            p.open(sid, "/etcdserverpb.Watch/Watch")
            p.data_now(sid, create)
        peers.append(p)
    created = all(p.wait(lambda p=p: len(p.stream_data) == 100, 60) for p in peers)
    sizes = {(i, sid): n for i, p in enumerate(peers) for sid, n in p.stream_data.items()}
    rss_held = rss_mb()
    suite.check("10,000 watch streams over 100 connections created (%d answered; proxy %.0f MB, "
                "%.1f KiB per stream)" % (len(sizes), rss_held, (rss_held - rss0) * 1024 / 10000),
                created and len(sizes) == 10000)
    before = [dict(p.stream_data) for p in peers]
    put = proxy.ctl("put", key.decode(), "fan-out")
    got = all(p.wait(lambda p=p, b=b: all(n > b[sid] for sid, n in p.stream_data.items()), 60)
              for p, b in zip(peers, before))
    events = sum(1 for p, b in zip(peers, before) for sid, n in p.stream_data.items() if n > b[sid])
    suite.check("every stream received the put's event (%d of 10000)" % events,
                put.returncode == 0 and got and events == 10000)
    for p in peers:
        p.close()
    harness.wait_for(lambda: fds() <= fd0, 30, 0.5)
    suite.check("connections closed: file descriptors back to %d (now %d)" % (fd0, fds()),
                fds() <= fd0)
    victim = proxy.ctl("get", key.decode(), "--print-value-only")
    suite.check("proxy serving after the streams left", victim.returncode == 0 and
                victim.stdout.strip() == b"fan-out")


suite.run("a million mixed requests", soak)
suite.run("10,000 concurrent streams", ten_thousand_streams)
suite.check("proxy still running", proxy.alive())
suite.finish()
