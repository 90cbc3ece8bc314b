# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Connections that travel between a worker and the master (fpm.parking).

A worker parks a connection that is not ready (no whole request head) with the master
over the pool's park socket; the master hands it back, once ready, over the pool's
hand-off socket, which the pool's idle workers watch like a listening socket. Both are
SOCK_SEQPACKET: one message is one connection, its Ticket, the bytes already read from
it (nothing is lost or read twice) and its descriptor (SCM_RIGHTS).
"""

from cpython.bytearray cimport PyByteArray_AS_STRING
from libc.errno cimport EAGAIN, EBADMSG, EINTR, EMFILE, EPIPE, errno
from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memset
from posix.uio cimport iovec
from posix.unistd cimport close

from fpm._sys cimport (CMSG_DATA, CMSG_FIRSTHDR, CMSG_LEN, CMSG_NXTHDR, CMSG_SPACE, EWOULDBLOCK,
                      MSG_CMSG_CLOEXEC, MSG_CTRUNC, MSG_DONTWAIT, MSG_NOSIGNAL, MSG_TRUNC,
                      SCM_RIGHTS, SOL_SOCKET, cmsghdr, msghdr, recvmsg, sendmsg, ssize_t)

import os

TICKET_LATE = C_TICKET_LATE
TICKET_KEPT = C_TICKET_KEPT
TICKET_SHARE = C_TICKET_SHARE
TICKET_DUPS = C_TICKET_DUPS


cdef void _ticket_msg(msghdr *msg, iovec *iov, Ticket *t, const char *data, Py_ssize_t n,
                      void *control, size_t controllen) noexcept nogil:
    """A message of a ticket then ``n`` bytes at ``data``, with room for control data."""
    memset(msg, 0, sizeof(msghdr))
    memset(control, 0, controllen)
    iov[0].iov_base = <void *>t
    iov[0].iov_len = sizeof(Ticket)
    iov[1].iov_base = <void *>data
    iov[1].iov_len = n
    msg.msg_iov = iov
    msg.msg_iovlen = 2
    msg.msg_control = control
    msg.msg_controllen = controllen


cdef int send_conn(int sock, int fd, Ticket *t, const char *data, Py_ssize_t n) noexcept nogil:
    """Send ``fd`` with its ticket and ``data`` as one message; 0, or the errno (EAGAIN:
    the queue is full). The sender still holds its copy of ``fd``."""
    cdef msghdr msg
    cdef iovec iov[2]
    cdef uint64_t control[4]
    cdef cmsghdr *cm
    _ticket_msg(&msg, iov, t, data, n, control, CMSG_SPACE(sizeof(int)))
    cm = CMSG_FIRSTHDR(&msg)
    cm.cmsg_level = SOL_SOCKET
    cm.cmsg_type = SCM_RIGHTS
    cm.cmsg_len = CMSG_LEN(sizeof(int))
    memcpy(CMSG_DATA(cm), &fd, sizeof(int))
    while sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) < 0:
        if errno != EINTR:
            return errno
    return 0


cdef int recv_conn(int sock, Ticket *t, char *buf, Py_ssize_t cap, Py_ssize_t *n,
                    int *fd) noexcept nogil:
    """Receive one connection sent by send_conn: its ticket, its bytes into ``buf`` (*n of
    them), its descriptor (*fd, close-on-exec). 0, or the errno: EAGAIN, none waits;
    EMFILE, it came without its descriptor, which the kernel could not install here (the
    connection is lost); EBADMSG, not such a message; EPIPE, the sending end is gone."""
    cdef msghdr msg
    cdef iovec iov[2]
    cdef uint64_t control[8]
    cdef cmsghdr *cm
    cdef ssize_t r
    cdef int got = -1, extra, i, count
    _ticket_msg(&msg, iov, t, buf, cap, control, sizeof(control))
    while True:
        r = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC)
        if r >= 0:
            break
        if errno != EINTR:
            return errno
    if r == 0:
        return EPIPE
    cm = CMSG_FIRSTHDR(&msg)
    while cm != NULL:
        if cm.cmsg_level == SOL_SOCKET and cm.cmsg_type == SCM_RIGHTS:
            count = (cm.cmsg_len - CMSG_LEN(0)) // sizeof(int)
            for i in range(count):
                memcpy(&extra, CMSG_DATA(cm) + i * sizeof(int), sizeof(int))
                if got < 0:
                    got = extra
                else:
                    close(extra)  # one connection per message: never more
        cm = CMSG_NXTHDR(&msg, cm)
    if msg.msg_flags & MSG_CTRUNC:
        if got >= 0:
            close(got)
        return EMFILE
    if got < 0 or r < <ssize_t>sizeof(Ticket) or msg.msg_flags & MSG_TRUNC:
        if got >= 0:
            close(got)
        return EBADMSG
    n[0] = r - sizeof(Ticket)
    fd[0] = got
    return 0


def pass_conn(int sock, int fd, int64_t head_due_us, int64_t arrived_us, data, uint32_t flags=0):
    """Send connection ``fd`` with the bytes already read from it (``data``) and when its
    head is due, over a park or hand-off socket: True once sent, False when the queue is
    full. The caller closes its own copy of ``fd``."""
    cdef const unsigned char[:] view = data
    cdef Ticket t
    cdef int err
    if view.shape[0] > TICKET_DATA_MAX:
        raise ValueError("%d bytes travel with a connection at most, not %d"
                         % (TICKET_DATA_MAX, view.shape[0]))
    memset(&t, 0, sizeof(t))
    t.flags = flags
    t.head_due_us = head_due_us
    t.arrived_us = arrived_us
    err = send_conn(sock, fd, &t, <const char *>&view[0] if view.shape[0] else NULL,
                     view.shape[0])
    if err == EAGAIN or err == EWOULDBLOCK:
        return False
    if err:
        raise OSError(err, "sendmsg() of a connection failed: " + os.strerror(err))
    return True


def take_conn(int sock):
    """The next connection waiting on a park or hand-off socket: (fd, head_due_us,
    arrived_us, flags, data); None when none waits. OSError with the errno of one that
    could not be received (EMFILE: it was lost for want of a descriptor)."""
    cdef Ticket t
    cdef Py_ssize_t n = 0
    cdef int fd = -1, err
    cdef bytearray buf = bytearray(TICKET_DATA_MAX)
    err = recv_conn(sock, &t, PyByteArray_AS_STRING(buf), TICKET_DATA_MAX, &n, &fd)
    if err == EAGAIN or err == EWOULDBLOCK:
        return None
    if err:
        raise OSError(err, "recvmsg() of a connection failed: " + os.strerror(err))
    return fd, t.head_due_us, t.arrived_us, t.flags, bytes(buf[:n])
