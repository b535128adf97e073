"""Records the seed corpora of fuzz/ from real traffic: etcd, the proxy and the reference KMS
plugin, with recording relays on every hop (client -> proxy, proxy -> etcd, proxy -> plugin),
while etcdctl and python3-etcd3 run the integration tests' kinds of calls (put, get, prefix
Range, DeleteRange with prev_kv, Txn with compares, watch with prev_kv, leases), with aesgcm,
kms v2 and kms v1 configurations. The recorded bytes are cut into what each target reads:

  h2_session        role byte + a connection's bytes (client->proxy: server role; etcd->proxy:
                    client role)
  grpc_client       a KMS plugin connection's bytes towards the proxy
  request_rewrite   method byte + each client request message (fuzz_codec.h: 0 Put, 1 Txn,
                    2 Range, 3 DeleteRange, 4 Watch)
  response_rewrite  method byte + each etcd response message
  etcd_kv           each Range and Txn response message from etcd (the storage tools' readers)
  grpc_frame        8 chunking-seed bytes + each stream's whole DATA body
  kmsv2_object      the EncryptedObject bodies of the kms v2 values stored in etcd
  stored_value      key selector byte + every value stored in etcd
  plugin_api        method byte (plugin_api_fuzz.c order) + each request to the plugin
  config            the configurations used here and tests/config/fixtures

  EP_BINARY=build/etcd-encrypt-proxy EP_KMS_PLUGIN=build/etcd-encrypt-kms-plugin \\
      /usr/bin/python3 fuzz/record_corpus.py OUTDIR

scripts/fuzz.sh --record merges OUTDIR into fuzz/corpus/ with libFuzzer's -merge=1 (keeps the
inputs that add coverage: the minimised corpus that is committed).
"""

import asyncio
import base64
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import etcdwire as w  # noqa: E402
import harness  # noqa: E402
import hpack  # noqa: E402

METHODS = {"/etcdserverpb.KV/Put": 0, "/etcdserverpb.KV/Txn": 1, "/etcdserverpb.KV/Range": 2,
           "/etcdserverpb.KV/DeleteRange": 3, "/etcdserverpb.Watch/Watch": 4}
KV_READS = ("/etcdserverpb.KV/Range", "/etcdserverpb.KV/Txn")  # what etcd_kv_fuzz reads
PLUGIN_METHODS = {"/v1beta1.KeyManagementService/Version": 0,
                  "/v1beta1.KeyManagementService/Encrypt": 1,
                  "/v1beta1.KeyManagementService/Decrypt": 2, "/v2.KeyManagementService/Status": 3,
                  "/v2.KeyManagementService/Encrypt": 4, "/v2.KeyManagementService/Decrypt": 5}


# ---------------------------------------------------------------------------------------------
# recording relays


class Relay:
    """Forwards connections from a local listener to |target| (("tcp", host, port) or
    ("unix", path)), keeping each connection's bytes per direction."""

    def __init__(self, target, listen_unix=None):
        self.target, self.listen_unix = target, listen_unix
        self.conns = []  # [upstream-bound bytearray, downstream-bound bytearray]
        self.port = None
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)

        async def start():
            if self.listen_unix:
                await asyncio.start_unix_server(self._serve, path=self.listen_unix)
            else:
                srv = await asyncio.start_server(self._serve, "127.0.0.1", 0)
                self.port = srv.sockets[0].getsockname()[1]
            ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    async def _serve(self, reader, writer):
        if self.target[0] == "unix":
            ur, uw = await asyncio.open_unix_connection(self.target[1])
        else:
            ur, uw = await asyncio.open_connection(self.target[1], self.target[2])
        rec = [bytearray(), bytearray()]
        self.conns.append(rec)

        async def pipe(src, dst, log):
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    log += data
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                try:
                    dst.close()
                except Exception:  # noqa: BLE001
                    pass

        await asyncio.gather(pipe(reader, uw, rec[0]), pipe(ur, writer, rec[1]))


# ---------------------------------------------------------------------------------------------
# HTTP/2 log parsing


def frames(data, client_side):
    i = len(w.PREFACE) if client_side and data.startswith(w.PREFACE) else 0
    while len(data) - i >= 9:
        n = struct.unpack(">I", b"\x00" + data[i : i + 3])[0]
        if len(data) - i - 9 < n:
            break
        ftype, flags, sid = struct.unpack(">BBI", data[i + 3 : i + 9])
        yield ftype, flags, sid & 0x7FFFFFFF, data[i + 9 : i + 9 + n]
        i += 9 + n


