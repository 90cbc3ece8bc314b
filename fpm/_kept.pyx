# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""A pool's table of shared kept connections (see _kept.pxd), in a memfd that survives the
master's re-exec on reload, so old and new workers claim the same words."""

from libc.errno cimport errno
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memset
from posix.mman cimport (mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED,
                         MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED)

from posix.unistd cimport close
from fpm._sys cimport (epoll_create1, epoll_ctl, epoll_event, EPOLL_CLOEXEC, EPOLL_CTL_ADD,
                      EPOLL_CTL_DEL, EPOLLIN, EPOLLET)

import os

KEPT_MAX = C_KEPT_MAX
FREE, IDLE, BUSY, MISSED = K_FREE, K_IDLE, K_BUSY, K_MISSED
WATCHER, DEPUTY, REST = ROLE_WATCHER, ROLE_DEPUTY, ROLE_REST
cdef uint64_t KEPT_MAGIC = 0x70796670_6b657032  # "pyfpkep2": the header with the roles


def new_queue(int stop):
    """The pool's queue, the one epoll set its watcher sleeps on, taking one event at a time:
    its shared connections (edge-triggered: one event per request, in the order they came,
    in one ready list), its sources (each worker adds them) and the ``stop`` eventfd."""
    cdef int q = epoll_create1(EPOLL_CLOEXEC)
    cdef epoll_event ev
    if q < 0:
        raise OSError(errno, "epoll_create1() failed: " + os.strerror(errno))
    ev.events = EPOLLIN | EPOLLET
    ev.data.u64 = q_stop()
    if epoll_ctl(q, EPOLL_CTL_ADD, stop, &ev) < 0:
        err = errno
        close(q)
        raise OSError(err, "epoll_ctl() of the pool's stop eventfd failed: " + os.strerror(err))
    return q


def enqueue(int queue, int fd, int index, uint32_t gen):
    """Put shared connection ``gen`` of entry ``index`` (``fd``: a copy) in ``queue``."""
    cdef epoll_event ev
    ev.events = EPOLLIN | EPOLLET
    ev.data.u64 = q_kept(gen, index)
    if epoll_ctl(queue, EPOLL_CTL_ADD, fd, &ev) < 0:
        raise OSError(errno, "epoll_ctl() of a shared connection failed: " + os.strerror(errno))


def dequeue(int queue, int fd):
    """Take copy ``fd`` out of ``queue`` before it is closed: the registration lives as
    long as the connection (in the workers' copies, or parked), and would queue its
    requests again under a generation gone."""
    epoll_ctl(queue, EPOLL_CTL_DEL, fd, NULL)  # ENOENT: it never was (add failed)


def table_bytes(int size):
    return sizeof(KeptHeader) + size * sizeof(KeptEntry)


