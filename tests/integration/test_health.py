"""The admin endpoint's health checks, the log, and SIGUSR1.

  * etcd: with etcd up /readyz (and /healthz) answer 200 "ok", ?verbose lists kube-apiserver's
    style "[+]ping ok", "[+]workers ok", "[+]etcd ok", "[+]shutdown ok" and "readyz check
    passed", /readyz/<check> answers for one check (404 for an unknown one), /livez lists ping and
    workers only, /version is JSON. etcd SIGKILLed: /readyz turns 503 within 5 s naming
    "[-]etcd", /livez stays 200. etcd restarted on the same port and data dir: /readyz is 200
    again within 10 s with no client traffic to prompt a reconnect.
  * KMS v2 with the reference plugin (etcd-encrypt-kms-plugin, KEK from a key file) and
    --kms-status-interval-ms 500: /readyz lists "[+]kms-provider-0 ok"; the plugin SIGKILLed:
    503 naming kms-provider-0 within 10 s while /livez and /readyz/etcd stay 200 and
    etcd_encrypt_proxy_kms_plugin_healthy says 0; the plugin restarted: 200 again and the
    secret written before reads back.
  * Logs at --log-level debug, text and (the KMS proxy) --log-format json: every text line has
    the documented shape, every JSON line is an object with time, level and msg (also when an
    etcd key holding a newline and quotes is logged), and neither log holds a plaintext marker,
    the aesgcm key (raw, base64 or hex) or the plugin's KEK.
  * SIGUSR1: the proxy logs it and keeps serving (a put works afterwards, /readyz stays 200).
"""

import base64
import json
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

suite = h.Suite("health")
PLUGIN = h.require_proxy_and_plugin(suite)
MARK = h.marker()


class Admin:
    def __init__(self, port):
        self.base = "http://127.0.0.1:%d" % port

    def get(self, path):
        return h.http_get(self.base + path, 3)

    def status(self, path):
        return self.get(path)[0]

    def wait_status(self, path, want, timeout):
        """Polls |path| until it answers |want|; returns (ok, seconds taken, last answer)."""
        t0 = time.monotonic()
        last = [None]

        def ok():
            last[0] = self.get(path)
            return last[0][0] == want
        good = h.wait_for(ok, timeout, 0.1)
        return good, time.monotonic() - t0, last[0]


def put(proxy, key, value):
    res = proxy.ctl("put", key, value)
    return res.returncode == 0, (res.stdout + res.stderr).decode(errors="replace")


def get_value(proxy, key):
    res = proxy.ctl("get", key, "--print-value-only")
    return res.stdout if res.returncode == 0 else None


def read(path):
    with open(path, "rb") as f:
        return f.read()


work = h.workdir("ep-health")
try:
    etcd = h.Etcd(work).start()
    suite.logs.append(etcd.log)
except Exception as e:  # noqa: BLE001
    suite.check("etcd starts", False, e)
    suite.finish()


def start_proxy(config, extra, port):
    proxy = h.Proxy(work, [etcd.url], config,
                    extra=["--listen-metrics-urls", "http://127.0.0.1:%d" % port] + extra)
    suite.logs.append(proxy.log)
    proxy.start(timeout=30)
    admin = Admin(port)
    if not h.wait_for(lambda: admin.status("/livez") is not None, 10):
        raise RuntimeError("no admin endpoint on %d: %s" % (port, admin.get("/livez")))
    return proxy, admin


# ---------------------------------------------------------------------------------------------
# 1. etcd: ready, killed, restarted (the text-format debug proxy)


os.makedirs(os.path.join(work, "aes"))
AES_CONFIG = os.path.join(work, "aes", "encryption-config.yaml")
AES_KEY = h.write_encryption_config(AES_CONFIG, "aesgcm", ("secrets", "configmaps"))
aes_proxy = aes_admin = None


