"""systemd integration without libsystemd: sd_notify messages, the watchdog and socket
activation (sd_listen_fds), in PHP-FPM's words where PHP-FPM has them.

The notify protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket named by
``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). NOTIFY_SOCKET and
WATCHDOG_* are left in the environment on purpose: a SIGUSR2 re-exec keeps the pid, and the
new master must reach systemd too. LISTEN_* are removed once read (see ``adopt_sockets``).

Deviations from PHP-FPM, on purpose:

* any WATCHDOG_USEC is honoured; PHP-FPM ignores a watchdog of 2 s or less and is then
  killed by systemd for never answering it;
* the periodic datagram is ``STATUS=...`` (plus a separate ``WATCHDOG=1``), without
  PHP-FPM's repeated ``READY=1``, which would end a reload early in systemd's eyes.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

from fpm.log import Logger, strerror
from fpm.sockets import ListenError, parse_listen

DEFAULT_INTERVAL = 10  # seconds; the systemd_interval directive's default
SEND_TIMEOUT = 1.0  # the master must not hang on a stuck systemd
LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START
LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd wants it in MONOTONIC_USEC."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def notify_address(value: str) -> str | None:
    """The socket address for a NOTIFY_SOCKET value; None if it is neither absolute nor '@'."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends sd_notify messages. Never raises: a failed send is one WARNING per outage
    (the first failure after a success), so a vanished systemd does not flood the log."""

    def __init__(self, address: str, log: Logger):
        self.address = address
        self.log = log
        self._failing = False

    @classmethod
    def from_env(cls, environ, log: Logger) -> "Notifier | None":
        """A Notifier for ``environ["NOTIFY_SOCKET"]``; None when it is unset or unusable."""
        value = environ.get("NOTIFY_SOCKET", "")
        if not value:
            return None
        address = notify_address(value)
        if address is None:
            log.warning("NOTIFY_SOCKET '%s' is neither an absolute path nor an abstract "
                        "'@name'; not notifying systemd" % value)
            return None
        return cls(address, log)

    def send(self, message: str, what: str) -> bool:
        """Send one datagram; ``what`` names it in the failure warning. True if sent."""
        try:
            # A fresh connected socket per message, as sd_notify does: systemd may have
            # re-created its socket since the last one (daemon-reexec), and a connected
            # datagram socket makes the timeout wait for room in systemd's queue.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT)
                sock.connect(self.address)
                sock.send(message.encode())
        except OSError as e:
            if not self._failing:
                self.log.warning("failed to notify %s to systemd: %s" % (what, strerror(e)))
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self, status: str = "Ready to handle connections") -> bool:
        sent = self.send("READY=1\nSTATUS=%s\nMAINPID=%d" % (status, os.getpid()), "start")
        if sent:
            self.log.debug("have notify start to systemd")
        return sent

    def status(self, text: str) -> bool:
        return self.send("STATUS=%s" % text, "status")

    def reloading(self) -> bool:
        # systemd >= 253 (Type=notify-reload) requires MONOTONIC_USEC with RELOADING=1.
        return self.send("RELOADING=1\nMONOTONIC_USEC=%d" % monotonic_usec(), "reload")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "stop")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1", "watchdog")


def interval(environ, systemd_interval: int | None, pid: int
             ) -> tuple[float | None, bool, list[tuple[str, str]]]:
    """(seconds between status reports or None, watchdog on?, [(level, log line)]).

    PHP-FPM's fpm_systemd_conf: a watchdog for this process (WATCHDOG_USEC, and WATCHDOG_PID
    equal to ``pid`` when set) wins at half its period; else ``systemd_interval`` seconds,
    0 disabling the reports. ``None`` means the directive's default, 10. The "ignored"
    warning is given for a value other than the default, since the configuration cannot
    tell an explicit 10 from an absent one.
    """
    configured = DEFAULT_INTERVAL if systemd_interval is None else systemd_interval
    messages: list[tuple[str, str]] = []
    usec = _positive_int(environ.get("WATCHDOG_USEC"))
    watchdog_pid = environ.get("WATCHDOG_PID")
    if usec and watchdog_pid and watchdog_pid != str(pid):
        messages.append(("warning", "WATCHDOG_USEC is meant for pid %s, not this master (%d); "
                                    "the systemd watchdog is not served" % (watchdog_pid, pid)))
        usec = None
    if usec:
        seconds = usec / 2_000_000
        if configured > 0 and configured != DEFAULT_INTERVAL:
            messages.append(("warning", "systemd_interval option ignored"))
        messages.append(("notice", "systemd watchdog configured to %.3gsec" % seconds))
        return seconds, True, messages
    if configured <= 0:
        messages.append(("notice", "systemd monitor disabled"))
        return None, False, messages
    messages.append(("notice", "systemd monitor interval set to %dms" % (configured * 1000)))
    return float(configured), False, messages


def _positive_int(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit():
        return None
    return int(text) or None


def status_line(active: int, idle: int, requests: int, slow: int, prev_requests: int,
                interval_s: float) -> str:
    """The periodic STATUS text, PHP-FPM's, summed over all pools by the caller."""
    traffic = (requests - prev_requests) / interval_s if interval_s > 0 else 0.0
    return ("Processes active: %d, idle: %d, Requests: %d, slow: %d, Traffic: %.3greq/sec"
            % (active, idle, requests, slow, traffic))