cdef class Table:
    """The shared table mapped from ``fd`` (``size`` entries; ``create``: reset it), and
    the pool's ``bell``. The mapping is inherited by forked workers."""

    def __cinit__(self):
        self.head = NULL
        self.fd = -1
        self.bell = -1
        self.queue = -1
        self.stop = -1

    def __init__(self, int fd, int size, bint create=False, int bell=-1, int queue=-1,
                 int stop=-1):
        if not 0 <= size <= C_KEPT_MAX:
            raise ValueError("a kept-connection table holds 0 to %d entries, not %d"
                             % (C_KEPT_MAX, size))
        self.length = table_bytes(size)
        cdef void *m = mmap(NULL, self.length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if m == MAP_FAILED:
            raise OSError(errno, "mmap() of the kept-connection table failed: "
                          + os.strerror(errno))
        self.head = <KeptHeader *>m
        self.fd = fd
        self.bell = bell
        self.queue = queue
        self.stop = stop
        self.size = size
        if create:
            memset(m, 0, self.length)
            self.head.magic = KEPT_MAGIC
            self.head.size = size
        elif self.head.magic != KEPT_MAGIC or self.head.size != <uint32_t>size:
            munmap(m, self.length)
            self.head = NULL
            raise ValueError("fd %d holds no kept-connection table of %d entries" % (fd, size))

    def __dealloc__(self):
        if self.head != NULL:
            munmap(self.head, self.length)

    @property
    def fds(self):
        """The descriptors its workers keep: the bell, the queue and the stop eventfd."""
        return tuple(fd for fd in (self.bell, self.queue, self.stop) if fd >= 0)

    def unshare(self):
        """In a worker of another pool: private zeroes take the shared pages' place."""
        if mmap(self.head, self.length, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED:
            raise OSError(errno, "mmap() over another pool's kept-connection table failed: "
                          + os.strerror(errno))

    @property
    def drops(self):
        return (<volatile uint64_t *>&self.head.drops)[0]

    def entry(self, int index):
        """(generation, state, pid) of entry ``index``."""
        if not 0 <= index < self.size:
            raise IndexError(index)
        cdef uint64_t w = (<volatile uint64_t *>&k_entries(self.head)[index].word)[0]
        return k_gen(w), k_state(w), k_pid(w)

    def live(self):
        """{index: generation} of the entries that hold a connection."""
        cdef KeptEntry *t = k_entries(self.head)
        cdef uint64_t w
        cdef int i
        out = {}
        for i in range(self.size):
            w = (<volatile uint64_t *>&t[i].word)[0]
            if k_state(w) != K_FREE:
                out[i] = k_gen(w)
        return out

    def drop(self, int index, uint32_t gen):
        """Free entry ``index`` if it still holds connection ``gen`` (the master: a worker
        died serving it, or the master gives it up); True if it did."""
        if not 0 <= index < self.size:
            raise IndexError(index)
        return kept_drop(self.head, &k_entries(self.head)[index], gen, 0)

    # The workers' operations, for tests: the loop uses the inline functions of _kept.pxd.
    def alloc(self, uint32_t pid):
        cdef uint32_t gen = 0
        cdef int index = kept_alloc(self.head, pid, &gen)
        return None if index < 0 else (index, gen)

    def claim(self, int index, uint32_t gen, uint32_t pid):
        return kept_claim(&k_entries(self.head)[index], gen, pid)

    def release(self, int index, uint32_t gen, uint32_t pid):
        return kept_release(&k_entries(self.head)[index], gen, pid)

    def take_role(self, uint32_t pid, bint deputize=True):
        return kept_take_role(self.head, pid, deputize)

    def leave_role(self, uint32_t pid, int role, bint work):
        return kept_leave_role(self.head, pid, role, work)

    def answer(self):
        """The bell was answered (read)."""
        fpm_cas64(&self.head.rung, 1, 0)

    def vacate(self, uint32_t pid):
        """True if worker ``pid`` (gone) was the watcher or the deputy; the bell must call
        another (call())."""
        return kept_vacate(self.head, pid)

    def call(self, bint anyway=False):
        """True when the caller must ring the bell: it is not rung already, or ``anyway``
        (the master, after a worker's death: it may have died with the bell rung and not
        answered, or answered and not marked)."""
        if anyway:
            (<volatile uint64_t *>&self.head.rung)[0] = 1
            return True
        return kept_call(self.head)

    def deputize(self, uint32_t pid, uint64_t sleep_ms):
        """Worker ``pid`` takes the deputy's place for a sleep of ``sleep_ms`` (as a
        worker's _sleep_set does); its role."""
        cdef int role = kept_take_role(self.head, pid, True)
        if role == ROLE_DEPUTY:
            self.head.deputy_ms = sleep_ms
        return role

    def roles(self):
        """{watcher, deputy, rung, wakes}: the sleepers' places (pids; 0: nobody)."""
        cdef KeptHeader *h = self.head
        return {"watcher": k_load(&h.watcher), "deputy": k_load(&h.deputy),
                "rung": k_load(&h.rung), "wakes": k_load(&h.wakes)}

    def busy_of(self, uint32_t pid):
        """[(index, generation)] of the entries worker ``pid`` was serving."""
        cdef KeptEntry *t = k_entries(self.head)
        cdef uint64_t w
        cdef int i
        out = []
        for i in range(self.size):
            w = (<volatile uint64_t *>&t[i].word)[0]
            if k_state(w) & K_BUSY and k_pid(w) == pid:
                out.append((i, k_gen(w)))
        return out
