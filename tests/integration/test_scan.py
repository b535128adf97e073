#!/usr/bin/python3
"""`etcd-encrypt-proxy scan` against a real etcd, checked against the README contract
("Checking and rotating what is stored: `scan` and `rewrite`").

Stored bytes are written straight into etcd (python3-etcd3): aesgcm values sealed here with
Python `cryptography` (AAD = the etcd key), aescbc values made by the `encrypt` subcommand,
kms v2 values written through the proxy with the reference plugin. The config has aesgcm keys
k2 (first) and k1 plus identity for secrets and configmaps, and identity first then aescbc c1
for `*.apps`; pods and masterleases are covered by no rule. A Python model of what was written
gives the expected JSON, compared field by field:

  * classification: aesgcm:k2 (current), aesgcm:k1 (stale), plaintext (JSON and protobuf
    `k8s\\x00`), an unknown key k9 (unreadable), a tampered k2 value (aesgcm:k2 without
    --verify, unreadable with --verify and listed in unreadable_keys), aescbc under an
    identity-first rule (stale, not plaintext), a ciphertext under a resource no rule covers
    (unreadable), keys no rule covers (rule null, encrypts false); per-resource and total
    counts, stored[] order, resource order, revision == etcd's revision, ok == (exit 0);
  * exit status 0 / 1 / --fail-on-stale, 2 for usage errors, a bad config file, a closed port
    and a dead KMS plugin; --prefix limits what is read; --etcd-prefix;
  * pagination (--page-size 7 and 1 give the same result as the default), the 1000-key cap of
    unreadable_keys, a snapshot: --page-size 1 while another process keeps adding keys under the
    prefix reports exactly the key count and bytes at the reported revision;
  * -o table (the default) names every resource and stored kind, same exit status;
  * stdout carries only the result: progress only when stderr is a terminal (run under a pty);
  * TLS with --cacert --cert --key (and refused without a client certificate);
  * kms v2: `kms:v2:<name>` with key_id, stale after the plugin's KEK rotation, --verify reads
    both generations, --fail-on-stale.
"""

import base64
import json
import os
import pty
import signal
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdwire  # noqa: E402
import harness  # noqa: E402
import kmsfake  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"

suite = harness.Suite("scan")
harness.require_binary(suite, "scan", "proxy binary is built and knows 'scan'")
BIN = harness.binary()
try:
    etcd3 = harness.import_etcd3()
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
except Exception as e:  # noqa: BLE001 - a missing client is a failure, never a skip
    suite.check("python3-etcd3 and python3-cryptography import", False, e)
    suite.finish()

WORK = harness.workdir("ep-scan")
try:
    ETCD = harness.Etcd(WORK)
    suite.logs.append(ETCD.log)
    ETCD.start()
except Exception as e:  # noqa: BLE001
    suite.check("etcd starts", False, e)
    suite.finish()
RAW = etcd3.client("127.0.0.1", ETCD.port, timeout=30)

ANY = object()  # expected value that matches anything (an ambiguity of the contract)

# The README's JSON example counts a plaintext value (stored[] "identity", "stale": true) under
# "plaintext" only: keys 3, stale 1, plaintext 1 for one k2, one k1 and one plaintext value. So
# the per-resource and total "stale" counts here exclude plaintext (and unreadable) values.
STALE_COUNT_INCLUDES_PLAINTEXT = True

# ---------------------------------------------------------------------------------------------
# the EncryptionConfiguration and stored values


K2, K1, K9, C1 = (os.urandom(32) for _ in range(4))


def b64(k):
    return base64.b64encode(k).decode()


