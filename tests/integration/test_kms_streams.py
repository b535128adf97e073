"""KMS end to end where streams pause for the plugin: watch order, real clients, multi-put txns.

  * Watch order: a kms v1 provider with `cachesize: -1` (no DEK cache, so every value a Watch
    event carries needs a plugin Decrypt and every event pauses its stream). Two watchers with
    prev_kv (etcdctl `-w json` and python3-etcd3) follow a prefix while four clients write 200
    puts and 20 deletes, interleaved, through the proxy. Each watcher must see every event
    exactly once, in revision order, with the plaintext kv and prev_kv values. A second round
    gives the fake plugin 0-20 ms of random latency per call, so the answers to one paused
    message come back out of order; the order of events must still hold.
  * python3-etcd3 / grpcio with kms v2 and the reference plugin: a 2,000-key Range of ~4 MB,
    watch with prev_kv, Txn with a Range inside, 8 concurrent client threads on distinct keys;
    every stored value carries `k8s:enc:kms:v2:<name>:`.
  * Txn with 5 puts in success and 5 in failure under kms v1: only one branch executes and its
    keys read back, each stored value with its own EDEK. Plugin Encrypt calls per Txn = 10, not
    5: the proxy rewrites the request before etcd evaluates the compares, so it must wrap a DEK
    for the puts of both branches (the unexecuted branch's DEKs are simply never stored).
    kube-apiserver never sends multi-put Txns, so this costs nothing in a Kubernetes cluster.

Bounded: one etcd, one proxy per scenario, every process by PID (harness), < 60 s in all.
"""

import base64
import json
import os
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdwire  # noqa: E402
import harness  # noqa: E402
import kmsfake  # noqa: E402

etcd3 = harness.import_etcd3()
suite = harness.Suite("kms streams")
PLUGIN = harness.require_proxy_and_plugin(suite)

GRPC_OPTIONS = harness.grpc_options(64 << 20)
work = harness.workdir("ep-kmsstreams")
etcd = harness.Etcd(work).start()
suite.logs.append(etcd.log)
direct = etcd3.client("127.0.0.1", etcd.port, timeout=20, grpc_options=GRPC_OPTIONS)
MARK = harness.marker()  # in every plaintext written here; must never reach the proxy log


def proxy_with(tag, providers):
    config = os.path.join(work, tag + ".yaml")
    kmsfake.write_kms_config(config, providers, ("secrets",))
    proxy = harness.Proxy(work, [etcd.url], config, extra=["--kms-status-interval-ms", "500"])
    suite.logs.append(proxy.log)
    return proxy.start(timeout=30), config


def client(proxy):
    return etcd3.client("127.0.0.1", proxy.port, timeout=30, grpc_options=GRPC_OPTIONS)


def next_revision():
    """The revision the next write will get (a write of our own outside the kms resources)."""
    return direct.put("/registry/configmaps/streams/revision-probe", b"x").header.revision + 1


def no_leak(proxy, what):
    with open(proxy.log, "rb") as f:
        leaked = MARK.encode() in f.read()
    suite.check("%s: no plaintext marker in the proxy log" % what, not leaked)


# ---------------------------------------------------------------------------------------------
# 1. watch order while every event waits for the plugin


def write_load(proxy, prefix, threads=4, puts=50):
    """|threads| clients, each owning 4 keys, put |puts| times and delete after every 10th put.
    Returns the expected events [(revision, type, key, value, prev value or None)]."""
    expected, errors, lock = [], [], threading.Lock()

    def writer(t):
        c = client(proxy)
        last = {}  # a key is written by one thread only, so its prev value is known here
        try:
            for i in range(puts):
                key = ("%sw%d-k%d" % (prefix, t, i % 4)).encode()
                value = ("%s-w%d-%d" % (MARK, t, i)).encode()
                rev = c.put(key, value).header.revision
                with lock:
                    expected.append((rev, "PUT", key, value, last.get(key)))
                last[key] = value
                if i % 10 == 9:
                    rev = c.delete(key, return_response=True).header.revision
                    with lock:
                        expected.append((rev, "DELETE", key, b"", last.pop(key)))
        except Exception as e:  # noqa: BLE001 - reported as a failed check below
            errors.append("%s: %s" % (type(e).__name__, e))
        finally:
            c.close()

    ths = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(40)
    return sorted(expected), errors


