"""The admin endpoint's /metrics, scraped by a real Prometheus.

etcd + the proxy (aesgcm for secrets and configmaps, 2 workers, --listen-metrics-urls) and the
Debian `prometheus` binary with its own config and TSDB in the test's temp dir, scraping the
proxy every second. A known workload goes through the proxy with etcdctl:

  * a watch on a secrets prefix and one put under it (the event is decrypted);
  * NS puts of secrets, NC of configmaps, NP of pods (not encrypted), one delete of a pod, one
    Txn with a VALUE compare on an encrypted key (refused: FailedPrecondition);
  * NS single-key gets of the secrets, one prefix get of the configmaps, one get of the pods;
  * values written straight into etcd and read back through the proxy: garbage behind
    `k8s:enc:aesgcm:v1:key1:` (a failed aesgcm read), garbage behind `k8s:enc:secretbox:v1:` (no
    provider of the chain matches: "unknown"), and legacy plaintext (read by identity).

Prometheus' HTTP API (/api/v1/query) must then report exactly what kube-apiserver would for the
same operations (spec section 8): every apiserver_storage_transformation_operations_total series
with its resource / transformation_type / transformer_prefix / status labels and count (and no
other series: keys outside the config record nothing), the duration histogram counts, the
undecryptable values by resource, calls by method and code, values encrypted per provider and
key, the upstream connection gauge, streams and watches in flight, the config hash label
(sha256 of the file bytes), and the reload controller's series after a good and a bad reload.

The raw text is also parsed with python3-prometheus-client's text_string_to_metric_families:
every family parses, has HELP and TYPE exactly once, no sample is repeated, histogram buckets
follow kube's layouts, are cumulative, and +Inf equals _count. The Prometheus target must be up
with no scrape error.
"""

import base64
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

suite = h.Suite("metrics")

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
NS, NC, NP, NW = 6, 4, 3, 1  # secrets, configmaps, pods put through the proxy; watched puts
WORKERS = 2
AESGCM = "k8s:enc:aesgcm:v1:"
MARK = h.marker()


def require_tools():
    problems = []
    p = h.binary_problem("serve")
    if p:
        problems.append(p)
    if not os.access(PROMETHEUS, os.X_OK):
        problems.append("%s is missing (Debian package prometheus, scripts/deps.sh)" % PROMETHEUS)
    try:
        import prometheus_client.parser  # noqa: F401
    except ImportError as e:
        problems.append("python3-prometheus-client is missing: %s" % e)
    if problems:
        suite.check("proxy, prometheus and python3-prometheus-client are available", False,
                    "; ".join(problems))
        suite.finish()


require_tools()
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


class Prometheus:
    def __init__(self, d, targets):
        self.dir = os.path.join(d, "prometheus")
        os.makedirs(self.dir)
        self.port = h.free_port()
        self.config = os.path.join(self.dir, "prometheus.yml")
        with open(self.config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: etcd-encrypt-proxy\n"
                    "    static_configs:\n      - targets: [%s]\n"
                    % ", ".join("'%s'" % t for t in targets))
        self.log = os.path.join(self.dir, "prometheus.log")
        self.proc = h.spawn([PROMETHEUS, "--config.file", self.config,
                             "--storage.tsdb.path", os.path.join(self.dir, "tsdb"),
                             "--web.listen-address", "127.0.0.1:%d" % self.port,
                             "--storage.tsdb.retention.time", "1h"], self.log)
        self.base = "http://127.0.0.1:%d" % self.port
        ok = h.wait_for(lambda: self.proc.poll() is not None
                        or h.http_get(self.base + "/-/ready", 2)[0] == 200, 30, 0.2)
        if not ok or self.proc.poll() is not None:
            raise RuntimeError("prometheus did not become ready:\n" + h.log_tail(self.log))

    def api(self, path, **params):
        status, body = h.http_get(self.base + path + "?" + urllib.parse.urlencode(params), 5)
        if status != 200:
            raise RuntimeError("prometheus %s -> %s: %s" % (path, status, body[:300]))
        res = json.loads(body)
        if res.get("status") != "success":
            raise RuntimeError("prometheus %s: %s" % (path, body[:300]))
        return res["data"]

    def query(self, q):
        """[(labels without __name__, float value)] of an instant query."""
        data = self.api("/api/v1/query", query=q)
        out = []
        for r in data["result"]:
            labels = {k: v for k, v in r["metric"].items()
                      if k not in ("__name__", "job", "instance")}
            out.append((labels, float(r["value"][1])))
        return out

    def scalar(self, q):
        """The single value of |q|, None when it has no sample, a list when it has several."""
        r = self.query(q)
        if not r:
            return None
        return r[0][1] if len(r) == 1 else [v for _, v in r]

    broken = False  # the first scrape check failed: later waits are short

    def wait_value(self, q, want, timeout=15):
        """Polls until |q| has the single value |want|; returns the last value seen."""
        seen = [None]
        if Prometheus.broken:
            timeout = min(timeout, 3)

        def ok():
            try:
                seen[0] = self.scalar(q)
            except Exception as e:  # noqa: BLE001 - prometheus may still be starting up
                seen[0] = "error: %s" % e
            return seen[0] == want
        h.wait_for(ok, timeout, 0.25)
        return seen[0]

    def target(self):
        targets = self.api("/api/v1/targets")["activeTargets"]
        return targets[0] if targets else {}


