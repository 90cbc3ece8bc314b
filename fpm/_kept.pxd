# Kept connections a pool's workers share (fastcgi_keep_conn): a table in shared memory of
# one word per connection, which a worker claims by compare-and-swap before it reads a
# request from it. Every worker holds a copy of each shared connection's descriptor; the
# pool's queue (new_queue) holds each once, so any free worker serves the oldest request on
# any of them. _worker cimports it; the master maps the same table.

from libc.stdint cimport uint32_t, uint64_t

from fpm._board cimport fpm_atomic_add, fpm_cas64


cdef enum:
    # Entries of a pool's table: connections that can be shared at once.
    C_KEPT_MAX = 1024
    # Entry states (bits 32-39 of the word).
    K_FREE = 0                           # no connection
    K_IDLE = 1                           # shared, nobody reads it
    K_BUSY = 2                           # a worker (its pid in bits 0-31) serves a request on it
    K_MISSED = 4                         # with K_BUSY: it became ready while that worker was busy
    # What kept_claim() found.
    CLAIM_STALE = -1                     # that connection is gone (closed, or no longer shared)
    CLAIM_BUSY = 0                       # another worker serves it; it reads again before it lets go
    CLAIM_OK = 1
    GEN_MASK = 0xffffff                  # generations are 24 bits (bits 40-63)
    # What a worker about to sleep is (kept_take_role).
    ROLE_NONE = 0                        # nothing shared: it sleeps on all it watches
    ROLE_WATCHER = 1
    ROLE_DEPUTY = 2
    ROLE_REST = 3
    # A deputy's sleep: DEPUTY_MS at first (the longest a request waits for a worker while
    # another is free), doubled while nothing comes; past DEPUTY_MAX_MS it rests (an idle
    # pool does not wake).
    DEPUTY_MS = 1
    DEPUTY_MAX_MS = 64


# Who sleeps on the shared connections (README, "Kept connections"). Were every idle worker
# to watch them, a request that comes while a worker serves one for a few microseconds would
# wake another every time (0.48 context switches per request against 0.24 when each worker
# held its own). One worker, the watcher, sleeps on them; a deputy sleeps DEPUTY_MS at a
# time without them and takes the watcher's place when it wakes to find it gone to serve;
# the others rest until the bell (an eventfd) calls one, which is rung when the worker that
# goes to serve leaves nobody to take over.
ctypedef struct KeptHeader:
    uint64_t magic
    uint64_t drops                       # entries freed so far: holders sweep their copies
    uint32_t size
    uint32_t pad
    uint64_t watcher                     # pid of the worker asleep on the shared connections (0: none)
    uint64_t deputy                      # pid of the one that takes over when it stays away (0: none)
    uint64_t rung                        # 1: the bell rang and nobody answered yet
    uint64_t wakes                       # watchers woken to serve, so far: the deputy's sign of load
    uint64_t shares                      # 1 once a worker shared a connection: the web server keeps them
    uint64_t deputy_ms                   # the deputy's current sleep (ms)


ctypedef struct KeptEntry:
    uint64_t word                        # gen << 40 | state << 32 | pid


# The events of a pool's queue (new_queue): a shared connection (its generation and entry),
# a source of new connections (its descriptor, the same in every worker of the pool), or a
# stop (a worker was told to stop: the watcher looks at whether it is the one).
cdef inline uint64_t q_kept(uint32_t gen, uint32_t index) noexcept nogil:
    return (1ULL << 62) | (<uint64_t>(gen & GEN_MASK) << 32) | index


cdef inline uint64_t q_source(int fd) noexcept nogil:
    return (1ULL << 59) | <uint32_t>fd


cdef inline uint64_t q_stop() noexcept nogil:
    return 1ULL << 58


cdef inline uint64_t k_word(uint32_t gen, uint32_t state, uint32_t pid) noexcept nogil:
    return (<uint64_t>(gen & GEN_MASK) << 40) | (<uint64_t>state << 32) | pid


cdef inline uint32_t k_gen(uint64_t w) noexcept nogil:
    return <uint32_t>(w >> 40) & GEN_MASK


cdef inline uint32_t k_state(uint64_t w) noexcept nogil:
    return <uint32_t>(w >> 32) & 0xff


cdef inline uint32_t k_pid(uint64_t w) noexcept nogil:
    return <uint32_t>w


cdef inline KeptEntry *k_entries(KeptHeader *h) noexcept nogil:
    return <KeptEntry *>(h + 1)


cdef inline int kept_claim(KeptEntry *e, uint32_t gen, uint32_t pid) noexcept nogil:
    """Take connection ``gen`` of entry ``e`` to serve it (CLAIM_OK); CLAIM_BUSY when another
    worker serves it (marked K_MISSED: it reads again before it lets go), CLAIM_STALE when
    the entry holds another connection or none."""
    cdef uint64_t w
    while True:
        w = (<volatile uint64_t *>&e.word)[0]
        if k_gen(w) != gen or k_state(w) == K_FREE:
            return CLAIM_STALE
        if k_state(w) & K_BUSY:
            if k_state(w) & K_MISSED or fpm_cas64(&e.word, w, w | (<uint64_t>K_MISSED << 32)):
                return CLAIM_BUSY
        elif fpm_cas64(&e.word, w, k_word(gen, K_BUSY, pid)):
            return CLAIM_OK


