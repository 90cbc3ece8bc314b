"""fpm.worker's start-up, in real forked processes."""
import os
import select
import signal
import time

from fpm import unix, worker

PR_SET_CHILD_SUBREAPER = 36


def test_a_worker_whose_master_died_before_prctl_stops_under_a_subreaper():
    """The master died between the fork and PR_SET_PDEATHSIG: the worker has been reparented,
    to init or to a subreaper (systemd --user, a container's init) whose pid is not 1. Each
    worker leads a session of its own, so no group signal would stop it either: it must
    stop itself."""
    r, w = os.pipe()
    reaper = os.fork()
    if reaper == 0:
        try:
            unix.libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            master = os.fork()
            if master == 0:
                master = os.getpid()
                if os.fork() == 0:  # the worker
                    try:
                        deadline = time.monotonic() + 5
                        while os.getppid() == master and time.monotonic() < deadline:
                            time.sleep(0.001)
                        worker._die_with_parent(master)
                        time.sleep(1)  # the signal is on its way, if sent
                    finally:
                        os._exit(0)
                os._exit(0)  # the master dies at once
            os.waitpid(master, 0)
            _, status = os.waitpid(-1, 0)  # the worker, now ours
            os.write(w, b"signal %d" % os.WTERMSIG(status) if os.WIFSIGNALED(status)
                     else b"exit %d" % os.WEXITSTATUS(status))
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert select.select([r], [], [], 10)[0], "no word from the subreaper"
        assert os.read(r, 100) == b"signal %d" % signal.SIGTERM
    finally:
        os.close(r)
        os.waitpid(reaper, 0)
