"""Integration-test harness: real etcd, the real proxy, real clients, all on loopback.

Every test file builds an Env (a throwaway etcd on random free ports with its data dir on
tmpfs, optionally TLS material made by the openssl CLI, an EncryptionConfiguration with a fresh
random aesgcm key, and the proxy in front of etcd), talks to it with etcdctl / python-etcd3 /
grpcio / nghttp, and records each check in a Suite, which prints `N passed, N failed` last and
exits non-zero on any failure.

Cleanup invariant: every process we start is in _procs and is SIGTERMed, then SIGKILLed,
by PID, on every way out (normal exit via atexit, an exception via the Suite's try/finally, a
signal via the handlers below); the children also get PR_SET_PDEATHSIG so that even a SIGKILL of
the test runner (a ctest timeout) does not leave etcd behind. Temp dirs go after the processes.

EP_IT_TARGET=direct runs the same client checks against etcd itself, with no proxy: the
harness's self-test, and the baseline when a client check fails through the proxy. Checks that
only make sense with encryption are then skipped (and said so), never counted as passed.

Python etcd3 from Debian imports fine with the C protobuf backend here; if it ever fails with a
protobuf "Descriptors cannot be created directly" error, set
PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python (import_etcd3 does that and retries).
"""

import atexit
import base64
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

DIRECT = os.environ.get("EP_IT_TARGET") == "direct"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"

_procs = []
_dirs = []


# ---------------------------------------------------------------------------------------------
# processes and cleanup


def _die_with_parent():
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(args, log_path, env=None):
    """Starts |args| with stdout+stderr to |log_path| and tracks it for cleanup."""
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        preexec_fn=_die_with_parent,
    )
    log.close()
    _procs.append(proc)
    return proc


def spawn_pipe(args, env=None):
    """Starts |args| with stdout as a pipe for the caller to read; tracked for cleanup."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent)
    _procs.append(proc)
    return proc


def stop(proc, grace=5.0):
    """SIGTERM, then SIGKILL after |grace| seconds. Safe to call twice."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        except ProcessLookupError:
            pass
    if proc in _procs:
        _procs.remove(proc)


def cleanup():
    for proc in list(_procs):
        stop(proc, 3.0)
    for d in list(_dirs):
        shutil.rmtree(d, ignore_errors=True)
        _dirs.remove(d)


def _on_signal(signum, frame):
    cleanup()
    sys.stderr.write("interrupted by signal %d\n" % signum)
    os._exit(128 + signum)


atexit.register(cleanup)
for _sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(_sig, _on_signal)


