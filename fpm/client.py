"""A small pure-Python FastCGI client: `pyfpm request`, and the oracle the tests hold the server to.

It shares no code with `fpm._codec` on purpose: an independent reading of the spec catches what
a shared helper would hide.
"""

import argparse
import dataclasses
import os
import socket
import struct
import sys

VERSION = 1
(BEGIN_REQUEST, ABORT_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR, DATA,
 GET_VALUES, GET_VALUES_RESULT, UNKNOWN_TYPE) = range(1, 12)
RESPONDER, AUTHORIZER, FILTER = 1, 2, 3
KEEP_CONN = 1
REQUEST_COMPLETE, CANT_MPX_CONN, OVERLOADED, UNKNOWN_ROLE = 0, 1, 2, 3
MAX_CONTENT = 65535
STDIN_CHUNK = 32768  # nginx sends the body in records of at most 32 KiB

_HEADER = struct.Struct("!BBHHBx")
_END_REQUEST = struct.Struct("!IB3x")


class FastCGIError(Exception):
    """The peer broke the FastCGI or CGI wire format."""


# --- encoding --------------------------------------------------------------------------------

def encode_record(type, request_id, content=b"", padding=None):
    """One record; padding defaults to what rounds the content up to a multiple of 8."""
    if len(content) > MAX_CONTENT:
        raise ValueError(f"record content of {len(content)} bytes exceeds {MAX_CONTENT}")
    if padding is None:
        padding = -len(content) % 8
    return _HEADER.pack(VERSION, type, request_id, len(content), padding) + bytes(content) + bytes(padding)


def _chunks(data, sizes):
    """Pieces of data: every `sizes` bytes if an int, else at those sizes and then 65535 each."""
    first, step = ([], sizes) if isinstance(sizes, int) else (list(sizes), MAX_CONTENT)
    if not all(1 <= n <= MAX_CONTENT for n in first + [step]):
        raise ValueError(f"record sizes must be 1..{MAX_CONTENT}, got {sizes}")
    pos = 0
    for n in first:
        if pos >= len(data):
            return
        yield data[pos:pos + n]
        pos += n
    for pos in range(pos, len(data), step):
        yield data[pos:pos + step]


def encode_stream(type, request_id, data, sizes=MAX_CONTENT):
    """A stream (PARAMS, STDIN, ...): data in records cut by `sizes`, then the empty record."""
    return b"".join(encode_record(type, request_id, c) for c in _chunks(data, sizes)) + \
        encode_record(type, request_id)


def _bytes(s):
    # URIs and header values arrive from nginx as raw bytes; UTF-8 is what a browser would send.
    return s if isinstance(s, (bytes, bytearray)) else str(s).encode("utf-8")


def _length(n):
    return bytes([n]) if n < 128 else struct.pack("!I", n | 0x80000000)


def encode_pairs(pairs):
    """Name/value pairs (a mapping or (name, value) items; str or bytes) as one byte string."""
    items = pairs.items() if hasattr(pairs, "items") else pairs
    out = bytearray()
    for name, value in items:
        name, value = _bytes(name), _bytes(value)
        out += _length(len(name)) + _length(len(value)) + name + value
    return bytes(out)


def encode_begin(request_id, role=RESPONDER, keep_conn=False):
    return encode_record(BEGIN_REQUEST, request_id, struct.pack("!HB5x", role, KEEP_CONN if keep_conn else 0))


def encode_request(params, body=b"", request_id=1, keep_conn=False, stdin_chunk=None, params_chunk=None):
    """BEGIN_REQUEST, the PARAMS stream and the STDIN stream of one responder request.

    `params_chunk` / `stdin_chunk` are a record size or a list of sizes (the rest goes in 65535s),
    so tests can split pairs across records anywhere.
    """
    return (encode_begin(request_id, RESPONDER, keep_conn)
            + encode_stream(PARAMS, request_id, encode_pairs(params), params_chunk or MAX_CONTENT)
            + encode_stream(STDIN, request_id, bytes(body), stdin_chunk or STDIN_CHUNK))


# --- decoding --------------------------------------------------------------------------------

