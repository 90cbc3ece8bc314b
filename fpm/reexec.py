"""Graceful reload by re-executing the master in place (same pid).

What crosses the exec, in ``PYFPM_INHERIT`` (JSON): the listening sockets with the ``listen``
address each was opened for, the scoreboards (memfds) and the workers still running, which
stay this process's children, with the master's ends of their channels, log sockets and
captured output pipes (a worker finishing its request must not log into a socket nobody
reads), and the copies of the standard streams as they were at the first start (access logs
on /dev/stderr), each pool's park and hand-off sockets, and the connections parked in the
master waiting for their request head (fpm.parking; their bytes in a memfd, too many for the
environment). The new master gives each socket to the pool that lists its address, serves
with new workers, and
retires the inherited ones once their pool's new workers are ready. Nothing is closed in
between, so no connection is refused or lost.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

from fpm import parking, sharing
from fpm.signals import HANDLED
from fpm.sockets import Listener, parse_listen

ENV = "PYFPM_INHERIT"


@dataclass(frozen=True)
class Inherited:
    listeners: tuple[tuple[str, int, bool], ...]  # (listen text, fd, owned)
    boards: tuple[tuple[int, int, str], ...]  # (fd, nslots, pool name)
    # (pid, pool name, board fd, slot, started on time.monotonic(), channel fd or -1,
    #  (stdout, stderr) read ends or None, log socket fd or -1, kept channel fd or -1)
    children: tuple[tuple[int, str, int, int, float, int, tuple[int, int] | None, int, int],
                    ...]
    streams: tuple[tuple[int, int], ...] = ()  # (descriptor number, fd of its copy)
    lots: tuple[tuple[str, tuple[int, int, int, int]], ...] = ()  # (pool, fpm.parking.Ends fds)
    parked_fd: int = -1  # a memfd of the parked connections (parked_entries()), or -1
    kept: tuple[tuple[str, list], ...] = ()  # (pool, fpm.sharing.Shared.export())


def encode(listeners, boards, children, streams=None, lots=None, parked_fd: int = -1) -> str:
    return json.dumps({
        "lots": [[name, list(lot.ends.fds)] for name, lot in (lots or {}).items()],
        "kept": [[name, lot.shared.export()] for name, lot in (lots or {}).items()
                 if lot.shared is not None],
        "parked": parked_fd,
        "listeners": [[l.address.text, l.fd, l.owned] for l in listeners],
        "boards": [[b.fd, b.nslots, b.pool_name] for b in boards],
        "children": [[c.pid, c.pool.name, c.board.fd, c.slot, c.started, c.channel, c.output,
                      c.log, c.kept_tx] for c in children],
        "streams": sorted((streams or {}).items()),
    })


def decode(text: str) -> Inherited:
    """Raises ValueError on anything but what encode() makes."""
    try:
        data = json.loads(text)
        result = Inherited(tuple((str(t), int(fd), bool(o)) for t, fd, o in data["listeners"]),
                           tuple((int(fd), int(n), str(p)) for fd, n, p in data["boards"]),
                           # A master from before fpm.workerlog passed no log socket,
                           # one from before fpm.sharing no kept channel.
                           tuple((int(pid), str(p), int(fd), int(s), float(t), int(ch),
                                  tuple(map(int, out)) if out else None,
                                  *(int(x) for x in (list(rest) + [-1, -1])[:2]))
                                 for pid, p, fd, s, t, ch, out, *rest in data["children"]),
                           # A master from before streams were passed has none to give.
                           tuple((int(n), int(fd)) for n, fd in data.get("streams", ())),
                           tuple((str(name), tuple(int(fd) for fd in fds))
                                 for name, fds in data.get("lots", ())),
                           int(data.get("parked", -1)),
                           tuple((str(name), list(entry)) for name, entry in data.get("kept", ())))
        if any(len(fds) != 4 for _, fds in result.lots):
            raise ValueError("a pool's park and hand-off sockets are 4 descriptors")
        return result
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError("malformed %s: %s" % (ENV, e)) from None


def take(environ=None) -> Inherited | None:
    """What the previous master left, removed from the environment; None on a fresh start."""
    environ = os.environ if environ is None else environ
    text = environ.pop(ENV, None)
    return None if text is None else decode(text)


def adopt_listeners(inherited: Inherited, pools) -> tuple[dict[str, Listener], list[Listener]]:
    """({listen address: listener} for the addresses some pool still lists, [the rest]).
    An address that moved to another pool goes with it."""
    by_text = {text.strip(): pool.name for pool in pools for text in pool.listen}
    adopted, unused = {}, []
    for text, fd, owned in inherited.listeners:
        sock = socket.socket(fileno=fd)
        os.set_inheritable(fd, False)
        name = by_text.get(text)
        listener = Listener(name or "", parse_listen(text), sock, owned)
        if name is None:
            unused.append(listener)
        else:
            adopted[text] = listener
    return adopted, unused


def adopt_shared(inherited: Inherited) -> dict:
    """{pool: fpm.sharing.Shared} of the previous master's shared kept connections; a
    malformed entry is dropped (its connections close with the old workers)."""
    out = {}
    for name, entry in inherited.kept:
        try:
            out[name] = sharing.Shared.adopt(name, entry)
        except (ValueError, TypeError, IndexError, OSError):
            pass
    return out


def save_parked(lots) -> int:
    """A memfd holding the connections parked in ``lots`` (by pool), for the next master."""
    fd = os.memfd_create("pyfpm-parked", 0)  # inherited: no MFD_CLOEXEC
    data = json.dumps([[name] + entry for name, lot in lots.items() for entry in lot.export()])
    os.write(fd, data.encode())
    return fd


def parked_entries(inherited: Inherited) -> list[tuple[str, tuple]]:
    """(pool, fpm.parking.Lot.adopt() arguments) of each connection the previous master
    held; the memfd is closed. A malformed one is dropped, its descriptor with it."""
    if inherited.parked_fd < 0:
        return []
    with open(inherited.parked_fd, "rb") as f:
        f.seek(0)
        text = f.read()
    out = []
    for entry in json.loads(text or b"[]"):
        try:
            out.append((str(entry[0]), parking.decode_entry(entry[1:])))
        except (ValueError, TypeError, IndexError):
            if entry[1:2] and isinstance(entry[1], int):
                with contextlib.suppress(OSError):
                    os.close(entry[1])
    return out


def command() -> list[str]:
    """This master's command line: the same interpreter options, script or -m, arguments."""
    return [sys.executable] + sys.orig_argv[1:]