def write_file(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


CONFIG = write_file(os.path.join(WORK, "enc.yaml"), """\
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets, configmaps]
    providers:
      - aesgcm:
          keys:
            - name: k2
              secret: %s
            - name: k1
              secret: %s
      - identity: {}
  - resources: ["*.apps"]
    providers:
      - identity: {}
      - aescbc:
          keys:
            - name: c1
              secret: %s
""" % (b64(K2), b64(K1), b64(C1)))

# writes aescbc c1 for *.apps, so that the `encrypt` subcommand makes the aescbc values
CBC_WRITER = write_file(os.path.join(WORK, "cbc-writer.yaml"), """\
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: ["*.apps"]
    providers:
      - aescbc:
          keys:
            - name: c1
              secret: %s
""" % b64(C1))


def seal(name, key, etcd_key, plain):
    """aesgcm as kube-apiserver stores it (spec 1.3): prefix, nonce[12], ct||tag, AAD = key."""
    nonce = os.urandom(12)
    return (b"k8s:enc:aesgcm:v1:%s:" % name.encode() + nonce
            + AESGCM(key).encrypt(nonce, plain, etcd_key.encode()))


def tamper(stored):
    """Flips the first ciphertext byte (after prefix and nonce); the prefix still names k2."""
    i = stored.index(b":", len(b"k8s:enc:aesgcm:v1:")) + 1 + 12
    return stored[:i] + bytes([stored[i] ^ 0x01]) + stored[i + 1:]


def rinfo(resource, key_prefix, rule, write):
    return {"resource": resource, "key_prefix": key_prefix, "rule": rule,
            "encrypts": write != "identity", "write": write}


SECRETS = rinfo("secrets", "/registry/secrets/", "secrets", "aesgcm:k2")
CONFIGMAPS = rinfo("configmaps", "/registry/configmaps/", "configmaps", "aesgcm:k2")
DEPLOYMENTS = rinfo("deployments.apps", "/registry/deployments/", "*.apps", "identity")
PODS = rinfo("pods", "/registry/pods/", None, "identity")
MASTERLEASES = rinfo("", "/registry/masterleases/", None, "identity")


class Val:
    """One stored value and how the contract says scan classifies it."""

    def __init__(self, key, stored, res, as_, stale=False, plaintext=False, unreadable=False,
                 tampered=False, key_id=None):
        self.key, self.stored, self.res, self.as_ = key, stored, res, as_
        self.stale, self.plaintext, self.unreadable = stale, plaintext, unreadable
        self.tampered, self.key_id = tampered, key_id

    def seen_as(self, verify):
        if self.unreadable or (verify and self.tampered):
            return "unreadable"
        return self.as_


MODEL = {}  # etcd key -> Val, everything written under /registry/ by this test's data sets


def put_many(vals, client=None):
    """Puts every Val (100 per Txn) and records it in MODEL."""
    client = client or RAW
    vals = list(vals)
    for i in range(0, len(vals), 100):
        chunk = vals[i:i + 100]
        ok, _ = client.transaction(compare=[], success=[client.transactions.put(v.key, v.stored)
                                                        for v in chunk], failure=[])
        if not ok:
            raise RuntimeError("txn failed")
    for v in vals:
        MODEL[v.key] = v
    return vals


def k2_val(key, res=None, size=200):
    res = res or (SECRETS if key.startswith("/registry/secrets/") else CONFIGMAPS)
    return Val(key, seal("k2", K2, key, os.urandom(size)), res, "aesgcm:k2")


def k1_val(key, res=None, size=300):
    res = res or (SECRETS if key.startswith("/registry/secrets/") else CONFIGMAPS)
    return Val(key, seal("k1", K1, key, os.urandom(size)), res, "aesgcm:k1", stale=True)


def plain_val(key, res, data):
    enc = res["encrypts"]
    return Val(key, data, res, "identity", stale=enc, plaintext=enc)


def cbc_val(key, plain):
    rc, stored, err = harness.cli("encrypt", CBC_WRITER, key, plain)
    if rc != 0 or not stored.startswith(b"k8s:enc:aescbc:v1:c1:"):
        raise RuntimeError("encrypt (aescbc) failed: rc=%d %s %r" % (rc, err, stored[:30]))
    return Val(key, stored, DEPLOYMENTS, "aescbc:c1", stale=True)


# ---------------------------------------------------------------------------------------------
# what the contract says the JSON is


def expected(prefix, verify=False, etcd_prefix="/registry/", fail_on_stale=False):
    """(exit status, the documented fields of the JSON) for MODEL's values under |prefix|."""
    vals = sorted((v for v in MODEL.values() if v.key.startswith(prefix)), key=lambda v: v.key)
    resources = {}
    unreadable_keys = []
    for v in vals:
        r = resources.setdefault(v.res["key_prefix"], dict(v.res, keys=0, bytes=0, stale=0,
                                                           plaintext=0, unreadable=0, groups={}))
        as_ = v.seen_as(verify)
        r["keys"] += 1
        r["bytes"] += len(v.stored)
        if as_ == "unreadable":
            r["unreadable"] += 1
            unreadable_keys.append(v.key)
        elif v.plaintext:
            r["plaintext"] += 1
            r["stale"] += STALE_COUNT_INCLUDES_PLAINTEXT
        elif v.stale:
            r["stale"] += 1
        g = r["groups"].setdefault((as_, v.key_id or ""), {
            "as": as_, "keys": 0, "bytes": 0,
            # unreadable: the contract does not say whether such a value is "stale"
            "stale": ANY if as_ == "unreadable" else v.stale})
        if v.key_id is not None:
            g["key_id"] = v.key_id
        g["keys"] += 1
        g["bytes"] += len(v.stored)
    out_res = []
    for kp in sorted(resources):
        r = resources[kp]
        groups = r.pop("groups")
        r["stored"] = [groups[k] for k in sorted(groups)]
        out_res.append(r)
    tot = {f: sum(r[f] for r in out_res) for f in ("keys", "bytes", "stale", "plaintext",
                                                    "unreadable")}
    bad = tot["plaintext"] or tot["unreadable"] or (fail_on_stale and tot["stale"])
    rc = 1 if bad else 0
    doc = dict(command="scan", etcd_prefix=etcd_prefix, prefix=prefix, verified=verify,
               resources=out_res, unreadable_keys_truncated=False, ok=rc == 0, **tot)
    return rc, doc, unreadable_keys


def diff(want, got, path="$"):
    """Mismatches between |want| (documented fields only; ANY matches all) and |got|."""
    if want is ANY:
        return []
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return ["%s: want an object, got %r" % (path, got)]
        out = []
        for k, w in want.items():
            if k not in got:
                out.append("%s.%s missing" % (path, k))
            else:
                out += diff(w, got[k], "%s.%s" % (path, k))
        return out
    if isinstance(want, list):
        if not isinstance(got, list):
            return ["%s: want a list, got %r" % (path, got)]
        out = []
        if len(want) != len(got):
            out.append("%s: %d entries, want %d: %s" % (path, len(got), len(want), json.dumps(got)[:600]))
        for i, (w, g) in enumerate(zip(want, got)):
            out += diff(w, g, "%s[%d]" % (path, i))
        return out
    if type(want) is not type(got) or want != got:  # noqa: E721 - true != 1 here
        return ["%s = %r, want %r" % (path, got, want)]
    return []


# ---------------------------------------------------------------------------------------------
# running scan, etcd's view


class Run:
    def __init__(self, cmd, rc, out, err, took):
        self.cmd, self.rc, self.out, self.err, self.took = cmd, rc, out, err, took
        self.doc = None
        try:
            self.doc = json.loads(out)
        except ValueError:
            pass

    def why(self):
        return "rc=%s stderr=%r stdout=%r (%s)" % (self.rc, self.err[-400:], self.out[:300],
                                                    " ".join(self.cmd[1:]))


def scan_cmd(*args, config=CONFIG, endpoints=None, out="json"):
    cmd = [BIN, "scan", "--endpoints", endpoints or ETCD.url]
    if config:
        cmd += ["--encryption-provider-config", config]
    if out:
        cmd += ["-o", out]
    return cmd + list(args)


def run(cmd, timeout=60):
    t = time.monotonic()
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                             preexec_fn=harness._die_with_parent)
        rc, out, err = res.returncode, res.stdout, res.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "timeout", e.stdout or b"", e.stderr or b""
    return Run(cmd, rc, out.decode(errors="replace"), err.decode(errors="replace"),
               time.monotonic() - t)


