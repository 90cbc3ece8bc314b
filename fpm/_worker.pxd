# A worker's loop and the objects of a request: the declarations _worker.pyx implements.

from libc.stdint cimport int64_t, uint64_t

from fpm._board cimport Board, BoardHeader, Slot, Stage
from fpm._codec cimport Decoder
from fpm._sys cimport pollfd


cdef class Conn:
    cdef int fd
    cdef Decoder dec
    cdef str peer_cache
    cdef int64_t arrived_us              # kernel receive time of the request's first bytes (0: unknown)
    cdef int64_t head_due_us             # CLOCK_MONOTONIC: when its request head is due (0: not set yet)
    cdef uint64_t body_read              # bytes read while the body came (request_body_min_rate)
    cdef bint refused                    # a refusal was counted for its request: not again
    cdef bint late                       # the master handed it over with its body late


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
    cdef int _fail(self) except -1
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
    cdef Board board                     # keeps the mapping of `header` and `slot` alive
    cdef BoardHeader *header             # the pool's counters (NULL: no scoreboard)
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

    cdef int _watch_sources(self) except -1
    cdef int _hold(self, Conn conn) except -1
    cdef Conn _unhold(self, int index)
    cdef int _serve_conn(self, Conn conn, int how) except -1
    cdef int _serve_requests(self, Conn conn, int how) except -1
    cdef Py_ssize_t _more(self, Conn conn, Py_ssize_t r) except -9
    cdef Py_ssize_t _await_head(self, Conn conn, Py_ssize_t r, int how) except -9
    cdef int _park(self, Conn conn) except -1
    cdef int _wait_listeners(self) except -1
    cdef bint _take(self, int index) except -1
    cdef bint _accept(self, int index) except -1
    cdef bint _take_handoff(self) except -1
    cdef int _pause_accepting(self, int err) except -1
    cdef int _reopen_reserve(self) except -1
    cdef int _set_sources(self, short events) noexcept
    cdef int _wait_ms(self, Conn conn, int64_t quiet_from) except -1
    cdef int _run_request(self, Conn conn) except -1
    cdef dict _environ(self, Conn conn, Request req, Py_ssize_t *length)
    cdef int _call_app(self, Conn conn, dict environ, Request req, Py_ssize_t length) except -1
    cdef int _end_response(self, Request req, unsigned int app_status) except -1
    cdef int _after_response(self, Conn conn, dict environ, Request req) except -1
    cdef int _settle(self, Conn conn) except -1
    cdef object _admit(self, Conn conn, dict environ, Py_ssize_t length)
    cdef object _read_body(self, Conn conn, dict environ, Py_ssize_t length)
    cdef object _spool_from(self, bytearray grown, bytes body, Py_ssize_t filled)
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
    cdef int _out_records(self, int rtype, int request_id, const char *p, Py_ssize_t n) except -1
    cdef int _out_end(self, Conn conn, unsigned int app_status) except -1
    cdef void _out_drop(self) noexcept
    cdef int _out_stream(self, Conn conn, int rtype, int request_id, object data) except -1
    cdef int _out_file(self, Conn conn, int request_id, int fd) except -1
    cdef int _flush(self, Conn conn) except -1
    cdef int _write_all(self, Conn conn, const char *data, Py_ssize_t n) except -1
    cdef void _close(self, Conn conn) noexcept
    cdef int _drop(self, Conn conn, str level, str message) except -1
    cdef int _refuse(self, Conn conn, str message) except -1
    cdef int _unexpected(self, Conn conn) except -1
