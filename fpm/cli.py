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
from fpm import poollogs, probe, unix, worker
from fpm.log import Logger, choose_target, strerror
from fpm.master import EX_CONFIG, EX_OK, EX_USAGE, serve
from fpm.sockets import ListenError, parse_listen, resolve_acl, resolve_owner

EMBEDDED = "(embedded)"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, "%s: error: %s\n" % (self.prog, message))


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
        return e.code if isinstance(e.code, int) else EX_USAGE
    if args.version:
        from fpm import __version__
        print("pyfpm %s (Python %s)" % (__version__, sys.version.split()[0]))
        return EX_OK

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
    errors, notices = _check_pools(config, allow_root)
    if args.test:
        return _test(config, log, errors, notices, dump=args.test > 1,
                     apps=probe.check_apps(config, allow_root) if not errors else [],
                     strict_app=args.strict_app)
    if args.strict_app:
        return _fail(log, ["--strict-app goes with -t"])
    if errors:
        return _fail(log, errors)

    daemon = args.daemonize or (config.global_.daemonize and not args.nodaemonize)
    target = choose_target(config.global_.error_log, daemon, args.force_stderr,
                           os.isatty(2))
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
    pid_file = os.path.abspath(args.pid) if args.pid else config.global_.pid
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
    """The configuration a reload (USR2) would start: read and checked as at start-up, and
    its log files opened, which the new master would fail on."""
    config = _load(args)
    errors, _ = _check_pools(config, allow_root)
    errors += poollogs.check(config.pools)
    if errors:
        raise fpm_config.ConfigError(errors)
    return config


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
    return EX_CONFIG


def _test(config, log: Logger, errors: list[str], notices: list[tuple[str, str]],
          dump: bool, apps: list[str], strict_app: bool) -> int:
    """``-t``: what start-up would check before binding, without binding anything, and the
    pools' log files opened (created if missing, as PHP-FPM's -t does); ``errors`` and
    ``notices`` are those of the pools (_check_pools), ``apps`` the pools whose app cannot
    be imported: warnings, or with ``strict_app`` errors."""
    errors = list(errors) + (apps if strict_app else [])
    notices = list(notices) + ([] if strict_app else [("warning", text) for text in apps])
    for pool in config.pools:
        try:
            for text in pool.listen:
                parse_listen(text)
            resolve_owner(pool.name, pool.listen_owner, pool.listen_group)
            resolve_acl(pool)
        except ListenError as e:
            errors.append(str(e))
    errors += poollogs.check(config.pools)
    if errors:
        return _fail(log, errors)
    for level, text in list(config.messages) + notices:
        log.log(level, text)
    if dump:
        for line in fpm_config.dump(config).splitlines():
            log.notice(line)
    log.notice("configuration file %s test is successful" % config.path)
    return EX_OK
