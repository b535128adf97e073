#!/usr/bin/python3
"""`etcd-encrypt-proxy rewrite` (and the `scan` that checks it) against a real etcd, with real
clients writing through a real proxy meanwhile (README, "Checking and rotating what is stored").

1. Key rotation under load: 20,000 secrets (200-1000 byte values, 400 of them on four leases)
   written through the proxy under aesgcm key k1; the config gains k2 first and the proxy
   reloads on SIGHUP; `rewrite` (to etcd directly, -o json) runs while three python3-etcd3
   writers keep updating random keys through the proxy. Afterwards every stored value is
   `k8s:enc:aesgcm:v1:k2:` and opens (Python `cryptography`, AAD = the key) to the writers' last
   acknowledged value or the original; keys no writer touched were written exactly once more;
   every lease is still attached (etcdctl get -w json, lease timetolive --keys); the summary's
   counts add up (every summary: rewritten + unchanged + skipped + failed + not_covered == keys,
   since `keys` counts the keys no rule covers too) and skipped <= the writers' updates; a
   second run rewrites 0; `scan -o json` (also --fail-on-stale) agrees with a count the test
   makes itself; `decrypt` and the proxy reloaded to k2 alone read every value.
2. Migrations, a few hundred keys each, read back through `serve` with the new config:
   plaintext -> aesgcm, aesgcm -> identity (identity first), aescbc -> aesgcm (with values of an
   unknown key k9 that stay byte-for-byte, are listed in failed_keys, exit 1), kms v1 -> kms v2
   with the reference plugin (one seed for all values; plugin down: exit 2, nothing written);
   keys no rule covers are counted as not_covered and never written; --prefix confines a run.
3. SIGINT under --max-rps 200 on 2,000 stale keys: exit 130, `resume_from` in the JSON (and in
   the table output), every key before it current, the count of rewritten keys exact; a table
   mode run resumed and interrupted again; --resume-from finishes; a full run then rewrites 0.
4. --dry-run: etcd's revision and every value unchanged, the count it would rewrite reported.
5. Usage errors exit 2; etcd unreachable exits 2 (rewrite and scan).

Exit status 0 only when every check passed; the last line is "N passed, N failed".
"""

import base64
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdwire  # noqa: E402
import harness  # noqa: E402
import kmsfake  # noqa: E402

suite = harness.Suite("rewrite")
harness.require_binary(suite, "rewrite", "proxy binary is built and knows 'rewrite'")
harness.require_binary(suite, "scan", "proxy binary is built and knows 'scan'")
try:
    etcd3 = harness.import_etcd3()
    from etcd3 import etcdrpc  # noqa: E402
    from cryptography.hazmat.primitives import padding  # noqa: E402
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
except Exception as e:  # noqa: BLE001 - a missing client is a failure, never a skip
    suite.check("python3-etcd3 and python3-cryptography import", False, e)
    suite.finish()
PLUGIN = harness.kms_plugin_binary()
if not os.access(PLUGIN, os.X_OK):
    suite.check("reference KMS plugin is built", False, PLUGIN)
    suite.finish()

WORK = harness.workdir("ep-rewrite")
GRPC_OPTIONS = harness.grpc_options(16 << 20)
RELOADED_RE = r"encryption config reloaded after SIGHUP: (sha256:[0-9a-f]{64}) serving"


# ---------------------------------------------------------------------------------------------
# configs and stored formats (independent of the C code: spec 1.2, 1.3)


def write_config(path, providers, resources=("secrets",)):
    """Writes an EncryptionConfiguration (by rename) whose one rule covers |resources| with
    |providers|: ("aesgcm"|"aescbc", [(name, key)]), ("identity",) or ("kms", yaml lines).
    Returns the sha256 label of the bytes."""
    lines = ["apiVersion: apiserver.config.k8s.io/v1", "kind: EncryptionConfiguration",
             "resources:", "  - resources:"]
    lines += ["      - " + r for r in resources]
    lines += ["    providers:"]
    for p in providers:
        if p[0] in ("aesgcm", "aescbc", "secretbox"):
            lines += ["      - %s:" % p[0], "          keys:"]
            for name, key in p[1]:
                lines += ["            - name: " + name,
                          "              secret: " + base64.b64encode(key).decode()]
        elif p[0] == "identity":
            lines += ["      - identity: {}"]
        else:
            lines += p[1]
    data = "\n".join(lines + [""]).encode()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.rename(tmp, path)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def gcm_prefix(name):
    return b"k8s:enc:aesgcm:v1:" + name.encode() + b":"


def gcm_seal(name, key, etcd_key, plain):
    nonce = os.urandom(12)
    return gcm_prefix(name) + nonce + AESGCM(key).encrypt(nonce, plain, b(etcd_key))


def gcm_open(name, key, etcd_key, stored):
    """The plaintext, or None when |stored| is not aesgcm under |name| or does not open."""
    p = gcm_prefix(name)
    if not stored.startswith(p):
        return None
    body = stored[len(p):]
    try:
        return AESGCM(key).decrypt(body[:12], body[12:], b(etcd_key))
    except Exception:  # noqa: BLE001
        return None


def cbc_seal(name, key, plain):
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return b"k8s:enc:aescbc:v1:" + name.encode() + b":" + iv + enc.update(padded) + enc.finalize()


def b(s):
    return s.encode() if isinstance(s, str) else s


def s(v):
    return v.decode() if isinstance(v, bytes) else v


def plaintext(tag, i, rnd):
    """A 200-1000 byte plaintext naming its key and a random filler."""
    head = ("%s-%d|" % (tag, i)).encode()
    n = rnd.randint(200, 1000)
    filler = base64.b64encode(os.urandom(n))[: max(0, n - len(head))]
    return head + filler


def stored_class(stored):
    """What the test itself says a stored value is: "aesgcm:k2", "kms:v2:name", "identity"."""
    m = re.match(rb"^k8s:enc:(aesgcm|aescbc|secretbox):v1:([^:]+):", stored)
    if m:
        return "%s:%s" % (m.group(1).decode(), m.group(2).decode())
    m = re.match(rb"^k8s:enc:kms:(v1|v2):([^:]+):", stored)
    if m:
        return "kms:%s:%s" % (m.group(1).decode(), m.group(2).decode())
    return "unknown" if stored.startswith(b"k8s:enc:") else "identity"