# ---------------------------------------------------------------------------------------------
# setup

try:
    work = h.workdir("ep-metrics")
    etcd = h.Etcd(work).start()
    suite.logs.append(etcd.log)
    # its own directory: the proxy watches the config file's directory for changes
    os.makedirs(os.path.join(work, "config"))
    config = os.path.join(work, "config", "encryption-config.yaml")
    KEY = h.write_encryption_config(config, "aesgcm", ("secrets", "configmaps"))
    mport = h.free_port()
    t_start = time.time()
    proxy = h.Proxy(work, [etcd.url], config, workers=WORKERS,
                    extra=["--listen-metrics-urls", "http://127.0.0.1:%d" % mport])
    suite.logs.append(proxy.log)
    proxy.start()
    t_started = time.time()
    METRICS = "http://127.0.0.1:%d/metrics" % mport
    if not h.wait_for(lambda: h.http_get(METRICS, 2)[0] == 200, 10):
        raise RuntimeError("no /metrics on port %d: %s" % (mport, h.http_get(METRICS, 2)))
    prom = Prometheus(work, ["127.0.0.1:%d" % mport])
    suite.logs.append(prom.log)
except Exception as e:  # noqa: BLE001
    suite.check("etcd, proxy and prometheus start", False, e)
    suite.finish()


def raw_metrics():
    status, body = h.http_get(METRICS, 5)
    if status != 200:
        raise RuntimeError("GET /metrics -> %s: %s" % (status, body[:200]))
    return body


def put(key, value, via=None):
    res = (via or proxy).ctl("put", key, value)
    if res.returncode != 0:
        raise RuntimeError("put %s failed: %s" % (key, res.stderr.decode(errors="replace")))


def get(*args):
    res = proxy.ctl("get", *args)
    if res.returncode != 0:
        raise RuntimeError("get %s failed: %s" % (args, res.stderr.decode(errors="replace")))
    return res.stdout


def lbl(**kw):
    return "{" + ",".join('%s="%s"' % (k, v) for k, v in kw.items()) + "}"


# ---------------------------------------------------------------------------------------------
# 1. Prometheus scrapes the proxy


def scrape_up():
    got = prom.wait_value('up{job="etcd-encrypt-proxy"}', 1.0, 20)
    t = {}
    try:
        t = prom.target()
    except Exception as e:  # noqa: BLE001
        t = {"error": str(e)}
    Prometheus.broken = got != 1.0
    suite.check("prometheus scrapes the proxy: up == 1", got == 1.0,
                "up=%r, target health=%r lastError=%r" % (got, t.get("health"), t.get("lastError")))
    suite.check("the prometheus target has no scrape error",
                t.get("health") == "up" and not t.get("lastError"),
                "health=%r lastError=%r" % (t.get("health"), t.get("lastError")))


# ---------------------------------------------------------------------------------------------
# 2. the workload


watcher = None


def check_prom_reaches(what, query, want, timeout, show=None):
    """Checks |what|: prometheus answers |query| with |want| within |timeout| seconds. The
    check shows what |show| returns then, by default prometheus' answer to |query|."""
    got = prom.wait_value(query, want, timeout)
    suite.check(what, got == want, show() if show else prom.scalar(query))