def workdir(tag="ep-it"):
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    d = tempfile.mkdtemp(prefix=tag + "-", dir=base)
    _dirs.append(d)
    return d


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def tcp_accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def http_get(url, timeout=5):
    """(status, body text); an HTTP error status is returned, not raised, and a connection error
    gives (None, why)."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return None, str(e)


def log_tail(path, lines=25):
    try:
        with open(path, "rb") as f:
            return b"".join(f.readlines()[-lines:]).decode(errors="replace")
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------------------------
# results


class Suite:
    """Named checks; finish() prints the summary line and exits with the right status."""

    def __init__(self, name):
        self.name = name
        self.passed = self.failed = self.skipped = 0
        self.logs = []  # log files to show on failure

    def check(self, what, ok, detail=""):
        if ok:
            self.passed += 1
            print("PASS  %s" % what, flush=True)
        else:
            self.failed += 1
            print("FAIL  %s%s" % (what, (": " + str(detail)) if detail else ""), flush=True)
        return bool(ok)

    def check_encrypted(self, what, ok, detail=""):
        """A check that only holds behind the proxy."""
        if DIRECT:
            self.skipped += 1
            print("SKIP  %s (EP_IT_TARGET=direct)" % what, flush=True)
            return True
        return self.check(what, ok, detail)

    def run(self, what, fn, *args):
        """Runs a group of checks; an exception counts as one failure and the suite goes on."""
        print("== %s" % what, flush=True)
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - any error is a test failure
            traceback.print_exc()
            self.check(what + " (raised)", False, "%s: %s" % (type(e).__name__, e))

    def finish(self):
        if self.failed:
            for path in self.logs:
                print("---- last lines of %s" % path)
                print(log_tail(path))
        cleanup()
        if self.skipped:
            print("(%d skipped in direct mode)" % self.skipped)
        print("%d passed, %d failed" % (self.passed, self.failed), flush=True)
        sys.exit(1 if self.failed or not self.passed else 0)


# ---------------------------------------------------------------------------------------------
# TLS material, made with the openssl CLI at test time


class Tls:
    def __init__(self, d):
        self.dir = d
        self.ca = os.path.join(d, "ca.crt")
        self.server_cert, self.server_key = os.path.join(d, "server.crt"), os.path.join(d, "server.key")
        self.client_cert, self.client_key = os.path.join(d, "client.crt"), os.path.join(d, "client.key")
        # signed by another CA: a client certificate the server must not accept
        self.rogue_cert, self.rogue_key = os.path.join(d, "rogue.crt"), os.path.join(d, "rogue.key")


def _openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True)


def _make_ca(d, name):
    key, crt = os.path.join(d, name + ".key"), os.path.join(d, name + ".crt")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=" + name,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return crt, key


def _make_leaf(d, name, ca_crt, ca_key, ext):
    key, csr, crt = (os.path.join(d, name + s) for s in (".key", ".csr", ".crt"))
    extfile = os.path.join(d, name + ".ext")
    with open(extfile, "w") as f:
        f.write(ext)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", "/CN=" + name)
    _openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
             "-out", crt, "-days", "2", "-extfile", extfile)


def make_tls(d):
    """CA, server cert (SAN 127.0.0.1 and localhost), client cert, and a rogue client cert."""
    os.makedirs(d, exist_ok=True)
    ca_crt, ca_key = _make_ca(d, "ca")
    _make_leaf(d, "server", ca_crt, ca_key,
               "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
               "extendedKeyUsage=serverAuth,clientAuth\n")
    _make_leaf(d, "client", ca_crt, ca_key, "extendedKeyUsage=clientAuth\n")
    rogue_ca, rogue_ca_key = _make_ca(d, "rogue-ca")
    _make_leaf(d, "rogue", rogue_ca, rogue_ca_key, "extendedKeyUsage=clientAuth\n")
    return Tls(d)


# ---------------------------------------------------------------------------------------------
# etcdctl


ETCDCTL_ENV = dict(os.environ, ETCDCTL_API="3")


def etcdctl_cmd(url, tls=None, client_cert=True):
    """The etcdctl argv prefix for |url|; |client_cert| is True, False or "rogue"."""
    cmd = [ETCDCTL, "--endpoints", url, "--dial-timeout", "3s", "--command-timeout", "10s"]
    if tls is not None:
        cmd += ["--cacert", tls.ca]
        if client_cert is True:
            cmd += ["--cert", tls.client_cert, "--key", tls.client_key]
        elif client_cert == "rogue":
            cmd += ["--cert", tls.rogue_cert, "--key", tls.rogue_key]
    return cmd


def etcdctl(url, *args, tls=None, client_cert=True, input=None, timeout=30, check=False):
    """Runs etcdctl (API v3) against |url|. Returns CompletedProcess with bytes output."""
    cmd = etcdctl_cmd(url, tls, client_cert) + list(args)
    res = subprocess.run(cmd, input=input, capture_output=True, env=ETCDCTL_ENV, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError("etcdctl %s failed: %s" % (" ".join(args), res.stderr.decode(errors="replace")))
    return res


# ---------------------------------------------------------------------------------------------
# etcd


def grpc_options(max_send):
    """grpcio channel options for big etcd messages: up to 64 MiB in, |max_send| bytes out."""
    return [("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", max_send)]


class _Served:
    """What Etcd and Proxy share: a process (|proc|) serving the etcd API on 127.0.0.1:|port|,
    over TLS when |client_tls| (the subclass's) is set."""

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.client_tls else "http", self.port)

    def ctl(self, *args, **kw):
        kw.setdefault("tls", self.client_tls)
        return etcdctl(self.url, *args, **kw)

    def stop(self):
        if self.proc:
            stop(self.proc)


