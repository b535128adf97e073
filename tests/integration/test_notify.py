"""sd_notify: with NOTIFY_SOCKET set (a path, and an abstract "@name"), the proxy sends READY=1
once it accepts connections and STOPPING=1 when SIGTERM starts the drain, then exits 0. Without
NOTIFY_SOCKET it starts and stops as usual."""

import os
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

suite = harness.Suite("sd_notify")
harness.require_binary(suite, "serve", "proxy binary is built and serves")

WORK = harness.workdir("ep-notify")
ETCD = harness.Etcd(WORK)
suite.logs.append(ETCD.log)
try:
    ETCD.start()
except Exception as e:  # noqa: BLE001
    suite.check("etcd starts", False, e)
    suite.finish()
CONFIG = os.path.join(WORK, "enc.yaml")
harness.write_encryption_config(CONFIG)


def receive(sock, timeout):
    """Every datagram within |timeout| seconds until one contains READY=1 or STOPPING=1."""
    got, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            msg = sock.recv(4096).decode(errors="replace")
        except socket.timeout:
            break
        got.append(msg)
        if any(s in msg.split("\n") for s in ("READY=1", "STOPPING=1")):
            break
    return got


def run_with(label, notify_name, bind_addr):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(bind_addr)
    proxy = harness.Proxy(WORK, [ETCD.url], CONFIG)
    suite.logs.append(proxy.log)
    env = dict(os.environ, NOTIFY_SOCKET=notify_name)
    t0 = time.monotonic()
    proxy.proc = harness.spawn(proxy.args(), proxy.log, env=env)
    try:
        got = receive(sock, 15)
        accepting = harness.tcp_accepts(proxy.port)
        suite.check("%s: READY=1 received (%.2f s after start)" % (label, time.monotonic() - t0),
                    any("READY=1" in m.split("\n") for m in got), (got, harness.log_tail(proxy.log)))
        suite.check("%s: the listener accepts when READY=1 arrives" % label, accepting)
        res = proxy.ctl("put", "/registry/secrets/notify/a", "v")
        suite.check("%s: the proxy serves after READY=1" % label, res.returncode == 0,
                    res.stderr)
        suite.check("%s: nothing but READY=1 before SIGTERM" % label,
                    receive(sock, 0.3) == [])  # bounded negative wait
        proxy.proc.send_signal(signal.SIGTERM)
        got = receive(sock, 15)
        suite.check("%s: STOPPING=1 received on SIGTERM" % label,
                    any("STOPPING=1" in m.split("\n") for m in got), got)
        try:
            rc = proxy.proc.wait(15)
        except Exception:  # noqa: BLE001
            rc = None
        suite.check("%s: exits 0 after the drain" % label, rc == 0, rc)
    finally:
        proxy.stop()
        sock.close()


def path_socket():
    path = os.path.join(WORK, "notify.sock")
    run_with("path socket", path, path)


def abstract_socket():
    name = "ep-it-notify-%d-%d" % (os.getpid(), harness.free_port())
    run_with("abstract socket", "@" + name, "\0" + name)


def without_socket():
    proxy = harness.Proxy(WORK, [ETCD.url], CONFIG)
    suite.logs.append(proxy.log)
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    proxy.proc = harness.spawn(proxy.args(), proxy.log, env=env)
    ok = harness.wait_for(lambda: proxy.proc.poll() is not None or harness.tcp_accepts(proxy.port), 15)
    suite.check("without NOTIFY_SOCKET: serves", ok and proxy.alive(), harness.log_tail(proxy.log))
    proxy.proc.send_signal(signal.SIGTERM)
    try:
        rc = proxy.proc.wait(15)
    except Exception:  # noqa: BLE001
        rc = None
    suite.check("without NOTIFY_SOCKET: exits 0 on SIGTERM, no notify warning",
                rc == 0 and b"cannot notify" not in open(proxy.log, "rb").read(), rc)
    proxy.stop()


for name, fn in [("NOTIFY_SOCKET path", path_socket), ("NOTIFY_SOCKET abstract", abstract_socket),
                 ("no NOTIFY_SOCKET", without_socket)]:
    suite.run(name, fn)
suite.finish()