def workload():
    global watcher
    # a watch on secrets/w/: one Watch stream open, one event to decrypt
    wlog = os.path.join(work, "watch.log")
    watcher = h.spawn(h.etcdctl_cmd(proxy.url) + ["watch", "--prefix", "/registry/secrets/w/"],
                      wlog, env=h.ETCDCTL_ENV)
    check_prom_reaches("prometheus sees the watch stream: etcd_encrypt_proxy_watch_streams == 1",
                       "etcd_encrypt_proxy_watch_streams", 1.0, 15)
    check_prom_reaches("prometheus sees the watch as a call in flight: streams_in_flight == 1",
                       "etcd_encrypt_proxy_streams_in_flight", 1.0, 10)
    for i in range(NW):
        put("/registry/secrets/w/s%d" % i, "%s-watched-%d" % (MARK, i))
    suite.check("the watcher received the decrypted event",
                h.wait_for(lambda: ("%s-watched-%d" % (MARK, NW - 1)).encode()
                           in open(wlog, "rb").read(), 10), h.log_tail(wlog))

    for i in range(NS):
        put("/registry/secrets/ns1/s%d" % i, "%s-secret-%d" % (MARK, i))
    for i in range(NC):
        put("/registry/configmaps/default/c%d" % i, "%s-configmap-%d" % (MARK, i))
    for i in range(NP):
        put("/registry/pods/default/p%d" % i, "pod-%d" % i)
    res = proxy.ctl("del", "/registry/pods/default/p0")
    suite.check("a delete through the proxy", res.returncode == 0 and res.stdout.strip() == b"1",
                res.stdout + res.stderr)
    res = proxy.ctl("txn", input=b'value("/registry/secrets/ns1/s0") = "x"\n\n'
                                 b"put /registry/pods/default/t t\n\n\n")
    suite.check("a Txn with a VALUE compare on a secret is refused",
                res.returncode != 0 and b"FailedPrecondition" in res.stderr,
                res.stdout + res.stderr)

    # written straight into etcd, read through the proxy
    put("/registry/secrets/default/bad", AESGCM + "key1:" + "garbage-not-a-gcm-value-0123456789",
        via=etcd)
    put("/registry/configmaps/other/bad2", "k8s:enc:secretbox:v1:key1:" + "garbage-0123456789",
        via=etcd)
    put("/registry/secrets/default/legacy", MARK + "-legacy-plaintext", via=etcd)

    for i in range(NS):
        out = get("/registry/secrets/ns1/s%d" % i)
        if ("%s-secret-%d" % (MARK, i)).encode() not in out:
            raise RuntimeError("secret %d did not read back: %r" % (i, out))
    out = get("/registry/configmaps/default/", "--prefix")
    suite.check("the configmaps read back decrypted",
                all(("%s-configmap-%d" % (MARK, i)).encode() in out for i in range(NC)), out)
    out = get("/registry/secrets/default/bad")
    suite.check("the undecryptable aesgcm value passes through unchanged",
                (AESGCM + "key1:garbage-not-a-gcm-value").encode() in out, out)
    out = get("/registry/configmaps/other/bad2")
    suite.check("the value with no matching provider passes through unchanged",
                b"k8s:enc:secretbox:v1:key1:garbage" in out, out)
    out = get("/registry/secrets/default/legacy")
    suite.check("the legacy plaintext secret reads", (MARK + "-legacy-plaintext").encode() in out,
                out)
    get("/registry/pods/default/", "--prefix")

    h.stop(watcher)
    check_prom_reaches("the watch is gone: etcd_encrypt_proxy_watch_streams == 0",
                       "etcd_encrypt_proxy_watch_streams", 0.0, 15)
    check_prom_reaches("no call in flight afterwards: etcd_encrypt_proxy_streams_in_flight == 0",
                       "sum(etcd_encrypt_proxy_streams_in_flight)", 0.0, 10,
                       show=lambda: prom.query("etcd_encrypt_proxy_streams_in_flight"))


PUTS = NW + NS + NC + NP
RANGES = NS + 1 + 1 + 1 + 1 + 1  # secrets one by one, configmaps, bad, bad2, legacy, pods


