"""Hot reload of the EncryptionConfiguration and of the certificates, against a real etcd and
real clients (python3-etcd3 writers and watches, raw TLS HTTP/2 connections).

1. Reload under load: three etcd3 writers and a watch on /registry/secrets/ through the proxy
   while the keys rotate four times: an atomic rename over the file, a switch of the path to a
   Kubernetes ConfigMap-style layout (path -> ..data/enc.yaml, ..data -> ..<timestamp>), a swap
   of ..data, and a SIGHUP. No request fails, the watch stream keeps delivering every revision
   decrypted, what etcd holds (read directly) carries the key of the phase it was written in,
   every old value still reads through the proxy, and /metrics counts the reloads and names the
   hash of the file's bytes. Rewriting the same bytes reloads nothing.
2. Broken files (YAML syntax error, a 20-byte AES key) are refused with "file:line:col", count
   as failures, and the old config keeps serving; SIGHUP with the broken file too, and a removed
   file; then a fixed file reloads. /metrics stays valid Prometheus text throughout.
3. --encryption-provider-config-automatic-reload=false: a change of the file is not picked up,
   SIGHUP then reloads it.
4. SIGHUP re-reads --cert-file/--key-file: new TLS connections see the new certificate,
   connections opened before (a raw HTTP/2 connection and an etcd3 client with an open watch)
   keep working; a broken pair is refused and the current one keeps serving.
"""

import base64
import hashlib
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdwire  # noqa: E402
import harness  # noqa: E402

suite = harness.Suite("reload")

harness.require_binary(suite, "serve", "proxy binary is built and serves")
try:
    etcd3 = harness.import_etcd3()
    import hpack  # noqa: E402
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
except Exception as e:  # noqa: BLE001 - a missing client is a failure, never a skip
    suite.check("python3-etcd3, python3-hpack and python3-cryptography import", False, e)
    suite.finish()

WORK = harness.workdir("ep-reload")
try:
    ETCD = harness.Etcd(WORK)
    suite.logs.append(ETCD.log)
    ETCD.start()
except Exception as e:  # noqa: BLE001
    suite.check("etcd starts", False, e)
    suite.finish()

RAW = etcd3.client("127.0.0.1", ETCD.port, timeout=30)  # etcd itself: what is stored
KEYS = {}  # key name -> raw AES key, every key any test ever configured
STORED_RE = re.compile(rb"^k8s:enc:aesgcm:v1:([^:]+):")


# ---------------------------------------------------------------------------------------------
# helpers


def new_key(name, size=32):
    key = os.urandom(size)
    if size in (16, 24, 32):
        KEYS[name] = key
    return key


def config_text(keys, resources=("secrets", "configmaps")):
    """An EncryptionConfiguration: aesgcm with |keys| [(name, raw key)] in order, then
    identity."""
    lines = ["apiVersion: apiserver.config.k8s.io/v1", "kind: EncryptionConfiguration",
             "resources:", "  - resources:"]
    lines += ["      - " + r for r in resources]
    lines += ["    providers:", "      - aesgcm:", "          keys:"]
    for name, key in keys:
        lines += ["            - name: " + name,
                  "              secret: " + base64.b64encode(key).decode()]
    lines += ["      - identity: {}", ""]
    return "\n".join(lines).encode()


def scenario_config(name, first_key):
    """A fresh directory WORK/|name| whose enc.yaml serves aesgcm under |first_key| (its name and
    secret); returns the directory and the config path."""
    d = os.path.join(WORK, name)
    os.makedirs(d)
    config = os.path.join(d, "enc.yaml")
    write_atomic(config, config_text([first_key]))
    return d, config


def write_atomic(path, data):
    """Writes |data| to a temp file beside |path| and renames it over |path|."""
    tmp = os.path.join(os.path.dirname(path), ".%s.tmp-%d" % (os.path.basename(path), os.getpid()))
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.rename(tmp, path)
    return data