def scan(*args, **kw):
    timeout = kw.pop("timeout", 60)
    return run(scan_cmd(*args, **kw), timeout)


def revision():
    res = ETCD.ctl("get", "/registry/", "--prefix", "--keys-only", "--limit", "1", "-w", "json",
                   check=True)
    return int(json.loads(res.stdout)["header"]["revision"])


def count_at(prefix, rev=None):
    """etcd's count of keys under |prefix| (RangeResponse.count ignores --limit)."""
    args = ["get", prefix, "--prefix", "--keys-only", "--limit", "1", "-w", "json"]
    if rev is not None:
        args.append("--rev=%d" % rev)
    return int(json.loads(ETCD.ctl(*args, check=True).stdout).get("count", 0))


def bytes_at(prefix, rev):
    res = ETCD.ctl("get", prefix, "--prefix", "--rev=%d" % rev, "-w", "json", check=True,
                   timeout=60)
    return sum(len(base64.b64decode(kv.get("value", ""))) for kv in
               json.loads(res.stdout).get("kvs") or [])


def no_progress(r):
    """Neither a progress line nor a carriage return on a stderr that is not a terminal."""
    return "\r" not in r.err and "keys/s" not in r.err and "ETA" not in r.err


def check_scan(what, r, prefix, verify=False, fail_on_stale=False, etcd_prefix="/registry/",
               rev=None):
    """The JSON of |r| is exactly what MODEL says for |prefix|; exit status; ok; revision."""
    rc, want, unreadable = expected(prefix, verify, etcd_prefix, fail_on_stale)
    if not suite.check("%s: exit %d, JSON on stdout" % (what, rc), r.rc == rc and r.doc is not None,
                       r.why()):
        return None
    problems = diff(want, r.doc)
    suite.check("%s: JSON fields and counts as the contract says" % what, not problems,
                "; ".join(problems[:8]))
    got_keys = [u.get("key") for u in r.doc.get("unreadable_keys") or []]
    suite.check("%s: unreadable_keys lists exactly the unreadable values" % what,
                isinstance(r.doc.get("unreadable_keys"), list)
                and sorted(got_keys) == sorted(unreadable) and len(got_keys) == len(unreadable),
                (r.doc.get("unreadable_keys"), unreadable))
    suite.check("%s: every unreadable key has a reason" % what,
                all(isinstance(u.get("reason"), str) and u["reason"].strip()
                    for u in r.doc.get("unreadable_keys") or []), r.doc.get("unreadable_keys"))
    rev = revision() if rev is None else rev
    suite.check("%s: revision is etcd's revision (%d)" % (what, rev), r.doc.get("revision") == rev,
                r.doc.get("revision"))
    suite.check("%s: no progress output on a non-terminal stderr" % what, no_progress(r),
                r.err[-200:])
    return r.doc


