#!/usr/bin/python3
"""Scale: watch fan-out, big LISTs, 10,000 concurrent streams and idle memory, in one run.

Paths (as proxy_bench.py starts them, with its functions): etcd direct; the proxy with an aesgcm
config (--workers 2); nghttpx --single-process as an h2c pass-through (backend proto=h2). Every
path runs once per workload per round, the first path rotating per round, each cell starting from
a compacted and defragmented etcd; the table shows medians over the rounds.

  watch fan-out   W watchers (prefix watch on /registry/secrets/, one Watch stream each) spread
                  over C HTTP/2 connections held by P helper processes (this script in
                  --watch-helper mode: a raw HTTP/2 client built on etcdwire.py, which only frames
                  and counts, so that the load generator is cheap); one writer puts N values of
                  1 KiB through the same path, one at a time. events/s = W x N / (first Put sent
                  -> last event received). Checks: every watcher was created and got exactly N
                  events, its stream never ended; one watcher per connection parses every event
                  (key, order, value = the plaintext that was put); the value at rest in etcd is
                  aesgcm ciphertext behind the proxy. CPU per delivered event: the proxy's (or
                  nghttpx's) utime+stime over the cell / (W x N); loadgen = the helpers' CPU over
                  the same window, in cores (near 1 per helper would make it the bottleneck).
  LIST            K secrets of 4 KiB (written through the path's own config: ciphertext for the
                  proxy), read as one Range of the whole prefix (kube-apiserver's start-up LIST
                  without limit) and paged with limit L at the first page's revision (its paged
                  LIST). Wall time, peak VmRSS of the proxy / nghttpx (sampled every 10 ms), and
                  all K values checked (decrypted through the proxy).
  streams         h2load -c 100 -m 100 (10,000 streams at once), a Range of one 1 KiB key, for S
                  s: req/s, p50/p99, req/s x p50 (= streams in flight, by Little's law: shows that
                  100 per connection really ran), peak RSS and (peak - RSS before) / streams.
                  gRPC-level check: etcd's grpc_server_handled_total for KV/Range over the run
                  must count no non-OK code and at least h2load's successes as OK, and a Range on
                  the path before and after returns the expected value.
  idle RSS        the proxy's and nghttpx's VmRSS after start, after one Range (the proxy's one
                  decrypting), and 2 s after each round's load.

Both servers get their per-connection stream limit set (--max-concurrent-streams for the proxy,
--frontend-http2-max-concurrent-streams for nghttpx, whose default is 100), see --conn-streams.
Loopback only; every process is stopped by the harness, by PID.
"""

import argparse
import collections
import contextlib
import datetime
import hashlib
import json
import os
import queue
import re
import resource
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import proxy_bench as pb  # noqa: E402  (puts tests/integration on sys.path)

w, harness = pb.w, pb.harness
grpc = pb.grpc

WATCH_PREFIX = "/registry/secrets/"
WATCH_KEYS = "/registry/secrets/bench/watch/"
LIST_SUB = "list/"  # under each path's range_prefix
RANGE_PREFIXES = {"plain": "/registry/secrets/bench/plain/", "enc": "/registry/secrets/bench/enc/"}


# ---------------------------------------------------------------------------------------------
# small helpers


def rss_kib(pid, field="VmRSS"):
    if pid is None:
        return None
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssPeak:
    """VmRSS of |pid| sampled every 10 ms in a thread while the with-block runs."""

    def __init__(self, pid, interval=0.01):
        self.pid, self.interval = pid, interval
        self.before = self.peak = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = None

    def _run(self):
        while not self._stop.wait(self.interval):
            r = rss_kib(self.pid)
            if r is not None and (self.peak is None or r > self.peak):
                self.peak = r

    def __enter__(self):
        if self.pid is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()
        r = rss_kib(self.pid)
        if r is not None and (self.peak is None or r > self.peak):
            self.peak = r


@contextlib.contextmanager
def server_flags(proxy_flags, nghttpx_flags):
    """Adds flags to the proxy and nghttpx command lines that proxy_bench.start_proxy and
    finish_paths build (both start their process through harness.spawn)."""
    orig = harness.spawn

    def spawn(argv, log_path, env=None):
        if argv and os.path.basename(argv[0]) == "nghttpx":
            argv = list(argv) + nghttpx_flags
        elif len(argv) > 1 and argv[1] == "serve":
            argv = list(argv) + proxy_flags
        return orig(argv, log_path, env)

    harness.spawn = spawn
    try:
        yield
    finally:
        harness.spawn = orig


def channel(port, max_send=4 << 20):
    return grpc.insecure_channel("127.0.0.1:%d" % port, options=harness.grpc_options(max_send))