def sha256_of(path):
    with open(path, "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest()


def key_name(stored):
    m = STORED_RE.match(stored or b"")
    return m.group(1).decode() if m else None


def open_stored(etcd_key, stored):
    """Independent AES-GCM open (AAD = the etcd key) with whichever test key the prefix names."""
    name = key_name(stored)
    if name is None or name not in KEYS:
        raise ValueError("not an aesgcm value of a known key: %r" % (stored or b"")[:40])
    body = stored[STORED_RE.match(stored).end():]
    if isinstance(etcd_key, str):
        etcd_key = etcd_key.encode()
    return AESGCM(KEYS[name]).decrypt(body[:12], body[12:], etcd_key)


def raw_get(key):
    value, _ = RAW.get(key)
    return value


def stored_as(key, plain, name):
    """None when etcd holds |plain| at |key| encrypted with key |name|, else what is wrong."""
    raw = raw_get(key)
    if key_name(raw) != name:
        return "stored with %r, want %r (%r)" % (key_name(raw), name, (raw or b"")[:40])
    try:
        got = open_stored(key, raw)
    except Exception as e:  # noqa: BLE001
        return "does not open: %s" % e
    return None if got == plain else "opens to something else"


def put_stored_as(client, key, plain, name):
    """Writes |plain| at |key| through |client|, then what stored_as says of it."""
    client.put(key, plain)
    return stored_as(key, plain, name)


def check_serving(m, config, proxy, what):
    """Checks |what|: the reload line |m| (hash in group 1) names the hash of file |config|."""
    suite.check(what, m is not None and m.group(1) == sha256_of(config),
                m.group(0) if m else harness.log_tail(proxy.log))


def metrics_text(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        return r.read().decode()


SAMPLE_RE = re.compile(r'^[A-Za-z_:][\w:]*(\{([A-Za-z_]\w*="(?:[^"\\\n]|\\.)*",?)*\})? '
                       r'(\S+)( -?\d+)?$')


def exposition_problems(text):
    """Lines of a /metrics page that break the Prometheus text format (a scraper rejects the
    whole page at the first one)."""
    bad = []
    for n, line in enumerate(text.split("\n"), 1):
        if line == "":
            continue
        if line.startswith("# HELP "):
            ok = re.match(r"^# HELP [A-Za-z_:][\w:]* ", line) and "# TYPE" not in line[7:] \
                and "# HELP" not in line[7:]
        elif line.startswith("# TYPE "):
            ok = re.match(r"^# TYPE [A-Za-z_:][\w:]* (counter|gauge|histogram|summary|untyped)$",
                          line)
        elif line.startswith("#"):
            ok = True
        else:
            m = SAMPLE_RE.match(line)
            ok = m is not None
            if ok:
                try:
                    float(m.group(3))
                except ValueError:
                    ok = False
        if not ok:
            bad.append("%d: %s" % (n, line[:160]))
    return bad


def metrics(port):
    """/metrics as {(name, frozenset(labels)): value}."""
    text = metrics_text(port)
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


RELOADS = "apiserver_encryption_config_controller_automatic_reloads_total"
RELOAD_TS = "apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds"
INFO = "apiserver_encryption_config_controller_last_config_info"


def reload_state(port):
    """(successes, failures, {status: last timestamp}, [hash labels of last_config_info],
    set of apiserver_id_hash labels)."""
    m = metrics(port)
    count, ts, hashes, ids = {"success": 0, "failure": 0}, {}, [], set()
    for (name, labels), v in m.items():
        d = dict(labels)
        if name == RELOADS:
            count[d.get("status")] = count.get(d.get("status"), 0) + v
            ids.add(d.get("apiserver_id_hash"))
        elif name == RELOAD_TS:
            ts[d.get("status")] = v
            ids.add(d.get("apiserver_id_hash"))
        elif name == INFO and v == 1:
            hashes.append(d.get("hash"))
            ids.add(d.get("apiserver_id_hash"))
    return count["success"], count["failure"], ts, hashes, ids


class Log:
    """Reads a proxy log from an offset on, so that each wait sees only new lines."""

    def __init__(self, path):
        self.path, self.offset = path, 0

    def text(self, start=0):
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")

    def mark(self):
        self.offset = os.path.getsize(self.path)
        return self.offset

    def wait(self, pattern, timeout=10):
        """The first match of |pattern| after the mark (and moves the mark past it), or None."""
        found = []

        def seen():
            m = re.search(pattern, self.text(self.offset))
            if m:
                found.append(m)
            return bool(m)

        start = self.offset
        if harness.wait_for(seen, timeout, 0.05):
            self.offset = start + len(found[0].string[: found[0].end()].encode())
            return found[0]
        return None


def start_proxy(config, extra=(), down_tls=None, client_cert_auth=False, workers=2):
    mport = harness.free_port()
    p = harness.Proxy(WORK, [ETCD.url], config, down_tls=down_tls,
                      client_cert_auth=client_cert_auth, workers=workers,
                      extra=["--listen-metrics-urls", "http://127.0.0.1:%d" % mport] + list(extra))
    suite.logs.append(p.log)
    p.start()
    p.metrics_port = mport

    def ready():
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % mport, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    if not harness.wait_for(ready, 15):
        raise RuntimeError("proxy /readyz never answered 200:\n" + harness.log_tail(p.log))
    return p, Log(p.log)


def client(port, **kw):
    return etcd3.client("127.0.0.1", port, timeout=15, **kw)


def plain(tag):
    return (harness.marker() + "-" + tag).encode()


# ---------------------------------------------------------------------------------------------
# 1. reload under load


class Writers:
    """|n| etcd3 clients putting unique secrets through the proxy as fast as they can; every put
    is recorded with its start and end time."""

    def __init__(self, port, n=3):
        self.expected = {}  # key -> plaintext (set before the put is sent)
        self.done = []  # (t_start, t_end, key, value)
        self.errors = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(port, i), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def run(self, port, n):
        c = client(port)
        i = 0
        try:
            while not self.stop.is_set():
                key = "/registry/secrets/load/w%d/s%06d" % (n, i)
                value = plain("w%d-%d" % (n, i))
                self.expected[key] = value
                t0 = time.monotonic()
                try:
                    c.put(key, value)
                except Exception as e:  # noqa: BLE001 - every failed request is counted
                    with self.lock:
                        self.errors.append((key, repr(e)[:300]))
                else:
                    with self.lock:
                        self.done.append((t0, time.monotonic(), key, value))
                i += 1
        finally:
            c.close()

    def count_started_after(self, t):
        with self.lock:
            return sum(1 for d in self.done if d[0] > t)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)
        return not any(t.is_alive() for t in self.threads)


class Watch:
    """One etcd3 watch_prefix stream through the proxy; events are kept with their arrival
    time."""

    def __init__(self, port, prefix):
        self.client = client(port)
        self.events, self.errors = [], []
        self.lock = threading.Lock()
        rev = self.client.get_response("/").header.revision
        self.start_revision = rev + 1
        self.iterator, self.cancel = self.client.watch_prefix(prefix, start_revision=rev + 1)
        threading.Thread(target=self.drain, daemon=True).start()

    def drain(self):
        try:
            for ev in self.iterator:
                with self.lock:
                    self.events.append((time.monotonic(), ev))
        except Exception as e:  # noqa: BLE001 - a broken stream is a failure below
            self.errors.append(repr(e)[:300])

    def after(self, t):
        with self.lock:
            return [ev for at, ev in self.events if at > t]


def reload_under_load():
    k1, k2, k3, k4 = (new_key("key%d" % i) for i in (1, 2, 3, 4))
    d, config = scenario_config("load", ("key1", k1))
    hash0 = sha256_of(config)
    proxy, log = start_proxy(config)
    s0, f0, _, hashes, ids = reload_state(proxy.metrics_port)
    suite.check("at start: no reloads counted, last_config_info names the file's sha256",
                (s0, f0) == (0, 0) and hashes == [hash0], (s0, f0, hashes, hash0))
    suite.check("reload metrics carry a non-empty apiserver_id_hash", ids and all(ids), ids)
    suite.check("start log names the config hash", hash0 in log.text(), harness.log_tail(proxy.log))

    probe_client = client(proxy.port)
    old_values = {}  # values written under each key, read back at the end
    for i in range(20):
        k, v = "/registry/secrets/old/key1-%02d" % i, plain("old1-%d" % i)
        probe_client.put(k, v)
        old_values[k] = v
    bad = [k for k, v in old_values.items() if stored_as(k, v, "key1")]
    suite.check("before any reload: values are stored under key1", not bad, bad[:3])

    watch = Watch(proxy.port, "/registry/secrets/")
    writers = Writers(proxy.port)
    harness.wait_for(lambda: writers.count_started_after(0) >= 50, 20)
    phases = []  # (key name, time the reload was seen, time the next change began)

    probe_puts = [0]  # puts of old_values made while the watch was open

    def after_reload(name, why, expect_hash, t_change):
        m = log.wait(r"encryption config reloaded after %s: (sha256:[0-9a-f]{64}) serving"
                     % re.escape(why), 10)
        t_seen = time.monotonic()
        suite.check("%s: log says reloaded after %s with the new file's hash" % (name, why),
                    m is not None and m.group(1) == expect_hash,
                    (m.group(1) if m else harness.log_tail(proxy.log), expect_hash))
        if phases:
            phases[-1][2] = t_change
        phases.append([name, t_seen, None])
        # a probe written now through the proxy, read raw from etcd
        tag = "%s-%s" % (name, why.replace(" ", "-"))
        k, v = "/registry/secrets/probe/" + tag, plain("probe-" + tag)
        probe_client.put(k, v)
        old_values[k] = v
        probe_puts[0] += 1
        problem = stored_as(k, v, name)
        suite.check("%s: a new write is stored with k8s:enc:aesgcm:v1:%s:" % (name, name),
                    problem is None, problem)
        for i in range(5):
            k, v = "/registry/secrets/old/%s-%02d" % (tag, i), plain("old-%s-%d" % (tag, i))
            probe_client.put(k, v)
            old_values[k] = v
            probe_puts[0] += 1
        # the writers go on and the same watch delivers their new writes, decrypted
        ok = harness.wait_for(lambda: writers.count_started_after(t_seen) >= 30, 20)
        suite.check("%s: writers keep writing after the reload" % name, ok,
                    writers.count_started_after(t_seen))
        ok = harness.wait_for(lambda: len(watch.after(t_seen)) >= 30, 20)
        evs = watch.after(t_seen)
        wrong = [ev.key for ev in evs if writers.expected.get(ev.key.decode(), old_values.get(
            ev.key.decode())) != ev.value]
        suite.check("%s: the watch opened before keeps delivering events, values decrypted "
                    "(%d since the reload)" % (name, len(evs)),
                    ok and not wrong and not watch.errors, (len(evs), wrong[:3], watch.errors))
        s, f, ts, hashes, _ = reload_state(proxy.metrics_port)
        suite.check("%s: success counter %d, no failures, last_config_info = sha256 of the file"
                    % (name, len(phases)),
                    s == len(phases) and f == 0 and hashes == [sha256_of(config)],
                    (s, f, hashes, sha256_of(config)))
        suite.check("%s: ..._automatic_reload_last_timestamp_seconds{status=\"success\"} is now"
                    % name, abs(ts.get("success", 0) - time.time()) < 30 and "failure" not in ts, ts)

    # (a) atomic rename of a new file over the config
    t = time.monotonic()
    write_atomic(config, config_text([("key2", k2), ("key1", k1)]))
    after_reload("key2", "a change of the file", sha256_of(config), t)

    # the same bytes again (atomic rename, new inode): not a reload
    mark = log.mark()
    write_atomic(config, open(config, "rb").read())
    time.sleep(1.5)  # negative check: the debounce is 500 ms
    s, _, _, _, _ = reload_state(proxy.metrics_port)
    suite.check("rewriting the same bytes reloads nothing",
                s == 1 and "reload" not in log.text(mark), (s, log.text(mark)[-500:]))

    # (b) the path becomes a ConfigMap volume: enc.yaml -> ..data/enc.yaml, ..data -> ..ts1
    t = time.monotonic()
    ts1 = os.path.join(d, "..2024_01_01_00_00_00.000000001")
    os.makedirs(ts1)
    write_atomic(os.path.join(ts1, "enc.yaml"), config_text([("key3", k3), ("key2", k2), ("key1", k1)]))
    os.symlink(os.path.basename(ts1), os.path.join(d, "..data"))
    os.symlink("..data/enc.yaml", os.path.join(d, ".enc.yaml.link"))
    os.rename(os.path.join(d, ".enc.yaml.link"), config)
    after_reload("key3", "a change of the file", sha256_of(config), t)

    # (c) kubelet's AtomicWriter: new timestamped dir, ..data_tmp -> it, rename over ..data,
    # remove the old dir
    t = time.monotonic()
    ts2 = os.path.join(d, "..2024_01_01_00_00_05.000000002")
    os.makedirs(ts2)
    write_atomic(os.path.join(ts2, "enc.yaml"),
                 config_text([("key4", k4), ("key3", k3), ("key2", k2), ("key1", k1)]))
    os.symlink(os.path.basename(ts2), os.path.join(d, "..data_tmp"))
    os.rename(os.path.join(d, "..data_tmp"), os.path.join(d, "..data"))
    for f in os.listdir(ts1):
        os.unlink(os.path.join(ts1, f))
    os.rmdir(ts1)
    suite.check("config path is a symlink through ..data", os.path.islink(config)
                and os.path.realpath(config) == os.path.join(os.path.realpath(ts2), "enc.yaml"))
    after_reload("key4", "a change of the file", sha256_of(config), t)

    # (d) SIGHUP: always a reload, even of the same bytes
    t = time.monotonic()
    proxy.proc.send_signal(signal.SIGHUP)
    after_reload("key4", "SIGHUP", sha256_of(config), t)

    time.sleep(0.3)
    t_end = time.monotonic()
    suite.check("writers stop", writers.finish())
    phases[-1][2] = t_end
    with writers.lock:
        done = list(writers.done)
    suite.check("0 failed requests across all writers (%d puts)" % len(done),
                not writers.errors and len(done) >= 200, (len(writers.errors), writers.errors[:3]))

    # every revision reached the watch exactly once (one put = one revision), all decrypted
    total = len(done) + probe_puts[0]
    ok = harness.wait_for(lambda: len(watch.after(0)) >= total, 20)
    evs = watch.after(0)
    revs = [ev.mod_revision for ev in evs]
    wrong = [ev.key for ev in evs
             if writers.expected.get(ev.key.decode(), old_values.get(ev.key.decode())) != ev.value]
    suite.check("the one watch stream saw every write (%d events), in order, no gap, all "
                "decrypted" % total,
                ok and len(evs) == total and revs == list(range(revs[0], revs[0] + total))
                and revs[0] == watch.start_revision and not wrong and not watch.errors,
                (ok, len(evs), total, revs[:1], watch.start_revision, wrong[:3], watch.errors))
    watch.cancel()

    # what etcd holds: each write that started after a reload was seen and ended before the next
    # change began carries that phase's key; every value opens with some configured key
    raw = {m.key.decode(): v for v, m in RAW.get_prefix("/registry/secrets/load/")}
    by_phase, wrong_key, unopened = {}, [], []
    for t0, t1, key, value in done:
        stored = raw.get(key)
        try:
            if open_stored(key, stored) != value:
                unopened.append(key)
        except Exception:  # noqa: BLE001
            unopened.append(key)
        for name, start, end in phases:
            if t0 > start and t1 < end:
                by_phase[name] = by_phase.get(name, 0) + 1
                if key_name(stored) != name:
                    wrong_key.append((key, name, key_name(stored)))
    suite.check("every writer's value in etcd opens (independent AES-GCM) to its plaintext",
                not unopened and len(raw) == len(done), (len(unopened), len(raw), len(done)))
    suite.check("writes between reloads carry that phase's key name (%s)" % by_phase,
                not wrong_key and all(by_phase.get(n, 0) > 0 for n in ("key2", "key3", "key4")),
                wrong_key[:3])
    names = {key_name(v) for v in raw.values()}
    suite.check("etcd holds writer values under exactly key1..key4",
                names == {"key1", "key2", "key3", "key4"}, names)

    # everything, from every key, reads back through the proxy (a fresh client and the old one)
    c = client(proxy.port)
    got = {m.key.decode(): v for v, m in c.get_prefix("/registry/secrets/load/")}
    diff = [k for _, _, k, v in done if got.get(k) != v]
    suite.check("all %d writer values read back through the proxy" % len(done), not diff, diff[:3])
    diff = [k for k, v in old_values.items() if probe_client.get(k)[0] != v]
    suite.check("values written under key1, key2, key3, key4 all read back through the proxy",
                not diff, diff[:3])
    bad = exposition_problems(metrics_text(proxy.metrics_port))
    suite.check("/metrics after the reloads is valid Prometheus text format", not bad, bad[:4])
    c.close()
    probe_client.close()
    text = log.text()
    leaked = [v for v in list(old_values.values())[:50] if v in text.encode()]
    suite.check("no plaintext in the proxy log", not leaked, leaked[:2])
    proxy.stop()
    suite.check("proxy exits 0 on SIGTERM", proxy.proc.returncode == 0, proxy.proc.returncode)


# ---------------------------------------------------------------------------------------------
# 2. broken files are refused


def broken_files():
    k1, k2 = new_key("b-key1"), new_key("b-key2")
    d, config = scenario_config("broken", ("b-key1", k1))
    hash1 = sha256_of(config)
    proxy, log = start_proxy(config)
    c = client(proxy.port)
    k_before, v_before = "/registry/secrets/broken/before", plain("before")
    c.put(k_before, v_before)
    failures = [0]

    def refused(what, why, expect_line, expect_col, text_re):
        m = log.wait(r"encryption config reload after %s failed, (sha256:[0-9a-f]{64}) keeps "
                     r"serving: (.*)" % re.escape(why), 10)
        failures[0] += 1
        msg = m.group(2) if m else ""
        loc = re.match(re.escape(config) + r":(\d+):(\d+): (.*)", msg)
        suite.check("%s: refused, log names the serving hash and %s:%d:%d" % (
                    what, os.path.basename(config), expect_line, expect_col),
                    m is not None and m.group(1) == hash1 and loc is not None
                    and (int(loc.group(1)), int(loc.group(2))) == (expect_line, expect_col)
                    and re.search(text_re, loc.group(3)),
                    m.group(0) if m else harness.log_tail(proxy.log))
        s, f, ts, hashes, _ = reload_state(proxy.metrics_port)
        suite.check("%s: failure counter %d, no success, last_config_info still the old hash"
                    % (what, failures[0]),
                    (s, f) == (0, failures[0]) and hashes == [hash1], (s, f, hashes, hash1))
        suite.check("%s: ..._automatic_reload_last_timestamp_seconds{status=\"failure\"} is now"
                    % what, abs(ts.get("failure", 0) - time.time()) < 30 and "success" not in ts, ts)
        k, v = "/registry/secrets/broken/%s" % what.replace(" ", "-"), plain(what)
        problem = put_stored_as(c, k, v, "b-key1")
        suite.check("%s: writes still carry the previous key b-key1" % what, problem is None, problem)
        suite.check("%s: reads still work (new and earlier values)" % what,
                    c.get(k)[0] == v and c.get(k_before)[0] == v_before)
        suite.check("%s: the proxy is still running" % what, proxy.alive())

    # a YAML syntax error on line 5, col 14 (the unclosed flow sequence)
    write_atomic(config, b"apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
                         b"resources:\n  - resources: [secrets\n    providers:\n"
                         b"      - identity: {}\n")
    refused("YAML syntax error", "a change of the file", 5, 14, r"YAML")

    # an AES key of 20 bytes: the location is its secret's value
    text = config_text([("b-key2", os.urandom(20)), ("b-key1", k1)])
    lines = text.decode().split("\n")
    line = next(i for i, ln in enumerate(lines) if "secret:" in ln) + 1
    col = lines[line - 1].index("secret:") + len("secret: ") + 1
    write_atomic(config, text)
    refused("20-byte aesgcm key", "a change of the file", line, col, r"16, 24 or 32 bytes")

    # SIGHUP with the broken file in place: refused the same way
    proxy.proc.send_signal(signal.SIGHUP)
    refused("SIGHUP with the broken file", "SIGHUP", line, col, r"16, 24 or 32 bytes")

    # the file removed: refused (it cannot be read), the old config keeps serving
    os.unlink(config)
    m = log.wait(r"encryption config reload after a change of the file failed, (sha256:[0-9a-f]{64}) "
                 r"keeps serving: (.*)", 10)
    failures[0] += 1
    suite.check("file removed: refused, log names the serving hash and the missing file",
                m is not None and m.group(1) == hash1 and config in m.group(2)
                and "No such file" in m.group(2), m.group(0) if m else harness.log_tail(proxy.log))
    k, v = "/registry/secrets/broken/removed", plain("removed")
    problem = put_stored_as(c, k, v, "b-key1")
    s, f, _, hashes, _ = reload_state(proxy.metrics_port)
    suite.check("file removed: failure counter %d, writes still carry b-key1" % failures[0],
                problem is None and (s, f) == (0, failures[0]) and hashes == [hash1],
                (problem, s, f, hashes))

    # fixed: reloads
    write_atomic(config, config_text([("b-key2", k2), ("b-key1", k1)]))
    m = log.wait(r"encryption config reloaded after a change of the file: (sha256:[0-9a-f]{64}) "
                 r"serving", 10)
    check_serving(m, config, proxy, "fixed file reloads (log names its hash)")
    k, v = "/registry/secrets/broken/fixed", plain("fixed")
    problem = put_stored_as(c, k, v, "b-key2")
    suite.check("after the fix, writes carry b-key2", problem is None, problem)
    suite.check("after the fix, b-key1 values still read", c.get(k_before)[0] == v_before)
    s, f, _, hashes, _ = reload_state(proxy.metrics_port)
    suite.check("after the fix: success 1, failures %d, last_config_info = the fixed file"
                % failures[0], (s, f) == (1, failures[0]) and hashes == [sha256_of(config)],
                (s, f, hashes))
    bad = exposition_problems(metrics_text(proxy.metrics_port))
    suite.check("/metrics after failed and successful reloads is valid Prometheus text format",
                not bad, bad[:4])
    c.close()
    proxy.stop()


# ---------------------------------------------------------------------------------------------
# 2b. a new KMS v1 plugin must answer Version before the reload is taken


def kms_v1_reload():
    import kmsfake
    d, config = scenario_config("kmsv1", ("v-key1", new_key("v-key1")))
    proxy, log = start_proxy(config)
    c = client(proxy.port)
    sock = os.path.join(d, "kms-v1.sock")

    def kms_config():
        tmp = os.path.join(d, "next.yaml")
        kmsfake.write_kms_config(tmp, [kmsfake.kms_provider_yaml("legacy", "v1", sock, "1s")])
        with open(tmp, "rb") as f:
            text = f.read()
        os.unlink(tmp)
        return text

    write_atomic(config, kms_config())  # no plugin listens yet
    m = log.wait(r"encryption config reload after a change of the file failed, sha256:[0-9a-f]{64} "
                 r"keeps serving: (.*)", 20)
    suite.check("a kms v1 provider whose plugin does not answer is refused before any call sees it",
                m is not None and "did not answer Version healthily" in m.group(1),
                m.group(0) if m else harness.log_tail(proxy.log))
    k, v = "/registry/secrets/kmsv1/before", plain("before")
    problem = put_stored_as(c, k, v, "v-key1")
    suite.check("the old config keeps serving (aesgcm v-key1)", problem is None, problem)
    plugin = kmsfake.FakePlugin(sock, os.urandom(32)).start()
    try:
        proxy.proc.send_signal(signal.SIGHUP)
        m = log.wait(r"encryption config reloaded after SIGHUP: (sha256:[0-9a-f]{64}) serving", 20)
        suite.check("with the plugin up, SIGHUP takes the kms v1 config", m is not None,
                    harness.log_tail(proxy.log))
        k2, v2 = "/registry/secrets/kmsv1/after", plain("after")
        c.put(k2, v2)
        raw = raw_get(k2)
        suite.check("new writes are kms v1 envelopes",
                    raw is not None and raw.startswith(b"k8s:enc:kms:v1:legacy:"), raw[:40] if raw else raw)
        suite.check("the kms v1 value reads back through the proxy", c.get(k2)[0] == v2)
    finally:
        c.close()
        proxy.stop()
        plugin.stop()


# ---------------------------------------------------------------------------------------------
# 3. automatic reload off


def automatic_reload_off():
    k1, k2 = new_key("n-key1"), new_key("n-key2")
    d, config = scenario_config("noauto", ("n-key1", k1))
    hash1 = sha256_of(config)
    proxy, log = start_proxy(config, extra=["--encryption-provider-config-automatic-reload=false"])
    c = client(proxy.port)
    mark = log.mark()
    write_atomic(config, config_text([("n-key2", k2), ("n-key1", k1)]))
    with open(config, "ab") as f:  # an in-place edit too
        f.write(b"# edited\n")
    time.sleep(2.5)  # negative check: well past the 500 ms debounce
    k, v = "/registry/secrets/noauto/a", plain("noauto-a")
    problem = put_stored_as(c, k, v, "n-key1")
    s, f, _, hashes, _ = reload_state(proxy.metrics_port)
    suite.check("automatic reload off: after 2.5 s writes still carry n-key1", problem is None, problem)
    suite.check("automatic reload off: no reload logged or counted, old hash serving",
                "reload" not in log.text(mark) and (s, f) == (0, 0) and hashes == [hash1],
                (s, f, hashes, log.text(mark)[-400:]))
    proxy.proc.send_signal(signal.SIGHUP)
    m = log.wait(r"encryption config reloaded after SIGHUP: (sha256:[0-9a-f]{64}) serving", 10)
    check_serving(m, config, proxy, "SIGHUP reloads it (log names the new hash)")
    k2_, v2 = "/registry/secrets/noauto/b", plain("noauto-b")
    problem = put_stored_as(c, k2_, v2, "n-key2")
    suite.check("after SIGHUP writes carry n-key2; n-key1 values still read",
                problem is None and c.get(k)[0] == v, problem)
    s, f, _, hashes, _ = reload_state(proxy.metrics_port)
    suite.check("after SIGHUP: success 1, last_config_info = the new file",
                (s, f) == (1, 0) and hashes == [sha256_of(config)], (s, f, hashes))
    c.close()
    proxy.stop()


# ---------------------------------------------------------------------------------------------
# 4. certificate rotation by SIGHUP


def tls_connect(tls, port):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(tls.ca)
    ctx.load_cert_chain(tls.client_cert, tls.client_key)
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                        server_hostname="127.0.0.1")
    return s