# ---------------------------------------------------------------------------------------------
# the data set


def write_data_set():
    vals = [k2_val("/registry/secrets/ns1/k2-%s" % s, size=100 + 50 * i)
            for i, s in enumerate("abc")]
    vals += [k1_val("/registry/secrets/ns3/k1-%s" % s, size=400 + i) for i, s in enumerate("ab")]
    vals.append(plain_val("/registry/secrets/ns2/plain", SECRETS,
                          b'{"kind":"Secret","apiVersion":"v1","data":{"p":"cHc="}}'))
    k9 = seal("k9", K9, "/registry/secrets/ns2/unknown-key", b"x" * 77)
    vals.append(Val("/registry/secrets/ns2/unknown-key", k9, SECRETS, "unreadable",
                    unreadable=True))
    vals.append(Val("/registry/secrets/ns2/tampered",
                    tamper(seal("k2", K2, "/registry/secrets/ns2/tampered", b"t" * 90)), SECRETS,
                    "aesgcm:k2", tampered=True))
    vals.append(k2_val("/registry/configmaps/ns1/cm-k2", size=1000))
    vals.append(k1_val("/registry/configmaps/ns1/cm-k1", size=10))
    vals.append(plain_val("/registry/configmaps/ns1/cm-plain-json", CONFIGMAPS,
                          b'{"kind":"ConfigMap","apiVersion":"v1","data":{"a":"b"}}'))
    vals.append(plain_val("/registry/configmaps/ns1/cm-plain-proto", CONFIGMAPS,
                          b"k8s\x00\n\x0f\n\x02v1\x12\tConfigMap" + os.urandom(40)))
    vals.append(plain_val("/registry/deployments/ns1/d-plain", DEPLOYMENTS,
                          b'{"kind":"Deployment","apiVersion":"apps/v1"}'))
    vals.append(cbc_val("/registry/deployments/ns1/d-cbc", b'{"kind":"Deployment"}' * 3))
    vals.append(plain_val("/registry/masterleases/10.0.0.1", MASTERLEASES, b"k8s\x00lease"))
    vals.append(plain_val("/registry/pods/ns1/p-plain", PODS, b'{"kind":"Pod","apiVersion":"v1"}'))
    vals.append(Val("/registry/pods/ns1/p-cipher",
                    seal("k2", K2, "/registry/pods/ns1/p-cipher", b"pod" * 20), PODS,
                    "unreadable", unreadable=True))
    put_many(vals)
    # the data are what the test thinks they are: the CLI reads the k2 and k1 values
    for key in ("/registry/secrets/ns1/k2-a", "/registry/secrets/ns3/k1-a"):
        rc, _, err = harness.cli("decrypt", CONFIG, key, MODEL[key].stored)
        if rc != 0:
            raise RuntimeError("test data: decrypt of %s failed: %s" % (key, err))


# ---------------------------------------------------------------------------------------------
# the groups of checks


def classification():
    write_data_set()
    rev = revision()
    doc = check_scan("full scan", scan(), "/registry/", rev=rev)
    if doc:
        order = [r.get("key_prefix") for r in doc.get("resources", [])]
        suite.check("resources are sorted by key_prefix", order == sorted(order), order)
        sec = next((r for r in doc["resources"] if r.get("resource") == "secrets"), {})
        suite.check("without --verify the tampered k2 value counts as aesgcm:k2",
                    any(s.get("as") == "aesgcm:k2" and s.get("keys") == 4
                        for s in sec.get("stored", [])), sec.get("stored"))
        extra = sorted(set(doc) - set(expected("/registry/")[1]) - {"revision", "unreadable_keys"})
        if extra:
            print("note: fields beyond the README: %s" % extra, flush=True)
    doc = check_scan("full scan --verify", scan("--verify"), "/registry/", verify=True, rev=rev)
    if doc:
        keys = [u.get("key") for u in doc.get("unreadable_keys", [])]
        suite.check("--verify lists the tampered k2 value as unreadable",
                    "/registry/secrets/ns2/tampered" in keys, keys)
    suite.check("scanning wrote nothing (revision unchanged)", revision() == rev, revision())


