"""Resilience: failover across etcd endpoints (a dead first endpoint, a member of a 3-member
cluster killed under the proxy), a stalled reader of a 40 MB Range (flow control must bound the
proxy's memory and keep other clients served), etcd auth metadata forwarded through the proxy,
and an IPv6 listener.

Every case builds its own etcd (or cluster) and proxy, so a case that leaves etcd in a strange
state (auth enabled, a member down) cannot disturb the others. These are proxy properties; in
EP_IT_TARGET=direct mode only the auth checks run (against etcd itself).
"""

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdwire as w  # noqa: E402
import harness  # noqa: E402

suite = harness.Suite("resilience")
MARKERS = []  # plaintext markers written through a proxy; no proxy log may contain them
PROXY_LOGS = []


def new_proxy(d, urls, config, workers=2, cls=harness.Proxy):
    p = cls(d, urls, config, workers=workers)
    suite.logs.append(p.log)
    PROXY_LOGS.append(p.log)
    return p


def new_workdir():
    """A fresh directory with an EncryptionConfiguration: (dir, config path, its aesgcm key)."""
    d = harness.workdir()
    config = os.path.join(d, "encryption-config.yaml")
    return d, config, harness.write_encryption_config(config)


def new_etcd(d):
    """A started single-member etcd in |d|, its log kept for failure reports."""
    etcd = harness.Etcd(d)
    suite.logs.append(etcd.log)
    etcd.start()
    return etcd


def skip(what, why):
    print("SKIP  %s (%s)" % (what, why), flush=True)


def ctl_ok(res):
    return res.returncode == 0


def ctl_err(res):
    return (res.stderr or b"").decode(errors="replace").strip()[-300:]


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def peer_ports(pid):
    """Remote ports of |pid|'s established TCP connections (its sockets found via /proc)."""
    inodes = set()
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/%d/net/tcp" % pid, "/proc/%d/net/tcp6" % pid):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "01" and cols[9] in inodes:  # 01 = ESTABLISHED
                ports.add(int(cols[2].rsplit(":", 1)[1], 16))
    return ports


def put_get_ok(url, key, value, timeout=10):
    """etcdctl put + get through |url|; returns True or the error text."""
    try:
        res = harness.etcdctl(url, "put", key, value, timeout=timeout)
        if not ctl_ok(res):
            return "put: " + ctl_err(res)
        res = harness.etcdctl(url, "get", key, "--print-value-only", timeout=timeout)
        if not ctl_ok(res):
            return "get: " + ctl_err(res)
    except subprocess.TimeoutExpired:
        return "etcdctl hung for more than %s s" % timeout
    got = res.stdout.rstrip(b"\n")
    return True if got == value.encode() else "get returned %d bytes, not the value" % len(got)


def raw_value(etcd_url, key, *extra):
    res = harness.etcdctl(etcd_url, "get", key, "-w", "json", *extra, check=True)
    kvs = json.loads(res.stdout).get("kvs") or []
    return base64.b64decode(kvs[0].get("value", "")) if kvs else None


def aesgcm_plain(key, etcd_key, stored):
    """|stored| opened as kube-apiserver's aesgcm with |key|, or why it could not be."""
    try:
        return harness.aesgcm_open(key, etcd_key, stored)
    except Exception as e:  # noqa: BLE001
        return repr(e)


# ---------------------------------------------------------------------------------------------
# 1a. a dead endpoint first


def dead_first_endpoint():
    d, config, key = new_workdir()
    etcd = new_etcd(d)
    dead = harness.free_port()  # nobody listens there
    proxy = new_proxy(d, ["http://127.0.0.1:%d" % dead, etcd.url], config)
    started = time.monotonic()
    proxy.start()
    value = harness.marker()
    MARKERS.append(value)
    first = None
    while time.monotonic() - started < 10:
        if put_get_ok(proxy.url, "/registry/secrets/failover/first", value) is True:
            first = time.monotonic() - started
            break
        time.sleep(0.1)
    suite.check("dead endpoint first: a put/get through the proxy succeeds within 3 s of start"
                " (took %s s)" % (None if first is None else round(first, 2)),
                first is not None and first < 3.0, harness.log_tail(proxy.log, 5))
    results = [put_get_ok(proxy.url, "/registry/secrets/failover/k%d" % i, value + str(i), timeout=5)
               for i in range(10)]
    suite.check("and the next 10 put/get pairs all succeed", all(r is True for r in results),
                [r for r in results if r is not True][:2])
    raw = raw_value(etcd.url, "/registry/secrets/failover/k3")
    plain = aesgcm_plain(key, "/registry/secrets/failover/k3", raw)
    suite.check("values stored through the failover are encrypted (aesgcm, AAD = key)",
                plain == (value + "3").encode(), plain)
    suite.check("proxy still running", proxy.alive())
    proxy.stop()
    etcd.stop()


