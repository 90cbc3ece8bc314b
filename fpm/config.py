"""Configuration: one directive table turns INI or TOML into frozen, validated dataclasses.

Each directive is checked as it is read (type, range), then each pool's cross-field rules run;
every problem found is reported at once in a `ConfigError`, naming file:line, pool, directive,
value and limit. Relative paths are anchored at the prefix (-p) when given, else at the directory
of the main configuration file; a pool's own `prefix` anchors that pool's.
"""
from __future__ import annotations

import difflib
import os
import re
import select
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Mapping

from fpm import accesslog, clients, ini, pm

try:  # tomllib is in the standard library from 3.11; tomli is the same parser for older ones
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - depends on the interpreter
    import tomli as tomllib  # type: ignore[no-redef]


class ConfigError(Exception):
    """All problems found in a configuration; str() is one line per problem."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


# --- value kinds: how a directive's value is read (INI text or TOML value), checked, shown -----

class Kind:
    """Base kind: a string. `parse` raises ValueError(what was expected)."""

    expected = "a string"

    def parse(self, raw: Any) -> Any:
        if not isinstance(raw, str):
            raise ValueError(self.expected)
        return raw

    def resolve(self, value: Any, base: str) -> Any:
        """Make relative paths absolute; only path kinds do anything."""
        return value

    def check(self, value: Any) -> str | None:
        """What was expected, if the resolved value fails a check of the file system."""
        return None

    def show(self, value: Any) -> str:
        return "undefined" if value is None else str(value)


class Str(Kind):
    """A string; empty means unset (None), as an empty value does in PHP-FPM."""

    def parse(self, raw: Any) -> str | None:
        return super().parse(raw) or None


class Path(Str):
    expected = "a file system path"

    def resolve(self, value: str | None, base: str) -> str | None:
        return None if value is None else os.path.join(base, value)


class Dir(Path):
    """A directory that must exist when the configuration is loaded."""

    def check(self, value: str) -> str | None:
        return None if os.path.isdir(value) else \
            f"an existing directory; '{value}' is not one"


class Chroot(Dir):
    """An absolute directory; `$prefix` at its start stands for the pool's prefix (as in
    PHP-FPM: the only place $prefix is expanded)."""

    expected = "an absolute path, or one starting with $prefix"

    def parse(self, raw: Any) -> str | None:
        value = super().parse(raw)
        if value is not None and not value.startswith(("/", "$prefix")):
            raise ValueError(self.expected)
        return value

    def resolve(self, value: str | None, base: str) -> str | None:
        if value is not None and value.startswith("$prefix"):
            value = base + value.removeprefix("$prefix")
        return value


def venv_site_packages(venv: str) -> str:
    """The site-packages of `venv` that this Python can import from."""
    return os.path.join(venv, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}",
                        "site-packages")


class Virtualenv(Path):
    """A venv for the running Python. Its lib/pythonX.Y/site-packages must exist: that is what
    goes on sys.path, and a venv of another Python version holds modules this one cannot
    load. pyvenv.cfg is not required, so environments made by old virtualenv (or conda,
    whose layout is the same) also work."""

    def check(self, value: str) -> str | None:
        site = venv_site_packages(value)
        return None if os.path.isdir(site) else \
            f"a virtualenv for Python {sys.version_info[0]}.{sys.version_info[1]}; " \
            f"'{site}' is not a directory"


# Every number has a range the code that uses it can hold: PHP-FPM's directives are C ints,
# a worker's limits C types (a Py_ssize_t for sizes), a process count what Linux can run.
INT_MAX = 2 ** 31 - 1
SSIZE_MAX = 2 ** 63 - 1
PID_MAX_LIMIT = 1 << 22  # Linux's most processes (pid_max can be raised to it, no further)
# A pool's scoreboard holds two slots of about 1 KB per worker, in every worker's and the
# master's memory (this many: 143 MB), and a worker announces 1024 connections per worker
# of its pool to GET_VALUES in a C int.
MAX_CHILDREN = 1 << 16


class Int(Kind):
    def __init__(self, minimum: int | None = None, maximum: int = INT_MAX, why: str = ""):
        self.minimum, self.maximum = minimum, maximum
        self.expected = ini.int_expected(minimum, maximum, why)

    def parse(self, raw: Any) -> int:
        if isinstance(raw, str):
            return _or_expected(lambda text: ini.parse_int(text, self.minimum, self.maximum),
                                raw, self.expected)
        if isinstance(raw, int) and not isinstance(raw, bool):
            return ini.check_range(raw, self.minimum, self.maximum, self.expected)
        raise ValueError(self.expected)


def _or_expected(parse: Callable[[str], int], text: str, expected: str) -> int:
    """`parse(text)`, failing with the kind's own, more complete, expectation."""
    try:
        return parse(text)
    except ValueError:
        raise ValueError(expected) from None


class Time(Kind):
    """Seconds: `30`, `30s`, `5m`, `1h`, `2d` in INI; an integer or such a string in TOML."""

    def __init__(self, minimum: int = 0, maximum: int = INT_MAX, why: str = ""):
        self.minimum, self.maximum = minimum, maximum
        self.expected = (ini.TIME_EXPECTED + (f", at least {minimum}s" if minimum else "")
                         + f", at most {maximum}s" + (f"; {why}" if why else ""))

    def parse(self, raw: Any) -> int:
        if isinstance(raw, str):
            raw = _or_expected(ini.parse_time, raw, self.expected)
        if isinstance(raw, int) and not isinstance(raw, bool) and \
                self.minimum <= raw <= self.maximum:
            return raw
        raise ValueError(self.expected)

    def show(self, value: int) -> str:
        return f"{value}s"


class Duration(Kind):
    """Seconds, fractions allowed: `250ms`, `1.5s`, `2` (seconds), `1m`; stored as a float."""

    expected = f"a duration, e.g. 250ms, 1.5s or 2 (seconds), at most {INT_MAX}s"
    _SHAPE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m)?\Z")

    def parse(self, raw: Any) -> float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            value = float(raw) if abs(raw) < 1e300 else float("inf")
        else:
            m = self._SHAPE.match(str(raw).strip().lower()) if isinstance(raw, str) else None
            if not m or len(m.group(1)) > 2 * ini.MAX_DIGITS:
                raise ValueError(self.expected)
            value = float(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60}[m.group(2)]
        if not 0 <= value <= INT_MAX:  # a NaN fails too
            raise ValueError(self.expected)
        return value

    def show(self, value: float) -> str:
        return f"{round(value * 1000)}ms"


class Size(Kind):
    """Bytes, with K/M/G suffixes; 0 means off, anything else must reach `minimum`."""

    def __init__(self, minimum: int, maximum: int = SSIZE_MAX):
        self.minimum, self.maximum = minimum, maximum
        self.expected = (f"{ini.SIZE_EXPECTED}: 0 (off) or at least {self.show(minimum)}, "
                         f"at most {self.show(maximum)}")

    def parse(self, raw: Any) -> int:
        if isinstance(raw, str):
            raw = _or_expected(ini.parse_size, raw, self.expected)
        if isinstance(raw, int) and not isinstance(raw, bool) and (
                raw == 0 or self.minimum <= raw <= self.maximum):
            return raw
        raise ValueError(self.expected)

    def show(self, value: int) -> str:
        """The largest unit that divides the value exactly, so it reads back the same."""
        for suffix, unit in reversed(ini.SIZE_UNITS.items()):
            if value and value % unit == 0:
                return f"{value // unit}{suffix.upper()}"
        return str(value)


class Rlimit(Int):
    """A resource limit: an integer >= 0 or `unlimited` (stored as -1, RLIM_INFINITY)."""

    def __init__(self) -> None:
        super().__init__(0, SSIZE_MAX)  # setrlimit() takes up to a signed 64-bit number
        self.expected = f"an integer from 0 to {SSIZE_MAX} or 'unlimited'"

    def parse(self, raw: Any) -> int:
        if isinstance(raw, str) and raw.strip().lower() == "unlimited":
            return -1
        try:
            return super().parse(raw)
        except ValueError:
            raise ValueError(self.expected) from None

    def show(self, value: int | None) -> str:
        return "unlimited" if value == -1 else super().show(value)