def exit_status_and_prefix():
    cases = [  # prefix, extra flags, what
        ("/registry/secrets/ns1/", [], "current k2 values only"),
        ("/registry/secrets/ns1/", ["--fail-on-stale"], "current k2 values, --fail-on-stale"),
        ("/registry/secrets/ns3/", [], "stale k1 values only"),
        ("/registry/secrets/ns3/", ["--fail-on-stale"], "stale k1 values, --fail-on-stale"),
        ("/registry/secrets/ns3/", ["--verify"], "stale k1 values, --verify"),
        ("/registry/secrets/ns2/plain", [], "plaintext under an encrypting rule"),
        ("/registry/secrets/ns2/unknown-key", [], "a value of an unknown key k9"),
        ("/registry/secrets/ns2/tampered", [], "a tampered k2 value without --verify"),
        ("/registry/secrets/ns2/tampered", ["--verify"], "a tampered k2 value with --verify"),
        ("/registry/secrets/", [], "--prefix /registry/secrets/"),
        ("/registry/configmaps/", [], "--prefix /registry/configmaps/"),
        ("/registry/deployments/", [], "identity-first rule with an aescbc value"),
        ("/registry/deployments/", ["--fail-on-stale"], "identity-first rule, --fail-on-stale"),
        ("/registry/deployments/", ["--verify"], "identity-first rule, --verify"),
        ("/registry/masterleases/", [], "a key kube-apiserver never transforms"),
        ("/registry/pods/ns1/p-plain", [], "plaintext under a resource no rule covers"),
        ("/registry/pods/", [], "a ciphertext under a resource no rule covers"),
    ]
    for prefix, flags, what in cases:
        r = scan("--prefix", prefix, *flags)
        check_scan(what, r, prefix, verify="--verify" in flags,
                   fail_on_stale="--fail-on-stale" in flags)
    # the plain exit codes, spelled out (check_scan derives them from the model)
    for prefix, flags, rc in [("/registry/secrets/ns1/", ["--fail-on-stale"], 0),
                              ("/registry/secrets/ns3/", [], 0),
                              ("/registry/secrets/ns3/", ["--fail-on-stale"], 1),
                              ("/registry/secrets/ns2/plain", [], 1),
                              ("/registry/secrets/ns2/unknown-key", [], 1),
                              ("/registry/secrets/ns2/tampered", [], 0),
                              ("/registry/secrets/ns2/tampered", ["--verify"], 1),
                              ("/registry/pods/", [], 1), ("/registry/", [], 1)]:
        r = scan("--prefix", prefix, *flags)
        suite.check("scan --prefix %s %s exits %d" % (prefix, " ".join(flags), rc), r.rc == rc,
                    r.why())
    r = scan("--prefix", "/registry/masterleases/")
    res = (r.doc or {}).get("resources") or [{}]
    suite.check("masterleases: resource \"\", rule null, encrypts false, write identity",
                len(res) == 1 and res[0].get("resource") == "" and res[0].get("rule", 0) is None
                and res[0].get("encrypts") is False and res[0].get("write") == "identity",
                r.why())
    r = scan("--prefix", "/registry/nothing-here/")
    suite.check("an empty prefix: exit 0, 0 keys, no resources",
                r.rc == 0 and r.doc is not None and r.doc.get("keys") == 0
                and r.doc.get("resources") == [] and r.doc.get("ok") is True, r.why())


def usage_and_connection_errors():
    r = run([BIN, "scan", "--help"])
    suite.check("scan --help exits 0 and names its flags",
                r.rc == 0 and all(f in r.out + r.err for f in ("--prefix", "--verify", "--endpoints")),
                r.why())
    for what, cmd in [
        ("an unknown flag", scan_cmd("--bogus-flag")),
        ("a missing --encryption-provider-config", scan_cmd(config=None)),
        ("-o yaml (no such output)", scan_cmd(out="yaml")),
        ("a flag without its value", scan_cmd("--prefix")),
    ]:
        r = run(cmd)
        suite.check("%s: exit 2 with a message on stderr, nothing on stdout" % what,
                    r.rc == 2 and r.err.strip() and not r.out.strip(), r.why())
    r = run(scan_cmd(config=None))
    suite.check("the missing flag is named", "encryption-provider-config" in r.err, r.err[-300:])
    r = scan(config=os.path.join(WORK, "no-such-config.yaml"))
    suite.check("a config file that does not exist: exit 2 (not 1, which means findings)",
                r.rc == 2 and r.err.strip() and not r.out.strip(), r.why())
    port = harness.free_port()  # bound and closed: nobody listens there
    r = scan(endpoints="http://127.0.0.1:%d" % port, timeout=90)
    suite.check("etcd unreachable (closed port %d): exit 2" % port, r.rc == 2, r.why())
    suite.check("etcd unreachable: a clear message on stderr",
                r.err.strip() and (str(port) in r.err or any(
                    w in r.err.lower() for w in ("connect", "refused", "unreachable",
                                                 "unavailable"))), r.err[-300:])
    suite.check("etcd unreachable: no result claiming ok on stdout",
                not r.out.strip() or (r.doc is not None and r.doc.get("ok") is False), r.out[:200])
    suite.check("etcd unreachable: gives up within 60 s (%.1f s)" % r.took, r.took < 60)


def table_output():
    want_rc = expected("/registry/")[0]
    names = ["secrets", "configmaps", "deployments.apps", "pods"]
    kinds = ["aesgcm:k2", "aesgcm:k1", "aescbc:c1", "identity", "unreadable"]
    for label, out in (("-o table", "table"), ("the default output", None)):
        r = scan(out=out)
        suite.check("%s: exit %d as with -o json" % (label, want_rc), r.rc == want_rc, r.why())
        suite.check("%s is not JSON" % label, r.out.strip() and r.doc is None, r.out[:200])
        missing = [n for n in names + kinds if n not in r.out]
        suite.check("%s names every resource and stored kind" % label, not missing,
                    "missing %s in %r" % (missing, r.out[:800]))
        suite.check("%s mentions the key that names no resource (masterleases)" % label,
                    "masterleases" in r.out, r.out[:800])
    r = scan("--prefix", "/registry/secrets/ns1/", out="table")
    suite.check("-o table on current values: exit 0 and names secrets",
                r.rc == 0 and "secrets" in r.out and "configmaps" not in r.out, r.why())


