"""The apiserver-compatibility loop: the proxy and kube-apiserver must be interchangeable.

`etcd-encrypt-proxy encrypt` writes exactly what kube-apiserver writes (checked against the
upstream vectors by test_cli.py), so here its output goes straight into etcd and must read back
decrypted through the proxy; and what the proxy writes must decrypt with the CLI. Around that:
plaintext written before encryption was turned on (identity read), a ciphertext moved to another
key (AAD mismatch) and a tampered ciphertext, which the proxy must hand back unchanged rather
than fail the request (spec section 10.3).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

etcd3 = harness.import_etcd3()

suite = harness.Suite("apiserver compatibility")
harness.require_binary(suite, "encrypt", "etcd-encrypt-proxy encrypt is available")
env = harness.start_env(suite)
direct = etcd3.client("127.0.0.1", env.etcd.port, timeout=20)  # etcd itself
through = etcd3.client("127.0.0.1", env.client_port, timeout=20)  # the proxy

CASES = [
    ("/registry/secrets/kube-system/bootstrap-token-abc", b'{"kind":"Secret","data":{"t":"eA=="}}'),
    ("/registry/configmaps/default/cfg", b"k8s\x00\n\x0f\n\x02v1\x12\tConfigMap" + os.urandom(40)),
    ("/registry/secrets/default/empty", b""),
    ("/registry/secrets/default/large", os.urandom(200 * 1024)),
]


def cli_to_proxy():
    for key, plain in CASES:
        rc, stored, err = harness.cli("encrypt", env.config, key, plain)
        if not suite.check("CLI encrypts %s" % key, rc == 0 and stored.startswith(harness.AESGCM_PREFIX),
                           err.strip()[:200]):
            continue
        direct.put(key, stored)
        got, _ = through.get(key)
        suite.check_encrypted("CLI-written %s reads back decrypted through the proxy" % key,
                              (got or b"") == plain, got and got[:40])


def proxy_to_cli():
    for key, plain in CASES:
        through.put(key + "-via-proxy", plain)
        stored, _ = direct.get(key + "-via-proxy")
        rc, out, err = harness.cli("decrypt", env.config, key + "-via-proxy", stored or b"")
        suite.check_encrypted("proxy-written %s decrypts with the CLI" % key,
                              rc == 0 and out == plain, err.strip()[:200])
    rc, out, _ = harness.cli("decrypt", env.config, CASES[0][0], b"k8s:enc:aesgcm:v1:key1:" + os.urandom(40))
    suite.check("CLI refuses a forged ciphertext", rc != 0 and out == b"")


def legacy_plaintext():
    # written before encryption was configured: the identity provider in the chain reads it
    key, plain = "/registry/secrets/default/pre-encryption", b'{"kind":"Secret","old":true}'
    direct.put(key, plain)
    got, _ = through.get(key)
    suite.check("plaintext stored before encryption reads through the proxy", got == plain)
    through.put(key, plain)  # a rewrite through the proxy encrypts it
    stored, _ = direct.get(key)
    suite.check_encrypted("rewriting it through the proxy encrypts it",
                          stored.startswith(harness.AESGCM_PREFIX), stored[:30])


def undecryptable_values():
    src, dst = "/registry/secrets/default/moved-from", "/registry/secrets/default/moved-to"
    through.put(src, b"bound to its key")
    stored, _ = direct.get(src)
    direct.put(dst, stored)
    got, _ = through.get(dst)
    suite.check_encrypted("ciphertext moved to another key is not decrypted (AAD = key); "
                          "the stored bytes come back unchanged", got == stored, got and got[:30])
    tampered = bytearray(stored)
    tampered[-1] ^= 1
    direct.put(src, bytes(tampered))
    got, _ = through.get(src)
    suite.check_encrypted("tampered ciphertext comes back unchanged", got == bytes(tampered))
    # a list over both still answers, with the readable neighbours decrypted
    through.put("/registry/secrets/default/moved-zz", b"readable")
    values = {m.key: v for v, m in through.get_prefix("/registry/secrets/default/moved-")}
    suite.check("a Range over undecryptable values still succeeds",
                values.get(b"/registry/secrets/default/moved-zz") == b"readable", list(values))
    suite.check("the proxy is still running", env.proxy is None or env.proxy.alive())


for name, fn in [("CLI -> etcd -> proxy", cli_to_proxy), ("proxy -> etcd -> CLI", proxy_to_cli),
                 ("plaintext from before encryption", legacy_plaintext),
                 ("undecryptable values", undecryptable_values)]:
    suite.run(name, fn)
suite.finish()
