"""Hand-built etcd v3 protobuf messages and gRPC/HTTP/2 bytes, for tests and the benchmark.

Field numbers come from spec section 6.2; framing from section 7.1. Only what the tests need:
encoders for the request messages, a small tag-walking decoder for responses, the 5-byte gRPC
message header, and a raw HTTP/2 connection that can send deliberately broken frames (the
Debian python3-h2 package is not part of the project's dependencies, so we speak the few frames
we need ourselves; HPACK is only ever *encoded* here, as literals without Huffman).
"""

import socket
import struct

# ---------------------------------------------------------------------------------------------
# protobuf wire format


def varint(n):
    if n < 0:
        n += 1 << 64  # int64 negatives are ten-byte varints
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, value):
    return varint(num << 3) + varint(value) if value else b""


def field_bytes(num, data):
    if isinstance(data, str):
        data = data.encode()
    return varint((num << 3) | 2) + varint(len(data)) + data


def range_request(key, range_end=b"", limit=0, keys_only=False, count_only=False):
    msg = field_bytes(1, key)
    if range_end:
        msg += field_bytes(2, range_end)
    msg += field_varint(3, limit) + field_varint(8, int(keys_only)) + field_varint(9, int(count_only))
    return msg


def put_request(key, value, prev_kv=False):
    return field_bytes(1, key) + field_bytes(2, value) + field_varint(4, int(prev_kv))


def prefix_end(prefix):
    """The range_end that selects every key starting with |prefix|."""
    if isinstance(prefix, str):
        prefix = prefix.encode()
    b = bytearray(prefix)
    while b and b[-1] == 0xFF:
        b.pop()
    b[-1] += 1
    return bytes(b)


def parse_fields(msg):
    """Yields (field number, wire type, value) where value is an int or bytes."""
    i = 0
    while i < len(msg):
        tag, i = _read_varint(msg, i)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            val, i = _read_varint(msg, i)
        elif wt == 2:
            n, i = _read_varint(msg, i)
            val, i = msg[i : i + n], i + n
        elif wt == 1:
            val, i = msg[i : i + 8], i + 8
        elif wt == 5:
            val, i = msg[i : i + 4], i + 4
        else:
            raise ValueError("unsupported wire type %d" % wt)
        yield num, wt, val


def _read_varint(msg, i):
    shift = n = 0
    while True:
        b = msg[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def response_revision(msg):
    """header.revision of any etcd response (field 1 = ResponseHeader, its field 3)."""
    for num, _, val in parse_fields(msg):
        if num == 1:
            for hnum, _, hval in parse_fields(val):
                if hnum == 3:
                    return hval
    return None


def range_response_kvs(msg):
    """[(key, value)] of a RangeResponse."""
    kvs = []
    for num, _, val in parse_fields(msg):
        if num == 2:
            kv = dict((n, v) for n, _, v in parse_fields(val))
            kvs.append((kv.get(1, b""), kv.get(5, b"")))
    return kvs


# ---------------------------------------------------------------------------------------------
# gRPC framing


def grpc_frame(msg, compressed=0):
    return struct.pack(">BI", compressed, len(msg)) + msg


def grpc_unframe(body):
    """Splits a response body into messages. Raises ValueError on a truncated body."""
    out, i = [], 0
    while i < len(body):
        if len(body) - i < 5:
            raise ValueError("truncated gRPC header")
        _, n = struct.unpack(">BI", body[i : i + 5])
        if len(body) - i - 5 < n:
            raise ValueError("truncated gRPC message")
        out.append(body[i + 5 : i + 5 + n])
        i += 5 + n
    return out


# ---------------------------------------------------------------------------------------------
# raw HTTP/2 (client side), enough to send broken frames and see how the peer reacts

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def h2_frame(ftype, flags, stream_id, payload=b""):
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags, stream_id) + payload


def _hpack_int(value, prefix_bits, first_byte):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte | value])
    out = bytearray([first_byte | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(headers):
    """HPACK block of literal-without-indexing, new-name, no-Huffman fields."""
    out = bytearray()
    for name, value in headers:
        name, value = name.encode(), value.encode()
        out += b"\x00" + _hpack_int(len(name), 7, 0) + name + _hpack_int(len(value), 7, 0) + value
    return bytes(out)


def grpc_request_headers(path, authority="127.0.0.1"):
    return hpack_literal(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )


class RawH2:
    """A cleartext HTTP/2 client connection that sends exactly the bytes it is told to."""

    def __init__(self, host, port, timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def start(self):
        self.send(PREFACE + h2_frame(SETTINGS, 0, 0))

    def read_frame(self):
        """Returns (type, flags, stream_id, payload), or None when the peer closed."""
        while len(self.buf) < 9:
            if not self._recv():
                return None
        n = struct.unpack(">I", b"\x00" + self.buf[:3])[0]
        while len(self.buf) < 9 + n:
            if not self._recv():
                return None
        ftype, flags, sid = struct.unpack(">BBI", self.buf[3:9])
        payload, self.buf = self.buf[9 : 9 + n], self.buf[9 + n :]
        if ftype == SETTINGS and not flags & ACK:
            self.send(h2_frame(SETTINGS, ACK, 0))
        return ftype, flags, sid & 0x7FFFFFFF, payload

    def _recv(self):
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            return False  # a timeout propagates: outcome() reports it as such
        self.buf += chunk
        return bool(chunk)

    def outcome(self, stream_id, limit=50):
        """Reads until |stream_id| ends or the connection goes away. Returns one of
        'goaway', 'closed', 'rst', 'end_stream', 'timeout'."""
        for _ in range(limit):
            try:
                f = self.read_frame()
            except TimeoutError:
                return "timeout"
            except OSError:
                return "closed"
            if f is None:
                return "closed"
            ftype, flags, sid, _ = f
            if ftype == GOAWAY:
                return "goaway"
            if sid == stream_id and ftype == RST_STREAM:
                return "rst"
            if sid == stream_id and ftype in (DATA, HEADERS) and flags & END_STREAM:
                return "end_stream"
        return "timeout"

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
