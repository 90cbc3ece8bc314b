# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""A pool's scoreboard in shared memory: the master's view (Board) and the stamps a worker
makes on its own slot (declared in _board.pxd). fpm.scoreboard builds the Python view."""

from cpython.unicode cimport PyUnicode_1BYTE_KIND, PyUnicode_DATA, PyUnicode_DecodeUTF8
from cpython.unicode cimport PyUnicode_GET_LENGTH, PyUnicode_KIND
from libc.errno cimport errno
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset
from posix.mman cimport (mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED,
                         MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED)

import os

BOARD_MAGIC = 0x46504D33  # "FPM3": a mapping from another layout is refused
# By Stage, in the status page's words (PHP-FPM's, plus Starting).
STAGE_NAMES = ("Free", "Starting", "Idle", "Reading headers", "Running", "Finishing")
# The stages and the master's order as the .pxd numbers them, for fpm.scoreboard.
STARTING, IDLE, READING, RUNNING, FINISHING = (STAGE_STARTING, STAGE_IDLE, STAGE_READING,
                                               STAGE_RUNNING, STAGE_FINISHING)
TIMEOUT_ORDER = ORDER_TIMEOUT
APP_FAILED = SLOT_APP_FAILED


cdef dict _refusal_names():
    cdef Refusals r
    memset(&r, 0, sizeof(r))
    return r


# The refusal causes, by their Refused index: the Refusals struct's field names.
REFUSAL_CAUSES = tuple(_refusal_names())
if len(REFUSAL_CAUSES) != N_REFUSALS or sizeof(Refusals) != N_REFUSALS * sizeof(uint64_t):
    raise ImportError("fpm/_board.pxd: N_REFUSALS is %d, Refusals has %d counters"
                      % (N_REFUSALS, len(REFUSAL_CAUSES)))
REFUSAL_QUIET = C_REFUSAL_QUIET


def board_size(int nslots):
    """Bytes a scoreboard for ``nslots`` workers needs."""
    return sizeof(BoardHeader) + nslots * sizeof(Slot)


cdef class Board:
    """A pool's scoreboard mapped from a memfd: the master resets and reads slots, each
    worker stamps its own. The mapping is inherited by forked workers."""

    def __cinit__(self):
        self.mem = NULL
        self.fd = -1

    def __init__(self, int fd, int nslots, bint create=False):
        self.size = board_size(nslots)
        cdef void *m = mmap(NULL, self.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if m == MAP_FAILED:
            raise OSError(errno, "mmap() of the scoreboard failed: " + os.strerror(errno))
        self.mem = <char *>m
        self.fd = fd
        self.nslots = nslots
        cdef BoardHeader *h = <BoardHeader *>self.mem
        if create:
            memset(self.mem, 0, self.size)
            h.magic = BOARD_MAGIC
            h.nslots = nslots
        elif h.magic != BOARD_MAGIC or h.nslots != <uint32_t>nslots:
            raise ValueError("fd %d holds no scoreboard of %d slots" % (fd, nslots))

    def __dealloc__(self):
        if self.mem != NULL:
            munmap(self.mem, self.size)

    def unshare(self):
        """In a worker, for a scoreboard that is not its pool's: its pages stop being shared.
        Private zeroes take their place at the same address, so that a stale reference
        reads nothing and crashes nothing."""
        if mmap(self.mem, self.size, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED:
            raise OSError(errno, "mmap() over another pool's scoreboard failed: "
                          + os.strerror(errno))

    cdef Slot *slot(self, int index) noexcept nogil:
        return <Slot *>(self.mem + sizeof(BoardHeader)) + index

    cdef Slot *_checked(self, int index) except NULL:
        if not 0 <= index < self.nslots:
            raise IndexError("scoreboard slot %d out of 0..%d" % (index, self.nslots - 1))
        return self.slot(index)

    @property
    def accepted_conn(self):
        return (<BoardHeader *>self.mem).accepted_conn

    def header(self):
        """The pool-wide numbers: the BoardHeader struct's fields, by name (its refusals a
        dict by cause; app_error() reads the app's error consistently)."""
        cdef BoardHeader c = (<BoardHeader *>self.mem)[0]
        c.app_error[sizeof(c.app_error) - 1] = 0  # a torn or hostile write stays in the field
        return c

    def refusals(self):
        """The refusal counters, a tuple in REFUSAL_CAUSES order."""
        cdef BoardHeader *h = <BoardHeader *>self.mem
        return tuple(refusal(h, i)[0] for i in range(<int>N_REFUSALS))

    def count_refusal(self, int cause, uint64_t n=1):
        """The master's: ``n`` more refusals of ``cause`` (an index in REFUSAL_CAUSES)."""
        if not 0 <= cause < N_REFUSALS:
            raise IndexError("refusal cause %d out of 0..%d" % (cause, N_REFUSALS - 1))
        fpm_atomic_add(refusal(<BoardHeader *>self.mem, cause), n)

    def set_parked(self, uint32_t parked):
        (<BoardHeader *>self.mem).parked_connections = parked

    @property
    def handoff_pending(self):
        return (<BoardHeader *>self.mem).handoff_pending

    def add_handoffs(self, int64_t n):
        """The master's, around each hand-off: see BoardHeader.handoff_pending."""
        fpm_atomic_add(<uint64_t *>&(<BoardHeader *>self.mem).handoff_pending, <uint64_t>n)

    def settle_handoffs(self, int64_t seen):
        """The hand-off socket was found empty: whatever count ``seen`` still claims is
        wrong (a worker died between taking one and counting it); zero it unless it moved."""
        fpm_cas64(<uint64_t *>&(<BoardHeader *>self.mem).handoff_pending, <uint64_t>seen, 0)

    def app_error(self):
        """(epoch µs, reason) of the pool's last failed app load; (0, "") if none. A writer
        killed halfway leaves the sequence odd: after a bounded wait, what is there is read."""
        cdef BoardHeader *h = <BoardHeader *>self.mem
        cdef uint32_t seq
        cdef int64_t at
        cdef char copy[512]
        cdef int tries
        for tries in range(100000):
            seq = h.app_seq
            fpm_barrier()
            at = h.app_error_epoch_us
            memcpy(copy, h.app_error, 512)
            fpm_barrier()
            if not seq & 1 and seq == h.app_seq:
                break
        return at, cstr(copy, 512)

    def mark_app_failed(self, int index, int64_t epoch_us, str reason):
        """A worker's: its slot answers 503 because the app could not be loaded, and why."""
        cdef Slot *s = self._checked(index)
        cdef BoardHeader *h = <BoardHeader *>self.mem
        cdef uint32_t seq = h.app_seq
        cdef bytes text = reason.encode("utf-8", "backslashreplace")[:511]
        slot_begin(s)
        s.flags |= SLOT_APP_FAILED
        slot_end(s)
        if seq & 1 or not fpm_cas32(&h.app_seq, seq, seq + 1):
            return  # another worker is writing the same news
        h.app_error_epoch_us = epoch_us
        memcpy(h.app_error, <const char *>text, len(text))
        h.app_error[len(text)] = 0
        fpm_barrier()
        h.app_seq = seq + 2

    def hold_recycling(self, bint on):
        """While ``on``, the pool's workers serve on past their recycling limits."""
        self._say(SAYS_HOLD_RECYCLING, on)

    def finish(self):
        """The master finishes: its workers drain what they have as they stop."""
        self._say(SAYS_FINISHING, True)

    def finishing(self):
        """True once the master finishes (QUIT)."""
        return ((<volatile uint32_t *>&(<BoardHeader *>self.mem).master_says)[0]
                & SAYS_FINISHING) != 0

    def listeners_shut(self):
        """The finishing master's listening sockets stopped listening."""
        self._say(SAYS_SHUT, True)

    cdef void _say(self, uint32_t flag, bint on) noexcept:
        cdef volatile uint32_t *says = &(<BoardHeader *>self.mem).master_says
        says[0] = (says[0] | flag) if on else (says[0] & ~flag)

    def bump_log_generation(self):
        """Tell the pool's workers to take the reopened log files before their next line."""
        (<BoardHeader *>self.mem).log_generation += 1

    def count_slow_request(self):
        (<BoardHeader *>self.mem).slow_requests += 1

    def set_master_counters(self, int64_t start_epoch_us, uint32_t active,
                            uint32_t max_children_reached, uint32_t listen_queue,
                            uint32_t listen_queue_len):
        """The master's once-a-second update: its own numbers, the recounted active workers,
        and the listen queue, whose high-water mark is kept here."""
        cdef BoardHeader *h = <BoardHeader *>self.mem
        h.start_epoch_us = start_epoch_us
        h.active = active
        if active > h.max_active:
            h.max_active = active
        h.max_children_reached = max_children_reached
        h.listen_queue = listen_queue
        if listen_queue > h.max_listen_queue:
            h.max_listen_queue = listen_queue
        h.listen_queue_len = listen_queue_len

    def reset(self, int index, int64_t started_us):
        """Prepare a slot for a worker about to be forked (the slot's old worker is gone)."""
        cdef Slot *s = self._checked(index)
        memset(s, 0, sizeof(Slot))
        s.stage = STAGE_STARTING
        s.started = s.changed = started_us

    def set_pid(self, int index, int pid):
        self._checked(index).pid = pid

    def set_order(self, int index, int order):
        self._checked(index).order = order

    def free(self, int index):
        cdef Slot *s = self._checked(index)
        s.pid = 0
        s.stage = STAGE_FREE

    def read(self, int index):
        """A consistent copy of a slot: the Slot struct's fields by name (times in µs, texts
        decoded), but its sequence, which only this reading needs."""
        cdef Slot *s = self._checked(index)
        cdef Slot c
        cdef uint32_t seq
        while True:
            seq = s.seq
            fpm_barrier()
            memcpy(&c, s, sizeof(Slot))
            fpm_barrier()
            if not seq & 1 and seq == s.seq:
                break
        # A worker's app can write anything into its slot: each text ends in its field.
        c.request_method[sizeof(c.request_method) - 1] = 0
        c.request_uri[sizeof(c.request_uri) - 1] = 0
        c.script[sizeof(c.script) - 1] = 0
        c.user[sizeof(c.user) - 1] = 0
        cdef dict fields = c
        del fields["seq"], fields["reserved"]
        for name, value in fields.items():
            if type(value) is bytes:  # a text, decoded as cstr() does
                fields[name] = (<bytes>value).decode("utf-8", "replace")
        return fields