def etcd_checks():
    global aes_proxy, aes_admin
    aes_proxy, aes_admin = start_proxy(AES_CONFIG, ["--log-level", "debug"], h.free_port())
    a = aes_admin
    ok, took, last = a.wait_status("/readyz", 200, 10)
    suite.check("/readyz is 200 with etcd up", ok, last)
    suite.check('/readyz says "ok"', last[1] == "ok", repr(last[1]))
    st, body = a.get("/readyz?verbose")
    lines = body.strip().split("\n")
    want = ["[+]ping ok", "[+]workers ok", "[+]etcd ok", "[+]shutdown ok"]
    suite.check("/readyz?verbose is 200 and lists ping, workers, etcd, shutdown",
                st == 200 and all(w in lines for w in want), body)
    suite.check('/readyz?verbose ends with "readyz check passed"',
                lines[-1:] == ["readyz check passed"], body)
    suite.check("/readyz?verbose has no failed check", "[-]" not in body, body)
    st, body = a.get("/healthz")
    suite.check('/healthz is /readyz: 200 "ok"', st == 200 and body == "ok", (st, body))
    st, body = a.get("/readyz/etcd")
    suite.check("/readyz/etcd is 200", st == 200, (st, body))
    st, body = a.get("/readyz/no-such-check")
    suite.check("/readyz/no-such-check is 404", st == 404, (st, body))
    st, body = a.get("/livez")
    suite.check('/livez is 200 "ok"', st == 200 and body == "ok", (st, body))
    st, body = a.get("/livez?verbose")
    suite.check("/livez?verbose lists ping and workers but not etcd",
                st == 200 and "[+]ping ok" in body and "[+]workers ok" in body
                and "etcd" not in body and "livez check passed" in body, body)
    st, body = a.get("/version")
    try:
        v = json.loads(body)
    except ValueError:
        v = None
    suite.check("/version is a JSON object with a version", st == 200 and isinstance(v, dict)
                and isinstance(v.get("version"), str) and v["version"], (st, body))
    for i in range(3):
        ok, out = put(aes_proxy, "/registry/secrets/default/s%d" % i, "%s-s%d" % (MARK, i))
        suite.check("put of secret %d with etcd up" % i, ok, out)

    etcd.kill()
    ok, took, last = a.wait_status("/readyz", 503, 5)
    suite.check("etcd SIGKILLed: /readyz is 503 within 5 s (%.1f s)" % took, ok, last)
    suite.check('... naming the etcd check ("[-]etcd failed")',
                last and "[-]etcd failed" in last[1], last)
    st, body = a.get("/readyz/etcd")
    suite.check("etcd down: /readyz/etcd is 503", st == 503, (st, body))
    st, body = a.get("/readyz/ping")
    suite.check("etcd down: /readyz/ping is still 200", st == 200, (st, body))
    st, body = a.get("/healthz")
    suite.check("etcd down: /healthz is 503 too", st == 503, (st, body))
    st, body = a.get("/livez")
    suite.check("etcd down: /livez stays 200", st == 200, (st, body))
    # still down a little later (not a blip), /livez still fine
    ok_live = h.wait_for(lambda: a.status("/livez") != 200 or a.status("/readyz") != 503, 1.5) is False
    suite.check("etcd down: /livez 200 and /readyz 503 hold for 1.5 s", ok_live,
                (a.get("/livez"), a.get("/readyz")))

    try:
        etcd.start()  # the same port and data dir
    except Exception as e:  # noqa: BLE001
        suite.check("etcd restarts on its port and data dir", False, e)
        return
    ok, took, last = a.wait_status("/readyz", 200, 10)
    suite.check("etcd restarted: /readyz back to 200 within 10 s, no client traffic (%.1f s)"
                % took, ok, last)
    st, body = a.get("/readyz?verbose")
    suite.check("etcd restarted: [+]etcd ok", "[+]etcd ok" in body, body)
    ok, out = put(aes_proxy, "/registry/secrets/default/after", MARK + "-after")
    suite.check("etcd restarted: a put through the proxy works", ok, out)
    suite.check("etcd restarted: the secrets from before read back",
                all(get_value(aes_proxy, "/registry/secrets/default/s%d" % i)
                    == ("%s-s%d\n" % (MARK, i)).encode() for i in range(3)))


