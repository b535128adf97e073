"""A hostile HTTP/2 client that controls framing exactly, for the abuse tests.

RawH2 (etcdwire) sends bytes as told; Peer adds what an attacker needs to keep a connection
going on its own terms: a reader thread that answers SETTINGS and PING, records WINDOW_UPDATE,
RST_STREAM, GOAWAY and response headers (decoded with Debian's python3-hpack, since the proxy's
encoder uses Huffman codes and the dynamic table), and a sender that respects the proxy's
flow-control windows (a peer that overruns them only gets FLOW_CONTROL_ERROR, which tests
nothing) while cutting DATA frames wherever the test says. Nothing here reads DATA for the
application: a test decides whether to give the window back.
"""

import socket
import struct
import threading
import time

import hpack

import etcdwire as w

CONTINUATION = 9
PRIORITY = 2
REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM, PROTOCOL_ERROR = 7, 8, 11, 1
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 4, 5
SETTINGS_MAX_HEADER_LIST_SIZE = 6


def settings_payload(entries):
    return b"".join(struct.pack(">HI", k, v) for k, v in entries)


class Peer:
    def __init__(self, port, host="127.0.0.1", settings=(), timeout=10.0, start=True):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.cv = threading.Condition()
        self.conn_window = 65535
        self.stream_windows = {}
        self.initial_window = 65535  # the proxy's SETTINGS_INITIAL_WINDOW_SIZE
        self.peer_settings = {}
        self.goaway = None  # (last_stream_id, error_code)
        self.rst = {}  # stream id -> error code
        self.headers = {}  # stream id -> list of header lists (response headers, trailers)
        self.ended = set()
        self.data_bytes = 0
        self.stream_data = {}  # stream id -> DATA bytes received
        self.closed = False
        self._decoder = hpack.Decoder()
        self._decoder.max_allowed_table_size = 1 << 16
        self._block = {}
        self._wlock = threading.Lock()
        if start:
            self.send(w.PREFACE + w.h2_frame(w.SETTINGS, 0, 0, settings_payload(settings)))
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    # ---- sending -------------------------------------------------------------------------

    def send(self, data):
        with self._wlock:
            self.sock.sendall(data)

    def frame(self, ftype, flags, sid, payload=b""):
        self.send(w.h2_frame(ftype, flags, sid, payload))

    def headers_block(self, sid, block, end_stream=False, max_frame=16384):
        """Sends |block| as HEADERS plus as many CONTINUATION frames as it takes."""
        first, rest = block[:max_frame], block[max_frame:]
        flags = (w.END_STREAM if end_stream else 0) | (0 if rest else w.END_HEADERS)
        out = [w.h2_frame(w.HEADERS, flags, sid, first)]
        while rest:
            chunk, rest = rest[:max_frame], rest[max_frame:]
            out.append(w.h2_frame(CONTINUATION, 0 if rest else w.END_HEADERS, sid, chunk))
        self.send(b"".join(out))

    def open(self, sid, path, end_stream=False):
        with self.cv:
            self.stream_windows[sid] = self.initial_window
        self.headers_block(sid, w.grpc_request_headers(path), end_stream)

    def data_now(self, sid, payload, end_stream=False):
        """One DATA frame, flow control ignored (for frames that carry nothing, or abuse)."""
        self.frame(w.DATA, w.END_STREAM if end_stream else 0, sid, payload)

    def data(self, sid, payload, end_stream=False, wait=5.0):
        """One DATA frame once both windows allow it. Returns False if they stayed closed for
        |wait| seconds (the proxy applies back-pressure) or the connection went away."""
        n = len(payload)
        deadline = time.monotonic() + wait
        with self.cv:
            while self.conn_window < n or self.stream_windows.get(sid, 0) < n:
                left = deadline - time.monotonic()
                if left <= 0 or self.closed or self.goaway is not None or sid in self.rst:
                    return False
                self.cv.wait(min(left, 0.2))
            self.conn_window -= n
            self.stream_windows[sid] -= n
        self.frame(w.DATA, w.END_STREAM if end_stream else 0, sid, payload)
        return True

    def window_update(self, sid, increment):
        self.frame(w.WINDOW_UPDATE, 0, sid, struct.pack(">I", increment))

    def rst_stream(self, sid, code=CANCEL):
        self.frame(w.RST_STREAM, 0, sid, struct.pack(">I", code))

    # ---- receiving -----------------------------------------------------------------------

    def _recv_exact(self, n, buf):
        while len(buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _read_loop(self):
        buf = b""
        try:
            while True:
                buf = self._recv_exact(9, buf)
                length = struct.unpack(">I", b"\x00" + buf[:3])[0]
                buf = self._recv_exact(9 + length, buf)
                ftype, flags, sid = struct.unpack(">BBI", buf[3:9])
                payload, buf = buf[9 : 9 + length], buf[9 + length :]
                self._on_frame(ftype, flags, sid & 0x7FFFFFFF, payload)
        except (EOFError, OSError):
            pass
        with self.cv:
            self.closed = True
            self.cv.notify_all()

    def _on_frame(self, ftype, flags, sid, payload):
        if ftype == w.SETTINGS and not flags & w.ACK:
            self._on_settings(payload)
            self.frame(w.SETTINGS, w.ACK, 0)
        elif ftype == w.PING and not flags & w.ACK:
            self.frame(w.PING, w.ACK, 0, payload)
        with self.cv:
            if ftype == w.WINDOW_UPDATE:
                inc = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
                if sid == 0:
                    self.conn_window += inc
                elif sid in self.stream_windows:
                    self.stream_windows[sid] += inc
            elif ftype == w.GOAWAY:
                self.goaway = struct.unpack(">II", payload[:8])
                self.goaway = (self.goaway[0] & 0x7FFFFFFF, self.goaway[1])
            elif ftype == w.RST_STREAM:
                self.rst[sid] = struct.unpack(">I", payload)[0]
            elif ftype == w.DATA:
                self.data_bytes += len(payload)
                self.stream_data[sid] = self.stream_data.get(sid, 0) + len(payload)
                if flags & w.END_STREAM:
                    self.ended.add(sid)
            elif ftype in (w.HEADERS, CONTINUATION):
                self._on_header_block(ftype, flags, sid, payload)
            self.cv.notify_all()

    def _on_settings(self, payload):
        with self.cv:
            for i in range(0, len(payload) - 5, 6):
                k, v = struct.unpack(">HI", payload[i : i + 6])
                self.peer_settings[k] = v
                if k == SETTINGS_INITIAL_WINDOW_SIZE:
                    delta = v - self.initial_window
                    self.initial_window = v
                    for s in self.stream_windows:
                        self.stream_windows[s] += delta

    def _on_header_block(self, ftype, flags, sid, payload):
        if ftype == w.HEADERS:
            if flags & 0x8:  # PADDED
                payload = payload[1 : len(payload) - payload[0]]
            if flags & 0x20:  # PRIORITY
                payload = payload[5:]
            self._block[sid] = [payload, bool(flags & w.END_STREAM)]
        else:
            self._block[sid][0] += payload
        if flags & w.END_HEADERS:
            block, end = self._block.pop(sid)
            fields = [(k.decode() if isinstance(k, bytes) else k,
                       v.decode() if isinstance(v, bytes) else v) for k, v in self._decoder.decode(block)]
            self.headers.setdefault(sid, []).append(dict(fields))
            if end:
                self.ended.add(sid)

    # ---- waiting -------------------------------------------------------------------------

    def wait(self, pred, timeout):
        deadline = time.monotonic() + timeout
        with self.cv:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cv.wait(min(left, 0.2))
            return True

    def wait_closed(self, timeout):
        return self.wait(lambda: self.closed, timeout)

    def grpc_status(self, sid, timeout=10.0):
        """(grpc-status, grpc-message) of |sid| once it ended, 'rst:<code>', or None."""
        self.wait(lambda: sid in self.ended or sid in self.rst or self.closed, timeout)
        with self.cv:
            if sid in self.rst:
                return "rst:%d" % self.rst[sid]
            for h in reversed(self.headers.get(sid, [])):
                if "grpc-status" in h:
                    return int(h["grpc-status"]), h.get("grpc-message", "")
        return None

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def cut_inside_messages(stream, max_frame=16384):
    """Splits |stream| (concatenated gRPC messages) into DATA payloads of at most |max_frame|
    bytes, each ending one byte into the next message: the receiver is always in the middle of
    reassembling one when a frame ends."""
    ends, i = [], 0
    while i < len(stream):
        n = struct.unpack(">I", stream[i + 1 : i + 5])[0]
        i += 5 + n
        ends.append(i)
    chunks, start = [], 0
    for end in ends:
        stop = min(end + 1, len(stream))
        while stop - start > max_frame:
            cut = start + max_frame
            if cut in ends:
                cut -= 1
            chunks.append(stream[start:cut])
            start = cut
        if stop > start:
            chunks.append(stream[start:stop])
            start = stop
    return chunks
