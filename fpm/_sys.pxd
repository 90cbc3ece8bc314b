# The system calls and structures the compiled core uses that Cython's own posix/ and
# libc/ declarations lack (declarations only: no module is built from this file).

from libc.stdint cimport uint32_t, uint64_t
from posix.types cimport off_t
from posix.uio cimport iovec

cdef extern from "<errno.h>":
    int EWOULDBLOCK

cdef extern from "<sys/types.h>":
    ctypedef long ssize_t

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum:
        POLLIN
        POLLERR
        POLLHUP

cdef extern from "<sys/epoll.h>" nogil:
    union epoll_data_t:
        int fd
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum:
        EPOLL_CLOEXEC
        EPOLL_CTL_ADD
        EPOLL_CTL_DEL
        EPOLLIN
        EPOLLET
        EPOLLEXCLUSIVE

cdef extern from "<sys/socket.h>" nogil:
    struct msghdr:
        void *msg_name
        unsigned msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr *CMSG_FIRSTHDR(msghdr *msg)
    cmsghdr *CMSG_NXTHDR(msghdr *msg, cmsghdr *cmsg)
    unsigned char *CMSG_DATA(cmsghdr *cmsg)
    size_t CMSG_SPACE(size_t n)
    size_t CMSG_LEN(size_t n)
    ssize_t recvmsg(int fd, msghdr *msg, int flags)
    ssize_t sendmsg(int fd, const msghdr *msg, int flags)
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    int accept4(int fd, void *addr, void *addrlen, int flags)
    int shutdown(int fd, int how)
    enum:
        MSG_DONTWAIT
        MSG_NOSIGNAL
        MSG_CTRUNC
        MSG_TRUNC
        MSG_CMSG_CLOEXEC
        SHUT_WR
        SHUT_RDWR
        SOL_SOCKET
        SCM_RIGHTS
        SCM_TIMESTAMPNS
        SOCK_CLOEXEC

cdef extern from "<sys/sendfile.h>" nogil:
    ssize_t sendfile(int out_fd, int in_fd, off_t *offset, size_t count)

cdef extern from "<fcntl.h>" nogil:
    int open_c "open"(const char *path, int flags)
    enum:
        O_RDONLY
        O_CLOEXEC