# ---------------------------------------------------------------------------------------------
# 2. SIGUSR1


def sigusr1():
    if aes_proxy is None or not aes_proxy.alive():
        suite.check("the proxy is running for SIGUSR1", False)
        return
    before = len(read(aes_proxy.log))
    aes_proxy.proc.send_signal(signal.SIGUSR1)

    def logged():
        tail = read(aes_proxy.log)[before:]
        return re.search(rb"SIGUSR1|USR1|User defined signal 1|signal 10\b", tail)
    suite.check("SIGUSR1 is logged", h.wait_for(logged, 5), read(aes_proxy.log)[before:][-300:])
    suite.check("the proxy is still running after SIGUSR1", aes_proxy.alive(),
                aes_proxy.proc.poll())
    ok, out = put(aes_proxy, "/registry/secrets/default/usr1", MARK + "-usr1")
    suite.check("a put works after SIGUSR1", ok, out)
    suite.check("... and reads back",
                get_value(aes_proxy, "/registry/secrets/default/usr1") == (MARK + "-usr1\n").encode())
    suite.check("/readyz is 200 after SIGUSR1", aes_admin.status("/readyz") == 200,
                aes_admin.get("/readyz?verbose"))


# ---------------------------------------------------------------------------------------------
# 3. KMS v2 with the reference plugin (the JSON-format debug proxy)


KMS_NAME = "kms-ref"
KMS_SOCK = os.path.join(work, "kms.sock")
KMS_KEY = os.path.join(work, "kek.bin")
KEK = os.urandom(32)
kms_proxy = None


def start_plugin():
    log = os.path.join(work, "kms-plugin.log")
    if log not in suite.logs:
        suite.logs.append(log)
    proc = h.spawn([PLUGIN, "--listen", "unix://" + KMS_SOCK, "--key-file", KMS_KEY], log)
    if not h.wait_for(lambda: os.path.exists(KMS_SOCK) or proc.poll() is not None, 10) \
            or proc.poll() is not None:
        raise RuntimeError("the KMS plugin did not start:\n" + h.log_tail(log))
    return proc


def kms_healthy_metric(admin):
    st, body = admin.get("/metrics")
    m = re.search(r'^etcd_encrypt_proxy_kms_plugin_healthy\{provider_name="%s"\} (\S+)$'
                  % KMS_NAME, body, re.M) if st == 200 else None
    return float(m.group(1)) if m else None