def wait_scraped():
    """Prometheus holds a scrape taken after the whole workload."""
    got = prom.wait_value('sum(etcd_encrypt_proxy_requests_total{method="/etcdserverpb.KV/Range"})',
                          float(RANGES), 20)
    suite.check("prometheus caught up with the workload (%d Range calls)" % RANGES,
                got == float(RANGES), got)


# ---------------------------------------------------------------------------------------------
# 3. the apiserver-named series in Prometheus


def expected_transformations():
    exp = {}

    def add(resource, ttype, prefix, status, n):
        k = (resource, ttype, prefix, status)
        exp[k] = exp.get(k, 0) + n

    for resource, n in (("secrets", NW + NS), ("configmaps", NC)):
        for ttype in ("to_storage", "from_storage"):
            add(resource, ttype, AESGCM, "OK", n)
            add(resource, ttype, "key1:", "OK", n)  # aes' nested key-level list
    # garbage behind the aesgcm prefix: both the provider and its key1: entry matched and failed
    add("secrets", "from_storage", AESGCM, "unknown-non-grpc", 1)
    add("secrets", "from_storage", "key1:", "unknown-non-grpc", 1)
    # no provider matched (identity refuses k8s:enc: data and is skipped)
    add("configmaps", "from_storage", "unknown", "unknown-non-grpc", 1)
    # legacy plaintext read by the trailing identity provider
    add("secrets", "from_storage", "identity", "OK", 1)
    return exp


def transformations():
    name = "apiserver_storage_transformation_operations_total"
    got = {}
    for labels, v in prom.query(name):
        got[(labels.get("resource"), labels.get("transformation_type"),
             labels.get("transformer_prefix"), labels.get("status"))] = v
    exp = expected_transformations()
    for k, n in sorted(exp.items()):
        suite.check("%s%s == %d" % (name, lbl(resource=k[0], transformation_type=k[1],
                                               transformer_prefix=k[2], status=k[3]), n),
                    got.get(k) == float(n), "got %r" % got.get(k))
    extra = {k: v for k, v in got.items() if k not in exp}
    suite.check("no other transformation series (pods and other keys record nothing)",
                not extra, extra)
    suite.check("no transformation series for the unencrypted pods resource",
                not prom.query('%s{resource="pods"}' % name))

    # the duration histogram: success only, labels transformation_type + transformer_prefix
    dname = "apiserver_storage_transformation_duration_seconds"
    for ttype in ("to_storage", "from_storage"):
        for prefix in (AESGCM, "key1:", "identity"):
            want = sum(n for (r, t, p, s), n in exp.items()
                       if t == ttype and p == prefix and s == "OK")
            q = "%s_count%s" % (dname, lbl(transformation_type=ttype, transformer_prefix=prefix))
            got_n = prom.scalar(q)
            suite.check("%s == %d" % (q, want),
                        (got_n is None and want == 0) or got_n == float(want), got_n)
    failed = prom.query('%s_count{transformer_prefix="unknown"}' % dname)
    suite.check("failed transformations have no duration sample", not failed, failed)
    q = '%s_bucket{transformation_type="to_storage",transformer_prefix="%s",le="+Inf"}' % (dname, AESGCM)
    v = prom.scalar(q)
    suite.check("the to_storage +Inf bucket in prometheus == its _count (%d)" % (NW + NS + NC),
                v == float(NW + NS + NC), v)

    suite.check("apiserver_storage_envelope_transformation_cache_misses_total is 0 without KMS",
                prom.scalar("apiserver_storage_envelope_transformation_cache_misses_total")
                in (None, 0.0),
                prom.query("apiserver_storage_envelope_transformation_cache_misses_total"))
    suite.check("apiserver_envelope_encryption_dek_cache_fill_percent == 0 without KMS",
                prom.scalar("apiserver_envelope_encryption_dek_cache_fill_percent") == 0.0,
                prom.query("apiserver_envelope_encryption_dek_cache_fill_percent"))
    suite.check("no dek_source_cache_size series without a kms v2 provider",
                not prom.query("apiserver_envelope_encryption_dek_source_cache_size"))


