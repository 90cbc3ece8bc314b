# FastCGI 1.0 server side: the sans-IO codec, the worker's serve loop and the scoreboard.
# This header declares the C-level state; _proto.pyx holds the logic.

from libc.stdint cimport int32_t, uint32_t, int64_t, uint64_t


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


# What _request_status() makes of the bytes that start a request.
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
    cdef void _consume(self, Py_ssize_t n) noexcept
    cdef int _management(self, int rtype, const unsigned char *content, Py_ssize_t clen) except -1
    cdef int _reply_end(self, int request_id, unsigned int app_status, int protocol_status) except -1
    cdef bytes _end(self, unsigned int app_status, int protocol_status)


cdef class Conn:
    cdef int fd
    cdef Decoder dec
    cdef str peer_cache
    cdef int64_t arrived_us              # kernel receive time of the request's first bytes (0: unknown)
    cdef int64_t head_due_us             # CLOCK_MONOTONIC: when its request head is due (0: not set yet)
    cdef uint64_t body_read              # bytes read while the body came (request_body_min_rate)
    cdef bint refused                    # a refusal was counted for its request: not again
    cdef bint late                       # the master handed it over with its body late


# What travels with a connection between a worker and the master (park and hand-off
# messages, fpm.parking): this, then the bytes already read from it, and the fd itself.
ctypedef struct Ticket:
    uint32_t flags
    uint32_t pad
    int64_t head_due_us                  # CLOCK_MONOTONIC: when its whole request head is due
    int64_t arrived_us                   # kernel receive time of its first bytes (0: unknown)


cdef class Worker


cdef class Request:
    cdef Worker w
    cdef Conn conn
    cdef int rid
    cdef object status
    cdef list headers
    cdef readonly bint headers_sent
    cdef bint stderr_used
    cdef bint errors_logged              # wsgi.errors went to the error log: end its last line
    cdef readonly bint finished          # finish_request() has ended it for the web server
    cdef object peer                     # the access log's %R, read before finish_request() closed

    cdef int _send_headers(self) except -1
    cdef int _body(self, data, bint flush) except -1
    cdef int _sendfile(self, int fd) except -1
    cdef int send_result(self, result) except -1


