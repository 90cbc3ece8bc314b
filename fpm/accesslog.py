"""The access log: PHP-FPM's access.format % codes, as text lines or JSON lines.

``compile(fmt, json)`` checks a format once (at configuration load and in each worker) and
raises ``FormatError`` with PHP-FPM's message; ``Format.render(Request)`` is a pure function
of one finished request; ``Writer`` gathers what a worker knows after a response and writes
the line with one ``os.write`` on the pool's O_APPEND descriptor, which the master opened
(``open_log_file``) before forking.

Codes (PHP-FPM 8.2's, with its modifiers, case-insensitive) and their JSON keys
(``access.json = yes``: one object per line, keys in the order of the codes, literal text
left out; ``null`` where the text line has ``-``):

    code                      text                                JSON key: value
    %%                        %                                   (none)
    %C %{total}C              CPU % of the request, %.2f          cpu: float
    %{user}C %{system}C       user / system part                  cpu_user / cpu_system
    %d %{seconds}d            duration, seconds, %.3f             duration: float (seconds)
    %{milli}d                 milliseconds, %.3f (also            duration_ms: float
                              milliseconds, mili, miliseconds)
    %{micro}d                 microseconds, integer               duration_us: int
                              (also microseconds)
    %{NAME}e                  FastCGI param NAME or -             env: {NAME: str|null}
    %f                        SCRIPT_FILENAME or -                script
    %l                        request CONTENT_LENGTH, 0 if none   content_length: int
    %m                        REQUEST_METHOD or -                 method
    %M %{bytes}M              peak memory, bytes                  memory: int
    %{kilo}M %{kilobytes}M    ... in KiB (integer division)       memory_kb: int
    %{mega}M %{megabytes}M    ... in MiB                          memory_mb: int
    %n                        pool name                           pool
    %{Name}o                  response header Name or -           headers: {Name: str|null}
    %p / %P                   worker pid / master pid             pid / ppid: int
    %q                        QUERY_STRING                        query
    %Q                        ? when there is a query string      (none: query says it)
    %r                        request path (REQUEST_URI, no       uri
                              query)
    %R                        the web server's IP, - on unix      remote_addr
                              sockets
    %s                        HTTP status code                    status: int
    %t %{strftime}t           request start (local time),         time: str
                              default %d/%b/%Y:%H:%M:%S %z        (default: ISO 8601, µs)
    %T %{strftime}T           time the line is written            log_time: str
    %u                        REMOTE_USER, else the user of a     user
                              Basic Authorization header

Where pyfpm differs from PHP-FPM, and why:

* ``%r`` is the path the client asked for (REQUEST_URI without its query; SCRIPT_NAME +
  PATH_INFO when the web server sends no REQUEST_URI). PHP-FPM logs the script name, so
  behind a front controller every line says ``/index.php`` (php-src bug #81670).
* ``%C`` is the growth of ``getrusage()`` (user, system, and reaped children's) from the
  request's start, where the worker's loop calls ``Writer.begin()``, to its line, over the
  request's duration. ``%M`` is the worker's peak RSS
  (``getrusage`` ru_maxrss): Python has no per-request allocator peak like PHP's.
* Lines are never truncated (PHP-FPM cuts them at 1024 bytes, php-src #12302); each is one
  write(), whole in a regular file (on a pipe, lines over PIPE_BUF = 4096 bytes may
  interleave with other workers' lines).
* Control characters coming from the request or the response (params, headers, path,
  query) are written as ``\\xNN`` in text lines, so a request cannot forge log lines.
  Values are written as the bytes received (WSGI's latin-1 strings); in JSON they are read
  as UTF-8, undecodable bytes written ``\\xNN``.
* ``%o`` matches header names case-insensitively (HTTP's rule); PHP-FPM compares them
  case-sensitively. A braced argument is not cut at 128 characters.

``access.suppress_path`` follows PHP-FPM 8.2: a request is left out only when its method is
GET or HEAD, it has no query string and no body (CONTENT_LENGTH 0 or none), its status is
2xx and its ``%r`` is one of the paths exactly.
"""
from __future__ import annotations

