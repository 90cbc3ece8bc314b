"""The ``pyfpm`` command: php-fpm's flags, exit codes 0, 64 (usage), 70, 78 (configuration).

``pyfpm request ...`` is the FastCGI client (fpm.client), ``pyfpm status ...`` reads a
pool's status page with it (fpm.statuscli). Without ``-y`` the embedded
default (fpm/default.conf) is served: pool www on 127.0.0.1:9000 with the demo app; started
as root, it implies -R (its pool has no ``user``) and says so.
"""
from __future__ import annotations

import argparse
import os
import sys
from importlib import resources

from fpm import config as fpm_config
from fpm import poollogs, probe, reexec, unix, worker
from fpm.log import Logger, choose_target, open_log_file, strerror
from fpm.master import serve
from fpm.sockets import ListenError, parse_listen, resolve_acl, resolve_owner

EMBEDDED = "(embedded)"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(os.EX_USAGE, "%s: error: %s\n" % (self.prog, message))


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pyfpm", description="FastCGI Process Manager for Python WSGI apps.",
                epilog="pyfpm request ADDRESS [URI] ... sends one FastCGI request "
                       "(see pyfpm request -h); pyfpm status ADDRESS ... shows a pool's "
                       "status page (see pyfpm status -h).")
    p.add_argument("-y", "--fpm-config", metavar="FILE",
                   help="configuration file (INI, or TOML if it ends in .toml); "
                        "default: the embedded demo configuration")
    p.add_argument("-p", "--prefix", metavar="DIR",
                   help="directory relative paths in the configuration are taken from")
    p.add_argument("-g", "--pid", metavar="FILE", help="pid file (overrides 'pid')")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("-F", "--nodaemonize", action="store_true",
                      help="stay in the foreground (overrides 'daemonize')")
    mode.add_argument("-D", "--daemonize", action="store_true",
                      help="go to the background (overrides 'daemonize')")
    p.add_argument("-O", "--force-stderr", action="store_true",
                   help="in the foreground, log to stderr even if it is not a terminal")
    p.add_argument("-R", "--allow-to-run-as-root", action="store_true",
                   help="allow pools to run as root (no 'user', or uid/gid 0)")
    p.add_argument("-t", "--test", action="count", default=0,
                   help="test the configuration and exit; twice (-tt) also dumps it. "
                        "Each pool's app is imported in a throw-away worker: one that "
                        "cannot be is a warning")
    p.add_argument("--strict-app", action="store_true",
                   help="with -t: an app that cannot be imported fails the test (exit 78)")
    # A reload's dry run (fpm.reexec.dry_run): the checks of -t without the apps' import,
    # run by the command line and code the reload will execute. Errors only, one a line.
    # Its value says whether the master's stderr is a terminal, which decides where it logs.
    p.add_argument("--reload-test", choices=("tty", "notty"), help=argparse.SUPPRESS)
    p.add_argument("-v", "--version", action="store_true", help="print the version and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "request":
        from fpm import client
        return client.main(argv[1:])
    if argv and argv[0] == "status":
        from fpm import statuscli
        return statuscli.main(argv[1:])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else os.EX_USAGE
    if args.version:
        from fpm import __version__
        print("pyfpm %s (Python %s)" % (__version__, sys.version.split()[0]))
        return os.EX_OK

    # Until the configuration says where, messages go to stderr.
    log = Logger("stderr")
    try:
        config = _load(args)
    except fpm_config.ConfigError as e:
        return _fail(log, e.errors)
    allow_root = args.allow_to_run_as_root
    if config.path == EMBEDDED and os.geteuid() == 0 and not allow_root:
        # A try-out on a root shell should work; a real deployment names its user (-y).
        allow_root = True
        log.warning("the embedded demo configuration runs its pool as root; use -y with a "
                    "configuration that sets 'user' for anything but a try-out")
    if args.reload_test:
        errors = _check_pools(config, allow_root)[0] + _start_checks(config, args, probe.Quiet())
        sys.stderr.write("".join(line + "\n" for line in errors))
        return os.EX_CONFIG if errors else os.EX_OK
    errors, notices = _check_pools(config, allow_root)
    if args.test:
        return _test(config, log, errors, notices, dump=args.test > 1,
                     apps=probe.check_apps(config, allow_root) if not errors else [],
                     strict_app=args.strict_app, args=args)
    if args.strict_app:
        return _fail(log, ["--strict-app goes with -t"])
    if errors:
        return _fail(log, errors)

    return _run(args, config, log, notices, allow_root)


def _run(args, config, log: Logger, notices: list, allow_root: bool) -> int:
    """Open the error log the configuration names, apply [global]'s limits, and serve."""
    daemon = _daemon(args, config)
    target = _error_log(args, config)
    try:
        g = config.global_
        log = Logger(target, g.log_level, echo_stderr=True, limit=g.log_limit,
                     ident=g.syslog_ident, facility=g.syslog_facility, buffering=g.log_buffering)
    except OSError as e:
        return _fail(log, ["failed to open error log file '%s': %s" % (target, strerror(e))])
    for level, text in notices:
        log.log(level, text)
    try:
        unix.apply_global(config.global_, log)
    except unix.UnixError as e:
        return _fail(log, [str(e)])
    pid_file = _pid_file(args, config)
    # -R stays on the command line, which the master re-executes on reload (USR2).
    code = serve(config, log, pid_file=pid_file, daemon=daemon, allow_root=allow_root,
                 loader=lambda: _reload(args, allow_root))
    # The master is done and has cleaned up: skip the interpreter's finalization, which
    # costs ~13 ms of the 100 ms an idle master has to be gone after TERM or QUIT.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _load(args) -> fpm_config.Config:
    if args.prefix is not None and not os.path.isdir(args.prefix):
        raise fpm_config.ConfigError(
            ["the global prefix '%s' does not exist or is not a directory" % args.prefix])
    if args.fpm_config is None:
        text = resources.files("fpm").joinpath("default.conf").read_text(encoding="utf-8")
        return fpm_config.loads(text, EMBEDDED, prefix=args.prefix)
    try:
        path = os.path.abspath(args.fpm_config)
    except FileNotFoundError:
        raise fpm_config.ConfigError(
            ["the configuration file '%s' is relative to a working directory that was removed; "
             "name it with an absolute path" % args.fpm_config]) from None
    return fpm_config.load(path, args.prefix)


def _reload(args, allow_root: bool) -> fpm_config.Config:
    """The configuration a reload (USR2) would start, read here for the addresses to bind;
    then checked by the code and command line the reload will execute, as that master's
    start would (reexec.dry_run): what it would fail on, this master refuses to exec."""
    config = _load(args)
    reexec.dry_run(os.isatty(2))
    return config


def _pid_file(args, config) -> str | None:
    return os.path.abspath(args.pid) if args.pid else config.global_.pid


def _daemon(args, config) -> bool:
    return args.daemonize or (config.global_.daemonize and not args.nodaemonize)


def _error_log(args, config) -> str:
    """Where the master logs: for a reload's dry run, as the master it tests would."""
    tty = args.reload_test == "tty" if args.reload_test else os.isatty(2)
    return choose_target(config.global_.error_log, _daemon(args, config), args.force_stderr, tty)


def _start_checks(config, args, log: Logger) -> list[str]:
    """What the start meets once the configuration is read and its pools' users are sound,
    in its words: the listen addresses and their owners, the pools' log files, the error
    log, the pid file, the master's own [global] limits. -t and a reload run them."""
    errors = []
    for pool in config.pools:
        try:
            for text in pool.listen:
                parse_listen(text)
            resolve_owner(pool.name, pool.listen_owner, pool.listen_group)
            resolve_acl(pool)
        except ListenError as e:
            errors.append(str(e))
    errors += poollogs.check(config.pools)
    target = _error_log(args, config)
    if target not in ("stderr", "syslog"):
        try:
            os.close(open_log_file(target))  # created if missing, as the pools' logs
        except OSError as e:
            errors.append("failed to open error log file '%s': %s" % (target, strerror(e)))
    pid_file = _pid_file(args, config)
    if pid_file is not None:
        problem = _pid_file_problem(pid_file)
        if problem is not None:
            errors.append("unable to create the pid file '%s': %s" % (pid_file, problem))
    try:
        unix.apply_global(config.global_, log)  # this process goes away: its limits too
    except unix.UnixError as e:
        errors.append(str(e))
    return errors


def _pid_file_problem(path: str) -> str | None:
    """Why the master could not write its pid file at ``path`` (None: it could); a file
    made to find out is removed again."""
    existed = os.path.lexists(path)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    except OSError as e:
        return strerror(e)
    if not existed:
        os.unlink(path)
    return None


def _check_pools(config, allow_root: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """The pools' users (fpm.unix), then, when those are sound, what a worker of each pool
    meets: (errors, (level, text) notices)."""
    errors, notices = unix.check_pools(config, allow_root)
    if errors:
        return errors, notices
    errors, warnings = probe.check_pools(config, allow_root)
    warnings += worker.memory_warnings(config.pools)
    return errors, notices + [("warning", text) for text in warnings]


def _fail(log: Logger, errors: list[str]) -> int:
    for line in errors:
        log.error(line)
    log.error("FPM initialization failed")
    return os.EX_CONFIG


def _test(config, log: Logger, errors: list[str], notices: list[tuple[str, str]],
          dump: bool, apps: list[str], strict_app: bool, args) -> int:
    """``-t``: what start-up would check before binding, without binding anything, and the
    log files opened (created if missing, as PHP-FPM's -t does); ``errors`` and
    ``notices`` are those of the pools (_check_pools), ``apps`` the pools whose app cannot
    be imported: warnings, or with ``strict_app`` errors."""
    errors = list(errors) + (apps if strict_app else [])
    notices = list(notices) + ([] if strict_app else [("warning", text) for text in apps])
    errors += _start_checks(config, args, log)
    if errors:
        return _fail(log, errors)
    for level, text in list(config.messages) + notices:
        log.log(level, text)
    if dump:
        for line in fpm_config.dump(config).splitlines():
            log.notice(line)
    log.notice("configuration file %s test is successful" % config.path)
    return os.EX_OK