cdef class Worker:
    cdef list listen_fds
    cdef object app
    cdef dict base_environ
    cdef str mount
    cdef Py_ssize_t params_max, max_conns, max_reqs
    cdef int read_timeout_ms
    cdef int64_t head_timeout_us         # request_head_timeout
    cdef uint64_t body_rate              # request_body_min_rate, bytes/s (0: off)
    cdef int park_fd                     # the pool's park socket (to the master; -1: none)
    cdef int handoff_fd                  # the pool's hand-off socket (from the master; -1: none)
    cdef int nsources                    # pfds: the listen fds, then the hand-off socket if any
    cdef int64_t paused_until            # accept() failed for want of descriptors: not before this
    cdef int pause_streak                # failures in a row (the pause grows with it)
    cdef int vain_waits                  # waits in a row for a request that did not come...
    cdef int64_t vain_at                 # ...the last one then (first_bytes_ms)
    cdef int reserve_fd                  # /dev/null, given up to take a connection when out of fds
    cdef object log                      # log(level, text): the worker's error-log lines
    cdef pollfd *pfds
    cdef int npfds, nlisten, pfds_cap
    cdef int nfixed                      # pfds: the sources, then the stop pipe, then held conns
    cdef int wake_r                      # read end of the stop pipe (see watch_quit)
    cdef list pair_cache                 # params strs of the last request, by position
    cdef int epfd                        # epoll over the listen fds (EPOLLEXCLUSIVE) and the stop pipe
    cdef list held                       # Conn objects idle between requests, parallel to pfds[nfixed:]
    cdef char *out                       # response bytes not yet written
    cdef Py_ssize_t out_len, out_cap
    cdef public unsigned long requests
    cdef bint wrote                      # some of the current response reached the socket
    cdef unsigned long max_requests      # stop after this many (0: never)
    cdef uint64_t max_memory             # stop once RSS exceeds this after a request (0: never)
    cdef int statm_fd                    # /proc/self/statm, read with pread when max_memory
    cdef public str stop_reason          # "", "max_requests" or "max_memory"
    cdef public uint64_t rss
    cdef Board board                     # keeps the mapping of `slot` alive
    cdef Slot *slot
    cdef dict special                    # request path -> app answering it (status, ping)
    cdef bint track_cpu                  # stamp each request's CPU time (status page)
    cdef int64_t cpu_mark                # process CPU µs when the current request began
    cdef object access                   # the access log writer (fpm.accesslog.Writer) or None
    cdef object access_begin             # its begin(), called as each request starts, or None
    cdef object on_reopen                # takes the master's new log fds after a USR1
    cdef uint64_t log_generation         # the board's log_generation this worker has seen
    cdef object allow                    # allow(fd) -> bool for each accepted connection, or None
    cdef Py_ssize_t body_buffer          # request bodies up to this stay in memory
    cdef Py_ssize_t body_max             # larger bodies are answered 413 (0: no limit)
    cdef object spool_dir                # where larger bodies are spooled
    cdef tuple body_file_dirs            # where a REQUEST_BODY_FILE may be (real paths)
    cdef int64_t queue_timeout_us        # request_queue_timeout (0: off)
    cdef object start_param              # the param carrying the web server's request start
    cdef bint stamp_reads                # read with recvmsg to learn the kernel's arrival time
    cdef bint fill_paths                 # split_paths() on each request (app pools)
    cdef object errors_log               # wsgi.errors into the error log (fpm.stdio.ErrorsLog) or None
    cdef bint errors_to_log, errors_to_server  # where wsgi.errors goes (wsgi_errors)
    cdef object on_output                # ends sys.stdout's and sys.stderr's lines after a request wrote

    cdef void _stage(self, Stage stage) noexcept nogil
    cdef int _stamp_request(self, dict environ, Py_ssize_t length) except -1
    cdef int _after_request(self) except -1
    cdef int _log_request(self, Conn conn, dict environ, Request req) except -1

    cdef int _hold(self, Conn conn) except -1
    cdef Conn _unhold(self, int index)
    cdef int _serve_conn(self, Conn conn, int how) except -1
    cdef Py_ssize_t _await_head(self, Conn conn, Py_ssize_t r, int how) except -9
    cdef int _park(self, Conn conn) except -1
    cdef int _wait_listeners(self) except -1
    cdef bint _take(self, int index) except -1
    cdef bint _accept(self, int index) except -1
    cdef bint _take_handoff(self) except -1
    cdef int _pause_accepting(self, int err) except -1
    cdef int _reopen_reserve(self) except -1
    cdef int _set_sources(self, short events) noexcept
    cdef int _count(self, int cause) except -1
    cdef int _wait_ms(self, Conn conn, int64_t quiet_from) except -1
    cdef int _run_request(self, Conn conn) except -1
    cdef object _admit(self, Conn conn, dict environ, Py_ssize_t length)
    cdef object _read_body(self, Conn conn, dict environ, Py_ssize_t length)
    cdef object _body_file(self, Conn conn, dict environ, str path)
    cdef double _waited(self, Conn conn, dict environ)
    cdef int _finish(self, Request req) except -1
    cdef int _log(self, str level, str text) except -1
    cdef int _log_app_error(self) except -1
    cdef str _request_line(self)
    cdef int _next_stdin(self, Conn conn) except -1
    cdef Py_ssize_t _read(self, Conn conn, bint wait) except -9
    cdef int _out_reserve(self, Py_ssize_t n) except -1
    cdef int _out_append(self, const char *data, Py_ssize_t n) except -1
    cdef int _out_record(self, int rtype, int request_id, const char *data, Py_ssize_t n) except -1
    cdef int _out_stream(self, Conn conn, int rtype, int request_id, object data) except -1
    cdef int _flush(self, Conn conn) except -1
    cdef int _write_all(self, Conn conn, const char *data, Py_ssize_t n) except -1
    cdef void _close(self, Conn conn) noexcept
    cdef int _drop(self, Conn conn, str level, str message) except -1
    cdef int _refuse(self, Conn conn, str message) except -1
    cdef int _unexpected(self, Conn conn) except -1


# --- the scoreboard: one shared mapping per pool, a header then one Slot per worker --------