def proxy_series():
    name = "etcd_encrypt_proxy_undecryptable_values_total"
    got = {l.get("resource"): v for l, v in prom.query(name)}
    suite.check('%s{resource="secrets"} == 1 and {resource="configmaps"} == 1' % name,
                got == {"secrets": 1.0, "configmaps": 1.0}, got)

    name = "etcd_encrypt_proxy_values_encrypted_total"
    got = {(l.get("provider"), l.get("key")): v for l, v in prom.query(name)}
    suite.check('%s{provider="aesgcm",key="key1"} == %d (and nothing else)' % (name, NW + NS + NC),
                got == {("aesgcm", "key1"): float(NW + NS + NC)}, got)

    name = "etcd_encrypt_proxy_requests_total"
    got = {(l.get("method"), l.get("code")): v for l, v in prom.query(name)}
    want = {("/etcdserverpb.KV/Put", "OK"): PUTS,
            ("/etcdserverpb.KV/Range", "OK"): RANGES,
            ("/etcdserverpb.KV/DeleteRange", "OK"): 1,
            ("/etcdserverpb.KV/Txn", "FailedPrecondition"): 1}
    for (method, code), n in want.items():
        suite.check("%s%s == %d" % (name, lbl(method=method, code=code), n),
                    got.get((method, code)) == float(n), "got %r (all: %r)" % (got.get((method, code)), got))
    watch = {k: v for k, v in got.items() if k[0] == "/etcdserverpb.Watch/Watch"}
    suite.check("the finished watch is counted once under /etcdserverpb.Watch/Watch",
                sum(watch.values()) == 1.0, watch)
    extra = {k: v for k, v in got.items() if k not in want and k[0] != "/etcdserverpb.Watch/Watch"}
    suite.check("no other calls counted", not extra, extra)

    name = "etcd_encrypt_proxy_request_duration_seconds_count"
    for method in ("/etcdserverpb.KV/Put", "/etcdserverpb.KV/Range", "/etcdserverpb.KV/Txn"):
        n = sum(v for (m, _c), v in got.items() if m == method)
        v = prom.scalar("%s%s" % (name, lbl(method=method)))
        suite.check("%s{method=%s} == requests_total summed over codes (%d)" % (name, method, n),
                    v == n, v)

    name = "etcd_encrypt_proxy_upstream_connections"
    got = {l.get("endpoint"): v for l, v in prom.query(name)}
    suite.check('%s{endpoint="127.0.0.1:%d"} == %d (one per worker)' % (name, etcd.port, WORKERS),
                got == {"127.0.0.1:%d" % etcd.port: float(WORKERS)}, got)

    name = "etcd_encrypt_proxy_bytes_total"
    got = {(l.get("peer"), l.get("direction")): v for l, v in prom.query(name)}
    suite.check("%s has client/etcd x received/sent, all > 0" % name,
                sorted(got) == [("client", "received"), ("client", "sent"),
                                ("etcd", "received"), ("etcd", "sent")]
                and all(v > 0 for v in got.values()), got)

    name = "etcd_encrypt_proxy_worker_heartbeat_timestamp_seconds"
    got = {l.get("worker"): v for l, v in prom.query(name)}
    now = time.time()
    suite.check("%s for workers 0..%d, each within 5 s of now" % (name, WORKERS - 1),
                sorted(got) == [str(i) for i in range(WORKERS)]
                and all(abs(now - v) < 5 for v in got.values()), got)

    name = "etcd_encrypt_proxy_metric_series_dropped_total"
    suite.check("%s == 0" % name, prom.scalar(name) == 0.0, prom.query(name))

    res = prom.query("etcd_encrypt_proxy_build_info")
    status, body = h.http_get(METRICS.replace("/metrics", "/version"))
    version = json.loads(body).get("version") if status == 200 else None
    suite.check("etcd_encrypt_proxy_build_info == 1 with the /version version label",
                len(res) == 1 and res[0][1] == 1.0 and res[0][0].get("version") == version
                and version, (res, status, body))

    suite.check("no etcd_encrypt_proxy_kms_plugin_healthy series without KMS",
                not prom.query("etcd_encrypt_proxy_kms_plugin_healthy"))


