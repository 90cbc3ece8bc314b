# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""A worker's loop: accept, read, dispatch to the WSGI application, write; over raw file
descriptors, driving the codec (_codec) and stamping its scoreboard slot (_board).

No other module cimports this one, so it has no .pxd: each class declares its own state.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.exc cimport PyErr_CheckSignals
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.errno cimport (EAGAIN, EBADMSG, EEXIST, EINTR, EINVAL, ECONNRESET, EPIPE, ECONNABORTED,
                         EMFILE, ENFILE, ENOBUFS, ENOMEM, errno)
from libc.signal cimport SIGTERM, SIGINT, SIGQUIT, SIG_DFL, signal as c_signal, raise_
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memset
from posix.resource cimport getrusage, rusage, RUSAGE_SELF
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC, CLOCK_PROCESS_CPUTIME_ID, CLOCK_REALTIME
from posix.types cimport off_t
from posix.uio cimport iovec, writev
from posix.unistd cimport close, pread, read as c_read, write as c_write

from fpm._board cimport (Board, BoardHeader, C_REFUSAL_QUIET, REFUSED_ACCEPT, REFUSED_BODY,
                         REFUSED_HEAD, REFUSED_PARKED, REFUSED_PROTOCOL, ORDER_TIMEOUT,
                         SAYS_FINISHING, SAYS_HOLD_RECYCLING, SAYS_SHUT,
                         Slot, Stage, STAGE_FINISHING, STAGE_IDLE, STAGE_READING, count, cstr,
                         fpm_atomic_add, fpm_cas64, fpm_swap64, stamp_done, stamp_request, stamp_stage)
from fpm._codec cimport (BLOCK, Decoder, END_LEN, HEAD_READY, HEADER_LEN, READ_SIZE,
                         S_REQUEST_COMPLETE, ST_IDLE, ST_STDIN, STEP_ABORT, STEP_BEGIN,
                         STEP_BLOCKED, STEP_NEED, STEP_PARAMS_DONE, STEP_STDIN, STEP_STDIN_END,
                         Step, T_STDERR, T_STDOUT, frame_iov, head_status, padding, parse_pairs,
                         put_end, put_header, put_records, records_len, set_request_id)
from fpm._kept cimport (CLAIM_OK, CLAIM_STALE, DEPUTY_MAX_MS, DEPUTY_MS, GEN_MASK, K_FREE,
                       KeptHeader, ROLE_DEPUTY, ROLE_NONE, ROLE_REST, ROLE_WATCHER, Table,
                       k_entries, k_gen, k_load, k_state, kept_alloc, kept_claim, kept_drop,
                       kept_call, kept_leave_role, kept_release, kept_take_role, kept_vacate,
                       q_kept, q_source, q_stop)
from fpm._passing cimport (C_TICKET_DUPS, C_TICKET_KEPT, C_TICKET_LATE, C_TICKET_SHARE, Ticket,
                           recv_conn, send_conn)
from fpm._sys cimport (EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLLET, EPOLLEXCLUSIVE, EPOLLIN,
                      EWOULDBLOCK, MSG_DONTWAIT, POLLIN, SCM_TIMESTAMPNS, SHUT_RDWR, SHUT_WR,
                      SOCK_CLOEXEC, SOL_SOCKET, O_CLOEXEC,
                      O_RDONLY, CMSG_DATA, CMSG_FIRSTHDR, CMSG_NXTHDR, accept4, cmsghdr,
                      epoll_create1, epoll_ctl, epoll_event, epoll_wait, msghdr, open_c, poll,
                      pollfd, recv, recvmsg, sendfile, shutdown, ssize_t)

import errno as errno_mod
import os
import socket
import stat
import sys
import tempfile
import traceback
from urllib.parse import unquote_to_bytes

from fpm._codec import HTTPOnFastCGIPort, PeerClosed, PeerError, ProtocolError, RequestAborted

# What iter() gives for a list or tuple: each chunk of it is there already (send_result).
_LIST_ITERATOR = type(iter([]))
_TUPLE_ITERATOR = type(iter(()))


cdef class Serving  # declared ahead: a Request holds its worker's serving side


cdef enum:
    # Bodies up to this size are copied into the output buffer; larger ones go out by writev.
    COPY_LIMIT = 32768
    # Records of a larger body written by one writev() (3 iovecs each, after the buffer's).
    WRITEV_RECORDS = 32
    # The output buffer is written out once it holds this much.
    OUT_FLUSH = 262144
    # How long a worker waits for the rest of a request that is not all there when it first
    # reads (nginx writes right after connect(), and a long head may come in two writes)
    # before it parks the connection with the master: long enough that nginx's connections
    # are not parked for that race even on a busy machine (a park costs one a few hundred
    # µs; none race on TCP, whose listeners defer accept() until data comes)...
    FIRST_BYTES_MS = 10
    # ...and not at all after this many waits in vain within VAIN_WINDOW_US of each other:
    # a flood of silent or dribbling connections goes to the master as fast as the worker
    # accepts them, and costs it VAIN_WAITS waits per flood.
    VAIN_WAITS = 8
    VAIN_WINDOW_US = 1000000
    # How long a stopping worker waits for the first bytes of a connection it holds
    # (PHP-FPM's fcgi_accept_request).
    FIRST_BYTES_ON_STOP_MS = 5000
    # A worker told to stop while its master finishes (QUIT) drains first: it stops once
    # it holds nothing and the master's listeners stopped listening (it looks every
    # FINISH_LOOK_MS), or no request came for FINISH_QUIET_MS (the web server has gone
    # elsewhere: its new connections are refused), at most FINISH_MAX_MS after the QUIT.
    FINISH_QUIET_MS = 500
    FINISH_MAX_MS = 5000
    FINISH_LOOK_MS = 2
    # How a connection comes to _serve_conn: just accepted, a kept one that became
    # readable between requests, or handed over by the master with its head (fpm.parking).
    CONN_FRESH = 0
    CONN_KEPT = 1
    CONN_HANDED = 2
    # _await_head(), _more(): the connection was parked or closed; the worker is done with it.
    GONE = -3
    # The longest pause of a worker's accepting after accept() ran out of descriptors.
    ACCEPT_PAUSE_MAX_MS = 1000
    # Idle kept connections one worker watches; beyond this a new idle one is closed.
    C_MAX_HELD = 1024
    # A kept connection is shared with the pool's other workers once it has served this
    # many requests: a web server keeps it, and does not close it after each request (a
    # share costs the master a message to every worker). Once the pool has shared one (its
    # web server keeps them), after its first: held alone until its second, a request on it
    # would wait for a worker busy with another connection's (a 1.5 s one: measured).
    SHARE_AFTER = 2
    # Conn objects a worker keeps to serve shared connections with.
    SPARE_CONNS = 4
    # Connections a worker takes from one source in a row when it woke to find some queued
    # there (_take_queued): as many as its epoll events, so new connections have as fair a
    # share of a wake as the kept ones whose requests it serves then.
    TAKE_BATCH = 16


MAX_HELD = C_MAX_HELD
# The pool's bell (fpm._kept), in the epoll set of the workers that do not watch them.
cdef uint64_t BELL_EVENT = 1ULL << 61

# A CONTENT_LENGTH beyond what a Py_ssize_t holds (PY_SSIZE_T_MAX, 19 digits).
cdef Py_ssize_t LENGTH_OVERFLOW = -2
cdef str MAX_LENGTH_TEXT = str(PY_SSIZE_T_MAX)
cdef Py_ssize_t MAX_LENGTH_DIGITS = len(MAX_LENGTH_TEXT)
# nginx forwards Content-Type/Length both as CGI params and as HTTP_ headers.
cdef tuple CONTENT_HEADERS = (("CONTENT_TYPE", "HTTP_CONTENT_TYPE"), ("CONTENT_LENGTH", "HTTP_CONTENT_LENGTH"))
cdef bytes HTTP_REFUSAL = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                b"This port speaks FastCGI, not HTTP: put a web server (nginx fastcgi_pass) "
                b"in front of pyfpm.\n")


class TooSlow(PeerError):
    """The peer did not send a request's head, or its body, as fast as the pool asks
    (``cause``: a REFUSAL_CAUSES index). Counted on the board; the master logs the episode."""

    def __init__(self, int cause, str text):
        super().__init__(text)
        self.cause = cause


cdef bint _stop = 0
# Told to stop while the master finishes (SAYS_FINISHING): serve what comes on the
# connections it has and what is queued, each kept one closed after its response, then stop.
cdef bint _finishing = 0
cdef BoardHeader *_g_header = NULL  # the pool's, for the QUIT handler
cdef int _wake_w = -1  # a pipe the waiting loop polls, so a stop cannot slip in before poll()
cdef int _wake_pool = -1  # the pool's stop eventfd, in the queue its watcher sleeps on
cdef uint64_t _ONE = 1


cdef void _stop_now() noexcept nogil:
    global _stop
    _stop = 1
    if _wake_w >= 0:
        c_write(_wake_w, b"q", 1)
    if _wake_pool >= 0:
        c_write(_wake_pool, &_ONE, sizeof(_ONE))


def request_stop():
    """Ask serve() to return after the request in progress (graceful stop)."""
    _stop_now()


cdef void _on_quit(int sig) noexcept nogil:
    """Stop after the request in progress; while the master finishes, drain first
    (Worker.run; one stopping already, to recycle, closes what it holds instead of parking
    it). A second QUIT stops at once."""
    global _finishing
    if _finishing or _g_header == NULL or not (
            (<volatile uint32_t *>&_g_header.master_says)[0] & SAYS_FINISHING):
        _stop_now()
        return
    _finishing = 1
    if _wake_w >= 0:
        c_write(_wake_w, b"f", 1)
    if _wake_pool >= 0:
        c_write(_wake_pool, &_ONE, sizeof(_ONE))


def watch_quit():
    """SIGQUIT means request_stop(), from a C handler: a Python-level handler would only run
    at the next bytecode, and a QUIT landing between the loop's check and its poll() would
    then be lost until the next connection."""
    c_signal(SIGQUIT, _on_quit)



cdef int _open_null() noexcept:
    """/dev/null, close-on-exec; -1 when no descriptor is free."""
    return open_c(b"/dev/null", O_RDONLY | O_CLOEXEC)


cpdef int accept_pause_ms(int streak):
    """How long a worker stops accepting after accept() failed for want of descriptors
    ``streak`` + 1 times in a row: 10 ms, doubling, at most ACCEPT_PAUSE_MAX_MS."""
    if streak >= 7:
        return ACCEPT_PAUSE_MAX_MS
    return min(ACCEPT_PAUSE_MAX_MS, 10 << max(0, streak))


cpdef int first_bytes_ms(int vain, int64_t since_vain_us):
    """How long a worker waits for a request that is not all there before it parks the
    connection, after ``vain`` waits in vain in a row, the last ``since_vain_us`` ago."""
    return 0 if vain >= VAIN_WAITS and since_vain_us < VAIN_WINDOW_US else FIRST_BYTES_MS


cpdef int64_t body_due_us(int64_t start_us, int64_t allowance_us, uint64_t received,
                          uint64_t rate):
    """When a body begun at ``start_us`` must have sent more than ``received`` bytes, at
    ``rate`` bytes/s after ``allowance_us`` (request_body_min_rate, request_read_timeout):
    each byte moves the deadline by 1/rate s."""
    return start_us + allowance_us + <int64_t>(received * 1000000 // rate)




cdef inline int64_t _now_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000 + ts.tv_nsec // 1000


cdef inline int64_t _cpu_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return <int64_t>ts.tv_sec * 1000000 + ts.tv_nsec // 1000


# A worker's own slot when it serves without a scoreboard (tests, benches).
cdef Slot _private_slot

# --- what a SIGTERM does to a request in progress --------------------------------------------
# The handler runs in signal context: it may only write() prebuilt bytes. A request whose
# response has not started gets a complete error response (504 when the master terminates it
# for request_terminate_timeout, else 503) so the web server shows a clean error instead of
# "upstream prematurely closed"; then the default action kills the worker.

cdef int _g_fd = -1              # the connection of the request in progress
cdef int _g_rid = 0
cdef volatile int _g_started = 0  # some of its response may have reached the socket
cdef Slot *_g_slot = &_private_slot
cdef char _timeout_reply[256]
cdef char _stopping_reply[256]
cdef int _timeout_len = 0, _stopping_len = 0


cdef int _error_reply(char *dst, bytes status, bytes text) except -1:
    """A whole response of request id 0 (the handler sets the id): STDOUT(headers + text),
    its end and END_REQUEST(app status 1)."""
    cdef bytes out = b"Status: " + status + b"\r\nContent-Type: text/plain\r\n\r\n" + text
    cdef Py_ssize_t n = PyBytes_GET_SIZE(out)
    assert records_len(n) + END_LEN <= 256
    n = put_records(dst, T_STDOUT, 0, PyBytes_AS_STRING(out), n)
    return n + put_end(dst + n, 0, 1, S_REQUEST_COMPLETE)


cdef void _on_term(int sig) noexcept nogil:
    cdef char *reply
    cdef int n, at = 0, w
    if _g_fd >= 0 and not _g_started:
        if _g_slot.order == ORDER_TIMEOUT:
            reply, n = _timeout_reply, _timeout_len
        else:
            reply, n = _stopping_reply, _stopping_len
        set_request_id(reply, n, _g_rid)
        while at < n:
            w = c_write(_g_fd, reply + at, n - at)
            if w <= 0:
                break
            at += w
    c_signal(sig, SIG_DFL)
    raise_(sig)  # blocked while the handler runs; delivered, with its default action, on return


cdef inline void _arm_term_reply(int fd, int request_id) noexcept:
    """From here a SIGTERM answers request ``request_id`` on ``fd`` (until some of its
    response is written, or _disarm_term_reply)."""
    global _g_fd, _g_rid, _g_started
    _g_rid = request_id
    _g_started = 0
    _g_fd = fd


cdef inline void _disarm_term_reply() noexcept:
    global _g_fd
    _g_fd = -1



cdef class FileWrapper:
    """wsgi.file_wrapper: regular files go out by sendfile(), other file-likes by read()."""
    cdef public object filelike
    cdef public Py_ssize_t blksize

    def __init__(self, filelike, Py_ssize_t blksize=8192):
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self):
        return self

    def __next__(self):
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration

    def close(self):
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


