"""KMS v1 and v2 through the proxy with the reference plugin (and a Python one for timing).

  * etcdctl put/get/watch/txn through the proxy with a kms v2 and a kms v1 config served by
    `etcd-encrypt-kms-plugin --key-file`; stored values carry `k8s:enc:kms:v2:<name>:` /
    `k8s:enc:kms:v1:<name>:` and decrypt with the CLI;
  * KEK rotation (new key file + SIGHUP): old values still read, new writes carry the new key_id,
    exactly one new seed Encrypt (counted from the proxy's "new write state" log lines);
  * the plugin killed under load: v1 writes fail UNAVAILABLE with a message and nothing reaches
    etcd in clear, cached reads keep working, uncached ones pass through unchanged, and
    everything recovers once the plugin is back (v2 writes go on meanwhile: the write state is
    valid 3 minutes after the last healthy Status, spec 1.6.3);
  * a plugin slower than the configured timeout (Python, sleeping): UNAVAILABLE writes,
    pass-through reads, and the proxy still answers other keys at once;
  * a Range over 2,000 values with 2,000 distinct KMS v1 DEKs issues its plugin Decrypts
    concurrently (the Python plugin counts calls in flight).
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdwire  # noqa: E402
import harness  # noqa: E402
import kmsfake  # noqa: E402

etcd3 = harness.import_etcd3()
suite = harness.Suite("kms reference plugin")
PLUGIN = harness.require_proxy_and_plugin(suite)

work = harness.workdir("ep-kmsref")
etcd = harness.Etcd(work).start()
suite.logs.append(etcd.log)
direct = etcd3.client("127.0.0.1", etcd.port, timeout=20)
V2_PREFIX = b"k8s:enc:kms:v2:ref-v2:"
V1_PREFIX = b"k8s:enc:kms:v1:ref-v1:"


class Plugin:
    """etcd-encrypt-kms-plugin with a key file; restartable on the same socket."""

    def __init__(self, tag):
        self.sock = os.path.join(work, tag + ".sock")
        self.key_file = os.path.join(work, tag + ".key")
        self.log = os.path.join(work, tag + ".log")
        self.old_keys = []
        self.write_key()
        self.proc = None
        suite.logs.append(self.log)

    def write_key(self):
        if os.path.exists(self.key_file):
            old = self.key_file + ".%d" % len(self.old_keys)
            shutil.copy(self.key_file, old)
            self.old_keys.append(old)
        with open(self.key_file, "wb") as f:
            f.write(os.urandom(32))
        os.chmod(self.key_file, 0o600)

    def start(self):
        args = [PLUGIN, "--listen", "unix://" + self.sock, "--key-file", self.key_file]
        for old in self.old_keys:
            args += ["--old-key-file", old]
        self.proc = harness.spawn(args, self.log)
        if not harness.wait_for(lambda: os.path.exists(self.sock), 10):
            raise RuntimeError("plugin did not start:\n" + harness.log_tail(self.log))
        return self

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def proxy_with(tag, providers, resources=("secrets",), extra=()):
    config = os.path.join(work, tag + ".yaml")
    kmsfake.write_kms_config(config, providers, resources)
    proxy = harness.Proxy(work, [etcd.url], config, extra=["--kms-status-interval-ms", "500"]
                          + list(extra))
    suite.logs.append(proxy.log)
    return proxy.start(timeout=30), config


def log_count(proxy, needle):
    with open(proxy.log, "rb") as f:
        return f.read().count(needle)


def key_id_of(stored):
    """EncryptedObject.keyID (field 2) of a kms v2 stored value."""
    body = stored[stored.index(b":", len(b"k8s:enc:kms:v2:")) + 1:]
    return next(bytes(v) for n, _, v in etcdwire.parse_fields(body) if n == 2)


def text(out):
    return (out.decode(errors="replace") if isinstance(out, bytes) else out).strip()


def unavailable(res):
    """True when etcdctl failed with gRPC UNAVAILABLE and a message about the KMS plugin."""
    err = text(res.stderr)
    return res.returncode != 0 and "Unavailable" in err and "DEK" in err, err[-240:]


def ctl_put(proxy, key, value):
    return proxy.ctl("put", key, value, timeout=20)


def check_roundtrip(label, proxy, config, prefix):
    key, value = "/registry/secrets/ns/%s-a" % label, harness.marker()
    res = ctl_put(proxy, key, value)
    suite.check("%s: etcdctl put through the proxy" % label, res.returncode == 0, res.stderr)
    got = text(proxy.ctl("get", key, "--print-value-only", timeout=20).stdout)
    suite.check("%s: etcdctl get returns the plaintext" % label, got == value, got[:60])
    stored, _ = direct.get(key)
    suite.check("%s: stored value carries %r" % (label, prefix), (stored or b"").startswith(prefix),
                (stored or b"")[:40])
    rc, out, err = harness.cli("decrypt", config, key, stored or b"")
    suite.check("%s: the CLI decrypts the stored value" % label, rc == 0 and out == value.encode(),
                err[-200:])
    # txn: compare on version, put on success
    txn = "version(\"%s\") > \"0\"\n\nput %s txn-%s\n\n\n" % (key, key, value)
    res = proxy.ctl("txn", input=txn.encode(), timeout=20)
    stored, _ = direct.get(key)
    suite.check("%s: txn put is encrypted" % label, res.returncode == 0 and stored.startswith(prefix)
                and value.encode() not in stored, res.stderr)
    # watch sees the decrypted value
    watch = harness.spawn_pipe(harness.etcdctl_cmd(proxy.url) + ["watch", key + "-w"])
    time.sleep(0.5)
    ctl_put(proxy, key + "-w", "watched-" + value)
    out = b""
    deadline = time.time() + 10
    while time.time() < deadline and b"watched-" not in out:
        out += os.read(watch.stdout.fileno(), 65536)
    harness.stop(watch)
    suite.check("%s: watch event carries the plaintext" % label,
                ("watched-" + value).encode() in out, out[-80:])
    suite.check("%s: no plaintext marker in the proxy log" % label,
                not open(proxy.log, "rb").read().count(value.encode()))


def v2_and_rotation():
    plugin = Plugin("ref-v2").start()
    proxy, config = proxy_with("ref-v2", [kmsfake.kms_provider_yaml("ref-v2", "v2", plugin.sock)])
    try:
        check_roundtrip("kms v2", proxy, config, V2_PREFIX)
        suite.check("one seed Encrypt after start", log_count(proxy, b"new write state") == 1)
        before_key = "/registry/secrets/ns/before-rotation"
        ctl_put(proxy, before_key, "old-value")
        old_id = key_id_of(direct.get(before_key)[0])
        plugin.write_key()
        plugin.proc.send_signal(signal.SIGHUP)
        rotated = harness.wait_for(lambda: log_count(proxy, b"new write state") >= 2, 15)
        suite.check("KEK rotation makes the proxy encrypt a new seed", rotated)
        time.sleep(1.5)  # a few more Status polls: no further Encrypt
        suite.check("exactly one new Encrypt per rotation", log_count(proxy, b"new write state") == 2,
                    log_count(proxy, b"new write state"))
        got = text(proxy.ctl("get", before_key, "--print-value-only", timeout=20).stdout)
        suite.check("a value from before the rotation still reads", got == "old-value", got)
        ctl_put(proxy, "/registry/secrets/ns/after-rotation", "new-value")
        new_id = key_id_of(direct.get("/registry/secrets/ns/after-rotation")[0])
        suite.check("a new write carries the new key_id", new_id != old_id, (old_id, new_id))
    finally:
        proxy.stop()
        plugin.kill()


def v1_and_plugin_failure():
    plugin = Plugin("ref-v1").start()
    proxy, config = proxy_with("ref-v1", [kmsfake.kms_provider_yaml("ref-v1", "v1", plugin.sock,
                                                                     timeout="1s")])
    through = etcd3.client("127.0.0.1", proxy.port, timeout=20)
    try:
        check_roundtrip("kms v1", proxy, config, V1_PREFIX)
        cached = "/registry/secrets/ns/cached"
        through.put(cached, b"cached-value")
        through.get(cached)  # its DEK is now in the proxy's cache
        uncached = "/registry/secrets/ns/uncached"
        rc, stored_uncached, err = harness.cli("encrypt", config, uncached, b"uncached-value")
        direct.put(uncached, stored_uncached)

        stop = threading.Event()
        errors = []

        def load():
            c = etcd3.client("127.0.0.1", proxy.port, timeout=20)
            i = 0
            while not stop.is_set():
                try:
                    c.put("/registry/secrets/load/%d" % (i % 50), b"load-%d" % i)
                    c.get(cached)
                except Exception as e:  # noqa: BLE001 - failures are expected while down
                    errors.append(str(e))
                i += 1

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(1)
        plugin.kill()
        time.sleep(0.5)
        ok, why = unavailable(ctl_put(proxy, "/registry/secrets/ns/while-down", "secret-while-down"))
        suite.check("v1 write with the plugin down fails UNAVAILABLE with a message", ok, why)
        got, _ = through.get(cached)
        suite.check("a read whose DEK is cached still works", got == b"cached-value", got)
        got, _ = through.get(uncached)
        suite.check("an uncached read passes the stored value through", got == stored_uncached,
                    (got or b"")[:40])
        plugin.start()
        recovered = harness.wait_for(
            lambda: ctl_put(proxy, "/registry/secrets/ns/recovered", "back").returncode == 0, 15)
        suite.check("writes recover once the plugin is back", recovered)
        stop.set()
        loader.join(30)
        plain = [kv[1].key for kv in direct.get_prefix("/registry/secrets/")
                 if not kv[0].startswith((V1_PREFIX, V2_PREFIX))]
        suite.check("nothing under the kms prefix is stored in clear", not plain, plain[:5])
        suite.check("the proxy survived the plugin's death under load", proxy.alive())
        suite.check("no plaintext from the load in the proxy log",
                    not open(proxy.log, "rb").read().count(b"load-"))
    finally:
        through.close()
        proxy.stop()
        plugin.kill()


def slow_plugin():
    fake = kmsfake.FakePlugin(os.path.join(work, "slow.sock"), os.urandom(32)).start()
    proxy, config = proxy_with("slow", [kmsfake.kms_provider_yaml("slow", "v1", fake.socket_path,
                                                                   timeout="500ms")],
                               resources=("secrets",))
    through = etcd3.client("127.0.0.1", proxy.port, timeout=20)
    try:
        rc, stored, _ = harness.cli("encrypt", config, "/registry/secrets/ns/slow-read", b"slow")
        direct.put("/registry/secrets/ns/slow-read", stored)
        direct.put("/registry/configmaps/ns/plain", b"plain-value")
        fake.delay = 3.0
        results = {}

        def slow_write():
            t = time.time()
            res = ctl_put(proxy, "/registry/secrets/ns/slow-write", "x")
            results["write"] = (unavailable(res), time.time() - t)

        th = threading.Thread(target=slow_write)
        th.start()
        time.sleep(0.1)
        t = time.time()
        other = etcd3.client("127.0.0.1", proxy.port, timeout=20)
        got, _ = other.get("/registry/configmaps/ns/plain")
        fast = time.time() - t
        suite.check("the proxy answers other keys while the plugin is slow",
                    got == b"plain-value" and fast < 0.4, fast)
        th.join(10)
        (ok, why), took = results.get("write", ((False, "no answer"), 0))
        suite.check("a write beyond the plugin timeout fails UNAVAILABLE",
                    ok and took < 2.5, (why, took))
        got, _ = other.get("/registry/secrets/ns/slow-read")
        suite.check("an uncached read beyond the timeout passes through", got == stored,
                    (got or b"")[:30])
        suite.check("nothing was stored for the failed write",
                    direct.get("/registry/secrets/ns/slow-write")[0] is None)
        other.close()
    finally:
        through.close()
        proxy.stop()
        fake.stop()


def concurrent_range():
    fake = kmsfake.FakePlugin(os.path.join(work, "many.sock"), os.urandom(32)).start()
    providers = [kmsfake.kms_provider_yaml("many", "v1", fake.socket_path, cachesize=5000)]
    proxy, config = proxy_with("many", providers)
    n = 2000
    try:
        c = etcd3.client("127.0.0.1", proxy.port, timeout=60)
        for i in range(n):
            c.put("/registry/secrets/many/%05d" % i, b"value-%d" % i)
        c.close()
        suite.check("2,000 v1 writes made 2,000 plugin Encrypts", fake.count("v1.Encrypt") == n,
                    fake.count("v1.Encrypt"))
    finally:
        proxy.stop()
    proxy, _ = proxy_with("many-read", providers)  # fresh caches
    try:
        fake.reset_counters()
        c = etcd3.client("127.0.0.1", proxy.port, timeout=60)
        t = time.time()
        values = {m.key: v for v, m in c.get_prefix("/registry/secrets/many/")}
        took = time.time() - t
        ok = len(values) == n and all(values[b"/registry/secrets/many/%05d" % i] == b"value-%d" % i
                                      for i in range(n))
        suite.check("a Range over 2,000 values with distinct DEKs decrypts them all", ok,
                    len(values))
        suite.check("it made 2,000 plugin Decrypts", fake.count("v1.Decrypt") == n,
                    fake.count("v1.Decrypt"))
        suite.check("the Decrypts ran concurrently (max in flight %d)" % fake.max_in_flight,
                    fake.max_in_flight > 1)
        suite.check("and the Range was reasonably fast (%.1f s)" % took, took < 30)
        c.close()
    finally:
        proxy.stop()
        fake.stop()


for name, fn in [("kms v2, KEK rotation", v2_and_rotation),
                 ("kms v1, plugin killed under load", v1_and_plugin_failure),
                 ("slow plugin", slow_plugin), ("concurrent Range", concurrent_range)]:
    suite.run(name, fn)
suite.finish()