import base64
import binascii
import json as _json
import os
import resource
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

from fpm.log import _MONTHS, open_log_file

__all__ = ["compile", "Format", "FormatError", "Request", "Writer", "open_log_file",
           "request_uri", "suppressed"]

DEFAULT_FORMAT = '%R - %u %t "%m %r" %s'

# Codes that take a braced argument; any other code with one is an error.
_BRACED = "CdeMotT"


class FormatError(ValueError):
    """A bad access.format; str() is PHP-FPM's message for it."""


@dataclass(slots=True)
class Request:
    """Everything a line can show about one finished request."""

    environ: dict
    status: str = ""                       # "200 OK", as given to start_response
    headers: list = field(default_factory=list)  # [(name, value)] of the response
    accepted_epoch_us: int = 0             # when the request was accepted
    duration_us: int = 0                   # accept to end of response
    cpu: tuple = (0.0, 0.0)                # (user, system) CPU seconds spent on it
    memory: int = 0                        # peak RSS, bytes
    peer: str | None = None                # the web server's IP; None on a unix socket
    pid: int = 0
    ppid: int = 0
    pool: str = "-"
    now: float = 0.0                       # when the line is written, epoch seconds


def request_uri(environ: dict) -> str:
    """``%r``: the requested path without the query string."""
    uri = environ.get("REQUEST_URI")
    if uri:
        return uri.partition("?")[0]
    return environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")


def content_length(environ: dict) -> int:
    value = environ.get("CONTENT_LENGTH") or ""
    return int(value) if value.isdigit() else 0


def status_code(status: str) -> int | None:
    code = status[:3]
    return int(code) if code.isdigit() else None


def suppressed(paths, environ: dict, status: str) -> bool:
    """PHP-FPM 8.2's access.suppress_path rule (see the module docstring)."""
    if not paths or environ.get("QUERY_STRING") or \
            environ.get("REQUEST_METHOD") not in ("GET", "HEAD") or content_length(environ):
        return False
    code = status_code(status)
    return code is not None and 200 <= code < 300 and request_uri(environ) in paths


def auth_user(environ: dict) -> str:
    """``%u``: what the web server authenticated, else a Basic Authorization's user name."""
    user = environ.get("REMOTE_USER")
    if user:
        return user
    scheme, _, credentials = (environ.get("HTTP_AUTHORIZATION") or "").partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        return base64.b64decode(credentials.strip(), validate=True).decode(
            "latin-1").partition(":")[0]
    except (binascii.Error, ValueError):
        return ""