cdef class Conn:
    """A connection a worker serves: its decoder, and what the loop knows of it."""
    cdef int fd
    cdef Decoder dec
    cdef str peer_cache
    cdef int64_t arrived_us              # kernel receive time of the request's first bytes (0: unknown)
    cdef int64_t head_due_us             # CLOCK_MONOTONIC: when its request head is due (0: not set yet)
    cdef uint64_t body_read              # bytes read while the body came (request_body_min_rate)
    cdef bint refused                    # a refusal was counted for its request: not again
    cdef bint late                       # the master handed it over with its body late
    cdef int served                      # requests begun on it here
    cdef int kid                         # its entry in the pool's shared table (-1: not shared)
    cdef uint32_t kgen                   # ...and the generation of that entry
    cdef bint dups                       # other processes may hold copies: shutdown() closes it
    cdef bint drained                    # its last read left nothing in the socket

    def __init__(self, int fd, Decoder dec):
        self.fd = fd
        self.dec = dec
        self.kid = -1

    cdef int reset(self, int fd) except -1:
        """Serve another connection with this object (its decoder between requests)."""
        self.fd = fd
        self.dec.start = self.dec.end = 0
        self.peer_cache = None
        self.drained = False
        self.arrived_us = self.head_due_us = 0
        self.body_read = 0
        self.refused = self.late = False
        return 0


cdef class Input:
    """wsgi.input for a body held in memory (request_body_buffer_size); larger bodies are
    a file. read() of the whole body hands out the body itself, not a copy."""
    cdef bytes data
    cdef Py_ssize_t pos

    def __init__(self, bytes data):
        self.data = data
        self.pos = 0

    cdef bytes _take(self, Py_ssize_t n):
        if self.pos == 0 and n == len(self.data):
            out = self.data
        else:
            out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(self.data) + self.pos, n)
        self.pos += n
        return out

    def read(self, size=-1):
        cdef Py_ssize_t n = len(self.data) - self.pos
        if size is not None and 0 <= size < n:
            n = size
        return self._take(n)

    def readline(self, size=-1):
        cdef Py_ssize_t end = self.data.find(b"\n", self.pos)
        end = len(self.data) if end < 0 else end + 1
        if size is not None and 0 <= size < end - self.pos:
            end = self.pos + size
        return self._take(end - self.pos)

    def readlines(self, hint=-1):
        lines = []
        total = 0
        for line in self:
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if line:
            return line
        raise StopIteration


cdef class Request:
    """One request's response side: start_response, write, wsgi.errors, and the body sender."""
    cdef Serving w
    cdef Conn conn
    cdef int rid
    cdef object status
    cdef list headers
    cdef readonly bint headers_sent
    cdef bint stderr_used
    cdef bint errors_logged              # wsgi.errors went to the error log: end its last line
    cdef readonly bint finished          # finish_request() has ended it for the web server
    cdef object peer                     # the access log's %R, read before finish_request() closed

    def __init__(self, Serving w, Conn conn, int rid):
        self.w = w
        self.conn = conn
        self.rid = rid

    def start_response(self, status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if self.w.wrote:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
            # Nothing reached the web server yet: the error response replaces what was queued.
            self.w._out_drop()
            self.headers_sent = False
        elif self.status is not None:
            raise AssertionError("start_response() called a second time without exc_info")
        if type(status) is not str or len(status) < 4 or not status[:3].isdigit() or status[3] != " ":
            raise ValueError("WSGI status must be a str like '200 OK', got %r" % (status,))
        if type(headers) is not list:
            raise TypeError("WSGI response headers must be a list, got %s" % type(headers).__name__)
        for item in headers:
            if type(item) is not tuple or len(item) != 2 or type(item[0]) is not str or type(item[1]) is not str:
                raise TypeError("WSGI response header must be a (str, str) tuple, got %r" % (item,))
        self.status = status
        self.headers = headers
        return self.write

    cdef int _send_headers(self) except -1:
        if self.status is None:
            raise AssertionError("the application sent a body before calling start_response()")
        lines = ["Status: ", self.status, "\r\n"]
        for name, value in self.headers:
            lines += (name, ": ", value, "\r\n")
        lines.append("\r\n")
        self.headers_sent = True
        self.w._out_stream(self.conn, T_STDOUT, self.rid, "".join(lines).encode("latin-1"))
        return 0

    cdef int _body(self, data, bint flush) except -1:
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError("WSGI body chunks must be bytes, got %s" % type(data).__name__)
            data = bytes(data)
        if self.finished:
            return 0  # the web server has the whole response already (PHP-FPM drops it too)
        if not self.headers_sent:
            self._send_headers()
        if PyBytes_GET_SIZE(data):
            self.w._out_stream(self.conn, T_STDOUT, self.rid, data)
        if flush:
            self.w._flush(self.conn)
        return 0

    def write(self, data):
        """The PEP 3333 write() callable: sends at once."""
        self._body(data, True)

    cdef int _sendfile(self, int fd) except -1:
        if not self.headers_sent:
            self._send_headers()
        return self.w._out_file(self.conn, self.rid, fd)

    cdef int _fail(self) except -1:
        """The app failed before any of its response was sent: a 500 takes its place."""
        self.status = None
        self.headers_sent = False
        self.start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return self._body(b"Internal Server Error\n", False)

    cdef int send_result(self, result) except -1:
        if self.finished:
            for chunk in result:  # run the app's generator to its end; nobody reads it
                pass
            return 0
        if type(result) is list or type(result) is tuple:
            for chunk in result:
                self._body(chunk, False)
        elif type(result) is FileWrapper and _regular_fileno((<FileWrapper>result).filelike) >= 0:
            self._sendfile(_regular_fileno((<FileWrapper>result).filelike))
        else:
            chunks = iter(result)
            # Over a list (a Django response) no chunk is waited for: all go out with the
            # end in one write, which a host killed mid-request has sent whole or not at all.
            # Other chunks go out as they come (PEP 3333).
            ready = type(chunks) is _LIST_ITERATOR or type(chunks) is _TUPLE_ITERATOR
            for chunk in chunks:
                if chunk:
                    self._body(chunk, not ready)
        if not self.headers_sent:
            self._send_headers()
        return 0

    def finish(self):
        """fpm.finish_request(): send the response so far and END_REQUEST, and let the web
        server go, while the application goes on in this worker. True if this call ended
        the request, False if it had ended already. Output after it is dropped."""
        if self.finished or self.conn.fd < 0:
            return False
        if self.status is None:
            raise RuntimeError("finish_request() called before start_response()")
        if not self.headers_sent:
            self._send_headers()
        self.w._finish(self)
        return True

    # wsgi.errors: to the web server as STDERR records (nginx logs them), to the error log,
    # or both (wsgi_errors). Once the web server has the response, only the log can take it.
    def write_error(self, s):
        if type(s) is not str:
            raise TypeError("wsgi.errors takes str, got %s" % type(s).__name__)
        if not s:
            return
        if self.w.errors_to_server and not self.finished:
            self.stderr_used = True
            self.w._out_stream(self.conn, T_STDERR, self.rid, s.encode("utf-8", "backslashreplace"))
        if self.w.errors_to_log or self.finished:
            if self.w.errors_log is None:
                sys.stderr.write(s)
            else:
                self.errors_logged = True
                self.w.errors_log.say(self.w._request_line(), s)


cdef class Errors:
    """wsgi.errors for one request."""
    cdef Request req

    def __init__(self, Request req):
        self.req = req

    def write(self, s):
        self.req.write_error(s)

    def writelines(self, seq):
        for s in seq:
            self.req.write_error(s)

    def flush(self):
        pass


cdef int _regular_fileno(filelike) except -2:
    fileno = getattr(filelike, "fileno", None)
    if fileno is None:
        return -1
    try:
        fd = fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else -1
    except (OSError, ValueError, AttributeError):
        return -1


cdef int _raise_write_error(int err) except -1:
    if err == EPIPE or err == ECONNRESET:
        raise PeerClosed("the peer hung up while the response was being sent")
    raise OSError(err, os.strerror(err))


cdef str _path_of(dict environ):
    """The path the client asked for, decoded as PEP 3333 wants (see README: the mount rule)."""
    uri = environ.get("REQUEST_URI")
    if uri:
        path = uri.partition("?")[0]
        if "://" in path[:10]:
            path = "/" + path.partition("://")[2].partition("/")[2]
        if "%" in path:
            path = unquote_to_bytes(path).decode("latin-1")
        return path
    info = environ.get("PATH_INFO")
    if info is not None:
        # Caddy and h2o send the whole path here, with SCRIPT_NAME empty (or a prefix of it).
        return environ.get("SCRIPT_NAME", "") + info
    return environ.get("DOCUMENT_URI") or environ.get("SCRIPT_NAME") or ""


cpdef int split_paths(dict environ, str mount) except -1:
    """Set SCRIPT_NAME and PATH_INFO for an app mounted at ``mount`` ("" for none): a path
    under the mount is split there, however the web server split it (Caddy and h2o send
    SCRIPT_NAME "", lighttpd and Apache's SetHandler split at a slash of their own); any other
    path keeps a PATH_INFO the server sent, else gets SCRIPT_NAME "" and PATH_INFO the path."""
    cdef bint sent = "PATH_INFO" in environ
    cdef Py_ssize_t n = len(mount)
    cdef str path
    if sent and not n:
        return 0
    path = _path_of(environ)
    # Compared in place: no mount + "/" string per request.
    if n and path.startswith(mount) and (len(path) == n or path[n] == "/"):
        environ["SCRIPT_NAME"] = mount
        environ["PATH_INFO"] = path[n:]
    elif not sent:
        environ["SCRIPT_NAME"] = ""
        environ["PATH_INFO"] = path
    return 0


class SpoolError(OSError):
    """A request body could not be written to its spool file."""


cdef class Refusal:
    """A short plain-text answer given instead of running the app (503, 413, 403, 500)."""
    cdef str status
    cdef bytes text

    def __init__(self, str status, bytes text):
        self.status = status
        self.text = text

    def __call__(self, environ, start_response):
        start_response(self.status, [("Content-Type", "text/plain")])
        return [self.text]


def request_start(value):
    """Seconds since the epoch from a request-start param: nginx's $msec (1700000000.123),
    or milli- or microseconds, optionally written t=... (X-Request-Start); 0 if unreadable."""
    if not value:
        return 0.0
    if value.startswith("t="):
        value = value[2:]
    try:
        t = float(value)
    except ValueError:
        return 0.0
    if t > 1e14:
        return t / 1e6
    if t > 1e11:
        return t / 1e3
    return t


cdef Py_ssize_t _content_length(str cl) except -3:
    """CONTENT_LENGTH in bytes, or LENGTH_OVERFLOW when no Py_ssize_t holds it (no body
    can be that long: answered 413). Only ASCII digits: str.isdigit() also takes '\xb2'
    and other digits int() refuses, and int() refuses more than 4300 digits."""
    if not (cl.isascii() and cl.isdigit()):
        raise ProtocolError("CONTENT_LENGTH %r is not a number" % cl)
    if len(cl) >= MAX_LENGTH_DIGITS:
        digits = cl.lstrip("0")
        if len(digits) > MAX_LENGTH_DIGITS or (len(digits) == MAX_LENGTH_DIGITS
                                               and digits > MAX_LENGTH_TEXT):
            return LENGTH_OVERFLOW
    return int(cl)


cdef str _uri_of(dict environ):
    return environ.get("REQUEST_URI") or environ.get("PATH_INFO") or "-"


cdef str _app_traceback():
    """The exception being handled, from the app's first frame on: the worker loop's own
    frames above it say nothing about the app's fault."""
    etype, value, tb = sys.exc_info()
    first = tb
    while first is not None and first.tb_frame.f_globals.get("__name__") == __name__:
        first = first.tb_next
    return "".join(traceback.format_exception(etype, value, first or tb)).rstrip("\n")


cdef int _bytearray_extend(bytearray b, const char *p, Py_ssize_t n) except -1:
    """Append without making a bytes object first."""
    cdef Py_ssize_t used = PyByteArray_GET_SIZE(b)
    PyByteArray_Resize(b, used + n)
    memcpy(PyByteArray_AS_STRING(b) + used, p, n)
    return 0


cdef int _spool_write(int fd, const char *p, Py_ssize_t n) except -1:
    cdef ssize_t w
    cdef int err
    while n > 0:
        with nogil:
            w = c_write(fd, p, n)
            err = errno
        if w < 0:
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            raise SpoolError("cannot spool a request body: %s" % os.strerror(err))
        p += w
        n -= w
    return 0


cdef Input _NO_BODY = Input(b"")  # wsgi.input of every request without a body


cdef object _body_input(object spool, bytearray grown, bytes body, Py_ssize_t filled,
                        Py_ssize_t length):
    """wsgi.input of a body read: its spool file, or in memory (see Worker._read_body)."""
    if spool is not None:
        spool.seek(0)
        return spool
    if grown is not None:
        return Input(bytes(grown))
    if filled:
        return Input(body if filled == length else body[:filled])
    return _NO_BODY
cdef Request _current = None  # the request the app is running, for finish_request()
cdef bint _said = 0  # the app wrote to sys.stdout or sys.stderr since the last request ended


def output_written():
    """Called by a worker's sys.stdout and sys.stderr (fpm.stdio) when a request writes to
    them: at its end the loop calls ``on_output()`` to end their last lines."""
    global _said
    _said = 1


def finish_request():
    """Send the current request's response and end it for the web server, which delivers
    it at once, while the application goes on working in this worker (PHP's
    fastcgi_finish_request()). True if this call ended it; False outside a request or
    when it had ended already. Raises RuntimeError before start_response()."""
    if _current is None:
        return False
    return _current.finish()




cdef int _epoll_add(int epfd, int fd, uint32_t events, uint64_t data) noexcept:
    """0, or the errno of epoll_ctl(EPOLL_CTL_ADD)."""
    cdef epoll_event ev
    ev.events = events
    ev.data.u64 = data
    return errno if epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0 else 0


cdef int _listen_epoll(int *fds, int nsources, int n) except -1:
    """An epoll set over ``n`` fds, each event carrying its index: the sources of new
    connections (the first ``nsources``), then the stop pipe and the kept channel. Sources
    are exclusive: with poll() every idle worker of the pool woke for each connection and
    all but one found the queue empty; the kernel now wakes one (one request at a time, 2
    workers: 1.03 wake-ups per request, was 1.22)."""
    cdef int i, err, epfd = epoll_create1(EPOLL_CLOEXEC)
    if epfd < 0:
        raise OSError(errno, "epoll_create1() failed: " + os.strerror(errno))
    for i in range(n):
        err = _epoll_add(epfd, fds[i], EPOLLIN | (EPOLLEXCLUSIVE if i < nsources else 0), i)
        if err:
            close(epfd)
            raise OSError(err, "epoll_ctl(%d) failed: %s" % (fds[i], os.strerror(err)))
    return epfd


cdef class Output:
    """The response bytes a worker queues and writes: records framed by the codec
    (_codec.pxd), sent by writev() and sendfile()."""
    cdef char *out                       # response bytes not yet written
    cdef Py_ssize_t out_len, out_cap
    cdef bint wrote                      # some of the current response reached the socket

    def __cinit__(self):
        self.out_cap = 65536
        self.out = <char *>malloc(self.out_cap)
        if self.out == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.out)

    cdef int _out_reserve(self, Py_ssize_t n) except -1:
        cdef char *nb
        cdef Py_ssize_t cap = self.out_cap
        if self.out_len + n <= cap:
            return 0
        while cap < self.out_len + n:
            cap *= 2
        nb = <char *>realloc(self.out, cap)
        if nb == NULL:
            raise MemoryError()
        self.out = nb
        self.out_cap = cap
        return 0

    cdef int _out_append(self, const char *data, Py_ssize_t n) except -1:
        if n:
            self._out_reserve(n)
            memcpy(self.out + self.out_len, data, n)
            self.out_len += n
        return 0

    cdef int _out_records(self, int rtype, int request_id, const char *p, Py_ssize_t n) except -1:
        """Queue ``n`` bytes of a stream as records (one empty record, the stream's end, for none)."""
        self._out_reserve(records_len(n))
        self.out_len += put_records(self.out + self.out_len, rtype, request_id, p, n)
        return 0

    cdef int _out_end(self, Conn conn, unsigned int app_status) except -1:
        """End the connection's active request: queue the end of its response, send all."""
        cdef int rid = conn.dec._close_request()
        self._out_reserve(END_LEN)
        self.out_len += put_end(self.out + self.out_len, rid, app_status, S_REQUEST_COMPLETE)
        if _finishing and conn.dec.keep_conn:
            # Closed after this response (_settle): nginx reuses a kept connection only when
            # nothing follows END_REQUEST in what it read, so a record after it (an empty
            # STDERR, which ends nothing) has it let go of the connection instead of sending
            # its next request on it as it closes.
            self._out_records(T_STDERR, rid, NULL, 0)
        return self._flush(conn)

    cdef void _out_drop(self) noexcept:
        """Forget the output queued and not sent (an error answer takes its place)."""
        self.out_len = 0

    cdef int _out_stream(self, Conn conn, int rtype, int request_id, object data) except -1:
        """Queue stream records; a large body goes out at once by writev() without a copy."""
        cdef const char *p = PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), done = 0
        cdef iovec iov[1 + 3 * WRITEV_RECORDS]
        cdef unsigned char headers[HEADER_LEN * WRITEV_RECORDS]
        cdef int cnt
        global _g_started
        if n == 0:
            return 0  # an empty record would end the stream
        if n <= COPY_LIMIT:
            self._out_records(rtype, request_id, p, n)
            if self.out_len >= OUT_FLUSH:
                self._flush(conn)
            return 0
        while done < n:
            cnt = 0
            if self.out_len:
                iov[0].iov_base = self.out
                iov[0].iov_len = self.out_len
                cnt = 1
            cnt += frame_iov(iov + cnt, headers, WRITEV_RECORDS, rtype, request_id, p, n, &done)
            self.out_len = 0
            _g_started = 1
            _writev_all(conn.fd, iov, cnt)
            self.wrote = True
        return 0

    cdef int _out_file(self, Conn conn, int request_id, int fd) except -1:
        """Send the rest of regular file ``fd`` as STDOUT records, its bytes by sendfile()."""
        cdef off_t offset = os.lseek(fd, 0, os.SEEK_CUR)
        cdef off_t size = os.fstat(fd).st_size
        cdef Py_ssize_t block, left
        cdef ssize_t sent
        cdef int err = 0, pad
        while offset < size:
            block = min(size - offset, BLOCK)
            self._out_reserve(HEADER_LEN)
            pad = put_header(<unsigned char *>self.out + self.out_len, T_STDOUT, request_id, block)
            self.out_len += HEADER_LEN
            self._flush(conn)
            left = block
            while left > 0:
                with nogil:
                    sent = sendfile(conn.fd, fd, &offset, left)
                    if sent < 0:
                        err = errno
                if sent < 0:
                    if err == EINTR:
                        PyErr_CheckSignals()
                        continue
                    _raise_write_error(err)
                if sent == 0:
                    raise OSError("file %r shrank while it was being sent" % fd)
                left -= sent
            self._out_append(padding(), pad)
        return 0

    cdef int _flush(self, Conn conn) except -1:
        cdef Decoder dec = conn.dec
        global _g_started
        if dec.outbox:
            self._out_append(PyBytes_AS_STRING(bytes(dec.outbox)), len(dec.outbox))
            del dec.outbox[:]
        if self.out_len:
            _g_started = 1
            self._write_all(conn, self.out, self.out_len)
            self.out_len = 0
            self.wrote = True
        return 0

    cdef int _write_all(self, Conn conn, const char *data, Py_ssize_t n) except -1:
        cdef iovec iov
        iov.iov_base = <void *>data
        iov.iov_len = n
        return _writev_all(conn.fd, &iov, 1)