# ---------------------------------------------------------------------------------------------
# 1b. a 3-member cluster, the connected member killed


def cluster_leader(members):
    """The member that is raft leader, or None."""
    for m in members:
        res = m.ctl("endpoint", "status", "-w", "json")
        if ctl_ok(res):
            st = json.loads(res.stdout)[0]["Status"]
            if st["leader"] == st["header"]["member_id"]:
                return m
    return None


def leader_killed(members, proxy):
    """Kills the raft leader. etcd itself then times out writes in flight ("request timed out,
    possibly due to previous leader failure", ~7 s); the proxy must recover no later than a
    client talking to a surviving member directly, and pass etcd's error through meanwhile."""
    leader = cluster_leader(members)
    if leader is None:
        suite.check("a leader is known before killing it", False)
        return
    survivor = [m for m in members if m is not leader][0]
    took, errors = {}, {}

    def until_ok(name, url):
        started = time.monotonic()
        while time.monotonic() - started < 20:
            r = put_get_ok(url, "/registry/secrets/cluster/%s" % name, name, timeout=15)
            if r is True:
                took[name] = time.monotonic() - started
                return
            errors.setdefault(name, r)
            time.sleep(0.1)

    leader.kill()
    threads = [threading.Thread(target=until_ok, args=(n, u))
               for n, u in (("direct", survivor.url), ("proxy", proxy.url))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    print("      leader %s killed: direct client ok after %s s, proxy client after %s s; first "
          "proxy error: %s" % (leader.name, round(took.get("direct", -1), 2),
                               round(took.get("proxy", -1), 2), errors.get("proxy")), flush=True)
    suite.check("after the leader is killed, the proxy recovers no later than a direct client"
                " (+2 s)", "proxy" in took and "direct" in took and
                took["proxy"] <= took["direct"] + 2.0, took)
    err = errors.get("proxy")
    suite.check("a failure meanwhile is etcd's own error, passed through",
                err is None or "etcdserver:" in err or "context deadline" in err, err)


def cluster_member_killed():
    t0 = time.monotonic()
    d, config, key = new_workdir()
    members = harness.start_cluster(d, 3, suite.logs)
    suite.check("3-member cluster up (%.1f s)" % (time.monotonic() - t0), True)
    # A follower goes first in --endpoints, so the member the proxy connects to (and that we
    # kill) is not the leader: a leader's death stalls writes in etcd itself for an election
    # plus etcd's own request timeout (~7 s), which would say nothing about the proxy.
    leader = cluster_leader(members)
    order = sorted(members, key=lambda m: m is leader)
    proxy = new_proxy(d, [m.url for m in order], config, workers=1)
    proxy.start()
    values = {}
    for i in range(5):
        k, v = "/registry/secrets/cluster/k%d" % i, harness.marker()
        MARKERS.append(v)
        values[k] = v
    results = [put_get_ok(proxy.url, k, v) for k, v in values.items()]
    suite.check("put/get through the proxy on the cluster", all(r is True for r in results), results)

    by_port = dict((m.port, m) for m in members)
    connected = [by_port[p] for p in peer_ports(proxy.proc.pid) if p in by_port]
    suite.check("the proxy (1 worker) holds one connection to one member",
                len(connected) == 1, [m.name for m in connected])
    if not connected:
        return
    victim = connected[0]
    suite.check("the connected member is a follower (%s; leader %s)"
                % (victim.name, leader.name if leader else None), victim is not leader)
    victim.kill()
    killed = time.monotonic()
    recovered, last = None, None
    i = 0
    while time.monotonic() - killed < 15:
        last = put_get_ok(proxy.url, "/registry/secrets/cluster/after%d" % i, "after%d" % i, timeout=5)
        print("      %.2f s after the kill: %s" % (time.monotonic() - killed, last), flush=True)
        i += 1
        if last is True:
            recovered = time.monotonic() - killed
            break
        time.sleep(0.2)
    suite.check("after SIGKILL of the connected member (%s) requests succeed again within 5 s"
                " (took %s s)" % (victim.name, None if recovered is None else round(recovered, 2)),
                recovered is not None and recovered < 5.0, last)
    now = [by_port[p].name for p in peer_ports(proxy.proc.pid) if p in by_port]
    suite.check("the proxy is now connected to another member", now and victim.name not in now, now)
    wrong = [k for k, v in values.items()
             if harness.etcdctl(proxy.url, "get", k, "--print-value-only").stdout.rstrip(b"\n")
             != v.encode()]
    suite.check("values written before the kill still decrypt through the proxy", not wrong, wrong)
    suite.check("the proxy logged the lost connection",
                b"connection lost" in open(proxy.log, "rb").read(), harness.log_tail(proxy.log, 5))
    # restart the member on its data dir and make sure the cluster (and proxy) are whole again
    victim.start()
    res = harness.etcdctl(victim.url, "get", "/registry/secrets/cluster/k0", "-w", "json")
    stored = None
    if ctl_ok(res):
        kvs = json.loads(res.stdout).get("kvs") or []
        stored = base64.b64decode(kvs[0]["value"]) if kvs else None
    plain = aesgcm_plain(key, "/registry/secrets/cluster/k0", stored)
    suite.check("the restarted member rejoined and holds the value encrypted",
                plain == values["/registry/secrets/cluster/k0"].encode(), plain)
    suite.check("put/get through the proxy after the restart",
                put_get_ok(proxy.url, "/registry/secrets/cluster/end", "end") is True)
    leader_killed(members, proxy)
    suite.check("cluster case bounded (< 40 s, took %.1f s)" % (time.monotonic() - t0),
                time.monotonic() - t0 < 40)
    proxy.stop()
    for m in members:
        m.stop()


# ---------------------------------------------------------------------------------------------
# 2. a stalled reader of a 40 MB Range

SANITIZED = "asan" in harness.binary()  # the ASan+UBSan tree
BIG_PREFIX = "/registry/secrets/big/"
BIG_COUNT, BIG_SIZE = 160, 256 * 1024
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
WINDOW = 65535  # the HTTP/2 default, also the connection window we never enlarge


def open_stalled_range(port):
    """A raw client that advertises 64 KiB windows and sends one Range; returns it unread."""
    h = w.RawH2("127.0.0.1", port, timeout=20)
    h.send(w.PREFACE + w.h2_frame(w.SETTINGS, 0, 0, struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE,
                                                                 WINDOW)))
    f = h.read_frame()  # the proxy's SETTINGS (acknowledged by read_frame)
    if not f or f[0] != w.SETTINGS:
        raise RuntimeError("expected the proxy's SETTINGS, got %r" % (f,))
    body = w.grpc_frame(w.range_request(BIG_PREFIX, w.prefix_end(BIG_PREFIX)))
    h.send(w.h2_frame(w.HEADERS, w.END_HEADERS, 1, w.grpc_request_headers("/etcdserverpb.KV/Range")))
    h.send(w.h2_frame(w.DATA, w.END_STREAM, 1, body))
    return h