def streams(data, client_side):
    """{stream id: (headers dict of the first block, DATA body)} of one direction."""
    dec, out, block = hpack.Decoder(), {}, {}
    for ftype, flags, sid, payload in frames(data, client_side):
        if ftype in (w.HEADERS, 9):
            if ftype == w.HEADERS:
                if flags & 0x8:
                    payload = payload[1 : len(payload) - payload[0]]
                if flags & 0x20:
                    payload = payload[5:]
                block[sid] = payload
            else:
                block[sid] = block.get(sid, b"") + payload
            if flags & w.END_HEADERS:
                try:
                    fields = dict((k.decode() if isinstance(k, bytes) else k,
                                   v.decode() if isinstance(v, bytes) else v)
                                  for k, v in dec.decode(block.pop(sid)))
                except Exception:  # noqa: BLE001
                    fields = {}
                entry = out.setdefault(sid, [None, bytearray()])
                if entry[0] is None:
                    entry[0] = fields
        elif ftype == w.DATA:
            if flags & 0x8:
                payload = payload[1 : len(payload) - payload[0]]
            out.setdefault(sid, [{}, bytearray()])[1].extend(payload)
    return out


def messages(body):
    i = 0
    while len(body) - i >= 5:
        n = struct.unpack(">I", body[i + 1 : i + 5])[0]
        if len(body) - i - 5 < n:
            break
        yield bytes(body[i + 5 : i + 5 + n])
        i += 5 + n


class Out:
    def __init__(self, root):
        self.root = root

    def put(self, target, data):
        d = os.path.join(self.root, target)
        os.makedirs(d, exist_ok=True)
        data = bytes(data)[:65536]
        with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
            f.write(data)


def cut_h2(out, relay, role_byte, target="h2_session", paths=METHODS, req_target=None,
           resp_target=None):
    for up, down in relay.conns:
        if target:
            out.put(target, bytes([0]) + up)
            out.put(target, bytes([1]) + down)
        req = streams(bytes(up), True)
        resp = streams(bytes(down), False)
        for sid, (hdrs, body) in req.items():
            path = (hdrs or {}).get(":path")
            if path not in paths:
                continue
            out.put("grpc_frame", os.urandom(8) + body)
            for m in messages(body):
                if req_target:
                    out.put(req_target, bytes([paths[path]]) + m)
            if sid in resp:
                out.put("grpc_frame", os.urandom(8) + resp[sid][1])
                for m in messages(resp[sid][1]):
                    if resp_target:
                        out.put(resp_target, bytes([paths[path]]) + m)
                    if resp_target and path in KV_READS:
                        out.put("etcd_kv", m)


# ---------------------------------------------------------------------------------------------
# traffic