def bulk_put(port, items, window=64):
    """Puts (key, value) pairs over one channel, |window| calls in flight."""
    with channel(port, 8 << 20) as ch:
        put = ch.unary_unary("/etcdserverpb.KV/Put")
        pending = collections.deque()
        for k, v in items:
            pending.append(put.future(w.put_request(k, v), timeout=120))
            if len(pending) >= window:
                pending.popleft().result()
        for f in pending:
            f.result()


def watch_value(seed, i, size):
    d = hashlib.sha256(b"%s:%d" % (seed, i)).digest()
    return (d * (size // len(d) + 1))[:size]


def list_key(prefix, i):
    return ("%s%ss%05d" % (prefix, LIST_SUB, i)).encode()


def etcd_grpc_handled(etcd_port, method):
    """{grpc_code: count} of etcd's grpc_server_handled_total for KV/|method|."""
    status, text = harness.http_get("http://127.0.0.1:%d/metrics" % etcd_port, timeout=10)
    if status != 200:
        raise RuntimeError("etcd /metrics: %s %s" % (status, text[:200]))
    out = collections.Counter()
    for m in re.finditer(r'^grpc_server_handled_total\{([^}]*)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("grpc_method") == method and labels.get("grpc_service") == "etcdserverpb.KV":
            out[labels.get("grpc_code")] += int(float(m.group(2)))
    return out


def range_more(msg):
    for num, _, val in w.parse_fields(msg):
        if num == 3:
            return bool(val)
    return False


# ---------------------------------------------------------------------------------------------
# watch helper: a raw HTTP/2 client holding many Watch streams (runs in its own process)

WINDOW_MAX = (1 << 31) - 1
SETTINGS_INITIAL_WINDOW_SIZE = 4


class _Watcher:
    __slots__ = ("sid", "buf", "created", "count", "sample", "done_at", "bad", "unacked")

    def __init__(self, sid, sample):
        self.sid, self.sample = sid, sample
        self.buf = b""
        self.created = False
        self.count = 0
        self.done_at = None
        self.bad = None
        self.unacked = 0


class _Conn:
    __slots__ = ("sock", "buf", "streams", "unacked", "dead")

    def __init__(self, sock):
        self.sock, self.buf, self.streams, self.unacked, self.dead = sock, bytearray(), {}, 0, None


def watch_helper(opts):
    """Opens opts.conns connections with opts.per_conn Watch streams each, prints
    {"ready": ...} once every stream answered created (or failed), counts events until every
    watcher has opts.events of them (or nothing came for 5 s, or opts.timeout passed), prints the
    result as one JSON line and exits."""
    seed, size, nev = opts.seed.encode(), opts.size, opts.events
    key_prefix = opts.key_prefix.encode()
    create = w.grpc_frame(w.field_bytes(1, w.field_bytes(1, opts.prefix) +
                                        w.field_bytes(2, w.prefix_end(opts.prefix))))
    hdrs = w.grpc_request_headers("/etcdserverpb.Watch/Watch")
    sel = selectors.DefaultSelector()
    conns, watchers = [], []
    for _ in range(opts.conns):
        s = socket.create_connection(("127.0.0.1", opts.port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = _Conn(s)
        out = bytearray(w.PREFACE + w.h2_frame(w.SETTINGS, 0, 0, struct.pack(
            ">HI", SETTINGS_INITIAL_WINDOW_SIZE, WINDOW_MAX)) +
            w.h2_frame(w.WINDOW_UPDATE, 0, 0, struct.pack(">I", WINDOW_MAX - 65535)))
        for k in range(opts.per_conn):
            wt = _Watcher(2 * k + 1, sample=(k == 0))
            c.streams[wt.sid] = wt
            watchers.append(wt)
            out += w.h2_frame(w.HEADERS, w.END_HEADERS, wt.sid, hdrs)
            out += w.h2_frame(w.DATA, 0, wt.sid, create)
        s.sendall(out)
        conns.append(c)
        sel.register(s, selectors.EVENT_READ, c)
    state = {"created": 0, "complete": 0, "msgs": 0, "events": 0, "first": None,
             "sampled": 0, "last_rx": time.monotonic(), "failed": 0, "failed_early": 0}

    def fail(wt, why):
        if wt.bad is None:
            wt.bad = why
            state["failed"] += 1
            state["failed_early"] += wt.done_at is None

    def gone(c, why):
        if not c.dead:
            c.dead = why
            sel.unregister(c.sock)
            for wt in c.streams.values():
                fail(wt, why)

    def check_event(wt, ev):
        f = {}
        for num, _, val in w.parse_fields(ev):
            f[num] = val
        if f.get(1, 0) != 0:
            return "event %d has type %d, not PUT" % (wt.count, f[1])
        kv = {}
        for num, _, val in w.parse_fields(f.get(2, b"")):
            kv[num] = val
        want = key_prefix + b"k%04d" % wt.count
        if kv.get(1) != want:
            return "event %d is key %r, want %r" % (wt.count, kv.get(1), want)
        if kv.get(5, b"") != watch_value(seed, wt.count, size):
            v = kv.get(5, b"")
            return "event %d of %s: value %r... (%d bytes) is not the plaintext put" % (
                wt.count, want.decode(), v[:24], len(v))
        state["sampled"] += 1
        return None

    def on_message(wt, msg):
        state["msgs"] += 1
        i, n = 0, len(msg)
        while i < n:
            tag = msg[i]
            i += 1
            if tag & 0x80:
                tag, i = w._read_varint(msg, i - 1)
            num, wtype = tag >> 3, tag & 7
            if wtype == 0:
                v, i = w._read_varint(msg, i)
                if num == 3 and v:
                    if not wt.created:
                        wt.created = True
                        state["created"] += 1
                elif num == 4 and v:
                    fail(wt, "watch canceled by the server")
            elif wtype == 2:
                ln, i = w._read_varint(msg, i)
                if num == 11:
                    if wt.sample and wt.bad is None and wt.count < nev:
                        why = check_event(wt, msg[i:i + ln])
                        if why:
                            fail(wt, why)
                    wt.count += 1
                    state["events"] += 1
                    if state["first"] is None:
                        state["first"] = time.monotonic()
                    if wt.count == nev:
                        wt.done_at = time.monotonic()
                        state["complete"] += 1
                    elif wt.count == nev + 1:
                        fail(wt, "more than %d events" % nev)
                elif num == 6 and ln:
                    fail(wt, "cancel_reason %r" % bytes(msg[i:i + ln]))
                i += ln
            elif wtype == 1:
                i += 8
            elif wtype == 5:
                i += 4
            else:
                fail(wt, "bad protobuf wire type %d" % wtype)
                return

    def on_data(c, wt, payload):
        data = wt.buf + payload if wt.buf else payload
        j, n = 0, len(data)
        while n - j >= 5:
            m = int.from_bytes(data[j + 1:j + 5], "big")
            if n - j - 5 < m:
                break
            on_message(wt, data[j + 5:j + 5 + m])
            j += 5 + m
        wt.buf = bytes(data[j:]) if j < n else b""

    def on_readable(c):
        try:
            chunk = c.sock.recv(1 << 20)
        except OSError as e:
            return gone(c, "recv: %s" % e)
        if not chunk:
            return gone(c, "connection closed by the server")
        state["last_rx"] = time.monotonic()
        buf = c.buf
        buf += chunk
        i, n, out = 0, len(buf), bytearray()
        while n - i >= 9:
            ln = (buf[i] << 16) | (buf[i + 1] << 8) | buf[i + 2]
            if n - i < 9 + ln:
                break
            ftype, flags = buf[i + 3], buf[i + 4]
            sid = int.from_bytes(buf[i + 5:i + 9], "big") & 0x7FFFFFFF
            payload = bytes(buf[i + 9:i + 9 + ln])
            i += 9 + ln
            if ftype == w.DATA:
                c.unacked += ln
                if flags & 0x8:  # PADDED
                    payload = payload[1:len(payload) - payload[0]]
                wt = c.streams.get(sid)
                if wt is not None:
                    wt.unacked += ln
                    if wt.unacked > 1 << 30:
                        out += w.h2_frame(w.WINDOW_UPDATE, 0, sid, struct.pack(">I", wt.unacked))
                        wt.unacked = 0
                    on_data(c, wt, payload)
                    if flags & w.END_STREAM:
                        fail(wt, "stream ended by the server")
            elif ftype == w.HEADERS:
                wt = c.streams.get(sid)
                if wt is not None and flags & w.END_STREAM:
                    fail(wt, "stream ended by the server (trailers)")
            elif ftype == w.RST_STREAM:
                wt = c.streams.get(sid)
                if wt is not None:
                    fail(wt, "RST_STREAM %d" % int.from_bytes(payload[:4], "big"))
            elif ftype == w.SETTINGS and not flags & w.ACK:
                out += w.h2_frame(w.SETTINGS, w.ACK, 0)
            elif ftype == w.PING and not flags & w.ACK:
                out += w.h2_frame(w.PING, w.ACK, 0, payload)
            elif ftype == w.GOAWAY:
                gone(c, "GOAWAY code %d" % int.from_bytes(payload[4:8], "big"))
                return
        del buf[:i]
        if c.unacked > 1 << 30:
            out += w.h2_frame(w.WINDOW_UPDATE, 0, 0, struct.pack(">I", c.unacked))
            c.unacked = 0
        if out:
            c.sock.sendall(out)

    def pump(until, deadline, idle=None):
        while not until():
            now = time.monotonic()
            if now >= deadline or not sel.get_map():
                return
            if idle is not None and state["first"] is not None and now - state["last_rx"] > idle:
                return
            for key, _ in sel.select(timeout=0.2):
                on_readable(key.data)

    start = time.monotonic()
    pump(lambda: all(wt.created or wt.bad for wt in watchers), start + opts.timeout)
    cpu_ready = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    print(json.dumps({"ready": state["created"], "failed": state["failed"],
                      "setup_s": time.monotonic() - start}), flush=True)
    ready = time.monotonic()
    pump(lambda: state["complete"] + state["failed_early"] >= len(watchers), ready + opts.timeout,
         idle=5.0)
    cpu_end = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    counts = [wt.count for wt in watchers]
    reasons = collections.Counter(wt.bad for wt in watchers if wt.bad)
    done = [wt.done_at for wt in watchers if wt.done_at is not None]
    print(json.dumps({
        "watchers": len(watchers), "created": state["created"], "complete": state["complete"],
        "min": min(counts), "max": max(counts), "events": state["events"], "msgs": state["msgs"],
        "first": state["first"], "last": max(done) if done else None,
        "sampled": state["sampled"], "failed": sum(reasons.values()),
        "reasons": reasons.most_common(3), "cpu": cpu_end - cpu_ready}), flush=True)
    for c in conns:
        c.sock.close()


def helper_entry(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--watch-helper", action="store_true")
    for name, typ in (("port", int), ("conns", int), ("per-conn", int), ("events", int),
                      ("size", int), ("timeout", float), ("prefix", str), ("key-prefix", str),
                      ("seed", str)):
        ap.add_argument("--" + name, type=typ, required=True)
    opts = ap.parse_args(argv)
    try:
        watch_helper(opts)
    except Exception:  # noqa: BLE001 - reported to the parent, which fails the cell
        print(json.dumps({"error": traceback.format_exc()[-800:]}), flush=True)


# ---------------------------------------------------------------------------------------------
# the cells (each returns a dict; "bad" is None or why the cell failed)


class Helper:
    def __init__(self, argv):
        self.proc = harness.spawn_pipe([sys.executable, os.path.abspath(__file__)] + argv)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.decode(errors="replace"))
        self.lines.put(None)

    def next(self, timeout):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return {"error": "no answer in %.0f s" % timeout}
        if line is None:
            return {"error": "helper exited (%s)" % self.proc.poll()}
        return json.loads(line)

    def stop(self):
        harness.stop(self.proc)


def at_rest_check(etcd, p, key, plaintext):
    """The value as etcd stores it: aesgcm ciphertext behind the proxy, else the plaintext."""
    kvs = w.range_response_kvs(pb.unary(etcd.port, "Range", w.range_request(key)))
    stored = kvs[0][1] if kvs else None
    if p.range_prefix == RANGE_PREFIXES["enc"]:
        if not stored or not stored.startswith(harness.AESGCM_PREFIX):
            return "value at rest is not aesgcm ciphertext: %r" % (stored or b"")[:30]
    elif stored != plaintext:
        return "value at rest is not the plaintext put"
    return None


def watch_cell(args, etcd, p, seq):
    nw, nconn, nproc, nev = args.watchers, args.watch_conns, args.watch_procs, args.puts
    seed = "%d-%d" % (os.getpid(), seq)
    helpers = [Helper(["--watch-helper", "--port", str(p.port), "--conns", str(nconn // nproc),
                       "--per-conn", str(nw // nconn), "--events", str(nev),
                       "--size", str(args.watch_size), "--timeout", "120",
                       "--prefix", WATCH_PREFIX, "--key-prefix", WATCH_KEYS, "--seed", seed])
               for _ in range(nproc)]
    res = {"bad": None}
    try:
        ready = [h.next(150) for h in helpers]
        bad = next((r["error"] for r in ready if "error" in r), None)
        created = sum(r.get("ready", 0) for r in ready)
        if bad is None and created != nw:
            bad = "only %d of %d watchers created" % (created, nw)
        if bad:
            res["bad"] = "watch setup: " + bad.strip().splitlines()[-1]
            return res
        res["setup_s"] = max(r["setup_s"] for r in ready)
        with channel(p.port) as ch:
            put = ch.unary_unary("/etcdserverpb.KV/Put")
            # connects the writer's channel outside the window; a Range makes no event
            ch.unary_unary("/etcdserverpb.KV/Range")(w.range_request(WATCH_KEYS), timeout=30)
            cpu0 = pb.cpu_seconds(p.pid)
            with RssPeak(p.pid) as rss:
                t0 = time.monotonic()
                for i in range(nev):
                    put(w.put_request("%sk%04d" % (WATCH_KEYS, i),
                                      watch_value(seed.encode(), i, args.watch_size)), timeout=60)
                res["put_s"] = time.monotonic() - t0
                out = [h.next(180) for h in helpers]
            cpu = pb.cpu_seconds(p.pid) - cpu0
        bad = next((r["error"] for r in out if "error" in r), None)
        if bad:
            res["bad"] = "watch helper: " + bad.strip().splitlines()[-1]
            return res
        complete = sum(r["complete"] for r in out)
        lo, hi = min(r["min"] for r in out), max(r["max"] for r in out)
        sampled = sum(r["sampled"] for r in out)
        reasons = [why for r in out for why, _ in r["reasons"]]
        last = [r["last"] for r in out if r["last"] is not None]
        if reasons:
            res["bad"] = "%d watchers failed: %s" % (sum(r["failed"] for r in out), reasons[0])
        elif complete != nw or lo != nev or hi != nev:
            res["bad"] = "%d of %d watchers got all %d events (min %d, max %d)" % (
                complete, nw, nev, lo, hi)
        elif sampled != nconn * nev:
            res["bad"] = "sampled %d events, want %d" % (sampled, nconn * nev)
        else:
            res["bad"] = at_rest_check(etcd, p, "%sk%04d" % (WATCH_KEYS, 0),
                                       watch_value(seed.encode(), 0, args.watch_size))
        span = (max(last) - t0) if len(last) == nproc else float("nan")
        total = sum(r["events"] for r in out)
        res.update(metric=nw * nev / span, span=span, cpu=cpu, ops=total,
                   cpu_per_op=cpu / total * 1e6 if total else float("nan"),
                   rss_before=rss.before, rss_peak=rss.peak,
                   loadgen=sum(r["cpu"] for r in out) / span, msgs=sum(r["msgs"] for r in out),
                   note="%d/%d watchers x %d/%d events, %d sampled events = plaintext put; "
                        "%.1f events per message; loadgen %.2f cores (%d procs); Puts %.2f s"
                        % (complete, nw, lo, nev, sampled,
                           total / max(1, sum(r["msgs"] for r in out)),
                           sum(r["cpu"] for r in out) / span, nproc, res["put_s"]))
        return res
    finally:
        for h in helpers:
            h.stop()


def list_cell(args, p, values, limit):
    prefix = p.range_prefix + LIST_SUB
    start, end = prefix.encode(), w.prefix_end(prefix)
    res = {"bad": None}
    with channel(p.port) as ch:
        rng = ch.unary_unary("/etcdserverpb.KV/Range")
        # connects outside the window, and counts the keys
        for num, _, val in w.parse_fields(rng(w.range_request(start, end, count_only=True),
                                              timeout=60)):
            if num == 4 and val != len(values):
                res["bad"] = "count_only says %d keys, want %d" % (val, len(values))
        cpu0 = pb.cpu_seconds(p.pid)
        pages, kvs = 0, []
        with RssPeak(p.pid) as rss:
            t0 = time.monotonic()
            if not limit:
                msg = rng(w.range_request(start, end), timeout=300)
                pages = 1
            else:
                key, rev, more = start, 0, True
                while more:
                    req = w.range_request(key, end, limit=limit)
                    m = rng(req + (w.field_varint(4, rev) if rev else b""), timeout=120)
                    rev = rev or w.response_revision(m)
                    page = w.range_response_kvs(m)
                    more = range_more(m)
                    pages += 1
                    if len(page) > limit or (more and not page):
                        res["bad"] = "page %d has %d kvs (limit %d)" % (pages, len(page), limit)
                        break
                    kvs += page
                    if page:
                        key = page[-1][0] + b"\0"
            elapsed = time.monotonic() - t0
        cpu = pb.cpu_seconds(p.pid) - cpu0
    if not limit:
        kvs = w.range_response_kvs(msg)
    n = len(prefix) + 1
    seen = set()
    for k, v in kvs:
        i = int(k[n:]) if k.startswith(start) else -1
        if i < 0 or i >= len(values) or values[i] != v or i in seen:
            res["bad"] = res["bad"] or "wrong or repeated kv %r (%d bytes)" % (k, len(v))
            break
        seen.add(i)
    if len(seen) != len(values):
        res["bad"] = res["bad"] or "%d of %d values returned" % (len(seen), len(values))
    res.update(metric=elapsed * 1e3, cpu=cpu, ops=1, cpu_per_op=cpu * 1e3,
               rss_before=rss.before, rss_peak=rss.peak,
               note="%d/%d values = what was put, %d page%s" % (
                   len(seen), len(values), pages, "s" if pages > 1 else ""))
    return res


def streams_cell(args, etcd, p, body, values1, log_file):
    res = {"bad": pb.spot_check(p, 1, values1)}
    h0 = etcd_grpc_handled(etcd.port, "Range")
    cpu0 = pb.cpu_seconds(p.pid)
    with RssPeak(p.pid) as rss:
        rps, ok, started, p50, p99 = pb.h2load(p.port, body, args.clients, args.streams,
                                               args.seconds, log_file, "/etcdserverpb.KV/Range")
    cpu = pb.cpu_seconds(p.pid) - cpu0
    h1 = etcd_grpc_handled(etcd.port, "Range")
    # Every HTTP 200 that h2load counted must be a Range etcd answered OK (an error made by the
    # proxy itself never reaches etcd; one from etcd is counted under its code). Calls still in
    # flight when h2load stops are reset by it: etcd counts those as Unknown/Canceled, so a few
    # non-OK codes are expected, at most started - succeeded of them.
    delta = {code: h1[code] - h0[code] for code in h1 if h1[code] != h0[code]}
    good = delta.pop("OK", 0)
    other = sum(delta.values())
    if good < ok:
        res["bad"] = "etcd answered %d Ranges OK but h2load counted %d HTTP OK" % (good, ok)
    elif good + other > started + 10:
        res["bad"] = "etcd handled %d Ranges, h2load started %d" % (good + other, started)
    elif other > started - ok:
        res["bad"] = "etcd answered %s, more than the %d calls h2load left unfinished" % (
            delta, started - ok)
    res["bad"] = res["bad"] or pb.spot_check(p, 1, values1)
    n = args.clients * args.streams
    per = ((rss.peak - rss.before) / n) if p.pid else None
    res.update(metric=rps, p50=p50, p99=p99, cpu=cpu, ops=ok,
               cpu_per_op=cpu / ok * 1e6 if ok else float("nan"),
               rss_before=rss.before, rss_peak=rss.peak, per_stream=per,
               note="req/s x p50 = %.0f in flight; h2load %d HTTP OK of %d started, etcd %d "
                    "Ranges OK, %s (reset at h2load's stop); Range before and after = the value "
                    "put" % (rps * p50 / 1e3, ok, started, good,
                        ", ".join("%d %s" % (n, c) for c, n in sorted(delta.items()))
                        or "0 other"))
    return res


# ---------------------------------------------------------------------------------------------
# the run


def workloads(args):
    # streams first: it is the one whose memory per stream needs a process that has not yet
    # grown its heap for a 40 MiB LIST
    return [
        ("streams", "%d streams (h2load -c %d -m %d), Range 1 key" % (
            args.clients * args.streams, args.clients, args.streams)),
        ("watch", "Watch fan-out: %d watchers / %d conns, %d Puts x %d B" % (
            args.watchers, args.watch_conns, args.puts, args.watch_size)),
        ("list", "LIST %d x %d B, one Range" % (args.list_keys, args.list_size)),
        ("paged", "LIST %d x %d B, limit %d" % (args.list_keys, args.list_size, args.page)),
    ]


def start_servers(d, args, etcd, config):
    """The aesgcm proxy and nghttpx, as proxy_bench.py starts them, plus the stream limits."""
    with server_flags(["--max-concurrent-streams", str(args.conn_streams)],
                      ["--frontend-http2-max-concurrent-streams=%d" % args.conn_streams]):
        proxy = pb.start_proxy(d, etcd, args, "proxy aesgcm", config, RANGE_PREFIXES["enc"])
        _, paths = pb.finish_paths(d, args, etcd, [proxy])
    return paths


def stop_servers(paths):
    for p in paths:
        for proc in [q for q in harness._procs if p.pid is not None and q.pid == p.pid]:
            harness.stop(proc)


def idle_rss(pid):
    return (rss_kib(pid), rss_kib(pid, "RssAnon"))


def run(args):
    d = harness.workdir("ep-scale")
    etcd = harness.Etcd(d, extra_args=["--quota-backend-bytes", str(8 << 30)]).start()
    direct = pb.Path("etcd direct", etcd.port, range_prefix=RANGE_PREFIXES["plain"])
    config = os.path.join(d, "aesgcm.yaml")
    harness.write_encryption_config(config, "aesgcm")
    # The one key of the streams workload (the ciphertext made by the CLI, written straight
    # into etcd), and the LIST keys (ciphertext written through a proxy of its own, stopped
    # before the measured ones start: each round starts a fresh proxy and nghttpx, so that
    # every round measures idle memory and memory per stream from a process that served
    # nothing yet).
    value1 = os.urandom(1024)
    values1 = {}
    for prefix in RANGE_PREFIXES.values():
        key = prefix + "k000"
        stored = value1
        if prefix == RANGE_PREFIXES["enc"]:
            rc, stored, err = harness.cli("encrypt", config, key, value1)
            if rc:
                raise RuntimeError("etcd-encrypt-proxy encrypt: " + err)
        pb.unary(etcd.port, "Put", w.put_request(key, stored))
        values1[key.encode()] = value1
    t = time.monotonic()
    values = [os.urandom(args.list_size) for _ in range(args.list_keys)]
    writer = pb.start_proxy(d, etcd, args, "populate", config, RANGE_PREFIXES["enc"])
    bulk_put(etcd.port, ((list_key(RANGE_PREFIXES["plain"], i), v) for i, v in enumerate(values)))
    if not writer.error:
        bulk_put(writer.port, ((list_key(RANGE_PREFIXES["enc"], i), v)
                               for i, v in enumerate(values)))
    stop_servers([writer])
    print("populated %d x 2 LIST keys in %.1f s" % (args.list_keys, time.monotonic() - t),
          file=sys.stderr, flush=True)
    bodies = {}
    for prefix in RANGE_PREFIXES.values():
        bodies[prefix] = os.path.join(d, "body-%d.bin" % len(bodies))
        with open(bodies[prefix], "wb") as f:
            f.write(w.grpc_frame(pb.range_body(prefix, 1)))
    names, errors, idle, cells, seq = [direct.name], {}, {}, {}, 0
    for rnd in range(args.rounds):
        servers = start_servers(d, args, etcd, config)
        for p in servers:
            if p.name not in names:
                names.append(p.name)
            if p.error:
                errors.setdefault(p.name, p.error)
        time.sleep(1.0)
        for p in servers:
            if not p.error:
                idle.setdefault(p.name, {}).setdefault("start", []).append(idle_rss(p.pid))
        for p in servers:
            if not p.error:
                bad = pb.spot_check(p, 1, values1)
                if bad:
                    p.error = "first Range: " + bad
                    errors.setdefault(p.name, p.error)
                idle[p.name].setdefault("one", []).append(idle_rss(p.pid))
        live = [direct] + [p for p in servers if not p.error]
        for kind, name in workloads(args):
            for p in live[rnd % len(live):] + live[:rnd % len(live)]:
                pb.reclaim(etcd.port)
                seq += 1
                try:
                    if kind == "watch":
                        r = watch_cell(args, etcd, p, seq)
                    elif kind in ("list", "paged"):
                        r = list_cell(args, p, values, args.page if kind == "paged" else 0)
                    else:
                        r = streams_cell(args, etcd, p, bodies[p.range_prefix], values1,
                                         os.path.join(d, "h2load.log"))
                except Exception as e:  # noqa: BLE001 - a failed cell, the run goes on
                    r = {"bad": "%s: %s" % (type(e).__name__, str(e).splitlines()[0][:200])}
                cells.setdefault((kind, p.name), []).append(r)
                print("round %d  %-8s %-14s %s%s" % (
                    rnd + 1, kind, p.name,
                    ("%.0f" % r["metric"]) if "metric" in r else "-",
                    ("  FAILED: " + r["bad"]) if r["bad"] else ""), file=sys.stderr, flush=True)
            if kind == "streams" or kind == workloads(args)[-1][0]:
                time.sleep(2.0)
                for p in live[1:]:
                    idle[p.name].setdefault("after " + kind, []).append(idle_rss(p.pid))
        stop_servers(servers)
    return names, errors, cells, idle


def mib(kib):
    return "%.1f" % (kib / 1024.0) if kib is not None else ""


def report(args, names, errors, cells, idle):
    out = []
    out.append("# etcd-encrypt-proxy scale benchmark, %s" %
               datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
    out.append("")
    out.append(
        "%d cores; %s; proxy (aesgcm) and nghttpx with %d workers, started afresh each round, "
        "per-connection stream limit %d (proxy --max-concurrent-streams, nghttpx "
        "--frontend-http2-max-concurrent-streams); %d interleaved round%s, medians. x direct = "
        "speed relative to etcd direct (1/time for LIST). CPU = the proxy's / nghttpx's "
        "utime+stime (10 ms ticks) per delivered event, per LIST, per request. RSS = VmRSS "
        "before the cell -> peak during it (10 ms samples)." % (
            os.cpu_count(), subprocess.run([harness.ETCD, "--version"], capture_output=True)
            .stdout.decode().splitlines()[0], args.workers, args.conn_streams, args.rounds,
            "s" if args.rounds > 1 else ""))
    out.append("")
    out.append("| workload | path | result | x direct | p50 ms | p99 ms | CPU | RSS MiB | verified |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    failed = False
    units = {"watch": ("%.0f events/s", "%.2f us/event"), "list": ("%.0f ms", "%.0f ms/LIST"),
             "paged": ("%.0f ms", "%.0f ms/LIST"), "streams": ("%.0f req/s", "%.1f us/req")}
    for kind, name in workloads(args):
        direct = [r["metric"] for r in cells.get((kind, "etcd direct"), []) if "metric" in r]
        base = statistics.median(direct) if direct else None
        for pname in names:
            server = pname != "etcd direct"
            runs = cells.get((kind, pname))
            if not runs:
                out.append("| %s | %s | n/a | | | | | | %s |" % (
                    name, pname, errors.get(pname, "not run")))
                failed = True
                continue
            bad = [r["bad"] for r in runs if r["bad"]]
            failed |= bool(bad)
            good = [r for r in runs if "metric" in r]
            if not good:
                out.append("| %s | %s | n/a | | | | | | FAILED: %s |" % (name, pname, bad[0]))
                continue
            med = lambda k: statistics.median(r[k] for r in good)  # noqa: E731
            metric = med("metric")
            ratio = ""
            if base:
                ratio = "%.2fx" % ((base / metric) if kind in ("list", "paged") else (metric / base))
            cpu = (units[kind][1] % med("cpu_per_op")) if server else ""
            rss = ("%s -> %s" % (mib(med("rss_before")), mib(med("rss_peak")))) if server else ""
            if kind == "streams" and server:
                rss += " (%.2f KiB/stream)" % med("per_stream")
            out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                name, pname, units[kind][0] % metric, ratio,
                "%.2f" % med("p50") if "p50" in good[0] else "",
                "%.2f" % med("p99") if "p99" in good[0] else "", cpu, rss,
                ("FAILED: " + bad[0]) if bad else "ok: " + good[-1]["note"]))
    out.append("")
    out.append("Idle memory, MiB: VmRSS (RssAnon), median of the rounds (each round starts the "
               "servers afresh). Target for the proxy: VmRSS <= 8 MiB after start, after one "
               "request and 2 s after the streams load.")
    out.append("")
    cols = ["start", "one", "after streams", "after " + workloads(args)[-1][0]]
    out.append("| path | after start | after 1 Range | 2 s after the streams load | "
               "2 s after the round's last cell (LIST) | target |")
    out.append("|---|---|---|---|---|---|")
    for pname in names[1:]:
        i = idle.get(pname)
        if not i:
            out.append("| %s | n/a (%s) | | | | |" % (pname, errors.get(pname)))
            failed = True
            continue
        meds = {}
        for c in cols:
            vals = [v for v in i.get(c, []) if v[0] is not None]
            if vals:
                meds[c] = (statistics.median(v[0] for v in vals),
                           statistics.median(v[1] for v in vals if v[1] is not None))
        target = ""
        if pname.startswith("proxy"):
            worst = max(meds[c][0] for c in cols[:3] if c in meds)
            target = "ok" if worst <= 8 * 1024 else "over: %s MiB" % mib(worst)
        out.append("| %s | %s | %s |" % (pname, " | ".join(
            ("%s (%s)" % (mib(meds[c][0]), mib(meds[c][1]))) if c in meds else "" for c in cols),
            target))
    text = "\n".join(out)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n\n")
    return failed


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--watch-helper":
        helper_entry(sys.argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--watchers", type=int, default=1000)
    ap.add_argument("--watch-conns", type=int, default=20, help="HTTP/2 connections of the watchers")
    ap.add_argument("--watch-procs", type=int, default=2, help="helper processes holding them")
    ap.add_argument("--puts", type=int, default=300, help="Puts seen by every watcher")
    ap.add_argument("--watch-size", type=int, default=1024)
    ap.add_argument("--list-keys", type=int, default=10000)
    ap.add_argument("--list-size", type=int, default=4096)
    ap.add_argument("--page", type=int, default=500, help="limit of the paged LIST")
    ap.add_argument("--clients", type=int, default=100, help="h2load -c")
    ap.add_argument("--streams", type=int, default=100, help="h2load -m")
    ap.add_argument("--seconds", type=float, default=3.0, help="h2load -D")
    ap.add_argument("--conn-streams", type=int, default=128,
                    help="per-connection stream limit given to the proxy and nghttpx")
    ap.add_argument("--binary", default=os.environ.get("EP_BINARY") or
                    os.path.join(HERE, "..", "build", "etcd-encrypt-proxy"))
    ap.add_argument("--out", help="append the report (markdown) to this file")
    args = ap.parse_args()
    if args.watchers % args.watch_conns or args.watch_conns % args.watch_procs:
        ap.error("--watchers must be a multiple of --watch-conns, and it of --watch-procs")
    if max(args.streams, args.watchers // args.watch_conns) > args.conn_streams:
        ap.error("--conn-streams must be at least --streams and --watchers / --watch-conns")
    os.environ["EP_BINARY"] = args.binary  # what harness.Proxy and harness.cli start
    started = time.monotonic()
    try:
        failed = report(args, *run(args))
    finally:
        harness.cleanup()
    print("\n(total %.0f s)" % (time.monotonic() - started), file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
