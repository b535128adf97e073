"""The reference KMS plugin (etcd-encrypt-kms-plugin) on its own, driven by grpcio.

Every method of both APIs (v1beta1 Version/Encrypt/Decrypt, v2 Status/Encrypt/Decrypt) with
hand-built protobuf bytes; round trips across APIs; KEK rotation by SIGHUP (new key_id, old
ciphertexts still open); --old-key-file after a restart; refused key files; wrong key_id,
tampered and foreign ciphertexts; malformed requests; unknown methods; SIGTERM removes the
socket. With softhsm2 + pkcs11-tool installed, the PKCS#11 mode gets the same checks on a
throwaway token, including rotation by a new key under the same label.
"""

import base64
import os
import shutil
import signal
import stat
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdwire as w  # noqa: E402
import harness as h  # noqa: E402
from kmsfake import fields  # noqa: E402

import grpc  # noqa: E402

V1 = "/v1beta1.KeyManagementService/"
V2 = "/v2.KeyManagementService/"
ANNOTATION = b"version.kms.etcd-encrypt-proxy.io"
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def plugin_binary():
    return h.kms_plugin_binary()


def first(msg, num, default=b""):
    return fields(msg).get(num, [default])[0]


class Plugin:
    """The plugin on a socket file in |d|, or on the abstract socket |abstract|."""

    def __init__(self, d, args, name="plugin", abstract=None):
        self.sock = None if abstract else os.path.join(d, name + ".sock")
        self.target = "unix-abstract:" + abstract if abstract else "unix:" + self.sock
        endpoint = "unix:///@" + abstract if abstract else "unix://" + self.sock
        self.log = os.path.join(d, name + ".log")
        self.args = [plugin_binary(), "--listen", endpoint] + list(args)
        self.proc = h.spawn(self.args, self.log, env=os.environ.copy())
        self.channel = None

    def wait_up(self, timeout=10):
        if self.sock is None:
            # no file to wait for: the start line says the socket listens (a grpc channel that
            # tried too early would back off for seconds)
            return (h.wait_for(lambda: "serving" in self.log_text(), timeout)
                    and self.error(V2 + "Status", b"")[0] is None)
        return h.wait_for(lambda: os.path.exists(self.sock) or self.proc.poll() is not None,
                          timeout) and self.proc.poll() is None

    def call(self, method, request, timeout=5):
        if self.channel is None:
            self.channel = grpc.insecure_channel(self.target)
        fn = self.channel.unary_unary(method, request_serializer=lambda b: b,
                                      response_deserializer=lambda b: b)
        return fn(request, timeout=timeout)

    def error(self, method, request):
        """(code, details) of a call expected to fail, or (None, response)."""
        try:
            return None, self.call(method, request)
        except grpc.RpcError as e:
            return e.code(), e.details() or ""

    def sighup(self):
        self.proc.send_signal(signal.SIGHUP)

    def log_text(self):
        with open(self.log, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        h.stop(self.proc)


# -- protobuf bytes for each request -------------------------------------------------------

def v1_version():
    return w.field_bytes(1, b"v1beta1")


def v1_encrypt(plain, version=b"v1beta1"):
    return w.field_bytes(1, version) + w.field_bytes(2, plain)


def v1_decrypt(cipher, version=b"v1beta1"):
    return w.field_bytes(1, version) + w.field_bytes(2, cipher)


def v2_encrypt(plain, uid=b"0b6f3b8e-3c53-4c39-9b0e-5d0c2c1b7a11"):
    return w.field_bytes(1, plain) + w.field_bytes(2, uid)


def annotation(key, value):
    return w.field_bytes(4, w.field_bytes(1, key) + w.field_bytes(2, value))


def v2_decrypt(ciphertext, key_id, annotations=((ANNOTATION, b"1"),)):
    msg = w.field_bytes(1, ciphertext) + w.field_bytes(2, b"uid-1") + w.field_bytes(3, key_id)
    for k, v in annotations:
        msg += annotation(k, v)
    return msg


def v2_wrap(p, plain):
    r = p.call(V2 + "Encrypt", v2_encrypt(plain))
    return first(r, 1), first(r, 2), r


def v2_unwrap(p, ct, key_id):
    return first(p.call(V2 + "Decrypt", v2_decrypt(ct, key_id)), 1)


def status(p):
    r = p.call(V2 + "Status", b"")
    return first(r, 1), first(r, 2), first(r, 3)


def write_key(path, key, b64=False):
    with open(path, "wb") as f:
        f.write(base64.b64encode(key) + b"\n" if b64 else key)
    os.chmod(path, 0o600)


# -- the checks shared by both KEK sources ----------------------------------------------------

def check_methods(s, p, tag):
    version, healthz, key_id = status(p)
    s.check(tag + ": Status version v2", version == b"v2", version)
    s.check(tag + ": Status healthz ok", healthz == b"ok", healthz)
    s.check(tag + ": Status key_id 1..1024 printable bytes",
            0 < len(key_id) <= 1024 and key_id.isascii(), key_id)

    r = p.call(V1 + "Version", v1_version())
    s.check(tag + ": v1 Version answers v1beta1 and a runtime",
            first(r, 1) == b"v1beta1" and first(r, 2) == b"etcd-encrypt-kms-plugin"
            and first(r, 3), fields(r))

    dek = os.urandom(32)
    cipher = first(p.call(V1 + "Encrypt", v1_encrypt(dek)), 1)
    s.check(tag + ": v1 Encrypt returns a wrapped DEK",
            cipher and dek not in cipher and len(cipher) <= 1024, len(cipher))
    plain = first(p.call(V1 + "Decrypt", v1_decrypt(cipher)), 1)
    s.check(tag + ": v1 Decrypt round trip", plain == dek)
    again = first(p.call(V1 + "Encrypt", v1_encrypt(dek)), 1)
    s.check(tag + ": two wraps of one DEK differ (fresh nonce)", again != cipher)

    seed = os.urandom(32)
    ct, kid, resp = v2_wrap(p, seed)
    ann = [fields(a) for a in fields(resp).get(3, [])]
    s.check(tag + ": v2 Encrypt key_id equals Status key_id", kid == key_id, (kid, key_id))
    s.check(tag + ": v2 Encrypt annotation version.kms.etcd-encrypt-proxy.io = 1",
            [(a.get(1, [b""])[0], a.get(2, [b""])[0]) for a in ann] == [(ANNOTATION, b"1")], ann)
    s.check(tag + ": v2 Encrypt ciphertext 1..1024 bytes, no plaintext",
            0 < len(ct) <= 1024 and seed not in ct, len(ct))
    s.check(tag + ": v2 Decrypt round trip", v2_unwrap(p, ct, kid) == seed)
    s.check(tag + ": v2 Decrypt without annotations works too",
            first(p.call(V2 + "Decrypt", v2_decrypt(ct, kid, ())), 1) == seed)
    s.check(tag + ": v1-wrapped DEK opens through v2",
            v2_unwrap(p, cipher, key_id) == dek)
    return key_id


def check_errors(s, p, tag):
    _, key_id = status(p)[1:]
    seed = os.urandom(32)
    ct, kid, _ = v2_wrap(p, seed)

    code, msg = p.error(V2 + "Decrypt", v2_decrypt(ct, b"some-other-key"))
    s.check(tag + ": wrong key_id -> INVALID_ARGUMENT naming it",
            code == grpc.StatusCode.INVALID_ARGUMENT and "some-other-key" in msg, (code, msg))
    tampered = bytearray(ct)
    tampered[-1] ^= 1
    code, msg = p.error(V2 + "Decrypt", v2_decrypt(bytes(tampered), kid))
    s.check(tag + ": tampered ciphertext -> INVALID_ARGUMENT (authentication)",
            code == grpc.StatusCode.INVALID_ARGUMENT and "authentication" in msg, (code, msg))
    forged = bytes([0xE1, 7]) + b"nokey00" + os.urandom(40)
    code, msg = p.error(V2 + "Decrypt", v2_decrypt(forged, b"nokey00"))
    s.check(tag + ": unknown KEK -> NOT_FOUND naming the KEK",
            code == grpc.StatusCode.NOT_FOUND and "nokey00" in msg, (code, msg))
    code, msg = p.error(V1 + "Decrypt", v1_decrypt(b"not a wrapped key at all"))
    s.check(tag + ": foreign ciphertext -> INVALID_ARGUMENT",
            code == grpc.StatusCode.INVALID_ARGUMENT and "header" in msg, (code, msg))
    code, msg = p.error(V2 + "Decrypt", v2_decrypt(ct, kid, ((ANNOTATION, b"9"),)))
    s.check(tag + ": unknown wrap version annotation -> INVALID_ARGUMENT",
            code == grpc.StatusCode.INVALID_ARGUMENT, (code, msg))
    code, msg = p.error(V2 + "Decrypt", v2_decrypt(ct, b""))
    s.check(tag + ": empty key_id -> INVALID_ARGUMENT",
            code == grpc.StatusCode.INVALID_ARGUMENT and "key_id" in msg, (code, msg))

    code, msg = p.error(V2 + "Encrypt", b"\x0a\x05ab")  # length runs past the end
    s.check(tag + ": truncated request -> INVALID_ARGUMENT",
            code == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in msg, (code, msg))
    code, msg = p.error(V2 + "Encrypt", b"")
    s.check(tag + ": empty plaintext -> INVALID_ARGUMENT",
            code == grpc.StatusCode.INVALID_ARGUMENT, (code, msg))
    code, msg = p.error(V1 + "Encrypt", v1_encrypt(b"x" * 32, version=b"v9"))
    s.check(tag + ": v1 wrong version -> INVALID_ARGUMENT",
            code == grpc.StatusCode.INVALID_ARGUMENT and "v9" in msg, (code, msg))
    for path in (V2 + "Frobnicate", "/v2alpha1.KeyManagementService/Status", "/x.Y/Z"):
        code, msg = p.error(path, b"")
        s.check(tag + ": unknown method %s -> UNIMPLEMENTED" % path,
                code == grpc.StatusCode.UNIMPLEMENTED, (code, msg))
    s.check(tag + ": still healthy after the errors", status(p)[1] == b"ok")


def check_no_secrets_logged(s, p, tag, secrets):
    text = p.log_text()
    s.check(tag + ": log has start line and no key material",
            "serving v1beta1 and v2" in text and
            not any(x.hex() in text or base64.b64encode(x).decode() in text for x in secrets))


# -- key file mode ------------------------------------------------------------------------------

def key_file_mode(s, d):
    key1, key2 = os.urandom(32), os.urandom(32)
    k1, k2 = os.path.join(d, "kek1"), os.path.join(d, "kek2")
    write_key(k1, key1)
    p = Plugin(d, ["--key-file", k1])
    s.logs.append(p.log)
    if not s.check("file: plugin starts", p.wait_up(), h.log_tail(p.log)):
        return
    mode = stat.S_IMODE(os.stat(p.sock).st_mode)
    s.check("file: socket is mode 0600", mode == 0o600, oct(mode))
    id1 = check_methods(s, p, "file")
    check_errors(s, p, "file")

    # rotation: the key file gets new contents (base64 this time), SIGHUP
    old_seed, old_dek = os.urandom(32), os.urandom(32)
    old_ct, _, _ = v2_wrap(p, old_seed)
    old_v1 = first(p.call(V1 + "Encrypt", v1_encrypt(old_dek)), 1)
    write_key(k1, key2, b64=True)
    p.sighup()
    rotated = h.wait_for(lambda: status(p)[2] != id1, 5)
    id2 = status(p)[2]
    s.check("file: SIGHUP with a new key changes key_id", rotated and id2 != id1, (id1, id2))
    ct2, kid2, _ = v2_wrap(p, old_seed)
    s.check("file: new Encrypts use the new key_id", kid2 == id2 and ct2 != old_ct)
    s.check("file: pre-rotation v2 ciphertext still decrypts", v2_unwrap(p, old_ct, id1) == old_seed)
    s.check("file: pre-rotation v1 ciphertext still decrypts",
            first(p.call(V1 + "Decrypt", v1_decrypt(old_v1)), 1) == old_dek)
    s.check("file: log names the rotation", "KEK rotated" in p.log_text())
    p.sighup()
    s.check("file: SIGHUP without a change keeps key_id",
            h.wait_for(lambda: "KEK unchanged" in p.log_text(), 5) and status(p)[2] == id2)
    os.chmod(k1, 0o644)
    p.sighup()
    s.check("file: SIGHUP with a bad key file keeps serving the current key",
            h.wait_for(lambda: "reload failed" in p.log_text(), 5) and status(p)[2] == id2)
    os.chmod(k1, 0o600)
    check_no_secrets_logged(s, p, "file", [key1, key2])

    # SIGTERM removes the socket
    p.stop()
    s.check("file: SIGTERM exits 0 and removes the socket",
            p.proc.returncode == 0 and not os.path.exists(p.sock), p.proc.returncode)

    # restart on the new key alone: the old KEK is unknown; with --old-key-file it opens
    write_key(k2, key1)
    p = Plugin(d, ["--key-file", k1])
    p.wait_up()
    code, msg = p.error(V2 + "Decrypt", v2_decrypt(old_ct, id1))
    s.check("file: restarted without the old key -> NOT_FOUND mentioning --old-key-file",
            code == grpc.StatusCode.NOT_FOUND and "--old-key-file" in msg, (code, msg))
    p.stop()
    p = Plugin(d, ["--key-file", k1, "--old-key-file", k2])
    p.wait_up()
    s.check("file: --old-key-file: old ciphertext decrypts after restart",
            v2_unwrap(p, old_ct, id1) == old_seed)
    s.check("file: --old-key-file: current key_id is the --key-file one", status(p)[2] == id2)
    p.stop()

    # abstract socket
    ap = Plugin(d, ["--key-file", k1], name="abstract", abstract="ep-kms-it-%d" % os.getpid())
    s.check("file: abstract socket unix:///@name serves", ap.wait_up(5), h.log_tail(ap.log))
    ap.stop()


def refused_starts(s, d):
    cases = []
    short = os.path.join(d, "short")
    write_key(short, os.urandom(16))
    cases.append(("16-byte key", ["--key-file", short], "32-byte"))
    b64short = os.path.join(d, "b64short")
    write_key(b64short, os.urandom(24), b64=True)
    cases.append(("base64 of 24 bytes", ["--key-file", b64short], "24 bytes"))
    loose = os.path.join(d, "loose")
    write_key(loose, os.urandom(32))
    os.chmod(loose, 0o640)
    cases.append(("group-readable key file", ["--key-file", loose], "chmod 600"))
    cases.append(("missing key file", ["--key-file", os.path.join(d, "nope")], "No such file"))
    cases.append(("no KEK source", [], "--key-file"))
    good = os.path.join(d, "good")
    write_key(good, os.urandom(32))
    cases.append(("relative socket path", ["--key-file", good, "--listen", "unix://tmp/x.sock"],
                  "absolute"))
    for what, args, needle in cases:
        sock = os.path.join(d, "refused.sock")
        r = subprocess.run([plugin_binary(), "--listen", "unix://" + sock] + args,
                           capture_output=True, timeout=10)
        err = r.stderr.decode(errors="replace")
        s.check("refused: %s (%s)" % (what, needle),
                r.returncode != 0 and needle in err and not os.path.exists(sock), err.strip())
    r = subprocess.run([plugin_binary(), "--help"], capture_output=True, timeout=10)
    s.check("--help documents the key file format",
            r.returncode == 0 and b"base64" in r.stdout and b"--pkcs11-key-label" in r.stdout)


# -- PKCS#11 mode -------------------------------------------------------------------------------

def pkcs11_tool(env, *args):
    return subprocess.run(["pkcs11-tool", "--module", SOFTHSM_MODULE, "--token-label", "t",
                           "--login", "--pin", "1234"] + list(args),
                          env=env, capture_output=True, timeout=30)


def pkcs11_mode(s, d):
    if not (os.path.exists(SOFTHSM_MODULE) and shutil.which("softhsm2-util")
            and shutil.which("pkcs11-tool")):
        print("SKIP  PKCS#11 mode: softhsm2 or opensc (pkcs11-tool) not installed")
        return
    tokdir = os.path.join(d, "tokens")
    os.mkdir(tokdir)
    conf = os.path.join(d, "softhsm2.conf")
    with open(conf, "w") as f:
        f.write("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n"
                % tokdir)
    env = dict(os.environ, SOFTHSM2_CONF=conf)
    os.environ["SOFTHSM2_CONF"] = conf  # the plugin inherits it
    r = subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "t", "--pin", "1234",
                        "--so-pin", "5678"], env=env, capture_output=True, timeout=30)
    if not s.check("p11: token initialised", r.returncode == 0, r.stderr):
        return
    r = pkcs11_tool(env, "--keygen", "--key-type", "AES:32", "--label", "kek", "--id", "01")
    if not s.check("p11: AES-256 key generated", r.returncode == 0, r.stderr):
        return
    pin = os.path.join(d, "pin")
    with open(pin, "w") as f:
        f.write("1234\n")
    os.chmod(pin, 0o600)
    p11 = ["--pkcs11-module", SOFTHSM_MODULE, "--pkcs11-token-label", "t",
           "--pkcs11-pin-file", pin, "--pkcs11-key-label", "kek"]
    p = Plugin(d, p11, name="p11")
    s.logs.append(p.log)
    if not s.check("p11: plugin starts", p.wait_up(), h.log_tail(p.log)):
        return
    id1 = check_methods(s, p, "p11")
    s.check("p11: key_id names a token key", id1.startswith(b"p11-"), id1)
    check_errors(s, p, "p11")

    seed = os.urandom(32)
    old_ct, _, _ = v2_wrap(p, seed)
    r = pkcs11_tool(env, "--keygen", "--key-type", "AES:32", "--label", "kek", "--id", "02")
    s.check("p11: second key under the same label", r.returncode == 0, r.stderr)
    p.sighup()
    rotated = h.wait_for(lambda: status(p)[2] != id1, 5)
    id2 = status(p)[2]
    s.check("p11: SIGHUP after a new key changes key_id", rotated and id2.startswith(b"p11-"),
            (id1, id2))
    ct2, kid2, _ = v2_wrap(p, seed)
    s.check("p11: new Encrypts use the new key", kid2 == id2 and v2_unwrap(p, ct2, kid2) == seed)
    s.check("p11: pre-rotation ciphertext still decrypts", v2_unwrap(p, old_ct, id1) == seed)
    p.stop()

    # a restarted plugin finds both keys on the token
    p = Plugin(d, p11, name="p11b")
    p.wait_up()
    s.check("p11: after restart current key_id is the newest key", status(p)[2] == id2)
    s.check("p11: after restart the older key still decrypts", v2_unwrap(p, old_ct, id1) == seed)
    p.stop()
    s.check("p11: SIGTERM removes the socket", not os.path.exists(p.sock))

    bad_pin = os.path.join(d, "badpin")
    with open(bad_pin, "w") as f:
        f.write("9999\n")
    os.chmod(bad_pin, 0o600)
    args = list(p11)
    args[args.index(pin)] = bad_pin
    r = subprocess.run([plugin_binary(), "--listen", "unix://" + os.path.join(d, "bp.sock")] + args,
                       capture_output=True, timeout=10)
    s.check("p11: wrong PIN refused with a message",
            r.returncode != 0 and b"C_Login" in r.stderr, r.stderr)
    args = list(p11)
    args[args.index("kek")] = "nosuchkey"
    r = subprocess.run([plugin_binary(), "--listen", "unix://" + os.path.join(d, "nk.sock")] + args,
                       capture_output=True, timeout=10)
    s.check("p11: missing key label refused with a message",
            r.returncode != 0 and b"nosuchkey" in r.stderr, r.stderr)


def main():
    s = h.Suite("kms_plugin")
    binary = plugin_binary()
    if not os.access(binary, os.X_OK):
        s.check("plugin binary exists", False, binary)
        s.finish()
    d = h.workdir("ep-kms-plugin")
    s.run("key file mode", key_file_mode, s, d)
    s.run("refused starts", refused_starts, s, d)
    s.run("PKCS#11 mode", pkcs11_mode, s, d)
    s.finish()


if __name__ == "__main__":
    main()
