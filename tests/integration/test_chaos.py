"""Chaos with a checker: writers keep writing through the proxy to a 3-member etcd cluster while
members are SIGKILLed and restarted or frozen (SIGSTOP), the KMS plugin is stopped, restarted and
slowed past its timeout, and clients abort mid-stream. Afterwards a checker reads etcd directly:

  * no plaintext under an encrypted prefix: every secret is a kms v2 value and every configmap
    an aesgcm value (opened independently in Python);
  * every write a client saw acknowledged is there with its value, or with a later value that
    client tried (a write whose answer was lost may still have been applied);
  * every value decrypts through the proxy to what a writer wrote.

Bounded: CHAOS_SECONDS of chaos (default 40) with 4 writers, loopback only.
"""

import json
import os
import random
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdwire as w  # noqa: E402
import h2peer  # noqa: E402
import harness  # noqa: E402
import kmsfake  # noqa: E402

CHAOS_SECONDS = float(os.environ.get("CHAOS_SECONDS", "40"))
WRITERS, KEYS_PER_WRITER = 4, 40
KMS_PREFIX = b"k8s:enc:kms:v2:chaos:"

etcd3 = harness.import_etcd3()
suite = harness.Suite("chaos")
d = harness.workdir("ep-chaos")
rng = random.Random(int(os.environ.get("CHAOS_SEED", "0")) or None)