def kms_v2_fields(stored):
    """{field number: bytes} of a kms v2 value's EncryptedObject (spec 1.6.1)."""
    body = stored[stored.index(b":", len(b"k8s:enc:kms:v2:")) + 1:]
    return {n: bytes(v) for n, _, v in etcdwire.parse_fields(body) if not isinstance(v, int)}


# ---------------------------------------------------------------------------------------------
# etcd and proxy helpers


def client(port, timeout=30):
    return etcd3.client("127.0.0.1", port, timeout=timeout, grpc_options=GRPC_OPTIONS)


def range_all(c, prefix, keys_only=False, page=1000):
    """Every kv under |prefix| in key order, paged at one revision: (revision, [KeyValue])."""
    start, end = b(prefix), etcdwire.prefix_end(prefix)
    rev, out = 0, []
    while True:
        req = etcdrpc.RangeRequest(key=start, range_end=end, limit=page, revision=rev,
                                   keys_only=keys_only)
        resp = c.kvstub.Range(req, c.timeout, credentials=c.call_credentials, metadata=c.metadata)
        rev = rev or resp.header.revision
        out.extend(resp.kvs)
        if not resp.more or not resp.kvs:
            return rev, out
        start = resp.kvs[-1].key + b"\x00"


def values(c, prefix):
    return {s(kv.key): kv.value for kv in range_all(c, prefix)[1]}


def revision(c):
    return c.get_response("/").header.revision


def put_many(c, items, leases=None, batch=100):
    """Puts [(key, value)] in Txns of |batch| puts; |leases| maps a key to its lease id."""
    leases = leases or {}
    for i in range(0, len(items), batch):
        ops = [c.transactions.put(k, v, lease=leases.get(k)) for k, v in items[i:i + batch]]
        ok, _ = c.transaction(compare=[], success=ops, failure=[])
        if not ok:
            raise RuntimeError("txn of puts did not succeed")


def put_parallel(port, items, leases=None, threads=4):
    """put_many from |threads| clients at once (through the proxy: its encrypting Txn path)."""
    errors = []

    def run(part):
        c = client(port)
        try:
            put_many(c, part, leases)
        except Exception as e:  # noqa: BLE001 - reported by the caller
            errors.append(repr(e)[:300])
        finally:
            c.close()

    chunks = [items[i::threads] for i in range(threads)]
    ts = [threading.Thread(target=run, args=(ch,)) for ch in chunks]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return errors


def etcdctl_leases(etcd, prefix):
    """{key: lease id} as etcdctl get -w json (keys only) shows it (0: no lease)."""
    res = etcd.ctl("get", prefix, "--prefix", "--keys-only", "-w", "json", timeout=60, check=True)
    kvs = json.loads(res.stdout).get("kvs") or []
    return {base64.b64decode(kv["key"]).decode(): int(kv.get("lease", 0)) for kv in kvs}


def start_proxy(d, etcd, config, extra=()):
    p = harness.Proxy(d, [etcd.url], config, extra=list(extra))
    suite.logs.append(p.log)
    return p.start(timeout=30)


def read_through(d, etcd, config, prefix):
    """Every value under |prefix| read through a fresh `serve` with |config|."""
    proxy = start_proxy(d, etcd, config)
    try:
        c = client(proxy.port)
        got = values(c, prefix)
        c.close()
        return got
    finally:
        proxy.stop()


def wait_reload(proxy, offset, sha, timeout=30):
    """True once the proxy log (from |offset|) says it serves the config whose hash is |sha|."""
    def seen():
        with open(proxy.log, "rb") as f:
            f.seek(offset)
            return any(m == sha for m in re.findall(RELOADED_RE, f.read().decode(errors="replace")))
    return harness.wait_for(seen, timeout, 0.05)


def reload_proxy(proxy, config, providers):
    offset = os.path.getsize(proxy.log)
    sha = write_config(config, providers)
    proxy.proc.send_signal(signal.SIGHUP)
    return wait_reload(proxy, offset, sha)


class Plugin:
    """etcd-encrypt-kms-plugin with a key file; restartable on the same socket and KEK."""

    def __init__(self, d, tag):
        self.sock = os.path.join(d, tag + ".sock")
        self.key_file = os.path.join(d, tag + ".key")
        self.log = os.path.join(d, tag + ".log")
        with open(self.key_file, "wb") as f:
            f.write(os.urandom(32))
        os.chmod(self.key_file, 0o600)
        self.proc = None
        suite.logs.append(self.log)

    def start(self):
        self.proc = harness.spawn([PLUGIN, "--listen", "unix://" + self.sock,
                                   "--key-file", self.key_file], self.log)
        if not harness.wait_for(lambda: os.path.exists(self.sock), 10):
            raise RuntimeError("plugin did not start:\n" + harness.log_tail(self.log))
        return self

    def stop(self):
        if self.proc:
            harness.stop(self.proc)
        harness.wait_for(lambda: not os.path.exists(self.sock), 5)


def decrypt_problems(config, pairs):
    """[(key, why)] for the (key, stored, plaintext) triples `decrypt` does not read back."""
    bad = []
    for key, stored, plain in pairs:
        rc, out, err = harness.cli("decrypt", config, key, stored)
        if rc != 0 or out != plain:
            bad.append((key, rc, err.strip()[-120:]))
    return bad


# ---------------------------------------------------------------------------------------------
# running the tool


def base_args(etcd_url, config, prefix):
    return ["--endpoints", etcd_url, "--encryption-provider-config", config, "--prefix", prefix]