class CtlWatcher:
    """etcdctl watch --prev-kv -w json on the proxy, read by a thread (the pipe must not fill)."""

    def __init__(self, proxy, prefix, start):
        cmd = harness.etcdctl_cmd(proxy.url) + ["watch", "--prefix", prefix, "--prev-kv", "--rev",
                                                str(start), "-w", "json"]
        self.proc = harness.spawn_pipe(cmd)
        self.events, self.bad, self.batches = [], [], []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                resp = json.loads(line)
            except ValueError:
                self.bad.append(line[:80])
                continue
            first = len(self.events)
            for ev in resp.get("Events") or []:
                kv, prev = ev["kv"], ev.get("prev_kv")
                self.events.append((
                    int(kv["mod_revision"]), "DELETE" if ev.get("type") == 1 else "PUT",
                    base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", "")),
                    base64.b64decode(prev.get("value", "")) if prev is not None else None))
            self.batches.append(self.events[first:])

    def stop(self):
        harness.stop(self.proc)


class PyWatcher:
    """python3-etcd3 watch with prev_kv (grpcio) on the proxy."""

    def __init__(self, proxy, prefix, start):
        self.client = client(proxy)
        self.events, self.bad, self.batches = [], [], []
        pfx = prefix.encode()
        self.id = self.client.add_watch_callback(
            pfx, self._on, range_end=etcdwire.prefix_end(pfx), start_revision=start,
            prev_kv=True)

    def _on(self, resp):
        if isinstance(resp, Exception):
            self.bad.append(repr(resp))
            return
        first = len(self.events)
        for ev in resp.events:
            raw = ev._event
            self.events.append((
                raw.kv.mod_revision,
                "DELETE" if isinstance(ev, etcd3.events.DeleteEvent) else "PUT",
                raw.kv.key, raw.kv.value, raw.prev_kv.value if raw.HasField("prev_kv") else None))
        self.batches.append(self.events[first:])

    def stop(self):
        # the client stays open: closing it makes etcd3's watch thread print a traceback
        self.client.cancel_watch(self.id)


def first_difference(got, want):
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            return "event %d: got %r, want %r" % (i, g[:3] + (g[3][:24],), w[:3] + (w[3][:24],))
    return "got %d events, want %d" % (len(got), len(want))


def check_watcher(label, name, watcher, expected):
    revs = [e[0] for e in watcher.events]
    suite.check("%s, %s: no undecodable output or stream error" % (label, name), not watcher.bad,
                watcher.bad[:3])
    suite.check("%s, %s: every event exactly once (%d)" % (label, name, len(expected)),
                len(revs) == len(expected) and len(set(revs)) == len(revs),
                "%d events, %d distinct revisions" % (len(revs), len(set(revs))))
    suite.check("%s, %s: events in revision order" % (label, name), revs == sorted(revs),
                next((i for i in range(1, len(revs)) if revs[i] < revs[i - 1]), None))
    suite.check("%s, %s: decrypted kv and prev_kv of every event" % (label, name),
                watcher.events == expected, first_difference(watcher.events, expected))