class Bool(Kind):
    expected = ini.BOOL_EXPECTED

    def parse(self, raw: Any) -> bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)
        if isinstance(raw, str):
            return ini.parse_bool(raw)
        raise ValueError(self.expected)

    def show(self, value: bool) -> str:
        return "yes" if value else "no"


class Choice(Kind):
    """One word of a fixed set, case-insensitive; aliases map to their canonical word."""

    def __init__(self, *choices: str, aliases: Mapping[str, str] | None = None):
        self.choices = dict.fromkeys(choices)
        self.aliases = dict(aliases or {})
        self.expected = "one of " + ", ".join(choices)

    def parse(self, raw: Any) -> str:
        word = super().parse(raw).strip().lower()
        word = self.aliases.get(word, word)
        if word not in self.choices:
            raise ValueError(self.expected)
        return word


class Events(Choice):
    """events.mechanism: auto or a poller this system has. PHP-FPM's other names (kqueue,
    port, /dev/poll, select) are refused like any unknown word: not available here."""

    def __init__(self) -> None:
        super().__init__("auto", *(name for name in ("epoll", "poll") if hasattr(select, name)))

    def parse(self, raw: Any) -> str:
        try:
            return super().parse(raw)
        except ValueError:
            raise ValueError(f"{self.expected}; event mechanism '{str(raw).strip()}' "
                             f"is not available on this system") from None


class Text(Kind):
    """A string that must not be empty (its default is not None, so empty cannot mean unset)."""

    expected = "a non-empty string"

    def parse(self, raw: Any) -> str:
        if not super().parse(raw):
            raise ValueError(self.expected)
        return raw


class UrlPath(Kind):
    """A URL path starting with '/', optionally limited to the characters PHP-FPM allows."""

    def __init__(self, pattern: str = r"/.*", expected: str = "a URL path starting with '/'"):
        self.pattern, self.expected = re.compile(pattern + r"\Z", re.S), expected

    def parse(self, raw: Any) -> str | None:
        value = super().parse(raw).strip()
        if value and not self.pattern.match(value):
            raise ValueError(self.expected)
        return value or None


class Words(Kind):
    """Words separated by spaces or tabs in INI, a list of strings in TOML."""

    expected = "a list of words separated by spaces"

    def parse(self, raw: Any) -> tuple[str, ...]:
        if isinstance(raw, str):
            raw = raw.split()
        if not isinstance(raw, list) or not all(isinstance(w, str) for w in raw):
            raise ValueError(self.expected)
        return tuple(w.strip() for w in raw if w.strip())

    def show(self, value: tuple[str, ...]) -> str:
        return " ".join(value)


class Octal(Kind):
    """A file mode such as 0660: an octal string in INI, a string or an integer (0o660) in TOML."""

    expected = "an octal file mode from 0 to 0777, e.g. 0660"

    def parse(self, raw: Any) -> int:
        if isinstance(raw, str) and re.fullmatch(r"(0o?)?[0-7]{1,4}", raw.strip().lower()):
            raw = int(raw.strip().lower().removeprefix("0o"), 8)
        if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= 0o777:
            return raw
        raise ValueError(self.expected)

    def show(self, value: int) -> str:
        return f"{value:04o}"


class PathList(Kind):
    """`a:b` or `a,b` in INI, a list of strings in TOML. Relative entries are left as written:
    they resolve against the worker's working directory (`chdir`), as sys.path entries do."""

    expected = "a list of directories separated by ':' or ','"

    def parse(self, raw: Any) -> tuple[str, ...]:
        if isinstance(raw, str):
            raw = re.split(r"[:,]", raw)
        if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
            raise ValueError(self.expected)
        return tuple(p.strip() for p in raw if p.strip())

    def show(self, value: tuple[str, ...]) -> str:
        return ":".join(value)


class App(Str):
    expected = "'module:callable', e.g. 'mysite.wsgi:application'"
    _SHAPE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")

    def parse(self, raw: Any) -> str | None:
        value = super().parse(raw)
        if value is not None and not self._SHAPE.match(value.strip()):
            raise ValueError(self.expected)
        return value and value.strip()


class Mount(Kind):
    """The URL prefix an app is mounted at; stored without its trailing slash ("/" means "")."""

    expected = "'' or a URL path starting with '/', e.g. /app"

    def parse(self, raw: Any) -> str:
        value = super().parse(raw).strip()
        if value and not value.startswith("/"):
            raise ValueError(self.expected)
        return value.rstrip("/")


class ErrorLog(Kind):
    expected = "'stderr', 'syslog' or a file path"

    def parse(self, raw: Any) -> str:
        value = super().parse(raw).strip()
        if not value:
            raise ValueError(self.expected)
        return value

    def resolve(self, value: str, base: str) -> str:
        return value if value in ("stderr", "syslog") else os.path.join(base, value)


class AccessFormat(Text):
    """access.format, compiled as the workers will: PHP-FPM's message for a bad one."""

    def parse(self, raw: Any) -> str:
        value = super().parse(raw)
        try:
            accesslog.compile(value)
        except accesslog.FormatError as e:
            raise ValueError(f"a format of PHP-FPM's % codes; {e}") from None
        return value


class Listen(Kind):
    """PHP-FPM's rule: a value holding ':' or only digits is TCP, anything else a unix socket."""

    expected = "'ip:port', '[ipv6]:port', 'port' or a unix socket path; port from 1 to 65535"
    _TCP = re.compile(r"(?:\[[0-9A-Fa-f:.%\w]+\]|[^:\[\]]+):([0-9]{1,5})\Z|([0-9]{1,5})\Z")

    def parse(self, raw: Any) -> str:
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = str(raw)
        value = super().parse(raw).strip()
        if not value:
            raise ValueError(self.expected)
        if self.is_tcp(value):
            m = self._TCP.match(value)
            if not m or not 1 <= int(m.group(1) or m.group(2)) <= 65535:
                raise ValueError(self.expected)
        return value

    @staticmethod
    def is_tcp(value: str) -> bool:
        return ":" in value or value.isdigit()

    def resolve(self, value: str | None, base: str) -> str | None:
        if value is None or self.is_tcp(value):
            return value
        return os.path.join(base, value)

    def check(self, value: str) -> str | None:
        """A unix socket's directory must exist: bind() would fail on it at start-up."""
        folder = os.path.dirname(value)
        if self.is_tcp(value) or os.path.isdir(folder):
            return None
        return f"a unix socket path in an existing directory; '{folder}' is not a directory"


# A uid or gid: what uid_t and gid_t hold, but -1 (4294967295), which means "unchanged".
ID_MAX = 2 ** 32 - 2


def _check_id(value: str, expected: str) -> None:
    """A value made of digits is a numeric id: ASCII ones (isdigit() also takes '\xb2',
    which int() refuses), within ID_MAX. Anything else is a name, looked up at start."""
    if value.isdigit() and not (value.isascii() and len(value) <= 10 and int(value) <= ID_MAX):
        raise ValueError(expected)


class Principal(Str):
    """A user or a group: a name, or a numeric id."""

    expected = f"a user or group name, or a numeric id from 0 to {ID_MAX}"

    def parse(self, raw: Any) -> str | None:
        value = super().parse(raw)
        if value is not None:
            _check_id(value.strip(), self.expected)
        return value


class Names(Kind):
    """User or group names or ids, separated by commas in INI; a list (or such a string) in
    TOML. Empty means unset."""

    expected = "user or group names or ids separated by commas"

    def parse(self, raw: Any) -> tuple[str, ...]:
        if isinstance(raw, str):
            raw = raw.split(",")
        elif isinstance(raw, int) and not isinstance(raw, bool):
            raw = [raw]
        if not isinstance(raw, list) or not all(
                isinstance(n, (str, int)) and not isinstance(n, bool) for n in raw):
            raise ValueError(self.expected)
        names = tuple(dict.fromkeys(name for name in (str(n).strip() for n in raw) if name))
        for name in names:
            _check_id(name, f"{self.expected}; a numeric id from 0 to {ID_MAX}")
        return names

    def show(self, value: tuple[str, ...]) -> str:
        return ", ".join(value) or "undefined"