def pagination():
    vals = []
    for i in range(100):
        key = "/registry/configmaps/page/cm-%03d" % i
        vals.append([k2_val, k1_val, lambda k: plain_val(k, CONFIGMAPS, b"plain-%d" % i * 7)][i % 3](key))
    put_many(vals)
    rev = revision()
    default = check_scan("after 100 more keys, default page size", scan(), "/registry/", rev=rev)
    for size in ("7", "1"):
        r = scan("--page-size", size)
        doc = check_scan("--page-size %s" % size, r, "/registry/", rev=rev)
        if doc and default:
            suite.check("--page-size %s gives the same JSON as the default" % size,
                        doc == default, diff(default, doc)[:5])
    r = scan("--page-size", "7", "--prefix", "/registry/configmaps/page/")
    check_scan("--page-size 7 --prefix .../page/ (100 keys)", r, "/registry/configmaps/page/",
               rev=rev)
    r = scan("--page-size", "0")
    suite.check("--page-size 0 is a usage error (exit 2)", r.rc == 2, r.why())


def etcd_prefix_flag():
    vals = [k2_val("/custom/secrets/ns/a", res=rinfo("secrets", "/custom/secrets/", "secrets",
                                                     "aesgcm:k2")),
            plain_val("/custom/configmaps/ns/b",
                      rinfo("configmaps", "/custom/configmaps/", "configmaps", "aesgcm:k2"),
                      b'{"kind":"ConfigMap"}')]
    put_many(vals)
    r = scan("--etcd-prefix", "/custom")
    check_scan("--etcd-prefix /custom", r, "/custom/", etcd_prefix="/custom/")
    r = scan("--etcd-prefix", "/custom", "--prefix", "/custom/secrets/")
    check_scan("--etcd-prefix /custom --prefix /custom/secrets/", r, "/custom/secrets/",
               etcd_prefix="/custom/")


def unreadable_cap():
    base = "/registry/secrets/many/"
    put_many(Val(base + "u-%05d" % i, seal("k9", K9, base + "u-%05d" % i, b"z" * 20), SECRETS,
                 "unreadable", unreadable=True) for i in range(1003))
    r = scan("--prefix", base)
    d = r.doc or {}
    listed = [u.get("key") for u in d.get("unreadable_keys") or []]
    suite.check("1003 unreadable values: exit 1, counts complete",
                r.rc == 1 and d.get("keys") == 1003 and d.get("unreadable") == 1003, r.why())
    suite.check("unreadable_keys lists 1000 of them and says it is truncated",
                len(listed) == 1000 and len(set(listed)) == 1000
                and all(k.startswith(base) for k in listed)
                and d.get("unreadable_keys_truncated") is True,
                (len(listed), d.get("unreadable_keys_truncated")))
    suite.check("the truncated scan: ok false", d.get("ok") is False, d.get("ok"))


WRITER = """
import sys
sys.path.insert(0, %r)
import harness
etcd3 = harness.import_etcd3()
c = etcd3.client("127.0.0.1", int(sys.argv[1]), timeout=10)
for i in range(int(sys.argv[3])):
    c.put(sys.argv[2] + "%%07d" %% i, b"w" * (20 + i %% 50))
""" % HERE

SNAP = "/registry/configmaps/snap/"


def snapshot():
    put_many(plain_val(SNAP + "a-%04d" % i, CONFIGMAPS, b"v" * (30 + i % 17)) for i in range(400))
    log = os.path.join(WORK, "writer.log")
    suite.logs.append(log)
    # at most 4000 keys (a few seconds): a scan that chases the writer still ends
    writer = harness.spawn([PY, "-c", WRITER, str(ETCD.port), SNAP + "w-", "4000"], log)
    try:
        if not harness.wait_for(lambda: count_at(SNAP) > 450, 20, 0.2):
            raise RuntimeError("the writer does not write:\n" + harness.log_tail(log))
        rev0 = revision()
        before = count_at(SNAP)
        r = scan("--prefix", SNAP, "--page-size", "1", timeout=60)
        after = count_at(SNAP)
        alive = writer.poll() is None
    finally:
        harness.stop(writer)
    suite.check("the writer kept running through the scan", alive, harness.log_tail(log))
    d = r.doc or {}
    rev = d.get("revision")
    if not suite.check("scan --page-size 1 under concurrent writes: JSON (exit 1: plaintext)",
                       r.rc == 1 and isinstance(rev, int), r.why()):
        return
    at = count_at(SNAP, rev)
    suite.check("the revision is the one of the scan's start (%d <= %d)" % (rev0, rev), rev >= rev0)
    suite.check("keys were added during the scan (%d before, %d after, %d at the revision)"
                % (before, after, at), after > at >= before)
    suite.check("keys == the count at the reported revision (%s == %d)" % (d.get("keys"), at),
                d.get("keys") == at)
    b = bytes_at(SNAP, rev)
    suite.check("bytes == the value bytes at the reported revision (%s == %d)" % (d.get("bytes"), b),
                d.get("bytes") == b)
    res = d.get("resources") or [{}]
    suite.check("the snapshot's resource totals match too",
                len(res) == 1 and res[0].get("keys") == at and res[0].get("plaintext") == at
                and res[0].get("bytes") == b, res)