class Etcd(_Served):
    def __init__(self, d, tls=None, client_cert_auth=False, extra_args=()):
        self.extra_args = list(extra_args)
        self.dir, self.tls, self.client_cert_auth = d, tls, client_cert_auth
        self.port, self.peer_port = free_port(), free_port()
        self.data_dir = os.path.join(d, "etcd-data")
        self.log = os.path.join(d, "etcd.log")
        self.proc = None

    @property
    def client_tls(self):
        return self.tls

    def args(self):
        peer = "http://127.0.0.1:%d" % self.peer_port
        a = [ETCD, "--name", "ep-it", "--data-dir", self.data_dir, "--logger", "zap",
             "--log-outputs", "stderr", "--listen-client-urls", self.url,
             "--advertise-client-urls", self.url, "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer, "--initial-cluster", "ep-it=" + peer,
             "--initial-cluster-state", "new", "--initial-cluster-token", "ep-it",
             "--snapshot-count", "100000"] + self.extra_args
        if self.tls:
            a += ["--cert-file", self.tls.server_cert, "--key-file", self.tls.server_key]
            if self.client_cert_auth:
                a += ["--trusted-ca-file", self.tls.ca, "--client-cert-auth"]
        return a

    def start(self, timeout=30):
        self.proc = spawn(self.args(), self.log)
        if not wait_for(self.healthy, timeout, 0.2):
            raise RuntimeError("etcd did not become healthy:\n" + log_tail(self.log))
        return self

    def healthy(self):
        if self.proc.poll() is not None:
            raise RuntimeError("etcd exited with %s:\n%s" % (self.proc.returncode, log_tail(self.log)))
        if not tcp_accepts(self.port):
            return False
        return self.ctl("endpoint", "health", timeout=10).returncode == 0

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
            _procs.remove(self.proc)


class Member(Etcd):
    """One member of a cluster; |cluster| returns the --initial-cluster value once every
    member exists. Restartable on its data dir (launch() again after kill())."""

    def __init__(self, d, name, cluster):
        super().__init__(d)
        self.name, self.cluster = name, cluster
        self.data_dir = os.path.join(d, name + "-data")
        self.log = os.path.join(d, name + ".log")

    def args(self):
        peer = "http://127.0.0.1:%d" % self.peer_port
        return [ETCD, "--name", self.name, "--data-dir", self.data_dir, "--logger", "zap",
                "--log-outputs", "stderr", "--listen-client-urls", self.url,
                "--advertise-client-urls", self.url, "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer, "--initial-cluster", self.cluster(),
                "--initial-cluster-state", "new", "--initial-cluster-token", "ep-it-cluster",
                "--snapshot-count", "100000"]

    def launch(self):
        self.proc = spawn(self.args(), self.log)


def start_cluster(d, n=3, logs=None):
    """|n| members started at once (none is healthy before a quorum is up); returns them."""
    members = []

    def initial_cluster():
        return ",".join("%s=http://127.0.0.1:%d" % (m.name, m.peer_port) for m in members)

    for i in range(n):
        members.append(Member(d, "m%d" % i, initial_cluster))
        if logs is not None:
            logs.append(members[-1].log)
    for m in members:
        m.launch()
    for m in members:
        if not wait_for(m.healthy, 30, 0.2):
            raise RuntimeError("cluster member %s not healthy:\n%s" % (m.name, log_tail(m.log)))
    return members


# ---------------------------------------------------------------------------------------------
# EncryptionConfiguration and the CLI


KEY_NAME = "key1"
AESGCM_PREFIX = b"k8s:enc:aesgcm:v1:" + KEY_NAME.encode() + b":"