cdef class Accounting(Output):
    """What a worker tells of itself: the stamps on its scoreboard slot (plain stores into
    shared memory, no system call), its log lines, and the limits that recycle it."""
    cdef object log                      # log(level, text): the worker's error-log lines
    cdef Board board                     # keeps the mapping of `header` and `slot` alive
    cdef BoardHeader *header             # the pool's counters (NULL: no scoreboard)
    cdef Slot *slot
    cdef bint track_cpu                  # stamp each request's CPU time (status page)
    cdef int64_t cpu_mark                # process CPU µs when the current request began
    cdef public unsigned long requests
    cdef unsigned long max_requests      # stop after this many (0: never)
    cdef uint64_t max_memory             # stop once RSS exceeds this after a request (0: never)
    cdef int statm_fd                    # /proc/self/statm, read with pread when max_memory
    cdef public str stop_reason          # "", "max_requests" or "max_memory"
    cdef public uint64_t rss
    cdef object access                   # the access log writer (fpm.accesslog.Writer) or None
    cdef object access_begin             # its begin(), called as each request starts, or None
    cdef object on_reopen                # takes the master's new log fds after a USR1
    cdef uint64_t log_generation         # the board's log_generation this worker has seen
    cdef int64_t finish_due_us           # finishing: it stops if no request came by then (0: not yet)
    cdef int64_t finish_end_us           # ...and by then at the latest

    def __cinit__(self):
        self.statm_fd = -1

    def __dealloc__(self):
        if self.statm_fd >= 0:
            close(self.statm_fd)

    def __init__(self, o):
        global _g_header
        cdef Board board = o.board
        self.log = o.log
        self.board = board
        self.header = <BoardHeader *>board.mem if board is not None else NULL
        _g_header = self.header
        self.slot = board._checked(o.slot) if board is not None else &_private_slot
        self.log_generation = self.header.log_generation if self.header != NULL else 0
        self.track_cpu = bool(o.special)  # for the status page's CPU column
        self.cpu_mark = 0
        self.access = o.access
        self.access_begin = getattr(o.access, "begin", None)
        self.on_reopen = o.on_reopen
        self.max_requests = o.max_requests
        self.max_memory = o.max_memory
        if o.max_memory:
            self.statm_fd = open_statm() if o.statm_fd is None else o.statm_fd
        elif o.statm_fd is not None and o.statm_fd >= 0:
            close(o.statm_fd)  # ours to close, as when it is used
        self.stop_reason = ""
        self.rss = 0

    cdef int _log(self, str level, str text) except -1:
        if self.log is not None:
            self.log(level, text)
        return 0

    cdef int _log_app_error(self) except -1:
        self._log("error", 'the application raised an exception on "%s"\n%s'
                  % (self._request_line(), _app_traceback()))
        return 0

    cdef str _request_line(self):
        """``GET /x?y=1``, as the request's slot has it (the status page's and the master's
        lines about it show the same): how the error log names the request in progress."""
        cdef Slot *s = self.slot
        return "%s %s" % (cstr(s.request_method, sizeof(s.request_method)) or "-",
                          cstr(s.request_uri, sizeof(s.request_uri)) or "-")

    cdef void _stage(self, Stage stage) noexcept nogil:
        if stage == STAGE_READING and self.track_cpu:
            self.cpu_mark = _cpu_us()
        stamp_stage(self.slot, self.header, stage, _now_us())

    cdef int _stamp_request(self, dict environ, Py_ssize_t length) except -1:
        return stamp_request(self.slot, environ.get("REQUEST_METHOD"),
                             environ.get("REQUEST_URI") or environ.get("PATH_INFO"),
                             environ.get("SCRIPT_FILENAME") or environ.get("SCRIPT_NAME", ""),
                             environ.get("REMOTE_USER"), length, _now_us())

    cdef int _after_request(self) except -1:
        """Count the request; decide whether this worker has served its time."""
        cdef char buf[64]
        cdef ssize_t n
        cdef rusage usage
        global _stop
        cdef int64_t now = _now_us()
        stamp_done(self.slot, self.header, now,
                   _cpu_us() - self.cpu_mark if self.track_cpu else -1)
        if _finishing:
            # Stopping anyway, and nobody replaces it: it drains on, past its limits.
            self.finish_due_us = now + FINISH_QUIET_MS * 1000LL
            return 0
        if self.max_requests and self.requests >= self.max_requests and not self._reloading():
            self.stop_reason = "max_requests"
            _stop = 1
        if self.max_memory:
            if self.statm_fd >= 0:
                # statm's second field is the resident set in pages; one pread, no open().
                n = pread(self.statm_fd, buf, 63, 0)
                if n > 0:
                    buf[n] = 0
                    self.rss = int(buf[:n].split()[1]) * PAGE_SIZE
            else:
                # No /proc (see open_statm): the peak resident set, in KiB, which only
                # grows, so a worker that ever exceeded the limit is recycled.
                getrusage(RUSAGE_SELF, &usage)
                self.rss = <uint64_t>usage.ru_maxrss * 1024
            self.slot.rss = self.rss
            if self.rss > self.max_memory and not self._reloading():
                self.stop_reason = "max_memory"
                _stop = 1
        return 0

    cdef inline bint _reloading(self):
        """The master is reloading (SAYS_HOLD_RECYCLING), away until the new master runs
        (the reload's check of the new configuration and the exec take a few hundred ms):
        a worker that recycled now would leave its place empty (with pm.max_requests = 50
        under load it lives less), a connection shared now would wait for the master."""
        return self.header != NULL and (
            (<volatile uint32_t *>&self.header.master_says)[0] & SAYS_HOLD_RECYCLING) != 0

    cdef int _log_request(self, Conn conn, dict environ, Request req) except -1:
        """Take the log files the master reopened (USR1), then write the access log line."""
        cdef Slot *s = self.slot
        cdef int64_t now
        cdef timespec ts
        cdef uint64_t generation
        if self.on_reopen is not None and self.header != NULL:
            generation = self.header.log_generation
            if generation != self.log_generation:
                self.log_generation = generation
                self.on_reopen()
        if self.access is not None:
            now = _now_us()
            clock_gettime(CLOCK_REALTIME, &ts)
            self.access.write(environ, req.status or "", req.headers or [],
                              ts.tv_sec * 1000000 + ts.tv_nsec // 1000 - (now - s.accepted),
                              now - s.accepted, conn.fd, req.peer)
        return 0