def decode_pairs(data):
    """The (name, value) byte pairs of a complete name/value stream."""
    pairs, pos, data = [], 0, bytes(data)

    def length():
        nonlocal pos
        if pos >= len(data):
            raise FastCGIError(f"truncated name/value pair at byte {pos}")
        if data[pos] < 128:
            pos += 1
            return data[pos - 1]
        if pos + 4 > len(data):
            raise FastCGIError(f"truncated 4-byte length at byte {pos}")
        pos += 4
        return struct.unpack_from("!I", data, pos - 4)[0] & 0x7FFFFFFF

    while pos < len(data):
        nlen, vlen = length(), length()
        if pos + nlen + vlen > len(data):
            raise FastCGIError(f"name/value pair of {nlen}+{vlen} bytes runs past the end at byte {pos}")
        pairs.append((data[pos:pos + nlen], data[pos + nlen:pos + nlen + vlen]))
        pos += nlen + vlen
    return pairs


class RecordParser:
    """Incremental record reader: feed bytes, get complete (type, request_id, content) tuples."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data):
        self._buf += data
        records = []
        while len(self._buf) >= _HEADER.size:
            version, type, request_id, clen, plen = _HEADER.unpack_from(self._buf)
            if version != VERSION:
                hint = "; the peer speaks HTTP, not FastCGI" if self._buf.startswith(b"HTTP/") else ""
                raise FastCGIError(f"record version {version}, expected {VERSION} "
                                   f"(first bytes {bytes(self._buf[:16])!r}){hint}")
            end = _HEADER.size + clen + plen
            if len(self._buf) < end:
                break
            records.append((type, request_id, bytes(self._buf[_HEADER.size:_HEADER.size + clen])))
            del self._buf[:end]
        return records

    @property
    def buffered(self):
        """Bytes held back: a partial record, or anything past the last complete one."""
        return len(self._buf)


def iter_records(data):
    """The records of a complete byte string; a trailing partial record is an error."""
    parser = RecordParser()
    yield from parser.feed(data)
    if parser.buffered:
        raise FastCGIError(f"truncated record: {parser.buffered} bytes left over")


@dataclasses.dataclass
class Response:
    status: int
    reason: str
    headers: list  # [(name, value)] as sent, latin-1 decoded
    body: bytes
    stderr: bytes = b""
    app_status: int = 0
    protocol_status: int = REQUEST_COMPLETE
    stdout_closed: bool = True  # the empty STDOUT record that ends the stream was seen

    def header(self, name, default=None):
        """The first header of that name (case-insensitive)."""
        return next((v for n, v in self.headers if n.lower() == name.lower()), default)

    @classmethod
    def from_records(cls, records, request_id=1):
        """Collect STDOUT/STDERR up to END_REQUEST for `request_id`; anything else is an error."""
        stdout, stderr, closed = bytearray(), bytearray(), False
        for type, rid, content in records:
            if rid != request_id:
                raise FastCGIError(f"record type {type} for request id {rid}, expected {request_id}")
            if type == STDOUT:
                if closed and content:
                    raise FastCGIError("STDOUT data after the empty STDOUT record")
                stdout += content
                closed = not content
            elif type == STDERR:
                stderr += content
            elif type == END_REQUEST:
                if len(content) < _END_REQUEST.size:
                    raise FastCGIError(f"END_REQUEST body of {len(content)} bytes, expected 8")
                app_status, protocol_status = _END_REQUEST.unpack_from(content)
                if protocol_status != REQUEST_COMPLETE:
                    return cls(503 if protocol_status == OVERLOADED else 502,
                               f"FastCGI protocol status {protocol_status}", [], b"",
                               bytes(stderr), app_status, protocol_status, closed)
                status, reason, headers, body = parse_cgi(bytes(stdout))
                return cls(status, reason, headers, body, bytes(stderr), app_status, protocol_status, closed)
            else:
                raise FastCGIError(f"unexpected record type {type} in a response")
        raise FastCGIError("connection closed before END_REQUEST")


def parse_cgi(stdout):
    """A CGI response (RFC 3875 §6) → (status, reason, [(name, value)], body)."""
    ends = [(stdout.find(sep), sep) for sep in (b"\r\n\r\n", b"\n\n") if sep in stdout]
    if not ends:
        raise FastCGIError(f"no end of CGI headers in STDOUT (starts {stdout[:40]!r})")
    status, reason, headers = None, "", []
    end, sep = min(ends)
    for line in stdout[:end].decode("latin-1").splitlines():
        name, colon, value = line.partition(":")
        if not colon:
            raise FastCGIError(f"CGI header line without a colon: {line!r}")
        name, value = name.strip(), value.strip()
        if name.lower() == "status":
            code, _, reason = value.partition(" ")
            if not (code.isdigit() and len(code) == 3):
                raise FastCGIError(f"bad CGI Status line: {line!r}")
            status = int(code)
        else:
            headers.append((name, value))
    if status is None:  # RFC 3875: a Location without Status is a redirect
        status, reason = (302, "Found") if any(n.lower() == "location" for n, _ in headers) else (200, "OK")
    return status, reason, headers, stdout[end + len(sep):]


# --- I/O -------------------------------------------------------------------------------------

def connect(address, timeout=10):
    """A socket to `host:port`, `[ipv6]:port`, a bare port (127.0.0.1) or a unix socket path."""
    address = str(address)
    if "/" in address or address.startswith("unix:") or not (":" in address or address.isdigit()):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address.removeprefix("unix:"))
        except BaseException:
            sock.close()
            raise
        return sock
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid FastCGI address {address!r} (want host:port, [ipv6]:port, port or a path)")
    sock = socket.create_connection((host, int(port)), timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def build_params(uri="/", method="GET", body=b"", headers=None, params=None, remote=("127.0.0.1", 0)):
    """The params nginx's stock fastcgi_params would send, plus HTTP_* for the headers."""
    path, _, query = uri.partition("?")
    out = {
        "QUERY_STRING": query, "REQUEST_METHOD": method.upper(), "CONTENT_TYPE": "",
        "CONTENT_LENGTH": str(len(body)) if body else "",
        "SCRIPT_NAME": path, "REQUEST_URI": uri, "DOCUMENT_URI": path,
        "SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_SCHEME": "http", "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "pyfpm-client", "REMOTE_ADDR": str(remote[0]), "REMOTE_PORT": str(remote[1]),
        "SERVER_ADDR": "127.0.0.1", "SERVER_PORT": "80", "SERVER_NAME": "localhost",
    }
    items = headers.items() if hasattr(headers, "items") else headers or ()
    for name, value in items:
        key = "HTTP_" + name.upper().replace("-", "_")
        if key in out:  # nginx joins repeated headers, cookies with "; "
            out[key] += ("; " if key == "HTTP_COOKIE" else ", ") + value
        else:
            out[key] = value
        if key == "HTTP_CONTENT_TYPE":
            out["CONTENT_TYPE"] = value
        elif key == "HTTP_HOST":
            out["SERVER_NAME"] = value.rpartition(":")[0] if value.rpartition(":")[2].isdigit() else value
    out.update(params or {})
    return out


