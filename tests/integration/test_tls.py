"""TLS and mTLS on both sides of the proxy.

etcd serves https with --client-cert-auth; the proxy reaches it with --cacert/--cert/--key and
itself serves TLS with --trusted-ca-file --client-cert-auth. A client that has no certificate,
or one from another CA, must be refused; the TLS listener must negotiate ALPN h2 (grpc-go 1.67+
refuses TLS without it, spec 7.1).
"""

import os
import socket
import ssl
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

etcd3 = harness.import_etcd3()

suite = harness.Suite("tls")
env = harness.start_env(suite, tls=True)
t = env.tls


def mtls_round_trip():
    key, v = "/registry/secrets/tls/s1", harness.marker()
    res = env.ctl("put", key, v)
    suite.check("etcdctl put over mTLS", res.returncode == 0, res.stderr)
    res = env.ctl("get", key, "--print-value-only")
    suite.check("etcdctl get over mTLS returns plaintext", res.stdout.rstrip(b"\n") == v.encode(),
                res.stderr)
    raw = env.raw_get(key)
    suite.check_encrypted("stored encrypted in the TLS etcd", raw and raw.startswith(harness.AESGCM_PREFIX))
    c = etcd3.client("127.0.0.1", env.client_port, ca_cert=t.ca, cert_key=t.client_key,
                     cert_cert=t.client_cert, timeout=15)
    value = os.urandom(4096)
    c.put("/registry/configmaps/tls/c1", value)
    got, _ = c.get("/registry/configmaps/tls/c1")
    suite.check("python-etcd3 over mTLS round-trips a binary value", got == value)
    ok, responses = c.transaction(compare=[], success=[c.transactions.get(key)], failure=[])
    suite.check("python-etcd3 txn over mTLS", ok and responses[0][0][0] == v.encode())
    c.close()


def refused_clients():
    key = "/registry/secrets/tls/s1"
    quick = "--command-timeout=3s"  # a refused handshake is retried until this runs out
    res = env.ctl("get", key, quick, client_cert=False, timeout=30)
    suite.check("client without a certificate is refused", res.returncode != 0, res.stdout)
    res = env.ctl("get", key, quick, client_cert="rogue", timeout=30)
    suite.check("client with a certificate from another CA is refused", res.returncode != 0,
                res.stdout)
    res = harness.etcdctl(env.client_url, "get", key, tls=harness.Tls(t.dir), timeout=30)
    suite.check("the valid client still works after refused ones", res.returncode == 0, res.stderr)
    with socket.create_connection(("127.0.0.1", env.client_port), timeout=5) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 9)
        try:
            data = s.recv(100)
        except OSError:
            data = b""
    suite.check("cleartext HTTP/2 to the TLS port gets no HTTP/2 answer",
                not data.startswith(b"\x00\x00"), data[:20])


def alpn_h2():
    ctx = ssl.create_default_context(cafile=t.ca)
    ctx.load_cert_chain(t.client_cert, t.client_key)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", env.client_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            proto = s.selected_alpn_protocol()
    suite.check("TLS listener selects ALPN h2", proto == "h2", proto)


def optional_client_auth():
    if harness.DIRECT:
        return
    p = harness.Proxy(env.dir, [env.etcd.url], env.config, down_tls=t, client_cert_auth=False,
                      up_tls=t)
    suite.logs.append(p.log)
    p.start()
    res = harness.etcdctl(p.url, "get", "/registry/secrets/tls/s1", "--print-value-only", tls=t,
                          client_cert=False)
    suite.check("server-only TLS proxy serves a client without a certificate",
                res.returncode == 0 and res.stdout.strip(), res.stderr)
    p.stop()


def upstream_without_client_cert():
    if harness.DIRECT:
        return
    # etcd demands a client certificate; a proxy that has none must fail requests, not hang
    # and not succeed. Refusing to start is also acceptable.
    p = harness.Proxy(env.dir, [env.etcd.url], env.config, extra=["--cacert", t.ca])
    suite.logs.append(p.log)
    try:
        p.start()
    except RuntimeError:
        suite.check("proxy without an upstream client cert does not serve", True)
        return
    res = harness.etcdctl(p.url, "get", "/registry/secrets/tls/s1", "--command-timeout=5s",
                          timeout=40)
    suite.check("proxy without an upstream client cert fails requests",
                res.returncode != 0 and b"/registry" not in res.stdout, res.stdout)
    p.stop()


for name, fn in [("mTLS round trip", mtls_round_trip), ("refused clients", refused_clients),
                 ("ALPN", alpn_h2), ("server-only TLS", optional_client_auth),
                 ("upstream without client cert", upstream_without_client_cert)]:
    suite.run(name, fn)
suite.finish()