def watch_round(label, proxy, fake, prefix):
    fake.reset_counters()
    start = next_revision()
    watchers = {"etcdctl": CtlWatcher(proxy, prefix, start),
                "python3-etcd3": PyWatcher(proxy, prefix, start)}
    try:
        expected, errors = write_load(proxy, prefix)
        suite.check("%s: 200 puts and 20 deletes through the proxy" % label,
                    not errors and len(expected) == 220, errors[:3] or len(expected))
        # a last put, so "the watchers are done" is "they saw its revision"
        end_key, end_value = (prefix + "zz-end").encode(), ("%s-end" % MARK).encode()
        c = client(proxy)
        end_rev = c.put(end_key, end_value).header.revision
        c.close()
        expected.append((end_rev, "PUT", end_key, end_value, None))
        done = harness.wait_for(lambda: all(any(e[0] >= end_rev for e in w.events)
                                            for w in watchers.values()), 30)
        suite.check("%s: both watchers reached the last revision" % label, done,
                    {n: len(w.events) for n, w in watchers.items()})
    finally:
        for w in watchers.values():
            w.stop()
    for name, w in watchers.items():
        check_watcher(label, name, w, expected)
    # Without a cache every ciphertext of every watch message costs a plugin Decrypt; only
    # duplicates within one message (a kv and the next event's prev_kv) share one call.
    need = sum(len({v for e in batch for v in (e[3], e[4]) if v}) for w in watchers.values()
               for batch in w.batches)
    suite.check("%s: every watch value went to the plugin (%d Decrypts >= %d)"
                % (label, fake.count("v1.Decrypt"), need), fake.count("v1.Decrypt") >= need)
    return fake.max_in_flight


def watch_order():
    fake = kmsfake.FakePlugin(os.path.join(work, "watch.sock"), os.urandom(32)).start()
    proxy, _ = proxy_with("watch", [kmsfake.kms_provider_yaml("fake-w", "v1", fake.socket_path,
                                                              cachesize=-1)])
    try:
        watch_round("watch, plugin answering at once", proxy, fake, "/registry/secrets/watch-a/")
        fake.jitter = 0.020
        in_flight = watch_round("watch, plugin with 0-20 ms random latency", proxy, fake,
                                "/registry/secrets/watch-b/")
        suite.check("plugin calls overlapped, so answers could return out of order (max %d in "
                    "flight)" % in_flight, in_flight > 1)
        stored = [v for v, _ in direct.get_prefix("/registry/secrets/watch-")]
        suite.check("watch keys are stored as kms v1 values",
                    stored and all(v.startswith(b"k8s:enc:kms:v1:fake-w:") for v in stored),
                    len(stored))
        suite.check("watch: the proxy is still running", proxy.alive())
        no_leak(proxy, "watch")
    finally:
        proxy.stop()
        fake.stop()


# ---------------------------------------------------------------------------------------------
# 2. python3-etcd3 / grpcio with kms v2 and the reference plugin


class RefPlugin:
    def __init__(self, tag):
        self.sock = os.path.join(work, tag + ".sock")
        key_file, self.log = os.path.join(work, tag + ".key"), os.path.join(work, tag + ".log")
        with open(key_file, "wb") as f:
            f.write(os.urandom(32))
        os.chmod(key_file, 0o600)
        suite.logs.append(self.log)
        self.proc = harness.spawn([PLUGIN, "--listen", "unix://" + self.sock, "--key-file",
                                   key_file], self.log)
        if not harness.wait_for(lambda: os.path.exists(self.sock), 10):
            raise RuntimeError("plugin did not start:\n" + harness.log_tail(self.log))

    def stop(self):
        harness.stop(self.proc)


V2_PREFIX = b"k8s:enc:kms:v2:ref-v2:"


def big_value(i):
    return ("%s-%05d-" % (MARK, i)).encode() + bytes([i % 251]) * 2000