def progress_on_terminal():
    master, slave = pty.openpty()
    cmd = scan_cmd("--prefix", SNAP, "--page-size", "1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL,
                            preexec_fn=harness._die_with_parent)
    harness._procs.append(proc)
    os.close(slave)
    tty = []

    def drain():
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            tty.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        harness.stop(proc)
    reader.join(10)
    os.close(master)
    tty = b"".join(tty).decode(errors="replace")
    try:
        doc = json.loads(out)
    except ValueError:
        doc = None
    suite.check("stderr on a terminal: stdout is still exactly one JSON object",
                doc is not None and doc.get("command") == "scan", out[:300])
    suite.check("stderr on a terminal: scan exits as without one (1, plaintext)",
                proc.returncode == 1, proc.returncode)
    suite.check("stderr on a terminal shows progress", tty.strip() != "", repr(tty[-200:]))
    suite.check("the progress mentions keys", "keys" in tty, repr(tty[-200:]))
    suite.check("the result does not go to the terminal", '"command"' not in tty, repr(tty[-200:]))
    r = scan("--prefix", SNAP, "--page-size", "1")
    suite.check("same scan with stderr a pipe: no progress on stderr", no_progress(r),
                repr(r.err[-200:]))


def tls():
    d = os.path.join(WORK, "tls-etcd")
    os.makedirs(d)
    t = harness.make_tls(os.path.join(d, "tls"))
    etcd = harness.Etcd(d, tls=t, client_cert_auth=True)
    suite.logs.append(etcd.log)
    etcd.start()
    try:
        c = etcd3.client("127.0.0.1", etcd.port, ca_cert=t.ca, cert_key=t.client_key,
                         cert_cert=t.client_cert, timeout=15)
        vals = [k2_val("/registry/secrets/tls/s%d" % i) for i in range(3)]
        vals.append(k2_val("/registry/configmaps/tls/c"))
        saved = dict(MODEL)
        MODEL.clear()
        try:
            put_many(vals, client=c)
            want_rc, want, _ = expected("/registry/")
            tls_model = dict(MODEL)
        finally:
            MODEL.clear()
            MODEL.update(saved)
        c.close()
        certs = ["--cacert", t.ca, "--cert", t.client_cert, "--key", t.client_key]
        r = scan(*certs, endpoints=etcd.url)
        suite.check("TLS: scan with --cacert --cert --key exits 0", r.rc == 0 and r.doc, r.why())
        problems = diff(want, r.doc or {})
        suite.check("TLS: the JSON is as the contract says", not problems, problems[:5])
        res = etcd.ctl("get", "/registry/", "--prefix", "--keys-only", "--limit", "1", "-w", "json",
                       check=True)
        suite.check("TLS: revision is the TLS etcd's",
                    (r.doc or {}).get("revision") == json.loads(res.stdout)["header"]["revision"],
                    (r.doc or {}).get("revision"))
        suite.check("TLS: 4 keys", (r.doc or {}).get("keys") == len(tls_model), r.doc)
        runs = [scan("--cacert", t.ca, endpoints=etcd.url, timeout=60) for _ in range(5)]
        bad = [r.why() for r in runs if r.rc != 2 or not r.err.strip()]
        suite.check("TLS: without a client certificate etcd refuses: exit 2 with a message "
                    "(5 runs)", not bad, "%d of 5: %s" % (len(bad), bad[:2]))
        r = scan(endpoints=etcd.url.replace("https:", "http:"), timeout=90)
        suite.check("TLS: plain http to the TLS port: exit 2", r.rc == 2, r.why())
    finally:
        etcd.stop()


class Plugin:
    """etcd-encrypt-kms-plugin with a key file (as in test_kms_reference)."""

    def __init__(self, tag, path):
        self.path = path
        self.sock = os.path.join(WORK, tag + ".sock")
        self.key_file = os.path.join(WORK, tag + ".key")
        self.log = os.path.join(WORK, tag + ".log")
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
        self.proc = harness.spawn([self.path, "--listen", "unix://" + self.sock,
                                   "--key-file", self.key_file], self.log)
        if not harness.wait_for(lambda: os.path.exists(self.sock), 10):
            raise RuntimeError("plugin did not start:\n" + harness.log_tail(self.log))
        return self

    def stop(self):
        if self.proc:
            harness.stop(self.proc)