def process_series():
    pid = proxy.proc.pid
    start = prom.scalar("process_start_time_seconds")
    suite.check("process_start_time_seconds is when the proxy started",
                isinstance(start, float) and t_start - 2 <= start <= t_started + 2,
                (start, t_start, t_started))
    fds = len(os.listdir("/proc/%d/fd" % pid))
    v = prom.scalar("process_open_fds")
    suite.check("process_open_fds close to /proc/PID/fd (%d)" % fds,
                isinstance(v, float) and abs(v - fds) <= 4, v)
    soft = None
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                soft = float(line.split()[3])
    v = prom.scalar("process_max_fds")
    suite.check("process_max_fds == the soft RLIMIT_NOFILE (%s)" % soft, v == soft, v)
    with open("/proc/%d/status" % pid) as f:
        rss = [int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")][0]
    v = prom.scalar("process_resident_memory_bytes")
    suite.check("process_resident_memory_bytes within 50%% of VmRSS (%d)" % rss,
                isinstance(v, float) and 0.5 * rss <= v <= 1.5 * rss, v)
    v = prom.scalar("process_virtual_memory_bytes")
    suite.check("process_virtual_memory_bytes >= resident", isinstance(v, float) and v >= rss, v)
    v = prom.scalar("process_cpu_seconds_total")
    suite.check("process_cpu_seconds_total is a small non-negative number",
                isinstance(v, float) and 0 <= v < 60, v)


# ---------------------------------------------------------------------------------------------
# 4. the raw text through python3-prometheus-client


FAMILIES = {
    "apiserver_storage_transformation_operations_total": "counter",
    "apiserver_storage_transformation_duration_seconds": "histogram",
    "apiserver_storage_envelope_transformation_cache_misses_total": "counter",
    "apiserver_envelope_encryption_kms_operations_latency_seconds": "histogram",
    "apiserver_envelope_encryption_dek_source_cache_size": "gauge",
    "apiserver_envelope_encryption_dek_cache_fill_percent": "gauge",
    "apiserver_encryption_config_controller_automatic_reloads_total": "counter",
    "apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds": "gauge",
    "apiserver_encryption_config_controller_last_config_info": "gauge",
    "etcd_encrypt_proxy_requests_total": "counter",
    "etcd_encrypt_proxy_request_duration_seconds": "histogram",
    "etcd_encrypt_proxy_streams_in_flight": "gauge",
    "etcd_encrypt_proxy_watch_streams": "gauge",
    "etcd_encrypt_proxy_upstream_connections": "gauge",
    "etcd_encrypt_proxy_undecryptable_values_total": "counter",
    "etcd_encrypt_proxy_values_encrypted_total": "counter",
    "etcd_encrypt_proxy_bytes_total": "counter",
    "etcd_encrypt_proxy_kms_plugin_healthy": "gauge",
    "etcd_encrypt_proxy_worker_heartbeat_timestamp_seconds": "gauge",
    "etcd_encrypt_proxy_build_info": "gauge",
    "etcd_encrypt_proxy_metric_series_dropped_total": "counter",
    "process_cpu_seconds_total": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_start_time_seconds": "gauge",
}

# kube-apiserver's bucket layouts (spec 8): start, factor 2, count
BUCKETS = {
    "apiserver_storage_transformation_duration_seconds": (5e-6, 25),
    "apiserver_envelope_encryption_kms_operations_latency_seconds": (1e-4, 20),
    "etcd_encrypt_proxy_request_duration_seconds": (1e-4, 20),
}

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$')


def text_format(text):
    """Line-level checks of the exposition the client library's parser is lenient about."""
    lines = text.split("\n")
    suite.check("the exposition ends with a newline", text.endswith("\n"), repr(text[-40:]))
    helps, types, seen, bad, dups, late = {}, {}, set(), [], [], []
    sampled = set()
    for line in lines:
        if not line:
            continue
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            helps[name] = helps.get(name, 0) + 1
        elif line.startswith("# TYPE "):
            parts = line.split(" ")
            if len(parts) != 4 or parts[3] not in ("counter", "gauge", "histogram", "summary",
                                                    "untyped"):
                bad.append(line)
                continue
            types[parts[2]] = types.get(parts[2], 0) + 1
            if parts[2] in sampled:
                late.append(parts[2])
        elif line.startswith("#"):
            bad.append(line)
        else:
            m = SAMPLE_RE.match(line)
            if not m:
                bad.append(line)
                continue
            try:
                float(m.group(3))
            except ValueError:
                bad.append(line)
            key = (m.group(1), m.group(2) or "")
            if key in seen:
                dups.append(line)
            seen.add(key)
            base = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
            sampled.add(base if base in types else m.group(1))
    suite.check("every line is a HELP, a TYPE with a known type, or a well-formed sample",
                not bad, bad[:5])
    suite.check("no sample (name + labels) appears twice", not dups, dups[:8])
    suite.check("every TYPE comes before its samples", not late, late)
    for name, typ in FAMILIES.items():
        suite.check("# HELP and # TYPE %s %s present exactly once" % (name, typ),
                    helps.get(name) == 1 and types.get(name) == 1
                    and ("# TYPE %s %s" % (name, typ)) in lines,
                    "HELP x%s TYPE x%s" % (helps.get(name), types.get(name)))


def parsed():
    text = raw_metrics()
    text_format(text)
    try:
        fams = list(text_string_to_metric_families(text))
    except Exception as e:  # noqa: BLE001
        suite.check("the exposition parses with prometheus_client", False, e)
        return
    suite.check("the exposition parses with prometheus_client (%d families)" % len(fams), True)
    by_name = {}
    for f in fams:
        full = f.name + "_total" if f.type == "counter" and f.name + "_total" in FAMILIES else f.name
        by_name[full] = f
    for name, typ in FAMILIES.items():
        f = by_name.get(name)
        suite.check("family %s parses as a %s with HELP text" % (name, typ),
                    f is not None and f.type == typ and bool(f.documentation),
                    f and (f.type, f.documentation))
    unknown = [f.name for f in fams if f.type in ("unknown", "untyped")]
    suite.check("no family parses as untyped", not unknown, unknown)

    for name, (start, count) in BUCKETS.items():
        f = by_name.get(name)
        if f is None:
            continue
        series = {}
        for s in f.samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            series.setdefault(key, {"buckets": [], "count": None, "sum": None})
            if s.name.endswith("_bucket"):
                series[key]["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                series[key]["count"] = s.value
            elif s.name.endswith("_sum"):
                series[key]["sum"] = s.value
        problems = []
        for key, sr in series.items():
            b = sr["buckets"]
            les = [le for le, _ in b]
            want = [start * 2 ** i for i in range(count)] + [math.inf]
            if len(les) != len(want) or any(not math.isclose(x, y, rel_tol=1e-9)
                                            for x, y in zip(les[:-1], want[:-1])) \
                    or les[-1] != math.inf:
                problems.append("%s: le %s != kube's %g x 2^n, %d buckets" % (key, les[:3], start, count))
            vals = [v for _, v in b]
            if any(vals[i] > vals[i + 1] for i in range(len(vals) - 1)):
                problems.append("%s: buckets not cumulative %s" % (key, vals))
            if not vals or vals[-1] != sr["count"]:
                problems.append("%s: +Inf %s != _count %s" % (key, vals[-1:] or None, sr["count"]))
            if sr["sum"] is None or sr["sum"] < 0 or (sr["count"] and sr["sum"] <= 0):
                problems.append("%s: _sum %s" % (key, sr["sum"]))
        suite.check("%s: %d series, buckets as kube's, cumulative, +Inf == _count"
                    % (name, len(series)), not problems and (series or name.startswith(
                        "apiserver_envelope")), problems[:4] or "no series")

    # the duration histogram's _count against the operations counter, from the same text
    ops = by_name.get("apiserver_storage_transformation_operations_total")
    dur = by_name.get("apiserver_storage_transformation_duration_seconds")
    if ops and dur:
        ok_by = {}
        for s in ops.samples:
            if s.labels.get("status") == "OK":
                k = (s.labels["transformation_type"], s.labels["transformer_prefix"])
                ok_by[k] = ok_by.get(k, 0) + s.value
        counts = {(s.labels["transformation_type"], s.labels["transformer_prefix"]): s.value
                  for s in dur.samples if s.name.endswith("_count")}
        suite.check("duration _count == OK operations per (type, prefix), summed over resources",
                    counts == ok_by, (counts, ok_by))
    for name in ("etcd_encrypt_proxy_streams_in_flight", "etcd_encrypt_proxy_watch_streams"):
        f = by_name.get(name)
        vals = [s.value for s in f.samples] if f else None
        suite.check("%s in the raw text is one sample >= 0 (or none)" % name,
                    vals is not None and len(vals) <= 1 and all(v >= 0 for v in vals), vals)


# ---------------------------------------------------------------------------------------------
# 5. the config hash and the reload controller


def sha256_label(path):
    with open(path, "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest()


def config_info(expect_hash, what):
    name = "apiserver_encryption_config_controller_last_config_info"
    res = prom.query(name)
    suite.check("%s: one %s series, hash == sha256 of the file bytes (%s)" % (what, name, expect_hash),
                len(res) == 1 and res[0][0].get("hash") == expect_hash and res[0][1] == 1.0, res)
    ids = [l.get("apiserver_id_hash", "") for l, _ in res]
    suite.check("%s: apiserver_id_hash is sha256:<64 hex>" % what,
                ids and all(re.fullmatch(r"sha256:[0-9a-f]{64}", i) for i in ids), ids)
    return ids[0] if ids else None


def reloads():
    first = sha256_label(config)
    ident = config_info(first, "at start")
    name = "apiserver_encryption_config_controller_automatic_reloads_total"
    suite.check("no %s samples before any reload" % name, not prom.query(name), prom.query(name))

    # a good reload: key2 added as a second aesgcm key, file replaced by rename
    with open(config) as f:
        text = f.read()
    key2 = base64.b64encode(os.urandom(32)).decode()
    text = text.replace("      - identity: {}",
                        "      - aesgcm:\n          keys:\n            - name: key2\n"
                        "              secret: %s\n      - identity: {}" % key2)
    tmp = config + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.rename(tmp, config)
    second = sha256_label(config)
    t0 = time.time()
    got = prom.wait_value('%s{status="success"}' % name, 1.0, 20)
    suite.check('%s{status="success"} == 1 after the file changed' % name, got == 1.0, got)
    config_info(second, "after a good reload")
    res = prom.query(name)
    suite.check("the reload series carries the same apiserver_id_hash",
                [l.get("apiserver_id_hash") for l, _ in res] == [ident], res)
    last = prom.scalar('apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds'
                       '{status="success"}')
    suite.check("automatic_reload_last_timestamp_seconds{status=success} is the reload's time",
                isinstance(last, float) and t0 - 2 <= last <= time.time() + 1, (last, t0))
    put("/registry/secrets/ns1/after-reload", MARK + "-after-reload")
    suite.check("a secret written after the reload reads back",
                (MARK + "-after-reload").encode() in get("/registry/secrets/ns1/after-reload"))

    # a bad reload: the file no longer parses; the old config stays
    with open(tmp, "w") as f:
        f.write("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
                "resources: [ {resources: [secrets], providers: [ {aesgcm: {keys: [] } } ] } ]\n")
    os.rename(tmp, config)
    got = [None]

    def failed():
        got[0] = prom.scalar('%s{status="failure"}' % name)
        return isinstance(got[0], float) and got[0] >= 1
    h.wait_for(failed, 3 if Prometheus.broken else 20, 0.25)
    suite.check('%s{status="failure"} >= 1 after a broken file' % name, failed(), got[0])
    suite.check('%s{status="success"} still 1' % name,
                prom.scalar('%s{status="success"}' % name) == 1.0)
    config_info(second, "after a failed reload (the last applied config)")
    suite.check("the proxy still serves after the failed reload",
                (MARK + "-after-reload").encode() in get("/registry/secrets/ns1/after-reload"))


def no_leak():
    with open(proxy.log, "rb") as f:
        log = f.read()
    suite.check("the proxy log holds no plaintext marker", MARK.encode() not in log)
    suite.check("the proxy log holds neither the key nor its base64",
                KEY not in log and base64.b64encode(KEY) not in log)


for what, fn in (("Prometheus scrapes the proxy", scrape_up),
                 ("the workload through the proxy", workload),
                 ("wait for a scrape after the workload", wait_scraped),
                 ("apiserver storage transformation series", transformations),
                 ("proxy series", proxy_series),
                 ("process series", process_series),
                 ("raw text through python3-prometheus-client", parsed),
                 ("config hash and reload controller", reloads),
                 ("no plaintext or key in the log", no_leak)):
    suite.run(what, fn)
suite.finish()