def run_tool(args, timeout=180):
    """(exit code or None on timeout, stdout bytes, stderr text, seconds)."""
    t = time.monotonic()
    try:
        res = subprocess.run([harness.binary()] + args, capture_output=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        return None, e.stdout or b"", (e.stderr or b"").decode(errors="replace"), timeout
    return res.returncode, res.stdout, res.stderr.decode(errors="replace"), time.monotonic() - t


def parse_json(out):
    try:
        return json.loads(out)
    except ValueError:
        return None


def tool_json(command, etcd, config, prefix, *extra, timeout=180):
    """Runs `command` with -o json: (exit code, parsed summary or None, stderr, seconds)."""
    rc, out, err, took = run_tool([command] + base_args(etcd.url, config, prefix)
                                  + ["-o", "json"] + list(extra), timeout)
    obj = parse_json(out)
    print("     %s %s -> exit %s in %.1f s: %s" % (command, " ".join(extra), rc, took,
                                                  json.dumps(summary_of(obj)) if obj
                                                  else out[:300]), flush=True)
    if err.strip():
        print("     stderr: %s" % err.strip()[-300:], flush=True)
    return rc, obj, err, took


def summary_of(obj):
    """The short form of a summary for the log: counts and flags, no key lists."""
    if not isinstance(obj, dict):
        return obj
    return {k: v for k, v in obj.items() if not isinstance(v, (list, dict))}


def spawn_tool(args, tag):
    """The tool in the background, stdout and stderr to files; tracked by the harness."""
    out, err = (os.path.join(WORK, "%s.%s" % (tag, x)) for x in ("out", "err"))
    proc = harness.spawn_split([harness.binary()] + args, out, err)
    proc.out_path, proc.err_path = out, err
    return proc


def finish_tool(proc, timeout=60):
    """(exit code or None, stdout bytes, stderr text) of a spawn_tool process."""
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        rc = None
    harness.stop(proc)
    with open(proc.out_path, "rb") as f:
        out = f.read()
    with open(proc.err_path, "rb") as f:
        err = f.read().decode(errors="replace")
    return rc, out, err


def mismatches(obj, **want):
    """The fields of summary |obj| that differ from |want| (as {field: (got, want)})."""
    if not isinstance(obj, dict):
        return {"summary": "not a JSON object"}
    return {k: (obj.get(k, "<missing>"), v) for k, v in want.items() if obj.get(k, "<missing>") != v}


def check_summary(what, rc, obj, want_rc, **want):
    suite.check("%s: exit %d" % (what, want_rc), rc == want_rc, "exit %s" % rc)
    bad = mismatches(obj, **want)
    suite.check("%s: summary %s" % (what, ", ".join("%s=%s" % kv for kv in sorted(want.items()))),
                not bad, bad)
    if isinstance(obj, dict):
        suite.check("%s: \"ok\" is true exactly when the exit status is 0" % what,
                    obj.get("ok") is (rc == 0), (obj.get("ok"), rc))
    if isinstance(obj, dict) and obj.get("command") == "rewrite":
        suite.check("%s: rewritten + unchanged + skipped + failed + not_covered == keys" % what,
                    counts_add_up(obj), summary_of(obj))


def counts_add_up(obj):
    """The summary's counts partition the keys examined (`keys` counts the keys no rule covers
    too, so not_covered is one of the parts)."""
    try:
        return (obj["rewritten"] + obj["skipped"] + obj["unchanged"] + obj["failed"]
                + obj["not_covered"] == obj["keys"])
    except (KeyError, TypeError):
        return False


def failed_key_names(obj):
    return sorted(f.get("key") for f in (obj or {}).get("failed_keys") or [])


def stored_summary(resource):
    """{as (+ key_id): (keys, bytes, stale)} of one resource of a scan summary."""
    out = {}
    for st in resource.get("stored", []):
        name = st.get("as") + ((" " + st["key_id"]) if st.get("key_id") else "")
        out[name] = (st.get("keys"), st.get("bytes"), st.get("stale"))
    return out


# ---------------------------------------------------------------------------------------------
# 1. key rotation under load


N_MAIN = 20000
MAIN_PREFIX = "/registry/secrets/"


def main_key(i):
    return "/registry/secrets/ns-%02d/s-%05d" % (i % 20, i)


class Writers:
    """|n| python3-etcd3 clients updating random keys through the proxy; each owns every n-th key
    so the last acknowledged put of a key is its value. A put that failed is kept as a possible
    value too (it may have reached etcd)."""

    def __init__(self, port, keys, leases, n=3):
        self.last = {}  # key -> last acknowledged value
        self.maybe = {}  # key -> values of puts that failed
        self.touched = set()  # every key a put was attempted on
        self.attempts = []  # (t_start, t_end)
        self.errors = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(port, keys[i::n], leases, i),
                                         daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def run(self, port, keys, leases, n):
        c = client(port, timeout=15)
        rnd = random.Random(n)
        i = 0
        try:
            while not self.stop.is_set():
                key = rnd.choice(keys)
                value = plaintext("upd-w%d" % n, i, rnd)
                with self.lock:
                    self.touched.add(key)
                t0 = time.monotonic()
                try:
                    c.put(key, value, lease=leases.get(key))
                except Exception as e:  # noqa: BLE001 - counted and checked
                    with self.lock:
                        self.errors.append(repr(e)[:200])
                        self.maybe.setdefault(key, set()).add(value)
                else:
                    with self.lock:
                        self.last[key] = value
                with self.lock:
                    self.attempts.append((t0, time.monotonic()))
                i += 1
        finally:
            c.close()

    def count(self):
        with self.lock:
            return len(self.attempts)

    def count_within(self, t0, t1):
        with self.lock:
            return sum(1 for a, e in self.attempts if a >= t0 and e <= t1)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)
        return not any(t.is_alive() for t in self.threads)