# --- socket activation -----------------------------------------------------------------------

def listen_fds(environ, pid: int) -> list[int]:
    """The fds systemd passed to ``pid`` (sd_listen_fds): 3, 4, ... LISTEN_FDS of them.

    [] when LISTEN_PID is unset or names another process (the variables leaked from a
    parent). ValueError when LISTEN_PID or LISTEN_FDS is not a number.
    """
    if "LISTEN_PID" not in environ:
        return []
    listen_pid, count = environ["LISTEN_PID"], environ.get("LISTEN_FDS", "0")
    if not listen_pid.isdigit() or not count.isdigit():
        raise ValueError("LISTEN_PID=%r, LISTEN_FDS=%r" % (listen_pid, count))
    if int(listen_pid) != pid:
        return []
    return list(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)))


def fd_names(environ, count: int) -> list[str]:
    """LISTEN_FDNAMES split on ':'; "unknown" for each fd when absent or not one per fd."""
    names = environ.get("LISTEN_FDNAMES", "").split(":")
    return names if len(names) == count and "LISTEN_FDNAMES" in environ else ["unknown"] * count


def forget_listen_env(environ) -> None:
    """Remove LISTEN_*: they name this process's pid and must not reach a re-exec'd master
    (which gets the sockets through FPM_SOCKETS instead) or a worker's app."""
    for name in LISTEN_VARS:
        environ.pop(name, None)


@dataclass
class Match:
    """How activated sockets map onto pools."""
    # Keyed by the label each wanted address came with: a pool name, or (pool, address).
    by_pool: dict = field(default_factory=dict)  # label -> fd
    unused: list[int] = field(default_factory=list)  # fds no pool listens on
    missing: list = field(default_factory=list)  # labels of addresses pyfpm binds itself


def socket_key(family: int, sockname) -> tuple | None:
    """A comparable key for ``getsockname()``; None for an abstract unix socket."""
    if family == socket.AF_UNIX:
        if isinstance(sockname, bytes) or not sockname or sockname.startswith("\0"):
            return None
        return ("unix", os.path.realpath(sockname))
    if family in (socket.AF_INET, socket.AF_INET6):
        host = socket.inet_ntop(family, socket.inet_pton(family, sockname[0].split("%")[0]))
        return (family, host, sockname[1])
    return None


def listen_keys(listen: str) -> set[tuple]:
    """The keys a pool's ``listen`` value is satisfied by.

    A bare port is what pyfpm itself binds for it: ``[::]:port`` (dual stack) or, where
    IPv6 is off, ``0.0.0.0:port``. A hostname matches any address it resolves to.
    """
    try:
        address = parse_listen(listen)
    except ListenError:
        return set()  # binding it will report the error
    if address.family == socket.AF_UNIX:
        return {("unix", os.path.realpath(address.path))}
    if address.host is None:
        return {(socket.AF_INET6, "::", address.port), (socket.AF_INET, "0.0.0.0", address.port)}
    if address.family != socket.AF_UNSPEC:
        return {socket_key(address.family, (address.host, address.port))}
    try:
        infos = socket.getaddrinfo(address.host, address.port, 0, socket.SOCK_STREAM)
    except OSError:
        return set()
    return {socket_key(family, sockaddr) for family, _, _, _, sockaddr in infos}


