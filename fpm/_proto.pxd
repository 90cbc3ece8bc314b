# FastCGI 1.0 server side: the sans-IO codec and the worker's serve loop.
# This header declares the C-level state; _proto.pyx holds the logic.


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents


# What Decoder._step() found in the buffer.
cdef enum Step:
    STEP_NEED = 0          # no whole record buffered: read more
    STEP_RECORD = 1        # a record was consumed that needs nothing from the caller
    STEP_BEGIN = 2         # a RESPONDER request started
    STEP_PARAMS_DONE = 3   # the params stream ended: the request can run
    STEP_STDIN = 4         # stdin bytes at Decoder.chunk / Decoder.chunk_len
    STEP_STDIN_END = 5     # the empty STDIN record
    STEP_ABORT = 6         # ABORT_REQUEST for the active request
    STEP_BLOCKED = 7       # the next request's BEGIN_REQUEST waits until end_request()


# Request states of a connection (one request at a time: FCGI_MPXS_CONNS=0).
cdef enum State:
    ST_IDLE = 0
    ST_PARAMS = 1
    ST_STDIN = 2
    ST_INPUT_DONE = 3


cdef class Decoder:
    cdef char *buf                       # received bytes [start, end)
    cdef Py_ssize_t cap, start, end
    cdef Py_ssize_t params_max
    cdef dict known_values
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
    cdef void _consume(self, Py_ssize_t n) noexcept
    cdef int _management(self, int rtype, const unsigned char *content, Py_ssize_t clen) except -1
    cdef int _reply_end(self, int request_id, unsigned int app_status, int protocol_status) except -1
    cdef bytes _end(self, unsigned int app_status, int protocol_status)


cdef class Conn:
    cdef int fd
    cdef Decoder dec
    cdef bytearray body                  # stdin received and not yet read by the app
    cdef Py_ssize_t body_pos
    cdef str peer_cache


cdef class Worker:
    cdef list listen_fds
    cdef object app
    cdef dict base_environ
    cdef str mount
    cdef Py_ssize_t params_max, max_conns, max_reqs
    cdef int read_timeout_ms
    cdef object log_peer, log_app_error
    cdef pollfd *pfds
    cdef int npfds, nlisten, pfds_cap
    cdef list held                       # Conn objects idle between requests, parallel to pfds[nlisten:]
    cdef char *out                       # response bytes not yet written
    cdef Py_ssize_t out_len, out_cap
    cdef public unsigned long requests
    cdef bint wrote                      # some of the current response reached the socket

    cdef int _hold(self, Conn conn) except -1
    cdef Conn _unhold(self, int index)
    cdef int _serve_conn(self, Conn conn, bint fresh) except -1
    cdef int _run_request(self, Conn conn) except -1
    cdef int _fill(self, Conn conn, bint for_body) except -1
    cdef int _read(self, Conn conn, bint wait) except -1
    cdef int _out_reserve(self, Py_ssize_t n) except -1
    cdef int _out_append(self, const char *data, Py_ssize_t n) except -1
    cdef int _out_record(self, int rtype, int request_id, const char *data, Py_ssize_t n) except -1
    cdef int _out_stream(self, Conn conn, int rtype, int request_id, object data) except -1
    cdef int _flush(self, Conn conn) except -1
    cdef int _write_all(self, Conn conn, const char *data, Py_ssize_t n) except -1
    cdef void _close(self, Conn conn) noexcept
    cdef int _drop(self, Conn conn, str level, str message) except -1