class Clients(Kind):
    """listen.allowed_clients: addresses and CIDR ranges (fpm.clients), comma-separated in
    INI; a list (or such a string) in TOML. Empty means any client."""

    expected = clients.EXPECTED

    def parse(self, raw: Any) -> tuple[str, ...]:
        return clients.parse(raw)

    def show(self, value: tuple[str, ...]) -> str:
        return ", ".join(value) or "undefined"


class Include(Kind):
    """Read by the INI reader itself; in TOML a glob or a list of globs."""

    expected = "a glob pattern or a list of them"

    def parse(self, raw: Any) -> list[str]:
        patterns = [raw] if isinstance(raw, str) else raw
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ValueError(self.expected)
        return patterns


# --- the directive table --------------------------------------------------------------------

@dataclass(frozen=True)
class Directive:
    name: str  # as written in the files, e.g. "pm.max_children"
    section: Literal["global", "pool"]
    kind: Kind
    default: Any
    doc: str
    required: str | None = None  # message when a pool leaves it out
    # "map": name[KEY] = value, stored as ((KEY, value), ...);
    # "list": name[] = value (a list in TOML), stored as (value, ...)
    array: Literal["", "map", "list"] = ""
    # A "list" that may also be written `name = value` (a string in TOML): that one value
    # replaces whatever came before, as a later line of any directive does.
    plain: bool = False
    stored: bool = True  # False: consumed while reading (include), no dataclass field
    pending: str | None = None  # the issue that implements it; until then: parsed, warned, ignored
    # A path the workers use after chroot(2): with chroot set it must be absolute, is checked
    # inside the chroot and kept as the path the worker sees.
    in_chroot: bool = False

    @property
    def field(self) -> str:
        return self.name.replace(".", "_")


_LOG_LEVELS = Choice("debug", "notice", "warning", "error", "alert", aliases={"warn": "warning"})
_FACILITIES = Choice("auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news",
                     "syslog", "user", "uucp", *(f"local{n}" for n in range(8)))
# Status and ping URLs: PHP-FPM's character set, so they never need escaping in a URL.
_STATUS_PATH = UrlPath(r"/[A-Za-z0-9/_.~-]*",
                       "a URL path starting with '/', made of letters, digits and /_-.~")
_PROCESSES = "the most processes Linux can run"
_BOARD = "the most workers a pool's scoreboard is made for"
_POLL = "the longest wait a worker can time, in milliseconds of a C int"
# pm.max_memory floor: a bare Python worker already holds about 10 MB, so anything lower would
# recycle every worker after every request; a number without suffix is almost surely a typo.
MIN_MAX_MEMORY = 16 << 20