cdef str cstr(const char *p, Py_ssize_t cap):
    cdef Py_ssize_t n = 0
    while n < cap and p[n]:
        n += 1
    # The fields hold the request's raw bytes (environ strs are latin-1); they are UTF-8 in
    # practice, and shown as such (a character cut by truncation becomes U+FFFD).
    return PyUnicode_DecodeUTF8(p, n, "replace")


cdef void _copy_field(char *dst, Py_ssize_t cap, object value) noexcept:
    """Copy a latin-1 str (an environ value) into a fixed field, truncated, NUL-terminated."""
    cdef Py_ssize_t n = 0
    if isinstance(value, str) and PyUnicode_KIND(value) == PyUnicode_1BYTE_KIND:
        n = min(PyUnicode_GET_LENGTH(value), cap - 1)
        memcpy(dst, PyUnicode_DATA(value), n)
    dst[n] = 0


cdef void stamp_stage(Slot *s, BoardHeader *h, Stage stage, int64_t now) noexcept nogil:
    """The worker's stage changed at ``now``; a request that begins is counted in the pool
    and clears what the slot said of the last one (``h``: NULL without a scoreboard)."""
    cdef Stage was = <Stage>s.stage
    slot_begin(s)
    s.stage = stage
    s.changed = now
    if stage == STAGE_READING:
        s.accepted = now
        s.request_method[0] = s.request_uri[0] = s.script[0] = s.user[0] = 0
        s.content_length = 0
    slot_end(s)
    if h != NULL:
        if stage == STAGE_READING:
            fpm_atomic_add(&h.accepted_conn, 1)
        count_active(h, busy(was), busy(stage))


cdef int stamp_request(Slot *s, object method, object uri, object script, object user,
                       Py_ssize_t length, int64_t now) except -1:
    """What the running request is, for the status page and the master's timeout lines."""
    slot_begin(s)
    _copy_field(s.request_method, sizeof(s.request_method), method)
    _copy_field(s.request_uri, sizeof(s.request_uri), uri)
    _copy_field(s.script, sizeof(s.script), script)
    _copy_field(s.user, sizeof(s.user), user)
    s.content_length = length if length > 0 else 0
    s.stage = STAGE_RUNNING
    s.changed = now
    slot_end(s)
    return 0


cdef void stamp_done(Slot *s, BoardHeader *h, int64_t now, int64_t cpu) noexcept nogil:
    """A request ended at ``now``, having used ``cpu`` µs of CPU (-1: not measured)."""
    cdef Stage was = <Stage>s.stage
    slot_begin(s)
    s.requests += 1
    s.duration = now - s.accepted
    s.stage = STAGE_IDLE
    s.changed = now
    if cpu >= 0:
        s.cpu = cpu
    slot_end(s)
    count_active(h, busy(was), False)