cdef class Reading(Accounting):
    """A connection's side of a request: reading within its deadlines, parking it with the
    master while its head has not come, and closing it when its peer misbehaves."""
    cdef Py_ssize_t params_max, max_conns, max_reqs
    cdef int read_timeout_ms
    cdef int64_t head_timeout_us         # request_head_timeout
    cdef uint64_t body_rate              # request_body_min_rate, bytes/s (0: off)
    cdef int park_fd                     # the pool's park socket (to the master; -1: none)
    cdef int vain_waits                  # waits in a row for a request that did not come...
    cdef int64_t vain_at                 # ...the last one then (first_bytes_ms)
    cdef bint stamp_reads                # read with recvmsg to learn the kernel's arrival time

    def __init__(self, o):
        Accounting.__init__(self, o)
        self.params_max = o.params_max
        self.max_conns = o.max_conns
        self.max_reqs = o.max_reqs
        self.read_timeout_ms = <int>(o.read_timeout * 1000)
        self.head_timeout_us = <int64_t>(o.head_timeout * 1e6)
        self.body_rate = o.body_rate
        self.park_fd = o.park_fd
        self.stamp_reads = o.stamp_reads
        self.vain_waits = 0
        self.vain_at = 0

    def _decoder(self):
        return Decoder(self.params_max, self.max_conns, self.max_reqs)

    cdef void _close(self, Conn conn) noexcept:
        if conn.fd >= 0:
            if conn.kid >= 0:
                self._unshare(conn)
            if conn.dups:
                shutdown(conn.fd, SHUT_RDWR)
            close(conn.fd)
            conn.fd = -1

    cdef void _unshare(self, Conn conn) noexcept:
        """Take a shared connection out of the pool's table (Worker)."""
        pass

    def _peer(self, Conn conn):
        if conn.peer_cache is None:
            try:
                s = socket.socket(fileno=conn.fd)
                try:
                    if s.family == socket.AF_UNIX:
                        conn.peer_cache = "unix:" + (s.getsockname() or "?")
                    elif s.family == socket.AF_INET6:
                        host, port = s.getpeername()[:2]
                        conn.peer_cache = "[%s]:%d" % (host, port)
                    else:
                        conn.peer_cache = "%s:%d" % s.getpeername()
                finally:
                    s.detach()
            except OSError:
                conn.peer_cache = "unknown"
        return conn.peer_cache

    cdef int _drop(self, Conn conn, str level, str message) except -1:
        if self.log is not None:
            self._log(level, "peer %s: %s; connection closed" % (self._peer(conn), message))
        self._close(conn)
        return 0

    cdef int _refuse(self, Conn conn, str message) except -1:
        """A peer broke the protocol: counted, and logged as a warning when none did in the
        pool for C_REFUSAL_QUIET seconds before (the master logs the episode and its count),
        else at debug level: a flood of bad requests is not a flood of log lines."""
        cdef int64_t now, last
        cdef bint first = True
        if self.header != NULL:
            count(self.header, REFUSED_PROTOCOL)
            now = _now_us()
            last = fpm_swap64(&self.header.protocol_error_us, now)
            first = last == 0 or now - last >= C_REFUSAL_QUIET * 1000000
        self._drop(conn, "warning" if first else "debug", message)
        return 0

    cdef int _unexpected(self, Conn conn) except -1:
        """An error the loop has no answer for: that connection is dropped, with the
        traceback, and the worker goes on serving the others."""
        self._log("error", 'peer %s: unexpected error while serving "%s"; connection closed\n%s'
                  % (self._peer(conn), self._request_line(),
                     traceback.format_exc().rstrip("\n")))
        self._close(conn)
        return 0

    cdef Py_ssize_t _read(self, Conn conn, bint wait) except -9:
        """recv() into the decoder: bytes read, 0 at EOF, -2 if nothing is there and not
        wait; with wait, the wait is bounded by the request's deadlines (_wait_ms)."""
        cdef Decoder dec = conn.dec
        cdef ssize_t n
        cdef int r, err, ms
        cdef int64_t quiet_from = 0
        cdef pollfd pfd
        # Bytes that start a request carry its arrival time (request_queue_timeout on TCP).
        cdef bint stamp = self.stamp_reads and dec.state == ST_IDLE and dec.end == dec.start
        dec._reserve(READ_SIZE)
        while True:
            if stamp:
                n = _recv_stamped(conn, dec)
            else:  # MSG_DONTWAIT never blocks, so the GIL is kept (see _accept)
                n = recv(conn.fd, dec.buf + dec.end, dec.cap - dec.end, MSG_DONTWAIT)
            if n >= 0:
                conn.drained = n < dec.cap - dec.end
                dec.end += n
                if dec.state == ST_STDIN or dec.draining:
                    conn.body_read += n
                return n
            err = errno
            if err == EINTR:
                PyErr_CheckSignals()
            elif err == EAGAIN or err == EWOULDBLOCK:
                if not wait:
                    return -2
                if not quiet_from:
                    quiet_from = _now_us()
                ms = self._wait_ms(conn, quiet_from)
                pfd.fd = conn.fd
                pfd.events = POLLIN
                with nogil:
                    r = poll(&pfd, 1, ms)
                if r < 0 and errno == EINTR:
                    PyErr_CheckSignals()
            elif err == ECONNRESET:
                if dec.state == ST_IDLE and dec.end == dec.start:
                    return 0
                raise PeerClosed("connection reset by the web server")
            else:
                raise OSError(err, os.strerror(err))

    cdef int _wait_ms(self, Conn conn, int64_t quiet_from) except -1:
        """How long the next wait for bytes may last (ms), or TooSlow once a deadline has
        passed. A body must come at request_body_min_rate after an allowance of
        request_read_timeout (a deadline that moves with each byte, not a timeout each
        byte restarts); a head within request_head_timeout; neither silent for longer
        than request_read_timeout. Only a connection that makes a worker wait pays for
        the clock read."""
        cdef Decoder dec = conn.dec
        cdef int64_t now = _now_us(), quiet_due = quiet_from + self.read_timeout_ms * 1000LL
        cdef int64_t due
        if dec.state == ST_STDIN or dec.draining:
            due = quiet_due
            if self.body_rate:
                due = min(due, body_due_us(self.slot.accepted, self.read_timeout_ms * 1000LL,
                                           conn.body_read, self.body_rate))
            if conn.late or conn.refused:
                # The master held it past that deadline already, or it was answered 408:
                # what is there is read, nothing is waited for.
                due = now
            if now >= due:
                raise TooSlow(REFUSED_BODY, self._slow_body_words(conn, now, due == quiet_due))
        else:
            if not conn.head_due_us:
                conn.head_due_us = now + self.head_timeout_us
            due = min(quiet_due, conn.head_due_us)
            if now >= due:
                raise TooSlow(REFUSED_HEAD, "no whole request head within request_head_timeout "
                              "(%g s)" % (self.head_timeout_us / 1e6))
        return <int>((due - now + 999) // 1000)

    def _slow_body_words(self, Conn conn, int64_t now, bint silent):
        if conn.late:
            return "the body of request %d came too slowly while it waited in the master" \
                % conn.dec.request_id
        if silent:
            return ("no data from the web server for %d s in the middle of the body of "
                    "request %d" % (self.read_timeout_ms // 1000, conn.dec.request_id))
        return ("the body of request %d came slower than request_body_min_rate (%d bytes/s): "
                "%d bytes in %.1f s" % (conn.dec.request_id, self.body_rate, conn.body_read,
                                        (now - self.slot.accepted) / 1e6))

    cdef Py_ssize_t _await_head(self, Conn conn, Py_ssize_t r, int how) except -9:
        """At the start of a request, after a read that gave ``r`` (see _read): ``r`` again
        when the connection is ready to serve (the whole request buffered, or 64 KiB of it:
        the peer is sending), at EOF, or has nothing at all and is a kept one (-2: held, as
        between requests); else, after a few ms for the rest, GONE: the master holds it
        until its request has come, and no worker waits for it. What is parked is under
        64 KiB, so it travels in one message (TICKET_DATA_MAX)."""
        cdef Decoder dec = conn.dec
        cdef pollfd pfd
        cdef int n, ms
        cdef int64_t now
        cdef Py_ssize_t head_end
        if r == 0 or head_status(<const unsigned char *>dec.buf + dec.start,
                                     dec.end - dec.start, &head_end) == HEAD_READY \
                or dec.end - dec.start >= READ_SIZE:
            return r
        if how == CONN_KEPT and dec.end == dec.start:
            return r
        now = _now_us()
        ms = first_bytes_ms(self.vain_waits, now - self.vain_at)
        if ms:
            pfd.fd = conn.fd
            pfd.events = POLLIN
            with nogil:
                n = poll(&pfd, 1, ms)
            while n > 0:  # bytes came: read them; wait on for the rest, within the time
                r = self._read(conn, False)
                if r == 0 or head_status(<const unsigned char *>dec.buf + dec.start,
                                             dec.end - dec.start, &head_end) == HEAD_READY \
                        or dec.end - dec.start >= READ_SIZE:
                    self.vain_waits = 0
                    return r
                ms -= <int>((_now_us() - now) // 1000)
                if ms <= 0:
                    break
                with nogil:
                    n = poll(&pfd, 1, ms)
            now = _now_us()
        if now - self.vain_at >= VAIN_WINDOW_US:
            self.vain_waits = 0
        self.vain_waits += 1
        self.vain_at = now
        if self.park_fd < 0 or _stop:
            # No master to park with (serve() on its own), or this worker stops (the master
            # may be stopping too: nothing parked now would come back): hold a silent
            # connection, read the rest of a head here.
            return -2 if dec.end == dec.start else 1
        self._park(conn)
        return GONE

    cdef int _park(self, Conn conn, uint32_t flags=0) except -1:
        """Hand the connection and the bytes read from it to the master (fpm.parking)."""
        cdef Decoder dec = conn.dec
        cdef Ticket t
        cdef int err
        if conn.kid >= 0:
            self._unshare(conn)
        memset(&t, 0, sizeof(t))
        t.flags = flags | (C_TICKET_DUPS if conn.dups else 0)
        if not flags & C_TICKET_KEPT:
            t.head_due_us = conn.head_due_us or _now_us() + self.head_timeout_us
        t.arrived_us = conn.arrived_us
        err = send_conn(self.park_fd, conn.fd, &t, dec.buf + dec.start, dec.end - dec.start)
        if err:
            count(self.header, REFUSED_PARKED)  # the master's queue is full: nowhere to wait
        conn.dups = False  # the master holds it now: this copy goes, the connection stays
        self._close(conn)
        return 0

    cdef int _next_stdin(self, Conn conn) except -1:
        """Process records up to the next piece of the body: STEP_STDIN (at dec.chunk),
        STEP_STDIN_END or STEP_ABORT."""
        cdef Decoder dec = conn.dec
        cdef Step step
        while True:
            step = dec._step()
            if step == STEP_STDIN or step == STEP_STDIN_END or step == STEP_ABORT:
                return step
            if dec.stdin_ended:
                return STEP_STDIN_END
            if step == STEP_NEED or step == STEP_BLOCKED:
                if dec.outbox:
                    # A management answer must not wait behind a body that may never come.
                    reply = bytes(dec.outbox)
                    del dec.outbox[:]
                    self._write_all(conn, reply, len(reply))
                if self._read(conn, True) == 0:
                    if dec.state != ST_STDIN or dec.end != dec.start:
                        dec.eof()  # a cut record or params: the peer's fault, a warning
                    raise PeerClosed("the peer hung up before the end of the body of request %d "
                                     "(its client went away?)" % dec.request_id)


cdef class Admission(Reading):
    """What comes before the app: the wait in the queue, and the request's body, read whole
    (into memory, into a spool file, or the web server's own file)."""
    cdef Py_ssize_t body_buffer          # request bodies up to this stay in memory
    cdef Py_ssize_t body_max             # larger bodies are answered 413 (0: no limit)
    cdef object spool_dir                # where larger bodies are spooled
    cdef tuple body_file_dirs            # where a REQUEST_BODY_FILE may be (real paths)
    cdef int64_t queue_timeout_us        # request_queue_timeout (0: off)
    cdef object start_param              # the param carrying the web server's request start

    def __init__(self, o):
        Reading.__init__(self, o)
        self.body_buffer = o.body_buffer
        self.body_max = o.body_max
        self.spool_dir = o.spool_dir
        self.body_file_dirs = tuple(os.path.join(os.path.realpath(d), "") for d in o.body_file_dirs)
        self.queue_timeout_us = <int64_t>(o.queue_timeout * 1e6)
        self.start_param = o.start_param

    cdef object _admit(self, Conn conn, dict environ, Py_ssize_t length):
        """Set wsgi.input; None, or the refusal that answers instead of the app."""
        cdef double waited
        if self.queue_timeout_us:
            waited = self._waited(conn, environ)
            if waited * 1e6 > self.queue_timeout_us:
                self._log("warning", '"%s %s" waited %.3f s for a worker, longer than '
                          'request_queue_timeout (%g s); answered 503'
                          % (environ["REQUEST_METHOD"], _uri_of(environ), waited,
                             self.queue_timeout_us / 1e6))
                return Refusal("503 Service Unavailable",
                               b"The server is too busy to answer in time; try again.\n")
        if length == LENGTH_OVERFLOW:
            cl = environ["CONTENT_LENGTH"]
            if len(cl) > 2 * MAX_LENGTH_DIGITS:
                cl = "%s... (%d digits)" % (cl[:MAX_LENGTH_DIGITS], len(cl))
            self._log("warning", 'the body of "%s %s" is %s bytes (CONTENT_LENGTH), more than '
                      'any request body can be (%d bytes); answered 413'
                      % (environ["REQUEST_METHOD"], _uri_of(environ), cl, PY_SSIZE_T_MAX))
            return Refusal("413 Content Too Large", b"The request body is too large.\n")
        path = environ.get("REQUEST_BODY_FILE")
        if path:
            return self._body_file(conn, environ, path)
        if self.body_max and length > self.body_max:
            return self._too_large(environ, length)
        return self._read_body(conn, environ, length)

    cdef double _waited(self, Conn conn, dict environ):
        """Seconds since the web server got the request (its start param) or, else, since
        the kernel received its first bytes; 0 when neither is known."""
        cdef timespec ts
        cdef double now, start = 0
        clock_gettime(CLOCK_REALTIME, &ts)
        now = ts.tv_sec + ts.tv_nsec / 1e9
        if self.start_param is not None:
            start = request_start(environ.get(self.start_param))
        elif conn.arrived_us:
            start = conn.arrived_us / 1e6
        return now - start if start > 0 else 0

    def _too_large(self, dict environ, Py_ssize_t length):
        size = "is %d bytes, more" % length if length >= 0 else "is larger"
        self._log("warning", 'the body of "%s %s" %s than request_body_max_size (%d bytes); '
                  'answered 413' % (environ["REQUEST_METHOD"], _uri_of(environ), size,
                                    self.body_max))
        return Refusal("413 Content Too Large", b"The request body is too large.\n")

    cdef object _read_body(self, Conn conn, dict environ, Py_ssize_t length):
        """Read the whole body before the app runs: into memory up to body_buffer, else into
        an unlinked file, written straight from the receive buffer. A body of known length
        is copied once, into the bytes object wsgi.input's read() then hands out; bytes
        past CONTENT_LENGTH are read and dropped (PEP 3333: the input ends there)."""
        cdef Decoder dec = conn.dec
        cdef Py_ssize_t total = 0, filled = 0, n
        cdef int sfd = -1, step
        cdef bytes body = None  # CONTENT_LENGTH bytes, filled in place
        cdef bytearray grown = None  # a body of unknown length
        spool = None
        try:
            if length > self.body_buffer:
                spool = self._spool()
                sfd = spool.fileno()
            elif length > 0:
                body = PyBytes_FromStringAndSize(NULL, length)
            while True:
                step = self._next_stdin(conn)
                if step == STEP_STDIN_END:
                    break
                if step == STEP_ABORT:
                    raise RequestAborted("the web server aborted request %d before its body "
                                         "was complete" % dec.request_id)
                n = dec.chunk_len
                if 0 <= length < total + n:
                    n = length - total
                    if n == 0:
                        continue
                total += n
                if self.body_max and total > self.body_max:
                    return self._too_large(environ, -1)  # the rest drains after the answer
                if sfd < 0 and total > self.body_buffer:
                    spool = self._spool_from(grown, body, filled)
                    sfd = spool.fileno()
                    body = grown = None
                if sfd >= 0:
                    _spool_write(sfd, dec.chunk, n)
                elif body is not None:
                    memcpy(PyBytes_AS_STRING(body) + filled, dec.chunk, n)
                    filled += n
                else:
                    if grown is None:
                        grown = bytearray()
                    _bytearray_extend(grown, dec.chunk, n)
        except SpoolError as e:
            self._log("error", '"%s %s": %s; answered 500' % (environ["REQUEST_METHOD"],
                                                              _uri_of(environ), e))
            return Refusal("500 Internal Server Error", b"Internal Server Error\n")
        except TooSlow as e:
            # Counted once (the master logs the episode); the app never runs on a part of
            # the body, and the connection closes after the answer.
            count(self.header, e.cause)
            conn.refused = True
            dec.want_close = True
            return Refusal("408 Request Timeout", b"The request body came too slowly.\n")
        if length < 0 and total:
            environ["CONTENT_LENGTH"] = str(total)  # a chunked body, now counted
        environ["wsgi.input"] = _body_input(spool, grown, body, filled, length)
        return None

    cdef object _spool_from(self, bytearray grown, bytes body, Py_ssize_t filled):
        """A spool file holding what of a body was kept in memory so far."""
        spool = self._spool()
        if grown is not None:
            _spool_write(spool.fileno(), PyByteArray_AS_STRING(grown), len(grown))
        elif body is not None:
            _spool_write(spool.fileno(), PyBytes_AS_STRING(body), filled)
        return spool

    def _spool(self):
        """An unlinked file for a large body (O_TMPFILE: it never has a name)."""
        where = self.spool_dir or tempfile.gettempdir()
        try:
            try:
                fd = os.open(where, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            except OSError as e:
                if e.errno not in (errno_mod.EOPNOTSUPP, errno_mod.EISDIR):
                    raise
                fd, name = tempfile.mkstemp(dir=where)  # a filesystem without O_TMPFILE
                os.unlink(name)
        except OSError as e:
            raise SpoolError("cannot spool a request body to '%s': %s" % (where, e.strerror)) from None
        return open(fd, "w+b")

    cdef object _body_file(self, Conn conn, dict environ, str path):
        """PHP-FPM's accelerated upload: the body is a file the web server wrote
        (nginx client_body_in_file_only + REQUEST_BODY_FILE); its STDIN is empty."""
        if "\0" in path:  # no file has such a name (realpath() would raise)
            self._log("warning", "REQUEST_BODY_FILE %r holds a NUL byte; request refused" % path)
            return Refusal("403 Forbidden", b"Access denied.\n")
        real = os.path.realpath(path)
        if not any(real.startswith(d) for d in self.body_file_dirs):
            dirs = " ".join(os.path.dirname(d) for d in self.body_file_dirs) or "empty"
            self._log("warning", "REQUEST_BODY_FILE '%s' is outside security.request_body_file_dirs "
                      "(%s); request refused" % (path, dirs))
            return Refusal("403 Forbidden", b"Access denied.\n")
        while self._next_stdin(conn) == STEP_STDIN:
            pass  # a body sent anyway is ignored, as PHP-FPM does
        try:
            f = open(os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW), "rb")
        except OSError as e:
            self._log("error", "REQUEST_BODY_FILE: open('%s') failed: %s (%d)"
                      % (path, e.strerror, e.errno))
            return Refusal("500 Internal Server Error", b"Internal Server Error\n")
        size = os.fstat(f.fileno()).st_size
        if self.body_max and size > self.body_max:
            f.close()
            return self._too_large(environ, size)
        environ.setdefault("CONTENT_LENGTH", str(size))
        environ["wsgi.input"] = f
        return None


cdef class Serving(Admission):
    """The requests on a connection, each run through the app to the end of its response."""
    cdef object app
    cdef dict base_environ
    cdef str mount
    cdef bint fill_paths                 # split_paths() on each request (app pools)
    cdef list pair_cache                 # params strs of the last request, by position
    cdef dict special                    # request path -> app answering it (status, ping)
    cdef object errors_log               # wsgi.errors into the error log (fpm.stdio.ErrorsLog) or None
    cdef bint errors_to_log, errors_to_server  # where wsgi.errors goes (wsgi_errors)
    cdef object on_output                # ends sys.stdout's and sys.stderr's lines after a request wrote

    def __init__(self, app, o):
        Admission.__init__(self, o)
        self.app = app
        self.base_environ = o.base_environ
        self.mount = o.mount.rstrip("/")
        self.fill_paths = o.fill_paths
        self.pair_cache = []
        self.special = o.special or None
        self.errors_log = o.errors_log  # wsgi_errors was checked with the configuration
        self.errors_to_log = o.errors_log is not None and o.wsgi_errors != "server"
        self.errors_to_server = o.wsgi_errors != "log"
        self.on_output = o.on_output

    cdef int _hold(self, Conn conn) except -1:
        """Keep an idle connection until its next request: the loop's to do (Worker);
        1 when it must be read again at once (a shared one became ready meanwhile)."""
        raise NotImplementedError

    cdef int _serve_conn(self, Conn conn, int how) except -1:
        """Serve a connection (``how``: a CONN_* value) until it is idle, closed or parked;
        a peer's fault closes it, told as its kind asks."""
        try:
            self._serve_requests(conn, how)
        except HTTPOnFastCGIPort as e:
            try:
                self._write_all(conn, HTTP_REFUSAL, len(HTTP_REFUSAL))
            except PeerError:
                pass  # the client hung up already: the refusal was a courtesy
            self._refuse(conn, str(e))
        except TooSlow as e:
            # Counted, and logged by the master once per episode: never a line each.
            if not conn.refused:
                count(self.header, e.cause)
            self._close(conn)
        except ProtocolError as e:
            self._refuse(conn, str(e))
        except PeerError as e:
            self._drop(conn, "notice", str(e))
        except Exception:
            self._unexpected(conn)
        finally:
            _disarm_term_reply()
            self._out_drop()  # what a failed connection left unsent is never another's
            if self.slot.stage != STAGE_IDLE:
                self._stage(STAGE_IDLE)
        return 0

    cdef int _serve_requests(self, Conn conn, int how) except -1:
        """Read from a connection and run the requests on it until it is idle (held), closed,
        or parked with the master while its request head has not come."""
        cdef Decoder dec = conn.dec
        cdef Step step
        cdef Py_ssize_t r = self._read(conn, False)
        if how != CONN_HANDED:
            # The master handed that one over with its head (or with the head still coming
            # fast): it is read here, whatever it takes.
            r = self._await_head(conn, r, how)
        while r != GONE:
            if r == 0 and dec.end == dec.start:
                dec.eof()
                self._close(conn)
                return 0
            if r == -2:
                if self._hold(conn):
                    r = self._await_head(conn, self._read(conn, False), CONN_KEPT)
                    continue
                return 0
            # At EOF with bytes left (they came with the hang-up, or the master held them),
            # those are stepped through first: the peer's fault is named by what it sent, as
            # when the bytes came before the hang-up.
            step = dec._step()
            if step == STEP_NEED:
                r = self._more(conn, r)
                continue
            if step == STEP_PARAMS_DONE:
                # Per request: the body's bytes already here count for its rate; the next
                # head on a kept connection gets a deadline of its own.
                conn.body_read = dec.end - dec.start
                conn.head_due_us = 0
                conn.refused = False
                conn.served += 1
                self._run_request(conn)
                conn.late = False
                if conn.fd < 0:
                    return 0
            elif step == STEP_ABORT:
                self._out_end(conn, 0)
            elif step == STEP_BLOCKED:
                raise ProtocolError("BEGIN_REQUEST for request %d before it ended" % dec.request_id)
            elif step == STEP_BEGIN:
                self._stage(STAGE_READING)
                if self.access_begin is not None:
                    self.access_begin()
            r = 1
        return 0

    cdef Py_ssize_t _more(self, Conn conn, Py_ssize_t r) except -9:
        """No whole record is buffered after a read that gave ``r``: send the codec's own
        answers, then read on (as _read), or GONE once the connection is closed or parked."""
        cdef Decoder dec = conn.dec
        if dec.outbox:
            self._flush(conn)
        if r == 0:  # the peer hung up, and every whole record it sent is done
            dec.eof()
            self._close(conn)
            return GONE
        if (dec.want_close or _stop and dec.state == ST_IDLE and dec.end == dec.start
                ) and not dec.draining:
            if _stop and not dec.want_close and self.park_fd >= 0:
                # Kept between requests as this worker stops: a close could cross the next
                # request nginx sends on it. The master keeps it for another worker; a
                # shared one is let go: the others serve it.
                if conn.kid < 0:
                    self._park(conn, C_TICKET_KEPT)
                else:
                    self._hold(conn)
            else:
                self._close(conn)
            return GONE
        if dec.state == ST_IDLE and not dec.draining:
            if conn.kid >= 0 and conn.drained and dec.end == dec.start:
                # Its next request goes through the pool's queue, behind those that came
                # first (read now, it went ahead of them: a few connections nginx reuses at
                # once were served at once, the others waited). Whatever comes after the
                # read that drained it puts it in the queue again (edge-triggered).
                return -2
            # Between requests: what comes is the next request's head, if any.
            return self._await_head(conn, self._read(conn, False), CONN_KEPT)
        # Inside a record or a request, or the rest of an unread body: due now.
        r = self._read(conn, True)
        if r == 0 and dec.draining:
            # The response is complete: a web server may drop an unwanted body.
            self._close(conn)
            return GONE
        return r

    cdef int _run_request(self, Conn conn) except -1:
        """Run the request whose params have come: its environ, the app (or what answers
        in its place), the end of its response, then what follows every request."""
        cdef Py_ssize_t length = -1
        cdef Request req = Request(self, conn, conn.dec.request_id)
        cdef dict environ = self._environ(conn, req, &length)
        cdef int app_status
        self._out_drop()
        self.wrote = False
        self._stamp_request(environ, length)
        _arm_term_reply(conn.fd, req.rid)
        app_status = self._call_app(conn, environ, req, length)
        self.requests += 1
        if req.finished:
            self._out_drop()
        else:
            # END_REQUEST goes out before any unread body is drained: nginx stops sending a
            # streamed body once it has the response header, and waits for END_REQUEST.
            self._end_response(req, app_status)
        self._after_response(conn, environ, req)
        if not req.finished:
            self._settle(conn)
        return 0

    cdef dict _environ(self, Conn conn, Request req, Py_ssize_t *length):
        """The request's WSGI environ from its params; *length: CONTENT_LENGTH (-1: none)."""
        cdef Decoder dec = conn.dec
        cdef dict environ = self.base_environ.copy()
        # No param can replace or add a key of the pool's own (fpm.*, wsgi.*): dropped there.
        parse_pairs(<const unsigned char *>PyByteArray_AS_STRING(dec.params),
                    PyByteArray_GET_SIZE(dec.params), environ, self.pair_cache)
        for key, http_key in CONTENT_HEADERS:
            value = environ.pop(http_key, None)
            if value is not None and key not in environ:
                environ[key] = value
        # httpoxy (CVE-2016-5385, php bug #72573): a client's "Proxy:" header would arrive
        # as HTTP_PROXY, which HTTP libraries take for the proxy to use. One lookup of an
        # interned key per request (~10 ns).
        if "HTTP_PROXY" in environ:
            del environ["HTTP_PROXY"]
        cl = environ.get("CONTENT_LENGTH")
        if cl:
            length[0] = _content_length(cl)
        if self.fill_paths:
            split_paths(environ, self.mount)
        https = environ.get("HTTPS")
        if https and https.lower() != "off":
            environ["wsgi.url_scheme"] = "https"
        environ.setdefault("REQUEST_METHOD", "GET")
        environ.setdefault("QUERY_STRING", "")
        environ.setdefault("SERVER_NAME", "localhost")
        environ.setdefault("SERVER_PORT", "80")
        environ.setdefault("SERVER_PROTOCOL", "HTTP/1.0")
        environ["wsgi.errors"] = Errors(req)
        return environ

    cdef int _call_app(self, Conn conn, dict environ, Request req, Py_ssize_t length) except -1:
        """Run the app, or the page or refusal that answers in its place, and send its
        result; the app status for END_REQUEST: 1 when it failed or the web server aborted."""
        global _current
        app = self.app
        if self.special is not None:
            # The status and ping pages answer their exact path, whatever the app routes.
            app = self.special.get(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
                                   app)
        _current = req
        try:
            refusal = self._admit(conn, environ, length)
            if refusal is not None:
                app = refusal
            result = app(environ, req.start_response)
            try:
                req.send_result(result)
            finally:
                close_result = getattr(result, "close", None)
                if close_result is not None:
                    close_result()
        except RequestAborted:
            self._out_drop()
            return 1
        except PeerError:
            raise
        except Exception:
            self._log_app_error()
            if not self.wrote and not req.finished:
                self._out_drop()
                req._fail()
            return 1
        except BaseException:  # sys.exit() in the app: the worker exits, the traceback stays
            self._log_app_error()
            raise
        finally:
            _current = None
        return 0

    cdef int _end_response(self, Request req, unsigned int app_status) except -1:
        """Send the end of the request's streams and END_REQUEST; a SIGTERM now has
        nothing left to answer."""
        if req.stderr_used:
            self._out_records(T_STDERR, req.rid, NULL, 0)
        self._out_end(req.conn, app_status)
        _disarm_term_reply()
        return 0

    cdef int _after_response(self, Conn conn, dict environ, Request req) except -1:
        """What follows every request: the ends of the lines it wrote (none joins the next
        request's), the logs, the slot's stamp and the recycling limits."""
        global _said
        if req.errors_logged:
            self.errors_log.end()
        if _said:
            _said = 0
            if self.on_output is not None:
                self.on_output()
        if self.access is not None or self.on_reopen is not None:
            self._log_request(conn, environ, req)
        return self._after_request()

    cdef int _settle(self, Conn conn) except -1:
        """After a response: drain an unread body, and close a connection not kept."""
        cdef Decoder dec = conn.dec
        if dec.draining:
            self._stage(STAGE_FINISHING)
        if dec.want_close or _finishing or _stop and self.park_fd < 0:
            if not dec.draining:
                # Nothing unread is left, so closing now sends no RST and nginx loses no byte.
                self._close(conn)
            else:
                # nginx ends a response without keep-conn at the upstream's FIN, and closing
                # with unread bytes would reset it: half-close, then drain until it hangs up.
                shutdown(conn.fd, SHUT_WR)
        return 0

    cdef int _finish(self, Request req) except -1:
        """End the request for the web server now; the app runs on (fpm.finish_request)."""
        cdef Conn conn = req.conn
        self._end_response(req, 0)
        req.finished = True
        if self.access is not None:
            req.peer = self.access.peer(conn.fd)
        # Closed even with keep-conn: a kept connection would have nginx queue its next
        # request behind the work the app still does (php-src #10335). The body was read
        # before the app ran, so nothing unread makes the close a reset.
        self._close(conn)
        self._stage(STAGE_FINISHING)
        return 0


cdef class Sharing(Serving):
    """Kept connections shared by the pool's workers (fpm._kept): this worker's copy of
    each, by table entry; the pool's queue gives a request on any of them to the worker
    that watches, one at a time; which set it sleeps on depends on its role (_sleep_set)."""
    cdef int epfd                        # epoll: sources (EPOLLEXCLUSIVE), stop pipe, kept channel
    cdef int epfd_rest                   # the same with the bell (-1: not shared)
    cdef int role                        # ROLE_*: what it is in its current sleep
    cdef int deputy_ms                   # its next sleep as the deputy (> DEPUTY_MAX_MS: it rests)
    cdef uint64_t wakes_seen             # the table's wakes at its last sleep as the deputy
    cdef Table kept                      # the pool's table (None: not shared)
    cdef KeptHeader *kh
    cdef int kept_rx                     # where the master sends copies of newly shared ones (-1: none)
    cdef int chan_index                  # its event index
    cdef int *kfd                        # by entry: this worker's copy (-1: none)...
    cdef uint32_t *kgen                  # ...of the connection of that generation
    cdef int nkept                       # copies held
    cdef uint64_t kept_drops             # the table's drops when this worker last swept
    cdef uint32_t pid
    cdef list spare                      # Conn objects to serve shared connections with
    cdef int nsources                    # sources of new connections (Worker.srcs): their events are 0..nsources-1
    cdef int64_t paused_until            # accept() failed for want of descriptors: not before this

    def __cinit__(self):
        self.epfd = -1
        self.epfd_rest = -1
        self.kept_rx = -1
        self.chan_index = -1
        self.deputy_ms = DEPUTY_MS

    def __dealloc__(self):
        cdef int i
        if self.kfd != NULL:
            for i in range(self.kept.size):
                if self.kfd[i] >= 0:
                    close(self.kfd[i])
        free(self.kfd)
        free(self.kgen)
        if self.epfd >= 0:
            close(self.epfd)
        if self.epfd_rest >= 0:
            close(self.epfd_rest)
        if self.kept_rx >= 0:
            close(self.kept_rx)

    def __init__(self, app, o):
        Serving.__init__(self, app, o)
        self.spare = []
        self.pid = os.getpid()
        if o.kept is not None and o.park_fd >= 0:
            self._init_kept(o.kept, o.kept_rx)
        elif o.kept_rx >= 0:
            close(o.kept_rx)

    cdef int _init_kept(self, Table kept, int kept_rx) except -1:
        cdef int i
        self.kept = kept
        self.kh = kept.head
        self.kept_rx = kept_rx
        self.kfd = <int *>malloc(max(1, kept.size) * sizeof(int))
        self.kgen = <uint32_t *>malloc(max(1, kept.size) * sizeof(uint32_t))
        if self.kfd == NULL or self.kgen == NULL:
            raise MemoryError()
        for i in range(kept.size):
            self.kfd[i] = -1
        self.kept_drops = self.kh.drops
        global _wake_pool
        _wake_pool = kept.stop
        return 0

    cdef void _register_kept(self, int index, uint32_t gen, int fd) noexcept:
        """Keep this worker's copy of a shared connection. A copy of the entry's previous
        connection, not swept yet, goes first."""
        if self.kfd[index] >= 0:
            self._forget_kept(index)
        self.kfd[index] = fd
        self.kgen[index] = gen
        self.nkept += 1

    cdef void _unregister_kept(self, int index) noexcept:
        self.kfd[index] = -1
        self.nkept -= 1

    cdef void _forget_kept(self, int index) noexcept:
        """Close this worker's copy of a connection gone from the table (the connection
        itself was shut down, or is parked, by whoever took it out)."""
        cdef int fd = self.kfd[index]
        self._unregister_kept(index)
        close(fd)

    cdef void _adopt_kept(self, int index, uint32_t gen, int fd) noexcept:
        """A copy of shared connection ``gen`` of entry ``index`` (from the master)."""
        cdef uint64_t w
        if self.kfd == NULL or not 0 <= index < self.kept.size:
            close(fd)
            return
        if self.kfd[index] >= 0:
            if self.kgen[index] == gen:
                close(fd)
                return
            self._forget_kept(index)
        w = (<volatile uint64_t *>&k_entries(self.kh)[index].word)[0]
        if k_gen(w) != gen or k_state(w) == K_FREE:
            close(fd)
        else:
            self._register_kept(index, gen, fd)

    cdef int _take_copies(self) except -1:
        """Take the copies of newly shared connections the master sent."""
        cdef Ticket t
        cdef char buf[64]
        cdef Py_ssize_t n = 0
        cdef int fd = -1, err
        while True:
            err = recv_conn(self.kept_rx, &t, buf, sizeof(buf), &n, &fd)
            if err == EAGAIN or err == EWOULDBLOCK:
                return 0
            if err and err != EBADMSG:
                # EPIPE: the master cut the channel off, full (or is gone: a master from
                # before the channel crossed a reload's exec); EMFILE: a copy lost for want
                # of a descriptor.
                # The copies held serve on, no new ones come, and without all of them it
                # takes no place among the sleepers (_sleep_set). (Any other error alike: a
                # channel that fails is not read again.)
                epoll_ctl(self.epfd, EPOLL_CTL_DEL, self.kept_rx, NULL)
                if self.epfd_rest >= 0:
                    epoll_ctl(self.epfd_rest, EPOLL_CTL_DEL, self.kept_rx, NULL)
                close(self.kept_rx)
                self.kept_rx = -1
                return 0
            if not err:
                self._adopt_kept(<int>(t.head_due_us & 0xffffffff),
                                 <uint32_t>(t.head_due_us >> 32), fd)

    cdef int _sweep_kept(self) except -1:
        """Close the copies of connections taken out of the table since the last sweep (and
        take what came on the kept channel: the master's word to sweep, which a watcher,
        asleep on the queue, does not see)."""
        cdef int i
        cdef uint64_t w
        if self.kept_rx >= 0:
            self._take_copies()
        self.kept_drops = (<volatile uint64_t *>&self.kh.drops)[0]
        for i in range(self.kept.size):
            if self.kfd[i] >= 0:
                w = (<volatile uint64_t *>&k_entries(self.kh)[i].word)[0]
                if k_gen(w) != self.kgen[i] or k_state(w) == K_FREE:
                    self._forget_kept(i)
        return 0

    cdef int _kept_ready(self, int index, uint32_t gen) except -1:
        """Shared connection ``gen`` of entry ``index`` became readable: serve it unless
        another worker does (which then reads it again before it lets go)."""
        cdef int r
        cdef Conn conn
        if not 0 <= index < self.kept.size or self.kfd[index] < 0 or self.kgen[index] != gen:
            return 0
        r = kept_claim(&k_entries(self.kh)[index], gen, self.pid)
        if r == CLAIM_STALE:
            self._forget_kept(index)
        elif r == CLAIM_OK:
            conn = self.spare.pop() if self.spare else Conn(-1, self._decoder())
            conn.reset(self.kfd[index])
            conn.kid = index
            conn.kgen = gen
            conn.dups = True
            conn.served = SHARE_AFTER
            self._serve_conn(conn, CONN_KEPT)
        return 0

    cdef bint _nudged(self, int index, uint32_t gen, int fd) except -1:
        """The master handed over a copy of a shared connection with a request nobody
        serves (fpm.parking.Lot.nudge): serve it, with this worker's own copy if it has one."""
        if self.kfd == NULL or not 0 <= index < self.kept.size:
            close(fd)
            return True
        if self.kfd[index] >= 0 and self.kgen[index] == gen:
            close(fd)
        else:
            self._adopt_kept(index, gen, fd)
        self._kept_ready(index, gen)
        return True

    cdef int _sleep_set(self, int *timeout) noexcept:
        """Take a role (fpm._kept) for the sleep to come: the epoll set to sleep on, and
        ``timeout`` shortened to the deputy's sleep."""
        self.role = ROLE_NONE
        if self.epfd_rest < 0:
            return self.epfd
        if not self.nkept or self.kept_rx < 0 or _stop or self.paused_until:
            # No place for a worker that watches nothing shared, or not all of it (its kept
            # channel closed: the master re-executed, and it retires), or that takes no new
            # connection now (out of descriptors): the others would leave requests to it.
            if kept_vacate(self.kh, self.pid):
                self._call()
            return self.epfd
        self.role = kept_take_role(self.kh, self.pid, self.deputy_ms <= DEPUTY_MAX_MS)
        if self.role == ROLE_WATCHER:
            return self.kept.queue
        if self.role == ROLE_DEPUTY:
            self.kh.deputy_ms = self.deputy_ms  # the watcher rings if it is over DEPUTY_MS
            if not 0 <= timeout[0] <= self.deputy_ms:
                timeout[0] = self.deputy_ms
        return self.epfd_rest

    cdef void _woke(self, bint work, bint timed_out, bint called) noexcept:
        """Leave the role of the sleep that ended; ``work``: to serve (or to stop);
        ``called``: the bell woke it (answered already)."""
        cdef uint64_t wakes
        if self.role == ROLE_NONE:
            return
        if kept_leave_role(self.kh, self.pid, self.role, work or _stop):
            self._ring()
        elif called and (work or _stop):
            self._call()  # called, it goes to serve: the call goes on to another
        if self.role == ROLE_DEPUTY and timed_out and not work:
            wakes = k_load(&self.kh.wakes)
            if wakes != self.wakes_seen:
                self.wakes_seen = wakes
                self.deputy_ms = DEPUTY_MS
            elif k_load(&self.kh.watcher):
                # The watcher sleeps and no request came: sleep longer; past the longest
                # sleep, rest (the watcher rings when it goes to serve).
                self.deputy_ms *= 2
                if self.deputy_ms > DEPUTY_MAX_MS:
                    kept_vacate(self.kh, self.pid)
        elif not timed_out:
            self.deputy_ms = DEPUTY_MS
        self.role = ROLE_NONE

    cdef void _ring(self) noexcept:
        cdef uint64_t one = 1
        c_write(self.kept.bell, &one, sizeof(one))

    cdef void _call(self) noexcept:
        """Ring if nobody watches (and the bell is not rung already)."""
        if k_load(&self.kh.watcher) == 0 and kept_call(self.kh):
            self._ring()


    cdef inline int _batch(self) noexcept:
        """Events to take at a wake: one from the pool's queue (the next is the next free
        worker's), else up to 16."""
        return 1 if self.role == ROLE_WATCHER else 16

    cdef void _woke_to(self, epoll_event *events, int n, bint work, bint timed_out) noexcept:
        """Leave the sleep's role (_woke) before anything is served: ``work`` if ``events``
        bring a request or a connection; the bell, if among them, answered first."""
        cdef uint64_t count, data
        cdef bint called = False
        cdef int i
        for i in range(n):
            data = events[i].data.u64
            if data == BELL_EVENT:
                c_read(self.kept.bell, &count, sizeof(count))
                fpm_cas64(&self.kh.rung, 1, 0)
                called = True
            elif data < <uint64_t>self.nsources or data != q_stop() and data & (
                    q_kept(0, 0) | q_source(0)):
                work = True
        self._woke(work, timed_out, called)

    cdef int _kept_event(self, int index, uint32_t gen) except -1:
        """The queue gave this worker a request on shared connection ``gen`` of entry
        ``index``: the master queued it after it sent the copies, so this worker's is in its
        kept channel if it holds none, or one of the entry's previous connection (not swept
        yet: a watcher asleep on the queue does not see the master's word to sweep)."""
        cdef uint64_t w
        if not 0 <= index < self.kept.size:
            return 0
        if self.kfd[index] < 0 or self.kgen[index] != gen:
            if self.kept_rx >= 0:
                self._take_copies()
            w = (<volatile uint64_t *>&k_entries(self.kh)[index].word)[0]
            if (self.kfd[index] < 0 or self.kgen[index] != gen) and k_gen(w) == gen \
                    and k_state(w) != K_FREE:
                # Its copy was lost (the kept channel cut off, full, or out of descriptors)
                # and the queue gave the request to this worker alone: it stops, and after
                # its exit the master hands each waiting request to another (Lot.nudge).
                self._log("warning", "a request came on a shared kept connection whose copy "
                          "this worker lost; it stops, and the master hands the request on")
                _stop_now()
                return 0
        return self._kept_ready(index, gen)

    cdef bint _share(self, Conn conn) except -1:
        """Share a kept connection with the pool's workers: an entry in the table and a copy
        to the master, which gives one to each of the others, then puts it in the pool's
        queue. False when the table is full or the master's queue is."""
        cdef uint32_t gen = 0
        cdef int index = kept_alloc(self.kh, self.pid, &gen)
        cdef Ticket t
        if index < 0:
            return False
        if not self.kh.shares:
            fpm_atomic_add(&self.kh.shares, 1)
        self._register_kept(index, gen, conn.fd)
        conn.kid = index
        conn.kgen = gen
        if self._pass_on(conn, C_TICKET_SHARE):
            self._unregister_kept(index)
            kept_drop(self.kh, &k_entries(self.kh)[index], gen, self.pid)
            conn.kid = -1
            return False
        conn.dups = True
        return True

    cdef int _pass_on(self, Conn conn, uint32_t flags) noexcept:
        """Send the master a copy of shared connection ``conn``: to share it (TICKET_SHARE),
        or with TICKET_KEPT too, to hand it to another worker; 0 or the errno."""
        cdef Ticket t
        memset(&t, 0, sizeof(t))
        t.flags = flags
        t.head_due_us = (<int64_t>conn.kgen << 32) | conn.kid
        return send_conn(self.park_fd, conn.fd, &t, NULL, 0)

    cdef void _unshare(self, Conn conn) noexcept:
        kept_drop(self.kh, &k_entries(self.kh)[conn.kid], conn.kgen, self.pid)
        self._unregister_kept(conn.kid)
        conn.kid = -1

    cdef int _hold_shared(self, Conn conn) except -2:
        """Between requests: share a kept connection that has served SHARE_AFTER requests
        (one, once the pool has shared any); let go of a shared one. -1 for one not shared,
        0 once let go, 1 when it must be read again at once (it became ready meanwhile:
        still ours)."""
        # Not while the master reloads: it would queue the connection only once the new
        # master runs, and its requests would wait for nobody meanwhile.
        if (conn.kid < 0 and self.kfd != NULL and not _stop and not _finishing
                and conn.dec.keep_conn
                and conn.served >= (1 if k_load(&self.kh.shares) else SHARE_AFTER)
                and not self._reloading()):
            self._share(conn)
        if conn.kid < 0:
            return -1
        if kept_release(&k_entries(self.kh)[conn.kid], conn.kgen, self.pid) == 1:
            if not _stop:
                return 1
            # The worker woken for the request that came meanwhile left it to this one,
            # which stops: the master hands it to another.
            while kept_release(&k_entries(self.kh)[conn.kid], conn.kgen, self.pid) == 1:
                pass
            if self._pass_on(conn, C_TICKET_SHARE | C_TICKET_KEPT) and kept_claim(
                    &k_entries(self.kh)[conn.kid], conn.kgen, self.pid) == CLAIM_OK:
                return 1  # the master's queue is full: served here after all
        conn.fd = -1  # this worker's copy stays, in kfd
        conn.kid = -1
        if len(self.spare) < SPARE_CONNS:
            self.spare.append(conn)
        return 0


cdef class Accepting(Sharing):
    """Where a worker's new connections come from: its pool's listening sockets, and the
    hand-off socket (connections the master held until their head came)."""
    cdef list listen_fds
    cdef int handoff_fd                  # the pool's hand-off socket (from the master; -1: none)
    cdef int *srcs                       # the sources, the stop pipe, the kept channel (event indexes)
    cdef int nlisten
    cdef int pause_streak                # failures in a row (the pause grows with it)
    cdef int reserve_fd                  # /dev/null, given up to take a connection when out of fds
    cdef object allow                    # allow(fd) -> bool for each accepted connection, or None
    cdef frozenset left_queued           # listeners whose queue a finishing master leaves to the next

    def __cinit__(self):
        self.reserve_fd = -2

    def __dealloc__(self):
        free(self.srcs)
        if self.reserve_fd >= 0:
            close(self.reserve_fd)

    def __init__(self, list listen_fds, app, o):
        Sharing.__init__(self, app, o)
        self.listen_fds = list(listen_fds)
        self.handoff_fd = o.handoff_fd
        self.allow = o.allow
        self.left_queued = frozenset(o.left_queued)
        self.paused_until = 0
        self.pause_streak = 0
        # Without a master to park with (serve() on its own), no reserve: -2.
        self.reserve_fd = _open_null() if o.park_fd >= 0 else -2

    cdef int _take_queued(self, int index) except -1:
        """Take and serve the connections queued at source ``index``, up to TAKE_BATCH. A
        wake serves each ready kept connection one request: taking one new connection per
        wake, the k-th of a burst (nginx opening more) waited k rounds of their requests."""
        cdef int i
        if index < self.nlisten and self.srcs[index] < 0:
            return 0  # finishing: it left that listener (the event came before)
        for i in range(TAKE_BATCH):
            # Once told to stop: the one connection EPOLLEXCLUSIVE may have woken it alone for.
            if self.paused_until or (i and _stop) or not (
                    self._accept(index) if index < self.nlisten else self._take_handoff()):
                break
        return 0

    cdef bint _accept(self, int index) except -1:
        """Accept from listener ``index`` and serve the connection; False if none was queued.
        The GIL stays held: the listeners never block, and a release and take per call
        costs more than the call."""
        cdef int cfd = accept4(self.srcs[index], NULL, NULL, SOCK_CLOEXEC)
        if cfd < 0:
            self._accept_error(errno, index)
            return False
        if self.pause_streak:
            self.pause_streak = 0
        if self.allow is not None and not self.allow(cfd):
            close(cfd)  # allow() has logged why
            return True
        self._serve_conn(Conn(cfd, self._decoder()), CONN_FRESH)
        return True

    def _accept_error(self, int err, int index):
        cdef int cfd
        if err == EAGAIN or err == EWOULDBLOCK or err == ECONNABORTED:
            return
        if err == EINVAL:
            # It stopped listening: the master finishes (fpm.stopping), or someone shut it.
            if not _finishing:
                self._log("warning", "listening socket %d stopped listening; this worker "
                          "takes no more connections from it" % self.srcs[index])
            self._leave_source(index)
            return
        if err == EINTR:
            PyErr_CheckSignals()
            return
        if err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM:
            # This worker stops taking connections for a while (the master logs the
            # episode). The one that woke it must not wait for the next to wake another
            # (EPOLLEXCLUSIVE woke this one alone): taken with the reserve descriptor, it
            # is parked with the master, which hands it to another worker.
            self._pause_accepting(err)
            if (err == EMFILE or err == ENFILE) and self.reserve_fd >= 0:
                close(self.reserve_fd)
                cfd = accept4(self.srcs[index], NULL, NULL, SOCK_CLOEXEC)
                if cfd >= 0:
                    if self.allow is None or self.allow(cfd):
                        self._park(Conn(cfd, self._decoder()))
                    else:
                        close(cfd)
                self._reopen_reserve()
            return
        raise OSError(err, "accept() failed: " + os.strerror(err))

    cdef int _reopen_reserve(self) except -1:
        """The descriptor a worker keeps in reserve, so that it can always take a
        connection it was woken for (accept() out of descriptors, a hand-off); -1 while
        the process has none to spare."""
        self.reserve_fd = _open_null()
        return 0

    cdef int _pause_accepting(self, int err) except -1:
        """Stop taking connections for a pause that grows while accept() keeps failing."""
        count(self.header, REFUSED_ACCEPT)
        if self.header != NULL:
            self.header.accept_errno = err
        self.paused_until = _now_us() + accept_pause_ms(self.pause_streak) * 1000
        self.pause_streak += 1
        self._set_sources(False)
        return 0

    cdef int _set_sources(self, bint watch) noexcept:
        """Watch the sources in the epoll set, or not (accepting is paused). Removed and
        added again: EPOLLEXCLUSIVE cannot be modified."""
        cdef int i, epfd
        for epfd in (self.epfd, self.epfd_rest):
            if epfd < 0:
                continue
            for i in range(self.nsources):
                if self.srcs[i] < 0:
                    continue  # finishing: it left that listener
                if watch:
                    _epoll_add(epfd, self.srcs[i], EPOLLIN | EPOLLEXCLUSIVE, i)
                else:
                    epoll_ctl(epfd, EPOLL_CTL_DEL, self.srcs[i], NULL)
        return 0

    cdef bint _take_handoff(self) except -1:
        """Take a connection the master handed over once its head came; False if none.
        The reserve descriptor makes room for it: a worker out of descriptors would lose
        it (the kernel closes a descriptor it cannot install)."""
        cdef Ticket t
        cdef Py_ssize_t n = 0
        cdef int fd = -1, err
        cdef Conn conn = Conn(-1, self._decoder())
        cdef Decoder dec = conn.dec
        if self.reserve_fd >= 0:
            close(self.reserve_fd)
        err = recv_conn(self.handoff_fd, &t, dec.buf, dec.cap, &n, &fd)
        if self.reserve_fd >= 0:
            self._reopen_reserve()
        if err == EAGAIN or err == EWOULDBLOCK or err == EPIPE:
            return False  # EPIPE: the master is gone, and so is this worker in a moment
        if self.header != NULL:
            fpm_atomic_add(<uint64_t *>&self.header.handoff_pending,
                           <uint64_t>-1)
        if err == EMFILE:
            self._pause_accepting(err)  # that connection is lost: no descriptor for it
            return True
        if err:
            raise OSError(err, "recvmsg() on the hand-off socket failed: " + os.strerror(err))
        if self.pause_streak:
            self.pause_streak = 0
        if t.flags & C_TICKET_SHARE:
            return self._nudged(<int>(t.head_due_us & 0xffffffff),
                                <uint32_t>(t.head_due_us >> 32), fd)
        dec.end = n
        conn.fd = fd
        conn.head_due_us = t.head_due_us
        conn.arrived_us = t.arrived_us
        conn.late = t.flags & C_TICKET_LATE
        conn.dups = t.flags & C_TICKET_DUPS
        self._serve_conn(conn, CONN_HANDED)
        return True

    cdef int _leave_source(self, int index) except -1:
        """Finishing: take listener ``index`` out of every set this worker sleeps on (the
        pool's queue too): systemd's, or one the master stopped (it would wake them all
        for ever)."""
        cdef int epfd, fd = self.srcs[index]
        if fd < 0:
            return 0
        self.srcs[index] = -1
        for epfd in (self.epfd, self.epfd_rest, self.kept.queue if self.kh != NULL else -1):
            if epfd >= 0:
                epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL)
        return 0


cdef class Worker(Accepting):
    """One worker process's loop over its listening sockets and the connections it holds."""
    cdef pollfd *pfds                    # the epoll set, then the connections held privately
    cdef int npfds, pfds_cap
    cdef int nfixed                      # pfds before the held connections (1: the epoll set)
    cdef int wake_r                      # read end of the stop pipe (see watch_quit)
    cdef list held                       # Conn objects idle between requests, parallel to pfds[nfixed:]

    def __cinit__(self):
        self.wake_r = -1
        self.pfds_cap = 16
        self.pfds = <pollfd *>malloc(self.pfds_cap * sizeof(pollfd))
        if self.pfds == NULL:
            raise MemoryError()

    def __dealloc__(self):
        global _wake_w
        free(self.pfds)
        if self.wake_r >= 0:
            close(self.wake_r)
            close(_wake_w)
            _wake_w = -1

    def __init__(self, list listen_fds, app, o):
        Accepting.__init__(self, listen_fds, app, o)  # o: fpm.options.WorkerOptions
        self.held = []
        self._watch_sources()
        for index, gen, fd in o.kept_conns:
            self._adopt_kept(index, gen, fd)

    cdef int _watch_sources(self) except -1:
        """The fds the loop waits on: the epoll set of the sources of new connections, the
        stop pipe and the kept channel (and one with the pool's queue, one with its bell:
        the roles'); then the connections it holds privately, polled with it."""
        cdef int i, n, err
        global _wake_w
        self.nlisten = len(self.listen_fds)
        # Where new connections come from: the listening sockets, and the hand-off socket
        # (connections the master held until their head came), watched alike.
        self.nsources = self.nlisten + (self.handoff_fd >= 0)
        self.srcs = <int *>malloc((self.nsources + 2) * sizeof(int))
        if self.srcs == NULL:
            raise MemoryError()
        for i in range(self.nsources):
            self.srcs[i] = self.listen_fds[i] if i < self.nlisten else self.handoff_fd
        self.wake_r, _wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.srcs[self.nsources] = self.wake_r
        n = self.nsources + 1
        if self.kept_rx >= 0:
            self.chan_index = n
            self.srcs[n] = self.kept_rx
            n += 1
        self.epfd = _listen_epoll(self.srcs, self.nsources, n)
        if self.kh != NULL and self.kept.bell >= 0 and self.kept.queue >= 0:
            self.epfd_rest = _listen_epoll(self.srcs, self.nsources, n)
            err = _epoll_add(self.epfd_rest, self.kept.bell, EPOLLIN | EPOLLEXCLUSIVE, BELL_EVENT)
            if err:
                raise OSError(err, "epoll_ctl() of the pool's bell failed: " + os.strerror(err))
            for i in range(self.nsources):
                # Level-triggered: one event for all the connections queued at a source.
                # The pool's workers share the source (and its descriptor's number): the
                # first to start adds it.
                err = _epoll_add(self.kept.queue, self.srcs[i], EPOLLIN, q_source(self.srcs[i]))
                if err and err != EEXIST:
                    raise OSError(err, "epoll_ctl() of the pool's queue failed: "
                                  + os.strerror(err))
        self.pfds[0].fd = self.epfd
        self.pfds[0].events = POLLIN
        self.pfds[0].revents = 0
        self.nfixed = self.npfds = 1
        return 0

    cdef int _hold(self, Conn conn) except -1:
        cdef pollfd *np
        cdef int shared = self._hold_shared(conn)
        if shared >= 0:
            return shared
        if len(self.held) >= C_MAX_HELD:
            self._close(conn)
            return 0
        if self.npfds == self.pfds_cap:
            np = <pollfd *>realloc(self.pfds, 2 * self.pfds_cap * sizeof(pollfd))
            if np == NULL:
                raise MemoryError()
            self.pfds = np
            self.pfds_cap *= 2
        self.pfds[self.npfds].fd = conn.fd
        self.pfds[self.npfds].events = POLLIN
        self.pfds[self.npfds].revents = 0
        self.npfds += 1
        self.held.append(conn)
        return 0

    cdef Conn _unhold(self, int index):
        cdef int last = self.npfds - 1
        cdef int h = index - self.nfixed
        conn = <Conn>self.held[h]
        self.pfds[index] = self.pfds[last]
        self.held[h] = self.held[last - self.nfixed]
        self.held.pop()
        self.npfds -= 1
        return conn

    def run(self):
        """Serve until request_stop(); return the number of requests served."""
        cdef int i
        cdef bint served
        global _stop
        while not _stop:
            if _finishing and self._drained():
                _stop_now()
                break
            if self.kh != NULL and self.kh.drops != self.kept_drops:
                self._sweep_kept()
            if self.reserve_fd == -1:
                self._reopen_reserve()
            if self.paused_until and _now_us() >= self.paused_until:
                self.paused_until = 0
                self._set_sources(True)
            if not self.held and not self.paused_until:
                if self.nkept or _finishing:
                    # The watcher sleeps on the pool's queue (sources and shared connections):
                    # a request on one costs no system call more than on a held one.
                    self._wait_listeners(self._idle_ms())
                    continue
                # Optimistic accept: under load the queue is never empty, so no wait is
                # needed. A connection the master handed over goes first (it has waited
                # for its head already): the board says, without a system call, if any.
                served = False
                if self.handoff_fd >= 0 and self.header != NULL \
                        and self.header.handoff_pending > 0:
                    served = self._take_handoff()
                if not served:
                    for i in range(self.nlisten):
                        if self._accept(i):
                            served = True
                            break
                if not served and not self.paused_until:  # else: the pause's timed wait below
                    self._wait_listeners(-1)
                continue
            self._poll_held()
        if self.kh != NULL and kept_vacate(self.kh, self.pid):
            self._call()
        self._finish_held()
        return self.requests

    cdef int _poll_held(self) except -1:
        """Wait on the held connections and the epoll set (or the held ones alone, while
        accepting is paused: the sources are left out of the set), and serve what came."""
        cdef int i, n, nev = 0, timeout = -1
        cdef Conn conn
        cdef epoll_event events[16]
        if self.paused_until:
            timeout = max(1, <int>((self.paused_until - _now_us() + 999) // 1000))
        if _finishing:
            timeout = self._idle_ms() if timeout < 0 else min(timeout, self._idle_ms())
        self.pfds[0].fd = self._sleep_set(&timeout)
        with nogil:
            n = poll(self.pfds, self.npfds, timeout)
        if n < 0:
            return self._sleep_failed()
        ready = []
        for i in range(self.npfds - 1, self.nfixed - 1, -1):
            if self.pfds[i].revents:
                ready.append(self._unhold(i))
        if self.pfds[0].revents:
            nev = max(0, epoll_wait(self.pfds[0].fd, events, self._batch(), 0))
        self._woke_to(events, nev, len(ready) > 0, n == 0)
        self._take_events(events, nev)
        for conn in ready:
            self._serve_conn(conn, CONN_KEPT)
        return 0

    cdef bint _drained(self) except -1:
        """Finishing: True once it holds no connection and nothing more can come (the
        master's listeners stopped listening, no hand-off on its way), or no request came
        for FINISH_QUIET_MS (the web server may still send on a kept one until then), or
        FINISH_MAX_MS after the QUIT. At first it leaves systemd's listeners to the next
        master (what is queued there waits for it: socket activation); it takes from the
        others until the master, once they hold nothing more, stops them listening."""
        cdef int64_t now = _now_us()
        cdef int i
        if not self.finish_end_us:
            self.finish_due_us = now + FINISH_QUIET_MS * 1000LL
            self.finish_end_us = now + FINISH_MAX_MS * 1000LL
            for i in range(self.nlisten):
                if self.srcs[i] in self.left_queued:
                    self._leave_source(i)
        if now >= self.finish_due_us or now >= self.finish_end_us:
            return True
        return not self.held and not self.nkept and self._all_shut() and (
            (<volatile int64_t *>&self.header.handoff_pending)[0] <= 0)

    cdef inline bint _all_shut(self) noexcept:
        return self.header != NULL and (
            (<volatile uint32_t *>&self.header.master_says)[0] & SAYS_SHUT) != 0

    cdef int _idle_ms(self) noexcept:
        """How long the loop may sleep: until something comes, or while finishing until it
        is drained (_drained), looking every FINISH_LOOK_MS until the listeners are shut."""
        cdef int ms
        if not _finishing or not self.finish_end_us:
            return -1
        ms = max(1, <int>((min(self.finish_due_us, self.finish_end_us) - _now_us() + 999)
                          // 1000))
        return ms if self._all_shut() else min(ms, FINISH_LOOK_MS)

    cdef void _read_wake(self) noexcept:
        cdef char buf[64]
        while c_read(self.wake_r, buf, sizeof(buf)) > 0:
            pass

    cdef int _wait_listeners(self, int timeout) except -1:
        """Wait up to ``timeout`` ms (-1: until something comes) on the epoll set of this
        worker's role, and take what came."""
        cdef epoll_event events[16]
        cdef int n, epfd = self._sleep_set(&timeout)
        cdef int most = self._batch()
        with nogil:
            n = epoll_wait(epfd, events, most, timeout)
        if n < 0:
            return self._sleep_failed()
        self._woke_to(events, n, False, n == 0)
        return self._take_events(events, n)

    cdef int _sleep_failed(self) except -1:
        """poll() or epoll_wait() failed: EINTR (a signal, whose handler runs now), else
        raise."""
        cdef int err = errno
        self._woke(False, False, False)
        if err != EINTR:
            raise OSError(err, os.strerror(err))
        PyErr_CheckSignals()
        return 0

    cdef int _take_events(self, epoll_event *events, int n) except -1:
        """Take what came: new connections, a request on a shared one (from the queue),
        copies of newly shared ones; the stop pipe, the pool's stop and the bell (answered
        already) only wake us."""
        cdef int i, k, fd
        cdef uint64_t data
        for i in range(n):
            data = events[i].data.u64
            # Even once told to stop: EPOLLEXCLUSIVE may have woken this worker alone for
            # the connection, and the queue gave the request to this worker alone.
            if data < <uint64_t>self.nsources:
                self._take_queued(<int>data)
            elif data == <uint64_t>self.nsources:
                self._read_wake()  # finishing: it woke to time its drain
            elif data == <uint64_t>self.chan_index:
                self._take_copies()
            elif data == q_stop():
                pass
            elif data & q_kept(0, 0):
                self._kept_event(<int>(data & 0xffffffff), <uint32_t>(data >> 32) & GEN_MASK)
            elif data & q_source(0):
                fd = <int>(data & 0xffffffff)
                for k in range(self.nsources):
                    if self.srcs[k] == fd:
                        self._take_queued(k)
                        break
        return 0

    def _finish_held(self):
        """On a graceful stop, serve what already arrived on held connections and park the
        kept ones that wait for nothing with the master, which hands each to another worker
        when the web server sends its next request on it: closed here, one could be in use
        by then (FastCGI cannot announce a close), and a POST sent on it would get a 502.
        (Without a master, serve() on its own, they are closed.) A connection no request has
        begun on yet was accepted for a request on its way (a web server writes right after
        connect()): hanging up on it is a 502. It gets FIRST_BYTES_ON_STOP_MS, as PHP-FPM's
        accept gives it, before it is closed; so do those the master handed over as it
        stops."""
        cdef int n, i, wait = 0
        cdef int64_t left, deadline = _now_us() + FIRST_BYTES_ON_STOP_MS * 1000
        cdef int64_t pending
        if self.handoff_fd >= 0 and self.header != NULL:
            # A stopping master hands over what it had parked before it tells its workers to
            # stop; those handed over by then are served or held here. No more than that:
            # a worker that recycles leaves the rest to the others.
            pending = self.header.handoff_pending
            while pending > 0 and self._take_handoff():
                pending -= 1
        while self.held:
            with nogil:
                n = poll(self.pfds + self.nfixed, self.npfds - self.nfixed, wait)
            if n < 0:
                if errno != EINTR:
                    raise OSError(errno, os.strerror(errno))
                PyErr_CheckSignals()
                continue
            for i in range(self.npfds - 1, self.nfixed - 1, -1):
                if self.pfds[i].revents:
                    self._serve_conn(self._unhold(i), CONN_KEPT)  # then closed, or held again
                elif (<Conn>self.held[i - self.nfixed]).dec.keep_conn:
                    if self.park_fd >= 0 and not _finishing:
                        self._park(self._unhold(i), C_TICKET_KEPT)
                    else:
                        self._close(self._unhold(i))
            left = deadline - _now_us()
            if left <= 0:
                break
            wait = <int>((left + 999) // 1000)
        for i in range(self.npfds - 1, self.nfixed - 1, -1):
            self._close(self._unhold(i))


cdef ssize_t _recv_stamped(Conn conn, Decoder dec) noexcept:
    """recv() that also takes the kernel's receive time of the bytes (SO_TIMESTAMPNS, which
    the worker set on its TCP listeners and accepted sockets inherit) into conn.arrived_us."""
    cdef msghdr msg
    cdef iovec iov
    cdef uint64_t control[8]
    cdef cmsghdr *cm
    cdef timespec ts
    cdef ssize_t n
    memset(&msg, 0, sizeof(msg))
    iov.iov_base = dec.buf + dec.end
    iov.iov_len = dec.cap - dec.end
    msg.msg_iov = &iov
    msg.msg_iovlen = 1
    msg.msg_control = control
    msg.msg_controllen = sizeof(control)
    n = recvmsg(conn.fd, &msg, MSG_DONTWAIT)
    if n > 0:
        cm = CMSG_FIRSTHDR(&msg)
        while cm != NULL:
            if cm.cmsg_level == SOL_SOCKET and cm.cmsg_type == SCM_TIMESTAMPNS:
                memcpy(&ts, CMSG_DATA(cm), sizeof(timespec))
                conn.arrived_us = ts.tv_sec * 1000000 + ts.tv_nsec // 1000
            cm = CMSG_NXTHDR(&msg, cm)
    return n


cdef int _writev_all(int fd, iovec *iov, int cnt) except -1:
    """writev() everything, resuming after partial writes and signals."""
    cdef ssize_t n
    while cnt > 0:
        with nogil:
            n = writev(fd, iov, cnt)
        if n < 0:
            if errno == EINTR:
                PyErr_CheckSignals()
                continue
            _raise_write_error(errno)
        while cnt > 0 and <size_t>n >= iov[0].iov_len:
            n -= iov[0].iov_len
            iov += 1
            cnt -= 1
        if cnt > 0:
            iov[0].iov_base = <char *>iov[0].iov_base + n
            iov[0].iov_len -= n
    return 0


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
STATM = "/proc/self/statm"


def open_statm():
    """A descriptor of this process's /proc statm (pm.max_memory reads its RSS there), or
    -1 without /proc: then the peak RSS (getrusage) stands in. Open it before a chroot
    that has no /proc: the descriptor goes on reading this process's numbers."""
    try:
        return os.open(STATM, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def serve(list listen_fds, app, options):
    """Run a worker's loop on inherited listening sockets until request_stop() or a limit,
    as ``options`` (fpm.options.WorkerOptions) say.

    A connection without a whole request head after a few ms goes to the master over
    ``park_fd`` (fpm.parking), which hands it back over ``handoff_fd`` once the head has
    come (or -1: no master; a silent one is held, a partial head read here). Refusals
    (a late head, a slow body) are counted on the board, not logged here. accept() failing
    for want of descriptors pauses accepting (accept_pause_ms), counted too.

    Returns (requests served, stop reason: "" / "max_requests" / "max_memory", RSS in bytes
    after the last request, 0 unless max_memory is set). A stop requested earlier (a QUIT
    while the app was loading) holds: the loop returns at once. From here SIGTERM and SIGINT
    answer the request in progress with an error response before the worker dies.
    """
    global _g_slot, _timeout_len, _stopping_len
    cdef Worker w = Worker(listen_fds, app, options)
    _g_slot = w.slot
    _timeout_len = _error_reply(_timeout_reply, b"504 Gateway Timeout",
                                b"The request ran too long and was stopped (request_terminate_timeout).\n")
    _stopping_len = _error_reply(_stopping_reply, b"503 Service Unavailable",
                                 b"The server is shutting down; try again.\n")
    c_signal(SIGTERM, _on_term)
    c_signal(SIGINT, _on_term)
    w._stage(STAGE_IDLE)
    w.run()
    return w.requests, w.stop_reason, w.rss
