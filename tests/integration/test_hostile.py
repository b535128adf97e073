"""Hostile clients (and a stalled etcd) against the proxy, with a raw HTTP/2 peer that controls
framing exactly (h2peer.py). Each case is one of the ways a single client could once take the
proxy away from everyone; after each, other clients must still be served and memory must stay
bounded.

Real etcd on loopback, the real proxy with one worker (so the attacker shares the worker, and
its etcd connection, with the victims), etcdctl and python3-etcd3 as the victims.
"""

import os
import signal
import socket
import struct
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdwire as w  # noqa: E402
import h2peer  # noqa: E402
import harness  # noqa: E402

# ASan keeps freed blocks in quarantine (256 MB by default), which would hide what the proxy
# really holds; a small quarantine keeps RSS meaningful under the sanitized build.
os.environ["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=8"
SANITIZED = "asan" in harness.binary()
MB = 1 << 20

etcd3 = harness.import_etcd3()
suite = harness.Suite("hostile")
d = harness.workdir()
config = os.path.join(d, "enc.yaml")
harness.write_encryption_config(config)
etcd = harness.Etcd(d)
suite.logs.append(etcd.log)


def start_proxy(extra=(), prefix=()):
    p = harness.Proxy(d, [etcd.url], config, workers=1, extra=extra)
    suite.logs.append(p.log)
    if prefix:
        p.proc = harness.spawn(list(prefix) + p.args(), p.log)
        if not harness.wait_for(lambda: harness.tcp_accepts(p.port), 15):
            raise RuntimeError("proxy did not start:\n" + harness.log_tail(p.log))
        return p
    return p.start()


try:
    etcd.start()
    proxy = start_proxy()
except Exception as e:  # noqa: BLE001
    suite.check("etcd and proxy start", False, e)
    suite.finish()


def rss(p):
    with open("/proc/%d/status" % p.proc.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(p):
    with open("/proc/%d/stat" % p.proc.pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def victim_ok(p, what, timeout=5):
    """A victim client's put and get through |p| succeed within |timeout| seconds."""
    started = time.monotonic()
    key = "/registry/secrets/victim/%s" % what.replace(" ", "-")
    put = p.ctl("put", key, "v", timeout=timeout + 5)
    got = p.ctl("get", key, "--print-value-only", timeout=timeout + 5)
    took = time.monotonic() - started
    out = got.stdout.decode() if isinstance(got.stdout, bytes) else got.stdout
    ok = put.returncode == 0 and out.strip() == "v" and took < timeout and p.alive()
    suite.check("other clients served %s (%.1f s)" % (what, took), ok,
                "alive=%s put=%r get=%r" % (p.alive(), put.stderr[-200:], got.stdout[-200:]))


def watch_create(key, range_end=b""):
    create = w.field_bytes(1, key) + (w.field_bytes(2, range_end) if range_end else b"")
    return w.field_bytes(1, create)


def rss_bound(mb):
    return (mb * 3 if SANITIZED else mb) * MB


# ---------------------------------------------------------------------------------------------


def request_flow_control():
    """etcd stops reading; a client streams Watch requests whose every frame ends one byte into
    the next message, and never reads. The proxy must close the client's window (it once
    acknowledged every frame ending inside a message, queueing without bound)."""
    msg = w.grpc_frame(watch_create(b"/registry/secrets/flood/" + b"k" * 1000))
    chunks = h2peer.cut_inside_messages(msg * 1000)
    peer = h2peer.Peer(proxy.port, settings=[(h2peer.SETTINGS_INITIAL_WINDOW_SIZE, 0)])
    peer.open(1, "/etcdserverpb.Watch/Watch")
    base = rss(proxy)
    os.kill(etcd.proc.pid, signal.SIGSTOP)
    sent, blocked, peak = 0, False, base
    try:
        deadline = time.monotonic() + 40
        while not blocked and sent < 300 * MB and time.monotonic() < deadline:
            for c in chunks:
                if not peer.data(1, c, wait=3):
                    blocked = True
                    break
                sent += len(c)
        peak = rss(proxy)
    finally:
        os.kill(etcd.proc.pid, signal.SIGCONT)
    suite.check("client's window closes while etcd does not read (accepted %.1f MB)" % (sent / MB),
                blocked and sent < 48 * MB, "blocked=%s" % blocked)
    suite.check("proxy memory bounded (+%.1f MB)" % ((peak - base) / MB),
                peak - base < rss_bound(48))
    peer.close()
    victim_ok(proxy, "after a request flood against a stalled etcd", timeout=20)


def stalled_watchers(rounds, watchers, values):
    """|watchers| raw clients watch a prefix with a window of 0 forever while a writer puts
    |values| values of 16,300 bytes there: each event message ends a few bytes past etcd's first
    16 KiB DATA frame, so nearly all of it arrives in a frame that ends inside the message.
    Returns the peak RSS growth. The peers disconnect at the end of each round."""
    prefix = b"/registry/secrets/stall/"
    base, peak = rss(proxy), 0
    writer = etcd3.client("127.0.0.1", proxy.port, timeout=20)
    value = os.urandom(8150).hex().encode()
    try:
        for r in range(rounds):
            peers = []
            for _ in range(watchers):
                p = h2peer.Peer(proxy.port, settings=[(h2peer.SETTINGS_INITIAL_WINDOW_SIZE, 0)])
                p.open(1, "/etcdserverpb.Watch/Watch")
                p.data(1, w.grpc_frame(watch_create(prefix, w.prefix_end(prefix))))
                peers.append(p)
            time.sleep(0.5)
            for i in range(values):
                writer.put((prefix + b"r%d-%d" % (r, i % 50)).decode(), value)
            time.sleep(0.5)
            peak = max(peak, rss(proxy) - base)
            for p in peers:
                p.close()
            time.sleep(0.3)
    finally:
        writer.close()
    return peak


def response_flow_control():
    growth = stalled_watchers(1, 8, 600)
    suite.check("8 stalled watchers of 10 MB each: proxy memory bounded (+%.1f MB)" % (growth / MB),
                growth < rss_bound(40))
    victim_ok(proxy, "while and after watchers stall")


def upstream_window_survives():
    """Rounds of stalled watchers that then disconnect: every byte etcd sent them must be given
    back to the shared etcd connection's window, or every response stops for good."""
    stalled_watchers(4, 16, 150)
    started = time.monotonic()
    res = proxy.ctl("get", "/registry/secrets/stall/", "--prefix", "--limit", "60", "-w", "json",
                    timeout=30)
    took = time.monotonic() - started
    suite.check("a 1 MB Range through the same worker after 64 stalled watchers left (%.1f s)"
                % took, res.returncode == 0 and took < 10, res.stderr[-300:])
    victim_ok(proxy, "after stalled watchers left")


def hpack_str(s):
    s = s.encode()
    return w._hpack_int(len(s), 7, 0) + s


def hpack_bomb():
    """A 4 KiB header put in the dynamic table, then referenced 130,000 times in one block of
    ~134 KB (HEADERS + 8 CONTINUATION): the decoded list is bounded as it arrives and the call
    gets RESOURCE_EXHAUSTED."""
    base = rss(proxy)
    peer = h2peer.Peer(proxy.port)
    insert = b"\x40" + hpack_str("x-bomb") + hpack_str("b" * 4000)  # incremental indexing: 62
    for i, sid in enumerate((1, 3, 5, 7)):
        block = w.grpc_request_headers("/etcdserverpb.KV/Range")
        block += (insert if i == 0 else b"") + b"\xbe" * 130000
        peer.headers_block(sid, block)
    statuses = [peer.grpc_status(sid) for sid in (1, 3, 5, 7)]
    growth = rss(proxy) - base
    suite.check("HPACK bomb answered RESOURCE_EXHAUSTED naming the limit",
                all(s and s[0] == 8 and "header list exceeds" in s[1] for s in statuses),
                statuses)
    suite.check("HPACK bomb: proxy memory bounded (+%.1f MB)" % (growth / MB),
                growth < rss_bound(16))
    peer.close()
    victim_ok(proxy, "after an HPACK bomb")

    flood = h2peer.Peer(proxy.port)
    flood.frame(w.HEADERS, 0, 1, w.grpc_request_headers("/etcdserverpb.KV/Range"))
    try:
        for _ in range(200):
            flood.frame(h2peer.CONTINUATION, 0, 1, b"\x82" * 100)  # a valid static index
    except OSError:
        pass
    suite.check("CONTINUATION flood: GOAWAY (nghttp2's PROTOCOL_ERROR or ENHANCE_YOUR_CALM) and "
                "closed", flood.wait_closed(10) and flood.goaway is not None
                and flood.goaway[1] in (h2peer.ENHANCE_YOUR_CALM, h2peer.PROTOCOL_ERROR),
                flood.goaway)
    flood.close()
    victim_ok(proxy, "after a CONTINUATION flood")


def short_header_streams(announced, n=2000, batch=400):
    """|n| Range streams each sending a 5-byte gRPC header announcing |announced| bytes, then
    ending. Returns (proxy CPU seconds used, statuses seen)."""
    peer = h2peer.Peer(proxy.port)
    hdr = struct.pack(">BI", 0, announced)
    cpu0, statuses, sid = cpu_seconds(proxy), set(), 1
    for start in range(0, n, batch):
        ids = []
        for _ in range(batch):
            peer.open(sid, "/etcdserverpb.KV/Range")
            peer.data(sid, hdr, end_stream=True)
            ids.append(sid)
            sid += 2
        for s in ids:
            st = peer.grpc_status(s)
            statuses.add(st[0] if isinstance(st, tuple) else st)
    cpu = cpu_seconds(proxy) - cpu0
    peer.close()
    return cpu, statuses


def five_byte_headers():
    small_cpu, small = short_header_streams(10)
    big_cpu, big = short_header_streams(1600 * 1024)
    suite.check("a 5-byte header announcing 1.6 MB costs about what one announcing 10 bytes costs "
                "(%.2f s against %.2f s for 2000 streams)" % (big_cpu, small_cpu),
                big_cpu < 2 * small_cpu + 0.3)
    suite.check("each such stream ends with INTERNAL (request ended inside a message)",
                big == {13} and small == {13}, (big, small))
    victim_ok(proxy, "after 4000 truncated-message streams")


def empty_data_flood():
    peer = h2peer.Peer(proxy.port)
    peer.open(1, "/etcdserverpb.Watch/Watch")
    frames = w.h2_frame(w.DATA, 0, 1) * 5000
    result = {}

    def victim():
        started = time.monotonic()
        res = proxy.ctl("get", "/registry/secrets/victim/x", timeout=20)
        result["took"], result["rc"] = time.monotonic() - started, res.returncode

    t = threading.Thread(target=victim)
    t.start()
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline and peer.goaway is None and not peer.closed:
            peer.send(frames)
    except OSError:
        pass
    t.join(30)
    peer.wait_closed(5)
    suite.check("empty DATA flood: GOAWAY ENHANCE_YOUR_CALM and closed",
                peer.goaway is not None and peer.goaway[1] == h2peer.ENHANCE_YOUR_CALM
                and peer.closed, peer.goaway)
    suite.check("a victim's get during the flood (%.1f s)" % result.get("took", -1),
                result.get("rc") == 0 and result.get("took", 99) < 5, result)
    peer.close()


def etcd_watch_streams_started():
    with urllib.request.urlopen(etcd.url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("grpc_server_started_total") and 'grpc_method="Watch"' in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def reset_floods():
    """Rapid Reset (HEADERS + RST_STREAM) and MadeYouReset (HEADERS + a WINDOW_UPDATE that
    overflows the stream's window, which nghttp2 answers with its own RST_STREAM
    FLOW_CONTROL_ERROR): both are counted, and the offender gets
    GOAWAY(ENHANCE_YOUR_CALM) long before it has started many calls in etcd."""
    for name, tail in (("Rapid Reset", lambda sid: w.h2_frame(w.RST_STREAM, 0, sid,
                                                              struct.pack(">I", 8))),
                       ("MadeYouReset", lambda sid: w.h2_frame(w.WINDOW_UPDATE, 0, sid,
                                                               struct.pack(">I", 0x7FFFFFFF)))):
        before = etcd_watch_streams_started()
        peer = h2peer.Peer(proxy.port)
        hdrs = w.grpc_request_headers("/etcdserverpb.Watch/Watch")
        sid, deadline = 1, time.monotonic() + 15
        try:
            while sid < 280000 and peer.goaway is None and time.monotonic() < deadline:
                batch = b""
                for _ in range(200):
                    batch += w.h2_frame(w.HEADERS, w.END_HEADERS, sid, hdrs) + tail(sid)
                    sid += 2
                peer.send(batch)
        except OSError:
            pass
        peer.wait_closed(5)
        time.sleep(1)
        started = etcd_watch_streams_started() - before
        # nghttp2 may stop resetting first and refuse the connection for opening streams past
        # SETTINGS_MAX_CONCURRENT_STREAMS (PROTOCOL_ERROR): that closes the offender too
        suite.check("%s: GOAWAY ENHANCE_YOUR_CALM (or PROTOCOL_ERROR) after %d streams"
                    % (name, sid // 2), peer.goaway is not None and peer.goaway[1] in
                    (h2peer.ENHANCE_YOUR_CALM, h2peer.PROTOCOL_ERROR), peer.goaway)
        suite.check("%s: no call reached etcd (%d): streams that carry nothing never start"
                    % (name, started), started < 10)
        peer.close()
        victim_ok(proxy, "after " + name)


def control_floods():
    """SETTINGS and PING floods from a peer that never reads the acknowledgements, and a frame
    larger than the SETTINGS_MAX_FRAME_SIZE the proxy allows."""
    for name, frame in (("SETTINGS", w.h2_frame(w.SETTINGS, 0, 0)),
                        ("PING", w.h2_frame(w.PING, 0, 0, b"12345678"))):
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
        started, closed = time.monotonic(), False
        try:
            s.sendall(w.PREFACE + w.h2_frame(w.SETTINGS, 0, 0))
            while time.monotonic() - started < 15:
                s.sendall(frame * 1000)
        except OSError:
            closed = True
        s.close()
        suite.check("%s flood: the connection is closed (%.1f s)" % (name, time.monotonic() - started),
                    closed)
        victim_ok(proxy, "after a %s flood" % name)

    peer = h2peer.Peer(proxy.port)
    peer.open(1, "/etcdserverpb.KV/Range")
    peer.send(struct.pack(">I", 20000)[1:] + struct.pack(">BBI", w.DATA, 0, 1) + b"x" * 20000)
    peer.wait_closed(5)
    suite.check("a 20,000-byte frame: GOAWAY FRAME_SIZE_ERROR and closed",
                peer.goaway is not None and peer.goaway[1] == 6 and peer.closed, peer.goaway)
    peer.close()


def abandoned_streams():
    """10,000 streams opened (a Range each, its message never sent) on 10 connections, then the
    connections vanish: the proxy lets go of all of them (memory and etcd's streams)."""
    base_rss, base_fds = rss(proxy), len(os.listdir("/proc/%d/fd" % proxy.proc.pid))
    peers = []
    for _ in range(10):
        p = h2peer.Peer(proxy.port)
        batch = b""
        for i in range(1000):
            batch += w.h2_frame(w.HEADERS, w.END_HEADERS, 1 + 2 * i,
                                w.grpc_request_headers("/etcdserverpb.KV/Range"))
        p.send(batch)
        peers.append(p)
    time.sleep(2)
    held = rss(proxy)
    victim_ok(proxy, "while 10,000 streams are open")
    for p in peers:
        p.close()
    harness.wait_for(lambda: rss(proxy) < held, 10, 0.5)
    time.sleep(2)
    fds = len(os.listdir("/proc/%d/fd" % proxy.proc.pid))
    suite.check("10,000 abandoned streams: held +%.1f MB, +%.1f MB once they left; fds %d -> %d"
                % ((held - base_rss) / MB, (rss(proxy) - base_rss) / MB, base_fds, fds),
                fds <= base_fds and rss(proxy) - base_rss < rss_bound(24))
    victim_ok(proxy, "after 10,000 abandoned streams")


# ---------------------------------------------------------------------------------------------
# connection-level limits, on a proxy of their own


def limits():
    p = start_proxy(["--max-connections", "20", "--handshake-timeout-ms", "1500",
                     "--idle-timeout-ms", "3000", "--max-streams", "50"])
    try:
        silent = socket.create_connection(("127.0.0.1", p.port))
        silent.settimeout(6)
        started, closed = time.monotonic(), False
        try:
            while silent.recv(100):  # the proxy's own SETTINGS come first
                pass
            closed = True
        except socket.timeout:
            pass
        except OSError:
            closed = True
        suite.check("a client that sends nothing is closed after the handshake timeout (%.1f s)"
                    % (time.monotonic() - started), closed and time.monotonic() - started < 5)
        silent.close()

        slow = socket.create_connection(("127.0.0.1", p.port))
        slow.settimeout(0.05)
        started, closed = time.monotonic(), False
        for byte in w.PREFACE:
            try:
                slow.send(bytes([byte]))
                if slow.recv(100) == b"":
                    closed = True
                    break
            except socket.timeout:
                pass
            except OSError:
                closed = True
                break
            time.sleep(1)
        suite.check("slowloris (a byte a second) is closed (%.1f s)"
                    % (time.monotonic() - started), closed and time.monotonic() - started < 6)
        slow.close()

        idle = h2peer.Peer(p.port)
        idle.open(1, "/etcdserverpb.KV/Range")
        idle.data(1, w.grpc_frame(w.range_request(b"/registry/secrets/none")), end_stream=True)
        first = idle.grpc_status(1)
        started = time.monotonic()
        idle.wait(lambda: idle.goaway is not None, 8)
        suite.check("an idle connection gets GOAWAY(NO_ERROR) after its last call (%.1f s)"
                    % (time.monotonic() - started),
                    isinstance(first, tuple) and first[0] == 0 and idle.goaway is not None
                    and idle.goaway[1] == 0, (first, idle.goaway))
        suite.check("... and is closed", idle.wait_closed(5))
        idle.close()

        many = h2peer.Peer(p.port)
        for i in range(60):
            many.open(1 + 2 * i, "/etcdserverpb.Watch/Watch")
        many.wait(lambda: len(many.rst) >= 10, 5)
        refused = sum(1 for c in many.rst.values() if c == h2peer.REFUSED_STREAM)
        suite.check("streams over --max-streams get REFUSED_STREAM (%d of 60)" % refused,
                    refused == 10, many.rst)
        many.close()
        time.sleep(0.5)

        held = []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", p.port))
            s.sendall(w.PREFACE + w.h2_frame(w.SETTINGS, 0, 0))
            held.append(s)
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", p.port))
        extra.settimeout(3)
        try:
            refused = extra.recv(100) == b""  # not even the proxy's SETTINGS
        except socket.timeout:
            refused = False
        except OSError:
            refused = True
        suite.check("the connection over --max-connections is closed at once", refused)
        extra.close()
        for s in held:
            s.close()
        time.sleep(0.5)
        victim_ok(p, "once the held connections left")
    finally:
        p.stop()


def out_of_descriptors():
    """Open-file limit 128, --max-connections above it: accept() fails with EMFILE. The proxy
    must pause accepting instead of spinning on the listener and flooding its log."""
    p = start_proxy(["--max-connections", "1000", "--idle-timeout-ms", "0"],
                    prefix=["prlimit", "--nofile=128:128", "--"])
    try:
        held = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", p.port))
            held.append(s)
        time.sleep(0.5)
        log0, cpu0 = os.path.getsize(p.log), cpu_seconds(p)
        time.sleep(3)
        cpu, logged = cpu_seconds(p) - cpu0, os.path.getsize(p.log) - log0
        suite.check("out of descriptors: no busy loop (%.2f s CPU in 3 s, %d log bytes)"
                    % (cpu, logged), cpu < 0.5 and logged < 4096)
        for s in held:
            s.close()
        time.sleep(1)
        victim_ok(p, "once descriptors are free again")
    finally:
        p.stop()


suite.run("request flow control", request_flow_control)
suite.run("response flow control", response_flow_control)
suite.run("upstream connection window", upstream_window_survives)
suite.run("HPACK bomb and CONTINUATION flood", hpack_bomb)
suite.run("5-byte gRPC headers", five_byte_headers)
suite.run("empty DATA frames", empty_data_flood)
suite.run("reset floods", reset_floods)
suite.run("SETTINGS/PING floods, oversized frame", control_floods)
suite.run("10,000 abandoned streams", abandoned_streams)
suite.run("limits and timeouts", limits)
suite.run("out of file descriptors", out_of_descriptors)
suite.check("proxy still running", proxy.alive())
suite.finish()