def config_with_kms_and_aesgcm(path, sock):
    key = os.urandom(32)
    import base64

    lines = ["apiVersion: apiserver.config.k8s.io/v1", "kind: EncryptionConfiguration",
             "resources:", "  - resources: [secrets]", "    providers:"]
    lines += kmsfake.kms_provider_yaml("chaos", "v2", sock, timeout="2s")
    lines += ["  - resources: [configmaps]", "    providers:", "      - aesgcm:", "          keys:",
              "            - name: key1", "              secret: " + base64.b64encode(key).decode()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return key


try:
    members = harness.start_cluster(d, 3, suite.logs)
    sock = os.path.join(d, "kms.sock")
    plugin = kmsfake.FakePlugin(sock, os.urandom(32), key_id="chaos-key").start()
    config = os.path.join(d, "enc.yaml")
    aes_key = config_with_kms_and_aesgcm(config, sock)
    proxy = harness.Proxy(d, [m.url for m in members], config, workers=2)
    suite.logs.append(proxy.log)
    proxy.start(timeout=30)
except Exception as e:  # noqa: BLE001
    suite.check("cluster, plugin and proxy start", False, e)
    suite.finish()


class Writer(threading.Thread):
    """Owns its keys; records every value it tried and the last one acknowledged per key."""

    def __init__(self, n):
        super().__init__(daemon=True)
        self.n = n
        self.keys = ["/registry/%s/chaos/w%d-k%d" % ("secrets" if i % 2 else "configmaps", n, i)
                     for i in range(KEYS_PER_WRITER)]
        self.tried = {k: [] for k in self.keys}
        self.acked = {}  # key -> index into tried[key]
        self.ok = self.failed = 0
        self.stop = threading.Event()

    def run(self):
        client = etcd3.client("127.0.0.1", proxy.port, timeout=5)
        seq = 0
        while not self.stop.is_set():
            key = rng.choice(self.keys)
            value = "%s-w%d-%d" % (harness.marker(), self.n, seq)
            seq += 1
            self.tried[key].append(value)
            try:
                client.put(key, value)
                self.acked[key] = len(self.tried[key]) - 1
                self.ok += 1
            except Exception:  # noqa: BLE001 - UNAVAILABLE, deadline, reset: all expected here
                self.failed += 1
                time.sleep(0.05)
        client.close()


def aborting_clients(stop):
    """Clients that send half a Put (headers and part of a gRPC message) and vanish."""
    n = 0
    while not stop.is_set():
        try:
            p = h2peer.Peer(proxy.port, timeout=3)
            p.open(1, "/etcdserverpb.KV/Put")
            msg = w.grpc_frame(w.put_request("/registry/secrets/chaos/aborted", b"x" * 500))
            p.data(1, msg[: rng.randint(1, len(msg) - 1)], wait=1)
            time.sleep(rng.random() * 0.1)
            p.close()
            n += 1
        except OSError:
            time.sleep(0.1)
    return n


def chaos(until):
    actions = []
    while time.monotonic() < until:
        kind = rng.choice(["kill", "kill", "freeze", "plugin-restart", "plugin-slow"])
        if kind == "kill":
            m = rng.choice(members)
            m.kill()
            time.sleep(rng.uniform(0.5, 2.0))
            m.launch()
        elif kind == "freeze":
            m = rng.choice(members)
            os.kill(m.proc.pid, signal.SIGSTOP)
            time.sleep(rng.uniform(0.5, 2.0))
            os.kill(m.proc.pid, signal.SIGCONT)
        elif kind == "plugin-restart":
            plugin.stop()
            time.sleep(rng.uniform(0.2, 1.5))
            plugin.start()
        else:
            plugin.delay = 2.5  # past the provider's 2 s timeout
            time.sleep(rng.uniform(0.5, 2.0))
            plugin.delay = 0.0
        actions.append(kind)
        time.sleep(rng.uniform(0.5, 1.5))
    return actions


def healthy_cluster():
    return all(m.proc.poll() is None and m.ctl("endpoint", "health", timeout=10).returncode == 0
               for m in members)


def run_chaos():
    writers = [Writer(i) for i in range(WRITERS)]
    for t in writers:
        t.start()
    stop_aborts = threading.Event()
    aborts = threading.Thread(target=aborting_clients, args=(stop_aborts,), daemon=True)
    aborts.start()
    time.sleep(2)
    actions = chaos(time.monotonic() + CHAOS_SECONDS)
    stop_aborts.set()
    aborts.join(10)
    time.sleep(3)  # a last stretch of writes on a whole cluster
    for t in writers:
        t.stop.set()
    for t in writers:
        t.join(30)
    ok = sum(t.ok for t in writers)
    failed = sum(t.failed for t in writers)
    suite.check("chaos ran (%s) with %d acknowledged and %d failed writes"
                % (", ".join("%s x%d" % (k, actions.count(k)) for k in sorted(set(actions))), ok,
                   failed), ok > 100 and len(actions) >= 5)
    suite.check("proxy still running after the chaos", proxy.alive())
    suite.check("cluster healthy again", harness.wait_for(healthy_cluster, 60, 1))
    check(writers)


def stored_values():
    res = members[0].ctl("get", "/registry/", "--prefix", "-w", "json", timeout=60)
    return {harness.base64.b64decode(kv["key"]).decode(): harness.base64.b64decode(kv.get("value", ""))
            for kv in json.loads(res.stdout).get("kvs") or []}


def check(writers):
    stored = stored_values()
    tried = {}
    for t in writers:
        tried.update(t.tried)
    plaintext, unreadable, lost, bad = [], [], [], []
    client = etcd3.client("127.0.0.1", proxy.port, timeout=10)
    for key, raw in stored.items():
        if key.startswith("/registry/secrets/"):
            if not raw.startswith(KMS_PREFIX):
                plaintext.append(key)
        elif key.startswith("/registry/configmaps/"):
            try:
                harness.aesgcm_open(aes_key, key.encode(), raw)
            except Exception:  # noqa: BLE001
                (unreadable if raw.startswith(harness.AESGCM_PREFIX) else plaintext).append(key)
    for t in writers:
        for key in t.keys:
            read = client.get(key)[0]
            value = read.decode() if read is not None else None
            if key in t.acked:
                later = t.tried[key][t.acked[key]:]
                if value not in later:
                    lost.append((key, value, later[:2]))
            elif value is not None and value not in t.tried[key]:
                bad.append((key, value))
            if key in stored and value is not None and value.encode() == stored[key]:
                unreadable.append(key)  # the proxy passed ciphertext through
    client.close()
    suite.check("no plaintext under an encrypted prefix (%d values read from etcd)" % len(stored),
                not plaintext, plaintext[:5])
    suite.check("every value decrypts", not unreadable, unreadable[:5])
    suite.check("every acknowledged write is there (or a later one)", not lost, lost[:5])
    suite.check("no value that no writer wrote", not bad, bad[:5])
    log = open(proxy.log, "rb").read()
    leaked = [v for t in writers for vs in t.tried.values() for v in vs if v.encode() in log]
    suite.check("no plaintext in the proxy log", not leaked, leaked[:3])


suite.run("chaos with a checker", run_chaos)
plugin.stop()
suite.finish()
