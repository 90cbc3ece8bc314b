# Connections that travel between a worker and the master (fpm.parking): a Ticket, the
# bytes already read from the connection, and its descriptor, as one message.

from libc.stdint cimport uint32_t, int64_t

from fpm._codec cimport HEADER_LEN, READ_SIZE


cdef enum:
    # A message carries at most a decoder's first buffer of bytes.
    TICKET_DATA_MAX = READ_SIZE + HEADER_LEN
    # Ticket.flags: the master hands it over because its body is late
    # (request_body_min_rate): the worker answers 408 rather than wait for it.
    C_TICKET_LATE = 1
    # A kept connection (fastcgi_keep_conn) between requests, from a worker that stops: it
    # waits in the master, without a head deadline, for the next request the web server
    # sends on it.
    C_TICKET_KEPT = 2
    # A kept connection a worker shares with the pool's other workers (fpm._kept): its
    # table entry travels in head_due_us (generation << 32 | index). The master keeps a
    # copy and gives one to each worker; from the master to a worker, the same.
    C_TICKET_SHARE = 4
    # Other processes may still hold copies of it (it was shared): closing one's own copy
    # would not close it, shutdown() does.
    C_TICKET_DUPS = 8


ctypedef struct Ticket:
    uint32_t flags
    uint32_t pad
    int64_t head_due_us                  # CLOCK_MONOTONIC: when its whole request head is due
    int64_t arrived_us                   # kernel receive time of its first bytes (0: unknown)


cdef int send_conn(int sock, int fd, Ticket *t, const char *data, Py_ssize_t n) noexcept nogil
cdef int recv_conn(int sock, Ticket *t, char *buf, Py_ssize_t cap, Py_ssize_t *n,
                   int *fd) noexcept nogil