def kms_checks():
    global kms_proxy
    with open(KMS_KEY, "wb") as f:
        f.write(KEK)
    os.chmod(KMS_KEY, 0o600)
    os.makedirs(os.path.join(work, "kms"))
    config = os.path.join(work, "kms", "encryption-config.yaml")
    with open(config, "w") as f:
        f.write("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
                "resources:\n  - resources:\n      - secrets\n    providers:\n"
                "      - kms:\n          apiVersion: v2\n          name: %s\n"
                "          endpoint: unix://%s\n          timeout: 3s\n"
                "      - identity: {}\n" % (KMS_NAME, KMS_SOCK))
    os.chmod(config, 0o600)
    plugin = start_plugin()
    kms_proxy, a = start_proxy(config, ["--kms-status-interval-ms", "500", "--log-level", "debug",
                                        "--log-format", "json"], h.free_port())
    ok, took, last = a.wait_status("/readyz", 200, 10)
    suite.check("kms: /readyz is 200 with the plugin up", ok, last)
    st, body = a.get("/readyz?verbose")
    suite.check("kms: /readyz?verbose lists [+]kms-provider-0 ok and [+]etcd ok",
                st == 200 and "[+]kms-provider-0 ok" in body and "[+]etcd ok" in body, body)
    suite.check("kms: /readyz/kms-provider-0 is 200", a.status("/readyz/kms-provider-0") == 200,
                a.get("/readyz/kms-provider-0"))
    suite.check("kms: etcd_encrypt_proxy_kms_plugin_healthy{provider_name=%s} == 1" % KMS_NAME,
                kms_healthy_metric(a) == 1.0, kms_healthy_metric(a))
    ok, out = put(kms_proxy, "/registry/secrets/default/k1", MARK + "-kms")
    suite.check("kms: a put of a secret works", ok, out)
    raw = etcd.ctl("get", "/registry/secrets/default/k1", "--print-value-only").stdout
    suite.check("kms: the secret is stored as k8s:enc:kms:v2:%s:" % KMS_NAME,
                raw.startswith(("k8s:enc:kms:v2:%s:" % KMS_NAME).encode()), raw[:40])

    plugin.kill()
    h.stop(plugin)  # reaps it and forgets it
    ok, took, last = a.wait_status("/readyz", 503, 10)
    suite.check("kms: plugin SIGKILLed: /readyz is 503 within 10 s (%.1f s)" % took, ok, last)
    suite.check("kms: ... naming kms-provider-0 ([-]kms-provider-0 failed)",
                last and "[-]kms-provider-0 failed" in last[1], last)
    suite.check("kms: plugin down: /readyz/kms-provider-0 is 503",
                a.status("/readyz/kms-provider-0") == 503, a.get("/readyz/kms-provider-0"))
    st, body = a.get("/readyz/etcd")
    suite.check("kms: plugin down: the etcd check still passes", st == 200, (st, body))
    st, body = a.get("/livez")
    suite.check("kms: plugin down: /livez stays 200", st == 200, (st, body))
    suite.check("kms: plugin down: etcd_encrypt_proxy_kms_plugin_healthy == 0",
                kms_healthy_metric(a) == 0.0, kms_healthy_metric(a))

    try:
        start_plugin()
    except Exception as e:  # noqa: BLE001
        suite.check("kms: the plugin restarts", False, e)
        return
    ok, took, last = a.wait_status("/readyz", 200, 10)
    suite.check("kms: plugin restarted: /readyz back to 200 within 10 s (%.1f s)" % took, ok, last)
    st, body = a.get("/readyz?verbose")
    suite.check("kms: plugin restarted: [+]kms-provider-0 ok", "[+]kms-provider-0 ok" in body, body)
    suite.check("kms: plugin restarted: kms_plugin_healthy == 1", kms_healthy_metric(a) == 1.0,
                kms_healthy_metric(a))
    ok, out = put(kms_proxy, "/registry/secrets/default/k2", MARK + "-kms2")
    suite.check("kms: plugin restarted: a put works", ok, out)
    suite.check("kms: plugin restarted: both secrets read back",
                get_value(kms_proxy, "/registry/secrets/default/k1") == (MARK + "-kms\n").encode()
                and get_value(kms_proxy, "/registry/secrets/default/k2")
                == (MARK + "-kms2\n").encode())
    kms_proxy.proc.send_signal(signal.SIGUSR1)
    suite.check("kms: SIGUSR1 is logged as a JSON line too",
                h.wait_for(lambda: re.search(rb"SIGUSR1|User defined signal 1|signal 10\b",
                                             read(kms_proxy.log)), 5))


# ---------------------------------------------------------------------------------------------
# 4. the logs


