# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The FastCGI 1.0 codec, sans-IO: bytes in, events and reply bytes out, no system call.

Every record pyfpm sends is framed by the encoder in _codec.pxd (put_records, put_end,
frame_iov), which the worker's output and its SIGTERM replies use too.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.unicode cimport PyUnicode_DATA, PyUnicode_DecodeLatin1, PyUnicode_GET_LENGTH
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memmove

# Record types, roles, flags and protocol statuses of the FastCGI 1.0 specification.
BEGIN_REQUEST = T_BEGIN
ABORT_REQUEST = T_ABORT
END_REQUEST = T_END
PARAMS = T_PARAMS
STDIN = T_STDIN
STDOUT = T_STDOUT
STDERR = T_STDERR
DATA = T_DATA
GET_VALUES = T_GET_VALUES
GET_VALUES_RESULT = T_GET_VALUES_RESULT
UNKNOWN_TYPE = T_UNKNOWN_TYPE
RESPONDER = ROLE_RESPONDER
AUTHORIZER = 2
FILTER = 3
KEEP_CONN = FLAG_KEEP_CONN
REQUEST_COMPLETE = S_REQUEST_COMPLETE
CANT_MPX_CONN = S_CANT_MPX_CONN
OVERLOADED = 2
UNKNOWN_ROLE = S_UNKNOWN_ROLE
MAX_CONTENT = 65535

cdef dict RECORD_NAMES = {
    1: "BEGIN_REQUEST", 2: "ABORT_REQUEST", 3: "END_REQUEST", 4: "PARAMS", 5: "STDIN",
    6: "STDOUT", 7: "STDERR", 8: "DATA", 9: "GET_VALUES", 10: "GET_VALUES_RESULT",
    11: "UNKNOWN_TYPE",
}
cdef tuple HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ",
                           b"PATCH ", b"CONNECT ", b"TRACE ", b"PRI * HTTP/2")


class PeerError(Exception):
    """The web server on a connection misbehaved or went away; the connection is dropped."""


class ProtocolError(PeerError, ValueError):
    """Bytes that are not valid FastCGI from a web server."""


class PeerClosed(PeerError, ConnectionError):
    """The web server closed or reset the connection before the request was done."""


class RequestAborted(PeerError):
    """The web server sent ABORT_REQUEST before the whole body arrived."""


class HTTPOnFastCGIPort(ProtocolError):
    """Someone spoke HTTP to the FastCGI port."""


# --- the encoder's Python face -------------------------------------------------------------

cdef bytes _records(int rtype, int request_id, const char *p, Py_ssize_t n):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, records_len(n))
    put_records(PyBytes_AS_STRING(out), rtype, request_id, p, n)
    return out


