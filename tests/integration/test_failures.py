"""Failure cases: etcd dying under load, clients vanishing mid-stream, malformed HTTP/2 and
gRPC input, methods the proxy must refuse (fail closed), and VALUE compares it cannot honour.

After each case the proxy must still be running and serving other clients.
"""

import os
import subprocess
import sys
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdwire as w  # noqa: E402
import harness  # noqa: E402

etcd3 = harness.import_etcd3()

suite = harness.Suite("failures")
env = harness.start_env(suite)
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 1000)]


def channel():
    return grpc.insecure_channel("127.0.0.1:%d" % env.client_port, options=CHANNEL_OPTIONS)


def still_serving(after):
    alive = env.proxy is None or env.proxy.alive()
    ok = False
    if alive:
        c = etcd3.client("127.0.0.1", env.client_port, timeout=10)
        try:
            c.put("/registry/secrets/health/probe", b"ok")
            ok = c.get("/registry/secrets/health/probe")[0] == b"ok"
        except Exception as e:  # noqa: BLE001
            ok = repr(e)
        finally:
            c.close()
    suite.check("proxy alive and serving after %s" % after, alive and ok is True,
                "alive=%s %s" % (alive, ok))


def rpc_code(fn, *args, **kw):
    try:
        fn(*args, **kw)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


# ---------------------------------------------------------------------------------------------


def etcd_restart_under_load():
    ch = channel()
    put = ch.unary_unary("/etcdserverpb.KV/Put")
    get = ch.unary_unary("/etcdserverpb.KV/Range")
    key = "/registry/secrets/restart/before"
    put(w.put_request(key, b"survives"), timeout=5)
    results, stop_flag = [], threading.Event()

    def load(n):
        i = 0
        while not stop_flag.is_set():
            started = time.monotonic()
            code = rpc_code(put, w.put_request("/registry/secrets/restart/t%d-%d" % (n, i % 50),
                                               os.urandom(512)), timeout=2)
            results.append((started, code))
            i += 1
            if code != grpc.StatusCode.OK:
                time.sleep(0.05)

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    time.sleep(1.0)
    env.etcd.kill()
    killed_at = time.monotonic()
    time.sleep(3.0)
    restart_at = time.monotonic()
    env.etcd.start()
    healthy_at = time.monotonic()
    # keep the load on past the 5 s recovery allowance, so the "after" window has samples
    deadline, settled = time.monotonic() + 20, healthy_at + 7.0
    while time.monotonic() < deadline:
        recovered = results and results[-1][0] > healthy_at and results[-1][1] == grpc.StatusCode.OK
        if recovered and time.monotonic() > settled:
            break
        time.sleep(0.2)
    stop_flag.set()
    for th in threads:
        th.join(10)
    before = [c for t, c in results if t < killed_at - 0.5]
    outage = [c for t, c in results if killed_at + 1.0 < t < restart_at]
    after = [c for t, c in results if t > healthy_at + 5.0]
    suite.check("puts succeed before etcd is killed (%d)" % len(before),
                before and all(c == grpc.StatusCode.OK for c in before), set(before))
    suite.check("while etcd is down requests fail with UNAVAILABLE (%d)" % len(outage),
                outage and all(c == grpc.StatusCode.UNAVAILABLE for c in outage),
                sorted(set(str(c) for c in outage)))
    # (direct mode: grpc's own channel to a restarting etcd can sit in a 20 s connect attempt,
    # a client-library matter; behind the proxy the client's connection never drops)
    suite.check_encrypted("requests succeed again within 5 s of etcd being healthy (%d)" % len(after),
                          after and all(c == grpc.StatusCode.OK for c in after),
                          sorted(set(str(c) for c in after)))
    try:
        kvs = w.range_response_kvs(get(w.range_request(key), timeout=5))
    except grpc.RpcError as e:
        kvs = e.code()
    suite.check_encrypted("data written before the restart reads back decrypted",
                          kvs == [(key.encode(), b"survives")], kvs)
    ch.close()
    still_serving("an etcd restart")