def log_traffic():
    """Traffic that makes both proxies log keys: undecryptable values, one under a key holding
    a newline and quotes (a JSON or text line must not be forgeable), a refused Txn."""
    hostile = '/registry/secrets/default/evil\n{"level":"error","msg":"forged"}\t"q"'
    for key in ("/registry/secrets/default/garbage", hostile):
        res = etcd.ctl("put", key, "k8s:enc:aesgcm:v1:key1:" + MARK + "-garbage")
        if res.returncode != 0:
            raise RuntimeError("direct put failed: %s" % res.stderr)
    for proxy in (aes_proxy, kms_proxy):
        if proxy is None or not proxy.alive():
            continue
        for i in range(3):
            put(proxy, "/registry/configmaps/default/c%d" % i, "%s-cm%d" % (MARK, i))
            get_value(proxy, "/registry/configmaps/default/c%d" % i)
        proxy.ctl("get", "/registry/secrets/default/", "--prefix")
        proxy.ctl("txn", input=b'value("/registry/secrets/default/s0") = "%s"\n\n'
                               b"put /registry/secrets/default/s0 %s\n\n\n"
                  % (MARK.encode(), MARK.encode()))


TEXT_LINE = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARN|ERROR) "
                       rb"etcd-encrypt-proxy: .*$")


def no_secrets(label, log, extra_secrets=()):
    suite.check("%s: the log is not empty" % label, len(log) > 0)
    suite.check("%s: no plaintext marker in the log" % label, MARK.encode() not in log,
                [ln for ln in log.split(b"\n") if MARK.encode() in ln][:3])
    secrets = [("the aesgcm key (raw)", AES_KEY), ("the aesgcm key (base64)", base64.b64encode(AES_KEY)),
               ("the aesgcm key (hex)", AES_KEY.hex().encode()),
               ("the aesgcm key (base64, unpadded head)", base64.b64encode(AES_KEY)[:24])]
    secrets += list(extra_secrets)
    for what, s in secrets:
        suite.check("%s: %s is not in the log" % (label, what), s not in log)


def logs():
    log_traffic()
    if aes_proxy is not None:
        log = read(aes_proxy.log)
        no_secrets("debug text log", log)
        bad = [ln for ln in log.split(b"\n") if ln and not TEXT_LINE.match(ln)]
        suite.check("debug text log: every line is 'TIME LEVEL etcd-encrypt-proxy: msg'",
                    not bad, bad[:3])
        suite.check("debug text log: the hostile key is logged on one escaped line",
                    b"/registry/secrets/default/evil" in log
                    and not any(ln.startswith(b'{"level":"error","msg":"forged"}')
                                for ln in log.split(b"\n")), [
                        ln for ln in log.split(b"\n") if b"evil" in ln or b"forged" in ln][:3])
    else:
        suite.check("the text-format proxy ran", False)
    if kms_proxy is not None:
        log = read(kms_proxy.log)
        no_secrets("debug json log", log, [("the plugin KEK (raw)", KEK),
                                           ("the plugin KEK (base64)", base64.b64encode(KEK)),
                                           ("the plugin KEK (hex)", KEK.hex().encode())])
        bad, levels, evil = [], set(), False
        for ln in log.split(b"\n"):
            if not ln:
                continue
            try:
                obj = json.loads(ln)
            except ValueError as e:
                bad.append((ln[:120], str(e)))
                continue
            if not (isinstance(obj, dict) and all(isinstance(obj.get(k), str)
                                                  for k in ("time", "level", "msg"))):
                bad.append((ln[:120], "not an object with string time, level, msg"))
                continue
            levels.add(obj["level"])
            evil |= "/registry/secrets/default/evil\n" in obj["msg"]
        suite.check("debug json log: every line is a JSON object with time, level, msg",
                    not bad, bad[:3])
        suite.check("debug json log: levels are debug/info/warn/error",
                    levels and levels <= {"debug", "info", "warn", "error"}, levels)
        suite.check("debug json log: the hostile key round-trips inside one msg", evil,
                    [ln for ln in log.split(b"\n") if b"evil" in ln][:2])
    else:
        suite.check("the json-format proxy ran", False)


for what, fn in (("readyz / livez with etcd up, killed, restarted", etcd_checks),
                 ("SIGUSR1", sigusr1),
                 ("readyz with a kms v2 plugin up, killed, restarted", kms_checks),
                 ("logs at debug level, text and json", logs)):
    suite.run(what, fn)
suite.finish()
