"""etcdctl through the proxy: every command kube operators use, and what lands in etcd.

Values written under /registry/secrets and /registry/configmaps must be stored in etcd as
`k8s:enc:aesgcm:v1:key1:` + nonce + ciphertext + tag with the etcd key as AAD (spec 1.3),
readable by the CLI and by an independent Python AES-GCM; other keys stay plaintext.
"""

import base64
import json
import os
import queue
import re
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AESGCM_PREFIX  # noqa: E402

suite = harness.Suite("etcdctl")
env = harness.start_env(suite)
SECRET = "/registry/secrets/default/db-pass"
POD = "/registry/pods/default/web-0"
values = {}  # key -> plaintext written through the proxy


def stored_form(key, plain):
    raw = env.raw_get(key)
    suite.check_encrypted("%s stored with the aesgcm prefix" % key,
                          raw is not None and raw.startswith(AESGCM_PREFIX), raw and raw[:24])
    if harness.DIRECT or raw is None:
        return
    try:
        suite.check("%s opens with Python AES-GCM, AAD = key" % key,
                    harness.aesgcm_open(env.key, key, raw) == plain.encode())
    except Exception as e:  # noqa: BLE001
        suite.check("%s opens with Python AES-GCM, AAD = key" % key, False, e)
    rc, out, err = harness.cli("decrypt", env.config, key, raw)
    suite.check("%s decrypts with `etcd-encrypt-proxy decrypt`" % key,
                rc == 0 and out == plain.encode(), err.strip()[:200])


def put_get():
    v = values[SECRET] = harness.marker()
    res = env.ctl("put", SECRET, v)
    suite.check("put secret", res.returncode == 0 and res.stdout.strip() == b"OK", res.stderr)
    res = env.ctl("get", SECRET, "--print-value-only")
    suite.check("get secret returns plaintext", res.stdout.rstrip(b"\n") == v.encode(), res.stdout)
    stored_form(SECRET, v)

    p = values[POD] = "pod-" + harness.marker()
    env.ctl("put", POD, p, check=True)
    suite.check("pod key stays plaintext in etcd", env.raw_get(POD) == p.encode())
    res = env.ctl("get", POD, "--print-value-only")
    suite.check("get plaintext key through proxy", res.stdout.rstrip(b"\n") == p.encode())
    res = env.ctl("get", "/registry/secrets/default/absent", "-w", "json")
    suite.check("get of a missing key: no kvs", res.returncode == 0 and "kvs" not in json.loads(res.stdout))


def prefix_queries():
    prefix = "/registry/configmaps/ns1/"
    keys = [prefix + "cm-%d" % i for i in range(5)]
    for k in keys:
        values[k] = harness.marker()
        env.ctl("put", k, values[k], check=True)
    res = env.ctl("get", prefix, "--prefix", "-w", "json", check=True)
    kvs = json.loads(res.stdout).get("kvs", [])
    got = [(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv["value"]).decode()) for kv in kvs]
    suite.check("get --prefix returns 5 decrypted values in key order",
                got == [(k, values[k]) for k in keys], got)
    res = env.ctl("get", prefix, "--prefix", "--keys-only", check=True)
    lines = [ln for ln in res.stdout.decode().splitlines() if ln]
    suite.check("get --keys-only lists keys and no values", lines == keys, lines)
    # etcdctl 3.4 has no --count-only (3.5+); test_python_clients sends count_only itself
    res = env.ctl("get", prefix, "--prefix", "--keys-only", "-w", "json", check=True)
    doc = json.loads(res.stdout)
    suite.check("get --keys-only -w json: count 5, no values",
                doc.get("count") == 5 and all("value" not in kv for kv in doc.get("kvs", [])), doc)
    res = env.ctl("get", prefix, "--prefix", "--limit", "2", "-w", "json", check=True)
    doc = json.loads(res.stdout)
    vals = [base64.b64decode(kv["value"]).decode() for kv in doc.get("kvs", [])]
    suite.check("get --limit 2: two values, more=true, count=5",
                vals == [values[keys[0]], values[keys[1]]] and doc.get("more") and doc.get("count") == 5,
                doc)
    stored_form(keys[3], values[keys[3]])


def delete_prev_kv():
    key = "/registry/secrets/default/to-delete"
    v = harness.marker()
    env.ctl("put", key, v, check=True)
    res = env.ctl("del", key, "--prev-kv", check=True)
    suite.check("del --prev-kv returns 1 and the decrypted previous value",
                res.stdout.decode().split("\n")[:3] == ["1", key, v], res.stdout)
    suite.check("deleted key is gone from etcd", env.raw_get(key) is None)