def client_disconnects():
    c = etcd3.client("127.0.0.1", env.client_port, timeout=30)
    kv = etcd3.etcdrpc.KVStub(c.channel)
    prefix = "/registry/configmaps/big/"
    for start in range(0, 600, 100):
        ops = [etcd3.etcdrpc.RequestOp(request_put=etcd3.etcdrpc.PutRequest(
            key=("%s%04d" % (prefix, i)).encode(), value=os.urandom(4096))) for i in range(start, start + 100)]
        kv.Txn(etcd3.etcdrpc.TxnRequest(success=ops), timeout=30)
    body = w.grpc_frame(w.range_request(prefix, w.prefix_end(prefix)))
    for n in range(5):  # ask for ~2.4 MB and vanish after the first frames
        h = w.RawH2("127.0.0.1", env.client_port)
        h.start()
        h.send(w.h2_frame(w.HEADERS, w.END_HEADERS, 1, w.grpc_request_headers("/etcdserverpb.KV/Range")))
        h.send(w.h2_frame(w.DATA, w.END_STREAM, 1, body))
        for _ in range(3 + n):
            h.read_frame()
        h.close()
    still_serving("clients vanished in the middle of large Range responses")
    # a client that vanishes halfway through sending its request
    h = w.RawH2("127.0.0.1", env.client_port)
    h.start()
    h.send(w.h2_frame(w.HEADERS, w.END_HEADERS, 1, w.grpc_request_headers("/etcdserverpb.KV/Put")))
    h.send(w.h2_frame(w.DATA, 0, 1, w.grpc_frame(w.put_request("/registry/secrets/x/half", b"v" * 900))[:300]))
    h.close()
    # a watcher that vanishes, and a gRPC-level cancel of a big Range
    events, cancel = c.watch_prefix("/registry/secrets/", prev_kv=True)
    c.put("/registry/secrets/x/w", b"1")
    cancel()
    fut = c.channel.unary_unary("/etcdserverpb.KV/Range").future(
        w.range_request(prefix, w.prefix_end(prefix)), timeout=30)
    fut.cancel()
    suite.check("a half-sent Put was not applied", c.get("/registry/secrets/x/half")[0] is None)
    values = [v for v, _ in c.get_prefix(prefix)]
    suite.check("other clients still get the full large Range (600 values)",
                len(values) == 600 and all(len(v) == 4096 for v in values), len(values))
    still_serving("a half-sent request, a cancelled watch and a cancelled Range")


