"""Who a worker is and where it runs (PHP-FPM's fpm_unix.c): the master's checks of the pools'
users and its own [global] limits, and `apply()`, which a worker runs right after fork.

Order in the worker, as PHP-FPM's: rlimit_files, rlimit_core, chroot, chdir, process.priority,
setgid, initgroups, setuid, process.dumpable, then the environment. The app is imported after
all of this, so module-level code of the app never runs as root, and inside the chroot.

chroot and Python: as PHP-FPM chroots before it runs a script, a worker chroots before it
imports the app, so `chdir`, `python_path`, `virtualenv` and the app are paths *inside* the
chroot. Every module imported after that must be there too: the chroot has to hold this
interpreter's standard library at the same path (a copy or a read-only bind mount). What the
master imported before fork (pyfpm itself, and the app with `preload`) is already in memory.
Users and groups are looked up before chroot, in the host's /etc/passwd and /etc/group.
"""
from __future__ import annotations

import ctypes
import grp
import os
import pwd
import resource
from dataclasses import dataclass

from fpm.log import strerror

PR_SET_DUMPABLE = 4
# Loaded here, in the master: after chroot there may be no libc to find.
libc = ctypes.CDLL(None, use_errno=True)

NOT_ROOT_NOTICE = "'%s' directive is ignored when FPM is not running as root"
NO_USER = "user has not been defined; set 'user' or start pyfpm with -R to let workers run as root"


class UnixError(Exception):
    """A pool's (or [global]'s) process setting cannot be applied.

    str() is ``[pool www] reason`` (``[global] reason``); ``.reason`` alone is for a log line
    that names the pool itself, as a worker's does (``[pool www] child 123: reason``).
    """

    def __init__(self, pool_name: str | None, reason: str):
        super().__init__(("[global] " if pool_name is None else "[pool %s] " % pool_name) + reason)
        self.pool_name = pool_name
        self.reason = reason


@dataclass(frozen=True)
class Identity:
    """Whom a pool's workers run as. ``None`` ids keep the master's."""
    uid: int | None
    gid: int | None
    entry: pwd.struct_passwd | None  # the user's passwd entry, when it has one (USER, HOME)
    groups: tuple[int, ...]  # supplementary groups, as initgroups(3) would set them


def resolve(pool) -> Identity:
    """Look up ``user`` and ``group`` (names or numeric ids) in the host's databases.

    A group left unset means the user's primary group. Raises UnixError naming the one
    that does not exist.
    """
    uid = gid = entry = None
    if pool.user:
        try:
            entry = pwd.getpwuid(int(pool.user)) if pool.user.isdigit() else pwd.getpwnam(pool.user)
        except KeyError:
            if not pool.user.isdigit():
                raise UnixError(pool.name, "cannot get uid for user '%s'" % pool.user) from None
            uid = int(pool.user)  # a bare uid needs no passwd entry
        else:
            uid, gid = entry.pw_uid, entry.pw_gid
    if pool.group:
        if pool.group.isdigit():
            gid = int(pool.group)
        else:
            try:
                gid = grp.getgrnam(pool.group).gr_gid
            except KeyError:
                raise UnixError(pool.name,
                                "cannot get gid for group '%s'" % pool.group) from None
    groups: tuple[int, ...] = ()
    if uid is not None:
        # Computed now: after chroot, /etc/group may not exist. Without a passwd entry (or a
        # gid) the worker keeps only its gid, never the master's (root's) groups.
        primary = gid if gid is not None else os.getegid()
        groups = tuple(os.getgrouplist(entry.pw_name, primary)) if entry else (primary,)
    return Identity(uid, gid, entry, groups)