# Left out of PHP-FPM 8.2's directives: php_value/php_flag/php_admin_value/php_admin_flag (PHP ini
# settings; Python has none), listen.setfib (FreeBSD only) and apparmor_hat (needs libapparmor).
DIRECTIVES: tuple[Directive, ...] = (
    Directive("pid", "global", Path(), None,
              "Pid file, written at start and removed at exit. Default: none."),
    Directive("error_log", "global", ErrorLog(), "stderr",
              "Where the master and the workers log: 'stderr', 'syslog' or a file path."),
    Directive("syslog.ident", "global", Text(), "pyfpm",
              "Name syslog lines are tagged with (error_log = syslog)."),
    Directive("syslog.facility", "global", _FACILITIES, "daemon",
              "Syslog facility of the log lines (error_log = syslog)."),
    Directive("log_level", "global", _LOG_LEVELS, "notice",
              "Least severe level logged: debug, notice, warning, error or alert."),
    Directive("log_limit", "global", Int(512), 1024,
              "Longest log line in bytes, prefix included: captured worker output is wrapped "
              "there; a message of the master is cut (ending in ...) when longer than 2048 "
              "bytes, or longer than log_limit with an error code, as in PHP-FPM."),
    Directive("log_buffering", "global", Bool(), True,
              "Captured worker output waits for the end of its line, written with one "
              "write(); no: written as soon as it is read (undecorated: byte for byte)."),
    Directive("emergency_restart_threshold", "global", Int(0), 0,
              "Restart the master gracefully when this many workers die of a signal within "
              "emergency_restart_interval; 0 disables."),
    Directive("emergency_restart_interval", "global", Time(), 0,
              "The window emergency_restart_threshold counts in; 0 disables."),
    Directive("process_control_timeout", "global", Time(), 0,
              "How long workers get to finish on a graceful stop before they are killed; "
              "0 waits for ever."),
    Directive("process.max", "global", Int(0, PID_MAX_LIMIT, _PROCESSES), 0,
              "Most workers all pools together may run; 0 means no limit, else at least the "
              "workers the pools start."),
    Directive("process.priority", "global", Int(-19, 20), None,
              "nice(2) value of the master, from -19 (first) to 20 (last); root only. "
              "Default: unchanged."),
    Directive("daemonize", "global", Bool(), True,
              "Detach into the background; -F keeps pyfpm in the foreground."),
    Directive("rlimit_files", "global", Int(1), None,
              "Open file limit (RLIMIT_NOFILE) of the master. Default: unchanged."),
    Directive("rlimit_core", "global", Rlimit(), None,
              "Core file size limit (RLIMIT_CORE) of the master: bytes or 'unlimited'. "
              "Default: unchanged."),
    Directive("events.mechanism", "global", Events(), "auto",
              "How the master waits for events: auto (the best there is), epoll or poll."),
    Directive("systemd_interval", "global", Time(), 10,
              "How often the master reports its status to systemd (Type=notify); 0 disables."),
    Directive("include", "global", Include(), None,
              "Read more files here: a glob, sorted; no match is only a warning.", stored=False),

    Directive("prefix", "pool", Dir(), None,
              "Directory this pool's relative paths are relative to; it must exist. "
              "Default: the global prefix (-p), else the directory of the main file."),
    Directive("user", "pool", Principal(), None,
              "User the workers run as (name or uid); needed when pyfpm runs as root, "
              "ignored otherwise."),
    Directive("group", "pool", Principal(), None,
              "Group the workers run as (name or gid). Default: the user's group."),
    Directive("listen", "pool", Listen(), (),
              "Address to accept FastCGI requests on: 'ip:port', '[ipv6]:port', 'port' "
              "(all addresses) or a unix socket path; several listen[] = lines (a list in "
              "TOML) give the pool a socket on each.",
              required="no listen address have been defined!", array="list", plain=True),
    Directive("listen.backlog", "pool", Int(-1), -1,
              "listen(2) backlog; -1 means the kernel maximum (SOMAXCONN)."),
    Directive("listen.owner", "pool", Principal(), None,
              "Owner of the unix socket (user name or uid). Default: the user running pyfpm."),
    Directive("listen.group", "pool", Principal(), None,
              "Group of the unix socket (group name or gid). Default: the owner's group."),
    Directive("listen.mode", "pool", Octal(), 0o660,
              "Permissions of the unix socket, in octal."),
    Directive("listen.allowed_clients", "pool", Clients(), (),
              "TCP only: comma-separated IP addresses and CIDR ranges (10.0.0.0/8, fd00::/8) "
              "that may connect; others are dropped. Default: any."),
    Directive("listen.acl_users", "pool", Names(), (),
              "Users (comma-separated names or ids) given read and write access to the unix "
              "socket by POSIX ACL; with an ACL, listen.owner and listen.group are ignored."),
    Directive("listen.acl_groups", "pool", Names(), (),
              "Groups (comma-separated names or ids) given read and write access to the unix "
              "socket by POSIX ACL; with an ACL, listen.owner and listen.group are ignored."),
    Directive("process.priority", "pool", Int(-19, 20), None,
              "nice(2) value of the workers, from -19 to 20; root only. Default: the master's."),
    Directive("process.dumpable", "pool", Bool(), False,
              "Let the workers dump core and be traced after they drop root (PR_SET_DUMPABLE)."),
    Directive("pm", "pool", Choice(*pm.MODES), "static",
              "Process manager: static keeps pm.max_children workers, dynamic keeps "
              "spare idle ones, ondemand starts them when requests come.",
              required="the process manager is missing (%s or %s)"
              % (", ".join(list(pm.MODES)[:-1]), list(pm.MODES)[-1])),
    Directive("pm.max_children", "pool", Int(1, MAX_CHILDREN, _BOARD), 5,
              "Number of workers (static), or the most there can be (dynamic, ondemand).",
              required="pm.max_children must be set (expected an integer >= 1)"),
    Directive("pm.start_servers", "pool", Int(0, MAX_CHILDREN, _BOARD), 0,
              "dynamic: workers started at launch; 0 means "
              "min_spare + (max_spare - min_spare) / 2."),
    Directive("pm.min_spare_servers", "pool", Int(0, MAX_CHILDREN, _BOARD), 0,
              "dynamic: fewest idle workers wanted (mandatory for dynamic)."),
    Directive("pm.max_spare_servers", "pool", Int(0, MAX_CHILDREN, _BOARD), 0,
              "dynamic: most idle workers wanted (mandatory for dynamic)."),
    Directive("pm.max_spawn_rate", "pool", Int(1), 32,
              "dynamic: most workers started in one second when idle ones run short."),
    Directive("pm.process_idle_timeout", "pool", Time(1), 10,
              "ondemand: a worker idle this long is stopped."),
    Directive("pm.max_requests", "pool", Int(0), 0,
              "Requests a worker serves before it is replaced (against leaks); 0: no limit."),
    Directive("pm.max_requests_jitter", "pool", Int(0), 0,
              "Up to this many extra requests, random per worker, so workers are not all "
              "replaced at once."),
    Directive("pm.max_memory", "pool", Size(MIN_MAX_MEMORY), 0,
              "A worker whose memory (RSS) exceeds this is replaced after its request; "
              "K/M/G suffixes; 0: no limit."),
    Directive("pm.status_path", "pool", _STATUS_PATH, None,
              "URL of the status page, e.g. /status (?json, ?xml, ?html, ?openmetrics, "
              "&full). Default: no status page."),
    Directive("pm.status_listen", "pool", Listen(), None,
              "Separate address to serve only the status and ping pages on (a hidden pool "
              "<pool>_status of at most two workers). Default: none."),
    Directive("ping.path", "pool", _STATUS_PATH, None,
              "URL that answers ping.response, for health checks. Default: none."),
    Directive("ping.response", "pool", Text(), "pong",
              "Body of the answer to ping.path."),
    Directive("access.log", "pool", Path(), None,
              "Access log file, one line per request. Default: none."),
    Directive("access.format", "pool", AccessFormat(), '%R - %u %t "%m %r" %s',
              "Access log line format (PHP-FPM's % codes)."),
    Directive("access.suppress_path", "pool", UrlPath(), (),
              "access.suppress_path[] = /ping: successful GET/HEAD requests of this exact path "
              "are not logged.", array="list"),
    Directive("access.json", "pool", Bool(), False,
              "Write the access log as JSON lines, one object per request whose keys are "
              "those of access.format's codes (see fpm/accesslog.py)."),
    Directive("slowlog", "pool", Path(), None,
              "File the Python stack of slow requests is written to; opened by the master at "
              "start, reopened on SIGUSR1. Default: none."),
    Directive("request_slowlog_timeout", "pool", Time(), 0,
              "A request running longer gets its stack written to slowlog; 0 disables."),
    Directive("request_slowlog_trace_depth", "pool", Int(1), 20,
              "Most stack frames written to slowlog per request."),
    Directive("request_terminate_timeout", "pool", Time(), 0,
              "A request running longer has its worker killed; 0 disables."),
    Directive("request_terminate_timeout_track_finished", "pool", Bool(), False,
              "Keep counting request_terminate_timeout after the response is complete "
              "(code running after the response)."),
    Directive("request_read_timeout", "pool", Time(1, INT_MAX // 1000, _POLL), 60,
              "Longest silence of the web server in the middle of a request before its "
              "connection is dropped; also the allowance a body gets before "
              "request_body_min_rate applies."),
    Directive("request_head_timeout", "pool", Time(1, INT_MAX // 1000, _POLL), 10,
              "A connection must send its whole request head (BEGIN_REQUEST and the params) "
              "within this; until then it waits in the master, not in a worker, and is "
              "closed when the time is up."),
    Directive("request_body_min_rate", "pool", Size(1), 1 << 10,
              "Slowest a request body may come, in bytes per second (K/M suffixes), after "
              "an allowance of request_read_timeout; a slower one is answered 408 and its "
              "connection closed. 0: no minimum."),
    Directive("rlimit_files", "pool", Int(1), None,
              "Open file limit (RLIMIT_NOFILE) of the workers. Default: the master's."),
    Directive("rlimit_core", "pool", Rlimit(), None,
              "Core file size limit (RLIMIT_CORE) of the workers: bytes or 'unlimited'. "
              "Default: the master's."),
    Directive("chroot", "pool", Chroot(), None,
              "Directory the workers chroot(2) into; absolute ('$prefix' may start it), root "
              "only. Default: none."),
    Directive("chdir", "pool", Dir(), None,
              "Directory the workers change into before loading the app; it must exist "
              "(inside the chroot when there is one).", in_chroot=True),
    Directive("catch_workers_output", "pool", Bool(), False,
              "Send what workers print on stdout/stderr to the error log, else to /dev/null."),
    Directive("decorate_workers_output", "pool", Bool(), True,
              "With catch_workers_output: prefix each captured line with the pool and pid."),
    Directive("wsgi_errors", "pool", Choice("both", "log", "server"), "both",
              "Where what the app writes to wsgi.errors goes: 'log' (the error log, each line "
              "a WARNING naming pool, pid and request), 'server' (the web server's log, as "
              "FastCGI stderr) or 'both'."),
    Directive("clear_env", "pool", Bool(), True,
              "Start workers with an empty environment plus env[]; no: inherit the master's."),
    Directive("security.limit_extensions", "pool", Words(), (".py",),
              "SCRIPT_FILENAME suffixes a request may name, separated by spaces; empty: any."),
    Directive("script.validate_timestamps", "pool", Bool(), True,
              "Script mode: recompile a cached script when its file changed (opcache's "
              "validate_timestamps); no: compile each script once per worker."),
    Directive("script.revalidate_freq", "pool", Time(), 2,
              "Script mode: how often a cached script is looked up on disk again (its "
              "timestamp checked, a deleted one noticed); 0: every request."),
    Directive("request_body_buffer_size", "pool", Size(1), 1 << 20,
              "Request bodies up to this size are read into memory; larger ones are spooled "
              "to an unlinked file in request_body_temp_path. 0: every body goes to a file."),
    Directive("request_body_max_size", "pool", Size(1), 0,
              "Largest request body a request may send; larger ones are answered 413. "
              "0: no limit."),
    Directive("request_body_temp_path", "pool", Dir(), None,
              "Directory for spooled request bodies. Default: $TMPDIR, else /tmp.",
              in_chroot=True),
    Directive("security.request_body_file_dirs", "pool", Words(), ("/var/lib/nginx/body",),
              "Directories a REQUEST_BODY_FILE param may name (nginx client_body_in_file_only); "
              "empty: the param is refused."),
    Directive("request_queue_timeout", "pool", Duration(), 0.0,
              "A request that waited longer than this before a worker took it is answered 503 "
              "at once. 0: off."),
    Directive("request_start_param", "pool", Str(), None,
              "FastCGI param holding the time the web server got the request (nginx: "
              "fastcgi_param REQUEST_START $msec;), the start of the queue wait. Default: the "
              "kernel's arrival time of the request's first bytes (TCP only)."),
    Directive("app", "pool", App(), None,
              "The WSGI application, 'module:callable'."),
    Directive("python_path", "pool", PathList(), (),
              "Directories the workers import from, separated by ':' or ','; searched after "
              "the standard library and site-packages, before chdir."),
    Directive("virtualenv", "pool", Virtualenv(), None,
              "A virtual environment whose site-packages the workers import from. "
              "Default: none.", in_chroot=True),
    Directive("preload", "pool", Bool(), False,
              "Import the app in the master before forking, so workers share its memory and "
              "start fast (a reload re-imports it)."),
    Directive("mount", "pool", Mount(), "",
              "URL prefix the app is mounted at: a request path under it gives SCRIPT_NAME = "
              "mount and PATH_INFO = the rest, whatever split the web server sent."),
    Directive("fastcgi.params_max", "pool", Int(1), 1048576,
              "Largest FastCGI PARAMS block (bytes) a request may send; more closes the "
              "connection."),
    Directive("env", "pool", Str(), (),
              "env[NAME] = value: environment variables set in the workers.", array="map"),
)

_TABLE: dict[tuple[str, str], Directive] = {(d.section, d.name): d for d in DIRECTIVES}


def _default(section: str, name: str) -> Any:
    return _TABLE[(section, name)].default


# --- the frozen result -----------------------------------------------------------------------
# Field order: the first ones keep their places (callers build these positionally); the rest
# follow the table. A unit test checks that fields and table agree.

@dataclass(frozen=True)
class GlobalConfig:
    pid: str | None = _default("global", "pid")
    error_log: str = _default("global", "error_log")
    log_level: str = _default("global", "log_level")
    daemonize: bool = _default("global", "daemonize")
    process_control_timeout: int = _default("global", "process_control_timeout")
    syslog_ident: str = _default("global", "syslog.ident")
    syslog_facility: str = _default("global", "syslog.facility")
    log_limit: int = _default("global", "log_limit")
    log_buffering: bool = _default("global", "log_buffering")
    emergency_restart_threshold: int = _default("global", "emergency_restart_threshold")
    emergency_restart_interval: int = _default("global", "emergency_restart_interval")
    process_max: int = _default("global", "process.max")
    process_priority: int | None = _default("global", "process.priority")
    rlimit_files: int | None = _default("global", "rlimit_files")
    rlimit_core: int | None = _default("global", "rlimit_core")  # -1: unlimited
    events_mechanism: str = _default("global", "events.mechanism")
    systemd_interval: int = _default("global", "systemd_interval")


@dataclass(frozen=True)
class PoolConfig:
    name: str
    listen: tuple[str, ...]  # one socket each
    listen_backlog: int = _default("pool", "listen.backlog")
    listen_owner: str | None = _default("pool", "listen.owner")
    listen_group: str | None = _default("pool", "listen.group")
    listen_mode: int = _default("pool", "listen.mode")
    pm: str = _default("pool", "pm")
    pm_max_children: int = _default("pool", "pm.max_children")
    pm_start_servers: int = _default("pool", "pm.start_servers")
    pm_min_spare_servers: int = _default("pool", "pm.min_spare_servers")
    pm_max_spare_servers: int = _default("pool", "pm.max_spare_servers")
    app: str | None = _default("pool", "app")
    chdir: str | None = _default("pool", "chdir")
    python_path: tuple[str, ...] = _default("pool", "python_path")
    mount: str = _default("pool", "mount")
    fastcgi_params_max: int = _default("pool", "fastcgi.params_max")
    env: tuple[tuple[str, str], ...] = _default("pool", "env")
    prefix: str | None = _default("pool", "prefix")
    user: str | None = _default("pool", "user")
    group: str | None = _default("pool", "group")
    listen_allowed_clients: tuple[str, ...] = _default("pool", "listen.allowed_clients")
    listen_acl_users: tuple[str, ...] = _default("pool", "listen.acl_users")
    listen_acl_groups: tuple[str, ...] = _default("pool", "listen.acl_groups")
    process_priority: int | None = _default("pool", "process.priority")
    process_dumpable: bool = _default("pool", "process.dumpable")
    pm_max_spawn_rate: int = _default("pool", "pm.max_spawn_rate")
    pm_process_idle_timeout: int = _default("pool", "pm.process_idle_timeout")
    pm_max_requests: int = _default("pool", "pm.max_requests")
    pm_max_requests_jitter: int = _default("pool", "pm.max_requests_jitter")
    pm_max_memory: int = _default("pool", "pm.max_memory")  # bytes; 0: no limit
    pm_status_path: str | None = _default("pool", "pm.status_path")
    pm_status_listen: str | None = _default("pool", "pm.status_listen")
    ping_path: str | None = _default("pool", "ping.path")
    ping_response: str = _default("pool", "ping.response")
    access_log: str | None = _default("pool", "access.log")
    access_format: str = _default("pool", "access.format")
    access_suppress_path: tuple[str, ...] = _default("pool", "access.suppress_path")
    access_json: bool = _default("pool", "access.json")
    slowlog: str | None = _default("pool", "slowlog")
    request_slowlog_timeout: int = _default("pool", "request_slowlog_timeout")
    request_slowlog_trace_depth: int = _default("pool", "request_slowlog_trace_depth")
    request_terminate_timeout: int = _default("pool", "request_terminate_timeout")
    request_terminate_timeout_track_finished: bool = _default(
        "pool", "request_terminate_timeout_track_finished")
    request_read_timeout: int = _default("pool", "request_read_timeout")
    rlimit_files: int | None = _default("pool", "rlimit_files")
    rlimit_core: int | None = _default("pool", "rlimit_core")  # -1: unlimited
    chroot: str | None = _default("pool", "chroot")
    catch_workers_output: bool = _default("pool", "catch_workers_output")
    decorate_workers_output: bool = _default("pool", "decorate_workers_output")
    wsgi_errors: str = _default("pool", "wsgi_errors")
    clear_env: bool = _default("pool", "clear_env")
    security_limit_extensions: tuple[str, ...] = _default("pool", "security.limit_extensions")
    script_validate_timestamps: bool = _default("pool", "script.validate_timestamps")
    script_revalidate_freq: int = _default("pool", "script.revalidate_freq")
    request_body_buffer_size: int = _default("pool", "request_body_buffer_size")
    request_body_max_size: int = _default("pool", "request_body_max_size")
    request_body_temp_path: str | None = _default("pool", "request_body_temp_path")
    security_request_body_file_dirs: tuple[str, ...] = _default(
        "pool", "security.request_body_file_dirs")
    request_queue_timeout: float = _default("pool", "request_queue_timeout")
    request_start_param: str | None = _default("pool", "request_start_param")
    virtualenv: str | None = _default("pool", "virtualenv")
    preload: bool = _default("pool", "preload")
    request_head_timeout: int = _default("pool", "request_head_timeout")
    request_body_min_rate: int = _default("pool", "request_body_min_rate")  # bytes/s; 0: off


@dataclass(frozen=True)
class Config:
    path: str  # the main file, absolute; "(embedded)" or "<string>" when not read from a file
    global_: GlobalConfig
    pools: tuple[PoolConfig, ...]
    # (level, text) pairs for the master to log, e.g. ("warning", "Nothing matches ...")
    messages: tuple[tuple[str, str], ...] = field(default=(), compare=False)


# --- loading ---------------------------------------------------------------------------------

def load(path: str, prefix: str | None = None) -> Config:
    """Read a configuration file: `.toml` as TOML, anything else as php-fpm.conf-style INI."""
    fmt = "toml" if path.lower().endswith(".toml") else "ini"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else f"not UTF-8 ({e.reason})"
        raise ConfigError([f"failed to load configuration file '{path}': {reason}"]) from None
    return loads(text, path, fmt, prefix=prefix)


def loads(text: str, path: str = "<string>", fmt: Literal["ini", "toml"] = "ini",
          prefix: str | None = None) -> Config:
    """Parse configuration text; `path` names it in messages and, unless it looks like
    "<string>", anchors relative paths (when no prefix is given)."""
    named = not path.startswith(("<", "("))
    if prefix is not None:
        base = os.path.abspath(prefix)
    else:
        base = os.path.dirname(os.path.abspath(path)) if named else os.getcwd()
    if fmt == "toml":
        doc = _toml_document(text, path, base, 0)
    elif fmt == "ini":
        doc = ini.parse(text, path, base)
    else:
        raise ValueError(f"unknown configuration format {fmt!r} (expected 'ini' or 'toml')")
    return _build(doc, os.path.abspath(path) if named else path, base)


# --- TOML: [global] and [pools.NAME] tables, turned into the same entries as INI ----------------

def _toml_document(text: str, path: str, base: str, depth: int) -> ini.Document:
    doc = ini.Document()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        doc.errors.append(f"[{path}] invalid TOML: {e}")
        return doc
    lines = _toml_lines(text)

    def entry(section: str | None, table: str, name: str, value: Any, key: str | None = None):
        line = _toml_line(lines, f"{table}.{name}" + (f".{key}" if key is not None else ""))
        try:  # the same ${ENV} and $pool rules as INI, in every string
            value = _expand(value, section)
        except ValueError as x:
            doc.errors.append(f"[{path}:{line}] {_scope(section)} {name}: "
                              f"invalid value '{value}' ({x})")
        return ini.Entry(path, line, section, name, value, key)

    for top, body in data.items():
        if top == "global" and isinstance(body, dict):
            for name, key, value in _flatten(body, "global"):
                if name.lower() == "include" and key is None:
                    _toml_include(doc, entry(None, "global", name, value), base, depth)
                else:
                    doc.entries.append(entry(None, "global", name, value, key))
        elif top == "pools" and isinstance(body, dict) and all(
                isinstance(t, dict) for t in body.values()):
            for pool, table in body.items():
                prefix = f"pools.{pool}"
                if pool.lower() == "global" or not pool:
                    doc.errors.append(f"[{path}:{_toml_line(lines, prefix)}] invalid pool name "
                                      f"'{pool}' (reserved or empty)")
                    continue
                doc.entries.append(ini.Entry(path, _toml_line(lines, prefix), pool, "", ""))
                doc.entries.extend(entry(pool, prefix, n, v, k) for n, k, v in
                                   _flatten(table, "pool"))
        else:
            doc.errors.append(f"[{path}:{_toml_line(lines, top)}] unknown table or key '{top}' "
                              f"(expected [global] and [pools.NAME] tables)")
    return doc


def _expand(value: Any, section: str | None) -> Any:
    if isinstance(value, str):
        return ini.expand_pool(ini.expand_env(value, os.environ), section)
    if isinstance(value, list):
        return [_expand(v, section) for v in value]
    return value


def _flatten(table: dict, section: str, prefix: str = "") -> Iterator[tuple[str, str | None, Any]]:
    """Nested tables become dotted names (`pm = {max_children = 5}` is `pm.max_children`);
    the table of a map directive gives its keys (`env = {PATH = "/bin"}`), the items of a
    list directive are its values (`"access.suppress_path" = ["/ping"]`), as in INI."""
    for k, v in table.items():
        name = prefix + k
        directive = _TABLE.get((section, name.lower()))
        array = directive.array if directive is not None else ""
        if isinstance(v, dict) and array == "map":
            for key, item in v.items():
                yield name, key, item
        elif array == "list" and directive.plain and not isinstance(v, list):
            yield name, None, v
        elif array == "list":
            for item in v if isinstance(v, list) else [v]:
                yield name, "", item
        elif isinstance(v, dict):
            yield from _flatten(v, section, name + ".")
        else:
            yield name, None, v


def _toml_include(doc: ini.Document, e: ini.Entry, base: str, depth: int) -> None:
    where = f"[{e.file}:{e.line}]"
    try:
        patterns = Include().parse(e.value)
    except ValueError as x:
        doc.errors.append(f"{where} [global] include: invalid value '{e.value}' (expected {x})")
        return
    if depth >= ini.MAX_INCLUDE_DEPTH:
        doc.errors.append(f"{where} include '{e.value}': failed to include more than "
                          f"{ini.MAX_INCLUDE_DEPTH} files recursively")
        return
    for pattern in patterns:
        paths = ini.include_paths(pattern, base)
        if not paths:
            doc.warnings.append(f"Nothing matches the include pattern '{pattern}' "
                                f"from {e.file} at line {e.line}.")
        for included in paths:
            try:
                with open(included, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as x:
                doc.errors.append(f"{where} include: cannot read '{included}': {x}")
                continue
            if included.lower().endswith(".toml"):
                sub = _toml_document(text, included, base, depth + 1)
            else:
                sub = ini.parse(text, included, base)
            doc.entries.extend(sub.entries)
            doc.errors.extend(sub.errors)
            doc.warnings.extend(sub.warnings)


_TOML_KEY = re.compile(r'\s*(?:([A-Za-z0-9_-]+)|"((?:[^"\\]|\\.)*)"|\'([^\']*)\')\s*')


def _toml_keys(s: str) -> tuple[list[str], str]:
    """Split a dotted TOML key at the start of `s`; returns the parts and the text after them."""
    parts: list[str] = []
    while True:
        m = _TOML_KEY.match(s)
        if not m:
            return parts, s
        parts.append(next(g for g in m.groups() if g is not None))
        s = s[m.end():]
        if not s.startswith("."):
            return parts, s
        s = s[1:]


def _toml_lines(text: str) -> dict[str, int]:
    """Line of each table header and key, by dotted path; tomllib does not report them."""
    lines: dict[str, int] = {}
    table = ""
    for n, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if s.startswith("[") and not s.startswith("[["):
            parts, rest = _toml_keys(s[1:])
            if parts and rest.startswith("]"):
                table = ".".join(parts)
                lines.setdefault(table, n)
        elif s and not s.startswith("#"):
            parts, rest = _toml_keys(s)
            if parts and rest.startswith("="):
                lines.setdefault(".".join(([table] if table else []) + parts), n)
    return lines


def _toml_line(lines: dict[str, int], dotted: str) -> int:
    """The line of `dotted`, else of the nearest enclosing key or table; 0 if unknown."""
    while dotted:
        if dotted in lines:
            return lines[dotted]
        dotted = dotted.rpartition(".")[0]
    return 0


# --- validation: each directive as read, then per section, then across pools -----------------

# With pm = ondemand, connections wait in the backlog while their worker starts; PHP-FPM raises
# a smaller backlog to its FPM_BACKLOG_DEFAULT, 511 where the kernel maximum (-1) is not used.
ONDEMAND_MIN_BACKLOG = 511


@dataclass
class _Section:
    """What the files said for [global] (name None) or one pool, before defaults."""

    name: str | None
    where: tuple[str, int]  # where the section was first opened
    values: dict[str, Any] = field(default_factory=dict)  # field -> value
    origin: dict[str, tuple[str, int]] = field(default_factory=dict)  # field -> (file, line)
    arrays: dict[str, dict[str, str]] = field(default_factory=dict)  # field -> {KEY: value}
    lists: dict[str, list[str]] = field(default_factory=dict)  # field -> [value, ...]

    @property
    def section(self) -> Literal["global", "pool"]:
        return "global" if self.name is None else "pool"

    @property
    def scope(self) -> str:
        return _scope(self.name)

    def at(self, name: str) -> str:
        """`[file:line] [pool www] ` for a directive: where it was set, else the section."""
        return f"{_at(self.origin.get(name.replace('.', '_'), self.where))} {self.scope} "


def _at(where: tuple[str, int]) -> str:
    file, line = where
    return f"[{file}:{line}]" if line else f"[{file}]"


def _scope(pool: str | None) -> str:
    return "[global]" if pool is None else f"[pool {_shown(pool)}]"


def _build(doc: ini.Document, path: str, base: str) -> Config:
    errors = list(doc.errors)
    messages = [("warning", w) for w in doc.warnings]
    global_ = _Section(None, (path, 0))
    pools: dict[str, _Section] = {}

    for e in doc.entries:
        section = global_
        if e.section is not None and not e.name and not e.section.isprintable():
            # It names the pool in every log line and its workers' process title.
            errors.append(f"{_at((e.file, e.line))} invalid pool name '{_shown(e.section)}' "
                          f"(expected printable characters; {NO_NUL})")
        if e.section is not None:
            # one pool per name, case-insensitively, as PHP-FPM re-opens sections
            section = pools.setdefault(e.section.lower(), _Section(e.section, (e.file, e.line)))
            if not e.name:
                continue
        problem = _read_entry(e, section)
        if problem:
            errors.append(f"{_at((e.file, e.line))} {section.scope} {problem}")

    if not pools and not errors:
        errors.append(f"[{path}] no pool defined: at least one pool section ([www]) is needed")
    global_config = GlobalConfig(**_resolve(global_, base, errors, messages))
    pool_configs = [_make_pool(p, base, errors, messages) for p in pools.values()]
    if global_config.events_mechanism == "poll":
        # The master learns of a waiting connection from an edge-triggered epoll event.
        errors.extend(f"{_at(p.origin.get('pm', p.where))} [pool {p.name}] the ondemand process "
                      f"manager can only be used with events.mechanism = epoll (or auto), "
                      f"not poll" for p, c in zip(pools.values(), pool_configs)
                      if pm.of(c).watches_queue)
    _check_listen_clashes(list(zip(pools.values(), pool_configs)), errors)
    if global_config.process_max and not errors:
        errors.extend(_check_process_max(global_, global_config.process_max, pool_configs))
    if errors:
        raise ConfigError(errors)
    return Config(path, global_config, tuple(pool_configs), tuple(messages))


def _read_entry(e: ini.Entry, section: _Section) -> str:
    """Store one entry's checked value; return the problem ("" if none)."""
    d = _TABLE.get((section.section, e.name.lower()))
    plain_list = d is not None and d.plain and e.key is None
    if d is None or (bool(d.array) != (e.key is not None) and not plain_list):
        return _unknown(e, d, section.section)
    section.origin[d.field] = (e.file, e.line)  # even if invalid: a bad value is not a missing one
    if _has_nul(e.value):
        return f"{d.name}: invalid value '{_shown(e.value)}' (expected {NO_NUL})"
    if d.array == "map" and e.key and ("\0" in e.key or "=" in e.key):
        # What the workers' environment (env[]) can hold as a variable's name.
        return f"{d.name}[{_shown(e.key)}]: invalid name (expected no '=' and {NO_NUL})"
    try:
        value = d.kind.parse(e.value)
    except ValueError as x:
        return f"{d.name}: invalid value '{_shown(e.value)}' (expected {x})"
    if not d.array:
        section.values[d.field] = value
    elif plain_list:
        section.lists[d.field] = [value]
    elif value is None:
        return f"{d.name}[{_shown(e.key)}]: empty value"
    elif d.array == "list" and e.key:
        return f"{d.name}[{e.key}]: keys are not allowed here (write {d.name}[] = value)"
    elif d.array == "list":
        section.lists.setdefault(d.field, []).append(value)
    elif not e.key:
        return f"{d.name}[]: a key is needed, e.g. {d.name}[NAME] = value"
    else:
        section.arrays.setdefault(d.field, {})[e.key] = value
    return ""


def _unknown(e: ini.Entry, d: Directive | None, section: str) -> str:
    if e.key is not None:
        arrays = [n for (s, n), a in _TABLE.items() if s == section and a.array]
        return f"unknown directive '{_shown(e.name)}'" + ("" if d else _nearest(e.name, arrays))
    if d is not None:  # an array directive written without its [KEY]
        key = "NAME" if d.array == "map" else ""
        return f"unknown entry '{e.name}' (write {d.name}[{key}] = value)"
    other = "pool" if section == "global" else "global"
    if (other, e.name.lower()) in _TABLE:
        where = "a pool section" if other == "pool" else "the [global] section"
        return f"unknown entry '{e.name}' ({e.name} belongs in {where})"
    return f"unknown entry '{_shown(e.name)}'" + _nearest(e.name,
                                                          [n for s, n in _TABLE if s == section])


def _nearest(name: str, names: list[str]) -> str:
    """` (did you mean 'pm.max_children'?)` for a misspelt directive, else ""."""
    close = difflib.get_close_matches(name.lower(), names, 1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# Every string becomes a path, an environment value or a C string (a process title, a
# syslog ident) somewhere, and none of those can hold a NUL.
NO_NUL = "no NUL byte: it would cut a path, an environment value or a C string short"
SHOWN_MAX = 120  # characters of a value an error shows


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\0" in value
    return isinstance(value, list) and any(_has_nul(item) for item in value)


def _shown(value: Any) -> str:
    """A value as the user wrote it: TOML's true/false rather than Python's True/False;
    characters that cannot be printed escaped (a NUL as \\x00), and a long one cut."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                       for c in text)
    if len(text) > SHOWN_MAX:
        text = f"{text[:SHOWN_MAX - 20]}... ({len(text)} characters)"
    return text


def _resolve(s: _Section, base: str, errors: list[str],
             messages: list[tuple[str, str]]) -> dict[str, Any]:
    """Every field of a section: its value or default, paths resolved and checked; warns
    about pending directives. Table order matters: prefix re-anchors the pool's later paths,
    chroot comes before the paths inside it."""
    v: dict[str, Any] = {}
    for d in DIRECTIVES:
        if d.section != s.section or not d.stored:
            continue
        if d.required and d.field not in s.origin:
            errors.append(f"{_at(s.where)} {s.scope} {d.required}")
        if d.pending and d.field in s.origin:
            messages.append(("warning", f"{s.scope} {d.name} is not implemented yet "
                                        f"({d.pending}); ignored"))
        if d.array == "map":
            v[d.field] = tuple(s.arrays.get(d.field, {}).items())
        elif d.array == "list":
            v[d.field] = tuple(d.kind.resolve(item, base) for item in s.lists.get(d.field, ()))
            for item, resolved in zip(s.lists.get(d.field, ()), v[d.field]):
                _check(s, d, item, resolved, errors)
        elif s.values.get(d.field) is None:  # not set, or set empty: unset in PHP-FPM too
            v[d.field] = d.default
        elif d.in_chroot and v.get("chroot") is not None:
            v[d.field] = _inside_chroot(s, d, v["chroot"], errors)
        else:
            v[d.field] = d.kind.resolve(s.values[d.field], base)
            _check(s, d, s.values[d.field], v[d.field], errors)
        if d.name == "prefix" and v[d.field] is not None:
            base = v[d.field]
    return v


def _check(s: _Section, d: Directive, written: Any, resolved: Any, errors: list[str]) -> None:
    """The file system check of one resolved value; the error shows the value as written."""
    problem = d.kind.check(resolved)
    if problem:
        errors.append(_invalid(s, d, written, problem))


def _invalid(s: _Section, d: Directive, written: Any, expected: str) -> str:
    return f"{s.at(d.name)}{d.name}: invalid value '{written}' (expected {expected})"


def _inside_chroot(s: _Section, d: Directive, chroot: str, errors: list[str]) -> str:
    """A path the workers use once chrooted: absolute, and checked as seen from outside."""
    value = s.values[d.field]
    if not value.startswith("/"):
        problem = f"an absolute path inside chroot '{chroot}'"
    else:
        problem = d.kind.check(os.path.join(chroot, value.lstrip("/")))
    if problem:
        errors.append(_invalid(s, d, value, problem))
    return value


def _make_pool(p: _Section, base: str, errors: list[str],
               messages: list[tuple[str, str]]) -> PoolConfig:
    v = _resolve(p, base, errors, messages)
    if v["chroot"] is not None and v["chdir"] is None:
        v["chdir"] = "/"  # PHP-FPM's default: the master's directory is outside the chroot
    if v["pm"] == "ondemand":
        _adjust_ondemand(p, v, messages)
    if v["pm"] == "dynamic" and "pm_max_children" in p.values:
        errors.extend(_check_dynamic(p, v, messages))
    errors.extend(_check_pool_rules(p, v))
    messages.extend(_listen_warnings(p.name, v))
    return PoolConfig(name=p.name, **v)  # discarded by the caller when errors were found


def _adjust_ondemand(p: _Section, v: dict[str, Any], messages: list[tuple[str, str]]) -> None:
    """PHP-FPM's changes for ondemand: no spare workers, and a backlog deep enough to hold
    connections while their worker starts."""
    v.update(pm_start_servers=0, pm_min_spare_servers=0, pm_max_spare_servers=0)
    backlog = v["listen_backlog"]
    if 0 <= backlog < ONDEMAND_MIN_BACKLOG:
        v["listen_backlog"] = ONDEMAND_MIN_BACKLOG
        messages.append(("warning", f"[pool {p.name}] listen.backlog({backlog}) was too low for "
                                    f"the ondemand process manager. I updated it for you to "
                                    f"{ONDEMAND_MIN_BACKLOG}."))


def _compare(p: _Section, v: dict[str, Any], left: str, op: Literal["<=", ">="],
             right: str | int) -> str | None:
    """The error when `left op right` does not hold; `right` is a directive or a number."""
    a = v[left.replace(".", "_")]
    if isinstance(right, int):
        b, right_text = right, str(right)
    else:
        b = v[right.replace(".", "_")]
        right_text = f"{right} ({_TABLE[(p.section, right)].kind.show(b)})"
    if (a <= b) if op == "<=" else (a >= b):
        return None
    words = "greater than" if op == "<=" else "less than"
    return (f"{p.at(left)}{left} ({_TABLE[(p.section, left)].kind.show(a)}) must not be {words} "
            f"{right_text}")


# pm = dynamic, in PHP-FPM's order; each rule assumes the ones before it hold.
_DYNAMIC_RULES: tuple[tuple[str, Literal["<=", ">="], str | int], ...] = (
    ("pm.min_spare_servers", ">=", 1),
    ("pm.max_spare_servers", ">=", 1),
    ("pm.max_spare_servers", "<=", "pm.max_children"),
    ("pm.max_spare_servers", ">=", "pm.min_spare_servers"),
    ("pm.start_servers", ">=", "pm.min_spare_servers"),
    ("pm.start_servers", "<=", "pm.max_spare_servers"),
)


def _listen_warnings(pool: str, v: dict[str, Any]) -> list[tuple[str, str]]:
    """listen.* settings that do nothing for this pool: owner and group beside an ACL (in
    PHP-FPM's words), an ACL without a unix socket, allowed_clients without a TCP one."""
    warnings = []
    acl = [name for name in ("listen.acl_users", "listen.acl_groups") if v[_field(name)]]
    for name in ("listen.owner", "listen.group") if acl else ():
        if v[_field(name)] is not None:
            warnings.append(f"[pool {pool}] ACL set, {name} = '{v[_field(name)]}' is ignored")
    tcp = [Listen.is_tcp(address) for address in v["listen"]]
    if acl and tcp and all(tcp):
        warnings.append(f"[pool {pool}] {' and '.join(acl)}: no effect, the pool has no unix "
                        f"socket (ACLs apply to unix sockets only)")
    if v["listen_allowed_clients"] and tcp and not any(tcp):
        warnings.append(f"[pool {pool}] listen.allowed_clients: no effect, the pool has no TCP "
                        f"socket (the list applies to TCP sockets only)")
    return [("warning", text) for text in warnings]


def _field(name: str) -> str:
    return name.replace(".", "_")


def _check_dynamic(p: _Section, v: dict[str, Any], messages: list[tuple[str, str]]) -> list[str]:
    """PHP-FPM's rules for pm = dynamic; fills in pm.start_servers as PHP-FPM does. Reports
    the first broken rule only: each rule assumes the ones before it hold."""
    for left, op, right in _DYNAMIC_RULES:
        if left == "pm.start_servers" and v["pm_start_servers"] == 0:
            # not set: the middle of the spare range, valid once the spare rules hold
            lo, hi = v["pm_min_spare_servers"], v["pm_max_spare_servers"]
            v["pm_start_servers"] = lo + (hi - lo) // 2
            messages.append(("notice", f"[pool {p.name}] pm.start_servers is not set. "
                                       f"It's been set to {v['pm_start_servers']}."))
            return []
        problem = _compare(p, v, left, op, right)
        if problem:  # a bare number is a limit of pm = dynamic only: say so
            return [problem + (" (pm = dynamic)" if isinstance(right, int) else "")]
    return []


def _check_pool_rules(p: _Section, v: dict[str, Any]) -> list[str]:
    """The rules between directives other than pm's."""
    problems = []
    if v["request_slowlog_timeout"] and v["request_terminate_timeout"]:
        problems.append(_compare(p, v, "request_slowlog_timeout", "<=",
                                 "request_terminate_timeout"))
    if v["request_slowlog_timeout"] and v["slowlog"] is None:
        problems.append(f"{p.at('request_slowlog_timeout')}request_slowlog_timeout "
                        f"({v['request_slowlog_timeout']}s) needs slowlog set: the file slow "
                        f"requests are written to")
    # '/' would take every request of the pool; the status page may have it on its own address
    if v["pm_status_path"] == "/" and v["pm_status_listen"] is None:
        problems.append(f"{p.at('pm.status_path')}pm.status_path: invalid value '/' (expected "
                        f"a longer path, since '/' would take every request of the pool, or "
                        f"pm.status_listen set)")
    if v["ping_path"] == "/":
        problems.append(f"{p.at('ping.path')}ping.path: invalid value '/' (expected a longer "
                        f"path, since '/' would take every request of the pool)")
    unix = [a for a in v["listen"] if not Listen.is_tcp(a)]
    if v["request_queue_timeout"] and not v["request_start_param"] and unix:
        problems.append(f"{p.at('request_queue_timeout')}request_queue_timeout "
                        f"({Duration().show(v['request_queue_timeout'])}) cannot time requests on "
                        f"the unix socket '{unix[0]}': Linux records no arrival time for its "
                        f"connections; set request_start_param = REQUEST_START and have nginx "
                        f"send it (fastcgi_param REQUEST_START $msec;)")
    return [problem for problem in problems if problem]


def _check_process_max(g: _Section, process_max: int, pools: list[PoolConfig]) -> list[str]:
    """PHP-FPM's rule: process.max must let every pool start its initial workers, or some
    would be missing from the start with nothing but a warning to say why."""
    started = [(pool, pm.of(pool)) for pool in pools]
    total = sum(mode.initial(pool) for pool, mode in started)
    if process_max >= total:
        return []
    shares = ", ".join(f"[pool {pool.name}] {mode.started_by} = {mode.initial(pool)}"
                       for pool, mode in started if mode.initial(pool))
    return [f"{g.at('process.max')}process.max ({process_max}) must not be less than the "
            f"number of workers the pools start ({total}: {shares})"]


def _check_listen_clashes(pools: list[tuple[_Section, PoolConfig]], errors: list[str]) -> None:
    """No two sockets may share an address: every pool's listen addresses and
    pm.status_listen."""
    owners: dict[str, str] = {}
    for p, config in pools:
        for d in DIRECTIVES:
            value = getattr(config, d.field) if isinstance(d.kind, Listen) else None
            for address in (value,) if isinstance(value, str) else value or ():
                _claim(p, d, address, owners, errors)


def _claim(p: _Section, d: Directive, address: str, owners: dict[str, str],
           errors: list[str]) -> None:
    """`address` for pool `p`'s directive `d`, unless an earlier one has it: then an error."""
    if address in owners:
        errors.append(f"{p.at(d.name)}{d.name}: address '{address}' is already used "
                      f"by {owners[address]}")
    else:
        owners[address] = f"pool '{p.name}'" + (f" ({d.name})" if d.name != "listen" else "")


def dump(config: Config) -> str:
    """The effective configuration, shaped like `php-fpm -tt`: [global], then each pool."""
    out = ["[global]"]
    out += [f"\t{d.name} = {d.kind.show(getattr(config.global_, d.field))}"
            for d in DIRECTIVES if d.section == "global" and d.stored]
    for pool in config.pools:
        out += ["", f"[{pool.name}]"]
        for d in DIRECTIVES:
            if d.section != "pool" or not d.stored:
                continue
            value = getattr(pool, d.field)
            if d.array == "map":
                out += [f"\t{d.name}[{k}] = {item}" for k, item in value]
            elif d.plain and len(value) == 1:  # read back the same, in the usual spelling
                out.append(f"\t{d.name} = {value[0]}")
            elif d.array == "list":
                out += [f"\t{d.name}[] = {item}" for item in value]
            if d.array and not value:
                out.append(f"\t{d.name} = undefined")
            elif not d.array:
                out.append(f"\t{d.name} = {d.kind.show(value)}")
    return "\n".join(out) + "\n"
