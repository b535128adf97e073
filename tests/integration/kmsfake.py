"""A KMS plugin in Python for the KMS integration tests: the vectors' recorded fake algorithm.

It serves the v1beta1 and v2 KeyManagementService APIs (spec 5.2, 5.3) on a unix socket with
grpcio generic handlers, so requests and responses are hand-built protobuf bytes (etcdwire's
encoder), not generated classes. The algorithm is the one the reference vectors were made with
(vectors JSON `configs[].providers[].kms.fake_plugin`):

  v1 Encrypt: cipher = nonce(12) || AES-256-GCM(KEK, nonce, plain, aad = none),
              nonce = SHA-256("fake-kms-v1" || plain)[:12]
  v2 Encrypt: ciphertext = nonce(12) || AES-256-GCM(KEK, nonce, plain, aad = key_id),
              nonce = SHA-256("fake-kms-v2" || plain)[:12]; returns the fixed key_id and
              annotations; Decrypt picks the KEK by the request's key_id.

Knobs for failure tests: |delay| (seconds every call sleeps: a slow plugin), |jitter| (up to
that many more seconds, random per call, so concurrent calls finish out of order), |failing|
(every call answers UNAVAILABLE), counters of calls per method and the highest number of calls in
flight at once (to prove the proxy issues its plugin calls concurrently).
"""

import hashlib
import os
import random
import sys
import threading
import time
from concurrent import futures

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdwire  # noqa: E402


def fields(msg):
    """{field number: [values]} of a protobuf message."""
    out = {}
    for num, _, val in etcdwire.parse_fields(msg):
        out.setdefault(num, []).append(val)
    return out


def one(f, num, default=b""):
    return bytes(f.get(num, [default])[-1])


class FakePlugin:
    """One plugin process-equivalent: v1 with |kek| or v2 with |key_id| -> KEK in |keks|."""

    def __init__(self, socket_path, kek, key_id=None, annotations=None, extra_keks=None,
                 workers=64):
        self.socket_path = socket_path
        self.kek = kek
        self.key_id = key_id.encode() if isinstance(key_id, str) else key_id
        self.annotations = dict(annotations or {})
        self.keks = {self.key_id: kek} if key_id is not None else {}
        self.keks.update({k.encode() if isinstance(k, str) else k: v
                          for k, v in (extra_keks or {}).items()})
        self.delay = 0.0
        self.jitter = 0.0
        self.failing = False
        self.lock = threading.Lock()
        self.calls = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.workers = workers
        self.server = None

    # ---- bookkeeping

    def _enter(self, method):
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self):
        with self.lock:
            self.in_flight -= 1

    def count(self, method):
        with self.lock:
            return self.calls.get(method, 0)

    def reset_counters(self):
        with self.lock:
            self.calls = {}
            self.max_in_flight = 0

    # ---- the algorithm

    @staticmethod
    def _seal(kek, label, plain, aad):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = hashlib.sha256(label + plain).digest()[:12]
        return nonce + AESGCM(kek).encrypt(nonce, plain, aad or None)

    @staticmethod
    def _open(kek, cipher, aad):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM(kek).decrypt(cipher[:12], cipher[12:], aad or None)

    # ---- handlers (raw bytes in, raw bytes out)

    def _wrap(self, method, fn):
        def handler(request, context):
            import grpc

            self._enter(method)
            try:
                if self.delay:
                    time.sleep(self.delay)
                if self.jitter:
                    time.sleep(random.uniform(0.0, self.jitter))
                if self.failing:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "fake plugin is failing")
                return fn(fields(request), context)
            finally:
                self._leave()

        return handler

    def v1_version(self, f, context):
        return (etcdwire.field_bytes(1, "v1beta1") + etcdwire.field_bytes(2, "fake-kms")
                + etcdwire.field_bytes(3, "0.1.0"))

    def v1_encrypt(self, f, context):
        return etcdwire.field_bytes(1, self._seal(self.kek, b"fake-kms-v1", one(f, 2), None))

    def v1_decrypt(self, f, context):
        import grpc

        try:
            plain = self._open(self.kek, one(f, 2), None)
        except Exception:  # noqa: BLE001 - any failure is the plugin refusing
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "fake plugin cannot decrypt")
        return etcdwire.field_bytes(1, plain)

    def v2_status(self, f, context):
        return (etcdwire.field_bytes(1, "v2") + etcdwire.field_bytes(2, "ok")
                + etcdwire.field_bytes(3, self.key_id))

    def _annotations(self):
        return b"".join(etcdwire.field_bytes(3, etcdwire.field_bytes(1, k) + etcdwire.field_bytes(2, v))
                        for k, v in sorted(self.annotations.items()))

    def v2_encrypt(self, f, context):
        cipher = self._seal(self.kek, b"fake-kms-v2", one(f, 1), self.key_id)
        return (etcdwire.field_bytes(1, cipher) + etcdwire.field_bytes(2, self.key_id)
                + self._annotations())

    def v2_decrypt(self, f, context):
        import grpc

        key_id = one(f, 3)
        kek = self.keks.get(key_id)
        try:
            if kek is None:
                raise KeyError(key_id)
            plain = self._open(kek, one(f, 1), key_id)
        except Exception:  # noqa: BLE001
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "fake plugin cannot decrypt")
        return etcdwire.field_bytes(1, plain)

    # ---- serving

    def start(self):
        import grpc

        def unary(fn):
            return grpc.unary_unary_rpc_method_handler(fn)  # no (de)serializers: raw bytes

        v1 = {"Version": self.v1_version, "Encrypt": self.v1_encrypt, "Decrypt": self.v1_decrypt}
        v2 = {"Status": self.v2_status, "Encrypt": self.v2_encrypt, "Decrypt": self.v2_decrypt}
        handlers = [
            grpc.method_handlers_generic_handler(
                "v1beta1.KeyManagementService",
                {m: unary(self._wrap("v1." + m, fn)) for m, fn in v1.items()}),
            grpc.method_handlers_generic_handler(
                "v2.KeyManagementService",
                {m: unary(self._wrap("v2." + m, fn)) for m, fn in v2.items()}),
        ]
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.workers),
                                  handlers=handlers, maximum_concurrent_rpcs=None)
        self.server.add_insecure_port("unix:" + self.socket_path)
        self.server.start()
        return self

    def stop(self):
        if self.server:
            self.server.stop(0).wait(5)
            self.server = None


def kms_provider_yaml(name, api_version, socket_path, timeout="3s", cachesize=None):
    """The provider entry lines (indented for a `providers:` list)."""
    lines = ["      - kms:", "          apiVersion: " + api_version, "          name: " + name,
             "          endpoint: unix://" + socket_path, "          timeout: " + timeout]
    if cachesize is not None:
        lines.append("          cachesize: %d" % cachesize)
    return lines


def write_kms_config(path, providers, resources=("secrets", "configmaps"), identity=True):
    """An EncryptionConfiguration whose chain is |providers| (lists of lines), then identity."""
    lines = ["apiVersion: apiserver.config.k8s.io/v1", "kind: EncryptionConfiguration",
             "resources:", "  - resources:"]
    lines += ["      - " + r for r in resources]
    lines += ["    providers:"]
    for p in providers:
        lines += p
    if identity:
        lines += ["      - identity: {}"]
    with open(path, "w") as f:
        f.write("\n".join(lines + [""]))
    os.chmod(path, 0o600)
