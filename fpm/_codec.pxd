# The FastCGI 1.0 codec, sans-IO: the record layout, the one encoder of output records, the
# name-value pairs and the Decoder. It makes no system call; _worker cimports it.

cimport cython
from libc.string cimport memcpy, memset
from posix.uio cimport iovec


# Record types, roles and sizes of the FastCGI 1.0 specification.
cdef enum:
    T_BEGIN = 1
    T_ABORT = 2
    T_END = 3
    T_PARAMS = 4
    T_STDIN = 5
    T_STDOUT = 6
    T_STDERR = 7
    T_DATA = 8
    T_GET_VALUES = 9
    T_GET_VALUES_RESULT = 10
    T_UNKNOWN_TYPE = 11
    ROLE_RESPONDER = 1
    FLAG_KEEP_CONN = 1
    S_REQUEST_COMPLETE = 0
    S_CANT_MPX_CONN = 1
    S_UNKNOWN_ROLE = 3
    HEADER_LEN = 8
    # Stream records carry at most this much (a multiple of 8) so that only the last one
    # needs padding.
    BLOCK = 65528
    # What ends a response: an empty STDOUT record, then END_REQUEST (8 bytes of content).
    END_LEN = 3 * HEADER_LEN
    # A decoder's buffer takes this much per read.
    READ_SIZE = 65536
    # Names and values of this many params (in order) are kept for reuse by the next request.
    PAIR_CACHE_SLOTS = 512


# What Decoder._step() found in the buffer.
cdef enum Step:
    STEP_NEED = 0          # no whole record buffered: read more
    STEP_RECORD = 1        # a record was consumed that needs nothing from the caller
    STEP_BEGIN = 2         # a RESPONDER request started
    STEP_PARAMS_DONE = 3   # the params stream ended: the request can run
    STEP_STDIN = 4         # stdin bytes at Decoder.chunk / Decoder.chunk_len
    STEP_STDIN_END = 5     # the empty STDIN record
    STEP_ABORT = 6         # ABORT_REQUEST for the active request
    STEP_BLOCKED = 7       # the next request's BEGIN_REQUEST waits until its end


# What head_status() makes of the bytes that start a request.
cdef enum Head:
    HEAD_PARTIAL = 0       # no whole head yet (BEGIN_REQUEST + the params' end): wait for it
    HEAD_BODY = 1          # the head, not yet the whole body (the empty STDIN record)
    HEAD_READY = 2         # the whole request, or bytes the decoder answers or refuses at once


# Request states of a connection (one request at a time: FCGI_MPXS_CONNS=0).
cdef enum State:
    ST_IDLE = 0
    ST_PARAMS = 1
    ST_STDIN = 2
    ST_INPUT_DONE = 3


@cython.final
cdef class Decoder:
    cdef char *buf                       # received bytes [start, end)
    cdef Py_ssize_t cap, start, end
    cdef Py_ssize_t params_max
    cdef int max_conns, max_reqs         # what GET_VALUES answers
    cdef State state
    cdef readonly int request_id, role
    cdef readonly bint keep_conn
    cdef bint stdin_ended, aborted
    cdef int draining                    # an ended request whose STDIN is still arriving
    cdef public bint want_close          # a reply ended a non-keep request: close after sending
    cdef bytearray params                # raw PARAMS stream of the active request
    cdef bytearray outbox                # replies the codec makes by itself
    cdef const char *chunk               # STEP_STDIN payload, valid until the next read
    cdef Py_ssize_t chunk_len

    cdef int _reserve(self, Py_ssize_t n) except -1
    cdef Step _step(self) except <Step>-1
    cdef Step _on_management(self, int rtype, const unsigned char *content, Py_ssize_t clen) except <Step>-1
    cdef Step _on_begin(self, int rid, const unsigned char *content, Py_ssize_t clen) except <Step>-1
    cdef Step _on_inactive(self, int rid, int rtype, Py_ssize_t clen) noexcept
    cdef Step _on_params(self, const unsigned char *content, Py_ssize_t clen) except <Step>-1
    cdef Step _on_stdin(self, const unsigned char *content, Py_ssize_t clen) except <Step>-1
    cdef Step _on_abort(self) noexcept
    cdef int _reply(self, int rtype, bytes content) except -1
    cdef int _reply_end(self, int rid, int protocol_status) except -1
    cdef int _close_request(self) except -1


# --- the encoder: every output record is framed here -------------------------------------