class Connection:
    """One FastCGI connection; several requests may go over it with keep_conn."""

    def __init__(self, address, timeout=10):
        self.address = address
        self.sock = connect(address, timeout)
        self.parser = RecordParser()
        self._records = []
        self.let_go = False  # the server said it closes the connection after a response

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def read_record(self):
        """The next record, or None when the peer closed cleanly between records."""
        while not self._records:
            data = self.sock.recv(262144)
            if not data:
                if self.parser.buffered:
                    raise FastCGIError(f"connection closed mid-record ({self.parser.buffered} bytes buffered)")
                return None
            self._records += self.parser.feed(data)
        return self._records.pop(0)

    def _until_end(self, request_id):
        while True:
            record = self.read_record()
            if record is None:
                return
            yield record
            if record[0] == END_REQUEST and record[1] == request_id:
                return

    def read_response(self, request_id=1):
        return Response.from_records(self._until_end(request_id), request_id)

    def request(self, uri="/", method="GET", body=b"", headers=None, params=None, keep_conn=True,
                request_id=1, stdin_chunk=None):
        """Send one responder request and read its response."""
        sockname = self.sock.getsockname()
        remote = sockname[:2] if isinstance(sockname, tuple) else ("127.0.0.1", 0)
        body = _bytes(body)
        self.send(encode_request(build_params(uri, method, body, headers, params, remote), body,
                                 request_id, keep_conn, stdin_chunk))
        response = self.read_response(request_id)
        # nginx reuses a kept connection only if nothing follows END_REQUEST; hold the server to it.
        if keep_conn and (self._records or self.parser.buffered):
            if self._records != [(STDERR, request_id, b"")] or self.parser.buffered:
                raise FastCGIError("data after END_REQUEST on a kept connection")
            # Except the empty STDERR record a stopping pyfpm sends so: it closes the
            # connection after this response, and nginx takes that as a sign not to reuse it.
            self._records.clear()
            self.let_go = True
        return response

    def get_values(self, names=("FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS")):
        """Ask the management record GET_VALUES; returns {name: value} as str."""
        self.send(encode_record(GET_VALUES, 0, encode_pairs((n, "") for n in names)))
        record = self.read_record()
        if record is None or record[:2] != (GET_VALUES_RESULT, 0):
            raise FastCGIError(f"expected GET_VALUES_RESULT for id 0, got {record!r}")
        return {n.decode("latin-1"): v.decode("latin-1") for n, v in decode_pairs(record[2])}


