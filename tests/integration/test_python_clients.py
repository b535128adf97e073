"""python3-etcd3 and grpcio through the proxy: big responses, binary values, watch with
prev_kv, transactions with reads inside (nested too), and several clients at once."""

import os
import queue
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdwire  # noqa: E402
import harness  # noqa: E402

etcd3 = harness.import_etcd3()
from etcd3 import etcdrpc  # noqa: E402

suite = harness.Suite("python clients")
env = harness.start_env(suite)
GRPC_OPTIONS = harness.grpc_options(16 << 20)


def client():
    return etcd3.client("127.0.0.1", env.client_port, timeout=30, grpc_options=GRPC_OPTIONS)


def check_stored(key, plain, what):
    raw = env.raw_get(key)
    if harness.DIRECT:
        return suite.check_encrypted(what, True)
    try:
        ok = harness.aesgcm_open(env.key, key, raw) == plain
    except Exception as e:  # noqa: BLE001
        return suite.check(what, False, "%r: %s" % (raw[:30] if raw else raw, e))
    return suite.check(what, ok)


def large_range():
    c = client()
    prefix, n, size = "/registry/secrets/bulk/", 3000, 1500
    expected = {}
    kv = etcdrpc.KVStub(c.channel)
    for start in range(0, n, 100):  # 100 puts per Txn keeps each request well under 1.5 MiB
        ops = []
        for i in range(start, start + 100):
            key = ("%sk%05d" % (prefix, i)).encode()
            expected[key] = os.urandom(size)
            ops.append(etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key, value=expected[key])))
        kv.Txn(etcdrpc.TxnRequest(success=ops), timeout=30)
    got = {m.key: v for v, m in c.get_prefix(prefix)}
    suite.check("range of %d keys x %d B (%.1f MB) returns every value decrypted" % (
        n, size, n * size / 1e6), got == expected,
        "%d keys back, %d differ" % (len(got), sum(got.get(k) != v for k, v in expected.items())))
    for i in (0, 1234, n - 1):
        key = ("%sk%05d" % (prefix, i)).encode()
        check_stored(key, expected[key], "bulk key %d stored as aesgcm with AAD = key" % i)
    # count_only / keys_only straight from the wire (etcdctl 3.4 lacks --count-only)
    rng = c.channel.unary_unary("/etcdserverpb.KV/Range")
    resp = rng(etcdwire.range_request(prefix, etcdwire.prefix_end(prefix), count_only=True), timeout=30)
    f = {num: v for num, _, v in etcdwire.parse_fields(resp)}
    suite.check("count_only Range: count %d, no kvs" % n, f.get(4) == n and 2 not in f, f.get(4))
    resp = rng(etcdwire.range_request(prefix, etcdwire.prefix_end(prefix), keys_only=True, limit=10),
               timeout=30)
    kvs = etcdwire.range_response_kvs(resp)
    suite.check("keys_only Range with limit 10: 10 keys, empty values",
                len(kvs) == 10 and all(v == b"" for _, v in kvs), kvs[:2])
    c.close()


def binary_and_empty_values():
    c = client()
    all_bytes = bytes(range(256)) * 4
    for key, value in [("/registry/secrets/bin/all-bytes", all_bytes),
                       ("/registry/secrets/bin/empty", b""),
                       ("/registry/configmaps/bin/k8s-marker", b"k8s:enc:not-really")]:
        c.put(key, value)
        got, _ = c.get(key)
        suite.check("%s round-trips (%d bytes)" % (key, len(value)), (got or b"") == value)
        check_stored(key.encode(), value, "%s stored encrypted" % key)
    # a value that looks encrypted but sits outside the encrypted resources stays as it is
    c.put("/registry/pods/bin/raw", b"plain pod")
    suite.check("pod value stays plaintext", env.raw_get("/registry/pods/bin/raw") == b"plain pod")
    c.close()


def put_and_delete_prev_kv():
    c = client()
    key, v1, v2 = "/registry/secrets/prev/p1", os.urandom(64), os.urandom(64)
    c.put(key, v1)
    resp = c.put(key, v2, prev_kv=True)
    suite.check("Put prev_kv comes back decrypted", resp.prev_kv.value == v1)
    resp = c.delete(key, prev_kv=True, return_response=True)
    suite.check("DeleteRange prev_kvs come back decrypted",
                resp.deleted == 1 and [kv.value for kv in resp.prev_kvs] == [v2])
    c.close()