def txn():
    a, b = "/registry/secrets/default/txn-a", "/registry/secrets/default/txn-b"
    va, vb = harness.marker(), harness.marker()
    script = ('mod("%s") = "0"\n\nput %s %s\nget %s\n\nput %s %s\nget %s\n\n'
              % (a, a, va, SECRET, b, vb, SECRET)).encode()
    res = env.ctl("txn", input=script)
    out = res.stdout.decode()
    suite.check("txn success branch: put + decrypted get",
                out.startswith("SUCCESS") and values[SECRET] in out, out[:300])
    res = env.ctl("txn", input=script)
    out = res.stdout.decode()
    suite.check("txn failure branch: put + decrypted get",
                out.startswith("FAILURE") and values[SECRET] in out, out[:300])
    stored_form(a, va)
    stored_form(b, vb)


def current_revision():
    res = env.etcd.ctl("get", "/", "-w", "json", check=True)
    return json.loads(res.stdout)["header"]["revision"]


def watch_prev_kv():
    key = "/registry/secrets/watched/w1"
    rev = current_revision()
    # starting at rev+1 makes the watch see our events however late etcdctl connects
    cmd = harness.etcdctl_cmd(env.client_url, env.tls) + [
        "watch", "--prefix", "/registry/secrets/watched/", "--prev-kv", "--rev", str(rev + 1),
        "-w", "json"]
    proc = harness.spawn_pipe(cmd, env=harness.ETCDCTL_ENV)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    v1, v2 = harness.marker(), harness.marker()
    env.ctl("put", key, v1, check=True)
    env.ctl("put", key, v2, check=True)
    env.ctl("del", key, check=True)
    events = []
    try:
        while len(events) < 3:
            doc = json.loads(lines.get(timeout=10))
            events += doc.get("Events") or []
    except queue.Empty:
        pass
    harness.stop(proc)

    def ev(e):
        kv, prev = e.get("kv", {}), e.get("prev_kv")
        return (e.get("type", 0), base64.b64decode(kv.get("value", "")).decode(),
                prev and base64.b64decode(prev.get("value", "")).decode())

    got = [ev(e) for e in events]
    suite.check("watch --prev-kv: put, put, delete events with decrypted kv and prev_kv",
                got == [(0, v1, None), (0, v2, v1), (1, "", v2)], got)


def lease():
    res = env.ctl("lease", "grant", "60", check=True)
    m = re.search(r"lease ([0-9a-f]+) granted", res.stdout.decode())
    if not suite.check("lease grant", m, res.stdout):
        return
    lid = m.group(1)
    key, v = "/registry/secrets/default/leased", harness.marker()
    res = env.ctl("put", "--lease=" + lid, key, v)
    suite.check("put --lease", res.returncode == 0, res.stderr)
    res = env.ctl("lease", "keep-alive", "--once", lid)
    suite.check("lease keep-alive --once", res.returncode == 0 and b"keepalived" in res.stdout,
                res.stdout + res.stderr)
    res = env.ctl("lease", "timetolive", lid, "--keys")
    suite.check("lease timetolive --keys lists the key", key.encode() in res.stdout, res.stdout)
    stored_form(key, v)
    env.ctl("lease", "revoke", lid, check=True)
    suite.check("lease revoke deletes the key", env.raw_get(key) is None)


def cluster_and_maintenance():
    res = env.ctl("member", "list", "-w", "json")
    members = json.loads(res.stdout).get("members", []) if res.returncode == 0 else []
    suite.check("member list", len(members) == 1 and members[0].get("name") == "ep-it", res.stdout)
    res = env.ctl("endpoint", "status", "-w", "json")
    ok = res.returncode == 0 and json.loads(res.stdout)[0]["Status"]["version"].startswith("3.")
    suite.check("endpoint status", ok, res.stdout + res.stderr)
    snap = os.path.join(env.dir, "snap.db")
    res = env.ctl("snapshot", "save", snap, timeout=60)
    size = os.path.getsize(snap) if os.path.exists(snap) else 0
    suite.check("snapshot save", res.returncode == 0 and size > 0, res.stderr)
    if size:
        data = open(snap, "rb").read()
        suite.check("snapshot holds the plaintext pod value", values[POD].encode() in data)
        suite.check_encrypted("snapshot holds no secret plaintext",
                              values[SECRET].encode() not in data)


def no_leaks():
    leaked = [k for k, v in values.items() if env.proxy_log_has(v.encode())]
    suite.check_encrypted("proxy log contains no plaintext value", not leaked, leaked)


for name, fn in [("put/get", put_get), ("prefix queries", prefix_queries),
                 ("del --prev-kv", delete_prev_kv), ("txn", txn), ("watch", watch_prev_kv),
                 ("lease", lease), ("cluster and maintenance", cluster_and_maintenance),
                 ("no leaks", no_leaks)]:
    suite.run(name, fn)
suite.finish()