def request(address, uri="/", method="GET", body=b"", headers=None, params=None, keep_conn=False, timeout=10):
    """One request on a fresh connection → Response."""
    with Connection(address, timeout) as conn:
        return conn.request(uri, method, body, headers, params, keep_conn)


# --- command line ----------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(os.EX_USAGE, f"{self.prog}: error: {message}\n")


def _header(text):
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError(f"header {text!r} is not 'Name: value'")
    return name.strip(), value.strip()


def _param(text):
    name, eq, value = text.partition("=")
    if not eq or not name:
        raise argparse.ArgumentTypeError(f"param {text!r} is not NAME=VALUE")
    return name, value


def main(argv=None):
    """`pyfpm request ...`: exit 0 if status < 500, 1 otherwise, 2 if the server cannot be reached."""
    p = _Parser(prog="pyfpm request", description="Send one FastCGI request and print the response body.")
    p.add_argument("address", help="host:port, [ipv6]:port, port, or a unix socket path")
    p.add_argument("uri", nargs="?", default="/")
    p.add_argument("-m", "--method", help="default GET, or POST with -d")
    p.add_argument("-d", "--data", help="request body, or @file (@- for stdin)")
    p.add_argument("-H", "--header", type=_header, action="append", default=[], metavar="'NAME: VALUE'")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="NAME=VALUE",
                   help="a FastCGI param, overriding the generated ones")
    p.add_argument("-i", "--include", action="store_true", help="print the status line and headers too")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return e.code
    body = b""
    if args.data is not None:
        try:
            body = _read_data(args.data)
        except OSError as e:
            print(f"pyfpm request: cannot read {args.data[1:]}: {e.strerror}", file=sys.stderr)
            return 64
    headers = list(args.header)
    if body and not any(n.lower() == "content-type" for n, _ in headers):
        headers.append(("Content-Type", "application/x-www-form-urlencoded"))  # as curl -d does
    method = args.method or ("POST" if args.data is not None else "GET")
    try:
        response = request(args.address, args.uri, method, body, headers, dict(args.param),
                           timeout=args.timeout)
    except ValueError as e:
        print(f"pyfpm request: {e}", file=sys.stderr)
        return 64
    except FastCGIError as e:
        print(f"pyfpm request: {args.address}: bad FastCGI response: {e}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"pyfpm request: {args.address}: timed out after {args.timeout:g} s", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"pyfpm request: {args.address}: {e.strerror or e}", file=sys.stderr)
        return 2
    out = sys.stdout.buffer
    if args.include:
        head = f"Status: {response.status} {response.reason}\r\n"
        head += "".join(f"{n}: {v}\r\n" for n, v in response.headers)
        out.write((head + "\r\n").encode("latin-1"))
    out.write(response.body)
    out.flush()
    if response.stderr:
        sys.stderr.buffer.write(response.stderr)
        sys.stderr.flush()
    return 0 if response.status < 500 else 1


def _read_data(data):
    if not data.startswith("@"):
        return data.encode("utf-8")
    if data == "@-":
        return sys.stdin.buffer.read()
    with open(data[1:], "rb") as f:
        return f.read()


if __name__ == "__main__":
    sys.exit(main())