def key_id_of(stored):
    """EncryptedObject.keyID (field 2) of a kms v2 stored value."""
    body = stored[stored.index(b":", len(b"k8s:enc:kms:v2:")) + 1:]
    return next(bytes(v) for n, _, v in etcdwire.parse_fields(body) if n == 2).decode()


def kms_v2():
    path = harness.kms_plugin_binary()
    if not suite.check("the reference KMS plugin is built", os.access(path, os.X_OK), path):
        return
    plugin = Plugin("kms-ref", path).start()
    config = os.path.join(WORK, "kms.yaml")
    kmsfake.write_kms_config(config, [kmsfake.kms_provider_yaml("ref", "v2", plugin.sock)],
                             resources=("secrets",))
    proxy = harness.Proxy(WORK, [ETCD.url], config, extra=["--kms-status-interval-ms", "300"])
    suite.logs.append(proxy.log)
    base = "/registry/secrets/kms/"
    kres = rinfo("secrets", "/registry/secrets/", "secrets", "kms:v2:ref")

    def record(keys):
        for k in keys:
            stored, _ = RAW.get(k)
            if not (stored or b"").startswith(b"k8s:enc:kms:v2:ref:"):
                raise RuntimeError("not stored as kms v2: %s %r" % (k, (stored or b"")[:40]))
            MODEL[k] = Val(k, stored, kres, "kms:v2:ref", key_id=key_id_of(stored))

    def new_write_states():
        with open(proxy.log, "rb") as f:
            return f.read().count(b"new write state")

    try:
        proxy.start(timeout=30)
        old = [base + "old-%d" % i for i in range(3)]
        for i, k in enumerate(old):
            res = proxy.ctl("put", k, "secret-%d-" % i + "x" * (i * 100), timeout=20)
            if res.returncode != 0:
                raise RuntimeError("put through the proxy: %s" % res.stderr)
        record(old)
        old_id = MODEL[old[0]].key_id
        r = scan("--prefix", base, config=config)
        check_scan("kms v2, one key_id", r, base)
        st = ((r.doc or {}).get("resources") or [{}])[0].get("stored") or [{}]
        suite.check("kms v2 entry: as kms:v2:ref with the stored key_id",
                    st[0].get("as") == "kms:v2:ref" and st[0].get("key_id") == old_id, st)
        check_scan("kms v2 --verify", scan("--prefix", base, "--verify", config=config), base,
                   verify=True)

        plugin.write_key()
        plugin.proc.send_signal(signal.SIGHUP)
        for k in old:  # now stale: the plugin's current key_id is another
            MODEL[k].stale = True
        if not harness.wait_for(lambda: new_write_states() >= 2, 15):
            raise RuntimeError("the proxy did not pick up the new KEK:\n"
                               + harness.log_tail(proxy.log))
        new = [base + "new-%d" % i for i in range(2)]
        for k in new:
            res = proxy.ctl("put", k, "after-rotation", timeout=20)
            if res.returncode != 0:
                raise RuntimeError("put through the proxy: %s" % res.stderr)
        record(new)
        new_id = MODEL[new[0]].key_id
        suite.check("rotation: new writes carry another key_id", new_id != old_id,
                    (old_id, new_id))
        r = scan("--prefix", base, config=config)
        doc = check_scan("kms v2 after rotation", r, base)
        if doc:
            st = (doc.get("resources") or [{}])[0].get("stored") or []
            by_id = {s.get("key_id"): s for s in st}
            suite.check("after rotation: the old key_id is stale, the new one is not",
                        by_id.get(old_id, {}).get("stale") is True
                        and by_id.get(new_id, {}).get("stale") is False
                        and doc.get("stale") == 3, st)
        check_scan("kms v2 after rotation, --fail-on-stale",
                   scan("--prefix", base, "--fail-on-stale", config=config), base,
                   fail_on_stale=True)
        check_scan("kms v2 after rotation, --verify (the plugin still reads the old KEK)",
                   scan("--prefix", base, "--verify", config=config), base, verify=True)
        plugin.stop()
        r = scan("--prefix", base, config=config, timeout=90)
        suite.check("kms plugin down: exit 2 with a message", r.rc == 2 and r.err.strip(),
                    r.why())
    finally:
        proxy.stop()
        plugin.stop()


for name, fn in [("classification and the exact JSON", classification),
                 ("exit status and --prefix", exit_status_and_prefix),
                 ("usage and connection errors", usage_and_connection_errors),
                 ("table output", table_output),
                 ("pagination", pagination),
                 ("--etcd-prefix", etcd_prefix_flag),
                 ("unreadable_keys cap", unreadable_cap),
                 ("snapshot under concurrent writes", snapshot),
                 ("progress only on a terminal", progress_on_terminal),
                 ("TLS", tls),
                 ("kms v2 and rotation", kms_v2)]:
    suite.run(name, fn)
RAW.close()
suite.finish()