cdef inline int kept_release(KeptEntry *e, uint32_t gen, uint32_t pid) noexcept nogil:
    """Let go of a connection this worker served, which had nothing more to read: 0; 1 when
    it became ready meanwhile (K_MISSED, now cleared): read it again, it is still ours; -1
    when it was not ours (the master dropped it)."""
    cdef uint64_t busy = k_word(gen, K_BUSY, pid), missed = k_word(gen, K_BUSY | K_MISSED, pid)
    while True:
        if fpm_cas64(&e.word, busy, k_word(gen, K_IDLE, 0)):
            return 0
        if fpm_cas64(&e.word, missed, busy):
            return 1
        if (<volatile uint64_t *>&e.word)[0] not in (busy, missed):
            return -1


cdef inline int kept_alloc(KeptHeader *h, uint32_t pid, uint32_t *gen) noexcept nogil:
    """A free entry, claimed by this worker for a connection it shares, with the next
    generation; -1 when the table is full."""
    cdef KeptEntry *t = k_entries(h)
    cdef uint64_t w
    cdef uint32_t i, g
    for i in range(h.size):
        w = (<volatile uint64_t *>&t[i].word)[0]
        if k_state(w) == K_FREE:
            g = (k_gen(w) + 1) & GEN_MASK
            if fpm_cas64(&t[i].word, w, k_word(g, K_BUSY, pid)):
                gen[0] = g
                return <int>i
    return -1


cdef inline bint kept_drop(KeptHeader *h, KeptEntry *e, uint32_t gen, uint32_t pid) noexcept nogil:
    """Free the entry of a connection this worker serves (pid; 0 for the master, whatever
    worker serves it): closed, or no longer shared. Holders of copies sweep them."""
    cdef uint64_t w
    while True:
        w = (<volatile uint64_t *>&e.word)[0]
        if k_gen(w) != gen or k_state(w) == K_FREE or (pid and k_pid(w) != pid):
            return False
        if fpm_cas64(&e.word, w, k_word(gen, K_FREE, 0)):
            fpm_atomic_add(&h.drops, 1)
            return True


cdef inline uint64_t k_load(uint64_t *p) noexcept nogil:
    return (<volatile uint64_t *>p)[0]


cdef inline bint kept_call(KeptHeader *h) noexcept nogil:
    """True when the caller must ring the bell: it had not rung since it was last answered."""
    return k_load(&h.rung) == 0 and fpm_cas64(&h.rung, 0, 1)


cdef inline int kept_take_role(KeptHeader *h, uint64_t pid, bint deputize) noexcept nogil:
    """The role of a worker about to sleep: the watcher's if nobody has it (a deputy that
    takes it leaves its own empty); else the deputy's, which it keeps from one of its sleeps
    to the next, or takes if nobody has it and ``deputize``; else it rests."""
    if k_load(&h.watcher) == 0 and fpm_cas64(&h.watcher, 0, pid):
        fpm_cas64(&h.deputy, pid, 0)
        return ROLE_WATCHER
    if k_load(&h.deputy) == pid:
        return ROLE_DEPUTY
    if deputize and k_load(&h.deputy) == 0 and fpm_cas64(&h.deputy, 0, pid):
        return ROLE_DEPUTY
    return ROLE_REST


cdef inline bint kept_leave_role(KeptHeader *h, uint64_t pid, int role, bint work) noexcept nogil:
    """A worker woke from its sleep in ``role``; ``work``: to serve (or to stop). True when
    it must ring the bell: the watcher went with no deputy to take over within DEPUTY_MS
    (none, or one on a longer sleep: the pool was idle), or the deputy with nobody
    watching."""
    if role == ROLE_WATCHER:
        fpm_cas64(&h.watcher, pid, 0)
        if work:
            fpm_atomic_add(&h.wakes, 1)
            return (k_load(&h.deputy) == 0 or k_load(&h.deputy_ms) > DEPUTY_MS) and kept_call(h)
    elif role == ROLE_DEPUTY and work:
        fpm_cas64(&h.deputy, pid, 0)
        return k_load(&h.watcher) == 0 and kept_call(h)
    return False


cdef inline bint kept_vacate(KeptHeader *h, uint64_t pid) noexcept nogil:
    """Worker ``pid`` leaves the watcher's and the deputy's places (it stops, or it died);
    True if it had one."""
    cdef bint had = k_load(&h.watcher) == pid and fpm_cas64(&h.watcher, pid, 0)
    # Loads first: a worker with nothing shared asks before each sleep, and a locked
    # instruction on the pool's shared line would cost every one of them.
    return (k_load(&h.deputy) == pid and fpm_cas64(&h.deputy, pid, 0)) or had


cdef class Table:
    cdef KeptHeader *head
    cdef readonly int fd
    cdef readonly int bell               # eventfd: rung to call a resting worker (-1: none)
    cdef readonly int queue              # epoll: the watcher's, one event per request (-1: none)
    cdef readonly int stop               # eventfd: written by a worker told to stop, in the queue
    cdef readonly int size
    cdef Py_ssize_t length