def _header(headers: list, name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers:
        if key.lower() == lowered:
            return value
    return None


# --- time stamps -------------------------------------------------------------------------

def _zone(tm: time.struct_time) -> str:
    offset = tm.tm_gmtoff // 60
    sign = "-" if offset < 0 else "+"
    return "%s%02d%02d" % (sign, abs(offset) // 60, abs(offset) % 60)


def clf_time(t: float) -> str:
    """``21/Nov/2026:10:00:00 +0100``: PHP-FPM's default, C-locale month names."""
    key = (int(t), time.timezone)  # the zone too: an app may change TZ and call tzset()
    if key != _clf_cache[0]:  # a busy worker writes many lines in the same second
        tm = time.localtime(key[0])
        _clf_cache[:] = key, "%02d/%s/%04d:%02d:%02d:%02d %s" % (
            tm.tm_mday, _MONTHS[tm.tm_mon - 1], tm.tm_year, tm.tm_hour, tm.tm_min, tm.tm_sec,
            _zone(tm))
    return _clf_cache[1]


_clf_cache: list = [None, ""]


def iso_time(epoch_us: int) -> str:
    """``2026-11-21T10:00:00.123456+01:00``, local time."""
    tm = time.localtime(epoch_us // 1_000_000)
    zone = _zone(tm)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06d%s:%s" % (
        tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
        epoch_us % 1_000_000, zone[:3], zone[3:])


# --- escaping ------------------------------------------------------------------------------

_CONTROL = {c: "\\x%02x" % c for c in (*range(0x20), 0x7F)}


def _text(value: str) -> str:
    """A request-controlled value in a text line: control characters made visible."""
    return value.translate(_CONTROL)


def _unicode(value: str | None) -> str | None:
    """A WSGI (latin-1) string as the text its bytes spell in UTF-8."""
    if value is None:
        return None
    return value.encode("latin-1", "replace").decode("utf-8", "backslashreplace")


# --- the codes -----------------------------------------------------------------------------
# Each code compiles to (json key, text renderer, json renderer); a renderer takes a Request.

Render = Callable[[Request], object]


def _cpu(kind: str) -> tuple[str, Render, Render]:
    def share(r: Request) -> float:
        user, system = r.cpu
        spent = {"total": user + system, "user": user, "system": system}[kind]
        return spent / (r.duration_us / 1e6) * 100.0 if r.duration_us > 0 else 0.0
    key = "cpu" if kind == "total" else "cpu_" + kind
    return key, lambda r: "%.2f" % share(r), lambda r: round(share(r), 2)


def _duration(unit: str) -> tuple[str, Render, Render]:
    if unit == "seconds":
        return ("duration", lambda r: "%.3f" % (r.duration_us / 1e6),
                lambda r: r.duration_us / 1e6)
    if unit == "milli":
        return ("duration_ms", lambda r: "%.3f" % (r.duration_us / 1e3),
                lambda r: round(r.duration_us / 1e3, 3))
    return "duration_us", lambda r: str(r.duration_us), lambda r: r.duration_us


def _memory(divisor: int, key: str) -> tuple[str, Render, Render]:
    return key, lambda r: str(r.memory // divisor), lambda r: r.memory // divisor


def _env(name: str) -> tuple[str, Render, Render]:
    def value(r: Request) -> str | None:
        v = r.environ.get(name)
        return v if isinstance(v, str) else None
    return ("env", lambda r: _text(value(r) or "-"),
            lambda r: {name: _unicode(value(r))})


def _out_header(name: str) -> tuple[str, Render, Render]:
    return ("headers", lambda r: _text(_header(r.headers, name) or "-"),
            lambda r: {name: _unicode(_header(r.headers, name))})


def _start_time(strftime: str | None) -> tuple[str, Render, Render]:
    if strftime is None:
        return ("time", lambda r: clf_time(r.accepted_epoch_us // 1_000_000),
                lambda r: iso_time(r.accepted_epoch_us))
    fmt = lambda r: time.strftime(strftime, time.localtime(r.accepted_epoch_us // 1_000_000))
    return "time", fmt, fmt


def _log_time(strftime: str | None) -> tuple[str, Render, Render]:
    if strftime is None:
        return "log_time", lambda r: clf_time(r.now), lambda r: iso_time(int(r.now * 1e6))
    fmt = lambda r: time.strftime(strftime, time.localtime(r.now))
    return "log_time", fmt, fmt


def _env_field(key: str, name: str, missing: str) -> tuple[str, Render, Render]:
    """A param shown as is (or ``missing`` when absent or empty)."""
    return (key, lambda r: _text(r.environ.get(name) or missing),
            lambda r: _unicode(r.environ.get(name) or None))


def _status_text(r: Request) -> str:
    code = status_code(r.status)
    return "-" if code is None else str(code)


_SIMPLE: dict[str, tuple[str | None, Render, Render]] = {
    "%": (None, lambda r: "%", lambda r: None),
    "f": _env_field("script", "SCRIPT_FILENAME", "-"),
    "l": ("content_length", lambda r: str(content_length(r.environ)),
          lambda r: content_length(r.environ)),
    "m": _env_field("method", "REQUEST_METHOD", "-"),
    "n": ("pool", lambda r: r.pool, lambda r: r.pool),
    "p": ("pid", lambda r: str(r.pid), lambda r: r.pid),
    "P": ("ppid", lambda r: str(r.ppid), lambda r: r.ppid),
    "q": ("query", lambda r: _text(r.environ.get("QUERY_STRING") or ""),
          lambda r: _unicode(r.environ.get("QUERY_STRING") or "")),
    "Q": (None, lambda r: "?" if r.environ.get("QUERY_STRING") else "", lambda r: None),
    "r": ("uri", lambda r: _text(request_uri(r.environ)),
          lambda r: _unicode(request_uri(r.environ))),
    "R": ("remote_addr", lambda r: r.peer or "-", lambda r: r.peer),
    "s": ("status", _status_text, lambda r: status_code(r.status)),
    "u": ("user", lambda r: _text(auth_user(r.environ)),
          lambda r: _unicode(auth_user(r.environ)) or None),
}


def _braced(code: str, arg: str | None) -> tuple[str | None, Render, Render]:
    """A code that takes a modifier; FormatError with PHP-FPM's message for a bad one."""
    a = None if arg is None else arg.lower()
    if code == "C":
        if a in (None, "total", "user", "system"):
            return _cpu(a or "total")
        raise FormatError("only 'total', 'user' or 'system' are allowed as a modifier for "
                          "%%C ('%s')" % arg)
    if code == "d":
        if a in (None, "seconds"):
            return _duration("seconds")
        if a in ("milli", "milliseconds", "mili", "miliseconds"):
            return _duration("milli")
        if a in ("micro", "microseconds"):
            return _duration("micro")
        raise FormatError("only 'seconds', 'milli', 'milliseconds', 'micro' or 'microseconds' "
                          "are allowed as a modifier for %%d ('%s')" % arg)
    if code == "M":
        if a in (None, "bytes"):
            return _memory(1, "memory")
        if a in ("kilo", "kilobytes"):
            return _memory(1024, "memory_kb")
        if a in ("mega", "megabytes"):
            return _memory(1024 * 1024, "memory_mb")
        raise FormatError("only 'bytes', 'kilo', 'kilobytes', 'mega' or 'megabytes' are "
                          "allowed as a modifier for %%M ('%s')" % arg)
    if code == "e":
        if not arg:
            raise FormatError("the name of the environment variable must be set between "
                              "embraces for %e")
        return _env(arg)
    if code == "o":
        if not arg:
            raise FormatError("the name of the header must be set between embraces for %o")
        return _out_header(arg)
    return (_start_time if code == "t" else _log_time)(arg or None)


# --- compiling -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Format:
    """A compiled access.format: ``render(request) -> bytes`` (one line with its newline)."""

    text: str
    json: bool
    parts: tuple  # of str (literal text) or (key, text renderer, json renderer)
    uses: frozenset  # the codes present, so the writer measures only what is shown

    def render(self, r: Request) -> bytes:
        if self.json:
            return self._render_json(r)
        line = "".join(p if isinstance(p, str) else p[1](r) for p in self.parts)
        return (line + "\n").encode("latin-1", "backslashreplace")

    def _render_json(self, r: Request) -> bytes:
        obj: dict = {}
        for p in self.parts:
            if isinstance(p, str) or p[0] is None:
                continue
            value = p[2](r)
            if p[0] in ("env", "headers"):
                obj.setdefault(p[0], {}).update(value)
            else:
                obj[p[0]] = value
        return (_json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode(
            "utf-8", "backslashreplace")


def compile(fmt: str, json: bool = False) -> Format:  # noqa: A001 - the module's verb
    """Parse ``fmt`` as PHP-FPM does; FormatError(PHP-FPM's message) when it is wrong.

    A lone ``%`` at the very end is dropped, as PHP-FPM does."""
    parts: list = []
    literal: list[str] = []
    uses: set[str] = set()
    i, n = 0, len(fmt)
    while i < n:
        c = fmt[i]
        if c != "%":
            literal.append(c)
            i += 1
            continue
        i += 1
        if i >= n:
            break
        arg = None
        if fmt[i] == "{":
            close = fmt.find("}", i + 1)
            if close < 0 or close + 1 >= n:
                raise FormatError("missing closing embrace in the access.format")
            arg, i = fmt[i + 1:close] or None, close + 1  # %{}d is %d, as in PHP-FPM
        code = fmt[i]
        i += 1
        if code in _BRACED:
            item = _braced(code, arg)
        elif code in _SIMPLE:
            if arg:
                raise FormatError("embrace is not allowed for modifier %%%s" % code)
            item = _SIMPLE[code]
        else:
            raise FormatError("Invalid token in the access.format (%%%s)" % code)
        uses.add(code)
        if code == "%":
            literal.append("%")
            continue
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(item)
    if literal:
        parts.append("".join(literal))
    return Format(fmt, json, tuple(parts), frozenset(uses))


# --- the worker side -------------------------------------------------------------------------

def peer_ip(sock_fd: int) -> str | None:
    """The IP of the peer of a TCP socket (IPv4-mapped IPv6 shown as IPv4); None otherwise."""
    if sock_fd < 0:
        return None
    s = socket.socket(fileno=sock_fd)
    try:
        if s.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        ip = s.getpeername()[0]
    except OSError:
        return None
    finally:
        s.detach()
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


def _cpu_times() -> tuple[float, float]:
    """(user, system) seconds of this process and its reaped children. getrusage(), not
    times(): its total is the scheduler's exact runtime, where times() counts 10 ms ticks
    (a 0.2 ms request showed 0 % or 5000 %)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + children.ru_utime, own.ru_stime + children.ru_stime


class Writer:
    """Writes one pool's access log lines from a worker.

    ``fmt`` is a Format (``compile(pool.access_format, pool.access_json)``) or a format
    string (text lines); ``suppress`` is access.suppress_path. Create it in the worker once
    the app is loaded: the first line's CPU share counts from then. ``tcp`` says whether the
    pool listens on TCP at all: on unix sockets alone ``%R`` is ``-`` without asking the
    kernel about each connection.
    """

    def __init__(self, fd: int, fmt: Format | str, suppress=(), pool_name: str = "-",
                 tcp: bool = True):
        self.fd = fd
        self.format = compile(fmt) if isinstance(fmt, str) else fmt
        self.suppress = frozenset(suppress)
        # Text lines are latin-1 strings of the bytes to write: a UTF-8 pool name too.
        self.pool = pool_name.encode("utf-8").decode("latin-1") if not self.format.json \
            else pool_name
        uses = self.format.uses
        self._peer = "R" in uses and tcp
        self._cpu = "C" in uses
        self._memory = "M" in uses
        # A worker's pid and its master's never change (a reload re-executes in place).
        self._pid, self._ppid = os.getpid(), os.getppid()
        self._times = (0.0, 0.0)
        # %C: the CPU from the request's start, where the loop calls begin(), to its line.
        self.begin = self._mark_cpu if self._cpu else None

    def _mark_cpu(self) -> None:
        self._times = _cpu_times()

    def peer(self, sock_fd: int) -> str | None:
        """``%R`` of a connection about to close (fpm.finish_request), for write()."""
        return peer_ip(sock_fd) if self._peer else None

    def write(self, environ: dict, status: str, headers: list, accepted_epoch_us: int,
              duration_us: int, sock_fd: int, peer: str | None = None) -> None:
        """Log one request just answered on ``sock_fd`` (-1 once closed: then ``peer`` is
        its ``%R``); errors writing are ignored (a full disk must not fail the requests)."""
        if self.suppress and suppressed(self.suppress, environ, status):
            return
        cpu = (0.0, 0.0)
        if self._cpu:
            before, after = self._times, _cpu_times()
            self._times = after
            cpu = (after[0] - before[0], after[1] - before[1])
        line = self.format.render(Request(
            environ, status, headers, accepted_epoch_us, duration_us, cpu,
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 if self._memory else 0,
            peer if sock_fd < 0 else peer_ip(sock_fd) if self._peer else None,
            self._pid, self._ppid, self.pool, time.time()))
        try:
            while line:
                line = line[os.write(self.fd, line):]
        except OSError:
            pass