def etcdctl_traffic(url):
    def ctl(*a, **kw):
        return harness.etcdctl(url, *a, **kw)

    for i in range(3):
        ctl("put", "/registry/secrets/ns/s%d" % i, "value-%d" % i)
        ctl("put", "/registry/configmaps/ns/c%d" % i, "cm-%d" % i)
    ctl("put", "/registry/pods/ns/p", "plain")
    ctl("put", "--prev-kv", "/registry/secrets/ns/s0", "again")
    ctl("get", "/registry/secrets/", "--prefix")
    ctl("get", "/registry/", "--prefix", "--keys-only")
    ctl("get", "/registry/secrets/ns/s1", "-w", "json")
    ctl("get", "/registry/", "--prefix", "--limit", "2", "--rev", "3")
    ctl("del", "--prev-kv", "/registry/secrets/ns/s2")
    ctl("txn", input=b"mod(\"/registry/secrets/ns/s1\") > \"0\"\n\nput /registry/secrets/ns/s1 t1\n"
        b"get /registry/secrets/ns/s1\n\nput /registry/secrets/ns/s9 t2\n\n")
    lease = ctl("lease", "grant", "60").stdout.decode()
    lease_id = lease.split()[1] if lease.startswith("lease") else None
    if lease_id:
        ctl("put", "--lease", lease_id, "/registry/secrets/ns/leased", "l")
    watch = subprocess.Popen(harness.etcdctl_cmd(url) + ["watch", "--prev-kv", "--prefix",
                                                         "/registry/secrets/"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    ctl("put", "/registry/secrets/ns/w", "watched")
    ctl("del", "/registry/secrets/ns/w")
    time.sleep(0.5)
    watch.terminate()
    watch.wait(5)


def python_traffic(port):
    etcd3 = harness.import_etcd3()
    c = etcd3.client("127.0.0.1", port, timeout=10)
    c.put("/registry/secrets/py/a", b"\x00\x01binary")
    c.put("/registry/secrets/py/empty", b"")
    c.get_prefix("/registry/secrets/")
    c.transaction(compare=[c.transactions.version("/registry/secrets/py/a") > 0],
                  success=[c.transactions.put("/registry/secrets/py/a", "tx"),
                           c.transactions.get("/registry/secrets/py/a")],
                  failure=[c.transactions.delete("/registry/secrets/py/a")])
    events, cancel = c.watch_prefix("/registry/secrets/py/", prev_kv=True)
    c.put("/registry/secrets/py/w", "v")
    next(events)
    cancel()
    c.delete_prefix("/registry/secrets/py/")
    c.close()


def edge_requests(out):
    """Hand-made requests at the edges the oracle cares about: compares with every target, also
    as the 64-bit aliases of int32 enums, on encrypted and plaintext keys; puts with
    ignore_value, empty values and repeated fields; nested txns."""
    def cmp(target, key, value=b"v"):
        return (w.field_varint(1, 0) + w.varint(2 << 3) + w.varint(target) + w.field_bytes(3, key)
                + (w.field_bytes(7, value) if target % (1 << 32) == 3 else w.field_varint(6, 7)))

    put = lambda key, value=b"p", extra=b"": w.field_bytes(1, key) + w.field_bytes(2, value) + extra
    for key in (b"/s/a", b"/registry/secrets/ns/s", b"/registry/configmaps/ns/c", b"/s/fail"):
        for target in (0, 1, 2, 3, (1 << 32) + 2, (1 << 32) + 3, (1 << 64) - 1):
            txn = w.field_bytes(1, cmp(target, key)) + w.field_bytes(2, w.field_bytes(2, put(key)))
            out.put("request_rewrite", bytes([1]) + txn)
        out.put("request_rewrite", bytes([0]) + put(key))
        out.put("request_rewrite", bytes([0]) + put(key, b"", w.field_varint(5, 1)))
        out.put("request_rewrite", bytes([0]) + w.field_bytes(1, key) + w.field_varint(4, 1))
        nested = w.field_bytes(2, w.field_bytes(4, w.field_bytes(3, w.field_bytes(2, put(key)))))
        out.put("request_rewrite", bytes([1]) + nested)
        both = w.field_bytes(2, w.field_bytes(1, w.field_bytes(1, key)) + w.field_bytes(2, put(key)))
        out.put("request_rewrite", bytes([1]) + both)


def stored_values(out, etcd):
    res = etcd.ctl("get", "/registry/", "--prefix", "-w", "json")
    import json

    for kv in json.loads(res.stdout or "{}").get("kvs") or []:
        value = base64.b64decode(kv.get("value", ""))
        out.put("stored_value", bytes([0]) + value)
        if value.startswith(b"k8s:enc:kms:v2:"):
            out.put("kmsv2_object", value.split(b":", 5)[5])


def kms_config(path, sock):
    with open(path, "w") as f:
        f.write("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
                "resources:\n  - resources: [secrets]\n    providers:\n"
                "      - kms: {apiVersion: v2, name: rec-v2, endpoint: unix://%s, timeout: 3s}\n"
                "  - resources: [configmaps]\n    providers:\n"
                "      - kms: {name: rec-v1, endpoint: unix://%s, timeout: 3s, cachesize: 10}\n"
                "      - identity: {}\n" % (sock, sock))


def session(out, d, etcd, config, plugin_relay=None):
    relay_etcd = Relay(("tcp", "127.0.0.1", etcd.port))
    proxy = harness.Proxy(d, ["http://127.0.0.1:%d" % relay_etcd.port], config, workers=1)
    proxy.start()
    relay_client = Relay(("tcp", "127.0.0.1", proxy.port))
    url = "http://127.0.0.1:%d" % relay_client.port
    etcdctl_traffic(url)
    python_traffic(relay_client.port)
    stored_values(out, etcd)
    proxy.stop()
    cut_h2(out, relay_client, 0, req_target="request_rewrite")
    cut_h2(out, relay_etcd, 1, resp_target="response_rewrite")
    if plugin_relay:
        for up, down in plugin_relay.conns:
            out.put("grpc_client", down)
        cut_h2(out, plugin_relay, 0, target=None, paths=PLUGIN_METHODS, req_target="plugin_api")
    shutil.copy(config, os.path.join(out.root, "config", os.path.basename(config)))


def main():
    out = Out(sys.argv[1])
    os.makedirs(os.path.join(out.root, "config"), exist_ok=True)
    for f in os.listdir(os.path.join(HERE, "..", "tests", "config", "fixtures")):
        shutil.copy(os.path.join(HERE, "..", "tests", "config", "fixtures", f),
                    os.path.join(out.root, "config", f))
    d = harness.workdir("ep-record")
    etcd = harness.Etcd(d)
    etcd.start()
    config = os.path.join(d, "aesgcm.yaml")
    harness.write_encryption_config(config)
    session(out, d, etcd, config)

    key_file = os.path.join(d, "kek.bin")
    with open(key_file, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(key_file, 0o600)
    sock = os.path.join(d, "plugin.sock")
    plugin = harness.spawn([harness.kms_plugin_binary(), "--listen", "unix://" + sock,
                            "--key-file", key_file], os.path.join(d, "plugin.log"))
    harness.wait_for(lambda: os.path.exists(sock), 10)
    relay_sock = os.path.join(d, "relay.sock")
    plugin_relay = Relay(("unix", sock), listen_unix=relay_sock)
    kms = os.path.join(d, "kms.yaml")
    kms_config(kms, relay_sock)
    session(out, d, etcd, kms, plugin_relay)
    edge_requests(out)
    harness.stop(plugin)
    etcd.stop()
    for t in sorted(os.listdir(out.root)):
        print("%-18s %d files" % (t, len(os.listdir(os.path.join(out.root, t)))))
    harness.cleanup()


if __name__ == "__main__":
    main()