def watch_prev_kv():
    c = client()
    prefix, key = "/registry/configmaps/watch/", "/registry/configmaps/watch/cm"
    rev = c.get_response("/").header.revision
    events, cancel = c.watch_prefix(prefix, prev_kv=True, start_revision=rev + 1)
    got = queue.Queue()

    def drain():
        try:
            for ev in events:
                got.put(ev)
        except Exception as e:  # noqa: BLE001 - surfaces below as a missing event
            got.put(e)

    threading.Thread(target=drain, daemon=True).start()
    v1, v2 = os.urandom(300), os.urandom(5000)
    c.put(key, v1)
    c.put(key, v2)
    c.delete(key)
    seen = []
    try:
        while len(seen) < 3:
            seen.append(got.get(timeout=10))
    except queue.Empty:
        pass
    cancel()  # the client stays open: closing it makes etcd3's watch thread print a traceback
    summary = [(type(e).__name__, getattr(e, "value", None), getattr(e, "prev_value", None))
               for e in seen]
    want = [("PutEvent", v1, b""), ("PutEvent", v2, v1), ("DeleteEvent", b"", v2)]
    suite.check("watch prev_kv: put, put, delete with decrypted kv and prev_kv", summary == want,
                [(n, v and len(v), p and len(p)) for n, v, p in summary])


def txn_with_range():
    c = client()
    a, b = "/registry/secrets/txn/a", "/registry/secrets/txn/b"
    va, vb = os.urandom(100), os.urandom(100)
    c.put(a, va)
    t = c.transactions
    ok, responses = c.transaction(compare=[t.version(a) > 0],
                                  success=[t.get(a), t.put(b, vb), t.get(b)], failure=[])
    got = [r[0][0] if r and isinstance(r, list) else None for r in responses]
    suite.check("Txn: range, put, range inside; ranges decrypted",
                ok and got[0] == va and got[2] == vb, got)
    check_stored(b.encode(), vb, "value put inside a Txn is stored encrypted")
    # nested: a Txn inside a Txn's failure branch, with a put and a range inside it
    inner_key, inner_val = b"/registry/secrets/txn/nested", os.urandom(50)
    inner = etcdrpc.TxnRequest(success=[
        etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=inner_key, value=inner_val)),
        etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=a.encode()))])
    outer = etcdrpc.TxnRequest(
        compare=[etcdrpc.Compare(key=a.encode(), target=etcdrpc.Compare.VERSION,
                                 result=etcdrpc.Compare.EQUAL, version=0)],
        failure=[etcdrpc.RequestOp(request_txn=inner)])
    resp = etcdrpc.KVStub(c.channel).Txn(outer, timeout=10)
    inner_resp = resp.responses[0].response_txn
    vals = [kv.value for kv in inner_resp.responses[1].response_range.kvs]
    suite.check("nested Txn: inner range decrypted", not resp.succeeded and vals == [va], vals)
    check_stored(inner_key, inner_val, "value put in a nested Txn is stored encrypted")
    c.close()


def concurrent_clients():
    errors, threads, per_thread = [], [], 150

    def worker(n):
        c = client()
        try:
            for i in range(per_thread):
                key = "/registry/secrets/conc/t%d/k%d" % (n, i)
                value = os.urandom(200 + 37 * i)
                c.put(key, value)
                got, _ = c.get(key)
                if got != value:
                    errors.append((key, "mismatch"))
        except Exception as e:  # noqa: BLE001
            errors.append((n, repr(e)[:200]))
        finally:
            c.close()

    for n in range(8):
        threads.append(threading.Thread(target=worker, args=(n,)))
        threads[-1].start()
    for th in threads:
        th.join(120)
    suite.check("8 concurrent clients x %d put+get, all values intact" % per_thread,
                not errors and not any(th.is_alive() for th in threads), errors[:3])
    count = client().get_prefix_response("/registry/secrets/conc/", keys_only=True).count
    suite.check("all %d concurrent writes landed" % (8 * per_thread), count == 8 * per_thread, count)


for name, fn in [("large range", large_range), ("binary and empty values", binary_and_empty_values),
                 ("prev_kv", put_and_delete_prev_kv), ("watch", watch_prev_kv),
                 ("txn", txn_with_range), ("concurrent clients", concurrent_clients)]:
    suite.run(name, fn)
suite.finish()