cdef inline int put_header(unsigned char *h, int rtype, int request_id,
                           Py_ssize_t clen) noexcept nogil:
    """The header of a record carrying ``clen`` bytes; returns the padding after them."""
    h[0] = 1
    h[1] = <unsigned char>rtype
    h[2] = <unsigned char>(request_id >> 8)
    h[3] = <unsigned char>(request_id & 0xff)
    h[4] = <unsigned char>(clen >> 8)
    h[5] = <unsigned char>(clen & 0xff)
    h[6] = <unsigned char>((-clen) & 7)
    h[7] = 0
    return (-clen) & 7


cdef inline const char *padding() noexcept nogil:
    """Zero bytes for a record's padding (at most 7)."""
    return b"\0\0\0\0\0\0\0\0"


cdef inline Py_ssize_t records_len(Py_ssize_t n) noexcept nogil:
    """Bytes of the records that carry ``n`` bytes of a stream (put_records)."""
    cdef Py_ssize_t rest = n % BLOCK
    return (n // BLOCK) * (HEADER_LEN + BLOCK) + (
        HEADER_LEN + rest + ((-rest) & 7) if rest or not n else 0)


cdef inline Py_ssize_t put_records(char *dst, int rtype, int request_id, const char *p,
                                   Py_ssize_t n) noexcept nogil:
    """``n`` bytes of a stream at ``dst`` as records of at most BLOCK bytes, or one empty
    record (the stream's end) for none; returns the bytes written, records_len(n)."""
    cdef Py_ssize_t at = 0, i = 0, block
    cdef int pad
    while True:
        block = min(n - i, BLOCK)
        pad = put_header(<unsigned char *>dst + at, rtype, request_id, block)
        if block:
            memcpy(dst + at + HEADER_LEN, p + i, block)
        memset(dst + at + HEADER_LEN + block, 0, pad)
        at += HEADER_LEN + block + pad
        i += block
        if i >= n:
            return at


cdef inline Py_ssize_t put_end(char *dst, int request_id, unsigned int app_status,
                               int protocol_status) noexcept nogil:
    """What ends a response, at ``dst``: the empty STDOUT record and END_REQUEST (END_LEN)."""
    cdef unsigned char body[8]
    body[0] = (app_status >> 24) & 0xff
    body[1] = (app_status >> 16) & 0xff
    body[2] = (app_status >> 8) & 0xff
    body[3] = app_status & 0xff
    body[4] = <unsigned char>protocol_status
    body[5] = body[6] = body[7] = 0
    put_records(dst, T_STDOUT, request_id, NULL, 0)
    put_records(dst + HEADER_LEN, T_END, request_id, <const char *>body, 8)
    return END_LEN


cdef inline int frame_iov(iovec *iov, unsigned char *headers, int records, int rtype,
                          int request_id, const char *p, Py_ssize_t n,
                          Py_ssize_t *done) noexcept nogil:
    """iovecs for writev() of up to ``records`` records carrying p[*done:n] in place, their
    headers written to ``headers`` (8 bytes each); moves *done on; returns the iovec count
    (at most 3 per record)."""
    cdef Py_ssize_t i = done[0], block
    cdef int cnt = 0, k = 0, pad
    while i < n and k < records:
        block = min(n - i, BLOCK)
        pad = put_header(headers + HEADER_LEN * k, rtype, request_id, block)
        iov[cnt].iov_base = headers + HEADER_LEN * k
        iov[cnt].iov_len = HEADER_LEN
        iov[cnt + 1].iov_base = <void *>(p + i)
        iov[cnt + 1].iov_len = block
        cnt += 2
        if pad:
            iov[cnt].iov_base = <void *>padding()
            iov[cnt].iov_len = pad
            cnt += 1
        i += block
        k += 1
    done[0] = i
    return cnt


cdef inline void set_request_id(char *records, Py_ssize_t n, int request_id) noexcept nogil:
    """Give every record in records[:n] ``request_id`` (async-signal-safe: memory only)."""
    cdef Py_ssize_t at = 0
    while at + HEADER_LEN <= n:
        records[at + 2] = (request_id >> 8) & 0xff
        records[at + 3] = request_id & 0xff
        at += HEADER_LEN + ((<unsigned char>records[at + 4]) << 8
                            | <unsigned char>records[at + 5]) + <unsigned char>records[at + 6]


# --- parsing ------------------------------------------------------------------------------

cdef Py_ssize_t parse_pairs(const unsigned char *p, Py_ssize_t n, dict out,
                            list cache) except -1
cdef Head head_status(const unsigned char *p, Py_ssize_t n, Py_ssize_t *head_end) noexcept nogil