def read_all(h):
    """Reads stream 1 to its end, returning window as it goes. Returns (body, how it ended)."""
    body = bytearray()
    while True:
        f = h.read_frame()
        if f is None:
            return bytes(body), "closed"
        ftype, flags, sid, payload = f
        frame_len = len(payload)  # padding counts against the window too
        if ftype == w.GOAWAY:
            return bytes(body), "goaway"
        if sid != 1:
            continue
        if ftype == w.RST_STREAM:
            return bytes(body), "rst"
        if ftype == w.DATA:
            if flags & 0x8:  # PADDED
                payload = payload[1 : len(payload) - payload[0]]
            body += payload
            if frame_len:
                inc = struct.pack(">I", frame_len)
                h.send(w.h2_frame(w.WINDOW_UPDATE, 0, 0, inc) + w.h2_frame(w.WINDOW_UPDATE, 0, 1, inc))
        if flags & w.END_STREAM:
            return bytes(body), "end_stream"


def start_measured(proxy):
    """Starts |proxy| for a memory measurement. ASan keeps freed blocks mapped in its quarantine
    (256 MB by default), so a sanitized proxy's RSS would count every buffer it already freed,
    and how much of that is still mapped depends on allocation order, not on what the proxy
    holds; a 16 MB quarantine still catches use after free of recent blocks and lets RSS mean
    what the check says."""
    saved = os.environ.get("ASAN_OPTIONS")
    if SANITIZED:
        os.environ["ASAN_OPTIONS"] = (saved + ":" if saved else "") + "quarantine_size_mb=16"
    try:
        proxy.start()
    finally:
        if saved is None:
            os.environ.pop("ASAN_OPTIONS", None)
        else:
            os.environ["ASAN_OPTIONS"] = saved