def write_encryption_config(path, provider="aesgcm", resources=("secrets", "configmaps")):
    """Writes an EncryptionConfiguration; returns the raw key (None for identity)."""
    key = os.urandom(32) if provider != "identity" else None
    lines = ["apiVersion: apiserver.config.k8s.io/v1", "kind: EncryptionConfiguration",
             "resources:", "  - resources:"]
    lines += ["      - " + r for r in resources]
    lines += ["    providers:"]
    if key is not None:
        lines += ["      - %s:" % provider, "          keys:", "            - name: " + KEY_NAME,
                  "              secret: " + base64.b64encode(key).decode()]
    lines += ["      - identity: {}", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
    os.chmod(path, 0o600)
    return key


def binary():
    return os.environ.get("EP_BINARY") or os.path.join(
        os.environ.get("EP_BUILD_DIR", "build"), "etcd-encrypt-proxy")


def binary_problem(subcommand="serve"):
    """None when the proxy binary exists and knows |subcommand|, else why not."""
    path = binary()
    if not os.access(path, os.X_OK):
        return "proxy binary %s is missing (build the etcd-encrypt-proxy target)" % path
    res = subprocess.run([path, subcommand, "--help"], capture_output=True, timeout=10)
    if res.returncode != 0:
        return "%s does not implement '%s' yet (exit %d: %s)" % (
            path, subcommand, res.returncode, res.stderr.decode(errors="replace").strip()[:200])
    return None


def require_binary(suite, subcommand, check_name):
    """Ends |suite| with the failure |check_name| (not a skip) when the proxy binary is missing or
    does not know |subcommand|."""
    problem = binary_problem(subcommand)
    if problem:
        suite.check(check_name, False, problem)
        suite.finish()


def kms_plugin_binary():
    """The reference KMS plugin: $EP_KMS_PLUGIN, else the one built beside the proxy."""
    return os.environ.get("EP_KMS_PLUGIN") or os.path.join(
        os.path.dirname(os.path.abspath(binary())), "etcd-encrypt-kms-plugin")


def require_proxy_and_plugin(suite):
    """Ends |suite| with a failure (not a skip) when the proxy or the plugin is not built."""
    problem = binary_problem("serve")
    if problem or not os.access(kms_plugin_binary(), os.X_OK):
        suite.check("proxy and reference plugin are built", False,
                    problem or kms_plugin_binary())
        suite.finish()
    return kms_plugin_binary()


def cli(subcommand, config, etcd_key, data):
    """Runs `etcd-encrypt-proxy encrypt|decrypt`. Returns (exit code, stdout bytes, stderr)."""
    res = subprocess.run([binary(), subcommand, "--encryption-provider-config", config,
                          "--key", etcd_key], input=data, capture_output=True, timeout=20)
    return res.returncode, res.stdout, res.stderr.decode(errors="replace")


def aesgcm_open(key, etcd_key, stored):
    """Independent reading of spec 1.3 with Python `cryptography`: prefix, nonce[12], ct+tag,
    AAD = the etcd key. Returns the plaintext or raises."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not stored.startswith(AESGCM_PREFIX):
        raise ValueError("no %r prefix" % AESGCM_PREFIX)
    body = stored[len(AESGCM_PREFIX):]
    if isinstance(etcd_key, str):
        etcd_key = etcd_key.encode()
    return AESGCM(key).decrypt(body[:12], body[12:], etcd_key)


# ---------------------------------------------------------------------------------------------
# the proxy


class Proxy(_Served):
    def __init__(self, d, etcd_urls, config, down_tls=None, client_cert_auth=False, up_tls=None,
                 workers=2, extra=()):
        self.dir, self.config = d, config
        self.etcd_urls, self.down_tls, self.up_tls = etcd_urls, down_tls, up_tls
        self.client_cert_auth, self.workers, self.extra = client_cert_auth, workers, list(extra)
        self.port = free_port()
        self.log = os.path.join(d, "proxy-%d.log" % self.port)
        self.proc = None

    @property
    def client_tls(self):
        return self.down_tls

    def args(self):
        a = [binary(), "serve", "--listen-addr", "127.0.0.1:%d" % self.port,
             "--endpoints", ",".join(self.etcd_urls), "--encryption-provider-config", self.config,
             "--etcd-prefix", "/registry", "--workers", str(self.workers)]
        if self.down_tls:
            t = self.down_tls
            a += ["--cert-file", t.server_cert, "--key-file", t.server_key]
            if self.client_cert_auth:
                a += ["--trusted-ca-file", t.ca, "--client-cert-auth"]
        if self.up_tls:
            t = self.up_tls
            a += ["--cacert", t.ca, "--cert", t.client_cert, "--key", t.client_key]
        return a + self.extra

    def start(self, timeout=15):
        problem = binary_problem("serve")
        if problem:
            raise RuntimeError(problem)
        self.proc = spawn(self.args(), self.log)
        ok = wait_for(lambda: self.proc.poll() is not None or tcp_accepts(self.port), timeout)
        if self.proc.poll() is not None or not ok:
            raise RuntimeError("proxy did not start accepting (exit %s):\n%s"
                               % (self.proc.poll(), log_tail(self.log)))
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class Env:
    """etcd + EncryptionConfiguration + proxy. `client` is where the clients under test go: the
    proxy, or etcd itself in direct mode. `etcd` is always etcd itself (for raw values)."""

    def __init__(self, suite, provider="aesgcm", tls=False, workers=2):
        self.suite = suite
        self.dir = workdir()
        self.tls = make_tls(os.path.join(self.dir, "tls")) if tls else None
        self.config = os.path.join(self.dir, "encryption-config.yaml")
        self.key = write_encryption_config(self.config, provider)
        self.etcd = Etcd(self.dir, tls=self.tls, client_cert_auth=bool(tls))
        suite.logs.append(self.etcd.log)
        self.etcd.start()
        self.proxy = None
        if not DIRECT:
            self.proxy = Proxy(self.dir, [self.etcd.url], self.config, down_tls=self.tls,
                               client_cert_auth=bool(tls), up_tls=self.tls, workers=workers)
            suite.logs.append(self.proxy.log)
            self.proxy.start()

    @property
    def client_url(self):
        return self.proxy.url if self.proxy else self.etcd.url

    @property
    def client_port(self):
        return self.proxy.port if self.proxy else self.etcd.port

    def ctl(self, *args, **kw):
        return (self.proxy or self.etcd).ctl(*args, **kw)

    def raw_get(self, key):
        """The value as stored in etcd (bytes), or None."""
        import json

        res = self.etcd.ctl("get", key, "-w", "json", check=True)
        kvs = json.loads(res.stdout).get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None  # "" is omitted

    def proxy_log_has(self, needle):
        if not self.proxy:
            return False
        with open(self.proxy.log, "rb") as f:
            return needle in f.read()


def start_env(suite, **kw):
    """Env(...) or, when the proxy cannot start, a failed check with the reason and finish()."""
    try:
        return Env(suite, **kw)
    except Exception as e:  # noqa: BLE001
        suite.check("environment starts (etcd + proxy)", False, e)
        suite.finish()


def import_etcd3():
    try:
        import etcd3  # noqa: F401
    except TypeError:  # protobuf runtime / generated-code mismatch
        os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
        for m in [m for m in sys.modules if m.startswith(("etcd3", "google.protobuf"))]:
            del sys.modules[m]
        import etcd3  # noqa: F401
    return sys.modules["etcd3"]


def marker():
    """A random plaintext marker; tests grep the proxy log for it to catch value leaks."""
    return "PLAINTEXT-" + base64.b32encode(os.urandom(10)).decode()


def spawn_split(args, out_path, err_path, env=None):
    """Starts |args| with stdout to |out_path| and stderr to |err_path| (kept apart, for a command
    whose stdout is its result); tracked for cleanup like spawn()."""
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=_die_with_parent)
    _procs.append(proc)
    return proc