def check_pools(config, allow_root: bool, euid: int | None = None
                ) -> tuple[list[str], list[tuple[str, str]]]:
    """The master's checks before it starts (and under -t): (errors, (level, text) notices).

    As root: every user and group must resolve, and a pool may run as root (no ``user``, or
    uid/gid 0) only with -R. Not as root: user, group, chroot and process.priority cannot be
    applied; each one set is ignored with a notice.
    """
    euid = os.geteuid() if euid is None else euid
    errors: list[str] = []
    notices: list[tuple[str, str]] = []
    for pool in config.pools:
        if euid != 0:
            for directive, value in (("user", pool.user), ("group", pool.group),
                                     ("chroot", pool.chroot),
                                     ("process.priority", pool.process_priority)):
                if value is not None:
                    notices.append(("notice", "[pool %s] %s" % (pool.name,
                                                                NOT_ROOT_NOTICE % directive)))
            continue
        try:
            ident = resolve(pool)
        except UnixError as e:
            errors.append(str(e))
            continue
        if allow_root:
            continue
        if not pool.user:
            errors.append("[pool %s] %s" % (pool.name, NO_USER))
        elif ident.uid == 0 or ident.gid in (0, None):
            errors.append("[pool %s] %s" % (pool.name, _root_problem(pool, ident)))
    return errors, notices


def _root_problem(pool, ident: Identity) -> str:
    if ident.uid == 0:
        why = "user = '%s' is uid 0" % pool.user
    elif pool.group:
        why = "group = '%s' is gid 0" % pool.group
    elif ident.entry is not None:
        why = "the primary group of user '%s' is gid 0; set 'group'" % pool.user
    else:
        why = "uid %s has no passwd entry, so no primary group; set 'group'" % pool.user
    return "please specify user and group other than root (%s), or start pyfpm with -R" % why


def apply_global(global_config, log, euid: int | None = None) -> None:
    """The master's own rlimit_files, rlimit_core and process.priority ([global]).

    A limit or priority that cannot be set is fatal (UnixError), as in PHP-FPM; a priority
    without root is ignored with a notice.
    """
    euid = os.geteuid() if euid is None else euid
    for directive, limit, value in _rlimits(global_config):
        try:
            _set_rlimit(limit, value)
        except (OSError, ValueError) as e:
            raise UnixError(None, _rlimit_failure(directive, limit, value, e)) from None
    if global_config.process_priority is not None:
        if euid != 0:
            log.notice(NOT_ROOT_NOTICE % "process.priority")
            return
        try:
            os.setpriority(os.PRIO_PROCESS, 0, global_config.process_priority)
        except OSError as e:
            raise UnixError(None, "process.priority = %d: unable to set the priority of the "
                                  "master process: %s"
                            % (global_config.process_priority, strerror(e))) from None


def close_fds_except(keep) -> None:
    """Close every descriptor of this process but those in ``keep`` (negatives ignored): a
    new worker sheds what the master holds, whatever it is. One close_range() per gap."""
    try:
        top = max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):  # no /proc: up to the limit on descriptors
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        top = soft if 0 <= soft < 1 << 20 else 1 << 20
    low = 0
    for fd in sorted({fd for fd in keep if 0 <= fd < top}) + [top]:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1