def peer_cn(s):
    return dict(x[0] for x in s.getpeercert()["subject"]).get("commonName")


def der_of(pem_path):
    with open(pem_path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def new_cert_sees(tls, port):
    s = tls_connect(tls, port)
    try:
        return s.getpeercert(binary_form=True), peer_cn(s), s.selected_alpn_protocol()
    finally:
        s.close()


class H2Tls:
    """A raw HTTP/2 connection over an already-made TLS socket: gRPC Puts, the trailers'
    grpc-status decoded with python3-hpack."""

    def __init__(self, sock):
        self.raw = etcdwire.RawH2.__new__(etcdwire.RawH2)
        self.raw.sock, self.raw.buf = sock, b""
        self.decoder = hpack.Decoder()
        self.raw.start()
        self.next_sid = 1

    def put(self, key, value):
        """Returns the grpc-status of a Put on a new stream ("timeout"/"closed" if none)."""
        sid, self.next_sid = self.next_sid, self.next_sid + 2
        hdrs = etcdwire.hpack_literal([(":method", "POST"), (":scheme", "https"),
                                       (":path", "/etcdserverpb.KV/Put"),
                                       (":authority", "127.0.0.1"),
                                       ("content-type", "application/grpc"), ("te", "trailers")])
        self.raw.send(etcdwire.h2_frame(etcdwire.HEADERS, etcdwire.END_HEADERS, sid, hdrs))
        body = etcdwire.grpc_frame(etcdwire.put_request(key, value))
        self.raw.send(etcdwire.h2_frame(etcdwire.DATA, etcdwire.END_STREAM, sid, body))
        for _ in range(100):
            try:
                f = self.raw.read_frame()
            except (TimeoutError, socket.timeout):
                return "timeout"
            except OSError:
                return "closed"
            if f is None:
                return "closed"
            ftype, flags, fsid, payload = f
            if ftype == etcdwire.GOAWAY:
                return "goaway"
            if ftype == etcdwire.PING and not flags & 1:
                self.raw.send(etcdwire.h2_frame(etcdwire.PING, 1, 0, payload))
            if ftype == etcdwire.HEADERS:
                if flags & 0x8:  # PADDED
                    payload = payload[1:len(payload) - payload[0]]
                if flags & 0x20:  # PRIORITY
                    payload = payload[5:]
                fields = dict(self.decoder.decode(payload))
                if fsid == sid and flags & etcdwire.END_STREAM:
                    return fields.get("grpc-status")
            if fsid == sid and ftype == etcdwire.RST_STREAM:
                return "rst %d" % struct.unpack(">I", payload)[0]
        return "timeout"

    def close(self):
        self.raw.close()


def cert_rotation():
    d = os.path.join(WORK, "tls")
    tls = harness.make_tls(d)
    config = os.path.join(WORK, "tls-enc.yaml")
    write_atomic(config, config_text([("t-key1", new_key("t-key1"))]))
    proxy, log = start_proxy(config, down_tls=tls, client_cert_auth=True)
    old_der = der_of(tls.server_cert)
    der, cn, alpn = new_cert_sees(tls, proxy.port)
    suite.check("TLS listener presents the first certificate (CN=server, ALPN h2)",
                der == old_der and cn == "server" and alpn == "h2", (cn, alpn))

    # opened before the rotation: a raw HTTP/2 connection and an etcd3 client with a watch
    early = tls_connect(tls, proxy.port)
    h2 = H2Tls(early)
    st = h2.put(b"/registry/secrets/tls/raw-before", plain("raw-before"))
    suite.check("raw TLS HTTP/2 connection: a Put before the rotation succeeds", st == "0", st)
    old = client(proxy.port, ca_cert=tls.ca, cert_key=tls.client_key, cert_cert=tls.client_cert)
    old.put("/registry/secrets/tls/etcd3-before", plain("etcd3-before"))
    watch = Watch.__new__(Watch)
    watch.client, watch.events, watch.errors, watch.lock = old, [], [], threading.Lock()
    watch.iterator, watch.cancel = old.watch_prefix("/registry/secrets/tls/w/")
    threading.Thread(target=watch.drain, daemon=True).start()
    time.sleep(0.2)
    old.put("/registry/secrets/tls/w/0", b"w0")
    suite.check("etcd3 client's watch delivers before the rotation",
                harness.wait_for(lambda: len(watch.after(0)) >= 1, 10), watch.errors)

    # a new pair (CN=server2, same CA, same SANs) replaces the files
    harness._make_leaf(d, "server2", tls.ca, os.path.join(d, "ca.key"),
                       "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                       "extendedKeyUsage=serverAuth,clientAuth\n")
    os.rename(os.path.join(d, "server2.key"), tls.server_key)
    os.rename(os.path.join(d, "server2.crt"), tls.server_cert)
    new_der = der_of(tls.server_cert)
    der, cn, _ = new_cert_sees(tls, proxy.port)
    suite.check("files replaced, before SIGHUP: a new connection still sees the old certificate",
                der == old_der and cn == "server", cn)

    mark = log.mark()
    proxy.proc.send_signal(signal.SIGHUP)
    m = log.wait(r"certificates reloaded", 10)
    suite.check("SIGHUP: log says the certificates were reloaded, no error",
                m is not None and "not reloaded" not in log.text(mark), log.text(mark)[-600:])
    der, cn, alpn = new_cert_sees(tls, proxy.port)
    suite.check("after SIGHUP a new connection sees the new certificate (CN=server2, ALPN h2)",
                der == new_der and cn == "server2" and alpn == "h2", (cn, alpn))
    res = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % proxy.port,
                          "-alpn", "h2", "-CAfile", tls.ca, "-cert", tls.client_cert,
                          "-key", tls.client_key, "-verify_return_error"],
                         input=b"", capture_output=True, timeout=20)
    out = res.stdout.decode(errors="replace")
    suite.check("openssl s_client -alpn h2: verified, subject CN = server2, ALPN h2",
                re.search(r"subject=.*CN\s*=\s*server2", out) is not None
                and "ALPN protocol: h2" in out and "Verify return code: 0" in out,
                out[-600:] + res.stderr.decode(errors="replace")[-300:])

    st = h2.put(b"/registry/secrets/tls/raw-after", plain("raw-after"))
    suite.check("the raw connection opened before keeps working (Put ok, still the old cert)",
                st == "0" and early.getpeercert(binary_form=True) == old_der, st)
    v = plain("etcd3-after")
    old.put("/registry/secrets/tls/etcd3-after", v)
    old.put("/registry/secrets/tls/w/1", b"w1")
    ok = harness.wait_for(lambda: len(watch.after(0)) >= 2, 10)
    suite.check("the etcd3 client made before still puts, and its watch stream still delivers",
                ok and old.get("/registry/secrets/tls/etcd3-after")[0] == v and not watch.errors,
                (len(watch.after(0)), watch.errors))
    fresh = client(proxy.port, ca_cert=tls.ca, cert_key=tls.client_key, cert_cert=tls.client_cert)
    fresh.put("/registry/secrets/tls/fresh", v)
    suite.check("a new etcd3 client (new certificate) puts and reads",
                fresh.get("/registry/secrets/tls/fresh")[0] == v)
    raw = raw_get("/registry/secrets/tls/raw-after")
    suite.check("the raw connection's Put is stored encrypted with t-key1",
                key_name(raw) == "t-key1", (raw or b"")[:40])

    # a broken pair (the cert of server3 with server2's key) is refused; server2 keeps serving
    harness._make_leaf(d, "server3", tls.ca, os.path.join(d, "ca.key"),
                       "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    os.rename(os.path.join(d, "server3.crt"), tls.server_cert)
    mark = log.mark()
    proxy.proc.send_signal(signal.SIGHUP)
    m = log.wait(r"--cert-file/--key-file not reloaded, the old pair keeps serving: .*", 10)
    der, cn, _ = new_cert_sees(tls, proxy.port)
    suite.check("a mismatched cert/key pair is refused on SIGHUP (logged) and CN=server2 keeps "
                "serving", m is not None and der == new_der and cn == "server2",
                (cn, log.text(mark)[-600:]))
    suite.check("the broken pair's SIGHUP does not claim the certificates were reloaded",
                "certificates reloaded" not in log.text(mark), log.text(mark)[-600:])
    st = h2.put(b"/registry/secrets/tls/raw-last", plain("raw-last"))
    suite.check("the early raw connection still works after the refused reload", st == "0", st)
    watch.cancel()
    h2.close()
    fresh.close()
    proxy.stop()


for name, fn in [("reload under load", reload_under_load), ("broken files", broken_files),
                 ("kms v1 reload", kms_v1_reload),
                 ("automatic reload off", automatic_reload_off),
                 ("certificate rotation", cert_rotation)]:
    suite.run(name, fn)
suite.finish()