def parallel(n, fn):
    """Runs fn(t) on |n| threads; returns the exceptions they raised."""
    errors = []

    def run(t):
        try:
            fn(t)
        except Exception as e:  # noqa: BLE001
            errors.append("%s: %s" % (type(e).__name__, e))

    ths = [threading.Thread(target=run, args=(t,)) for t in range(n)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(45)
    return errors


def big_range(proxy):
    n, pfx = 2000, "/registry/secrets/big/"

    def load(t):
        c = client(proxy)
        for i in range(t, n, 8):
            c.put("%s%05d" % (pfx, i), big_value(i))
        c.close()

    errors = parallel(8, load)
    suite.check("v2: 2,000 puts of 2 KB through the proxy", not errors, errors[:3])
    c = client(proxy)
    got = {m.key: v for v, m in c.get_prefix(pfx)}
    size = sum(len(v) for v in got.values())
    suite.check("v2: Range of 2,000 keys (%.1f MB) returns every plaintext" % (size / 1e6),
                len(got) == n and size > 4_000_000
                and all(got.get(("%s%05d" % (pfx, i)).encode()) == big_value(i) for i in range(n)),
                "%d keys" % len(got))
    c.close()


def v2_watch(proxy):
    c, pfx = client(proxy), b"/registry/secrets/v2watch/"
    events, done = [], threading.Event()

    def on(resp):
        if isinstance(resp, Exception):
            events.append(("error", repr(resp)))
            done.set()
            return
        for ev in resp.events:
            raw = ev._event
            events.append((type(ev).__name__, raw.kv.key, raw.kv.value,
                           raw.prev_kv.value if raw.HasField("prev_kv") else None))
            if raw.kv.key.endswith(b"end"):
                done.set()

    start = next_revision()
    wid = c.add_watch_callback(pfx, on, range_end=etcdwire.prefix_end(pfx),
                               start_revision=start, prev_kv=True)
    a, v1, v2 = pfx + b"a", b"%s-one" % MARK.encode(), b"%s-two" % MARK.encode()
    c.put(a, v1)
    c.put(a, v2)
    c.delete(a)
    c.put(pfx + b"end", b"e")
    done.wait(15)
    c.cancel_watch(wid)  # the client stays open (see PyWatcher.stop)
    want = [("PutEvent", a, v1, None), ("PutEvent", a, v2, v1), ("DeleteEvent", a, b"", v2),
            ("PutEvent", pfx + b"end", b"e", None)]
    suite.check("v2: watch with prev_kv gives decrypted kv and prev_kv in order", events == want,
                [e[:2] for e in events])


def v2_txn(proxy):
    c, pfx = client(proxy), "/registry/secrets/v2txn/"
    for i in range(20):
        c.put("%s%02d" % (pfx, i), "%s-txn-%d" % (MARK, i))
    ok, responses = c.transaction(
        compare=[c.transactions.version(pfx + "00") > 0],
        success=[c.transactions.get(pfx, etcdwire.prefix_end(pfx.encode())),
                 c.transactions.put(pfx + "new", "%s-txn-new" % MARK),
                 c.transactions.get(pfx + "05")],
        failure=[])
    values = [v for v, _ in responses[0]] if ok and len(responses) == 3 else []
    suite.check("v2: Txn with a Range inside returns 20 plaintexts",
                values == [("%s-txn-%d" % (MARK, i)).encode() for i in range(20)], len(values))
    suite.check("v2: and a single Get after a Put in the same Txn",
                ok and len(responses) == 3 and [v for v, _ in responses[2]] == [
                    ("%s-txn-5" % MARK).encode()])
    got, _ = c.get(pfx + "new")
    suite.check("v2: the Txn's put reads back", got == ("%s-txn-new" % MARK).encode())
    c.close()


def v2_concurrent(proxy):
    bad = []

    def worker(t):
        c = client(proxy)
        for i in range(40):
            key, value = "/registry/secrets/conc/t%d-%d" % (t, i % 5), "%s-c%d-%d" % (MARK, t, i)
            c.put(key, value)
            got, _ = c.get(key)
            if got != value.encode():
                bad.append((key, got[:30] if got else got))
        c.close()

    errors = parallel(8, worker)
    suite.check("v2: 8 concurrent clients, 320 put/get pairs, every get sees its put",
                not errors and not bad, (errors + bad)[:3])


def v2_clients():
    plugin = RefPlugin("ref-v2")
    proxy, _ = proxy_with("ref-v2", [kmsfake.kms_provider_yaml("ref-v2", "v2", plugin.sock)])
    try:
        big_range(proxy)
        v2_watch(proxy)
        v2_txn(proxy)
        v2_concurrent(proxy)
        stored = [v for pfx in ("big", "v2watch", "v2txn", "conc")
                  for v, _ in direct.get_prefix("/registry/secrets/%s/" % pfx)]
        suite.check("v2: all %d stored values carry %r" % (len(stored), V2_PREFIX),
                    len(stored) > 2000 and all(v.startswith(V2_PREFIX) for v in stored))
        suite.check("v2: the proxy is still running", proxy.alive())
        no_leak(proxy, "v2")
    finally:
        proxy.stop()
        plugin.stop()


# ---------------------------------------------------------------------------------------------
# 3. Txn with several puts under kms v1


V1_PREFIX = b"k8s:enc:kms:v1:fake-t:"


def edek_of(stored):
    """The EDEK of a kms v1 value: prefix, u16be length, EDEK (spec 1.5)."""
    body = stored[len(V1_PREFIX):]
    (n,) = struct.unpack(">H", body[:2])
    return body[2:2 + n]


def txn_round(label, c, fake, guard_version, executed, skipped):
    fake.reset_counters()
    def puts(keys):
        return [c.transactions.put(k, "%s-%s" % (MARK, k)) for k in keys]

    # the guard exists (version 1): comparing with 1 runs success, with 0 runs failure
    cmp = c.transactions.version("/registry/secrets/txn/guard")
    ok, _ = c.transaction(
        compare=[cmp == guard_version],
        success=puts(executed if guard_version else skipped),
        failure=puts(skipped if guard_version else executed))
    suite.check("%s: the expected branch ran" % label, ok == bool(guard_version))
    encrypts = fake.count("v1.Encrypt")
    suite.check("%s: 10 plugin Encrypts, one per put of both branches (got %d)"
                % (label, encrypts), encrypts == 10)
    got = [c.get(k)[0] for k in executed]
    suite.check("%s: the 5 executed puts read back" % label,
                got == [("%s-%s" % (MARK, k)).encode() for k in executed],
                [g and g[-12:] for g in got])
    suite.check("%s: the 5 puts of the other branch are absent" % label,
                all(direct.get(k)[0] is None for k in skipped))
    return [direct.get(k)[0] for k in executed]


def txn_puts():
    fake = kmsfake.FakePlugin(os.path.join(work, "txn.sock"), os.urandom(32)).start()
    proxy, config = proxy_with("txn", [kmsfake.kms_provider_yaml("fake-t", "v1", fake.socket_path)])
    c = client(proxy)
    try:
        c.put("/registry/secrets/txn/guard", "on")
        keys = ["/registry/secrets/txn/%s%d" % (b, i) for b in "abcd" for i in range(5)]
        stored = txn_round("txn 1 (compare true)", c, fake, 1, keys[0:5], keys[5:10])
        stored += txn_round("txn 2 (compare false)", c, fake, 0, keys[10:15], keys[15:20])
        suite.check("the 10 stored values are kms v1",
                    all(s and s.startswith(V1_PREFIX) for s in stored))
        edeks = {edek_of(s) for s in stored if s}
        suite.check("each stored value has its own EDEK (%d distinct)" % len(edeks),
                    len(edeks) == 10)
        rc, out, err = harness.cli("decrypt", config, keys[12], stored[7] or b"")
        suite.check("the CLI decrypts a Txn-written value", rc == 0 and out == (
            "%s-%s" % (MARK, keys[12])).encode(), err[-200:])
        suite.check("txn: the proxy is still running", proxy.alive())
        no_leak(proxy, "txn")
    finally:
        c.close()
        proxy.stop()
        fake.stop()


t0 = time.monotonic()
for name, fn in [("watch order while streams pause for the plugin", watch_order),
                 ("python3-etcd3 / grpcio with kms v2 (reference plugin)", v2_clients),
                 ("Txn with several puts under kms v1", txn_puts)]:
    suite.run(name, fn)
direct.close()
suite.check("the file ran in under 60 s (%.1f s)" % (time.monotonic() - t0),
            time.monotonic() - t0 < 60)
suite.finish()
