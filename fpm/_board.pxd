# A pool's scoreboard: one shared mapping, a header then one Slot per worker. The master
# resets and reads it; each worker stamps its own slot (the stamps below) and adds to the
# header's counters with atomic operations. _worker cimports it.

from libc.stdint cimport int32_t, uint32_t, int64_t, uint64_t


cdef extern from * nogil:
    """
    #define fpm_barrier() __sync_synchronize()
    #define fpm_atomic_add(p, n) __sync_fetch_and_add((p), (n))
    #define fpm_atomic_add32(p, n) __sync_add_and_fetch((p), (n))
    #define fpm_cas32(p, old, new) __sync_bool_compare_and_swap((p), (old), (new))
    #define fpm_cas64(p, old, new) __sync_bool_compare_and_swap((p), (old), (new))
    #define fpm_swap64(p, v) __atomic_exchange_n((p), (v), __ATOMIC_SEQ_CST)
    """
    void fpm_barrier()
    uint64_t fpm_atomic_add(uint64_t *p, uint64_t n)
    uint32_t fpm_atomic_add32(uint32_t *p, int n)
    bint fpm_cas32(uint32_t *p, uint32_t old, uint32_t new)
    bint fpm_cas64(uint64_t *p, uint64_t old, uint64_t new)
    int64_t fpm_swap64(int64_t *p, int64_t v)


cdef enum:
    # Seconds without a refusal of a cause that end its episode (fpm.refusals).
    C_REFUSAL_QUIET = 5
    SLOT_APP_FAILED = 1  # Slot.flags: the worker answers 503, its app could not be loaded

# Request stages, PHP-FPM's in spirit. STARTING and IDLE count as idle for the process
# managers; READING..FINISHING as active.
cdef enum Stage:
    STAGE_FREE = 0        # no worker in this slot
    STAGE_STARTING = 1    # forked, loading the app
    STAGE_IDLE = 2        # waiting for a connection or for the next request on a kept one
    STAGE_READING = 3     # a request began: reading its params
    STAGE_RUNNING = 4     # the app runs
    STAGE_FINISHING = 5   # END_REQUEST sent, the request's tail (unread body) is being drained

# Refusals by cause, since the pool started (fpm.refusals): a counter each, named as the
# status page's field, in the order of the Refused indices a worker counts by.
ctypedef struct Refusals:
    uint64_t head_timeouts     # no whole request head within request_head_timeout
    uint64_t slow_bodies       # a body slower than request_body_min_rate (or silent)
    uint64_t parked_closed     # parked connections over the pool's limit, or the park queue full
    uint64_t accept_failures   # accept() failed for want of descriptors (EMFILE, ENFILE...)
    uint64_t protocol_errors   # what a peer sent broke the FastCGI protocol (or was HTTP)

cdef enum MasterSays:
    # From a reload's start until its exec (cleared if the reload fails): no worker recycles
    # (pm.max_requests, pm.max_memory) while nobody could replace it. The new master treats
    # these boards as the previous generation's and retires their workers once its own serve.
    SAYS_HOLD_RECYCLING = 1
    # The master finishes (QUIT): a worker told to stop serves on what it has and what is
    # queued, closing each kept connection after its response (fpm._worker, "finishing").
    SAYS_FINISHING = 2
    # ...and its listening sockets have stopped listening: nothing new comes but what it
    # hands over, so a worker that holds no connection stops at once.
    SAYS_SHUT = 4


cdef enum Refused:
    REFUSED_HEAD = 0
    REFUSED_BODY = 1
    REFUSED_PARKED = 2
    REFUSED_ACCEPT = 3
    REFUSED_PROTOCOL = 4
    N_REFUSALS = 5        # the fields of Refusals (checked as _board is imported)

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
    # Added to atomically by the workers and the master; the master logs them once per
    # episode.
    Refusals refusals
    # When the last protocol error of the pool was (CLOCK_MONOTONIC, µs): a worker logs the
    # first of an episode in full, the master the episode (fpm.refusals).
    int64_t protocol_error_us
    uint32_t parked_connections  # connections the master holds for the pool now
    int32_t accept_errno       # why the last accept() failed
    # Why the pool's app could not be loaded, by the last worker that tried and failed:
    # written between two increments of app_seq (odd while written; a second writer skips).
    uint32_t app_seq
    # What the master tells every worker of the pool (MasterSays), written by it alone.
    uint32_t master_says
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
    char request_method[16]
    char request_uri[512]
    char script[256]
    char user[32]


cdef class Board:
    cdef char *mem
    cdef size_t size
    cdef readonly int nslots, fd
    cdef Slot *slot(self, int index) noexcept nogil
    cdef Slot *_checked(self, int index) except NULL
    cdef void _say(self, uint32_t flag, bint on) noexcept


# --- stamps: plain stores into shared memory, no system call --------------------------------

cdef inline void slot_begin(Slot *s) noexcept nogil:
    """Readers retry while a slot's sequence is odd: a stamp sits between begin and end."""
    s.seq += 1
    fpm_barrier()


cdef inline void slot_end(Slot *s) noexcept nogil:
    fpm_barrier()
    s.seq += 1


cdef inline bint busy(Stage stage) noexcept nogil:
    return stage >= STAGE_READING


cdef inline void count_active(BoardHeader *h, bint was, bint now) noexcept nogil:
    """Keep the pool's count of workers inside a request, and its high-water mark (``h``:
    NULL for a worker without a scoreboard)."""
    cdef uint32_t active, seen
    if h == NULL or was == now:
        return
    active = fpm_atomic_add32(&h.active, 1 if now else -1)
    if now:
        seen = h.max_active
        while active > seen and not fpm_cas32(&h.max_active, seen, active):
            seen = h.max_active


cdef inline uint64_t *refusal(BoardHeader *h, int cause) noexcept nogil:
    """The counter of ``cause`` (a Refused index): Refusals is an array of them by layout."""
    return (<uint64_t *>&h.refusals) + cause


cdef inline void count(BoardHeader *h, Refused cause) noexcept nogil:
    """One more refusal of ``cause`` for the master to tell (``h``: NULL, none)."""
    if h != NULL:
        fpm_atomic_add(refusal(h, cause), 1)


cdef void stamp_stage(Slot *s, BoardHeader *h, Stage stage, int64_t now) noexcept nogil
cdef int stamp_request(Slot *s, object method, object uri, object script, object user,
                       Py_ssize_t length, int64_t now) except -1
cdef void stamp_done(Slot *s, BoardHeader *h, int64_t now, int64_t cpu) noexcept nogil
cdef str cstr(const char *p, Py_ssize_t cap)
