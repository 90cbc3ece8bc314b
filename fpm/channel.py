"""A socket pair between the master and each worker.

Master to worker: after USR1 the master reopens the access logs onto the same fd numbers and
sends the worker its pool's (SCM_RIGHTS); the worker puts it on the fd number it already
writes to, before its next line. So a worker that dropped its privileges keeps logging to a
file only root may open, and no worker is restarted for a logrotate. (The error log is the
master's alone: fpm.workerlog.)

Worker to master: the stack dumps of the slowlog's faulthandler fallback (fpm.slowlog).
"""
from __future__ import annotations

import array
import os
import socket

MAX_FDS = 16  # log files handed over in one message (today one: the pool's access log)


def pair() -> tuple[int, int]:
    """(master end, worker end); close-on-exec, the master's end non-blocking."""
    master, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    master.setblocking(False)
    return master.detach(), worker.detach()


def send_files(sock_fd: int, fds: list[int]) -> None:
    """Hand the files now open at ``fds`` to the worker, to be put at the same numbers."""
    targets = array.array("i", fds)
    with socket.socket(fileno=sock_fd) as s:
        try:
            s.sendmsg([bytes([len(fds)]) + targets.tobytes()],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, targets)])
        finally:
            s.detach()


def take_files(sock_fd: int) -> int:
    """In the worker: put every file the master sent at its number; how many were taken."""
    taken = 0
    with socket.socket(fileno=sock_fd) as s:
        try:
            while True:
                try:
                    data, ancillary, _, _ = s.recvmsg(
                        1 + 4 * MAX_FDS, socket.CMSG_SPACE(4 * MAX_FDS), socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return taken
                received = array.array("i")
                for level, kind, payload in ancillary:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        received.frombytes(payload[:len(payload) - len(payload) % 4])
                if not data:
                    return taken
                targets = array.array("i", data[1:1 + 4 * data[0]])
                for new, target in zip(received, targets):
                    os.dup2(new, target, inheritable=False)
                    os.close(new)
                    taken += 1
        finally:
            s.detach()