def encode_stream(int rtype, int request_id, bytes data):
    """Records of one stream carrying data (none for empty data; the end record is separate)."""
    if not data:
        return b""
    return _records(rtype, request_id, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


def encode_stdout(int request_id, bytes data):
    return encode_stream(T_STDOUT, request_id, data)


def encode_stderr(int request_id, bytes data):
    return encode_stream(T_STDERR, request_id, data)


def encode_end_request(int request_id, unsigned int app_status=0, int protocol_status=0):
    """An END_REQUEST record (the caller ends the STDOUT stream first)."""
    cdef char end[END_LEN]
    put_end(end, request_id, app_status, protocol_status)
    return PyBytes_FromStringAndSize(end + HEADER_LEN, END_LEN - HEADER_LEN)


# --- name-value pairs ----------------------------------------------------------------------

cdef void _pair_into(bytearray out, bytes name, bytes value):
    for n in (len(name), len(value)):
        if n < 128:
            out.append(n)
        else:
            out += (n | 0x80000000).to_bytes(4, "big")
    out += name
    out += value


cdef Py_ssize_t _pair_len(const unsigned char *p, Py_ssize_t n, Py_ssize_t *i) except -1:
    cdef Py_ssize_t at = i[0]
    if at >= n:
        raise ProtocolError("malformed FastCGI name-value pair: a length is missing at byte %d of %d" % (at, n))
    if p[at] < 128:
        i[0] = at + 1
        return p[at]
    if at + 4 > n:
        raise ProtocolError("malformed FastCGI name-value pair: a 4-byte length is cut at byte %d of %d" % (at, n))
    i[0] = at + 4
    return ((p[at] & 0x7f) << 24) | (p[at + 1] << 16) | (p[at + 2] << 8) | p[at + 3]


cdef inline bint _reserved(const char *p, Py_ssize_t n) noexcept:
    """A name in pyfpm's or WSGI's own environ namespace, which no param may add to."""
    return (n >= 4 and memcmp(p, b"fpm.", 4) == 0) or (n >= 5 and memcmp(p, b"wsgi.", 5) == 0)


cdef str _latin1_at(list cache, Py_ssize_t slot, const char *p, Py_ssize_t n, bint name):
    """p[:n] as a latin-1 str, the one already at cache[slot] when its bytes are the same:
    nginx sends the same names, and mostly the same values, in the same order on every
    request, so most pairs cost a memcmp instead of an allocation, and a reused name keeps
    its hash for the dict insert. A ``name`` in a reserved namespace gives None: it is
    checked when it is not the cached one, and never cached (its slot gets ""), so a name
    taken from the cache needs no check."""
    cdef str s
    cdef bint drop
    if slot < PyList_GET_SIZE(cache):
        s = <str>PyList_GET_ITEM(cache, slot)
        if PyUnicode_GET_LENGTH(s) == n and memcmp(PyUnicode_DATA(s), p, n) == 0:
            return s
    drop = name and _reserved(p, n)
    if slot < PyList_GET_SIZE(cache):
        s = "" if drop else PyUnicode_DecodeLatin1(p, n, NULL)
        cache[slot] = s
        return None if drop else s
    s = "" if drop else PyUnicode_DecodeLatin1(p, n, NULL)
    if slot == PyList_GET_SIZE(cache) and slot < PAIR_CACHE_SLOTS:
        cache.append(s)
    return None if drop else s


cdef Py_ssize_t parse_pairs(const unsigned char *p, Py_ssize_t n, dict out,
                            list cache) except -1:
    """Name-value pairs into out: latin-1 strs reused from cache by position (environ),
    without the names no param may set (_reserved); or bytes without a cache. The last
    duplicate wins. Returns how many pairs there were."""
    cdef Py_ssize_t i = 0, start, nl, vl, count = 0
    while i < n:
        count += 1
        start = i
        nl = _pair_len(p, n, &i)
        vl = _pair_len(p, n, &i)
        if nl + vl > n - i:
            raise ProtocolError(
                "malformed FastCGI name-value pair at byte %d: it claims %d + %d bytes but %d remain"
                % (start, nl, vl, n - i))
        if cache is not None:  # the name first: slots fill in order
            name = _latin1_at(cache, 2 * count - 2, <const char *>p + i, nl, True)
            if name is not None:
                out[name] = _latin1_at(cache, 2 * count - 1, <const char *>p + i + nl, vl, False)
        else:
            out[PyBytes_FromStringAndSize(<const char *>p + i, nl)] = \
                PyBytes_FromStringAndSize(<const char *>p + i + nl, vl)
        i += nl + vl
    return count


# --- decoding -------------------------------------------------------------------------------

cdef str _describe_garbage(const unsigned char *p, Py_ssize_t n):
    head = PyBytes_FromStringAndSize(<const char *>p, min(n, 64))
    if head.startswith(HTTP_METHODS) or (n < 8 and any(m.startswith(head) for m in HTTP_METHODS)):
        raise HTTPOnFastCGIPort("HTTP request sent to the FastCGI port (%r)" % head.split(b"\r\n")[0])
    if n >= 2 and p[0] == 0x16 and p[1] == 0x03:
        return "TLS handshake sent to the FastCGI port"
    return "unsupported FastCGI version %d in record header %s" % (p[0], head[:8].hex(" "))


cdef Head head_status(const unsigned char *p, Py_ssize_t n, Py_ssize_t *head_end) noexcept nogil:
    """How much of a request the bytes that start a connection (or follow a finished
    request on it) hold: HEAD_PARTIAL, no whole head yet (a RESPONDER BEGIN_REQUEST and the
    empty PARAMS record that ends its params); HEAD_BODY, the head (ending at *head_end)
    but not the empty STDIN record that ends the body; HEAD_READY, the whole request, or
    bytes the decoder answers or refuses at once (a management record, another role, an
    abort, another request's BEGIN, anything that is not FastCGI, a record that flows the
    other way), which the worker that reads them answers. Records the decoder would skip
    are skipped. Nothing is consumed: a connection that is not ready travels on with
    these same bytes."""
    cdef Py_ssize_t at = 0, clen
    cdef int rtype, rid, begun = 0
    cdef bint body = False
    while True:
        if at >= n:
            return HEAD_BODY if body else HEAD_PARTIAL
        if p[at] != 1:
            return HEAD_READY
        if n - at < HEADER_LEN:
            return HEAD_BODY if body else HEAD_PARTIAL
        rtype = p[at + 1]
        rid = (p[at + 2] << 8) | p[at + 3]
        clen = (p[at + 4] << 8) | p[at + 5]
        if rid == 0 or rtype == T_END or rtype == T_STDOUT or rtype == T_STDERR \
                or rtype == T_GET_VALUES_RESULT or rtype == T_UNKNOWN_TYPE:
            return HEAD_READY
        if body and (rid != begun or rtype != T_STDIN):
            return HEAD_READY
        if n - at < HEADER_LEN + clen + p[at + 6]:
            return HEAD_BODY if body else HEAD_PARTIAL
        if body:
            if clen == 0:
                return HEAD_READY
        elif rtype == T_BEGIN and not begun:
            if clen != 8 or ((p[at + 8] << 8) | p[at + 9]) != ROLE_RESPONDER:
                return HEAD_READY
            begun = rid
        elif rid == begun and rtype == T_ABORT:
            return HEAD_READY
        elif rid == begun and rtype == T_PARAMS and clen == 0:
            body = True
            head_end[0] = at + HEADER_LEN + p[at + 6]
        at += HEADER_LEN + clen + p[at + 6]


def request_status(data):
    """(status, head_end) of ``data``, the first bytes of a connection (or those after a
    finished request): status 0, no whole head yet; 1, the head (its bytes end at head_end)
    without the whole body; 2, the whole request, or something a worker answers at once."""
    cdef const unsigned char[:] view = data
    cdef Py_ssize_t head_end = 0
    if view.shape[0] == 0:
        return HEAD_PARTIAL, 0
    return head_status(&view[0], view.shape[0], &head_end), head_end



cdef class Decoder:
    """Server side of one FastCGI connection: feed() bytes in, get events and reply bytes out."""

    def __cinit__(self):
        self.cap = READ_SIZE + HEADER_LEN
        self.buf = <char *>malloc(self.cap)
        if self.buf == NULL:
            raise MemoryError()
        self.params = bytearray()
        self.outbox = bytearray()

    def __dealloc__(self):
        free(self.buf)

    def __init__(self, Py_ssize_t params_max=1048576, int max_conns=1, int max_reqs=1):
        self.params_max = params_max
        self.max_conns = max_conns
        self.max_reqs = max_reqs

    cdef int _reserve(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t used = self.end - self.start
        cdef char *nb
        if self.cap - self.end >= n:
            return 0
        if self.start:
            memmove(self.buf, self.buf + self.start, used)
            self.start = 0
            self.end = used
        if self.cap - used < n:
            nb = <char *>realloc(self.buf, used + n)
            if nb == NULL:
                raise MemoryError()
            self.buf = nb
            self.cap = used + n
        return 0

    cdef int _reply(self, int rtype, bytes content) except -1:
        """A record the codec answers with by itself, for data_to_send()."""
        self.outbox += _records(rtype, 0, PyBytes_AS_STRING(content), PyBytes_GET_SIZE(content))
        return 0

    cdef Step _step(self) except <Step>-1:
        """Consume one whole record from the buffer (STEP_NEED: none is whole) and say what
        it was: the header is checked here, its content by the step for its kind."""
        cdef Py_ssize_t avail = self.end - self.start
        cdef const unsigned char *p = <const unsigned char *>self.buf + self.start
        cdef int rtype, rid
        cdef Py_ssize_t clen, total
        cdef Step step
        if avail == 0:
            return STEP_NEED
        if p[0] != 1:
            raise ProtocolError(_describe_garbage(p, avail))
        if avail < HEADER_LEN:
            return STEP_NEED
        rtype = p[1]
        rid = (p[2] << 8) | p[3]
        clen = (p[4] << 8) | p[5]
        total = HEADER_LEN + clen + p[6]
        if avail < total:
            return STEP_NEED
        p += HEADER_LEN
        if rid == 0:
            step = self._on_management(rtype, p, clen)
        elif rtype == T_BEGIN:
            step = self._on_begin(rid, p, clen)
            if step == STEP_BLOCKED:
                return step  # left in the buffer until the active request ends
        elif rtype in (T_END, T_STDOUT, T_STDERR, T_GET_VALUES_RESULT, T_UNKNOWN_TYPE):
            raise ProtocolError("%s record sent to the application (it flows the other way)"
                                % RECORD_NAMES[rtype])
        elif rid != self.request_id or self.state == ST_IDLE or (self.aborted and rtype != T_ABORT):
            step = self._on_inactive(rid, rtype, clen)
        elif rtype == T_PARAMS:
            step = self._on_params(p, clen)
        elif rtype == T_STDIN:
            step = self._on_stdin(p, clen)
        elif rtype == T_ABORT:
            step = self._on_abort()
        elif rtype == T_DATA:
            step = STEP_RECORD
        else:
            self._reply(T_UNKNOWN_TYPE, bytes([rtype, 0, 0, 0, 0, 0, 0, 0]))
            step = STEP_RECORD
        self.start += total
        if self.start == self.end:
            self.start = self.end = 0
        return step

    cdef Step _on_management(self, int rtype, const unsigned char *content,
                             Py_ssize_t clen) except <Step>-1:
        """A record of request id 0: GET_VALUES answered, any other type unknown."""
        cdef dict asked
        cdef bytearray reply
        if not (rtype in (T_GET_VALUES, T_DATA) or rtype > T_UNKNOWN_TYPE or rtype == 0):
            raise ProtocolError("%s record with request id 0" % RECORD_NAMES[rtype])
        if rtype != T_GET_VALUES:
            self._reply(T_UNKNOWN_TYPE, bytes([rtype, 0, 0, 0, 0, 0, 0, 0]))
            return STEP_RECORD
        asked = {}
        parse_pairs(content, clen, asked, None)
        known = {b"FCGI_MAX_CONNS": b"%d" % self.max_conns, b"FCGI_MAX_REQS": b"%d" % self.max_reqs,
                 b"FCGI_MPXS_CONNS": b"0"}
        reply = bytearray()
        for name in asked:
            value = known.get(name)
            if value is not None:
                _pair_into(reply, name, value)
        self._reply(T_GET_VALUES_RESULT, bytes(reply))
        return STEP_RECORD

    cdef Step _on_begin(self, int rid, const unsigned char *content,
                        Py_ssize_t clen) except <Step>-1:
        """BEGIN_REQUEST: a RESPONDER request starts; another while one is active is refused
        (CANT_MPX_CONN) or waits its turn (STEP_BLOCKED); another role is refused."""
        cdef int role
        if clen != 8:
            raise ProtocolError("BEGIN_REQUEST body of %d bytes (must be 8)" % clen)
        role = (content[0] << 8) | content[1]
        if self.state != ST_IDLE:
            if rid != self.request_id:
                self._reply_end(rid, S_CANT_MPX_CONN)
                return STEP_RECORD
            if self.state == ST_INPUT_DONE:
                return STEP_BLOCKED
            raise ProtocolError("second BEGIN_REQUEST for the active request %d" % rid)
        if role != ROLE_RESPONDER:
            self._reply_end(rid, S_UNKNOWN_ROLE)
            if not (content[2] & FLAG_KEEP_CONN):
                self.want_close = True
            return STEP_RECORD
        self.state = ST_PARAMS
        self.request_id = rid
        self.draining = 0
        self.role = role
        self.keep_conn = content[2] & FLAG_KEEP_CONN
        self.stdin_ended = False
        self.aborted = False
        del self.params[:]
        return STEP_BEGIN

    cdef int _reply_end(self, int rid, int protocol_status) except -1:
        """END_REQUEST refusing request ``rid`` (the codec's own answer, no STDOUT before)."""
        cdef char end[END_LEN]
        put_end(end, rid, 0, protocol_status)
        self.outbox += end[HEADER_LEN:END_LEN]
        return 0

    cdef Step _on_inactive(self, int rid, int rtype, Py_ssize_t clen) noexcept:
        """A record of no active request: ignored, as the specification has it (an aborted
        request is inactive for the web server already); the end of an ended request's
        body ends its draining."""
        if rid == self.draining and rtype == T_STDIN and clen == 0:
            self.draining = 0
        return STEP_RECORD

    cdef Step _on_params(self, const unsigned char *content, Py_ssize_t clen) except <Step>-1:
        if self.state != ST_PARAMS:
            raise ProtocolError("PARAMS record after the end of the params stream")
        if clen == 0:
            self.state = ST_STDIN
            return STEP_PARAMS_DONE
        if len(self.params) + clen > self.params_max:
            raise ProtocolError("FastCGI params too large (%d bytes, limit %d)"
                                % (len(self.params) + clen, self.params_max))
        self.params += PyBytes_FromStringAndSize(<const char *>content, clen)
        return STEP_RECORD

    cdef Step _on_stdin(self, const unsigned char *content, Py_ssize_t clen) except <Step>-1:
        if self.state == ST_PARAMS:
            raise ProtocolError("STDIN record before the end of the params stream")
        if self.stdin_ended:
            if clen == 0:
                return STEP_RECORD
            raise ProtocolError("STDIN record after the end of the stdin stream")
        if clen == 0:
            self.stdin_ended = True
            self.state = ST_INPUT_DONE
            return STEP_STDIN_END
        self.chunk = <const char *>content
        self.chunk_len = clen
        return STEP_STDIN

    cdef Step _on_abort(self) noexcept:
        self.aborted = True
        self.state = ST_INPUT_DONE
        return STEP_ABORT

    cdef int _close_request(self) except -1:
        """The active request ends (its response is being sent); returns its id. A body
        not all read is drained after it."""
        cdef int rid = self.request_id
        if self.state == ST_IDLE:
            raise RuntimeError("end_request() with no active request")
        if not self.stdin_ended and not self.aborted:
            self.draining = rid
        self.state = ST_IDLE
        self.request_id = 0
        if not self.keep_conn:
            self.want_close = True
        return rid

    def feed(self, data):
        """Take received bytes; return the events they complete (see fpm/_codec.pyi)."""
        cdef const unsigned char[:] view = data
        cdef Py_ssize_t n = view.shape[0]
        cdef Step step
        cdef dict params
        events = []
        self._reserve(n)
        if n:
            memcpy(self.buf + self.end, &view[0], n)
        self.end += n
        while True:
            step = self._step()
            if step == STEP_NEED or step == STEP_BLOCKED:
                return events
            if step == STEP_BEGIN:
                events.append(("begin", self.request_id, self.role, bool(self.keep_conn)))
            elif step == STEP_PARAMS_DONE:
                params = {}
                parse_pairs(<const unsigned char *>PyByteArray_AS_STRING(self.params),
                            PyByteArray_GET_SIZE(self.params), params, None)
                events.append(("params", self.request_id, params))
            elif step == STEP_STDIN:
                events.append(("stdin", self.request_id, PyBytes_FromStringAndSize(self.chunk, self.chunk_len)))
            elif step == STEP_STDIN_END:
                events.append(("stdin_end", self.request_id))
            elif step == STEP_ABORT:
                events.append(("abort", self.request_id))

    def eof(self):
        """The peer closed: raise ProtocolError when that cut a record or a request short."""
        cdef Py_ssize_t avail = self.end - self.start, total
        cdef const unsigned char *p = <const unsigned char *>self.buf + self.start
        while avail >= HEADER_LEN:
            total = HEADER_LEN + ((p[4] << 8) | p[5]) + p[6]
            if total > avail:
                break
            p += total
            avail -= total
        if avail >= HEADER_LEN:
            raise ProtocolError("truncated record: the peer hung up after %d of %d bytes of a %s record"
                                % (avail, HEADER_LEN + ((p[4] << 8) | p[5]) + p[6],
                                   RECORD_NAMES.get(p[1], "type %d" % p[1])))
        if avail:
            raise ProtocolError("truncated record: the peer hung up after %d of 8 header bytes" % avail)
        if self.end - self.start > avail:
            raise ProtocolError("the peer hung up with %d bytes of records not yet processed"
                                % (self.end - self.start))
        if self.state == ST_PARAMS:
            raise ProtocolError("the peer hung up before the end of the params of request %d" % self.request_id)
        if self.state == ST_STDIN:
            raise ProtocolError("the peer hung up before the end of the body of request %d" % self.request_id)

    def data_to_send(self):
        """Replies the codec made itself (GET_VALUES_RESULT, UNKNOWN_TYPE, END_REQUEST refusals)."""
        out = bytes(self.outbox)
        del self.outbox[:]
        return out

    def end_request(self, unsigned int app_status=0, int protocol_status=S_REQUEST_COMPLETE):
        """Bytes that end the active request (empty STDOUT + END_REQUEST); the next may begin."""
        cdef char end[END_LEN]
        put_end(end, self._close_request(), app_status, protocol_status)
        return end[:END_LEN]