def slow_reader():
    d, config, key = new_workdir()
    etcd = new_etcd(d)
    proxy = new_proxy(d, [etcd.url], config, workers=1)
    start_measured(proxy)
    ch = grpc.insecure_channel("127.0.0.1:%d" % proxy.port)
    put = ch.unary_unary("/etcdserverpb.KV/Put")
    expected = {}
    for i in range(BIG_COUNT):
        k = "%s%04d" % (BIG_PREFIX, i)
        v = os.urandom(BIG_SIZE)
        put(w.put_request(k, v), timeout=20)
        expected[k.encode()] = v
    ch.close()
    raw = raw_value(etcd.url, BIG_PREFIX + "0007")
    suite.check("the 160 x 256 KiB values are stored encrypted",
                raw is not None and raw.startswith(harness.AESGCM_PREFIX) and
                harness.aesgcm_open(key, BIG_PREFIX + "0007", raw) == expected[(BIG_PREFIX + "0007").encode()])
    time.sleep(0.5)
    base = rss_kib(proxy.proc.pid)
    response_kib = BIG_COUNT * BIG_SIZE // 1024
    h = open_stalled_range(proxy.port)
    peak, others = base, []
    stall_until = time.monotonic() + 6.0
    probe = 0
    while time.monotonic() < stall_until:
        peak = max(peak, rss_kib(proxy.proc.pid))
        started = time.monotonic()
        ok = put_get_ok(proxy.url, "/registry/secrets/probe/p%d" % probe, "probe%d" % probe, timeout=5)
        try:
            big = harness.etcdctl(proxy.url, "get", BIG_PREFIX + "0042", "--print-value-only",
                                  timeout=5)
        except subprocess.TimeoutExpired:
            big = None
        ok = ok is True and big is not None and big.returncode == 0 and big.stdout.rstrip(
            b"\n") == expected[(BIG_PREFIX + "0042").encode()]
        others.append((ok, time.monotonic() - started))
        probe += 1
        peak = max(peak, rss_kib(proxy.proc.pid))
        time.sleep(0.2)
    growth, held = peak - base, rss_kib(proxy.proc.pid) - base
    print("      proxy VmRSS baseline %d KiB, peak while the reader stalls %d KiB (+%d KiB, +%d KiB"
          " still held at the end of the stall); the response is %d KiB"
          % (base, peak, growth, held, response_kib), flush=True)
    # A Range response is one gRPC message whose length prefix must be known before its first
    # byte is sent, so the proxy holds one response while rewriting it; the rule is that its
    # memory stays a small multiple of that response (here: below 2.5x), never unbounded.
    suite.check("while a reader stalls on a %d MiB Range the proxy's RSS grows < 2.5x the"
                " response (grew %.1f MiB)" % (response_kib // 1024, growth / 1024.0),
                growth < 2.5 * response_kib, "baseline %d KiB, peak %d KiB, held %d KiB"
                % (base, peak, base + held))
    slow = [round(t, 2) for ok, t in others if not ok or t > 3.0]
    suite.check("other clients are served promptly meanwhile (%d put/get + 256 KiB get rounds)"
                % len(others), others and not slow, slow)
    started = time.monotonic()
    body, ended = read_all(h)
    h.close()
    try:
        msgs = w.grpc_unframe(body)
        kvs = w.range_response_kvs(msgs[0]) if len(msgs) == 1 else None
    except (ValueError, IndexError) as e:
        msgs, kvs = [], repr(e)
    got = dict(kvs) if isinstance(kvs, list) else {}
    suite.check("the slow reader then receives the whole Range (%d bytes, %s, %.1f s)"
                % (len(body), ended, time.monotonic() - started),
                ended == "end_stream" and isinstance(kvs, list) and len(kvs) == BIG_COUNT,
                kvs if not isinstance(kvs, list) else len(kvs))
    suite.check("and every value is the decrypted original", got == expected,
                sum(1 for k, v in expected.items() if got.get(k) != v))
    # the same Range again, read at full speed: memory must come back, not pile up per call
    ch = grpc.insecure_channel("127.0.0.1:%d" % proxy.port,
                               options=[("grpc.max_receive_message_length", -1)])
    again = w.range_response_kvs(ch.unary_unary("/etcdserverpb.KV/Range")(
        w.range_request(BIG_PREFIX, w.prefix_end(BIG_PREFIX)), timeout=60))
    ch.close()
    after = rss_kib(proxy.proc.pid)
    suite.check("a second full Range (grpcio) is complete and RSS does not pile up"
                " (%d KiB after, first peak %d KiB)" % (after, peak),
                dict(again) == expected and after < peak + 8 * 1024, len(again))
    suite.check("proxy still running", proxy.alive())
    proxy.stop()
    etcd.stop()


# ---------------------------------------------------------------------------------------------
# 3. etcd auth through the proxy


def auth_metadata():
    d, config, key = new_workdir()
    etcd = new_etcd(d)
    proxy = None
    if not harness.DIRECT:
        proxy = new_proxy(d, [etcd.url], config)
        proxy.start()
    url = proxy.url if proxy else etcd.url
    via = "through the proxy" if proxy else "against etcd (direct)"
    password = "pw-" + os.urandom(6).hex()
    root = "root:" + password
    # set up through the proxy: the Auth service is passed through
    for args in (("user", "add", root), ("role", "add", "root"),
                 ("user", "grant-role", "root", "root"),
                 ("user", "add", "reader:" + password), ("role", "add", "cm-reader"),
                 ("role", "grant-permission", "cm-reader", "--prefix=true", "read",
                  "/registry/configmaps/"),
                 ("user", "grant-role", "reader", "cm-reader"), ("auth", "enable")):
        res = harness.etcdctl(url, *args)
        if not ctl_ok(res) and not (args[:2] == ("role", "add") and b"exists" in res.stderr):
            suite.check("etcdctl %s" % " ".join(args[:2]), False, ctl_err(res))
            return
    suite.check("users, roles and auth enable set up %s" % via, True)
    k, v = "/registry/secrets/auth/k", harness.marker()
    MARKERS.append(v)
    res = harness.etcdctl(url, "--user", root, "put", k, v)
    suite.check("etcdctl --user root put %s" % via, ctl_ok(res), ctl_err(res))
    res = harness.etcdctl(url, "--user", root, "get", k, "--print-value-only")
    suite.check("etcdctl --user root get returns the value",
                ctl_ok(res) and res.stdout.rstrip(b"\n") == v.encode(), ctl_err(res))
    raw = raw_value(etcd.url, k, "--user", root)
    if proxy:
        plain = aesgcm_plain(key, k, raw)
        suite.check("stored encrypted in etcd", plain == v.encode(), plain)
    res = harness.etcdctl(url, "get", k)
    suite.check("get without credentials is refused with etcd's error (user name is empty)",
                not ctl_ok(res) and b"user name is empty" in res.stderr, ctl_err(res))
    res = harness.etcdctl(url, "put", k, "x")
    suite.check("put without credentials is refused with etcd's error",
                not ctl_ok(res) and b"user name is empty" in res.stderr, ctl_err(res))
    res = harness.etcdctl(url, "--user", "root:wrong", "get", k)
    suite.check("a wrong password is refused (authentication failed)",
                not ctl_ok(res) and b"authentication failed" in res.stderr, ctl_err(res))
    reader = "reader:" + password
    res = harness.etcdctl(url, "--user", reader, "get", k)
    suite.check("a user without permission gets etcd's 'permission denied'",
                not ctl_ok(res) and b"permission denied" in res.stderr, ctl_err(res))
    res = harness.etcdctl(url, "--user", reader, "get", "/registry/configmaps/none")
    suite.check("the same user reads where its role allows", ctl_ok(res), ctl_err(res))
    res = harness.etcdctl(url, "--user", root, "get", k, "--print-value-only")
    suite.check("root still reads the value afterwards (token still forwarded)",
                ctl_ok(res) and res.stdout.rstrip(b"\n") == v.encode(), ctl_err(res))
    if proxy:
        suite.check("proxy log does not contain the password", password.encode() not in
                    open(proxy.log, "rb").read())
        proxy.stop()
    etcd.stop()


# ---------------------------------------------------------------------------------------------
# 4. IPv6 listener


class V6Proxy(harness.Proxy):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            self.port = s.getsockname()[1]
        self.log = os.path.join(self.dir, "proxy-v6-%d.log" % self.port)

    @property
    def url(self):
        return "http://[::1]:%d" % self.port

    def args(self):
        a = super().args()
        a[a.index("--listen-addr") + 1] = "[::1]:%d" % self.port
        return a

    def start(self, timeout=15):
        problem = harness.binary_problem("serve")
        if problem:
            raise RuntimeError(problem)
        self.proc = harness.spawn(self.args(), self.log)

        def accepts():
            try:
                with socket.create_connection(("::1", self.port), timeout=0.5):
                    return True
            except OSError:
                return self.proc.poll() is not None

        harness.wait_for(accepts, timeout)
        if self.proc.poll() is not None:
            raise RuntimeError("proxy exited with %s:\n%s" % (self.proc.poll(),
                                                             harness.log_tail(self.log)))
        return self


def ipv6_listener():
    if not socket.has_ipv6:
        skip("IPv6 listener", "socket.has_ipv6 is false")
        return
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as e:
        skip("IPv6 listener", "cannot bind ::1: %s" % e)
        return
    d, config, key = new_workdir()
    etcd = new_etcd(d)
    proxy = new_proxy(d, [etcd.url], config, cls=V6Proxy)
    proxy.start()
    k, v = "/registry/secrets/v6/k", harness.marker()
    MARKERS.append(v)
    r = put_get_ok("[::1]:%d" % proxy.port, k, v)
    suite.check("etcdctl --endpoints [::1]:PORT put/get through the proxy", r is True, r)
    raw = raw_value(etcd.url, k)
    suite.check("stored encrypted", raw is not None and harness.aesgcm_open(key, k, raw) == v.encode())
    suite.check("nothing listens on 127.0.0.1 at that port", not harness.tcp_accepts(proxy.port))
    proxy.stop()
    etcd.stop()


def no_leaks():
    leaked = []
    for path in PROXY_LOGS:
        try:
            data = open(path, "rb").read()
        except OSError:
            continue
        leaked += [m for m in MARKERS if m.encode() in data]
    suite.check("no plaintext marker in any proxy log (%d markers, %d logs)"
                % (len(MARKERS), len(PROXY_LOGS)), not leaked, leaked)


if harness.DIRECT:
    suite.run("etcd auth (direct)", auth_metadata)
    for what in ("failover", "slow reader", "IPv6 listener"):
        skip(what, "EP_IT_TARGET=direct: proxy-only")
else:
    problem = harness.binary_problem("serve")
    if problem:
        suite.check("proxy binary serves", False, problem)
        suite.finish()
    for name, fn in [("failover: dead first endpoint", dead_first_endpoint),
                     ("failover: cluster member killed", cluster_member_killed),
                     ("slow reader / flow control", slow_reader),
                     ("etcd auth metadata", auth_metadata),
                     ("IPv6 listener", ipv6_listener),
                     ("no plaintext in logs", no_leaks)]:
        if len(sys.argv) < 2 or any(a in name for a in sys.argv[1:]):  # argv: run only these
            suite.run(name, fn)
suite.finish()