def raw_h2_garbage():
    cases = [
        ("a garbage connection preface", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(64), False),
        ("DATA on stream 0", w.h2_frame(w.DATA, 0, 0, b"xx"), True),
        ("HEADERS with an invalid HPACK index", w.h2_frame(w.HEADERS, w.END_HEADERS, 1, b"\x80"), True),
        ("a frame larger than SETTINGS_MAX_FRAME_SIZE", w.h2_frame(w.DATA, 0, 1, b"\x00" * 20000), True),
        ("a WINDOW_UPDATE of length 3", w.h2_frame(w.WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"), True),
    ]
    for what, data, after_preface in cases:
        h = w.RawH2("127.0.0.1", env.client_port)
        if after_preface:
            h.start()
        h.send(data)
        outcome = h.outcome(1)
        h.close()
        # (etcd itself answers HTTP/1.1 on its gRPC port, so the first case is proxy-only)
        check = suite.check if after_preface else suite.check_encrypted
        check("%s: connection refused (GOAWAY or close)" % what, outcome in ("goaway", "closed"),
              outcome)
    still_serving("HTTP/2 protocol errors")


def nghttp_status(path, body_bytes, headers=()):
    """POSTs |body_bytes| with nghttp; returns (grpc-status or None, nghttp exit code)."""
    body = os.path.join(env.dir, "body.bin")
    with open(body, "wb") as f:
        f.write(body_bytes)
    cmd = ["nghttp", "-v", "-n", "-t", "10", "-d", body, "-H", "content-type: application/grpc",
           "-H", "te: trailers"]
    for h in headers:
        cmd += ["-H", h]
    res = subprocess.run(cmd + ["http://127.0.0.1:%d%s" % (env.client_port, path)],
                         capture_output=True, timeout=30)
    status = None
    for line in res.stdout.decode(errors="replace").splitlines():
        if "grpc-status:" in line and "recv" in line:
            status = int(line.split("grpc-status:")[1].strip())
    return status, res.returncode


def malformed_grpc():
    key = "/registry/secrets/malformed/k"
    good = w.put_request(key, b"value")
    cases = [
        ("a length prefix longer than the body", b"\x00\x00\x00\x01\x00" + good),
        ("a truncated 5-byte header", b"\x00\x00\x00"),
        ("garbage protobuf (wire type 7)", w.grpc_frame(b"\x0f\xff\xff\xff")),
        ("a Put whose value length runs past the message", w.grpc_frame(b"\x0a\x02ab\x12\x7fshort")),
        ("compressed flag without grpc-encoding", w.grpc_frame(good, compressed=1)),
        ("flag byte 2", w.grpc_frame(good, compressed=2)),
        ("a 4 GiB length prefix", b"\x00\xff\xff\xff\xff" + good),
    ]
    for what, body in cases:
        status, rc = nghttp_status("/etcdserverpb.KV/Put", body)
        suite.check("Put with %s fails with a gRPC status (got %s)" % (what, status),
                    status not in (None, 0), "nghttp exit %d" % rc)
    c = etcd3.client("127.0.0.1", env.client_port, timeout=10)
    suite.check("no malformed Put reached etcd", c.get(key)[0] is None)
    c.close()
    status, _ = nghttp_status("/etcdserverpb.KV/Put", w.grpc_frame(good))
    suite.check("the same Put well-formed via nghttp succeeds", status == 0, status)
    raw = env.raw_get(key)
    suite.check_encrypted("and is stored encrypted", raw and raw.startswith(harness.AESGCM_PREFIX))
    still_serving("malformed gRPC messages")


def unknown_methods():
    ch = channel()
    req = w.range_request("/registry/secrets/", w.prefix_end("/registry/secrets/"))
    stream = ch.unary_stream("/etcdserverpb.KV/RangeStream")
    suite.check("KV/RangeStream answers UNIMPLEMENTED",
                rpc_code(lambda: list(stream(req, timeout=10))) == grpc.StatusCode.UNIMPLEMENTED)
    for path in ("/etcdserverpb.KV/NoSuchMethod", "/etcdserverpb.Nope/Range", "/x.y/z"):
        code = rpc_code(ch.unary_unary(path), req, timeout=10)
        suite.check("%s answers UNIMPLEMENTED" % path, code == grpc.StatusCode.UNIMPLEMENTED, code)
    lock = ch.unary_unary("/v3lockpb.Lock/Lock")
    code = rpc_code(lock, w.field_bytes(1, "/registry/secrets/lock"), timeout=10)
    suite.check_encrypted("v3lockpb.Lock/Lock is refused (fail closed) with UNIMPLEMENTED",
                          code == grpc.StatusCode.UNIMPLEMENTED, code)
    ch.close()
    still_serving("unknown methods")


def value_compare():
    c = etcd3.client("127.0.0.1", env.client_port, timeout=10)
    t = c.transactions
    key, other = "/registry/secrets/cmp/k", "/registry/secrets/cmp/written-if-ok"
    c.put(key, b"v")
    try:
        c.transaction(compare=[t.value(key) == b"v"], success=[t.put(other, b"x")], failure=[])
        outcome = "OK"
    except etcd3.exceptions.PreconditionFailedError:
        outcome = "FAILED_PRECONDITION"
    except grpc.RpcError as e:
        outcome = str(e.code())
    suite.check_encrypted("Txn with a VALUE compare on an encrypted key: FAILED_PRECONDITION",
                          outcome == "FAILED_PRECONDITION", outcome)
    suite.check_encrypted("and its success branch was not applied", c.get(other)[0] is None)
    # etcd reads the enum as int32 (the low 32 bits): target 2^32 + 3 is VALUE to etcd, and a
    # VALUE compare against stored ciphertext would be an ordering oracle on the value
    compare = (w.field_varint(1, 0) + w.varint(2 << 3) + w.varint((1 << 32) + 3)
               + w.field_bytes(3, key) + w.field_bytes(7, b"v"))
    txn = w.field_bytes(1, compare) + w.field_bytes(2, w.field_bytes(2, w.put_request(other, b"x")))
    code = rpc_code(channel().unary_unary("/etcdserverpb.KV/Txn"), txn, timeout=10)
    suite.check_encrypted("a VALUE compare spelled 2^32 + 3 is refused too: FAILED_PRECONDITION",
                          code == grpc.StatusCode.FAILED_PRECONDITION, code)
    suite.check_encrypted("and its success branch was not applied either", c.get(other)[0] is None)
    pod = "/registry/pods/cmp/p"
    c.put(pod, b"plain")
    ok, _ = c.transaction(compare=[t.value(pod) == b"plain"], success=[t.put(pod, b"next")], failure=[])
    suite.check("VALUE compare on a plaintext key works", ok and c.get(pod)[0] == b"next")
    c.close()


for name, fn in [("etcd restart under load", etcd_restart_under_load),
                 ("client disconnects", client_disconnects),
                 ("raw HTTP/2 garbage", raw_h2_garbage), ("malformed gRPC", malformed_grpc),
                 ("unknown methods", unknown_methods), ("VALUE compare", value_compare)]:
    suite.run(name, fn)
suite.finish()