def main_scenario():
    d = os.path.join(WORK, "main")
    os.makedirs(d)
    etcd = harness.Etcd(d).start()
    suite.logs.append(etcd.log)
    raw = client(etcd.port, timeout=60)
    k1, k2 = os.urandom(32), os.urandom(32)
    config = os.path.join(d, "enc.yaml")
    write_config(config, [("aesgcm", [("k1", k1)]), ("identity",)])
    proxy = start_proxy(d, etcd, config, ["--encryption-provider-config-automatic-reload=false"])
    through = client(proxy.port)

    rnd = random.Random(1)
    keys = [main_key(i) for i in range(N_MAIN)]
    original = {k: plaintext("orig", i, rnd) for i, k in enumerate(keys)}
    lease_ids = [through.lease(3600).id for _ in range(4)]
    leases = {keys[i]: lease_ids[(i // 50) % 4] for i in range(N_MAIN) if i % 50 == 7}
    t = time.monotonic()
    errors = put_parallel(proxy.port, [(k, original[k]) for k in keys], leases)
    took = time.monotonic() - t
    suite.check("20,000 secrets written through the proxy (Txns of 100 puts, 4 clients) in %.1f s"
                % took, not errors, errors[:3])
    if errors:
        raise RuntimeError("cannot go on without the 20,000 secrets")

    stored = values(raw, MAIN_PREFIX)
    bad = [k for k in keys if gcm_open("k1", k1, k, stored.get(k, b"")) != original[k]]
    suite.check("before: etcd holds 20,000 values, each aesgcm:k1 opening to its plaintext",
                len(stored) == N_MAIN and not bad, (len(stored), bad[:3]))
    leases_before = etcdctl_leases(etcd, MAIN_PREFIX)
    want_leases = {k: leases.get(k, 0) for k in keys}
    suite.check("before: etcdctl get -w json shows the 400 leases where they were attached",
                leases_before == want_leases and sum(1 for v in leases_before.values() if v) == 400,
                sum(1 for v in leases_before.values() if v))
    meta_before = {s(kv.key): (kv.create_revision, kv.version)
                   for kv in range_all(raw, MAIN_PREFIX, keys_only=True)[1]}

    # k2 becomes the write key, k1 stays second; the proxy reloads on SIGHUP
    config_k2k1 = [("aesgcm", [("k2", k2), ("k1", k1)]), ("identity",)]
    suite.check("SIGHUP: the proxy logs it serves the new config (k2 first)",
                reload_proxy(proxy, config, config_k2k1), harness.log_tail(proxy.log, 5))
    expected = dict(original)
    probe = keys[0]
    expected[probe] = plaintext("probe", 0, rnd)
    through.put(probe, expected[probe])
    suite.check("after the reload a write through the proxy is stored as aesgcm:k2",
                gcm_open("k2", k2, probe, raw.get(probe)[0] or b"") == expected[probe])

    rc, obj, _, _ = tool_json("scan", etcd, config, MAIN_PREFIX)
    check_summary("scan before rewrite", rc, obj, 0, keys=N_MAIN, stale=N_MAIN - 1, plaintext=0,
                  unreadable=0, command="scan", prefix=MAIN_PREFIX, verified=False)
    res = (obj or {}).get("resources") or [{}]
    suite.check("scan before rewrite: secrets (rule secrets, writes aesgcm:k2) stored as 1 "
                "aesgcm:k2 and 19,999 stale aesgcm:k1",
                len(res) == 1 and res[0].get("resource") == "secrets"
                and res[0].get("key_prefix") == MAIN_PREFIX and res[0].get("rule") == "secrets"
                and res[0].get("encrypts") is True and res[0].get("write") == "aesgcm:k2"
                and {k: v[0::2] for k, v in stored_summary(res[0]).items()}
                == {"aesgcm:k1": (N_MAIN - 1, True), "aesgcm:k2": (1, False)}, res)
    rc, _, _, _ = tool_json("scan", etcd, config, MAIN_PREFIX, "--fail-on-stale")
    suite.check("scan --fail-on-stale before rewrite exits 1", rc == 1, rc)

    # rewrite while writers update random keys through the proxy
    writers = Writers(proxy.port, keys[1:], leases)
    harness.wait_for(lambda: writers.count() >= 200, 30)
    t0 = time.monotonic()
    rc, obj, _, took = tool_json("rewrite", etcd, config, MAIN_PREFIX)
    t1 = time.monotonic()
    time.sleep(0.3)
    stopped = writers.finish()
    during = writers.count_within(t0, t1)
    suite.check("writers stopped", stopped)
    suite.check("the writers updated keys while rewrite ran (%d puts in %.1f s)" % (during, took),
                during > 0, during)
    suite.check("no writer put failed during the rewrite", not writers.errors, writers.errors[:3])
    for k, v in writers.last.items():
        expected[k] = v
    check_summary("rewrite under load", rc, obj, 0, command="rewrite", prefix=MAIN_PREFIX,
                  keys=N_MAIN, failed=0, not_covered=0, dry_run=False, interrupted=False,
                  resume_from=None, failed_keys=[], failed_keys_truncated=False)
    attempts = writers.count()
    obj = obj or {}
    suite.check("rewrite under load: skipped (%s) <= writer updates (%d)"
                % (obj.get("skipped"), attempts),
                isinstance(obj.get("skipped"), int) and obj["skipped"] <= attempts)
    untouched = [k for k in keys[1:] if k not in writers.touched]
    suite.check("rewrite under load: rewritten (%s) between the stale keys no writer touched (%d) "
                "and all stale keys (%d)" % (obj.get("rewritten"), len(untouched), N_MAIN - 1),
                isinstance(obj.get("rewritten"), int)
                and len(untouched) <= obj["rewritten"] <= N_MAIN - 1)

    rev_after, kvs = range_all(raw, MAIN_PREFIX)
    stored = {s(kv.key): kv.value for kv in kvs}

    def matches(k, got):
        return got == expected[k] or got in writers.maybe.get(k, ())

    not_k2 = [k for k, v in stored.items() if not v.startswith(gcm_prefix("k2"))]
    suite.check("after: every stored value starts with k8s:enc:aesgcm:v1:k2:",
                len(stored) == N_MAIN and not not_k2, (len(stored), not_k2[:3]))
    bad = [k for k in keys if not matches(k, gcm_open("k2", k2, k, stored.get(k, b"")))]
    suite.check("after: every value opens with k2 (AAD = its key) to the writers' last value or "
                "the original", not bad, bad[:3])
    leaked = [k for k, v in stored.items() if not v.startswith(b"k8s:enc:")
              or original[k][:40] in v or expected[k][:40] in v]
    suite.check("after: no plaintext stored", not leaked, leaked[:3])
    meta_after = {s(kv.key): (kv.create_revision, kv.version) for kv in kvs}
    once = [k for k in untouched
            if meta_after.get(k) != (meta_before.get(k, (0, 0))[0], meta_before.get(k, (0, 0))[1] + 1)]
    suite.check("after: each of the %d keys no writer touched was written exactly once more "
                "(same create_revision, version + 1)" % len(untouched), not once,
                [(k, meta_before[k], meta_after.get(k)) for k in once[:3]])
    leases_after = etcdctl_leases(etcd, MAIN_PREFIX)
    moved = [k for k in keys if leases_after.get(k) != leases_before.get(k)]
    suite.check("after: etcdctl get -w json shows every key with the lease it had before",
                not moved, [(k, leases_before.get(k), leases_after.get(k)) for k in moved[:3]])
    per_lease = []
    for lid in lease_ids:
        res = etcd.ctl("lease", "timetolive", "%x" % lid, "--keys", "-w", "json", check=True)
        per_lease.append(len(json.loads(res.stdout).get("keys") or []))
    suite.check("after: etcdctl lease timetolive --keys lists 100 keys on each lease",
                per_lease == [100] * 4, per_lease)
    got = values(through, MAIN_PREFIX)
    bad = [k for k in keys if not matches(k, got.get(k))]
    suite.check("after: every key read through the proxy holds the writers' last value or the "
                "original", len(got) == N_MAIN and not bad, (len(got), bad[:3]))

    # a second run has nothing to do
    rev0 = revision(raw)
    rc, obj, _, _ = tool_json("rewrite", etcd, config, MAIN_PREFIX)
    check_summary("second rewrite", rc, obj, 0, keys=N_MAIN, rewritten=0, unchanged=N_MAIN,
                  skipped=0, failed=0, revision=rev0)
    suite.check("second rewrite: etcd's revision did not move", revision(raw) == rev0,
                (rev0, revision(raw)))

    # scan agrees, and so does the test's own count
    classes = {}
    for v in stored.values():
        c = classes.setdefault(stored_class(v), [0, 0])
        c[0] += 1
        c[1] += len(v)
    total_bytes = sum(len(v) for v in stored.values())
    suite.check("own count: 20,000 values, all aesgcm:k2",
                {k: v[0] for k, v in classes.items()} == {"aesgcm:k2": N_MAIN}, classes)
    for flags in ((), ("--fail-on-stale",)):
        rc, obj, _, _ = tool_json("scan", etcd, config, MAIN_PREFIX, *flags)
        what = "scan %s after rewrite" % " ".join(flags)
        check_summary(what, rc, obj, 0, keys=N_MAIN, bytes=total_bytes, stale=0, plaintext=0,
                      unreadable=0, revision=rev0, unreadable_keys=[])
        res = (obj or {}).get("resources") or [{}]
        suite.check("%s: stored as agrees with the test's own count" % what,
                    len(res) == 1 and stored_summary(res[0])
                    == {"aesgcm:k2": (N_MAIN, total_bytes, False)}, res)

    # kube-apiserver compatibility: decrypt and serve read what rewrite wrote
    sample = [k for k in random.Random(2).sample(keys, 40) if not writers.maybe.get(k)][:25]
    bad = decrypt_problems(config, [(k, stored[k], expected[k]) for k in sample])
    suite.check("`decrypt` reads 25 rewritten values to their plaintext", not bad, bad[:3])
    suite.check("SIGHUP: the proxy serves k2 alone (k1 removed)",
                reload_proxy(proxy, config, [("aesgcm", [("k2", k2)]), ("identity",)]))
    got = values(through, MAIN_PREFIX)
    bad = [k for k in keys if not matches(k, got.get(k))]
    suite.check("with k1 removed, every key still reads through the proxy", not bad, bad[:3])
    through.close()
    raw.close()
    proxy.stop()
    etcd.stop()


# ---------------------------------------------------------------------------------------------
# 2. migrations


MIG = {}  # the etcd the migration, interrupt, dry-run and usage checks share


def mig_etcd():
    if not MIG:
        d = os.path.join(WORK, "mig")
        os.makedirs(d)
        etcd = harness.Etcd(d).start()
        suite.logs.append(etcd.log)
        MIG.update(dir=d, etcd=etcd, raw=client(etcd.port, timeout=60))
    return MIG["dir"], MIG["etcd"], MIG["raw"]


def mig_items(ns, n, tag):
    rnd = random.Random(ns)
    return [("/registry/secrets/%s/obj-%04d" % (ns, i), plaintext(tag, i, rnd)) for i in range(n)]


def plain_to_encrypted():
    d, etcd, raw = mig_etcd()
    prefix, n = "/registry/secrets/m-plain/", 300
    items = mig_items("m-plain", n, "plain")
    put_many(raw, items)  # written before encryption was enabled
    other = [("/registry/secrets/m-other/x%d" % i, b"other-%d" % i) for i in range(5)]
    put_many(raw, other)
    other_rev = {s(kv.key): kv.mod_revision for kv in range_all(raw, "/registry/secrets/m-other/")[1]}
    key = os.urandom(32)
    config = os.path.join(d, "plain.yaml")
    write_config(config, [("aesgcm", [("new", key)]), ("identity",)])
    rc, obj, _, _ = tool_json("scan", etcd, config, prefix)
    check_summary("plaintext: scan first", rc, obj, 1, keys=n, plaintext=n, unreadable=0)
    rev0 = revision(raw)
    rc, obj, _, _ = tool_json("rewrite", etcd, config, prefix)
    check_summary("plaintext -> aesgcm", rc, obj, 0, keys=n, rewritten=n, unchanged=0, skipped=0,
                  failed=0, revision=rev0)
    stored = values(raw, prefix)
    bad = [k for k, v in items if gcm_open("new", key, k, stored.get(k, b"")) != v]
    suite.check("plaintext -> aesgcm: all %d stored encrypted, opening to the plaintext" % n,
                len(stored) == n and not bad, bad[:3])
    after = {s(kv.key): kv.mod_revision for kv in range_all(raw, "/registry/secrets/m-other/")[1]}
    suite.check("--prefix confines the run: keys beside it were not written", after == other_rev)
    got = read_through(d, etcd, config, prefix)
    suite.check("plaintext -> aesgcm: serve reads every value", got == dict(items))
    bad = decrypt_problems(config, [(k, stored.get(k, b""), v) for k, v in items[:10]])
    suite.check("plaintext -> aesgcm: `decrypt` reads them", not bad, bad[:3])
    rc, obj, _, _ = tool_json("scan", etcd, config, prefix)
    check_summary("plaintext -> aesgcm: scan after", rc, obj, 0, keys=n, plaintext=0, stale=0,
                  unreadable=0)


def encrypted_to_identity():
    d, etcd, raw = mig_etcd()
    prefix, n = "/registry/secrets/m-ident/", 300
    items = mig_items("m-ident", n, "ident")
    key = os.urandom(32)
    put_many(raw, [(k, gcm_seal("old", key, k, v)) for k, v in items])
    config = os.path.join(d, "ident.yaml")
    write_config(config, [("identity",), ("aesgcm", [("old", key)])])
    rev0 = revision(raw)
    rc, obj, _, _ = tool_json("rewrite", etcd, config, prefix)
    check_summary("aesgcm -> identity", rc, obj, 0, keys=n, rewritten=n, unchanged=0, skipped=0,
                  failed=0, revision=rev0)
    stored = values(raw, prefix)
    suite.check("aesgcm -> identity: every stored value is the original plaintext",
                stored == dict(items),
                [k for k, v in items if stored.get(k) != v][:3])
    suite.check("aesgcm -> identity: no value starts with k8s:enc:",
                not [k for k, v in stored.items() if v.startswith(b"k8s:enc:")])
    got = read_through(d, etcd, config, prefix)
    suite.check("aesgcm -> identity: serve reads every value", got == dict(items))
    rc, obj, _, _ = tool_json("scan", etcd, config, prefix, "--fail-on-stale")
    check_summary("aesgcm -> identity: scan --fail-on-stale after", rc, obj, 0, keys=n, stale=0,
                  plaintext=0, unreadable=0)
    res = (obj or {}).get("resources") or [{}]
    suite.check("aesgcm -> identity: scan says secrets write identity, stored as identity",
                len(res) == 1 and res[0].get("encrypts") is False
                and res[0].get("write") == "identity"
                and {k: v[0] for k, v in stored_summary(res[0]).items()} == {"identity": n}, res)
    rc, obj, _, _ = tool_json("rewrite", etcd, config, prefix)
    check_summary("aesgcm -> identity: second run", rc, obj, 0, rewritten=0, unchanged=n)


def aescbc_to_aesgcm():
    d, etcd, raw = mig_etcd()
    prefix, n = "/registry/secrets/m-cbc/", 300
    items = mig_items("m-cbc", n, "cbc")
    kc, kg = os.urandom(32), os.urandom(32)
    put_many(raw, [(k, cbc_seal("cbc1", kc, v)) for k, v in items])
    # values of a key nobody has, in the middle of the key order
    unknown = {"/registry/secrets/m-cbc/obj-%04d-k9" % i: gcm_prefix("k9") + os.urandom(60)
               for i in (3, 150, 299)}
    put_many(raw, list(unknown.items()))
    unknown_rev = {s(kv.key): kv.mod_revision for kv in range_all(raw, prefix)[1]
                   if s(kv.key) in unknown}
    config = os.path.join(d, "cbc.yaml")
    write_config(config, [("aesgcm", [("gcm1", kg)]), ("aescbc", [("cbc1", kc)])])
    rc, obj, _, _ = tool_json("scan", etcd, config, prefix)
    check_summary("aescbc: scan first", rc, obj, 1, keys=n + 3, stale=n, unreadable=3)
    suite.check("aescbc: scan lists the 3 unreadable keys",
                sorted(u.get("key") for u in (obj or {}).get("unreadable_keys") or [])
                == sorted(unknown), (obj or {}).get("unreadable_keys"))
    rc, obj, _, _ = tool_json("rewrite", etcd, config, prefix)
    check_summary("aescbc -> aesgcm with 3 unreadable values", rc, obj, 1, keys=n + 3,
                  rewritten=n, failed=3, skipped=0, unchanged=0, failed_keys_truncated=False)
    suite.check("the 3 unreadable keys are listed in failed_keys, each with a reason",
                failed_key_names(obj) == sorted(unknown)
                and all(f.get("reason") for f in (obj or {}).get("failed_keys") or []),
                (obj or {}).get("failed_keys"))
    kvs = {s(kv.key): kv for kv in range_all(raw, prefix)[1]}
    suite.check("the unreadable values are left byte-for-byte alone (and not written)",
                all(kvs[k].value == v and kvs[k].mod_revision == unknown_rev[k]
                    for k, v in unknown.items()))
    bad = [k for k, v in items if gcm_open("gcm1", kg, k, kvs[k].value) != v]
    suite.check("aescbc -> aesgcm: the %d readable values are aesgcm:gcm1 and open to the "
                "plaintext" % n, not bad, bad[:3])
    got = read_through(d, etcd, config, prefix)
    suite.check("aescbc -> aesgcm: serve reads every rewritten value",
                all(got.get(k) == v for k, v in items))
    bad = decrypt_problems(config, [(k, kvs[k].value, v) for k, v in items[:10]])
    suite.check("aescbc -> aesgcm: `decrypt` reads them", not bad, bad[:3])
    rc, obj, _, _ = tool_json("rewrite", etcd, config, prefix)
    check_summary("aescbc -> aesgcm: second run", rc, obj, 1, rewritten=0, unchanged=n, failed=3)


def kms_v1_to_v2():
    d, etcd, raw = mig_etcd()
    prefix, n = "/registry/secrets/m-kms/", 300
    items = mig_items("m-kms", n, "kms")
    plugin = Plugin(d, "kek").start()
    v1 = kmsfake.kms_provider_yaml("ref-v1", "v1", plugin.sock, timeout="2s")
    v2 = kmsfake.kms_provider_yaml("ref-v2", "v2", plugin.sock, timeout="2s")
    config_v1 = os.path.join(d, "kms-v1.yaml")
    write_config(config_v1, [("kms", v1)])
    proxy = start_proxy(d, etcd, config_v1)
    try:
        errors = put_parallel(proxy.port, items, threads=2)
    finally:
        proxy.stop()
    before = values(raw, prefix)
    suite.check("kms v1: %d values written through the proxy, stored k8s:enc:kms:v1:ref-v1:" % n,
                not errors and len(before) == n
                and all(v.startswith(b"k8s:enc:kms:v1:ref-v1:") for v in before.values()),
                errors[:3])
    config = os.path.join(d, "kms-v2.yaml")
    write_config(config, [("kms", v2), ("kms", v1), ("identity",)])

    plugin.stop()
    rev0 = revision(raw)
    rc, obj, err, took = tool_json("rewrite", etcd, config, prefix, timeout=60)
    suite.check("kms plugin down: rewrite exits 2 (in %.1f s)" % took, rc == 2, (rc, err[-200:]))
    suite.check("kms plugin down: nothing was written", revision(raw) == rev0
                and values(raw, prefix) == before)

    plugin.start()
    rev0 = revision(raw)
    rc, obj, _, _ = tool_json("rewrite", etcd, config, prefix)
    check_summary("kms v1 -> kms v2", rc, obj, 0, keys=n, rewritten=n, unchanged=0, skipped=0,
                  failed=0, revision=rev0)
    stored = values(raw, prefix)
    suite.check("kms v1 -> kms v2: every value is stored k8s:enc:kms:v2:ref-v2:",
                len(stored) == n and all(v.startswith(b"k8s:enc:kms:v2:ref-v2:")
                                         for v in stored.values()))
    objs = [kms_v2_fields(v) for v in stored.values() if v.startswith(b"k8s:enc:kms:v2:")]
    seeds = {o.get(3) for o in objs}
    key_ids = {o.get(2) for o in objs}
    suite.check("kms v1 -> kms v2: one write state (one encrypted seed, one key_id) for all",
                len(seeds) == 1 and len(key_ids) == 1 and None not in seeds,
                (len(seeds), len(key_ids)))
    config_v2_only = os.path.join(d, "kms-v2-only.yaml")
    write_config(config_v2_only, [("kms", v2)])
    got = read_through(d, etcd, config_v2_only, prefix)
    suite.check("kms v1 -> kms v2: serve with kms v2 alone reads every value", got == dict(items),
                len(got))
    bad = decrypt_problems(config_v2_only, [(k, stored.get(k, b""), v) for k, v in items[:10]])
    suite.check("kms v1 -> kms v2: `decrypt` with kms v2 alone reads them", not bad, bad[:3])
    rc, obj, _, _ = tool_json("scan", etcd, config, prefix, "--fail-on-stale")
    check_summary("kms v1 -> kms v2: scan --fail-on-stale after", rc, obj, 0, keys=n, stale=0,
                  unreadable=0, plaintext=0)
    res = (obj or {}).get("resources") or [{}]
    key_id = s(next(iter(key_ids))) if len(key_ids) == 1 else None
    suite.check("kms v1 -> kms v2: scan says all stored as kms:v2:ref-v2 with the key_id",
                len(res) == 1 and {k: v[0] for k, v in stored_summary(res[0]).items()}
                == {"kms:v2:ref-v2 %s" % key_id: n}, res)
    plugin.stop()


def not_covered():
    d, etcd, raw = mig_etcd()
    prefix = "/registry/configmaps/nc/"
    items = [(prefix + "cm%d" % i, b"plain-configmap-%d" % i) for i in range(5)]
    put_many(raw, items)
    config = os.path.join(d, "secrets-only.yaml")
    write_config(config, [("aesgcm", [("k", os.urandom(32))]), ("identity",)])
    rev0 = revision(raw)
    rc, obj, _, _ = tool_json("rewrite", etcd, config, prefix)
    check_summary("keys no rule covers", rc, obj, 0, not_covered=5, rewritten=0, failed=0)
    suite.check("keys no rule covers are never written", revision(raw) == rev0
                and values(raw, prefix) == dict(items))


# ---------------------------------------------------------------------------------------------
# 3-4. dry run, interrupt and resume


INTR_PREFIX = "/registry/secrets/intr/"
N_INTR = 2000


def count_k2(raw, prefix):
    return sum(1 for kv in range_all(raw, prefix)[1] if kv.value.startswith(gcm_prefix("k2")))


def interrupted_run(raw, args, tag, since):
    """Starts the tool, sends SIGINT once it has rewritten something and 2 s have passed."""
    start = count_k2(raw, INTR_PREFIX)
    proc = spawn_tool(args, tag)
    t = time.monotonic()
    progressed = harness.wait_for(lambda: count_k2(raw, INTR_PREFIX) > start, 15, 0.1)
    time.sleep(max(0.0, 2.0 - (time.monotonic() - t)))
    suite.check("%s: it was rewriting before the SIGINT" % since, progressed)
    proc.send_signal(signal.SIGINT)
    t = time.monotonic()
    rc, out, err = finish_tool(proc, 30)
    print("     %s -> exit %s %.1f s after SIGINT: %s" % (tag, rc, time.monotonic() - t,
                                                       out[-400:]), flush=True)
    return rc, out, err


def all_current_before(raw, resume_from, k1, k2, originals):
    """(keys before |resume_from| not aesgcm:k2, keys not opening to their original)."""
    stale, broken = [], []
    for kv in range_all(raw, INTR_PREFIX)[1]:
        k = s(kv.key)
        got = gcm_open("k2", k2, k, kv.value)
        if got is None:
            if k < resume_from:
                stale.append(k)
            got = gcm_open("k1", k1, k, kv.value)
        if got != originals[k]:
            broken.append(k)
    return stale, broken


def dry_run_and_interrupt():
    d, etcd, raw = mig_etcd()
    k1, k2 = os.urandom(32), os.urandom(32)
    items = mig_items("intr", N_INTR, "intr")
    originals = dict(items)
    put_many(raw, [(k, gcm_seal("k1", k1, k, v)) for k, v in items])
    config = os.path.join(d, "intr.yaml")
    write_config(config, [("aesgcm", [("k2", k2), ("k1", k1)]), ("identity",)])
    args = ["rewrite"] + base_args(etcd.url, config, INTR_PREFIX)

    # 4. dry run
    rev0, snapshot = revision(raw), values(raw, INTR_PREFIX)
    rc, obj, _, _ = tool_json("rewrite", etcd, config, INTR_PREFIX, "--dry-run")
    check_summary("--dry-run", rc, obj, 0, dry_run=True, keys=N_INTR, rewritten=N_INTR,
                  failed=0, revision=rev0)
    suite.check("--dry-run: etcd's revision is unchanged", revision(raw) == rev0,
                (rev0, revision(raw)))
    suite.check("--dry-run: every stored value is unchanged", values(raw, INTR_PREFIX) == snapshot)

    # 3. SIGINT under --max-rps 200, JSON
    rc, out, err = interrupted_run(raw, args + ["-o", "json", "--max-rps", "200"], "intr-json",
                                   "SIGINT (json)")
    obj = parse_json(out)
    suite.check("SIGINT (json): exit 130", rc == 130, (rc, err[-200:]))
    bad = mismatches(obj, command="rewrite", interrupted=True, ok=False, dry_run=False)
    suite.check("SIGINT (json): the summary says interrupted, ok false", not bad, bad)
    suite.check("SIGINT (json): its counts add up to the keys examined", counts_add_up(obj),
                summary_of(obj))
    resume1 = (obj or {}).get("resume_from")
    suite.check("SIGINT (json): resume_from names a key under the prefix",
                isinstance(resume1, str) and resume1.startswith(INTR_PREFIX), resume1)
    resume1 = resume1 if isinstance(resume1, str) else INTR_PREFIX
    rewritten = (obj or {}).get("rewritten")
    n_k2 = count_k2(raw, INTR_PREFIX)
    suite.check("SIGINT (json): stopped part way (0 < rewritten=%s < %d)" % (rewritten, N_INTR),
                isinstance(rewritten, int) and 0 < rewritten < N_INTR)
    suite.check("SIGINT (json): rewritten (%s) is what etcd holds under k2 (%d)" % (rewritten, n_k2),
                rewritten == n_k2)
    stale, broken = all_current_before(raw, resume1, k1, k2, originals)
    suite.check("SIGINT (json): every key before resume_from is current", not stale, stale[:3])
    suite.check("SIGINT (json): every value still opens to its original", not broken, broken[:3])

    # table mode, resumed from there and interrupted again
    rc, out, err = interrupted_run(raw, args + ["-o", "table", "--max-rps", "200",
                                                "--resume-from", resume1], "intr-table",
                                   "SIGINT (table)")
    suite.check("SIGINT (table): exit 130", rc == 130, (rc, err[-200:]))
    text = out.decode(errors="replace") + "\n" + err
    m = re.search(r"resum", text, re.I)
    keys_after = re.findall(re.escape(INTR_PREFIX) + r"[A-Za-z0-9._/-]*[A-Za-z0-9]",
                            text[m.start():] if m else "")
    resume2 = keys_after[0] if keys_after else None
    suite.check("SIGINT (table): stdout or stderr names the key to resume from", resume2,
                text[-400:])
    resume2 = resume2 or resume1
    suite.check("SIGINT (table): that key is at or after the first resume_from",
                resume2 >= resume1, (resume1, resume2))
    stale, broken = all_current_before(raw, resume2, k1, k2, originals)
    suite.check("SIGINT (table): every key before it is current", not stale, stale[:3])
    suite.check("SIGINT (table): every value still opens to its original", not broken, broken[:3])

    # --resume-from finishes, then a full run has nothing to do
    rest = [kv for kv in range_all(raw, INTR_PREFIX)[1] if s(kv.key) >= resume2]
    rest_stale = sum(1 for kv in rest if not kv.value.startswith(gcm_prefix("k2")))
    rc, obj, _, _ = tool_json("rewrite", etcd, config, INTR_PREFIX, "--resume-from", resume2)
    check_summary("--resume-from", rc, obj, 0, keys=len(rest), rewritten=rest_stale,
                  unchanged=len(rest) - rest_stale, failed=0, interrupted=False, resume_from=None)
    stale, broken = all_current_before(raw, "\xff", k1, k2, originals)
    suite.check("--resume-from: now every key is current and opens to its original",
                not stale and not broken, (stale[:3], broken[:3]))
    rev0 = revision(raw)
    rc, obj, _, _ = tool_json("rewrite", etcd, config, INTR_PREFIX)
    check_summary("full run after resuming", rc, obj, 0, keys=N_INTR, rewritten=0,
                  unchanged=N_INTR, failed=0)
    suite.check("full run after resuming: etcd's revision did not move", revision(raw) == rev0)


# ---------------------------------------------------------------------------------------------
# 5. usage and connection errors


def usage_errors():
    d, etcd, raw = mig_etcd()
    config = os.path.join(d, "usage.yaml")
    write_config(config, [("aesgcm", [("k", os.urandom(32))]), ("identity",)])
    base = base_args(etcd.url, config, "/registry/secrets/usage/")
    rc, out, err, _ = run_tool(["rewrite", "--help"], 20)
    text = out.decode(errors="replace") + err
    suite.check("rewrite --help exits 0 and names its flags", rc == 0 and all(
        f in text for f in ("--dry-run", "--concurrency", "--max-rps", "--resume-from", "--batch")),
        (rc, text[:200]))
    rev0 = revision(raw)
    cases = [
        ("an unknown flag", ["rewrite", "--no-such-flag"] + base),
        ("-o xml", ["rewrite"] + base + ["-o", "xml"]),
        ("--concurrency abc", ["rewrite"] + base + ["--concurrency", "abc"]),
        ("--max-rps abc", ["rewrite"] + base + ["--max-rps", "abc"]),
        ("--batch abc", ["rewrite"] + base + ["--batch", "abc"]),
        ("--resume-from without a value", ["rewrite"] + base + ["--resume-from"]),
        ("a stray argument", ["rewrite"] + base + ["extra"]),
        ("no --encryption-provider-config", ["rewrite", "--endpoints", etcd.url]),
        ("a config file that does not exist",
         ["rewrite", "--endpoints", etcd.url, "--encryption-provider-config",
          os.path.join(d, "missing.yaml")]),
        ("scan with an unknown flag", ["scan", "--no-such-flag"] + base),
    ]
    for what, args in cases:
        rc, out, err, _ = run_tool(args, 30)
        suite.check("usage error exits 2: %s" % what, rc == 2 and err.strip(),
                    (rc, err.strip()[-160:]))
    suite.check("usage errors wrote nothing", revision(raw) == rev0)
    dead = "http://127.0.0.1:%d" % harness.free_port()
    # rewrite with the default deadline (what an operator gets), scan with a short one
    for command, extra in (("rewrite", []), ("scan", ["--request-timeout-ms", "3000"])):
        rc, out, err, took = run_tool([command, "--endpoints", dead, "--encryption-provider-config",
                                       config, "--prefix", "/registry/secrets/", "-o", "json"]
                                      + extra, 90)
        suite.check("etcd unreachable: %s %s exits 2 (in %.1f s)" % (command, " ".join(extra), took),
                    rc == 2, (rc, err.strip()[-200:]))


for name, fn in [("key rotation of 20,000 secrets under load", main_scenario),
                 ("plaintext -> aesgcm", plain_to_encrypted),
                 ("aesgcm -> identity", encrypted_to_identity),
                 ("aescbc -> aesgcm, unreadable values", aescbc_to_aesgcm),
                 ("kms v1 -> kms v2", kms_v1_to_v2),
                 ("keys no rule covers", not_covered),
                 ("--dry-run, SIGINT and --resume-from", dry_run_and_interrupt),
                 ("usage and connection errors", usage_errors)]:
    started = time.monotonic()
    suite.run(name, fn)
    print("   (%s: %.1f s)" % (name, time.monotonic() - started), flush=True)
suite.finish()