def apply(pool, log, allow_root: bool) -> None:
    """Make this new worker what ``pool`` says, in PHP-FPM's order. Raises UnixError.
    ``log`` is the worker's (fpm.workerlog): its lines name the pool and the worker.

    Not as root, only the rlimits, chdir, process.dumpable and the environment apply (the
    master has logged that the rest is ignored).
    """
    is_root = os.geteuid() == 0
    ident = resolve(pool) if is_root else None
    if is_root and not allow_root and (ident.uid in (None, 0) or ident.gid in (None, 0)):
        # The master checks this before it starts; a worker never runs as root by accident.
        raise UnixError(pool.name, _root_problem(pool, ident) if pool.user else NO_USER)
    entry = ident.entry if ident is not None and ident.uid is not None else _own_entry()

    for directive, limit, value in _rlimits(pool):
        try:
            _set_rlimit(limit, value)
        except (OSError, ValueError) as e:  # PHP-FPM's rule: the worker goes on with the old one
            log.error(_rlimit_failure(directive, limit, value, e))

    chrooted = is_root and bool(pool.chroot)
    if chrooted:
        _call(pool, "chroot", pool.chroot, os.chroot, pool.chroot)
    if pool.chdir:
        _call(pool, "chdir", pool.chdir, os.chdir, pool.chdir)
    elif chrooted:
        _call(pool, "chroot", pool.chroot, os.chdir, "/")

    if is_root:
        if pool.process_priority is not None:
            _call(pool, "process.priority", pool.process_priority,
                  os.setpriority, os.PRIO_PROCESS, 0, pool.process_priority)
        if ident.gid is not None:
            _call(pool, "group" if pool.group else "user", pool.group or pool.user,
                  os.setgid, ident.gid)
        if ident.uid is not None:
            _call(pool, "user", pool.user, os.setgroups, list(ident.groups))
            _call(pool, "user", pool.user, os.setuid, ident.uid)

    # After setuid, which resets it: lets the master (without CAP_SYS_PTRACE, e.g. in a
    # container) ptrace a worker that changed its uid, and the kernel dump its core.
    if pool.process_dumpable and libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0:
        log.error("process.dumpable = yes: prctl(PR_SET_DUMPABLE) failed: %s"
                  % strerror(ctypes.get_errno()))

    env = worker_environ(pool, entry, dict(os.environ))
    os.environ.clear()
    os.environ.update(env)


def worker_environ(pool, user_entry: pwd.struct_passwd | None, master_env: dict) -> dict:
    """The worker's environment: the master's unless ``clear_env``, then ``env[]`` (a value
    ``$NAME`` is the master's variable NAME, empty if unset), then USER and HOME of the user
    the worker runs as, unless ``env[]`` sets them."""
    env = {} if pool.clear_env else dict(master_env)
    for name, value in pool.env:
        env[name] = master_env.get(value[1:], "") if value.startswith("$") else value
    given = {name for name, _ in pool.env}
    if user_entry is not None:
        if "USER" not in given:
            env["USER"] = user_entry.pw_name
        if "HOME" not in given:
            env["HOME"] = user_entry.pw_dir
    return env


def _own_entry() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwuid(os.getuid())
    except KeyError:
        return None


def _rlimits(section) -> list[tuple[str, int, int]]:
    """(directive, RLIMIT_*, value) for the limits a [global] or pool section sets."""
    wanted = (("rlimit_files", resource.RLIMIT_NOFILE, section.rlimit_files),
              ("rlimit_core", resource.RLIMIT_CORE, section.rlimit_core))
    return [row for row in wanted if row[2] is not None]


def _set_rlimit(limit: int, value: int) -> None:
    """soft = hard = value; -1 is unlimited. Raises OSError or ValueError (Python's word for
    EPERM and EINVAL here)."""
    value = resource.RLIM_INFINITY if value == -1 else value
    resource.setrlimit(limit, (value, value))


def _rlimit_failure(directive: str, limit: int, value: int, err: Exception) -> str:
    soft, hard = (_shown_limit(v) for v in resource.getrlimit(limit))
    name = "RLIMIT_NOFILE" if limit == resource.RLIMIT_NOFILE else "RLIMIT_CORE"
    reason = strerror(err) if isinstance(err, OSError) else str(err)
    text = ("%s = %s: setrlimit(%s) failed: %s; the limit stays at soft %s, hard %s"
            % (directive, _shown_limit(value), name, reason, soft, hard))
    if limit == resource.RLIMIT_NOFILE:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                text += "; the kernel allows at most %s (fs.nr_open)" % f.read().strip()
        except OSError:
            pass  # not Linux, or /proc is not mounted (chroot)
    return text


def _shown_limit(value: int) -> str:
    return "unlimited" if value in (-1, resource.RLIM_INFINITY) else str(value)


def _call(pool, directive: str, value, func, *args) -> None:
    try:
        func(*args)
    except OSError as e:
        raise UnixError(pool.name, "%s = '%s': %s(%s) failed: %s"
                        % (directive, value, func.__name__, ", ".join(map(str, args)),
                           strerror(e))) from None