DRY_RUN_TIMEOUT = 30.0  # seconds the new master's checks may take (they probe each pool)


class WouldFail(Exception):
    """The new master, as the reload would execute it, would not start; ``errors`` say why."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


def dry_run(stderr_is_tty: bool) -> None:
    """Run the command a reload executes with ``--reload-test``: the new code reads and
    checks the new configuration as its start would (pyfpm -t but for the apps' import).
    The exec cannot be undone, so this is the last moment a failure can be refused.
    Raises ConfigError with its errors, or WouldFail when it crashed or hung."""
    from fpm.config import ConfigError
    try:
        done = subprocess.run(command() + ["--reload-test=" + ("tty" if stderr_is_tty else "notty")],
                              stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=DRY_RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise WouldFail(["its check of the configuration took more than %g seconds"
                         % DRY_RUN_TIMEOUT]) from None
    except OSError as e:
        raise WouldFail(["%s cannot be run: %s" % (command()[0], e.strerror)]) from None
    lines = done.stderr.decode("utf-8", "replace").splitlines()
    if done.returncode == os.EX_CONFIG and lines:
        raise ConfigError(lines)
    if done.returncode != 0:
        # A traceback's last line says what broke (an upgrade that cannot import, ...).
        raise WouldFail(["it exits with code %d: %s" % (done.returncode,
                                                        lines[-1] if lines else "no message")])


def execute(listeners, boards, children, stderr_fd: int | None, streams=None,
            lots=None) -> OSError:
    """Replace this process with a new master that inherits the lot. Returns only on failure,
    with the error, everything restored. ``lots``: fpm.parking.Lot by pool."""
    lots = lots or {}
    fds = [l.fd for l in listeners] + [b.fd for b in boards]
    fds += [fd for c in children for fd in (c.channel, c.log, c.kept_tx) if fd >= 0]
    fds += [fd for c in children for fd in c.output or ()]
    fds += list((streams or {}).values())
    fds += [fd for lot in lots.values() for fd in lot.ends.fds + tuple(lot.parked)]
    fds += [fd for lot in lots.values() if lot.shared is not None
            for fd in lot.shared.descriptors()]
    parked_fd = save_parked(lots)
    for fd in fds:
        os.set_inheritable(fd, True)
    os.environ[ENV] = encode(listeners, boards, children, streams, lots, parked_fd)
    # Signals that arrive during the exec wait, blocked, for the new master's handlers.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    saved_stderr = None
    if stderr_fd is not None:
        # The launch pointed stderr at the log file; the new master starts as this one did.
        saved_stderr = os.dup(2)
        os.dup2(stderr_fd, 2)
    argv = command()
    try:
        os.execv(argv[0], argv)
    except OSError as e:
        error = e
    if saved_stderr is not None:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    del os.environ[ENV]
    os.close(parked_fd)
    for fd in fds:
        os.set_inheritable(fd, False)
    return error