# Request stages, PHP-FPM's in spirit. STARTING and IDLE count as idle for the process
# managers; READING..FINISHING as active.
cdef enum Stage:
    STAGE_FREE = 0        # no worker in this slot
    STAGE_STARTING = 1    # forked, loading the app
    STAGE_IDLE = 2        # waiting for a connection or for the next request on a kept one
    STAGE_READING = 3     # a request began: reading its params
    STAGE_RUNNING = 4     # the app runs
    STAGE_FINISHING = 5   # END_REQUEST sent, the request's tail (unread body) is being drained

# Refusal causes: BoardHeader.refusals indices, in fpm.refusals.CAUSES order.
cdef enum Refused:
    REFUSED_HEAD = 0      # no whole request head within request_head_timeout
    REFUSED_BODY = 1      # a body slower than request_body_min_rate (or silent)
    REFUSED_PARKED = 2    # parked connections over the pool's limit, or the park queue full
    REFUSED_ACCEPT = 3    # accept() failed for want of descriptors (EMFILE, ENFILE...)
    REFUSED_PROTOCOL = 4  # what a peer sent broke the FastCGI protocol (or was HTTP)
    N_REFUSALS = 5

# Why the master is about to signal a worker; read by the worker's SIGTERM handler.
cdef enum Order:
    ORDER_NONE = 0
    ORDER_TIMEOUT = 1     # request_terminate_timeout: answer 504 before dying

# Pool-wide numbers for the status page. Workers keep accepted_conn, active and max_active
# with atomic operations; the master stores the rest (and corrects `active` every second,
# as a worker killed mid-request never gives its count back).
ctypedef struct BoardHeader:
    uint32_t magic
    uint32_t nslots
    uint64_t accepted_conn     # requests begun in the pool, across worker deaths
    int64_t start_epoch_us     # when the pool started (wall clock, µs)
    uint64_t slow_requests
    uint32_t active            # workers inside a request
    uint32_t max_active
    uint32_t max_children_reached
    uint32_t listen_queue      # connections waiting to be accepted, at the last tick
    uint32_t max_listen_queue
    uint32_t listen_queue_len  # the queues' capacity
    uint64_t log_generation    # bumped by the master on USR1: workers take new log fds
    # Connections the master handed to the pool's idle workers and none has taken yet: a
    # worker looks (a memory read) before it accepts, so a busy pool never starves them.
    int64_t handoff_pending
    # Refusals by cause (fpm.refusals; Refused above), added to atomically by the workers and
    # the master; the master logs them once per episode.
    uint64_t refusals[N_REFUSALS]
    # When the last protocol error of the pool was (CLOCK_MONOTONIC, µs): a worker logs the
    # first of an episode in full, the master the episode (fpm.refusals).
    int64_t protocol_error_us
    uint32_t parked            # connections the master holds for the pool now
    int32_t accept_errno       # why the last accept() failed
    # Why the pool's app could not be loaded, by the last worker that tried and failed:
    # written between two increments of app_seq (odd while written; a second writer skips).
    uint32_t app_seq
    uint32_t app_pad
    int64_t app_error_epoch_us
    char app_error[512]

# Written by its worker between two increments of `seq` (odd while writing: readers retry),
# except `pid` and `order`, single words the master stores.
ctypedef struct Slot:
    uint32_t seq
    int32_t pid
    uint32_t stage
    uint32_t order
    int64_t started            # µs on CLOCK_MONOTONIC: when the master forked the worker
    int64_t changed            # µs: the last stage change
    int64_t accepted           # µs: when the current (or last) request began
    int64_t duration           # µs: how long the last finished request took
    uint64_t requests
    int64_t content_length
    uint64_t rss               # bytes, after the last request (only with pm.max_memory)
    uint64_t cpu               # µs of CPU the last request took (only with pm.status_path)
    uint64_t flags             # SLOT_APP_FAILED: the worker could not load the app
    uint64_t reserved[1]
    char method[16]
    char request_uri[512]
    char script[256]
    char user[32]


cdef class Board:
    cdef char *mem
    cdef size_t size
    cdef readonly int nslots, fd
    cdef Slot *slot(self, int index) noexcept nogil
    cdef Slot *_checked(self, int index) except NULL