def match_listeners(fds_with_addresses, pool_listens) -> Match:
    """Map activated sockets to pools by address.

    ``fds_with_addresses``: [(fd, family, getsockname())]; ``pool_listens``: [(label,
    listen value)] in pool order, one per address (a pool with several appears several
    times, under distinct labels). Each label takes the socket bound to its address; the
    first wins if two name the same one. Labels left without one are ``missing`` (the
    caller binds them itself), sockets none takes are ``unused`` (the caller closes them).
    """
    result = Match()
    by_key = {}
    for fd, family, sockname in fds_with_addresses:
        key = socket_key(family, sockname)
        if key is None or key in by_key:
            result.unused.append(fd)
        else:
            by_key[key] = fd
    taken = set()
    for name, listen in pool_listens:
        fd = next((by_key[k] for k in sorted(listen_keys(listen), key=str)
                   if k in by_key and by_key[k] not in taken), None)
        if fd is None:
            result.missing.append(name)
        else:
            result.by_pool[name] = fd
            taken.add(fd)
    result.unused += [fd for fd in by_key.values() if fd not in taken]
    result.unused.sort()
    return result


def describe(family: int, sockname) -> str:
    """``127.0.0.1:9000``, ``[::]:9000`` or the unix path, for log lines."""
    if family == socket.AF_INET:
        return "%s:%d" % sockname[:2]
    if family == socket.AF_INET6:
        return "[%s]:%d" % sockname[:2]
    if isinstance(sockname, bytes):
        return "@" + sockname[1:].decode(errors="replace")
    return sockname


def adopt_sockets(pools, log: Logger, environ=None, pid: int | None = None
                  ) -> dict[str, socket.socket]:
    """The listening sockets systemd passed (socket activation), by the pool's ``listen``
    address each stands for (a pool may list several).

    Consumes LISTEN_* from ``environ`` (default ``os.environ``). Every adopted socket is
    non-blocking and close-on-exec, like those pyfpm binds itself. A passed fd that is not
    a listening stream socket, or that no pool's ``listen`` names, is closed with a WARNING.
    Addresses systemd passed nothing for are left out: pyfpm binds those itself, as without
    systemd (a NOTICE says so, so that a bind error that follows is understood).
    {} when systemd passed nothing.
    """
    environ = os.environ if environ is None else environ
    pid = os.getpid() if pid is None else pid
    try:
        fds = listen_fds(environ, pid)
    except ValueError as e:
        log.warning("ignoring malformed socket activation variables (%s)" % e)
        fds = []
    names = fd_names(environ, len(fds))
    forget_listen_env(environ)
    if not fds:
        return {}
    socks = _listening(fds, names, log)
    name_of = dict(zip(fds, names))
    described = {fd: "\"%s\" (%s)" % (name_of[fd], describe(sock.family, sock.getsockname()))
                 for fd, sock in socks.items()}
    entries = [(fd, sock.family, sock.getsockname()) for fd, sock in socks.items()]
    wanted = [((pool.name, text), text) for pool in pools for text in pool.listen]
    match = match_listeners(entries, wanted)
    for fd in match.unused:
        log.warning("systemd passed socket fd=%d %s, which no pool listens on; closed"
                    % (fd, described[fd]))
        socks.pop(fd).close()  # our copy only: systemd keeps its own and the path
    adopted = {}
    for label, text in wanted:
        fd = match.by_pool.get(label)
        if fd is None:
            continue
        sock = socks[fd]
        sock.setblocking(False)
        adopted[text] = sock
        log.notice("[pool %s] using inherited socket fd=%d, \"%s\" from systemd"
                   % (label[0], fd, describe(sock.family, sock.getsockname())))
    for name, text in match.missing:
        log.notice("[pool %s] systemd passed no socket for '%s'; binding it" % (name, text))
    return adopted


def _listening(fds: list[int], names: list[str], log: Logger) -> dict[int, socket.socket]:
    """The passed fds that are listening stream sockets, close-on-exec; the others are
    closed, each with a WARNING."""
    socks: dict[int, socket.socket] = {}
    for fd, name in zip(fds, names):
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as e:
            log.warning("systemd passed fd=%d \"%s\", which is not a socket: %s"
                        % (fd, name, strerror(e)))
            _close_quietly(fd)  # so that no worker inherits it
            continue
        if (sock.type != socket.SOCK_STREAM
                or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
            log.warning("systemd passed socket fd=%d \"%s\", which is not a listening "
                        "stream socket (Accept=yes is not supported); closed" % (fd, name))
            sock.close()
            continue
        socks[fd] = sock
    return socks


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
